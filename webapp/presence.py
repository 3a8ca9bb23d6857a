"""Who is here: the handles of each room's open connections, across workers and servers.

Two stores behind one interface, chosen like the broker:

* ``MemoryPresence`` for the single-process run;
* ``RedisPresence``: one sorted set per room, a member per connection (``id\\thandle``,
  the id unique across servers) kept as a lease (``leases.py``): each worker writes its
  connections' entries again every ``ttl / 3`` seconds, so entries Redis lost (a
  restart) are back within one refresh; a worker that dies stops refreshing and its
  entries lapse within ``PRESENCE_TTL``.

``Presence`` ties a store to the hub: a change (join, leave, new handle) is announced on
the broker; every worker with listeners in that room re-reads the room's handles and
pushes them to its listeners if they changed. A periodic pass catches entries that
lapsed. If Redis cannot be reached, a worker shows the connections it has itself.
"""

import itertools
import logging

import gevent

from .leases import REDIS_ERRORS, Leases, Outage, process_id

log = logging.getLogger(__name__)

ANNOUNCE_DELAY = 0.05  # changes close together are shown once


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
        return []


class RedisPresence(MemoryPresence):
    """Presence in Redis, shared by every worker and server; this process's own
    connections are also kept locally (to refresh them, and to fall back on)."""

    def __init__(self, url, prefix, ttl):
        super().__init__()
        self.ttl = ttl
        self._prefix = f"{prefix}:presence:"
        self._leases = Leases(url, ttl)
        self._outage = Outage(log, ("presence unavailable in Redis; showing this worker's own until it is back",
                                    "presence_failed"), ("presence in Redis again", "presence_recovered"))

    def _key(self, label):
        return self._prefix + label

    def enter(self, label, connection, handle):
        old = self._rooms.get(label, {}).get(connection)
        super().enter(label, connection, handle)
        replaces = f"{connection}\t{old}" if old not in (None, handle) else None
        self._call(self._leases.add, self._key(label), f"{connection}\t{handle}", replaces)

    def leave(self, label, connection):
        handle = self._rooms.get(label, {}).get(connection)
        super().leave(label, connection)
        if handle is not None:
            self._call(self._leases.remove, self._key(label), f"{connection}\t{handle}")

    def handles(self, label):
        members = self._call(self._leases.live, self._key(label))
        return super().handles(label) if members is None else _handles(members)

    def counts(self, labels):
        found = self._call(self._leases.live_many, [self._key(label) for label in labels])
        if found is None:
            return super().counts(labels)
        return {label: len(_handles(members)) for label, members in zip(labels, found, strict=True)}

    def refresh(self):
        """Write this process's entries again (called every ttl / 3 seconds); return the
        rooms where Redis had lost some of them (after a restart, say)."""
        keys = self._call(self._leases.refresh)
        return [key[len(self._prefix):] for key in keys or ()]

    def _call(self, operation, *args):
        """``operation(*args)``, or None when Redis fails (logged once until it works again)."""
        try:
            result = operation(*args)
        except REDIS_ERRORS as exc:
            self._outage.failed(exc)
            return None
        self._outage.worked()
        return result


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
        connection = entry[1] if entry else f"{process_id()}:{next(self._ids)}"
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
        """Refresh this worker's entries and re-check every local room (lapsed entries);
        rooms where Redis had lost entries are announced to the other workers too."""
        for label in self.store.refresh():
            self._announce(label)
        for label in list(self.hub.channels):
            self.changed(label)
        for label in [label for label in self._shown if label not in self.hub.channels]:
            del self._shown[label]


def make_store(config):
    if config["REDIS_URL"]:
        return RedisPresence(config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"], config["PRESENCE_TTL"])
    return MemoryPresence()
