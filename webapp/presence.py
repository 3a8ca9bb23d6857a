"""Who is here: the handles of each room's open connections, across workers and servers.

Two stores behind one interface, chosen like the broker:

* ``MemoryPresence`` for the single-process run;
* ``RedisPresence``: one sorted set per room, a member per connection (``id\\thandle``)
  scored by when it expires (Redis's own clock, so servers need not agree on the time).
  Each worker refreshes its connections' entries every ``ttl / 3`` seconds; a worker
  that dies stops refreshing and its entries lapse within ``PRESENCE_TTL``.

``Presence`` ties a store to the hub: a change (join, leave, new handle) is announced on
the broker; every worker with listeners in that room re-reads the room's handles and
pushes them to its listeners if they changed. A periodic pass catches entries that
lapsed. If Redis cannot be reached, a worker shows the connections it has itself.
"""

import itertools
import logging
import os

import gevent
import redis

log = logging.getLogger(__name__)

ANNOUNCE_DELAY = 0.05  # changes close together are shown once

# KEYS[1] the room's set; ARGV: member, ttl [, old member to drop]. Server time.
ENTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[3] then redis.call('ZREM', KEYS[1], ARGV[3]) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2))
return 1
"""
REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 2))
return 1
"""
MEMBERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def _handles(members):
    return sorted({member.split("\t", 1)[1] for member in members}, key=str.casefold)


class MemoryPresence:
    """Presence kept in this process: every connection is local."""

    def __init__(self):
        self._rooms = {}  # label -> {connection id: handle}

    def enter(self, label, connection, handle):
        self._rooms.setdefault(label, {})[connection] = handle

    def leave(self, label, connection):
        room = self._rooms.get(label, {})
        room.pop(connection, None)
        if not room:
            self._rooms.pop(label, None)

    def handles(self, label):
        return sorted(set(self._rooms.get(label, {}).values()), key=str.casefold)

    def counts(self, labels):
        return {label: len(self.handles(label)) for label in labels}

    def refresh(self):
        pass


class RedisPresence(MemoryPresence):
    """Presence in Redis, shared by every worker and server; this process's own
    connections are also kept locally (to refresh them, and to fall back on)."""

    def __init__(self, url, prefix, ttl):
        super().__init__()
        self.ttl = ttl
        self._prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        self._enter = self._redis.register_script(ENTER)
        self._refresh = self._redis.register_script(REFRESH)
        self._members = self._redis.register_script(MEMBERS)

    def _key(self, label):
        return f"{self._prefix}:presence:{label}"

    def enter(self, label, connection, handle):
        old = self._rooms.get(label, {}).get(connection)
        super().enter(label, connection, handle)
        args = [f"{connection}\t{handle}", self.ttl] + ([f"{connection}\t{old}"] if old not in (None, handle) else [])
        self._call(self._enter, label, args)

    def leave(self, label, connection):
        handle = self._rooms.get(label, {}).get(connection)
        super().leave(label, connection)
        if handle is not None:
            try:
                self._redis.zrem(self._key(label), f"{connection}\t{handle}")
            except (redis.RedisError, OSError) as exc:
                log.warning("presence not updated in Redis", extra={"event": "presence_failed", "error": str(exc)})

    def handles(self, label):
        members = self._call(self._members, label, [])
        return super().handles(label) if members is None else _handles(members)

    def counts(self, labels):
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for label in labels:
                    self._members(keys=[self._key(label)], client=pipe)
                found = pipe.execute()
        except (redis.RedisError, OSError):
            return super().counts(labels)
        return {label: len(_handles(members)) for label, members in zip(labels, found, strict=True)}

    def refresh(self):
        """Extend this process's entries (called every ttl / 3 seconds)."""
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for label, connections in list(self._rooms.items()):
                    for connection, handle in connections.items():
                        self._refresh(keys=[self._key(label)], args=[f"{connection}\t{handle}", self.ttl], client=pipe)
                pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("presence not refreshed in Redis", extra={"event": "presence_failed", "error": str(exc)})

    def _call(self, script, label, args):
        try:
            return script(keys=[self._key(label)], args=args)
        except (redis.RedisError, OSError) as exc:
            log.warning("presence unavailable in Redis; showing this worker's own",
                        extra={"event": "presence_failed", "error": str(exc)})
            return None


class Presence:
    """Keeps presence for the hub's listeners and pushes each room's handles to them."""

    def __init__(self, store, hub, announce):
        """``announce(label)`` tells the other workers that a room's presence changed."""
        self.store = store
        self.hub = hub
        self._announce = announce
        self._entries = {}  # listener -> (label, connection id, handle)
        self._shown = {}  # label -> the handles last pushed here
        self._pending = set()
        self._ids = itertools.count()

    def is_listed(self, listener):
        return listener in self._entries

    def enter(self, listener, label, handle):
        """List ``listener`` in its room as ``handle`` (again, under a new handle)."""
        entry = self._entries.get(listener)
        connection = entry[1] if entry else f"{os.getpid()}:{next(self._ids)}"
        if entry and entry[2] == handle:
            return
        self._entries[listener] = (label, connection, handle)
        self.store.enter(label, connection, handle)
        self.changed(label, announce=True)

    def leave(self, listener):
        entry = self._entries.pop(listener, None)
        if entry is not None:
            self.store.leave(entry[0], entry[1])
            self.changed(entry[0], announce=True)

    def changed(self, label, announce=False):
        """Presence in ``label`` changed (here, or somewhere else if not ``announce``)."""
        if announce:
            self._announce(label)
        if label not in self._pending:
            self._pending.add(label)
            gevent.spawn_later(ANNOUNCE_DELAY, self._push, label)

    def _push(self, label):
        self._pending.discard(label)
        if label not in self.hub.channels:
            self._shown.pop(label, None)
            return
        handles = self.store.handles(label)
        if self._shown.get(label) != handles:
            self._shown[label] = handles
            self.hub.broadcast(label, "presence", handles)

    def handles(self, label):
        return self.store.handles(label)

    def counts(self, labels):
        return self.store.counts(labels)

    def sweep(self):
        """Refresh this worker's entries and re-check every local room (lapsed entries)."""
        self.store.refresh()
        for label in list(self.hub.channels):
            self.changed(label)
        for label in [label for label in self._shown if label not in self.hub.channels]:
            del self._shown[label]


def make_store(config):
    if config["REDIS_URL"]:
        return RedisPresence(config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"], config["PRESENCE_TTL"])
    return MemoryPresence()
