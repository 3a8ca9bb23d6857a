"""Scale-out against real servers: a worker pays only for the rooms it serves, a room's
first socket on a worker misses nothing, and a real Redis Cluster carries rooms on every
master, follows a master's death by itself, and is joined late if it is down at start-up.

Every server here runs one gunicorn gevent worker; servers share one SQLite database
(the source of truth) and one Redis or the session's Redis Cluster."""

import time
import uuid

import gevent
import pytest

from .chaos import Participant, assert_nothing_lost, stored_messages
from .support import wait_for

pytestmark = pytest.mark.live

LINGER = "0.5"


def fresh(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def servers(live, tmp_path, url_one, url_two=None):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    one = live("one", database_url=database, REDIS_URL=url_one, BROKER_LINGER=LINGER)
    two = live("two", database_url=database, REDIS_URL=url_two or url_one, BROKER_LINGER=LINGER)
    return one, two


def health(server):
    response = server.get("/healthz")
    return response.status_code, response.json()


# -- a single Redis ----------------------------------------------------------------------


def test_a_worker_with_nobody_in_a_room_receives_none_of_its_events(live, redis_server, tmp_path):
    """README: a worker receives a room's events only while it serves someone there."""
    one, two = servers(live, tmp_path, redis_server.url)
    label = fresh("busy")
    two.open_room(label)
    reader = two.socket(label)
    redis = redis_server.client()
    channel = f"chat:{label}"
    wait_for(lambda: redis.pubsub_numsub(channel) == [(channel.encode(), 1)], message="one subscriber: server two")
    for n in range(30):
        assert two.post_json(label, "a", f"m{n}").status_code == 201
    assert [m["message"] for m in reader.collect(30)] == [f"m{n}" for n in range(30)]
    assert two.metric("chat_broker_events_received_total") >= 30
    assert one.metric("chat_broker_events_received_total") == 0
    # A stream on server one subscribes it; the room is let go a linger after it closes.
    stream = one.events(label)
    assert redis.pubsub_numsub(channel) == [(channel.encode(), 2)]
    two.post_json(label, "a", "to both")
    assert stream.messages(1)
    stream.close()
    wait_for(lambda: redis.pubsub_numsub(channel) == [(channel.encode(), 1)], message="server one to let go")
    received = one.metric("chat_broker_events_received_total")
    two.post_json(label, "a", "only two")
    reader.collect(32)
    gevent.sleep(0.3)
    assert one.metric("chat_broker_events_received_total") == received
    reader.close()


def test_a_rooms_first_socket_on_a_worker_misses_nothing_posted_right_after_its_handshake(
        live, redis_server, tmp_path):
    """README: joins are exact: a room's first socket on a worker hears a message posted
    elsewhere right after its handshake, within a second (not through the 5 s sweep)."""
    one, two = servers(live, tmp_path, redis_server.url)
    for n in range(25):
        label = fresh(f"first{n}")
        two.open_room(label)
        socket = one.socket(label)  # the room's first listener on server one
        started = time.monotonic()
        assert two.post_json(label, "a", "right after").status_code == 201
        (message,) = socket.collect(1, timeout=1.0)
        assert message["message"] == "right after" and time.monotonic() - started < 1.0
        socket.close()


# -- a Redis Cluster ---------------------------------------------------------------------


def rooms_on_every_master(cluster, prefix, per_master=1):
    """Fresh labels whose channels hash to each master of the cluster."""
    wanted = {node.port: [] for node in cluster.masters()}
    while any(len(labels) < per_master for labels in wanted.values()):
        label = fresh(prefix)
        labels = wanted[cluster.master_for(f"chat:{label}").port]
        if len(labels) < per_master:
            labels.append(label)
    return wanted


def test_rooms_on_every_master_reach_sockets_and_streams_on_two_servers(live, redis_cluster, tmp_path):
    """README: on a Redis Cluster every room is carried by its shard, across servers."""
    one, two = servers(live, tmp_path, redis_cluster.url_of(redis_cluster.nodes[0]),
                       redis_cluster.url_of(redis_cluster.nodes[1]))
    rooms = [label for labels in rooms_on_every_master(redis_cluster, "shard", 2).values() for label in labels]
    clients = {}
    for label in rooms:
        one.open_room(label)
        clients[label] = (one.socket(label), two.socket(label), one.events(label), two.events(label))
    for label in rooms:
        clients[label][0].send("a", f"socket on one in {label}")
        assert two.post_json(label, "b", f"api on two in {label}").status_code == 201
    for label, (socket_one, socket_two, stream_one, stream_two) in clients.items():
        expected = sorted([f"socket on one in {label}", f"api on two in {label}"])
        for socket in (socket_one, socket_two):
            assert sorted(m["message"] for m in socket.collect(2)) == expected
            socket.close()
        for stream in (stream_one, stream_two):
            assert len(stream.messages(2)) == 2
            stream.close()
    assert health(one)[0] == health(two)[0] == 200


def test_a_master_killed_mid_chat_loses_nothing_and_delivery_resumes(live, redis_cluster, tmp_path):
    """README: a master's death on a cluster: nothing acknowledged lost, each message once,
    /healthz back to 200, live delivery back within a second of the failover."""
    one, two = servers(live, tmp_path, redis_cluster.url_of(redis_cluster.nodes[0]),
                       redis_cluster.url_of(redis_cluster.nodes[1]))
    by_master = rooms_on_every_master(redis_cluster, "failover", 2)
    victim = redis_cluster.masters()[0]
    label, quiet = by_master[victim.port]
    one.open_room(quiet)
    listener = two.socket(quiet)  # nobody on server two sends here: only its subscription brings news
    other = next(labels[0] for port, labels in by_master.items() if port != victim.port)
    crowds = {}
    for room in (label, other):
        one.open_room(room)
        crowds[room] = [Participant(lambda s=s, room=room: s.ws_url(f"/chat/{room}/"), room, f"{name}{i}").start()
                        for s, name in ((one, "one"), (two, "two")) for i in range(3)]
    gevent.sleep(0.5)  # let every server settle (subscriptions confirmed, first sweep done)

    def chat(rounds, tag, pause=0.05):
        for n in range(rounds):
            for crowd in crowds.values():
                for person in crowd:
                    person.send(f"{tag} {n} from {person.name}")
            gevent.sleep(pause)

    chat(3, "before")
    pump = gevent.spawn(chat, 40, "around the kill", 0.1)  # about 4 s of chat through the failover
    gevent.sleep(0.3)
    killed_at = time.monotonic()
    redis_cluster.kill_master(victim)
    try:
        saw_503 = wait_for(lambda: health(one)[0] == 503, timeout=10, message="/healthz 503 while failing over")
        # While the shard is away, messages are still stored and acknowledged.
        assert two.post_json(label, "api", "while failing over").status_code == 201
        redis_cluster.wait_failover(victim)
        failed_over_at = time.monotonic()
        failover = failed_over_at - killed_at
        # Live again: a message posted on one server now reaches the other's within a second
        # (through its new subscription: the sweep that would also bring it runs every 5 s).
        assert one.post_json(quiet, "api", "live again").status_code == 201
        assert listener.collect(1, timeout=5)[0]["message"] == "live again"
        resumed = time.monotonic() - failed_over_at
        wait_for(lambda: health(one)[0] == health(two)[0] == 200, timeout=10, message="/healthz back to 200")
        healthy_after = time.monotonic() - failed_over_at
        pump.join()
        chat(3, "after")
        counted = 0
        for room, crowd in crowds.items():
            stored = stored_messages(one.url, room)
            assert_nothing_lost(crowd, stored)
            counted += len(stored) * len(crowd)
        print(f"\nfailover {failover:.2f} s; live delivery {resumed:.2f} s and /healthz 200 "
              f"{healthy_after:.2f} s after it; {counted} deliveries counted, none lost or doubled")
        assert saw_503 and resumed < 1.0
    finally:
        for crowd in crowds.values():
            for person in crowd:
                person.stop()
        redis_cluster.restart(victim)


def test_a_cluster_node_down_at_start_up_is_joined_when_it_answers(live, redis_cluster, tmp_path):
    """Bad input: REDIS_URL names a cluster node that is down: the server starts, says
    broker: error, and joins the cluster once the node answers."""
    node = next(node for node in redis_cluster.nodes if node.role() == "slave")
    node.kill()
    try:
        server = live("late", database_url=f"sqlite:///{tmp_path}/late.sqlite3",
                      REDIS_URL=redis_cluster.url_of(node), healthy=False)
        assert health(server) == (503, {"status": "degraded", "db": "ok", "broker": "error"})
        label = fresh("late")
        server.open_room(label)
        socket = server.socket(label)
        assert server.post_json(label, "a", "before Redis").status_code == 201  # chat works meanwhile
        assert socket.collect(1)[0]["message"] == "before Redis"
    finally:
        redis_cluster.restart(node)
    wait_for(lambda: health(server)[0] == 200, timeout=10, message="the server to join the cluster")
    other = live("other", database_url=f"sqlite:///{tmp_path}/late.sqlite3", REDIS_URL=redis_cluster.url)
    other.post_json(label, "b", "through the cluster")
    assert [m["message"] for m in socket.collect(2)] == ["before Redis", "through the cluster"]
    socket.close()
