"""The five scenarios. Each takes running servers (a ``Cluster``) and returns plain data.

Clients are spread over the cluster's servers round-robin (client i on server i mod n), so
with two servers half of every room's deliveries cross Redis. Every measurement follows the
same pattern: connect everyone, forget what arrived so far, send (recording each text in a
``Ledger``), wait until every client has as many messages as were sent to its room (or the
drain period ends), then ``stats.account``.
"""

import asyncio
import gc
import os
import resource
import sys
import time
import uuid
from collections import Counter

from .clients import connect, connect_ws, http_get
from .servers import cpu_seconds, rss_kb
from .stats import Ledger, account, make_text

HOST = "127.0.0.1"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def new_label(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall time and CPU time (load generator, server workers, redis) over an interval."""

    def __init__(self, cluster, redis_pid=None):
        self.cluster = cluster
        self.redis_pid = redis_pid
        self.start()

    def start(self):
        self.t0 = time.monotonic()
        self.self0 = self_cpu()
        self.workers0 = {pid: cpu_seconds(pid) for pid in self.cluster.worker_pids()}
        self.redis0 = cpu_seconds(self.redis_pid) if self.redis_pid else 0.0
        self.db0 = {pid: cpu_seconds(pid) for pid in self.cluster.database_pids()}

    def stop(self):
        wall = time.monotonic() - self.t0
        per_worker = {pid: cpu_seconds(pid) - before for pid, before in self.workers0.items()}
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(sum(per_worker.values()), 3),
            # One gevent worker runs on one core at a time: near 100 % means it is saturated.
            "worker_cpu_pct": [round(100 * cpu / wall, 1) for cpu in per_worker.values()] if wall > 0 else [],
            "redis_cpu_s": round((cpu_seconds(self.redis_pid) - self.redis0) if self.redis_pid else 0.0, 3),
            # PostgreSQL backends of the cluster's database (0 for SQLite: inside the workers).
            "db_cpu_s": round(
                sum(cpu_seconds(pid) - self.db0.get(pid, 0.0) for pid in self.cluster.database_pids()), 3
            ),
            "loadgen_cpu_pct": round(100 * (self_cpu() - self.self0) / wall, 1) if wall > 0 else None,
        }


# -- connecting ----------------------------------------------------------------------------


async def open_room(server, label):
    status, _ = await http_get(HOST, server.port, f"/{label}/")
    if status != 200:
        raise RuntimeError(f"GET /{label}/ on {server.name} answered {status}")


async def connect_many(specs, concurrency=200, timeout=20.0, what="clients", source=None, give_up_after=None):
    """Open ``specs`` (``(kind, server, path, name)``) at most ``concurrency`` at a time,
    from the local address ``source`` (default: the kernel's choice); once
    ``give_up_after`` have failed, the ones not yet started are not tried.

    Returns (clients, failures): the clients that opened, in order, and a Counter of why
    the others did not.
    """
    semaphore = asyncio.Semaphore(concurrency)
    failures = Counter()
    started = time.monotonic()
    done = 0

    async def one(kind, server, path, name):
        nonlocal done
        async with semaphore:
            if give_up_after and sum(failures.values()) >= give_up_after:
                failures[f"not tried after {give_up_after} failures"] += 1
                return None
            try:
                client = await connect(kind, HOST, server.port, path, name, timeout, source=source)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return None
            done += 1
            if len(specs) >= 2000 and done % 2000 == 0:
                log(f"  {done}/{len(specs)} {what} open ({time.monotonic() - started:.1f}s)")
            return client

    results = await asyncio.gather(*(one(*spec) for spec in specs))
    return [c for c in results if c is not None], failures


async def close_all(clients, timeout=3.0):
    """Close handshakes for every WebSocket, abort every stream; abort what lingers."""
    for client in clients:
        if hasattr(client, "start_close"):
            client.start_close()
        else:
            client.abort()
    waiting = [c.closed for c in clients if not c.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=timeout)
    for client in clients:
        if not client.is_closed:
            client.abort()
    await asyncio.sleep(0)


def settle_gc():
    """Move everything alive now out of the collector's way (fewer full collections)."""
    gc.collect()
    gc.freeze()


# -- waiting for deliveries -------------------------------------------------------------------


async def drain(members, ledger, timeout, exclude=()):
    """Wait until every client has received as many messages as its room was sent (or is
    closed), or ``timeout`` passes. True when nobody is short."""
    waiting = [
        (client, ledger.count(label))
        for label, clients in members.items()
        for client in clients
        if client not in exclude
    ]
    deadline = time.monotonic() + timeout
    while True:
        waiting = [(c, k) for c, k in waiting if c.n < k and not c.is_closed]
        if not waiting or time.monotonic() >= deadline:
            return not waiting
        await asyncio.sleep(0.005 if len(waiting) < 1000 else 0.02)


async def settle(members, ledger, timeout, grace=0.1, keep_latencies=False):
    """``drain``, a short grace for duplicates, then account; if anything is missing, wait
    out the rest of the drain period and account again (lost = missing at its end)."""
    deadline = time.monotonic() + timeout
    await drain(members, ledger, timeout)
    await asyncio.sleep(grace)
    result = account(ledger, members, keep_latencies)
    if result["lost"] and time.monotonic() < deadline:
        await asyncio.sleep(deadline - time.monotonic())
        result = account(ledger, members, keep_latencies)
    result["drain_complete"] = result["lost"] == 0
    return result


def spread(count, servers, start=0):
    """Server of client ``start + i`` for i in range(count): round-robin."""
    return [servers[(start + i) % len(servers)] for i in range(count)]


# -- (a) capacity ------------------------------------------------------------------------------


class IdleSockets:
    """Idle sockets of one room held by this process (up to its open-files limit), and the
    broadcast check: ``arm`` (forget what arrived), ``send`` from the first of them,
    ``collect`` (everyone must get it exactly once). ``bench.fleet`` runs one of these in
    each of several processes."""

    def __init__(self, kind, server, path, source=None):
        self.kind, self.server, self.path, self.source = kind, server, path, source
        self.clients = []

    def __len__(self):
        return len(self.clients)

    def size(self):
        return len(self.clients)

    async def grow(self, target, concurrency, give_up_after=None):
        """Open sockets until ``target`` are held; (how many opened, Counter of failures)."""
        specs = [(self.kind, self.server, self.path, f"i{len(self.clients) + i}")
                 for i in range(target - len(self.clients))]
        new, failures = await connect_many(specs, concurrency, what="idle sockets", source=self.source,
                                           give_up_after=give_up_after)
        self.clients += new
        settle_gc()
        return len(new), failures

    def arm(self):
        for client in self.clients:
            client.reset()

    def send(self, seq):
        """Send one broadcast from the first socket; its text."""
        text = make_text(seq, "cap")
        self.clients[0].send_chat("cap", text)
        return text

    async def collect(self, label, text, timeout, keep_latencies=False):
        ledger = Ledger([label])
        ledger.record(label, text)
        return await settle({label: self.clients}, ledger, timeout, keep_latencies=keep_latencies)

    async def broadcast(self, label, seq, timeout):
        self.arm()
        return await self.collect(label, self.send(seq), timeout)

    async def close(self):
        await close_all(self.clients)
        self.clients = []
        gc.unfreeze()


def open_files(pid):
    """(file descriptors open, soft limit) of a process, or (None, None) if it is gone."""
    try:
        count = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/limits") as file:
            limit = next(int(line.split()[3]) for line in file if line.startswith("Max open files"))
        return count, limit
    except (OSError, StopIteration, ValueError):
        return None, None


async def capacity(cluster, steps, concurrency, budget, settle_s=1.5, broadcast_timeout=30.0, processes=1):
    """Idle WebSockets on the first server's worker(s) (one, unless the cluster was booted
    with more), in steps; RSS per step (summed over its workers) and a broadcast to all.
    With ``processes`` > 1 the sockets are held by that many load-generator processes,
    each from a loopback address of its own (``bench.fleet``)."""
    server = cluster.servers[0]
    pids = server.worker_pids()
    pid = pids[0]
    label = new_label("cap")
    path, kind = cluster.socket_path(label), cluster.client_kind
    await open_room(server, label)
    started = time.monotonic()

    # Warm up the worker (imports, the hub, the broker loops) before the baseline.
    warm, failures = await connect_many([(kind, server, path, f"w{i}") for i in range(20)], concurrency)
    if failures or not warm:
        raise RuntimeError(f"warm-up connections failed: {dict(failures)}")
    ledger = Ledger([label])
    text = make_text(0, "warm")
    warm[0].send_chat("warm", text)
    ledger.record(label, text)
    await settle({label: warm}, ledger, 5)
    await close_all(warm)
    await asyncio.sleep(settle_s)
    gc.collect()
    baseline = sum(rss_kb(p) for p in pids)
    baseline_fds, worker_nofile = open_files(pid)
    log(f"  capacity: worker(s) {pids} baseline RSS {baseline / 1024:.1f} MiB, {baseline_fds} files open "
        f"in {pid} (limit {worker_nofile})")

    if processes > 1:
        from .fleet import Fleet

        held = await Fleet.start(processes, kind, server, path)
    else:
        held = IdleSockets(kind, server, path)
    rows = []
    prev_rss, prev_n = baseline, 0
    try:
        for target in steps:
            if time.monotonic() - started > budget:
                log(f"  capacity: time budget of {budget:.0f}s spent; stopping before {target}")
                break
            need = target - len(held)
            t0 = time.monotonic()
            opened, failures = await held.grow(target, concurrency, give_up_after=max(100, concurrency))
            connect_s = time.monotonic() - t0
            await asyncio.sleep(settle_s)
            rss = sum(rss_kb(p) for p in pids)
            fds = [open_files(p)[0] for p in pids]
            n = len(held)
            # The broadcast: one message from one of them reaches all of them.
            result = await held.broadcast(label, target, broadcast_timeout)
            row = {
                "target": target,
                "connections": n,
                "connect_failures": sum(failures.values()),
                "failure_reasons": dict(failures.most_common(3)),
                "connect_s": round(connect_s, 2),
                "connects_per_s": round(opened / connect_s, 1) if connect_s > 0 else None,
                "rss_kb": rss,
                "rss_per_conn_kb": round((rss - baseline) / n, 2) if n else None,
                "marginal_kb_per_conn": round((rss - prev_rss) / (n - prev_n), 2) if n > prev_n else None,
                "rss_after_broadcast_kb": sum(rss_kb(p) for p in pids),
                "worker_open_files": fds,
                "broadcast": result,
            }
            rows.append(row)
            log(
                f"  capacity: {n} sockets, RSS {rss / 1024:.1f} MiB ({row['rss_per_conn_kb']} kB/conn), "
                f"broadcast {result['received']}/{result['expected']} p99 {result['latency_ms']['p99']} ms"
            )
            prev_rss, prev_n = rss, n
            if failures or result["lost"] or opened < need:
                log(f"  capacity: stopping (failures {dict(failures.most_common(3))}, lost {result['lost']})")
                break
    finally:
        await held.close()
    return {
        "cluster": cluster.describe(),
        "worker_pid": pid,
        "worker_pids": pids,
        "baseline_rss_kb": baseline,
        "baseline_open_files": baseline_fds,
        "worker_open_files_limit": worker_nofile,
        "generator_processes": processes,
        "steps": rows,
        "max_connections": max((r["connections"] for r in rows if not r["broadcast"]["lost"]), default=0),
    }


# -- (b) and (d) fan-out ------------------------------------------------------------------------


async def fanout(cluster, kind, sizes, messages, gap, concurrency, budget, per_message_timeout=15.0):
    """One message at a time into a room that grows through ``sizes`` members.

    ``kind`` "ws": members are WebSockets and the sender is member 0 (it receives its own
    message too). "sse": members are event streams; the sender is an extra WebSocket that
    is not counted. Each message is sent once every member has the previous one, plus
    ``gap`` seconds.
    """
    servers = cluster.servers
    label = new_label("fan" if kind == "ws" else "sse")
    await open_room(servers[0], label)
    ws_path, sse_path = f"/chat/{label}/", f"/{label}/events"
    sender = await connect_ws(HOST, servers[0].port, ws_path, "sender")
    members = [sender] if kind == "ws" else []
    rows = []
    started = time.monotonic()
    try:
        for size in sizes:
            if time.monotonic() - started > budget:
                log(f"  fan-out {kind}: time budget of {budget:.0f}s spent; stopping before {size}")
                break
            need = size - len(members)
            t0 = time.monotonic()
            targets = spread(need, servers, start=len(members))
            specs = [
                (kind, server, ws_path if kind == "ws" else sse_path, f"m{len(members) + i}")
                for i, server in enumerate(targets)
            ]
            new, failures = await connect_many(specs, concurrency, what=f"{kind} members")
            members += new
            connect_s = time.monotonic() - t0
            settle_gc()
            if not rows:
                await warm_up({label: members}, [(sender, label, "warm")], 4, {}, seconds=0.5)
            await asyncio.sleep(0.3)
            for client in members:
                client.reset()
            sender.reset()
            ledger = Ledger([label])
            room = {label: members}
            clock = Clock(cluster)
            for seq in range(messages):
                text = make_text(seq, "f")
                sender.send_chat("fan", text)
                ledger.record(label, text)
                if not await drain(room, ledger, per_message_timeout):
                    log(f"  fan-out {kind}: message {seq} did not reach everyone in {per_message_timeout:.0f}s; "
                        "no more messages at this size")
                    break
                await asyncio.sleep(gap)
            cpu = clock.stop()
            result = await settle(room, ledger, per_message_timeout)
            deliveries = result["received"]
            row = {
                "size": len(members),
                "target": size,
                "messages": messages,
                "connect_failures": sum(failures.values()),
                "failure_reasons": dict(failures.most_common(3)),
                "connect_s": round(connect_s, 2),
                **result,
                **cpu,
                "server_cpu_us_per_delivery": round(cpu["server_cpu_s"] / deliveries * 1e6, 2) if deliveries else None,
            }
            rows.append(row)
            lat = result["latency_ms"]
            log(
                f"  fan-out {kind}: {len(members)} members, {deliveries}/{result['expected']} delivered, "
                f"p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, lost {result['lost']}, "
                f"dup {result['duplicates']}"
            )
            if failures:
                log(f"  fan-out {kind}: {sum(failures.values())} connections failed: {dict(failures)}; stopping")
                break
    finally:
        await close_all(members + ([sender] if kind == "sse" else []))
        gc.unfreeze()
    return {"cluster": cluster.describe(), "kind": kind, "sizes": rows}


# -- pacing ------------------------------------------------------------------------------------


async def paced_send(senders, rate, seconds, ledger, padding="", seqs=None):
    """Send ``rate`` messages/s in total for ``seconds``, round-robin over ``senders``
    (``(client, label, name)``). Returns (messages sent, seconds it took)."""
    seqs = seqs if seqs is not None else {}
    n = len(senders)
    sent = 0
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        due = min(int(rate * elapsed) + 1, int(rate * seconds + 0.999))
        while sent < due:
            client, label, name = senders[sent % n]
            seq = seqs.get(name, 0)
            seqs[name] = seq + 1
            text = make_text(seq, name, padding)
            client.send_chat(name, text)
            ledger.record(label, text)
            sent += 1
        await asyncio.sleep(0.002)
    return sent, time.monotonic() - t0


async def warm_up(members, senders, rate, seqs, seconds=1.0, padding=""):
    """Unmeasured traffic first, so cold paths (first writes, lazy set-up) stay out of the
    numbers; its stragglers are waited for, then forgotten."""
    ledger = Ledger(list(members))
    await paced_send(senders, max(rate, 2 / seconds), seconds, ledger, padding, seqs)
    await drain(members, ledger, 5.0)
    await asyncio.sleep(0.2)
    for clients in members.values():
        for client in clients:
            client.reset()


# -- (c) throughput -----------------------------------------------------------------------------


async def throughput(cluster, rooms, per_room, steps, step_seconds, drain_s, concurrency, budget,
                     redis_pid=None, p99_limit_ms=250.0, refine=1):
    """``rooms`` rooms of ``per_room`` WebSockets, 2 senders per room, rising offered load
    (deliveries/s) until p99 > ``p99_limit_ms`` or anything is lost, duplicated or refused.
    After the first failing step, up to ``refine`` steps between the last passing load and
    the failing one (geometric midpoints) narrow the maximum down."""
    servers = cluster.servers
    labels = [new_label(f"tp{r}") for r in range(rooms)]
    await asyncio.gather(*(open_room(servers[i % len(servers)], label) for i, label in enumerate(labels)))
    specs = []
    for r, label in enumerate(labels):
        for i in range(per_room):
            specs.append((cluster.client_kind, servers[(r * per_room + i) % len(servers)], cluster.socket_path(label),
                          f"r{r}c{i}"))
    t0 = time.monotonic()
    clients, failures = await connect_many(specs, concurrency, what="members")
    connect_s = time.monotonic() - t0
    if failures:
        await close_all(clients)
        raise RuntimeError(f"{sum(failures.values())} of {len(specs)} connections failed: {dict(failures)}")
    members = {label: clients[r * per_room:(r + 1) * per_room] for r, label in enumerate(labels)}
    # Senders: members 0 and 1 of each room (on different servers when there are two),
    # ordered so consecutive messages go to different rooms.
    senders = [(members[label][k], label, f"s{r}x{k}") for k in (0, 1) for r, label in enumerate(labels)]
    settle_gc()
    seqs = {}
    await warm_up(members, senders, steps[0] / per_room, seqs)
    rows = []
    started = time.monotonic()
    stop_reason = "all steps passed"
    queue = list(steps)
    last_pass = last_fail = None
    refined = 0
    try:
        while queue:
            offered = queue.pop(0)
            if time.monotonic() - started + step_seconds + drain_s > budget:
                stop_reason = f"time budget ({budget:.0f}s)"
                break
            rate = offered / per_room  # messages/s over all rooms
            for client in clients:
                client.reset()
            ledger = Ledger(labels)
            clock = Clock(cluster, redis_pid)
            sent, send_s = await paced_send(senders, rate, step_seconds, ledger, seqs=seqs)
            drain_t0 = time.monotonic()
            await drain(members, ledger, drain_s)
            cpu = clock.stop()
            result = await settle(members, ledger, max(0.0, drain_s - (time.monotonic() - drain_t0)))
            deliveries = result["received"]
            # From the first send to the last arrival (at least the sending period).
            span_s = send_s
            if result["last_recv_ns"] and ledger.first_ns is not None:
                span_s = max(span_s, (result["last_recv_ns"] - ledger.first_ns) / 1e9)
            p99 = result["latency_ms"]["p99"]
            problems = []
            if result["lost"]:
                problems.append(f"lost {result['lost']}")
            if result["duplicates"]:
                problems.append(f"duplicated {result['duplicates']}")
            if result["other_frames"]:
                problems.append(f"{result['other_frames']} error/other frames")
            if result["closed"]:
                problems.append(f"closed {result['closed']}")
            if p99 is None or p99 > p99_limit_ms:
                problems.append(f"p99 {p99} ms > {p99_limit_ms:.0f} ms")
            row = {
                "offered_deliveries_per_s": offered,
                "offered_messages_per_s": round(rate, 2),
                "sent": sent,
                "sent_messages_per_s": round(sent / send_s, 1),
                "deliveries_per_s": round(deliveries / span_s, 1) if span_s > 0 else None,
                **result,
                **cpu,
                "server_cpu_pct": round(100 * cpu["server_cpu_s"] / cpu["wall_s"], 1),
                "server_cpu_us_per_delivery": round(cpu["server_cpu_s"] / deliveries * 1e6, 2) if deliveries else None,
                "redis_db_cpu_us_per_delivery": (
                    round((cpu["redis_cpu_s"] + cpu["db_cpu_s"]) / deliveries * 1e6, 2) if deliveries else None
                ),
                "passed": not problems,
                "problems": problems,
            }
            rows.append(row)
            lat = result["latency_ms"]
            log(
                f"  throughput {rooms}x{per_room}: offered {offered}/s -> {row['deliveries_per_s']}/s, "
                f"p50 {lat['p50']} p99 {lat['p99']} ms, server CPU {row['server_cpu_us_per_delivery']} us/delivery, "
                f"loadgen {cpu['loadgen_cpu_pct']}% {'OK' if not problems else 'FAIL: ' + '; '.join(problems)}"
            )
            if row["sent_messages_per_s"] < 0.9 * rate:
                problems.append("the load generator could not send at the offered rate")
                row["passed"] = False
            if problems:
                stop_reason = f"at {offered}/s: " + "; ".join(problems)
                last_fail = offered if last_fail is None else min(last_fail, offered)
            else:
                last_pass = offered if last_pass is None else max(last_pass, offered)
            if last_fail is not None:
                # Narrow down between the best pass and the lowest fail, then stop.
                middle = int(round((last_pass * last_fail) ** 0.5, -2)) if last_pass else 0
                if refined < refine and last_pass and last_pass < middle < last_fail:
                    refined += 1
                    queue = [middle]
                else:
                    break
    finally:
        await close_all(clients)
        gc.unfreeze()
    passed = [r for r in rows if r["passed"]]
    best = max(passed, key=lambda r: r["deliveries_per_s"] or 0, default=None)
    return {
        "cluster": cluster.describe(),
        "rooms": rooms,
        "per_room": per_room,
        "clients": len(clients),
        "connect_s": round(connect_s, 2),
        "step_seconds": step_seconds,
        "steps": rows,
        "stop_reason": stop_reason,
        "max_sustained_deliveries_per_s": best["deliveries_per_s"] if best else 0,
        "at_best": {
            "offered": best["offered_deliveries_per_s"],
            "p50_ms": best["latency_ms"]["p50"],
            "p99_ms": best["latency_ms"]["p99"],
            "server_cpu_us_per_delivery": best["server_cpu_us_per_delivery"],
        } if best else None,
    }


# -- (e) one slow client -----------------------------------------------------------------------


async def slow_client(cluster, members_n, rate, seconds, padding, drain_s, concurrency, rcvbuf=4096):
    """p99 of a room's readers without, then with, one member that stops reading."""
    servers = cluster.servers
    label = new_label("slow")
    await open_room(servers[0], label)
    path = f"/chat/{label}/"
    specs = [("ws", server, path, f"m{i}") for i, server in enumerate(spread(members_n, servers))]
    clients, failures = await connect_many(specs, concurrency)
    if failures:
        await close_all(clients)
        raise RuntimeError(f"connections failed: {dict(failures)}")
    senders = [(clients[0], label, "s0")]
    seqs = {}
    room = {label: clients}
    pad = "x" * padding
    slow = None
    try:

        async def measure(tag):
            for client in clients:
                client.reset()
            ledger = Ledger([label])
            clock = Clock(cluster)
            sent, _ = await paced_send(senders, rate, seconds, ledger, pad, seqs)
            await drain(room, ledger, drain_s)
            cpu = clock.stop()
            result = await settle(room, ledger, drain_s / 2)
            result.update(cpu)
            lat = result["latency_ms"]
            log(f"  slow client {tag}: p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms, "
                f"lost {result['lost']}, dup {result['duplicates']}")
            return result, ledger

        settle_gc()
        await warm_up(room, senders, rate, seqs, padding=pad)
        absent, _ = await measure("absent")
        # The slow member: a small receive buffer, and it stops reading once it is in.
        slow = await connect_ws(HOST, servers[0].port, path, "slow", rcvbuf=rcvbuf)
        slow.pause()
        slow.reset()
        present, ledger = await measure("present")
        # Let it read again: what reached it, and how the server let it go.
        slow.resume()
        deadline = time.monotonic() + drain_s + 2
        while time.monotonic() < deadline and not slow.is_closed and slow.n < ledger.count(label):
            await asyncio.sleep(0.05)
        fate = account(ledger, {label: [slow]})
        received = [item for item in slow.got if item.__class__ is not int]
        sent = ledger.by_room[label]
        fate["close_code"] = slow.close_code  # None: no close frame reached it
        fate["connection_ended"] = slow.is_closed
        fate["client_error"] = repr(slow.error) if slow.error else None
        # What it got should be the first k messages, in order, then nothing (a drop).
        fate["got_gapless_prefix"] = received == sent[:len(received)]
        fate["bytes_sent_to_it"] = sum(len(text) + 115 for text in sent)  # + JSON fields, frame header
        log(f"  slow client itself: got {fate['received']}/{fate['expected']}, connection "
            f"{'ended' if slow.is_closed else 'open'}, close code {slow.close_code}")
    finally:
        await close_all(clients + ([slow] if slow else []))
        gc.unfreeze()
    frame_bytes = padding + 130
    return {
        "cluster": cluster.describe(),
        "members": members_n,
        "rate_messages_per_s": rate,
        "seconds": seconds,
        "approx_frame_bytes": frame_bytes,
        "slow_rcvbuf": rcvbuf,
        "absent": absent,
        "present": present,
        "p99_absent_ms": absent["latency_ms"]["p99"],
        "p99_present_ms": present["latency_ms"]["p99"],
        "slow_client": fate,
    }
