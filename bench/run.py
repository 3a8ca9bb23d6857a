"""Run the benchmark: ``python -m bench.run [--quick] [--scenarios ...]``.

Boots its own redis-server, scratch PostgreSQL databases and gunicorn servers, runs the
chosen scenarios, prints tables, writes ``bench/results/results.json`` and PNG plots, and
stops and removes everything it started (also on errors and Ctrl-C). See bench/README.md.
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from . import compare, report, scale, scenarios
from .scenarios import log
from .servers import (
    PROJECT,
    Cluster,
    RedisServer,
    Resources,
    ScratchPostgres,
    postgres_address,
    postgres_available,
    raise_nofile,
)
from .stats import clean

# Idle sockets one load-generator process holds in scenario (a): below the development
# VM's 20,000 open files per process and one source address's ~28,000 ports.
SOCKETS_PER_PROCESS = 15000
SCENARIOS = ("capacity", "fanout", "throughput", "sse", "slow", "peers")
ALIASES = {"a": "capacity", "b": "fanout", "c": "throughput", "d": "sse", "e": "slow", "f": "peers",
           "fanout_ws": "fanout", "fanout_sse": "sse", "slow_client": "slow"}

PRESETS = {
    "full": {
        "capacity_steps": [1000, 2500, 5000, 7500, 10000],
        "capacity_budget": 420,
        "fanout_sizes": [10, 100, 1000, 5000],
        "fanout_messages": 20,
        "fanout_gap": 0.1,
        "fanout_budget": 300,
        "configs": ["sqlite-1x1", "sqlite-2x1", "pg-1x1", "pg-2x1"],
        "shapes": ["10x50", "100x20"],
        "steps": [1000, 2000, 4000, 8000, 16000, 32000, 64000],
        "step_seconds": 10.0,
        "drain_seconds": 5.0,
        "throughput_budget": 150,
        "throughput_total_budget": 1500,
        "refine": 2,
        "slow_members": 50,
        "slow_rate": 150.0,
        "slow_seconds": 15.0,
        "slow_padding": 1900,
        "peer_steps": [20000],
        "peer_idle": [5000],
    },
    "quick": {
        "capacity_steps": [200, 1000],
        "capacity_budget": 30,
        "fanout_sizes": [10, 100, 500],
        "fanout_messages": 3,
        "fanout_gap": 0.05,
        "fanout_budget": 20,
        "configs": ["sqlite-2x1", "pg-1x1"],
        "shapes": ["10x50"],
        "steps": [1000, 4000],
        "step_seconds": 1.5,
        "drain_seconds": 2.0,
        "throughput_budget": 15,
        "throughput_total_budget": 45,
        "refine": 0,
        "slow_members": 30,
        "slow_rate": 20.0,
        "slow_seconds": 3.0,
        "slow_padding": 1000,
        "peer_steps": [4000],
        "peer_idle": [500],
    },
}


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def _list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Load-test the chat server: capacity, fan-out, throughput, SSE, slow client.",
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run of every scenario (< ~60 s)")
    parser.add_argument("--scenarios", type=_list, default=list(SCENARIOS),
                        help="comma-separated, from: capacity (a), fanout (b), throughput (c), sse (d), slow (e), "
                             "peers (f: beside Flask-SocketIO); default: those six; "
                             "opt-in: scale, pg-servers (bench/scale.py)")
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench", "results"), help="results directory")
    group = parser.add_argument_group("scenario parameters (defaults come from the preset)")
    group.add_argument("--capacity-steps", type=_ints, help="e.g. 1000,2500,5000,7500,10000")
    group.add_argument("--capacity-processes", type=int, default=0,
                       help="load-generator processes holding the idle sockets (default: one per "
                            f"{SOCKETS_PER_PROCESS:,}, each from its own 127.0.0.x)")
    group.add_argument("--capacity-config", default="sqlite-1x1",
                       help="cluster for (a): one server, <sqlite|pg>-1x<workers> (default sqlite-1x1: one worker)")
    group.add_argument("--capacity-broker", choices=["redis", "memory"], default="redis",
                       help="REDIS_URL set (default) or not for the capacity worker")
    group.add_argument("--fanout-sizes", type=_ints, help="room sizes for (b) and (d), e.g. 10,100,1000,5000")
    group.add_argument("--fanout-messages", type=int, help="messages per room size")
    group.add_argument("--fanout-config", default="sqlite-2x1",
                       help="cluster for (b), (d), (e): <sqlite|pg>-<servers>x<workers> (default sqlite-2x1)")
    group.add_argument("--configs", type=_list, help="throughput clusters, e.g. sqlite-1x1,sqlite-2x1,pg-1x1,pg-2x1")
    group.add_argument("--shapes", type=_list, help="throughput rooms x members, e.g. 10x50,100x20")
    group.add_argument("--steps", type=_ints, help="throughput offered loads (deliveries/s), e.g. 1000,2000,4000")
    group.add_argument("--step-seconds", type=float, help="seconds of sending per throughput step")
    group.add_argument("--drain-seconds", type=float, help="how long to wait for stragglers after sending")
    group.add_argument("--refine", type=int, help="throughput: extra steps between the last pass and the first fail")
    group.add_argument("--throughput-budget", type=float, help="throughput: seconds per cluster and shape")
    group.add_argument("--throughput-total-budget", type=float, help="throughput: seconds for the whole scenario")
    group.add_argument("--p99-limit", type=float, default=250.0, help="throughput: a step fails above this p99 (ms)")
    group.add_argument("--slow-members", type=int)
    group.add_argument("--slow-rate", type=float, help="messages/s in the slow-client room")
    group.add_argument("--slow-seconds", type=float)
    group.add_argument("--slow-padding", type=int, help="characters added to each slow-scenario message")
    group.add_argument("--peer-steps", type=_ints, help="(f): offered loads (deliveries/s) for both servers")
    group.add_argument("--peer-shape", default="10x50", help="(f): rooms x members (default 10x50)")
    group.add_argument("--peer-workers", type=int, default=2, help="(f): gevent workers of each server (default 2)")
    group.add_argument("--peer-db", choices=["sqlite", "pg"], default="sqlite",
                       help="(f): this server's database (the peer always stores in SQLite)")
    group.add_argument("--peer-idle", type=_ints, help="(f): idle sockets held on one worker of each, e.g. 5000")
    group.add_argument("--concurrency", type=int, default=200, help="connection handshakes in flight at once")
    group.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (server logs)")
    scale.add_arguments(parser)
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    chosen = []
    for name in args.scenarios:
        name = ALIASES.get(name, name)
        if name not in SCENARIOS + scale.SCENARIOS:
            parser.error(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
        if name not in chosen:
            chosen.append(name)
    args.scenarios = chosen
    for spec in [args.fanout_config, args.capacity_config, *args.configs]:
        try:
            parse_config(spec)
        except ValueError as exc:
            parser.error(str(exc))
    if parse_config(args.capacity_config)[1] != 1:
        parser.error("--capacity-config takes one server (e.g. sqlite-1x1, sqlite-1x4)")
    return args


def parse_config(spec):
    """``sqlite-2x1`` -> ("sqlite", 2 servers, 1 worker each)."""
    try:
        db, shape = spec.split("-", 1)
        servers, workers = (int(x) for x in shape.split("x"))
    except ValueError:
        raise ValueError(f"cluster {spec!r} should look like sqlite-2x1 or pg-1x2") from None
    if db not in ("sqlite", "pg") or servers < 1 or workers < 1:
        raise ValueError(f"cluster {spec!r} should look like sqlite-2x1 or pg-1x2")
    return db, servers, workers


class Lab:
    """The shared pieces of one run: scratch directory, redis-server, clusters."""

    def __init__(self, args, resources):
        self.args = args
        self.resources = resources
        self.tmp = tempfile.mkdtemp(prefix="chatbench-")
        if not args.keep_tmp:
            resources.add(self.tmp)
        self.redis = resources.add(RedisServer(self.tmp).start())
        self.count = 0
        self.pg_ok = None
        self.warnings = {}
        self.throughput_started = None

    def boot(self, spec, broker="redis", extra_env=None, nofile=None):
        db, servers, workers = parse_config(spec)
        self.count += 1
        name = f"{spec}-{self.count}"
        scratch = None
        if db == "pg":
            if self.pg_ok is None:
                self.pg_ok = postgres_available()
            if not self.pg_ok:
                host, port, user = postgres_address()
                raise RuntimeError(f"PostgreSQL is not reachable at {host}:{port} (user {user})")
            scratch = self.resources.add(ScratchPostgres())
            url = scratch.url
        else:
            url = f"sqlite:///{self.tmp}/{name}.sqlite3"
        cluster = Cluster(self.tmp, name, url, self.redis.url if broker == "redis" else None, servers, workers,
                          extra_env={"REDIS_CHANNEL_PREFIX": f"bench{self.count}", **(extra_env or {})},
                          nofile=nofile)
        cluster.scratch = scratch
        cluster.spec = spec
        self.resources.add(cluster)
        t0 = time.monotonic()
        cluster.start()
        log(f"booted {spec} ({cluster.describe()}) in {time.monotonic() - t0:.1f}s: ports "
            f"{[s.port for s in cluster.servers]}, workers {cluster.worker_pids()}")
        return cluster

    def release(self, cluster):
        lines = cluster.warnings()
        if lines:
            self.warnings[cluster.name] = {"count": len(lines), "first": lines[:15]}
        self.resources.release(cluster)
        if cluster.scratch is not None:
            self.resources.release(cluster.scratch)


def meta(args):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "scenarios": args.scenarios,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "commit": commit,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "parameters": {k: v for k, v in vars(args).items() if k not in ("scenarios", "quick", "out", "keep_tmp")},
        "note": "load generator, servers, Redis and the database share this machine's CPUs",
    }


async def run_all(args, resources, results, save):
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    lab = Lab(args, resources)
    results["meta"]["tmp"] = lab.tmp
    chosen = set(args.scenarios)

    async def guarded(key, work):
        started = time.monotonic()
        log(f"== {key}")
        try:
            value = await work()
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - report it and go on to the next scenario
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        value["duration_s"] = round(time.monotonic() - started, 1)
        return value

    def store(key, value):
        results[key] = clean(value)
        results["server_warnings"] = lab.warnings
        save()

    # (a) capacity: a worker of its own, so its memory is only the idle sockets'.
    if "capacity" in chosen:

        async def work():
            # Room for every socket in the worker: its connection pool, and its open-files
            # limit where the hard limit may be raised (else it stays at the runner's).
            most = max(args.capacity_steps) + 1000
            cluster = lab.boot(args.capacity_config, broker=args.capacity_broker,
                               extra_env={"WORKER_CONNECTIONS": max(20000, most)}, nofile=most)
            processes = args.capacity_processes or -(-max(args.capacity_steps) // SOCKETS_PER_PROCESS)
            try:
                return await scenarios.capacity(cluster, args.capacity_steps, args.concurrency,
                                                args.capacity_budget, processes=processes)
            finally:
                lab.release(cluster)

        store("capacity", await guarded("capacity", work))

    # (b), (e), throughput on the same cluster, then (d).
    shared_spec = args.fanout_config
    throughput_runs = []
    need_shared = chosen & {"fanout", "sse", "slow"} or ("throughput" in chosen and shared_spec in args.configs)
    if need_shared:
        try:
            shared = lab.boot(shared_spec)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            shared = None
            for key in ("fanout_ws", "slow_client", "fanout_sse"):
                store(key, {"error": f"could not boot {shared_spec}: {exc}"})
        if shared is not None:
            try:
                if "fanout" in chosen:
                    store("fanout_ws", await guarded("fan-out (WebSocket)", lambda: scenarios.fanout(
                        shared, "ws", args.fanout_sizes, args.fanout_messages, args.fanout_gap, args.concurrency,
                        args.fanout_budget)))
                if "slow" in chosen:
                    store("slow_client", await guarded("slow client", lambda: scenarios.slow_client(
                        shared, args.slow_members, args.slow_rate, args.slow_seconds, args.slow_padding,
                        args.drain_seconds + 2, args.concurrency)))
                if "throughput" in chosen and shared_spec in args.configs:
                    for shape in args.shapes:
                        throughput_runs.append(await _throughput(args, lab, shared, shape, guarded))
                        store("throughput", {"runs": throughput_runs})
                if "sse" in chosen:
                    store("fanout_sse", await guarded("fan-out (SSE)", lambda: scenarios.fanout(
                        shared, "sse", args.fanout_sizes, args.fanout_messages, args.fanout_gap, args.concurrency,
                        args.fanout_budget)))
            finally:
                lab.release(shared)

    if "throughput" in chosen:
        for spec in args.configs:
            if spec == shared_spec:
                continue
            if lab.throughput_started is not None and (
                time.monotonic() - lab.throughput_started > args.throughput_total_budget - args.step_seconds
            ):
                log(f"throughput {spec}: skipped, the scenario's time budget is spent")
                throughput_runs.append({"config": spec, "error": "skipped: throughput time budget spent"})
                continue
            try:
                cluster = lab.boot(spec)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                throughput_runs.append({"config": spec, "error": f"could not boot: {exc}"})
                store("throughput", {"runs": throughput_runs})
                continue
            try:
                for shape in args.shapes:
                    throughput_runs.append(await _throughput(args, lab, cluster, shape, guarded))
                    store("throughput", {"runs": throughput_runs})
            finally:
                lab.release(cluster)
        results["throughput"] = clean({"runs": throughput_runs})
    if "peers" in chosen:
        store("peers", await guarded("beside Flask-SocketIO", lambda: compare.side_by_side(lab, args, guarded)))
    await scale.run(lab, args, chosen, guarded, store)
    results["server_warnings"] = lab.warnings


async def _throughput(args, lab, cluster, shape, guarded):
    rooms, per_room = (int(x) for x in shape.lower().split("x"))
    if lab.throughput_started is None:
        lab.throughput_started = time.monotonic()
    left = args.throughput_total_budget - (time.monotonic() - lab.throughput_started)
    if left < args.step_seconds + args.drain_seconds:
        log(f"throughput {cluster.spec} {shape}: skipped, the scenario's time budget is spent")
        return {"config": cluster.spec, "shape": shape, "error": "skipped: throughput time budget spent"}
    run = await guarded(f"throughput {cluster.spec} {shape}", lambda: scenarios.throughput(
        cluster, rooms, per_room, args.steps, args.step_seconds, args.drain_seconds, args.concurrency,
        min(args.throughput_budget, left), redis_pid=lab.redis.pid, p99_limit_ms=args.p99_limit,
        refine=args.refine))
    run["config"] = cluster.spec
    run["shape"] = shape
    return run


def main(argv=None):
    args = parse_args(argv)
    nofile = raise_nofile()
    os.makedirs(args.out, exist_ok=True)
    results = {"meta": meta(args)}
    path = os.path.join(args.out, "results.json")

    def save():
        tmp = path + ".tmp"
        with open(tmp, "w") as file:
            json.dump(results, file, indent=1, default=str)
        os.replace(tmp, path)

    log(f"chat benchmark ({'quick' if args.quick else 'full'}): {', '.join(args.scenarios)}; "
        f"open files {nofile}; results in {args.out}")
    started = time.monotonic()
    resources = Resources()
    interrupted = False
    try:
        asyncio.run(run_all(args, resources, results, save))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        log("interrupted: stopping everything")
    finally:
        resources.close()
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["interrupted"] = interrupted
    save()
    print()
    print(report.tables(results))
    try:
        written = report.plots(results, args.out)
    except Exception as exc:  # noqa: BLE001 - the numbers are saved; the pictures are a bonus
        traceback.print_exc()
        written = []
        print(f"plots failed: {exc}")
    print(f"\nresults: {path}")
    for plot in written:
        print(f"plot:    {plot}")
    if results.get("server_warnings"):
        total = sum(v["count"] for v in results["server_warnings"].values())
        print(f"server log warnings: {total} line(s) (see results.json 'server_warnings')")
    print(f"total {results['meta']['duration_s']}s")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
