"""What the rest of the app may ask of a broker, and the room holding every broker shares.

A worker asks for a room's events only while it serves someone there: ``hold(room)`` when a
local listener joins (the first one subscribes, and the call returns once the
subscription is confirmed, so a database read after it cannot miss a message published in
between), ``release(room)`` when one leaves. The last release lets the room go only after
``linger`` seconds, so a page reload or a reconnecting socket does not unsubscribe and
subscribe again.
"""

import gevent


class Broker:
    """The interface, and the per-room hold counts behind ``hold``/``release``."""

    def __init__(self, linger=5.0):
        self.linger = linger
        self._holds = {}  # room -> how many local listeners hold it
        self._lingering = {}  # room -> the greenlet that lets it go once its linger is over

    # -- what implementations provide ------------------------------------------------

    def start(self, on_event, on_resync):
        """Begin delivering: ``on_event(payload: bytes)`` for every event published by
        any process to a room this one holds, ``on_resync()`` whenever events may have
        been missed (the caller catches up from the database by id)."""
        raise NotImplementedError

    def publish(self, room, payload):
        """Queue ``payload`` (bytes) for every process holding ``room``; never blocks,
        never raises."""
        raise NotImplementedError

    def healthy(self):
        """True when events published now would reach the other processes."""
        raise NotImplementedError

    def stop(self):
        """Stop delivering and release connections."""

    def _subscribe(self, room):
        """Start receiving ``room``'s events (confirmation may come later)."""
        raise NotImplementedError

    def _unsubscribe(self, room):
        """Stop receiving ``room``'s events."""
        raise NotImplementedError

    def _wait_subscribed(self, room, timeout):
        """Block until ``room``'s subscription is confirmed (at most ``timeout`` s);
        return False at once when the broker is away (its resync covers the gap)."""
        raise NotImplementedError

    # -- holding rooms ----------------------------------------------------------------

    def hold(self, room, timeout=1.0):
        """A local listener wants ``room``: subscribe if nobody here held it, and wait
        for the confirmation. True when confirmed."""
        count = self._holds.get(room, 0)
        self._holds[room] = count + 1
        lingering = self._lingering.pop(room, None)
        if lingering is not None:
            lingering.kill(block=False)  # still subscribed: nothing to do
        elif count == 0:
            self._subscribe(room)
        return self._wait_subscribed(room, timeout)

    def release(self, room):
        """A local listener of ``room`` left; the last one lets the room go, later."""
        count = self._holds.get(room, 0)
        if count > 1:
            self._holds[room] = count - 1
            return
        if count == 1:
            del self._holds[room]
            if self.linger > 0:
                self._lingering[room] = gevent.spawn_later(self.linger, self._let_go, room)
            else:
                self._unsubscribe(room)

    def _let_go(self, room):
        if self._lingering.pop(room, None) is not None and room not in self._holds:
            self._unsubscribe(room)

    def rooms(self):
        """Every room this process is subscribed to (held, or lingering)."""
        return set(self._holds) | set(self._lingering)

    def _drop_holds(self):
        gevent.killall(list(self._lingering.values()), block=False)
        self._lingering.clear()
        self._holds.clear()
