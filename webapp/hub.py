"""The per-worker hub: which of this process's sockets and streams listen to which room.

A message reaches a worker from its own sender, from the broker, or from a catch-up read
of the database, in any order and possibly twice. The hub delivers each room's messages
to its listeners in id order, each exactly once:

* every stored message carries the id of the room's previous message (``prev``); a
  message whose ``prev`` is not the last one delivered waits in ``pending`` while the
  caller fetches what is missing from the database (``request_catch_up``);
* each listener has a watermark (``sent_id``) and never receives an id at or below it;
* a listener that is replaying history holds live messages (and resets) back until the
  replay is written, then drops the ones the replay already covered;
* at most ``PENDING_MAX`` messages wait per room: beyond that, the catch-up reads them
  from the database (``known_latest`` says how far).

Each wire form (JSON frame, htmx frame, event-stream chunk) of a message is encoded once
per worker, and every listener of that form gets the same bytes. Nothing here blocks or
yields: ``Listener.write`` must not, so one slow client never delays another.
"""

import logging

log = logging.getLogger(__name__)

PENDING_MAX = 1000
# Events outside the message order that a replaying listener must not miss: held with
# its live messages and written after its replay (deleting a row it lacks is harmless).
HELD_KINDS = frozenset({"delete", "clear"})
DELETED_KEPT = 1000  # deleted ids a room remembers, to skip a message its deletion overtook


class Listener:
    """Something the hub delivers to. Subclasses implement ``write`` and ``close``."""

    __slots__ = ("fmt", "sent_id", "held", "channel", "kinds", "subscription")

    def __init__(self, fmt, kinds=frozenset()):
        self.fmt = fmt  # which wire form it takes: "json", "html" or "sse"
        self.kinds = kinds  # extra event kinds it asked for (e.g. presence)
        self.sent_id = 0
        self.held = None
        self.channel = None
        self.subscription = None  # the room whose broker events it holds (see Realtime.subscribe)

    def write(self, data):
        """Send bytes without blocking (queue them if the peer is slow)."""
        raise NotImplementedError

    def close(self, code, reason):
        """Begin closing without blocking; the owner's loop then ends and calls leave."""
        raise NotImplementedError

    def keepalive(self, now, interval, timeout):
        """Called about every second: keep an idle connection alive, cut a dead one."""


class Channel:
    """One room as this worker sees it: listeners, and the last id delivered to them."""

    __slots__ = ("label", "room_id", "last_id", "known_latest", "listeners", "pending", "catching_up",
                 "catch_up_failures", "deleted", "cleared_through")

    def __init__(self, label, room_id, last_id):
        self.label = label
        self.room_id = room_id
        self.last_id = last_id  # the newest id delivered here
        self.known_latest = last_id  # the newest id known to be stored
        self.listeners = set()
        self.pending = {}  # id -> (prev, payload): arrived ahead of a missing message
        self.catching_up = False
        self.catch_up_failures = 0  # in a row: the owner backs off on them
        # Deleted by an operator (ids, and everything up to a cleared id): a message whose
        # deletion overtook it (it waited in ``pending``, or was published again) is skipped.
        self.deleted = {}
        self.cleared_through = 0


class Hub:
    def __init__(self, encode, request_catch_up, observe=None):
        """``encode(fmt, kind, payload) -> bytes``; ``request_catch_up(channel)`` asks the
        owner to read what the channel misses from the database and call ``catch_up``;
        ``observe(sent, payload)`` hears about every message delivered."""
        self.channels = {}
        self._encode = encode
        self._request_catch_up = request_catch_up
        self._observe = observe
        self.deliveries = 0

    # -- membership ---------------------------------------------------------------

    def join(self, listener, label, room_id, latest_id, after=None):
        """Add a listener to a room; deliveries to it are held until ``finish_replay``.

        Without ``after`` it gets messages delivered after this call; with ``after``, its
        owner first writes the history after that id (see ``finish_replay``).
        """
        channel = self.channels.get(label)
        if channel is None:
            channel = self.channels[label] = Channel(label, room_id, latest_id)
        elif latest_id > channel.last_id:
            # The database is ahead of what this worker has delivered: fetch the rest.
            channel.known_latest = max(channel.known_latest, latest_id)
            self._request_catch_up(channel)
        listener.channel = channel
        if after is None:
            listener.sent_id = channel.last_id
        else:
            listener.sent_id = min(after, max(latest_id, channel.last_id))
        listener.held = []
        channel.listeners.add(listener)
        return channel

    def finish_replay(self, listener):
        """The owner is ready (and has written any history, moving ``sent_id``): send what
        arrived meanwhile and was not part of it, then deliver as usual."""
        held, listener.held = listener.held, None
        for message_id, kind, payload in held or ():
            if message_id is None or message_id > listener.sent_id:  # None: a deletion, always sent
                listener.write(self._encode(listener.fmt, kind, payload))
                listener.sent_id = max(listener.sent_id, message_id or 0)

    def leave(self, listener):
        channel = listener.channel
        if channel is None:
            return
        listener.channel = None
        channel.listeners.discard(listener)
        if not channel.listeners and self.channels.get(channel.label) is channel:
            del self.channels[channel.label]

    def listeners(self):
        for channel in list(self.channels.values()):
            yield from list(channel.listeners)

    # -- messages -----------------------------------------------------------------

    def receive(self, label, message_id, prev_id, payload):
        """A stored message, from anywhere. Delivered now, or held until its gap is filled."""
        channel = self.channels.get(label)
        if channel is None or message_id <= channel.last_id:
            return
        if prev_id != channel.last_id:
            log.debug("room %s: %d arrived before %d; holding it", label, message_id, prev_id)
            channel.known_latest = max(channel.known_latest, message_id)
            if len(channel.pending) < PENDING_MAX:
                # Beyond the bound, a message is not kept: the catch-up reads it (and
                # everything up to known_latest) from the database anyway.
                channel.pending[message_id] = (prev_id, payload)
            if len(channel.pending) == 1 or len(channel.pending) >= PENDING_MAX:
                self._request_catch_up(channel)
            return
        self._deliver(channel, message_id, "message", payload)
        self._deliver_pending(channel)

    def catch_up(self, channel, rows, stored=0):
        """Messages read from the database (``(id, payload)``, oldest first, all the room
        has after ``channel.last_id``): deliver them, then whatever they unblock.
        ``stored``, an id known to be committed before the read, moves the channel past
        ids up to it that the read did not find: they were deleted, not missed."""
        for message_id, payload in rows:
            if message_id > channel.last_id:
                self._deliver(channel, message_id, "message", payload)
        channel.last_id = max(channel.last_id, stored)
        for message_id in [i for i in channel.pending if i <= channel.last_id]:
            del channel.pending[message_id]
        self._deliver_pending(channel)

    def reset(self, channel, latest_id, payload):
        """More was missed than replay may send: tell every listener, move on to live.
        A listener still writing its replay gets the reset after it (unless the replay
        already went as far), like any message that arrives meanwhile."""
        for listener in channel.listeners:
            if listener.held is not None:
                listener.held.append((latest_id, "reset", payload))
            elif latest_id > listener.sent_id:
                listener.write(self._encode(listener.fmt, "reset", payload))
                listener.sent_id = latest_id
        channel.last_id = max(channel.last_id, latest_id)
        self.catch_up(channel, ())

    def _deliver_pending(self, channel):
        pending = channel.pending
        while pending:
            message_id = min(pending)
            prev_id, payload = pending[message_id]
            if message_id <= channel.last_id:
                del pending[message_id]
            elif prev_id == channel.last_id:
                del pending[message_id]
                self._deliver(channel, message_id, "message", payload)
            else:
                break

    def _deliver(self, channel, message_id, kind, payload):
        channel.last_id = message_id
        if message_id in channel.deleted or message_id <= channel.cleared_through:
            return  # deleted before it got here: its place in the order is kept, nothing sent
        forms = {}
        sent = 0
        for listener in channel.listeners:
            if listener.held is not None:
                listener.held.append((message_id, kind, payload))
                continue
            if message_id <= listener.sent_id:
                continue
            data = forms.get(listener.fmt)
            if data is None:
                data = forms[listener.fmt] = self._encode(listener.fmt, kind, payload)
            listener.write(data)
            listener.sent_id = message_id
            sent += 1
        self.deliveries += sent
        if self._observe is not None:
            self._observe(sent, payload)

    # -- other events -------------------------------------------------------------

    @staticmethod
    def _remember_deletion(channel, kind, payload):
        if kind == "clear":
            channel.cleared_through = max(channel.cleared_through, payload["through"])
            return
        channel.deleted[payload["id"]] = None
        if len(channel.deleted) > DELETED_KEPT:
            del channel.deleted[next(iter(channel.deleted))]

    def broadcast(self, label, kind, payload, exclude=None):
        """An event outside the message order (presence, typing, a rename): sent to the
        room's listeners that take this kind (but ``exclude``), as it comes, never stored."""
        channel = self.channels.get(label)
        if channel is None:
            return
        if kind in HELD_KINDS:
            self._remember_deletion(channel, kind, payload)
        forms = {}
        for listener in channel.listeners:
            if kind not in listener.kinds or listener is exclude:
                continue
            if listener.held is not None:
                if kind in HELD_KINDS:
                    listener.held.append((None, kind, payload))
                continue
            data = forms.get(listener.fmt)
            if data is None:
                data = forms[listener.fmt] = self._encode(listener.fmt, kind, payload)
            if data:
                listener.write(data)
