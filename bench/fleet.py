"""Idle sockets held by several load-generator processes, for scenario (a) past what one
process can open.

Two limits of one client process stop the capacity scenario short of tens of thousands of
sockets: its open-files limit (20,000 on the development VM, and raising the hard limit
needs CAP_SYS_RESOURCE), and the ~28,000 ephemeral ports one source address has towards
one server port. So ``Fleet`` starts ``processes`` children (``multiprocessing``'s
*spawn*: a fresh interpreter, not a fork of the running event loop), each raising its own
soft limit to the hard one and connecting from a loopback address of its own
(``127.0.0.2``, ``127.0.0.3``, ...: Linux routes all of 127.0.0.0/8 to the loopback
interface). Each child runs a ``scenarios.IdleSockets`` in its own asyncio loop and
obeys its parent over a pipe; the parent merges what they report.

The broadcast check is the same as in one process: every child forgets what it has, the
first child's first socket sends one message, and every socket of every child must get it
exactly once. Latencies come from ``time.time_ns()`` in each child (one clock), so the
percentiles are over all sockets. A child whose parent goes away sees its pipe close and
exits.
"""

import asyncio
import multiprocessing
from collections import Counter
from types import SimpleNamespace

import numpy as np

from .scenarios import IdleSockets
from .servers import raise_nofile
from .stats import percentiles

COUNTED = ("clients", "expected", "received", "lost", "duplicates", "strays", "reordered", "other_frames")


def source_address(index):
    """The loopback address child ``index`` connects from."""
    return f"127.0.0.{index + 2}"


def _child(conn, kind, port, path, source):
    """A child's main: raise the open-files limit, then serve the parent's commands."""
    raise_nofile()
    asyncio.run(_serve(conn, IdleSockets(kind, SimpleNamespace(port=port), path, source)))


async def _serve(conn, held):
    """Run ``(method, *args)`` commands on ``held`` and send back what each returns,
    until ``close`` or until the parent is gone."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            method, *args = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            await held.close()
            return
        value = getattr(held, method)(*args)
        if asyncio.iscoroutine(value):
            value = await value
        conn.send(value)
        if method == "close":
            return


class Fleet:
    """``IdleSockets``' interface (``grow``, ``broadcast``, ``close``, ``len``) over
    several processes; sockets are spread evenly over them."""

    def __init__(self, links):
        self.links = links  # [(process, connection)]
        self.held = [0] * len(links)

    @classmethod
    async def start(cls, processes, kind, server, path):
        context = multiprocessing.get_context("spawn")
        links = []
        for index in range(processes):
            parent, child = context.Pipe()
            process = context.Process(target=_child, args=(child, kind, server.port, path, source_address(index)),
                                      name=f"bench-fleet-{index}", daemon=True)
            process.start()
            child.close()
            links.append((process, parent))
        fleet = cls(links)
        await asyncio.gather(*(fleet._ask(i, "size") for i in range(processes)))  # all are up
        return fleet

    def __len__(self):
        return sum(self.held)

    async def _ask(self, index, method, *args):
        process, conn = self.links[index]
        conn.send((method, *args))
        try:
            return await asyncio.to_thread(conn.recv)
        except EOFError:
            raise RuntimeError(f"load-generator process {index} ended (exit code {process.exitcode})") from None

    async def _all(self, method, *args):
        return await asyncio.gather(*(self._ask(i, method, *args) for i in range(len(self.links))))

    async def grow(self, target, concurrency, give_up_after=None):
        """Open sockets until ``target`` are held in all; (how many opened, failures)."""
        count = len(self.links)
        each = max(1, concurrency // count)
        targets = [target // count + (1 if i < target % count else 0) for i in range(count)]
        give_up = give_up_after and max(1, give_up_after // count)
        answers = await asyncio.gather(*(self._ask(i, "grow", t, each, give_up) for i, t in enumerate(targets)))
        failures = Counter()
        for answer in answers:
            failures.update(answer[1])
        self.held = await self._all("size")
        return sum(answer[0] for answer in answers), failures

    async def broadcast(self, label, seq, timeout):
        """One message from the first child's first socket; merged accounting of all."""
        await self._all("arm")
        text = await self._ask(0, "send", seq)
        return merge(await self._all("collect", label, text, timeout, True))

    async def close(self):
        try:
            await self._all("close")
        finally:
            for process, conn in self.links:
                process.join(10)
                if process.is_alive():
                    process.kill()
                    process.join()
                conn.close()


def merge(results):
    """One account (as ``stats.account``) of the same single message from several parts."""
    merged = {key: sum(r[key] for r in results) for key in COUNTED}
    latencies = np.concatenate([r["_latencies_ms"] for r in results])
    received = [r for r in results if r["received"]]
    closed = Counter()
    for r in results:
        closed.update(r["closed"])
    merged.update(
        sent=max(r["sent"] for r in results),
        lost_everywhere=0 if received else max(r["lost_everywhere"] for r in results),
        other_samples=[s for r in results for s in r["other_samples"]][:5],
        closed=dict(closed),
        latency_ms=percentiles(latencies),
        # One message: it was complete when its last receiver had it.
        completion_ms=percentiles([max(r["completion_ms"]["max"] for r in received)] if received else []),
        first_recv_ns=min((r["first_recv_ns"] for r in received), default=None),
        last_recv_ns=max((r["last_recv_ns"] for r in received), default=None),
        drain_complete=all(r["drain_complete"] for r in results),
    )
    return merged
