"""One contract, three brokers: what the in-process broker, a single Redis and a Redis
Cluster all promise. A process receives the events of the rooms it holds, and only those.

The Redis tests use a redis-server owned by the tests; the fault tests kill and restart
it, or drop the subscriber the way Redis drops one whose output buffer overflows. The
cluster is the session's real one (three masters, three replicas)."""

import uuid

import gevent
import gevent.queue
import pytest

from webapp.broker import InProcessBroker, RedisBroker

from .chaos import TCPProxy
from .support import free_port, wait_for

ROOMS = [f"room-{n}" for n in range(12)]  # enough to land on every master of the cluster


class Subscriber:
    def __init__(self, broker, rooms=("lobby",)):
        self.broker = broker
        self.events = []
        self.resyncs = 0
        broker.start(self.events.append, self.resynced)
        for room in rooms:
            broker.hold(room)

    def resynced(self):
        self.resyncs += 1


def _redis_pair(url, **options):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    return RedisBroker(url, prefix, backoff_max=0.2, **options), RedisBroker(url, prefix, backoff_max=0.2, **options)


@pytest.fixture(params=["in-process", "redis", "cluster"])
def pair(request):
    """Two brokers as two worker processes would hold them (the same object in-process)."""
    if request.param == "in-process":
        broker = InProcessBroker(linger=0.2)
        yield broker, broker
        broker.stop()
        return
    server = request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    brokers = _redis_pair(server.url, linger=0.2)
    yield brokers
    for broker in brokers:
        broker.stop()


def started(pair, rooms=("lobby",)):
    subscribers = [Subscriber(broker, rooms) for broker in pair]
    wait_for(lambda: all(s.resyncs and getattr(s.broker, "connected", True) for s in subscribers),
             message="subscriptions")
    return subscribers


def test_an_event_reaches_every_subscriber(pair):
    first, second = started(pair)
    pair[0].publish("lobby", b"hello")
    wait_for(lambda: first.events and second.events, message="delivery")
    assert first.events == second.events == [b"hello"]


def test_events_from_one_publisher_keep_their_order(pair):
    _, second = started(pair, ROOMS)
    for n in range(200):
        pair[0].publish(ROOMS[0], str(n).encode())
    wait_for(lambda: len(second.events) == 200, message="200 events")
    assert second.events == [str(n).encode() for n in range(200)]


def test_every_room_reaches_its_holders_wherever_its_shard_is(pair):
    _, second = started(pair, ROOMS)
    for room in ROOMS:
        pair[0].publish(room, room.encode())
    wait_for(lambda: len(second.events) == len(ROOMS), message="one event per room")
    assert sorted(second.events) == sorted(room.encode() for room in ROOMS)


def test_start_reports_a_resync_and_the_broker_is_healthy(pair):
    subscribers = started(pair)
    assert all(s.resyncs >= 1 for s in subscribers)
    wait_for(lambda: all(broker.healthy() for broker in pair), message="healthy")


def test_a_hold_returns_once_the_subscription_is_confirmed(pair):
    """README: a room's first listener on a worker misses nothing published right after it joined."""
    first, second = started(pair)
    for n in range(20):
        room = f"fresh-{uuid.uuid4().hex[:6]}-{n}"
        assert pair[1].hold(room) is True
        pair[0].publish(room, room.encode())  # no wait: the subscription is in place
        wait_for(lambda room=room: room.encode() in second.events, timeout=2, message=f"event in {room}")


def test_a_process_receives_nothing_of_rooms_it_does_not_hold(pair):
    """README: a worker with nobody in a room receives none of its events."""
    if pair[0] is pair[1]:
        pair = (pair[0], InProcessBroker(linger=0.2))  # in-process: another "process"
    first = Subscriber(pair[0], ["lobby"])
    second = Subscriber(pair[1], ["elsewhere"])
    wait_for(lambda: first.resyncs and second.resyncs, message="subscriptions")
    for n in range(20):
        pair[0].publish("lobby", b"%d" % n)
    wait_for(lambda: len(first.events) == 20, message="the room's events where it is held")
    pair[1].publish("elsewhere", b"marker")
    wait_for(lambda: b"marker" in second.events, message="the marker")
    assert second.events == [b"marker"]


def test_a_released_room_goes_after_its_linger_and_a_quick_return_keeps_it(pair):
    first = Subscriber(pair[0], rooms=()) if pair[0] is not pair[1] else None
    second = Subscriber(pair[1])
    wait_for(lambda: second.resyncs and (first is None or first.resyncs), message="subscription")
    pair[1].release("lobby")
    pair[1].hold("lobby")  # a reload: back within the linger, still subscribed
    gevent.sleep(0.4)
    pair[0].publish("lobby", b"kept")
    wait_for(lambda: b"kept" in second.events, message="delivery after a quick return")
    pair[1].release("lobby")
    wait_for(lambda: "lobby" not in pair[1].rooms(), message="the linger to end")
    gevent.sleep(0.2)
    if pair[0] is not pair[1]:
        pair[0].publish("lobby", b"gone")
        gevent.sleep(0.3)
        assert b"gone" not in second.events


def test_starting_twice_in_one_process_subscribes_once(redis_server):
    broker = RedisBroker(redis_server.url, f"t-{uuid.uuid4().hex[:6]}")
    events = []
    broker.start(events.append, lambda: None)
    broker.start(events.append, lambda: None)
    assert broker.hold("lobby")
    broker.publish("lobby", b"once")
    wait_for(lambda: events, message="delivery")
    gevent.sleep(0.2)
    assert events == [b"once"]
    broker.stop()


# -- Redis faults ----------------------------------------------------------------------


@pytest.fixture
def redis_pair(own_redis):
    brokers = _redis_pair(own_redis.url)
    yield own_redis, brokers
    for broker in brokers:
        broker.stop()


def test_a_dead_redis_never_blocks_or_breaks_publishing(redis_pair):
    server, pair = redis_pair
    first, second = started(pair)
    server.kill()
    assert not pair[0].healthy()
    started_at = gevent.get_hub().loop.now()
    for n in range(100):
        pair[0].publish("lobby", b"while down %d" % n)  # returns at once, raises nothing
    assert gevent.get_hub().loop.now() - started_at < 0.5
    wait_for(lambda: not pair[1].connected, message="the subscriber to notice")
    started_at = gevent.get_hub().loop.now()
    assert pair[1].hold("another room") is False  # a join does not wait on a dead Redis
    assert gevent.get_hub().loop.now() - started_at < 0.5


def test_a_full_publish_queue_keeps_the_newest_copies_and_says_so_once(redis_pair, caplog):
    server, pair = redis_pair
    publisher = pair[0]
    publisher._queue = gevent.queue.Queue(3)  # not started: nothing drains it
    for n in range(10):
        publisher.publish("lobby", b"%d" % n)
    assert [publisher._queue.get_nowait()[1] for _ in range(3)] == [b"7", b"8", b"9"]
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "broker_queue_full"]
    assert len(warnings) == 1  # one line per DROP_LOG_EVERY seconds, not one per copy


def test_subscribers_come_back_by_themselves_and_resync(redis_pair):
    server, pair = redis_pair
    first, second = started(pair, ["lobby", "kitchen"])
    resyncs = second.resyncs
    server.kill()
    gevent.sleep(0.5)
    server.start()
    wait_for(lambda: second.resyncs > resyncs and pair[1].connected, timeout=5, message="re-subscription within 5 s")
    for room in ("lobby", "kitchen"):  # every room's subscription is back
        pair[0].publish(room, b"after in " + room.encode())
    wait_for(lambda: {b"after in lobby", b"after in kitchen"} <= set(second.events),
             message="delivery after the outage")


def test_what_could_not_be_published_is_kept_and_sent_once_redis_answers(redis_server):
    proxy = TCPProxy(("127.0.0.1", redis_server.port), free_port()).start()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    publisher = RedisBroker(f"redis://127.0.0.1:{proxy.port}/0", prefix, backoff_max=0.2)
    subscriber = RedisBroker(redis_server.url, prefix, backoff_max=0.2)
    try:
        _, second = started((publisher, subscriber))
        proxy.cut()  # the publisher alone loses Redis
        publisher.publish("lobby", b"kept while Redis was away")
        gevent.sleep(0.5)
        assert second.events == []
        proxy.restore()
        wait_for(lambda: b"kept while Redis was away" in second.events, timeout=5, message="the kept event")
    finally:
        publisher.stop()
        subscriber.stop()
        proxy.cut()


def test_a_redis_down_at_start_up_is_joined_when_it_answers(own_redis):
    own_redis.kill()
    broker = RedisBroker(own_redis.url, f"t-{uuid.uuid4().hex[:6]}", backoff_max=0.2)
    subscriber = Subscriber(broker, ["lobby"])
    assert not broker.healthy()
    own_redis.start()
    wait_for(lambda: subscriber.resyncs and broker.healthy(), timeout=5, message="connection once Redis answers")
    broker.publish("lobby", b"hello")
    wait_for(lambda: b"hello" in subscriber.events, message="delivery")
    broker.stop()


def test_a_dropped_subscriber_reconnects_and_resyncs(redis_pair):
    server, pair = redis_pair
    first, second = started(pair)
    resyncs = second.resyncs
    # What Redis does to a subscriber whose output buffer overflows.
    server.client().client_kill_filter(_type="pubsub")
    wait_for(lambda: second.resyncs > resyncs and pair[1].connected, timeout=5, message="re-subscription")
    pair[0].publish("lobby", b"still here")
    wait_for(lambda: b"still here" in second.events, message="delivery after the drop")


# -- Redis Cluster: slots that move ------------------------------------------------------


def test_a_room_whose_slot_moves_to_another_master_follows_it(redis_cluster):
    """Bad input: MOVED mid-operation is followed, never an error: a room whose slot moves
    keeps its events flowing (the old owner gives the channel away; the broker finds the
    new one and catches up)."""
    pair = _redis_pair(redis_cluster.url)
    try:
        room = f"moving-{uuid.uuid4().hex[:6]}"
        first, second = started(pair, [room])
        channel = pair[0].channel(room)
        pair[0].publish(room, b"before")
        wait_for(lambda: b"before" in second.events, message="delivery before the move")
        resyncs = second.resyncs
        source = redis_cluster.master_for(channel)
        target = next(node for node in redis_cluster.masters() if node is not source)
        redis_cluster.move_slot(channel, target)
        wait_for(lambda: second.resyncs > resyncs, timeout=5, message="re-subscription on the new owner")
        assert redis_cluster.master_for(channel) is target
        pair[0].publish(room, b"after")  # the publisher's map still names the old owner: MOVED
        wait_for(lambda: b"after" in second.events and b"after" in first.events, message="delivery after the move")
        wait_for(lambda: all(broker.healthy() for broker in pair), message="healthy")
        redis_cluster.move_slot(channel, source)
    finally:
        for broker in pair:
            broker.stop()
