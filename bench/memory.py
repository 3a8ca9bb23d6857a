"""Where the memory of an idle connection goes: ``python -m bench.memory [--count 2000]``.

Boots one gunicorn worker (the project's ``gunicorn.conf.py``, plus a hook from this file
that starts ``tracemalloc`` in the worker and dumps a snapshot whenever asked), opens
``--count`` idle WebSockets (``--kind ws``) or event streams (``--kind sse``) to one
room, and compares the worker before and after: RSS per connection, and the Python
allocations still alive per connection, grouped by where they were made. The RSS also
holds what tracemalloc does not see (allocator overhead, and the greenlet stacks of a
server that parks a greenlet per connection; this one does not). tracemalloc itself
costs memory, so the RSS it shows is higher than without it: ``--rss-only`` measures the
RSS alone (no tracing), for either kind.

Writes ``bench/results/memory-<kind>.txt`` (``memory-<kind>-rss.txt`` with ``--rss-only``).
"""

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

from .run import raise_nofile
from .scenarios import close_all, connect_many, log, new_label, open_room
from .servers import BIN, PROJECT, RedisServer, Resources, Server, release, rss_kb, spawn, wait_for

# Loaded by gunicorn as its config file: the project's settings, then the probe hook.
CONFIG_ENV = "CHAT_MEMORY_PROBE_DIR"


def _probe_hook(worker):
    """In the worker: trace allocations; on a file ``want-N`` write snapshot ``snap-N``."""
    import gevent

    directory = os.environ[CONFIG_ENV]
    if os.environ.get("CHAT_MEMORY_PROBE_TRACE") == "1":
        tracemalloc.start(8)

    def watch():
        while True:
            gevent.sleep(0.2)
            for name in os.listdir(directory):
                if name.startswith("want-"):
                    os.remove(os.path.join(directory, name))
                    gc.collect()
                    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else tracemalloc.Snapshot([], 1)
                    snapshot.dump(os.path.join(directory, "snap-" + name[5:] + ".tmp"))
                    os.rename(os.path.join(directory, "snap-" + name[5:] + ".tmp"),
                              os.path.join(directory, "snap-" + name[5:]))

    gevent.spawn(watch)


class ProbedServer(Server):
    """The project's gunicorn with the probe's config (``gunicorn.conf.py`` + the hook)."""

    def __init__(self, directory, database_url, redis_url, trace=True):
        super().__init__(directory, "memory", database_url, redis_url, 1,
                         {CONFIG_ENV: directory, "PYTHONPATH": PROJECT, "CHAT_MEMORY_PROBE_TRACE": int(trace)})
        self.config = _config(directory)

    def start(self):
        self._log = open(self.log_path, "ab")
        self.process = spawn([os.path.join(BIN, "gunicorn"), "-c", self.config, "wsgi:app"], cwd=PROJECT,
                             env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self


def _snapshot(directory, tag):
    open(os.path.join(directory, f"want-{tag}"), "w").close()
    path = os.path.join(directory, f"snap-{tag}")
    wait_for(lambda: os.path.exists(path), 120, f"snapshot {tag}")
    return tracemalloc.Snapshot.load(path)


def _config(directory):
    """A gunicorn config: the project's, with the probe added to post_worker_init."""
    path = os.path.join(directory, "gunicorn_probe.conf.py")
    with open(path, "w") as file:
        file.write(
            f"exec(open({os.path.join(PROJECT, 'gunicorn.conf.py')!r}).read())\n"
            "_project_post_worker_init = post_worker_init\n"
            "def post_worker_init(worker):\n"
            "    _project_post_worker_init(worker)\n"
            "    from bench.memory import _probe_hook\n"
            "    _probe_hook(worker)\n"
        )
    return path


def _report(before, after, rss_before, rss_after, count, kind, top):
    traced = bool(after.traces)
    lines = [f"{count} idle {kind} connections on one worker ({time.strftime('%Y-%m-%d')})",
             f"RSS: {(rss_after - rss_before) / count:.2f} kB per connection "
             f"({'with tracemalloc running' if traced else 'no tracing'})"]
    if not traced:
        return "\n".join(lines)
    stats = after.compare_to(before, "traceback")
    traced = sum(s.size_diff for s in stats)
    lines.append(f"Python allocations alive: {traced / count / 1024:.2f} KiB per connection; the rest of the RSS is "
                 "allocator overhead and tracemalloc's own bookkeeping (see --rss-only)")
    lines.append("")
    lines.append("Largest per connection (bytes, where allocated: innermost project/library frames):")
    for stat in stats[:top]:
        if stat.size_diff <= 0:
            break
        frames = list(reversed(stat.traceback))  # the allocating frame first
        where = " <- ".join(f"{_short(f.filename)}:{f.lineno}" for f in frames[:5])
        lines.append(f"  {stat.size_diff / count:8.0f} B  {stat.count_diff / count:5.1f} blocks  {where}")
    by_file = after.compare_to(before, "filename")
    lines.append("")
    lines.append("By file (bytes per connection):")
    for stat in by_file[:top]:
        if stat.size_diff <= 0:
            break
        lines.append(f"  {stat.size_diff / count:8.0f} B  {_short(stat.traceback[0].filename)}")
    return "\n".join(lines)


def _short(path):
    for marker in ("site-packages/", "/lib/python3.11/", PROJECT + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


async def _measure(server, kind, count, directory, concurrency):
    label = new_label("mem")
    await open_room(server, label)
    path = f"/chat/{label}/" if kind == "ws" else f"/{label}/events"
    warm, failures = await connect_many([(kind, server, path, f"w{i}") for i in range(20)], concurrency)
    await close_all(warm)
    await asyncio.sleep(1.5)
    (pid,) = server.worker_pids(refresh=True)
    before, rss_before = _snapshot(directory, "before"), rss_kb(pid)
    clients, failures = await connect_many([(kind, server, path, f"i{i}") for i in range(count)], concurrency)
    if failures:
        raise RuntimeError(f"connections failed: {dict(failures)}")
    await asyncio.sleep(1.5)
    after, rss_after = _snapshot(directory, "after"), rss_kb(pid)
    await close_all(clients)
    return before, after, rss_before, rss_after


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--kind", choices=["ws", "sse"], default="ws")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rss-only", action="store_true", help="no tracemalloc: the RSS per connection alone")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--out", default=os.path.join(PROJECT, "bench", "results"))
    args = parser.parse_args(argv)
    raise_nofile()
    resources = Resources()
    try:
        directory = resources.add(tempfile.mkdtemp(prefix="chatbench-memory-"))
        redis = resources.add(RedisServer(directory).start())
        database = f"sqlite:///{directory}/memory.sqlite3"
        release(database, os.path.join(directory, "release.log"))
        server = ProbedServer(directory, database, redis.url, trace=not args.rss_only)
        resources.add(server.start())
        server.wait_ready()
        result = asyncio.run(_measure(server, args.kind, args.count, directory, args.concurrency))
        text = _report(*result, args.count, "WebSocket" if args.kind == "ws" else "event-stream", args.top)
    finally:
        resources.close()
    print(text)
    os.makedirs(args.out, exist_ok=True)
    name = f"memory-{args.kind}{'-rss' if args.rss_only else ''}.txt"
    with open(os.path.join(args.out, name), "w") as file:
        file.write(text + "\n")
    log(f"written: {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
