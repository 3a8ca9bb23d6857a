"""The WebSocket routes: the seed's JSON protocol and the htmx page's socket.

Both take ``{"handle", "message"}`` frames and push every message of the room; they differ
in what they push (JSON, or server-rendered rows swapped in by htmx) and in how they
report a refused frame. No greenlet waits on a connection: the event loop watches it,
and its frames are handled as they arrive (see ``websocket``); deliveries come from the
hub (see ``realtime``).

Beyond messages, the htmx socket always gets who is here (``presence``), who is typing
and renames of the room; its frames may carry ``"action": "typing"`` or ``"handle"``.
A JSON client gets those only when it asks (``?events=presence,typing,room``, and
``deletes`` for ``{"deleted": id}`` when an operator deletes a message), so the seed's
client, which shows every frame as a message, keeps working; it is listed as here when
it says who it is (``?handle=``).
"""

import json
import logging
import time
from contextlib import contextmanager

from flask import Blueprint, current_app, g, request, session
from werkzeug.exceptions import TooManyRequests

from . import admission, chat, db, metrics
from .extensions import sock
from .hub import Listener
from .rendering import to_json
from .websocket import INTERNAL_ERROR, RESTARTING, UNKNOWN_ROOM, CallerReads, NoEvent, WebSocket

log = logging.getLogger(__name__)
bp = Blueprint("sockets", __name__)

EXTRA_KINDS = frozenset({"presence", "typing", "room", "lock"})
# Deletions by an operator (one message, or a room cleared): ``?events=deletes``.
DELETE_KINDS = frozenset({"delete", "clear"})


class SocketListener(Listener):
    """Hub membership of one WebSocket (the socket is attached once the handshake is done).

    It joins the hub before the handshake, so it can be told to close (a drain) before
    its socket exists: the close is kept and done as soon as the socket is attached.
    """

    __slots__ = ("ws", "close_asked")

    def __init__(self, fmt, kinds=frozenset()):
        super().__init__(fmt, kinds)
        self.ws = None
        self.close_asked = None

    def attach(self, ws):
        """The handshake is done: from now on ``ws`` is the socket (closed at once if a
        close was asked for meanwhile)."""
        self.ws = ws
        if self.close_asked is not None:
            ws.close(*self.close_asked)

    def write(self, data):
        self.ws.write(data)

    def close(self, code, reason):
        if self.ws is not None:
            self.ws.close(code, reason)
        else:
            self.close_asked = (code, reason)

    def keepalive(self, now, interval, timeout):
        if self.ws is not None:
            self.ws.keepalive(now, interval, timeout)


def socket_view(fmt):
    """Mark a WebSocket view taking ``fmt`` frames: Origin-checked and counted at the
    handshake, joined to its room before it, no request-long database connection."""

    def mark(view):
        view.is_socket = True
        view.socket_format = fmt
        return db.without_request_connection(view)

    return mark


def admit_connection():
    """Before the handshake of a socket or stream: refuse an address that holds too many."""
    view = current_app.view_functions.get(request.endpoint)
    if not getattr(view, "is_socket", False) and not getattr(view, "is_stream", False):
        return
    token = current_app.extensions["chat.admission"].admit(request.remote_addr)
    if token is None:
        metrics.REFUSED.labels("too_many_connections").inc()
        log.warning("refused a connection: too many open",
                    extra={"event": "too_many_connections", "address": request.remote_addr})
        raise TooManyRequests("Too many open connections from this address.")
    g.admission = token


def release_connection(exc):
    admission.hand_over()()  # a no-op when a socket or stream took it over (it gives it back at its end)


@bp.before_request
def _join_before_handshake():
    """Runs before flask-sock answers 101: find the room and join its hub channel now,
    so every message stored after the client sees the socket open reaches it."""
    # Shared frames are sent as they are to every socket (see webapp.websocket).
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    # A bad ?last_id raises chat.Malformed: the handshake is refused with 400.
    g.socket_last_id = chat.resume_point(request.args.get("last_id"))
    realtime = current_app.extensions["chat.realtime"]
    if realtime.draining:
        g.socket_refusal = (RESTARTING, "server restarting")
        return
    fmt = current_app.view_functions[request.endpoint].socket_format
    if fmt == "html":
        kinds, handle = EXTRA_KINDS | DELETE_KINDS, session.get("handle")
    else:
        asked = {kind.strip() for kind in request.args.get("events", "").split(",")}
        kinds = (EXTRA_KINDS & asked) | (DELETE_KINDS if "deletes" in asked else frozenset())
        handle = request.args.get("handle")
    label = request.view_args.get("label", "")
    if not chat.is_valid_label(label):  # never a room: no subscription for it either
        g.socket_refusal = (UNKNOWN_ROOM, "unknown room")
        return
    g.socket_listener = listener = SocketListener(fmt, frozenset(kinds))
    # Subscribed to the room's events before its latest id is read (see realtime.subscribe).
    realtime.subscribe(listener, label)
    try:
        room = chat.find_room(label)
    except db.StorageUnavailable:
        g.socket_refusal = (INTERNAL_ERROR, "database unavailable")
        return
    if room is None:
        g.socket_refusal = (UNKNOWN_ROOM, "unknown room")
    elif realtime.draining:  # began while this handshake waited for its subscription
        g.socket_refusal = (RESTARTING, "server restarting")
    else:
        g.socket_room = room = chat.RoomRef.of(room)
        g.socket_handle = _valid_handle(handle)
        realtime.join(listener, room, g.socket_last_id)


def _valid_handle(handle):
    try:
        return chat.clean_handle(handle, current_app.config["HANDLE_MAX"]) if handle is not None else None
    except chat.BadInput:
        return None


@bp.teardown_request
def _leave(exc):
    listener = g.pop("socket_listener", None)
    if listener is not None:
        current_app.extensions["chat.realtime"].leave(listener)


def _serve(server, read_frame, reply_error):
    """Set one socket up (deliveries, after a replay if ?last_id asked) and hand it to
    the event loop: its frames are handled as they come (``_Connection``), and this
    greenlet, with the request, ends now."""
    config = current_app.config
    address, room = request.remote_addr, g.get("socket_room")
    ws = WebSocket(
        server,
        config["FRAME_MAX"],
        (config["SEND_BACKLOG_MAX_BYTES"], config["SEND_BACKLOG_MAX_SECONDS"]),
        send_buffer=config["SOCKET_SEND_BUFFER"],
        on_drop=lambda kind, reason: _dropped(address, kind, reason),
    )
    # The connection outlives the request: it leaves its room and gives its admission
    # back when it ends, not when this handler returns.
    connection = _Connection(ws, g.pop("socket_listener", None), admission.hand_over(), read_frame, reply_error)
    if room is None:
        ws.close(*g.socket_refusal)
    else:
        connection.start(room, chat.Sender(address, connection=f"ws:{id(ws)}"))
    ws.listen(connection.on_message, connection.on_end)


class _Connection:
    """One open socket after its handshake: what its frames ask for, and its end."""

    __slots__ = ("app", "ws", "listener", "release_admission", "read_frame", "reply_error", "actions", "path")

    def __init__(self, ws, listener, release_admission, read_frame, reply_error):
        self.app = current_app._get_current_object()
        self.ws, self.listener, self.release_admission = ws, listener, release_admission
        self.read_frame, self.reply_error = read_frame, reply_error
        self.actions = None
        self.path = request.path

    def start(self, room, sender):
        realtime = self.app.extensions["chat.realtime"]
        self.listener.attach(self.ws)
        self.actions = _Actions(realtime, room, self.listener, sender)
        with self._guard():
            realtime.start_delivery(self.listener, room, replay=g.socket_last_id is not None)
            self.actions.arrive(g.socket_handle)

    def on_message(self, frame):
        if self.actions is None or self.ws.closing:
            return  # a refused or closing socket: only the close handshake is left
        with self.app.app_context(), self._guard():
            action = "message"
            try:
                action, handle, text = self.read_frame(frame)
                self.actions.run(action, handle, text)
            except chat.BadInput as exc:
                if action != "typing":  # a refused typing signal is not worth a reply
                    self.reply_error(self.ws, str(exc))
            except db.StorageUnavailable:
                self.reply_error(self.ws, "not stored: the database is unavailable; try again")

    @contextmanager
    def _guard(self):
        try:
            yield
        except db.StorageUnavailable:
            self.ws.close(INTERNAL_ERROR, "database unavailable")
        except Exception:  # a fault nobody foresaw: say so in the log and close with 1011
            log.exception("unhandled error on a socket", extra={"event": "unhandled_error", "path": self.path})
            self.ws.close(INTERNAL_ERROR, "internal error")

    def on_end(self):
        with self.app.app_context():
            if self.listener is not None:
                current_app.extensions["chat.realtime"].leave(self.listener)
            if self.actions is not None:
                current_app.extensions["chat.throttle"].forget(self.actions.sender.connection)
            self.release_admission()


class _Actions:
    """What one socket's frames ask for: a message, a typing signal, a new name."""

    def __init__(self, realtime, room, listener, sender):
        self.realtime, self.room, self.listener, self.sender = realtime, room, listener, sender
        self.limit = current_app.config["HANDLE_MAX"]
        self.typing_every = current_app.config["TYPING_THROTTLE"]
        self.typed_at = 0.0

    def arrive(self, handle):
        """List the socket as here (if it said who it is) and show it who else is."""
        presence, listener = self.realtime.presence, self.listener
        if handle:
            presence.enter(listener, self.room.label, handle)
        if "presence" in listener.kinds:
            listener.write(self.realtime.forms.encode(listener.fmt, "presence", presence.handles(self.room.label)))

    def run(self, action, handle, text):
        """Do what a frame asks (``action`` is one of the three the frame readers return)."""
        {"message": self.message, "typing": self.typing, "handle": self.handle}[action](handle, text)

    def message(self, handle, text):
        stored = chat.send(self.room, handle, text, self.sender)
        if self.listener.fmt == "html" or self.realtime.presence.is_listed(self.listener):
            self.realtime.presence.enter(self.listener, self.room.label, stored.handle)

    def typing(self, handle, _text):
        if time.monotonic() - self.typed_at >= self.typing_every:
            self.typed_at = time.monotonic()
            handle = chat.clean_handle(handle, self.limit)
            self.realtime.broadcast(self.room.label, "typing", {"handle": handle}, exclude=self.listener)

    def handle(self, handle, _text):
        self.realtime.presence.enter(self.listener, self.room.label, chat.clean_handle(handle, self.limit))


def _dropped(address, kind, reason):
    metrics.DROPPED.labels(kind).inc()
    log.warning("dropped a socket", extra={"event": "client_dropped", "address": address, "reason": reason})


def _decode(frame):
    if isinstance(frame, bytes):
        raise chat.malformed("send text frames, not binary")
    try:
        return json.loads(frame)
    except (ValueError, RecursionError):
        raise chat.malformed("not valid JSON") from None


def _read_json_frame(frame):
    return ("message", *chat.parse_fields(_decode(frame)))


def _reply_json_error(ws, reason):
    ws.send_text(to_json({"error": reason}))


def _read_htmx_frame(frame):
    # htmx's ws-send: the form's fields plus HEADERS (and the CSRF field, unused here:
    # the Origin check at the handshake already stops cross-site pages); the page's
    # typing signal and name change say so in "action".
    data = _decode(frame)
    if not isinstance(data, dict):
        raise chat.malformed("expected the chat form")
    action = data.get("action") if data.get("action") in ("typing", "handle") else "message"
    return action, data.get("handle"), data.get("message")


def _reply_htmx_error(ws, reason):
    ws.send_text(current_app.jinja_env.get_template("_send_error.html").render(error=reason, oob=True))


@sock.route("/chat/<label>/", bp=bp)
@socket_view("json")
def json_socket(server, label):
    """The seed's protocol: JSON frames both ways (for scripts, bots and the seed's client)."""
    _serve(server, _read_json_frame, _reply_json_error)


@sock.route("/ws/<label>/", bp=bp)
@socket_view("html")
def htmx_socket(server, label):
    """The room page's socket: the chat form in, server-rendered rows out."""
    _serve(server, _read_htmx_frame, _reply_htmx_error)


def init_app(app):
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"thread_class": CallerReads, "event_class": NoEvent})
    app.before_request(admit_connection)
    app.teardown_request(release_connection)
    app.register_blueprint(bp)
