"""Rate limits counted in a real Redis (and a real Redis Cluster), as two workers would
hold them, and what each limit does while Redis is away."""

import logging
import signal
import time
import uuid

import pytest
import redis

from webapp.settings import Rate
from webapp.throttle import CLOSED, OPEN, SharedWindows, Throttle, make_throttle, redis_storage

from .support import wait_for


def _worker(url, prefix, retry=0.2):
    """A throttle as one worker process holds it."""
    throttle = Throttle(SharedWindows(lambda: redis_storage(url, prefix), retry=retry))
    throttle.add("address", Rate(3, 60))
    throttle.add("strict", Rate(3, 60), when_unreachable=CLOSED)
    throttle.add("lenient", Rate(3, 60), when_unreachable=OPEN)
    throttle.add("connection", Rate(2, 60), shared=False)
    return throttle


def _events(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_a_shared_limit_counts_across_workers_and_each_limit_survives_an_outage(own_redis, caplog):
    caplog.set_level(logging.INFO, logger="webapp.throttle")
    one, two = _worker(own_redis.url, "t"), _worker(own_redis.url, "t")
    assert [one.hit("address", "a"), two.hit("address", "a"), one.hit("address", "a")] == [True] * 3
    assert two.hit("address", "a") is False and one.hit("address", "a") is False
    assert [one.hit("connection", "c1") for _ in range(3)] == [True, True, False]
    assert two.hit("connection", "c1") is True  # per connection: never shared

    own_redis.kill()
    assert [one.hit("address", "b") for _ in range(4)] == [True] * 3 + [False]  # this worker's count
    assert two.hit("address", "b") is True  # ... and only this worker's
    assert one.hit("strict", "x") is False and one.hit("lenient", "x") is True
    assert [one.hit("lenient", "y") for _ in range(5)] == [True] * 5
    assert len(_events(caplog, "rate_limits_unshared")) == 2  # once per worker, not per message

    own_redis.start()
    wait_for(lambda: one.hit("address", uuid.uuid4().hex) and not one.shared.down, timeout=5,
             message="counted in Redis again")
    assert len(_events(caplog, "rate_limits_shared")) == 1
    assert [one.hit("address", "d"), one.hit("address", "d"), one.hit("address", "d")] == [True] * 3
    wait_for(lambda: two.test("address", uuid.uuid4().hex) and not two.shared.down, timeout=5,
             message="the other worker back too")
    assert two.hit("address", "d") is False
    assert len(_events(caplog, "rate_limits_unshared")) == 2


def test_a_shared_limit_counts_across_workers_on_a_redis_cluster(redis_cluster):
    prefix = f"t{uuid.uuid4().hex[:6]}"
    one, two = _worker(redis_cluster.url, prefix), _worker(redis_cluster.url, prefix)
    addresses = [uuid.uuid4().hex for _ in range(40)]  # varied keys: CRC16 clusters similar ones
    for address in addresses:
        assert [one.hit("address", address), two.hit("address", address), one.hit("address", address)] == [True] * 3
        assert two.hit("address", address) is False
    cluster = redis.RedisCluster.from_url(redis_cluster.url)
    keys = [f"{prefix}:limits:address/{address}/3/60/second" for address in addresses]
    assert all(cluster.exists(key) for key in keys)
    # the addresses' windows are spread over every master
    assert len({cluster.get_node_from_key(key).port for key in keys}) == 3
    cluster.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0"])
def test_a_redis_that_never_answered_leaves_every_limit_to_its_fallback(url):
    throttle = _worker(url, "t")
    assert [throttle.hit("address", "a") for _ in range(4)] == [True] * 3 + [False]
    assert throttle.hit("strict", "a") is False and throttle.hit("lenient", "a") is True


def test_a_redis_that_stops_answering_holds_a_sender_once_at_most_briefly(own_redis):
    throttle = _worker(own_redis.url, "t", retry=0.1)
    assert throttle.hit("address", "a")
    own_redis.process.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        started = time.monotonic()
        assert throttle.hit("address", "a")
        assert time.monotonic() - started < 1.5  # its socket timeout, or the deadline
        for _ in range(5):  # Redis is known to be away: probes run aside, senders never wait
            time.sleep(0.15)
            started = time.monotonic()
            assert throttle.hit("address", uuid.uuid4().hex)
            assert time.monotonic() - started < 0.1
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    wait_for(lambda: throttle.hit("address", uuid.uuid4().hex) and not throttle.shared.down, timeout=5,
             message="counted in Redis again")


def test_every_limit_the_settings_declare_is_shared_new_rooms_too(redis_server):
    config = {"REDIS_URL": redis_server.url, "REDIS_CHANNEL_PREFIX": f"t{uuid.uuid4().hex[:6]}",
              "RATE_LIMIT": Rate(1, 60), "ADDRESS_RATE_FACTOR": 2, "ROOM_CREATE_LIMIT": Rate(2, 60),
              "ADMIN_RATE_LIMIT": Rate(1, 60)}
    one, two = make_throttle(config), make_throttle(config)
    assert [one.allow("a", "c1"), two.allow("a", "c2"), one.allow("a", "c3")] == [True, True, False]
    assert one.allow("a", "c1") is False  # its connection's own window (1) too
    assert [one.allow_room("a"), two.allow_room("a"), one.allow_room("a"), two.allow_room("b")] == [
        True, True, False, True]
    assert [one.hit("admin", "a"), two.hit("admin", "a")] == [True, False]
    off = make_throttle({**config, "RATE_LIMIT": Rate(0, 1), "ROOM_CREATE_LIMIT": Rate(0, 1)})
    assert all(off.allow("a", "c") and off.allow_room("a") for _ in range(50))
