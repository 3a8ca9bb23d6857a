"""What the servers keep in Redis besides pub/sub: who is here, open connections per
address, message rate limits. Real gunicorn servers and a real redis-server.

Each entry in Redis must come back after Redis loses it (a restart), ids must not collide
between servers whose workers have the same pid (containers), and a per-address limit
must count a client's messages on every worker together.
"""

import json
import subprocess

import pytest

from .support import LiveServer, unique_prefix, wait_for
from .test_live_presence import Watcher
from .wsclient import Refused, WSClient

pytestmark = pytest.mark.live


def _here(server, label):
    rooms = {room["label"]: room["here"] for room in server.get("/api/rooms").json()["rooms"]}
    return rooms.get(label)


def _refused(url):
    """True when a new socket is refused with 429 (an admitted one is closed again)."""
    try:
        WSClient(url).close()
    except Refused as refused:
        return refused.status == 429
    return False


def test_presence_and_connection_counts_come_back_after_a_redis_restart(live, own_redis):
    server = live(REDIS_URL=own_redis.url, PRESENCE_TTL="3", MAX_CONNECTIONS_PER_ADDRESS=3)
    server.open_room("restart")
    ann = Watcher(server, "restart", handle="ann")
    ann.presence(["ann"])
    held = [WSClient(server.ws_url("/chat/restart/")) for _ in range(2)]  # three open: the cap
    url = server.ws_url("/chat/restart/")
    assert _refused(url)

    own_redis.kill()
    own_redis.start()  # same port, empty: every entry is gone
    assert own_redis.client().dbsize() == 0
    # Within one refresh (PRESENCE_TTL / 3 = 1 s) ann is listed in Redis again and the
    # three connections count there again, though nobody reconnected.
    redis = own_redis.client()
    prefix = server.env["REDIS_CHANNEL_PREFIX"]
    wait_for(lambda: redis.zcard(f"{prefix}:presence:restart") == 1, timeout=8, message="ann in Redis again")
    wait_for(lambda: redis.zcard(f"{prefix}:conns:127.0.0.1") == 3, timeout=8,
             message="three connections in Redis again")
    wait_for(lambda: _here(server, "restart") == 1, timeout=8, message="ann listed again")
    wait_for(lambda: _refused(url), timeout=8, message="the cap counting the open sockets again")
    assert ann.ws.closed is None
    for ws in held:
        ws.close()


def _unshared(tmp_path, name, database_url, **env):
    """A server whose processes live in a PID namespace of their own: its gunicorn master
    is pid 1 there and its worker pid 2, like the same image in two containers."""
    return LiveServer(tmp_path, env=env, database_url=database_url, name=name,
                      wrapper=["unshare", "--pid", "--fork", "--kill-child=SIGTERM"])


def _namespace_pids(server):
    """The pids the server's workers see for themselves (inside their namespace)."""
    def children(pid):
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(child) for child in out.split()]

    pids = []
    for master in children(server.process.pid):
        for worker in children(master):
            with open(f"/proc/{worker}/status") as status:
                line = next(line for line in status if line.startswith("NSpid:"))
            pids.append(int(line.split()[-1]))
    return pids


@pytest.fixture
def twins(tmp_path, redis_server):
    """Two servers on one Redis and one database whose workers have the same pid."""
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    prefix = unique_prefix()  # shared by the two: they must hear each other
    servers = [_unshared(tmp_path, name, database, REDIS_URL=redis_server.url, MAX_CONNECTIONS_PER_ADDRESS=4,
                         WEB_CONCURRENCY=1, REDIS_CHANNEL_PREFIX=prefix) for name in ("one", "two")]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_servers_whose_workers_share_a_pid_keep_apart_in_redis(twins):
    one, two = twins
    assert _namespace_pids(one) == _namespace_pids(two) == [2]
    one.open_room("twins")
    observer = Watcher(one, "twins")  # watches, is not listed
    ann_here = Watcher(one, "twins", handle="ann")
    observer.presence(["ann"])
    ann_there = Watcher(two, "twins", handle="ann")  # the first entry on each worker
    ann_there.presence(["ann"])
    ann_there.ws.close()  # must not take the other server's "ann" with it
    bob = Watcher(two, "twins", handle="bob")
    assert observer.next_of("presence", where=lambda handles: "bob" in handles) == ["ann", "bob"]
    assert _here(one, "twins") == 2
    # three sockets open (observer, ann, bob) of MAX_CONNECTIONS_PER_ADDRESS=4
    fourth = WSClient(two.ws_url("/chat/twins/"))
    assert _refused(one.ws_url("/chat/twins/")) and _refused(two.ws_url("/chat/twins/"))
    for ws in (fourth, observer.ws, ann_here.ws, bob.ws):
        ws.close()


def _spread_over_workers(server, label, per_worker):
    """Open sockets until ``per_worker`` of them sit on each of the server's workers."""
    by_worker = {}
    opened = []
    while len(by_worker) < 2 or min(len(held) for held in by_worker.values()) < per_worker:
        assert len(opened) < 20 * per_worker, f"sockets all landed on {list(by_worker)}"
        ws = WSClient(server.ws_url(f"/chat/{label}/"))
        opened.append(ws)
        port = ws.sock.getsockname()[1]
        worker = wait_for(lambda port=port: server.worker_holding(port), message="the socket's worker")
        by_worker.setdefault(worker, []).append(ws)
    assert set(by_worker) == set(server.worker_pids())
    return [held[:per_worker] for held in by_worker.values()], opened


def _stored(server, label):
    return len(server.get(f"/api/rooms/{label}/messages?limit=200").json()["messages"])


def _check_the_address_limit_spans_workers(server):
    """RATE_LIMIT=3/60: 3 per socket, 30 per address. Six sockets on each worker send
    three each (36 in all, 18 per worker): exactly 30 are stored."""
    server.open_room("spread")
    (first, second), opened = _spread_over_workers(server, "spread", 6)
    for n in range(3):
        for ws in [ws for pair in zip(first, second, strict=True) for ws in pair]:
            ws.send(json.dumps({"handle": "flood", "message": f"m{n}"}))
    wait_for(lambda: _stored(server, "spread") + server.metric("chat_refused_total", reason="rate_limited") >= 36,
             timeout=15, message="every message stored or refused")
    assert _stored(server, "spread") == 30
    for ws in opened:
        ws.close()


@pytest.mark.parametrize("redis_kind", ["redis_server", "redis_cluster"])
def test_the_address_rate_limit_counts_across_workers(live, request, redis_kind):
    url = request.getfixturevalue(redis_kind).url  # a single Redis, or a node of a cluster
    _check_the_address_limit_spans_workers(live(WEB_CONCURRENCY=2, REDIS_URL=url, RATE_LIMIT="3/60"))


def _labels_on_every_master(cluster, prefix):
    """One room label per master, chosen so that the room's presence set lives there."""
    labels = {}
    for n in range(200):
        label = f"spread-{n}"
        labels.setdefault(cluster.master_for(f"{prefix}:presence:{label}").port, label)
        if len(labels) == len(cluster.masters()):
            return list(labels.values())
    raise AssertionError("no label for some master")


def test_presence_and_connection_caps_on_a_redis_cluster(live, redis_cluster, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = dict(REDIS_URL=redis_cluster.url, REDIS_CHANNEL_PREFIX="clustered", MAX_CONNECTIONS_PER_ADDRESS=9,
               WEB_CONCURRENCY=1)
    one, two = live("one", database_url=database, **env), live("two", database_url=database, **env)
    labels = _labels_on_every_master(redis_cluster, "clustered")
    watchers, people = [], []
    for label in labels:
        one.open_room(label)
        watchers.append(Watcher(one, label))
        people.append((Watcher(one, label, handle="ann"), Watcher(two, label, handle="bob")))
    for watcher in watchers:
        watcher.presence(["ann", "bob"])
    # the home page reads every room's count at once, across the masters
    assert {label: _here(two, label) for label in labels} == dict.fromkeys(labels, 2)
    # nine sockets open from this address: the cap, on both servers
    assert _refused(one.ws_url(f"/chat/{labels[0]}/")) and _refused(two.ws_url(f"/chat/{labels[0]}/"))
    for watcher, (_, bob) in zip(watchers, people, strict=True):
        bob.ws.close()
        watcher.presence(["ann"])
    assert {label: _here(one, label) for label in labels} == dict.fromkeys(labels, 1)
    WSClient(two.ws_url(f"/chat/{labels[0]}/")).close()  # a freed place
    for watcher, (ann, _) in zip(watchers, people, strict=True):
        watcher.ws.close()
        ann.ws.close()
