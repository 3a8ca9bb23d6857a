"""One contract, two brokers: what the in-process and the Redis broker both promise.

The Redis tests use a redis-server owned by the tests; the fault tests kill and restart
it, or drop the subscriber the way Redis drops one whose output buffer overflows."""

import time
import uuid

import gevent
import gevent.queue
import pytest

from webapp.broker import InProcessBroker, RedisBroker

from .support import wait_for


class Subscriber:
    def __init__(self, broker):
        self.broker = broker
        self.events = []
        self.resyncs = 0
        broker.start(self.events.append, self.resynced)

    def resynced(self):
        self.resyncs += 1


@pytest.fixture(params=["in-process", "redis"])
def pair(request):
    """Two brokers as two worker processes would hold them (the same object in-process)."""
    if request.param == "in-process":
        broker = InProcessBroker()
        yield broker, broker
        broker.stop()
        return
    server = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    brokers = RedisBroker(server.url, prefix, backoff_max=0.2), RedisBroker(server.url, prefix, backoff_max=0.2)
    yield brokers
    for broker in brokers:
        broker.stop()


def started(pair):
    subscribers = [Subscriber(broker) for broker in pair]
    wait_for(lambda: all(s.resyncs for s in subscribers), message="subscriptions")
    return subscribers


def test_an_event_reaches_every_subscriber(pair):
    first, second = started(pair)
    pair[0].publish("lobby", b"hello")
    wait_for(lambda: first.events and second.events, message="delivery")
    assert first.events == second.events == [b"hello"]


def test_events_from_one_publisher_keep_their_order(pair):
    _, second = started(pair)
    for n in range(200):
        pair[0].publish(f"room-{n % 3}", str(n).encode())
    wait_for(lambda: len(second.events) == 200, message="200 events")
    assert second.events == [str(n).encode() for n in range(200)]


def test_start_reports_a_resync_and_the_broker_is_healthy(pair):
    subscribers = started(pair)
    assert all(s.resyncs >= 1 for s in subscribers)
    assert all(broker.healthy() for broker in pair)


def test_starting_twice_in_one_process_subscribes_once(redis_server):
    broker = RedisBroker(redis_server.url, f"t-{uuid.uuid4().hex[:6]}")
    events = []
    broker.start(events.append, lambda: None)
    broker.start(events.append, lambda: None)
    wait_for(lambda: broker.subscribed, message="subscription")
    broker.publish("lobby", b"once")
    wait_for(lambda: events, message="delivery")
    gevent.sleep(0.2)
    assert events == [b"once"]
    broker.stop()


# -- Redis faults ----------------------------------------------------------------------


@pytest.fixture
def redis_pair(own_redis):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    brokers = RedisBroker(own_redis.url, prefix, backoff_max=0.2), RedisBroker(own_redis.url, prefix, backoff_max=0.2)
    yield own_redis, brokers
    for broker in brokers:
        broker.stop()


def test_a_dead_redis_never_blocks_or_breaks_publishing(redis_pair):
    server, pair = redis_pair
    first, second = started(pair)
    server.kill()
    assert not pair[0].healthy()
    started_at = time.monotonic()  # the real clock (the event loop's is cached between turns)
    for n in range(100):
        pair[0].publish("lobby", b"while down %d" % n)  # returns at once, raises nothing
    assert time.monotonic() - started_at < 0.5
    wait_for(lambda: not pair[1].subscribed, message="the subscriber to notice")


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
    first, second = started(pair)
    resyncs = second.resyncs
    server.kill()
    gevent.sleep(0.5)
    pair[0].publish("lobby", b"kept while Redis was down")
    server.start()
    wait_for(lambda: second.resyncs > resyncs, timeout=5, message="re-subscription within 5 s")
    # the publisher kept what it could not send, and sends it once Redis is back
    wait_for(lambda: b"kept while Redis was down" in second.events, timeout=5, message="kept event")
    pair[0].publish("lobby", b"after")
    wait_for(lambda: b"after" in second.events, message="delivery after the outage")


def test_a_dropped_subscriber_reconnects_and_resyncs(redis_pair):
    server, pair = redis_pair
    first, second = started(pair)
    resyncs = second.resyncs
    # What Redis does to a subscriber whose output buffer overflows.
    server.client().client_kill_filter(_type="pubsub")
    wait_for(lambda: second.resyncs > resyncs, timeout=5, message="re-subscription")
    pair[0].publish("lobby", b"still here")
    wait_for(lambda: b"still here" in second.events, message="delivery after the drop")
