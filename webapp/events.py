"""``GET /<label>/events``: the room as a server-sent event stream.

A stream is answered on the connection's own socket, like a WebSocket after its
handshake: the response head is built by Flask (so every security header applies) and
written once; from then on the hub writes each event's bytes (built once per message,
shared by every stream) without blocking, through the same bounded backlog as sockets
(``Transport``). Then the handler returns: the event loop watches the socket, so a
client that goes away is noticed at once, and no greenlet waits meanwhile. The body ends
when the connection closes; heartbeat comments come from the realtime keepalive sweep.

The replay (``Last-Event-ID``, else ``?last_id``) is read from the database before
anything else is sent; the stream holds no database connection while it waits.
"""

import logging
import time

from flask import Blueprint, Response, abort, current_app, request

from . import admission, chat, db, metrics
from .hub import Listener
from .transport import Transport

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__)

OPTIONAL_KINDS = frozenset({"room", "lock"})  # renames (the embed: ?events=room), locks
ALWAYS_KINDS = frozenset({"delete", "clear"})  # an operator deleted messages


class EventStream(Transport):
    """One client's event stream: written by the hub, read only to notice its end."""

    __slots__ = ("heartbeat", "last_beat")

    def __init__(self, sock, backlog_limits, send_buffer, heartbeat, on_drop=None):
        super().__init__(sock, backlog_limits, send_buffer, on_drop)
        self.heartbeat = heartbeat
        self.last_beat = time.monotonic()  # a comment every ``heartbeat`` s, busy or not

    def read_available(self):
        """A stream client sends nothing after its request: bytes from it mean it is done
        (or misbehaving), and the stream ends at once instead of reading on."""
        data = self._recv(1024)
        if data is None:
            return True
        if data and not self.closed:
            log.info("an event-stream client sent data; stream closed", extra={"event": "stream_client_wrote"})
        return False

    def keepalive(self, now, interval, timeout):
        if self.closed or self.drop_if_stuck(now):
            return
        if now - self.last_beat >= self.heartbeat:
            self.last_beat = now
            self.write(b": keepalive\n\n")


class StreamListener(Listener):
    """Hub membership of one event stream."""

    __slots__ = ("stream",)

    def __init__(self, kinds=frozenset()):
        super().__init__("sse", kinds)
        self.stream = None

    def write(self, data):
        self.stream.write(data)

    def close(self, code, reason):
        if self.stream is not None:
            self.stream.teardown()  # EventSource reconnects by itself, with Last-Event-ID

    def keepalive(self, now, interval, timeout):
        if self.stream is not None:
            self.stream.keepalive(now, interval, timeout)


class _Answered(Response):
    """What the view returns once it has answered on the socket itself: gunicorn's
    gevent worker reads StopIteration as "this connection is done" (as for flask-sock)."""

    def __call__(self, environ, start_response):
        raise StopIteration()


def stream_view(view):
    """Mark a streaming view: counted per address, no request-long database connection."""
    view.is_stream = True
    return db.without_request_connection(view)


def _resume_from():
    """``Last-Event-ID``, else ``?last_id``; None without either. A bad one (not an id)
    raises chat.Malformed: a 400 before the stream begins."""
    header = chat.resume_point(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    return header if header is not None else chat.resume_point(request.args.get("last_id"))


def _response_head():
    """The status line and headers, as Flask would send them (after_request hooks run)."""
    response = current_app.response_class(mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["Connection"] = "close"  # the body ends when the connection does
    response = current_app.process_response(response)
    lines = [f"HTTP/1.1 {response.status}"] + [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _serve(listener, sock, room, after):
    """Answer on the socket: the head and the replay; then hand the stream to the event
    loop (the hub writes to it, and it leaves the room once the connection closes)."""
    config = current_app.config
    realtime = current_app.extensions["chat.realtime"]
    listener.stream = stream = EventStream(
        sock,
        (config["SEND_BACKLOG_MAX_BYTES"], config["SEND_BACKLOG_MAX_SECONDS"]),
        config["SOCKET_SEND_BUFFER"],
        config["SSE_HEARTBEAT"],
        on_drop=_dropped,
    )
    try:
        stream.write(_response_head() + f"retry: {config['SSE_RETRY_MS']}\n: connected to {room.label}\n\n".encode())
        realtime.start_delivery(listener, room, replay=after is not None)
        stream.last_beat = time.monotonic()
    except db.StorageUnavailable:
        stream.teardown()  # the head is out: the client sees the stream end, and retries
    except Exception:  # a fault nobody foresaw: logged, and the stream ends
        log.exception("unhandled error on an event stream", extra={"event": "unhandled_error", "path": request.path})
        stream.teardown()
    release_admission = admission.hand_over()

    def end():
        with realtime.app.app_context():
            realtime.leave(listener)
            release_admission()

    stream.watch(end)


def _dropped(kind, reason):
    metrics.DROPPED.labels(kind).inc()
    log.warning("dropped an event stream", extra={"event": "client_dropped", "reason": reason})


@bp.get("/<label:label>/events")
@stream_view
def stream(label):
    """Live messages of a room as ``text/event-stream``, after a replay if asked for."""
    realtime = current_app.extensions["chat.realtime"]
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        abort(501, description="Event streams are served by gunicorn (see the Procfile).")
    if realtime.draining:
        abort(503, description="The server is restarting.")
    after = _resume_from()  # a bad one is a 400 before anything else
    listener = StreamListener(ALWAYS_KINDS | (OPTIONAL_KINDS & set(request.args.get("events", "").split(","))))
    try:
        # Subscribed to the room's events before its latest id is read (see realtime.subscribe).
        realtime.subscribe(listener, label)
        room = chat.find_room(label)
        if room is None:
            abort(404, description=f"There is no room {label!r}.")
        if realtime.draining:  # began while this request waited for its subscription
            abort(503, description="The server is restarting.")
        room = chat.RoomRef.of(room)
        realtime.join(listener, room, after)
    except BaseException:
        realtime.leave(listener)
        raise
    _serve(listener, sock, room, after)  # leaves the room when the stream ends
    return _Answered()


def init_app(app):
    app.register_blueprint(bp)
