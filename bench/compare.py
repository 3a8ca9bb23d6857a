"""Scenario (f): this server beside Flask-SocketIO, in the same run, with the same accounting.

Both get the same shape (``--peer-shape``, 10 rooms x 50 members), the same offered loads
(``--peer-steps``), the same number of gunicorn gevent workers (``--peer-workers``, 2) on
one port sharing one Redis, SQLite for storage (``--peer-db pg`` puts this server on
PostgreSQL instead), and the same load generator (this server
through its JSON WebSocket, the peer through Socket.IO over the websocket transport):
``scenarios.throughput`` measures both, one after the other. Then each holds
``--peer-idle`` idle sockets on one worker (``scenarios.capacity``) for the memory per
idle connection. Each is booted fresh for each part and stopped before the other runs, so
they never share the CPU; whatever else runs on the machine meanwhile is noise that
affects both, so compare their ratio rather than absolute numbers.
"""

from . import scenarios
from .peers import SocketIOCluster, ensure_venv
from .scenarios import log

SERVERS = ("this project", "Flask-SocketIO")


def _boot_peer(lab, workers):
    lab.count += 1
    cluster = SocketIOCluster(lab.tmp, f"socketio-1x{workers}-{lab.count}", lab.redis.url, 1, workers)
    cluster.spec = f"socketio-1x{workers}"
    lab.resources.add(cluster)
    cluster.start()
    log(f"booted {cluster.describe()}: port {cluster.servers[0].port}, workers {cluster.worker_pids()}")
    return cluster


def _boot(lab, server, workers, db="sqlite"):
    return lab.boot(f"{db}-1x{workers}") if server == SERVERS[0] else _boot_peer(lab, workers)


async def side_by_side(lab, args, guarded):
    """Throughput and idle memory of both servers; ``{"servers": [...]}`` for the report."""
    ensure_venv(log)
    rooms, per_room = (int(x) for x in args.peer_shape.lower().split("x"))
    entries = []
    for server in SERVERS:
        entry = {"server": server}
        cluster = _boot(lab, server, args.peer_workers, args.peer_db)
        try:
            entry["cluster"] = cluster.describe()
            entry["throughput"] = await guarded(f"throughput, {server}", lambda c=cluster: scenarios.throughput(
                c, rooms, per_room, args.peer_steps, args.step_seconds, args.drain_seconds, args.concurrency,
                args.throughput_budget, redis_pid=lab.redis.pid, p99_limit_ms=args.p99_limit, refine=0))
        finally:
            lab.release(cluster)
        cluster = _boot(lab, server, 1)
        try:
            entry["idle"] = await guarded(f"idle sockets, {server}", lambda c=cluster: scenarios.capacity(
                c, args.peer_idle, args.concurrency, args.capacity_budget))
        finally:
            lab.release(cluster)
        entries.append(entry)
    return {"shape": args.peer_shape, "workers": args.peer_workers, "db": args.peer_db, "servers": entries}
