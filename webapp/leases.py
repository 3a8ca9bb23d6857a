"""Leases: entries in Redis that live while the process that made them keeps them alive.

Presence (who is in a room) and admission (open connections per client address) both
keep, per key, a Redis sorted set with one member per live connection, scored by when it
expires on Redis's own clock (so servers need not agree on the time). The process that
owns a connection keeps its members in memory too, and every refresh writes all of them
again with a plain ``ZADD`` (never ``XX``): an entry whose write failed while Redis was
away, or that a restarted Redis forgot, is back within one refresh. A process that dies
stops refreshing, and its entries lapse within the TTL.

Member ids begin with a random id drawn once per process: pids are no id across servers
(every container's first worker may be pid 2), and two servers sharing a member would
remove each other's entries.

A caller waits on Redis at most ``DEADLINE``; after a failure, calls fail at once for
``AWAY`` seconds (callers fall back to this process's own records) while refreshes keep
asking, so an outage does not slow every handshake down.

On a Redis Cluster every command here touches exactly one key (sets need no hash tag:
none is ever read together with another); scripts take that one key; pipelines hold only
plain single-key commands, which redis-py's cluster pipeline sends to each key's node
(it cannot run scripts).
"""

import logging
import os
import secrets
import time
from contextlib import contextmanager

import gevent
import redis

from .redisconn import REDIS_ERRORS, RedisConnector

log = logging.getLogger(__name__)

DEADLINE = 1.0  # the longest a caller waits on Redis (a cluster's own retries take longer)
AWAY = 5.0  # after a failure, callers fall back at once for this long (refreshes still ask)

_process = {"pid": None, "id": None}


def process_id():
    """A random id for this process, drawn again after a fork."""
    if _process["pid"] != os.getpid():
        _process.update(pid=os.getpid(), id=secrets.token_hex(6))
    return _process["id"]


class Outage:
    """Says in the log when calls to Redis start failing, and when they work again, not
    on every call in between."""

    def __init__(self, logger, failed, recovered):
        """``failed`` and ``recovered``: (message, event) of the two log lines."""
        self._log = logger
        self._failed, self._recovered = failed, recovered
        self.active = False

    def failed(self, exc):
        if not self.active:
            self.active = True
            message, event = self._failed
            self._log.warning(message, extra={"event": event, "error": str(exc)})

    def worked(self):
        if self.active:
            self.active = False
            message, event = self._recovered
            self._log.info(message, extra={"event": event})


# KEYS[1] the set; ARGV: ttl, member [, a member to drop]. Redis's clock.
ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[3] then redis.call('ZREM', KEYS[1], ARGV[3]) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 2))
return 1
"""
# KEYS[1] the set: drop lapsed members, return the live ones.
LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class Leases:
    """This process's members of expiring sorted sets in Redis, and reading those sets."""

    def __init__(self, url, ttl):
        self.ttl = ttl
        self.connector = RedisConnector(url, decode_responses=True)
        self._held = {}  # key -> set of this process's members
        self._scripts = {}
        self._away_until = 0.0

    @contextmanager
    def calling(self, refresh=False):
        """Around every call to Redis: a deadline, and no call at all (one of REDIS_ERRORS
        at once) for ``AWAY`` seconds after a failure, unless it is a refresh."""
        if not refresh and time.monotonic() < self._away_until:
            raise redis.ConnectionError("Redis failed a moment ago; not asked again yet")
        try:
            with gevent.Timeout(DEADLINE, redis.TimeoutError(f"no answer from Redis within {DEADLINE} s")):
                yield
        except REDIS_ERRORS:
            self._away_until = time.monotonic() + AWAY
            raise
        self._away_until = 0.0

    def client(self):
        """The Redis client; raises one of REDIS_ERRORS while Redis cannot be reached."""
        return self.connector.client()

    def script(self, source):
        """``source`` registered with the client (once)."""
        client = self.client()
        if source not in self._scripts or self._scripts[source].registered_client is not client:
            self._scripts[source] = client.register_script(source)
        return self._scripts[source]

    def hold(self, key, member):
        """Keep ``member`` of ``key`` alive from now on (written at the next refresh if not before)."""
        self._held.setdefault(key, set()).add(member)

    def release(self, key, member):
        """Stop keeping ``member`` alive; return False when it was not held."""
        members = self._held.get(key)
        if not members or member not in members:
            return False
        members.discard(member)
        if not members:
            del self._held[key]
        return True

    def add(self, key, member, replaces=None):
        """Hold ``member`` (instead of ``replaces``) and write it now. Raises REDIS_ERRORS
        (it is still held, and the next refresh writes it)."""
        if replaces is not None:
            self.release(key, replaces)
        self.hold(key, member)
        with self.calling():
            self.script(ADD)(keys=[key], args=[self.ttl, member] + ([replaces] if replaces is not None else []))

    def remove(self, key, member):
        """Release ``member`` and delete it from Redis now (if that fails it lapses)."""
        self.release(key, member)
        with self.calling():
            self.client().zrem(key, member)

    def live(self, key):
        """The live members of ``key`` (lapsed ones are dropped). Raises REDIS_ERRORS."""
        with self.calling():
            return self.script(LIVE)(keys=[key])

    def live_many(self, keys):
        """The live members of each key, in one round trip per node. Raises REDIS_ERRORS."""
        with self.calling():
            client = self.client()
            seconds, micros = client.time()
            now = seconds + micros / 1e6
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrangebyscore(key, now, "+inf")
                return pipe.execute()

    def refresh(self):
        """Write every held member again, expiring a TTL from now. Return the keys where
        Redis had lost some (written anew). Raises REDIS_ERRORS."""
        held = {key: sorted(members) for key, members in self._held.items()}
        if not held:
            return []
        with self.calling(refresh=True):
            client = self.client()
            seconds, micros = client.time()
            expires = seconds + micros / 1e6 + self.ttl
            with client.pipeline(transaction=False) as pipe:
                for key, members in held.items():
                    pipe.zadd(key, dict.fromkeys(members, expires))
                    pipe.expire(key, int(self.ttl * 2) + 1)
                replies = pipe.execute()
            # A member released while the refresh was on its way may have been written back.
            gone = [(key, member) for key, members in held.items() for member in members
                    if member not in self._held.get(key, ())]
            for key, member in gone:
                client.zrem(key, member)
        return [key for key, added in zip(held, replies[::2], strict=True) if added]
