"""``GET /<label>/events``: the room as a server-sent event stream.

Each stream is a hub listener whose writes go into a bounded queue; the response
generator sends what the queue holds. The replay (``Last-Event-ID``, else ``?last_id``)
is read from the database before the response starts, inside the request; the generator
itself needs no request context and holds no database connection. Heartbeat comments
come from the realtime keepalive sweep, so an idle stream survives proxies and a
departed client is noticed at the next write.
"""

import logging
import time

from flask import Blueprint, Response, abort, current_app, g, request
from gevent.queue import Full, Queue

from . import chat, db, metrics
from .hub import Listener
from .websocket import limit_send_buffer

log = logging.getLogger(__name__)
bp = Blueprint("events", __name__)

QUEUE_SLACK = 500  # events a stream may fall behind (on top of a full replay)


class StreamListener(Listener):
    """Hub membership of one event stream."""

    __slots__ = ("queue", "closed", "last_write", "heartbeat")

    def __init__(self, queue_size, heartbeat, kinds=frozenset()):
        super().__init__("sse", kinds)
        self.queue = Queue(queue_size)
        self.closed = False
        self.last_write = time.monotonic()
        self.heartbeat = heartbeat

    def write(self, data):
        if self.closed:
            return
        try:
            self.queue.put_nowait(data)
            self.last_write = time.monotonic()
        except Full:
            metrics.DROPPED.labels("slow").inc()
            log.warning("dropped an event stream", extra={"event": "client_dropped", "reason": "too slow"})
            self.close(1013, "too slow")

    def close(self, code, reason):
        if not self.closed:
            self.closed = True
            try:
                self.queue.put_nowait(None)
            except Full:
                pass  # the reader finds ``closed`` after its next item

    def keepalive(self, now, interval, timeout):
        if not self.closed and now - self.last_write >= self.heartbeat:
            self.write(b": keepalive\n\n")


def stream_view(view):
    """Mark a streaming view: counted per address, no request-long database connection."""
    view.is_stream = True
    return db.without_request_connection(view)


def _resume_from():
    for text in (request.headers.get("Last-Event-ID"), request.args.get("last_id")):
        if text is not None:
            text = text.strip()
            if text.isascii() and text.isdigit():
                return int(text)
    return None


@bp.get("/<label:label>/events")
@stream_view
def stream(label):
    """Live messages of a room as ``text/event-stream``, after a replay if asked for."""
    config = current_app.config
    realtime = current_app.extensions["chat.realtime"]
    room = chat.find_room(label)
    if room is None:
        abort(404, description=f"There is no room {label!r}.")
    room = chat.RoomRef.of(room)
    if realtime.draining:
        abort(503, description="The server is restarting.")
    if "gunicorn.socket" in request.environ:
        limit_send_buffer(request.environ["gunicorn.socket"], config["SOCKET_SEND_BUFFER"])
    # Beyond messages, a stream may ask for renames (the embed does): ?events=room
    kinds = frozenset({"room"} & set(request.args.get("events", "").split(",")))
    listener = StreamListener(config["REPLAY_MAX"] + QUEUE_SLACK, config["SSE_HEARTBEAT"], kinds)
    after = _resume_from()
    realtime.join(listener, room, after)
    try:
        realtime.start_delivery(listener, room, replay=after is not None)
    except db.StorageUnavailable:
        realtime.leave(listener)
        raise
    # The stream outlives the request: it leaves the hub and releases its admission
    # when the server closes the response, however the stream ended.
    admission, token = current_app.extensions["chat.admission"], g.pop("admission", None)

    def finish():
        realtime.leave(listener)
        if token is not None:
            admission.release(token)

    def generate():
        yield f"retry: {config['SSE_RETRY_MS']}\n: connected to {room.label}\n\n".encode()
        while True:
            data = listener.queue.get()
            if data is None or listener.closed:
                return
            yield data

    response = Response(generate(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(finish)
    return response


def init_app(app):
    app.register_blueprint(bp)
