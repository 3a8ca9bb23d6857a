"""A tiny run of the scale-out scenarios, for pytest (not collected by default: the
project's testpaths is tests/). Run it with::

    .venv/bin/python -m pytest bench/test_scale.py -q

It checks the accounting (nothing lost or duplicated) and that a server pays next to
nothing for rooms it does not serve; the figures themselves come from full runs.
"""

import json

from bench import run
from bench.servers import postgres_available


def test_scale_scenarios_small(tmp_path):
    scenarios = "scale,pg-servers" if postgres_available() else "scale"
    status = run.main(["--quick", "--out", str(tmp_path), "--scenarios", scenarios, "--scale-seconds", "5",
                       "--scale-rate", "300", "--scale-servers", "1,2"])
    assert status == 0
    results = json.loads((tmp_path / "results.json").read_text())
    foreign = results["scale"]["foreign_rooms"]
    assert foreign["lost"] == 0 and foreign["duplicates"] == 0 and foreign["deliveries"] > 0
    # A loose bound: CPU comes in 10 ms ticks, and B spends about a second here (with a
    # pattern subscription A spent about 12 % of B's CPU on B's rooms).
    assert foreign["foreign_share_pct"] < 6, foreign
    runs = results["scale"]["adding_servers"]["runs"]
    assert [r["servers"] for r in runs] == [1, 2] and all(r["lost"] == 0 for r in runs)
    if "pg_servers" in results:
        pg = results["pg_servers"]
        assert set(pg["shapes"]) == {"one room", "a room per sender"}
        assert all(pg["insert_path"][shape]["commits_per_s"] > 0 for shape in pg["insert_path"])
