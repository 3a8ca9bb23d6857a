"""MAX_CONNECTIONS_PER_ADDRESS: how many sockets and streams one client address may hold.

With one process the count is kept in memory. With Redis it is shared by every worker
and server: one sorted set per address, a member per open connection scored by its
expiry, refreshed while the connection lives, so a crashed worker's entries lapse by
themselves. If Redis cannot be reached the process falls back to its own count.
"""

import itertools
import logging
import os
from collections import Counter

import gevent
import redis

log = logging.getLogger(__name__)

TTL = 60  # seconds an entry lives unless refreshed
REFRESH = TTL / 3

# KEYS[1] the address's set; ARGV: limit, member, ttl. Server time, so clocks agree.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
"""
REFRESH_ONE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
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
        return ("local", address)

    def release(self, token):
        address = token[1]
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]


class RedisAdmission(LocalAdmission):
    """Counts connections per address across every process that shares Redis."""

    def __init__(self, limit, url, prefix):
        super().__init__(limit)
        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._admit = self._redis.register_script(ADMIT)
        self._refresh = self._redis.register_script(REFRESH_ONE)
        self._prefix = prefix
        self._members = {}  # member -> key, for this process's open connections
        self._ids = itertools.count()
        self._pid = None

    def _key(self, address):
        return f"{self._prefix}:conns:{address}"

    def admit(self, address):
        self._start()
        key = self._key(address)
        member = f"{os.getpid()}:{id(self)}:{next(self._ids)}"
        try:
            if not self._admit(keys=[key], args=[self.limit, member, TTL]):
                return None
        except (redis.RedisError, OSError) as exc:
            log.warning("connection counts unavailable in Redis; counting locally",
                        extra={"event": "admission_fallback", "error": str(exc)})
            return super().admit(address)
        self._members[member] = key
        return ("redis", member)

    def release(self, token):
        if token[0] == "local":
            return super().release(token)
        key = self._members.pop(token[1], None)
        if key is None:
            return
        try:
            self._redis.zrem(key, token[1])
        except (redis.RedisError, OSError):
            pass  # it lapses within TTL

    def _start(self):
        if self._pid != os.getpid():
            self._pid = os.getpid()
            gevent.spawn(self._refresh_forever)

    def _refresh_forever(self):
        while True:
            gevent.sleep(REFRESH)
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for member, key in list(self._members.items()):
                        self._refresh(keys=[key], args=[member, TTL], client=pipe)
                    pipe.execute()
            except (redis.RedisError, OSError) as exc:
                log.warning("could not refresh connection counts in Redis",
                            extra={"event": "admission_refresh_failed", "error": str(exc)})


def make_admission(config):
    limit = config["MAX_CONNECTIONS_PER_ADDRESS"]
    if limit and config["REDIS_URL"]:
        return RedisAdmission(limit, config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"])
    return LocalAdmission(limit)


def init_app(app):
    app.extensions["chat.admission"] = make_admission(app.config)
