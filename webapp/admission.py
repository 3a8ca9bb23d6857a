"""MAX_CONNECTIONS_PER_ADDRESS: how many sockets and streams one client address may hold.

With one process the count is kept in memory. With Redis it is shared by every worker
and server: one sorted set per address, a member per open connection kept as a lease
(``leases.py``: scored by its expiry, written again every ``PRESENCE_TTL / 3`` seconds
while the connection lives, so a crashed worker's entries lapse by themselves and the
entries a restarted Redis forgot are counted again within one refresh). Member ids are
unique across servers. If Redis cannot be reached the process falls back to counting
its own connections (logged once), and those are written to Redis once it is back.
"""

import itertools
import logging
import os
from collections import Counter

import gevent
from flask import current_app, g

from .leases import REDIS_ERRORS, Leases, Outage, process_id

log = logging.getLogger(__name__)

# KEYS[1] the address's set; ARGV: limit, member, ttl. Server time, so clocks agree.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 2))
return 1
"""


class LocalAdmission:
    """Counts this process's connections per address."""

    def __init__(self, limit):
        self.limit = limit
        self._open = Counter()

    def admit(self, address):
        """A token for a new connection from ``address``, or None when it has too many."""
        if self.limit and self._open[address] >= self.limit:
            return None
        self._open[address] += 1
        return (address,)

    def release(self, token):
        address = token[0]
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


class RedisAdmission(LocalAdmission):
    """Counts connections per address across every process that shares Redis."""

    def __init__(self, limit, url, prefix, ttl):
        super().__init__(limit)
        self._leases = Leases(url, ttl)
        self._prefix = f"{prefix}:conns:"
        self._ids = itertools.count()
        self._pid = None
        self._outage = Outage(log, ("connection counts unavailable in Redis; counting this process's own",
                                    "admission_fallback"),
                              ("connection counts shared in Redis again", "admission_recovered"))

    def admit(self, address):
        self._start()
        key = self._prefix + address
        member = f"{process_id()}:{next(self._ids)}"
        try:
            with self._leases.calling():
                admitted = self._leases.script(ADMIT)(keys=[key], args=[self.limit, member, self._leases.ttl])
            self._outage.worked()
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            if super().admit(address) is None:
                return None
        else:
            if not admitted:
                return None
            self._open[address] += 1  # this process's own count, should Redis go away
        self._leases.hold(key, member)  # refreshed from now on (written anew if it failed)
        return (address, key, member)

    def release(self, token):
        super().release(token)
        _, key, member = token
        if self._leases.release(key, member):
            try:
                with self._leases.calling():
                    self._leases.client().zrem(key, member)
            except REDIS_ERRORS:
                pass  # it lapses within the TTL

    def _start(self):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            gevent.spawn(self._refresh_forever)

    def _refresh_forever(self):
        while True:
            gevent.sleep(self._leases.ttl / 3)
            try:
                self._leases.refresh()
                self._outage.worked()
            except REDIS_ERRORS as exc:
                self._outage.failed(exc)


def make_admission(config):
    limit = config["MAX_CONNECTIONS_PER_ADDRESS"]
    if limit and config["REDIS_URL"]:
        return RedisAdmission(limit, config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"], config["PRESENCE_TTL"])
    return LocalAdmission(limit)


def hand_over():
    """For a socket or stream that outlives its request: take this request's admission
    (its teardown then keeps it) and return a function that gives it back, to call
    once the connection ends."""
    token = g.pop("admission", None)
    admission = current_app.extensions["chat.admission"]

    def release():
        if token is not None:
            admission.release(token)

    return release


def init_app(app):
    app.extensions["chat.admission"] = make_admission(app.config)
