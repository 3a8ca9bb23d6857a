"""Leases (the entries behind presence and connection caps) against a real Redis Cluster
(every key on its own master, entries a failover lost written again by the next refresh)
and a real redis-server that stops answering."""

import signal
import time
import uuid

import pytest

from webapp.leases import REDIS_ERRORS, Leases

from .support import wait_for


def _keys_on_every_master(cluster, prefix):
    keys = {}
    for n in range(200):
        key = f"{prefix}:{n}"
        keys.setdefault(cluster.master_for(key).port, key)
    assert len(keys) == len(cluster.masters())
    return list(keys.values())


def _refreshed(leases):
    try:
        leases.refresh()
        return True
    except REDIS_ERRORS:
        return False


def test_leases_on_every_master_come_back_after_a_failover(redis_cluster):
    prefix = f"lease-{uuid.uuid4().hex[:6]}"
    keys = _keys_on_every_master(redis_cluster, prefix)
    leases = Leases(redis_cluster.url, ttl=30)
    for key in keys:
        leases.add(key, f"{key}-a")
        leases.hold(key, f"{key}-b")  # held, not yet written: the refresh writes it
    assert leases.live_many(keys) == [[f"{key}-a"] for key in keys]
    assert sorted(leases.refresh()) == sorted(keys)  # every key had a member to write anew
    assert leases.live_many(keys) == [[f"{key}-a", f"{key}-b"] for key in keys]
    assert leases.refresh() == []  # nothing lost since

    # The master of the cluster's default node (TIME goes there) dies, and its replica,
    # which may not have every write, takes over; the keys it lost come back.
    default = leases.client().get_default_node()
    dead = next(node for node in redis_cluster.masters() if node.port == default.port)
    victim = next(key for key in keys if redis_cluster.master_for(key).port == dead.port)
    dead.client().delete(victim)  # as if the write never reached the replica
    redis_cluster.kill_master(dead)
    try:
        redis_cluster.wait_failover(dead)
        wait_for(lambda: _refreshed(leases), timeout=20, message="a refresh after the failover")
        assert leases.live(victim) == [f"{victim}-a", f"{victim}-b"]
        leases.remove(victim, f"{victim}-a")
        assert leases.live_many(keys)[keys.index(victim)] == [f"{victim}-b"]
    finally:
        redis_cluster.restart(dead)


def test_a_frozen_redis_holds_one_caller_briefly_then_none_until_a_refresh_finds_it_back(own_redis):
    leases = Leases(own_redis.url, ttl=30)
    leases.add("k", "a")
    own_redis.process.send_signal(signal.SIGSTOP)  # connections stay open, nothing answers
    try:
        started = time.monotonic()
        with pytest.raises(REDIS_ERRORS):
            leases.add("k", "b")
        assert time.monotonic() - started < 1.5
        started = time.monotonic()
        for member in ("c", "d", "e"):  # known to be away: no caller waits
            with pytest.raises(REDIS_ERRORS):
                leases.add("k", member)
        assert time.monotonic() - started < 0.1
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert leases.refresh() == ["k"]  # a refresh asks anyway, and writes what was held
    assert leases.live("k") == ["a", "b", "c", "d", "e"]
