"""Scale-out scenarios (opt-in: ``python -m bench.run --scenarios scale,pg-servers``).

* **scale**: (1) what a server pays for rooms it does not serve. Two servers of one
  worker on one Redis; every client of the loaded rooms is on server B, server A holds
  only an idle room of its own. A's CPU over the same period with no traffic at all is
  its idle cost; (A's CPU under B's traffic - A's idle CPU) / B's CPU is the *foreign-room
  share* (the target: under 3 %). (2) deliveries/s as servers are added: 1, 2, 3, ...
  servers of one worker, each with rooms of its own (disjoint) and the same load per
  server; total deliveries/s, CPU per server, p99, losses.
* **pg-servers**: four servers of one worker on one scratch PostgreSQL database, senders
  spread over all four: every sender in ONE room (inserts serialized by the room's row
  lock) against one room per sender (no lock shared), at rising message rates, with the
  peak number of PostgreSQL connections the servers held (their pools) against
  ``max_connections``.

Every client comes from the load generator on this machine, which shares its cores with
the servers, Redis and PostgreSQL: CPU shares are a ratio of two measurements taken at
the same time (so noise hits both), absolute rates are a property of this machine.
"""

import asyncio
import threading
import time
from datetime import datetime, timezone

import psycopg2

from .scenarios import close_all, connect_many, drain, log, new_label, open_room, paced_send, settle, warm_up
from .servers import cpu_seconds
from .stats import Ledger

SCENARIOS = ("scale", "pg-servers")

PRESETS = {
    "full": {"scale_servers": [1, 2, 3], "scale_seconds": 10.0, "scale_rate": 400.0, "scale_members": 30,
             "scale_rooms": 10, "scale_added_rate": 150.0, "pg_rates": [200, 400, 800, 1200, 1600, 2400, 3200],
             "pg_seconds": 5.0},
    "quick": {"scale_servers": [1, 2], "scale_seconds": 2.0, "scale_rate": 100.0, "scale_members": 10,
              "scale_rooms": 4, "scale_added_rate": 50.0, "pg_rates": [100, 200], "pg_seconds": 1.5},
}


def _ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


# flag, type, help: the defaults come from PRESETS (quick or full).
OPTIONS = (
    ("--scale-servers", _ints, "server counts for deliveries/s as servers are added, e.g. 1,2,3"),
    ("--scale-seconds", float, "seconds per scale measurement"),
    ("--scale-rate", float, "messages/s on the loaded server (foreign-room share)"),
    ("--scale-added-rate", float, "messages/s per server as servers are added"),
    ("--scale-members", int, "members per room"),
    ("--scale-rooms", int, "rooms per loaded server"),
    ("--pg-rates", _ints, "pg-servers: message rates to try (messages/s)"),
    ("--pg-seconds", float, "pg-servers: seconds per rate"),
)


def add_arguments(parser):
    """This module's options."""
    group = parser.add_argument_group("scale-out scenarios (scale, pg-servers)")
    for flag, kind, text in OPTIONS:
        group.add_argument(flag, type=kind, help=text)


def _options(args):
    preset = PRESETS["quick" if args.quick else "full"]
    return {key: getattr(args, key, None) if getattr(args, key, None) is not None else value
            for key, value in preset.items()}


# -- building the load ---------------------------------------------------------------------------


async def rooms_on(server, rooms, members, senders_per_room, tag, concurrency):
    """``rooms`` rooms whose ``members`` WebSockets are all on ``server``: (members by label,
    senders as paced_send wants them)."""
    labels = [new_label(f"{tag}{r}") for r in range(rooms)]
    await asyncio.gather(*(open_room(server, label) for label in labels))
    specs = [("ws", server, f"/chat/{label}/", f"{tag}r{r}c{i}")
             for r, label in enumerate(labels) for i in range(members)]
    clients, failures = await connect_many(specs, concurrency, what=f"{tag} members")
    if failures:
        await close_all(clients)
        raise RuntimeError(f"{sum(failures.values())} of {len(specs)} connections failed: {dict(failures)}")
    by_label = {label: clients[r * members:(r + 1) * members] for r, label in enumerate(labels)}
    senders = [(by_label[label][k], label, f"{tag}s{r}x{k}") for k in range(senders_per_room)
               for r, label in enumerate(labels)]
    return by_label, senders


def _cpu(servers):
    return {server.name: sum(cpu_seconds(pid) for pid in server.worker_pids()) for server in servers}


async def measure(servers, members, senders, rate, seconds, drain_s, seqs):
    """Send ``rate`` messages/s for ``seconds``; the deliveries, their integrity, and each
    server's worker CPU seconds over the sending and the drain."""
    for clients in members.values():
        for client in clients:
            client.reset()
    ledger = Ledger(list(members))
    before, t0 = _cpu(servers), time.monotonic()
    sent, send_s = await paced_send(senders, rate, seconds, ledger, seqs=seqs)
    await drain(members, ledger, drain_s)
    after, wall = _cpu(servers), time.monotonic() - t0
    result = await settle(members, ledger, 0.5)
    span_s = send_s
    if result["last_recv_ns"] and ledger.first_ns is not None:
        span_s = max(span_s, (result["last_recv_ns"] - ledger.first_ns) / 1e9)
    return {
        "sent": sent,
        "sent_per_s": round(sent / send_s, 1),
        "deliveries": result["received"],
        "deliveries_per_s": round(result["received"] / span_s, 1) if span_s else None,
        "lost": result["lost"],
        "duplicates": result["duplicates"],
        "other_frames": result["other_frames"],
        "p50_ms": result["latency_ms"]["p50"],
        "p99_ms": result["latency_ms"]["p99"],
        "wall_s": round(wall, 2),
        "cpu_s": {name: round(after[name] - before[name], 3) for name in after},
    }


# -- scale ---------------------------------------------------------------------------------------


async def foreign_share(lab, opts, concurrency):
    """Server A's CPU for server B's rooms, as a share of B's CPU for the same traffic."""
    cluster = lab.boot("sqlite-2x1")
    clients = []
    try:
        a, b = cluster.servers
        idle_room, _ = await rooms_on(a, 1, 10, 0, "own", concurrency)
        loaded, senders = await rooms_on(b, opts["scale_rooms"], opts["scale_members"], 2, "far", concurrency)
        clients = [c for group in (idle_room, loaded) for cs in group.values() for c in cs]
        seqs = {}
        await warm_up(loaded, senders, opts["scale_rate"], seqs)
        seconds = opts["scale_seconds"]
        before, t0 = _cpu([a, b]), time.monotonic()
        await asyncio.sleep(seconds)
        after = _cpu([a, b])
        idle_rate = (after[a.name] - before[a.name]) / (time.monotonic() - t0)
        run = await measure([a, b], loaded, senders, opts["scale_rate"], seconds, 5.0, seqs)
        cpu_a, cpu_b = run["cpu_s"][a.name], run["cpu_s"][b.name]
        foreign = max(0.0, cpu_a - idle_rate * run["wall_s"])
        result = {
            "cluster": cluster.describe(),
            "rooms_on_b": opts["scale_rooms"],
            "members": opts["scale_members"],
            "messages_per_s": opts["scale_rate"],
            **run,
            "a_idle_cpu_pct": round(100 * idle_rate, 2),
            "a_cpu_s": cpu_a,
            "b_cpu_s": cpu_b,
            "a_foreign_cpu_s": round(foreign, 3),
            "foreign_share_pct": round(100 * foreign / cpu_b, 2) if cpu_b else None,
            "foreign_share_raw_pct": round(100 * cpu_a / cpu_b, 2) if cpu_b else None,
            "a_foreign_us_per_message": round(foreign / run["sent"] * 1e6, 1) if run["sent"] else None,
        }
        log(f"  foreign rooms: A {cpu_a:.2f}s CPU (idle rate {100 * idle_rate:.2f}%), B {cpu_b:.2f}s, "
            f"share {result['foreign_share_pct']}% (raw {result['foreign_share_raw_pct']}%), "
            f"{run['deliveries_per_s']} deliveries/s, lost {run['lost']}")
        return result
    finally:
        await close_all(clients)
        lab.release(cluster)


async def adding_servers(lab, opts, concurrency):
    """The same load per server, 1, 2, ... servers: total deliveries/s and CPU per server."""
    rows = []
    for count in opts["scale_servers"]:
        cluster = lab.boot(f"sqlite-{count}x1")
        clients = []
        try:
            members, senders = {}, []
            for index, server in enumerate(cluster.servers):
                own, own_senders = await rooms_on(server, opts["scale_rooms"], opts["scale_members"], 2,
                                                  f"n{count}s{index}", concurrency)
                members.update(own)
                senders.extend(own_senders)
            clients = [c for cs in members.values() for c in cs]
            seqs = {}
            rate = opts["scale_added_rate"] * count
            await warm_up(members, senders, rate, seqs)
            run = await measure(cluster.servers, members, senders, rate, opts["scale_seconds"], 5.0, seqs)
            run["servers"] = count
            run["messages_per_s"] = rate
            run["worker_cpu_pct"] = {name: round(100 * cpu / run["wall_s"], 1) for name, cpu in run["cpu_s"].items()}
            run["server_cpu_us_per_delivery"] = (
                round(sum(run["cpu_s"].values()) / run["deliveries"] * 1e6, 2) if run["deliveries"] else None)
            rows.append(run)
            log(f"  {count} server(s): {run['deliveries_per_s']} deliveries/s, CPU % {run['worker_cpu_pct']}, "
                f"p99 {run['p99_ms']} ms, lost {run['lost']}")
        finally:
            await close_all(clients)
            lab.release(cluster)
    return {"per_server_messages_per_s": opts["scale_added_rate"], "rooms_per_server": opts["scale_rooms"],
            "members": opts["scale_members"], "runs": rows}


async def scale(lab, args):
    opts = _options(args)
    return {"foreign_rooms": await foreign_share(lab, opts, args.concurrency),
            "adding_servers": await adding_servers(lab, opts, args.concurrency)}


# -- pg-servers ----------------------------------------------------------------------------------


class BackendPeak:
    """Samples how many PostgreSQL connections a database has, keeping the peak."""

    def __init__(self, scratch):
        self.conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        self.conn.autocommit = True
        self.name = scratch.name
        self.peak = 0
        self._task = None

    def count(self):
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.name,))
            return cur.fetchone()[0]

    def setting(self, name):
        with self.conn.cursor() as cur:
            cur.execute(f"SHOW {name}")
            return int(cur.fetchone()[0])

    async def _sample(self):
        while True:
            self.peak = max(self.peak, self.count())
            await asyncio.sleep(0.1)

    def start(self):
        self.peak = 0
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def stop(self):
        self._task.cancel()
        return self.peak


def insert_path(dsn, room_ids, writers, seconds):
    """``writers`` connections (threads) storing messages as the servers do (one call of
    ``chat_append_message``, committed) for ``seconds``, writer i into ``room_ids[i % n]``:
    commits per second, and the mean time of one."""
    counts = [0] * writers
    latencies = [0.0] * writers
    stop = time.monotonic() + seconds

    def write(index):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        room = room_ids[index % len(room_ids)]
        with conn.cursor() as cur:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                cur.execute("SELECT message_id FROM chat_append_message(%s, %s, %s, %s)",
                            (room, "bench", "insert path", datetime.now(timezone.utc).replace(tzinfo=None)))
                cur.fetchone()
                latencies[index] += time.perf_counter() - t0
                counts[index] += 1
        conn.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    t0 = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(counts)
    return {"writers": writers, "rooms": len(room_ids), "commits_per_s": round(total / (time.monotonic() - t0), 1),
            "mean_ms": round(1000 * sum(latencies) / total, 2) if total else None}


async def pg_servers(lab, args, servers=4, senders_per_server=2, listeners=2, p99_limit_ms=250.0):
    """Four servers on one PostgreSQL: the insert path with and without a shared room."""
    opts = _options(args)
    cluster = lab.boot(f"pg-{servers}x1")
    peak = BackendPeak(cluster.scratch)
    result = {"cluster": cluster.describe(), "max_connections": peak.setting("max_connections"),
              "superuser_reserved_connections": peak.setting("superuser_reserved_connections"),
              "database_pool_size_per_worker": 20, "senders": servers * senders_per_server, "shapes": {}}
    try:
        for shape in ("one room", "a room per sender"):
            rooms = 1 if shape == "one room" else servers * senders_per_server
            labels = [new_label("pg") for _ in range(rooms)]
            await asyncio.gather(*(open_room(cluster.servers[0], label) for label in labels))
            specs = []
            for n in range(servers * senders_per_server):
                specs.append(("ws", cluster.servers[n % servers], f"/chat/{labels[n % rooms]}/", f"sender{n}"))
            for n in range(listeners * rooms):
                specs.append(("ws", cluster.servers[n % servers], f"/chat/{labels[n % rooms]}/", f"listener{n}"))
            clients, failures = await connect_many(specs, args.concurrency, what="pg members")
            if failures:
                await close_all(clients)
                raise RuntimeError(f"connections failed: {dict(failures)}")
            members = {label: [c for c, spec in zip(clients, specs, strict=True) if spec[2] == f"/chat/{label}/"]
                       for label in labels}
            senders = [(clients[n], labels[n % rooms], f"sender{n}") for n in range(servers * senders_per_server)]
            seqs = {}
            rows = []
            try:
                await warm_up(members, senders, opts["pg_rates"][0], seqs)
                for rate in opts["pg_rates"]:
                    peak.start()
                    run = await measure(cluster.servers, members, senders, rate, opts["pg_seconds"], 5.0, seqs)
                    run["peak_connections"] = peak.stop()
                    run["messages_per_s"] = rate
                    # Sustained: every message stored and delivered, at the offered rate. A p99
                    # over the limit is reported, but the ramp goes on (on a shared machine
                    # the p99 is the noisiest number) until it passes ten times the limit.
                    problems = [p for p, bad in (
                        (f"lost {run['lost']}", run["lost"] or run["other_frames"]),
                        ("could not send at the rate", run["sent_per_s"] < 0.9 * rate),
                        (f"p99 {run['p99_ms']} ms", (run["p99_ms"] or 0) > 10 * p99_limit_ms),
                    ) if bad]
                    run["sustained"] = not problems
                    run["within_p99_limit"] = not problems and (run["p99_ms"] or 0) <= p99_limit_ms
                    run["problems"] = problems
                    rows.append(run)
                    log(f"  pg {shape}: {rate} msg/s -> p50 {run['p50_ms']} p99 {run['p99_ms']} ms, "
                        f"peak {run['peak_connections']} connections, {'OK' if not problems else problems}")
                    if problems:
                        break
            finally:
                await close_all(clients)
            result["shapes"][shape] = {
                "rooms": rooms, "steps": rows,
                "max_sustained_messages_per_s": max((r["messages_per_s"] for r in rows if r["sustained"]), default=0),
                "max_within_p99_limit_messages_per_s": max(
                    (r["messages_per_s"] for r in rows if r["within_p99_limit"]), default=0),
            }
        # The insert path alone, without sockets: 8 writers into one room (each waits for
        # the room's row lock) and into 8 rooms, as 8 senders on 4 servers would write.
        labels = [new_label("ins") for _ in range(8)]
        await asyncio.gather(*(open_room(cluster.servers[0], label) for label in labels))
        with psycopg2.connect(cluster.scratch.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT id FROM room WHERE label = ANY(%s)", (labels,))
            room_ids = [row[0] for row in cur.fetchall()]
        seconds = opts["pg_seconds"]
        result["insert_path"] = {
            "one writer": await asyncio.to_thread(insert_path, cluster.scratch.url, room_ids[:1], 1, seconds),
            "one room": await asyncio.to_thread(insert_path, cluster.scratch.url, room_ids[:1], 8, seconds),
            "a room per writer": await asyncio.to_thread(insert_path, cluster.scratch.url, room_ids, 8, seconds),
        }
        log(f"  insert path: {result['insert_path']}")
    finally:
        lab.release(cluster)
    return result


async def run(lab, args, chosen, guarded, store):
    """The hook ``bench.run`` calls: each chosen scenario of this module, stored by name."""
    if "scale" in chosen:
        store("scale", await guarded("scale", lambda: scale(lab, args)))
    if "pg-servers" in chosen:
        store("pg_servers", await guarded("pg-servers", lambda: pg_servers(lab, args)))
