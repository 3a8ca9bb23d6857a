"""A tiny end-to-end run of every scenario, for pytest (not collected by default: the
project's testpaths is tests/). Run it with::

    .venv/bin/python -m pytest bench/test_smoke.py -q

It boots its own redis-server and gunicorn servers, and runs the throughput scenario on
SQLite and on PostgreSQL: the PostgreSQL that PGHOST/PGPORT/PGUSER name (the test suite
passes its own), else a private one it starts like the test suite does. A PostgreSQL it
cannot reach is a failure, never a silent skip. Like ``python -m bench.run --quick`` with
smaller numbers, it checks the accounting: every expected delivery arrived, exactly once.
"""

import json
import os

import pytest

from bench import run
from bench.servers import postgres_address, postgres_available


@pytest.fixture(scope="module", autouse=True)
def postgres():
    """PGHOST/PGPORT/PGUSER for bench.run: as given, or a private server started here."""
    server = None
    if "PGPORT" not in os.environ:
        from tests.support import PostgresServer

        server = PostgresServer().start()
        os.environ.update(PGHOST="127.0.0.1", PGPORT=str(server.port), PGUSER="postgres")
    assert postgres_available(), "PostgreSQL at {}:{} (user {}) is not reachable".format(*postgres_address())
    yield
    if server is not None:
        for name in ("PGHOST", "PGPORT", "PGUSER"):
            os.environ.pop(name, None)
        server.stop()


def smoke(out_dir):
    """Run every scenario small; return results.json as a dict (raises if the run fails)."""
    status = run.main([
        "--quick", "--out", str(out_dir),
        # Not the peers (f): they install Flask-SocketIO from PyPI into a virtualenv first.
        "--scenarios", ",".join(name for name in run.SCENARIOS if name != "peers"),
        # Two load-generator processes, from 127.0.0.2 and .3 (bench/fleet.py).
        "--capacity-steps", "50,150", "--capacity-processes", "2",
        "--fanout-sizes", "5,40", "--fanout-messages", "2",
        "--configs", "sqlite-2x1,pg-1x1", "--shapes", "3x10", "--steps", "300,600", "--step-seconds", "1",
        "--drain-seconds", "2",
        "--slow-members", "8", "--slow-rate", "10", "--slow-seconds", "1",
    ])
    assert status == 0, f"bench.run exited with {status}"
    with open(out_dir / "results.json") as file:
        return json.load(file)


def _exact(result, where):
    assert result["expected"] > 0, f"{where}: nothing was expected"
    assert result["received"] == result["expected"], f"{where}: {result['received']}/{result['expected']}"
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["strays"] == 0, where
    assert result["reordered"] == 0 and result["other_frames"] == 0, where


def test_every_scenario_small(tmp_path):
    results = smoke(tmp_path)
    for key in ("capacity", "fanout_ws", "throughput", "fanout_sse", "slow_client"):
        assert key in results and not results[key].get("error"), f"{key}: {results.get(key)}"
    assert results["capacity"]["generator_processes"] == 2
    for step in results["capacity"]["steps"]:
        _exact(step["broadcast"], f"capacity {step['connections']}")
        assert step["connections"] == step["target"] == step["broadcast"]["clients"], step
        assert step["rss_kb"] > results["capacity"]["baseline_rss_kb"]
    for key in ("fanout_ws", "fanout_sse"):
        assert [s["size"] for s in results[key]["sizes"]] == [5, 40]
        for size in results[key]["sizes"]:
            _exact(size, f"{key} {size['size']}")
    runs = results["throughput"]["runs"]
    assert len(runs) == 2 and all(not r.get("error") for r in runs), runs
    assert [r["config"] for r in runs] == ["sqlite-2x1", "pg-1x1"], runs
    for r in runs:
        assert r["steps"], r
        _exact(r["steps"][0], f"throughput {r['config']}")
    for tag in ("absent", "present"):
        _exact(results["slow_client"][tag], f"slow client {tag}")
    for name in ("latency_vs_room_size.png", "throughput.png", "memory_vs_connections.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_the_profiler_names_the_socket_writes(tmp_path):
    from bench import profile

    out = tmp_path / "profile.txt"
    assert profile.main(["--rate", "3000", "--seconds", "3", "--out", str(out)]) == 0
    text = out.read_text()
    assert "lost 0" in text and "samples while running" in text
    assert "socket writes (send syscalls)" in text
