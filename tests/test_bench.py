"""The benchmark keeps working: a tiny run of every scenario with exact accounting, run as
the separate program it is (the real figures come from `make bench`, never from a timed
test)."""

import subprocess
import sys

import pytest

from .support import PROJECT

pytestmark = pytest.mark.live


def test_every_scenario_runs_small_with_exact_accounting():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_smoke.py", "-q", "-p", "no:cacheprovider"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
