"""The benchmark keeps working: a tiny run of every scenario with exact accounting, run as
the separate program it is (the real figures come from `make bench`, never from a timed
test)."""

import subprocess
import sys

import pytest

from .support import PROJECT, clean_env

pytestmark = pytest.mark.live


def test_every_scenario_runs_small_with_exact_accounting(postgres_server):
    """On SQLite and on the tests' own PostgreSQL (PGHOST/PGPORT/PGUSER name it)."""
    env = clean_env(PGHOST="127.0.0.1", PGPORT=postgres_server.port, PGUSER="postgres")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_smoke.py", "-q", "-p", "no:cacheprovider"],
        cwd=PROJECT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
