"""Real-time delivery for one app in one worker process: hub + broker + their loops.

* ``publish_message`` (called by ``chat.send`` after the commit) hands the message to
  this worker's hub at once and to the broker for every other worker and server.
* ``subscribe`` makes this worker receive a room's events while a listener of it is
  here (the broker subscribes per room), confirmed before the room is read from the
  database; ``join`` then registers the listener with the hub *first* (before the
  client sees its connection open); ``start_delivery`` replays what it missed from the
  database and lets the hub send what arrived meanwhile, skipping ids already sent: no
  gap, no duplicate.
* Catch-up: whenever the hub sees a gap (or the broker re-subscribes, or the periodic
  sweep finds the database ahead of a room), the missing messages are read by id from
  the database. Pub/sub is only the fast path.
* ``keepalive`` pings idle sockets and cuts silent ones; ``drain`` closes everything
  with 1012 when the worker is told to stop, so clients reconnect elsewhere.

Loops start once per process, after gunicorn forks: when the worker boots
(``gunicorn.conf.py``), or on first use elsewhere.
"""

import json
import logging
import os
import time
import uuid
import weakref

import gevent

from . import db, metrics
from .broker import make_broker
from .hub import Hub
from .models import Message, Room
from .presence import Presence, make_store
from .rendering import WireForms

log = logging.getLogger(__name__)

GAP_WAIT = 0.05  # a message that overtook another usually sees it arrive within this
SWEEP_INTERVAL = 5.0
SUBSCRIBE_WAIT = 1.0  # at most this long for Redis to confirm a room's subscription
KEEPALIVE_TICK = 1.0


class Realtime:
    def __init__(self, app):
        self.app = app
        self.config = app.config
        self.forms = WireForms(app.jinja_env)
        self.hub = Hub(self.forms.encode, self._request_catch_up, metrics.observe_delivery)
        self.broker = make_broker(app.config, on_state=self._on_broker_state)
        self.presence = Presence(make_store(app.config), self.hub, self._announce_presence)
        self.origin = None  # this process's name on the broker: b"<hex> " starts its events
        self.draining = False
        # The greenlets serving this worker's sockets and streams (weakly: a finished,
        # collected one simply goes); counted by the keepalive loop, so a handler stuck
        # after its connection ended would show.
        self.serving = weakref.WeakSet()
        self._pid = None
        self._loops = []

    # -- lifecycle ------------------------------------------------------------------

    def start(self):
        """Start this process's loops, once per process."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.origin = uuid.uuid4().hex.encode() + b" "
        self.draining = False
        self.broker.start(self._on_broker_event, self._resync)
        self._loops = [
            gevent.spawn(self._keepalive_forever),
            gevent.spawn(self._sweep_forever),
            gevent.spawn(self._presence_forever),
        ]

    def stop(self):
        gevent.killall(self._loops, block=False)
        self.broker.stop()
        self._pid = None

    def drain(self):
        """The worker is stopping: close every socket with 1012 and end every stream."""
        self.draining = True
        listeners = list(self.hub.listeners())
        log.info("draining: closing connections", extra={"event": "draining", "connections": len(listeners)})
        for listener in listeners:
            listener.close(1012, "server restarting")

    def wait_drained(self, timeout):
        """After ``drain``: wait (up to ``timeout`` s) until every connection has ended.
        No greenlet waits on an open connection, so gunicorn sees none: its worker would
        exit at once, cutting sockets before their 1012 went out."""
        deadline = time.monotonic() + timeout
        while any(True for _ in self.hub.listeners()) and time.monotonic() < deadline:
            gevent.sleep(0.05)

    # -- sending --------------------------------------------------------------------

    def publish_message(self, label, message, previous):
        """A message was stored: deliver it here now, and everywhere else via the broker."""
        self.start()
        payload = message.as_dict(label)
        self.hub.receive(label, message.id, previous, payload)
        self._publish(label, {"kind": "message", "room": label, "prev": previous, "data": payload})

    def broadcast(self, label, kind, data, exclude=None):
        """An event that is not stored (typing, a rename): to this worker's listeners now,
        and to the others' through the broker."""
        self.start()
        self.hub.broadcast(label, kind, data, exclude)
        self._publish(label, {"kind": kind, "room": label, "data": data})

    def broadcast_now(self, label, kind, data):
        """The same, from a process that serves no one (a ``flask`` command): published
        to every worker and server before returning."""
        event = {"kind": kind, "room": label, "data": data}
        self.broker.publish_now(label, b"command " + json.dumps(event).encode())

    def _announce_presence(self, label):
        self._publish(label, {"kind": "presence_changed", "room": label, "data": None})

    def _publish(self, label, event):
        """To the other processes: our origin, then the event as JSON."""
        self.broker.publish(label, self.origin + json.dumps(event).encode())

    def _on_broker_event(self, raw):
        metrics.BROKER_EVENTS.inc()
        if raw.startswith(self.origin):
            return  # our own, already delivered here (checked before any decoding)
        try:
            event = json.loads(raw[raw.index(b" ") + 1:])
            if event["kind"] == "message":
                data = event["data"]
                self.hub.receive(event["room"], data["id"], event["prev"], data)
            elif event["kind"] == "presence_changed":
                self.presence.changed(event["room"])
            else:
                self.hub.broadcast(event["room"], event["kind"], event["data"])
        except (ValueError, KeyError, TypeError, IndexError):
            log.warning("ignored a malformed broker event", extra={"event": "broker_event_malformed", "raw": raw[:200]})

    # -- listening ------------------------------------------------------------------

    def subscribe(self, listener, label):
        """Make this worker receive ``label``'s events for as long as ``listener`` is
        here (until ``leave``). Call it before reading the room from the database: the
        first listener of a room on this worker subscribes, and this returns once the
        subscription is confirmed (or at once if the broker is away: its resync will
        catch up), so a message published after the read cannot pass this worker by."""
        self.start()
        if listener.subscription is None:
            listener.subscription = label
            self.broker.hold(label, SUBSCRIBE_WAIT)

    def join(self, listener, room, after=None):
        """Register ``listener`` for ``room`` now; what arrives is held until
        ``start_delivery``. Call it before the client can see its connection open, so
        "live" starts no later than the client thinks it does (and after ``subscribe``,
        before the room was read)."""
        self.subscribe(listener, room.label)
        self.hub.join(listener, room.label, room.id, room.last_message_id, after)
        self.serving.add(gevent.getcurrent())
        metrics.OPEN_CONNECTIONS.labels(metrics.KINDS[listener.fmt]).inc()

    def start_delivery(self, listener, room, replay):
        """The connection is open: with ``replay``, first write every stored message after
        the listener's resume point (at most REPLAY_MAX, else an explicit reset); then
        what was held meanwhile, skipping what the replay covered; then live messages.

        Raises db.StorageUnavailable if the replay cannot be read (the caller closes).
        """
        if replay:
            rows, recent = self._missed(room.id, listener.sent_id)
            if recent is not None:
                listener.write(self.forms.encode(listener.fmt, "reset", self._reset_payload(room.label, recent)))
                listener.sent_id = recent[-1].id
                metrics.RESETS.inc()
            else:
                for row in rows:
                    listener.write(self.forms.encode(listener.fmt, "message", row.as_dict(room.label)))
                    listener.sent_id = row.id
                metrics.REPLAYED.inc(len(rows))
        self.hub.finish_replay(listener)

    def leave(self, listener):
        """Unregister (safe to call more than once)."""
        self.presence.leave(listener)
        if listener.channel is not None:
            self.hub.leave(listener)
            metrics.OPEN_CONNECTIONS.labels(metrics.KINDS[listener.fmt]).dec()
        if listener.subscription is not None:
            self.broker.release(listener.subscription)
            listener.subscription = None

    def _missed(self, room_id, after_id):
        """What a room stored after ``after_id``: (rows, None), or, when that is more than
        REPLAY_MAX, (rows, the room's latest history) for an explicit reset."""
        replay_max = self.config["REPLAY_MAX"]
        with self.app.app_context(), db.connection():
            rows = Message.after(room_id, after_id, replay_max + 1)
            if len(rows) <= replay_max:
                return rows, None
            return rows, Message.recent(room_id, self.config["HISTORY_SIZE"])

    @staticmethod
    def _reset_payload(label, recent):
        return {"latest": recent[-1].id, "recent": [m.as_dict(label) for m in recent]}

    # -- catching up from the database -----------------------------------------------

    def _request_catch_up(self, channel):
        if not channel.catching_up:
            channel.catching_up = True
            gevent.spawn(self._catch_up, channel)

    def _catch_up(self, channel):
        """Read what ``channel`` misses (after a short wait for stragglers, longer after
        each failed read) and deliver it."""
        try:
            gevent.sleep(min(GAP_WAIT * 2**channel.catch_up_failures, SWEEP_INTERVAL))
            if self.hub.channels.get(channel.label) is not channel:
                return
            if not channel.pending and channel.known_latest <= channel.last_id:
                return
            stored = channel.known_latest  # every id up to it is read below, or was deleted
            rows, recent = self._missed(channel.room_id, channel.last_id)
            if recent is not None:
                log.warning("more missed than replay sends; listeners reset",
                            extra={"event": "room_reset", "room": channel.label, "listeners": len(channel.listeners)})
                self.hub.reset(channel, recent[-1].id, self._reset_payload(channel.label, recent))
                metrics.RESETS.inc(len(channel.listeners))
            else:
                log.debug("room %s: caught up %d message(s) after %d", channel.label, len(rows), channel.last_id)
                metrics.CATCH_UPS.inc()
                self.hub.catch_up(channel, [(row.id, row.as_dict(channel.label)) for row in rows], stored)
            channel.known_latest = max(channel.known_latest, channel.last_id)
            channel.catch_up_failures = 0
        except db.StorageUnavailable as exc:
            channel.catch_up_failures += 1
            log.warning("catch-up failed; retrying later", extra={
                "event": "catch_up_failed", "room": channel.label, "error": str(exc),
                "failures": channel.catch_up_failures})
        finally:
            channel.catching_up = False
        if channel.pending and self.hub.channels.get(channel.label) is channel:
            self._request_catch_up(channel)

    def _resync(self):
        """The broker (re)subscribed: anything could have been missed meanwhile."""
        gevent.spawn(self._sweep)

    def _sweep(self):
        """Compare every local room with the database and catch up the ones behind."""
        channels = {channel.room_id: channel for channel in self.hub.channels.values()}
        if not channels:
            return
        try:
            with self.app.app_context(), db.connection():
                latest = dict(
                    Room.select(Room.id, Room.last_message_id).where(Room.id.in_(list(channels))).tuples()
                )
        except db.StorageUnavailable as exc:
            log.warning("sweep skipped: database unavailable", extra={"event": "sweep_failed", "error": str(exc)})
            return
        for room_id, last_id in latest.items():
            channel = channels[room_id]
            if last_id > channel.last_id:
                channel.known_latest = max(channel.known_latest, last_id)
                self._request_catch_up(channel)

    def _sweep_forever(self):
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            self._sweep()

    def _presence_forever(self):
        while True:
            gevent.sleep(self.config["PRESENCE_TTL"] / 3)
            self.presence.sweep()

    def _on_broker_state(self, change):
        if change == "reconnect":
            metrics.BROKER_RECONNECTS.inc()

    # -- keepalive -------------------------------------------------------------------

    def _keepalive_forever(self):
        interval = self.config["PING_INTERVAL"]
        timeout = self.config["PONG_TIMEOUT"]
        tick = min(KEEPALIVE_TICK, interval / 4, timeout / 4, self.config["SSE_HEARTBEAT"] / 2)
        while True:
            gevent.sleep(tick)
            now = time.monotonic()
            for listener in self.hub.listeners():
                listener.keepalive(now, interval, timeout)
            metrics.SERVING_GREENLETS.set(sum(1 for greenlet in list(self.serving) if not greenlet.dead))


def init_app(app):
    app.extensions["chat.realtime"] = Realtime(app)
