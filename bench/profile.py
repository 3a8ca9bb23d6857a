"""Profile a worker under load: ``python -m bench.profile [--rate 20000] [--seconds 20]``.

Boots a cluster (default ``sqlite-2x1``), runs one throughput step of 10 rooms x 50
WebSocket members (scenario (c)) while ``py-spy record`` samples one worker, and writes
``bench/results/profile.txt``: where that worker's CPU went, by the function running at
each sample (its "self" time), grouped into what the time was spent on. Samples while
the worker waits in the event loop (idle) are not counted. The connect phase and a one
second warm-up are inside the sampled window; at the default load they are a few percent.
"""

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import time

from . import scenarios
from .run import Lab, raise_nofile
from .scenarios import log
from .servers import PROJECT, Resources, cpu_times

# (group, test on "function (path)") in order: the first match names a sample's group.
GROUPS = [
    # Transport.write calls the socket's C send itself: its own time is the system call.
    ("socket writes (send syscalls)", lambda fn, path: (fn.endswith(("send", "sendall")) and "socket" in path) or (
        fn in ("Transport.write", "Transport._write_raw") and path.endswith("webapp/transport.py"))),
    ("socket reads", lambda fn, path: ".recv" in fn and "socket" in path),
    ("gevent event loop (libev, greenlet switches)", lambda fn, path: "/gevent/" in path),
    ("redis-py (pub/sub, publish)", lambda fn, path: "/redis/" in path or "hiredis" in path),
    ("database (peewee, sqlite3, psycopg2)", lambda fn, path: any(
        name in path for name in ("peewee", "sqlite3", "psycopg2", "/playhouse/"))),
    ("WebSocket framing (wsproto, simple-websocket)", lambda fn, path: "wsproto" in path or "simple_websocket" in path),
    ("this project's code (webapp/)", lambda fn, path: "/webapp/" in path),
    ("JSON, templates, logging, other stdlib", lambda fn, path: "/lib/python3" in path or "jinja2" in path),
]
_FRAME = re.compile(r"^(?P<fn>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="sqlite-2x1", help="cluster, e.g. sqlite-2x1 or pg-2x1")
    parser.add_argument("--shape", default="10x50",
                        help="rooms x members, e.g. 10x50 (or 50x2: mostly per-message work)")
    parser.add_argument("--rate", type=int, default=20000, help="offered deliveries/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of sending")
    parser.add_argument("--sample-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true",
                        help="sample C frames too (py-spy --native; pauses the worker at each sample)")
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench", "results", "profile.txt"))
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch directory (server logs)")
    return parser.parse_args(argv)


def summarize(lines, top=15):
    """Collapsed stacks ("frame;frame;... count") -> (total, {group: n}, [(leaf, n)])."""
    groups, leaves = collections.Counter(), collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        match = _FRAME.match(stack.split(";")[-1])
        fn, path = (match["fn"], match["path"]) if match else (stack.split(";")[-1], "")
        n = int(count)
        total += n
        leaves[f"{fn} ({_short(path)})"] += n
        groups[next((name for name, test in GROUPS if test(fn, path)), "other")] += n
    return total, groups, leaves.most_common(top)


def _short(path):
    """A frame's file, shortened to where it comes from."""
    if "/webapp/" in path:
        return "webapp/" + path.split("/webapp/", 1)[1]
    for marker in ("site-packages/", f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return os.path.basename(path)


def render(total, groups, leaves, row, args):
    pct = (lambda n: f"{100 * n / total:5.1f}%") if total else (lambda n: "    -")
    out = [f"Profile of one worker: {args.config}, {args.shape} rooms x WebSocket members, offered {args.rate} "
           f"deliveries/s for {args.seconds:.0f}s ({time.strftime('%Y-%m-%d')})",
           f"result: {row['deliveries_per_s']}/s delivered, p99 {row['latency_ms']['p99']} ms, lost {row['lost']}, "
           f"server CPU {row['server_cpu_us_per_delivery']} us/delivery",
           f"the sampled worker's CPU: {row['user_s']:.1f} s user, {row['system_s']:.1f} s system (kernel) "
           f"= {100 * row['system_s'] / max(row['user_s'] + row['system_s'], 1e-9):.0f}% in the kernel",
           f"{total} samples while running (idle excluded)", "", "Where the CPU went (self time, grouped):"]
    out += [f"  {pct(n)}  {name}" for name, n in groups.most_common()]
    out += ["", "Top functions by self time:"]
    out += [f"  {pct(n)}  {leaf}" for leaf, n in leaves]
    return "\n".join(out) + "\n"


async def _run(args, lab, spy_path):
    cluster = lab.boot(args.config)
    try:
        worker = cluster.worker_pids()[0]
        command = [_py_spy(), "record", "--pid", str(worker), "--rate", str(args.sample_rate), "--format", "raw",
                   "--function", "--full-filenames", "--output", spy_path]
        # --native needs to pause the worker at each sample (it then runs a little slower).
        command.append("--native" if args.native else "--nonblocking")
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lab.resources.add(_Stoppable(spy))
        await asyncio.sleep(1.0)  # py-spy attaches
        log(f"py-spy sampling worker {worker}")
        before = cpu_times(worker)
        rooms, members = (int(n) for n in args.shape.split("x"))
        run = await scenarios.throughput(cluster, rooms, members, [args.rate], args.seconds, 5.0, 200,
                                         args.seconds + 60, refine=0)
        user, system = (after - start for after, start in zip(cpu_times(worker), before, strict=True))
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=30)
        if not os.path.exists(spy_path):
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace').strip()}")
        return {**run["steps"][0], "user_s": user, "system_s": system}
    finally:
        lab.release(cluster)


def _py_spy():
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")  # the virtualenv's own
    return beside if os.path.exists(beside) else "py-spy"


class _Stoppable:
    def __init__(self, process):
        self.process = process

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()


def main(argv=None):
    args = parse_args(argv)
    raise_nofile()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    resources = Resources()
    try:
        lab = Lab(args, resources)
        spy_path = os.path.join(lab.tmp, "worker.collapsed")
        row = asyncio.run(_run(args, lab, spy_path))
        with open(spy_path) as file:
            text = render(*summarize(file), row, args)
    finally:
        resources.close()
    with open(args.out, "w") as file:
        file.write(text)
    sys.stdout.write("\n" + text + f"\nwritten: {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
