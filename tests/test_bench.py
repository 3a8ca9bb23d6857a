"""The benchmark keeps working: a tiny run of every scenario with exact accounting
(the real figures come from `make bench`, never from a timed test)."""

import pytest

from bench.test_smoke import test_every_scenario_small  # noqa: F401  (collected here)

pytestmark = pytest.mark.live
