"""WebSocket connections that cost little per socket.

flask-sock does the routing and simple-websocket the handshake; after that a connection
here uses the handler's own greenlet for reading (simple-websocket's reader greenlet is
never started: see ``CallerReads``) and writes without ever blocking:

* ``write`` sends at once when the kernel buffer has room, which is the common case, and
  otherwise keeps the rest in a backlog drained by one short-lived greenlet;
* a backlog older than SEND_BACKLOG_MAX_SECONDS or larger than SEND_BACKLOG_MAX_BYTES
  marks a client too slow to keep up: it is closed with 1013 (try again later);
* keepalive pings are sent by the owner's periodic sweep (``keepalive``), not by a timer
  per socket; a peer that does not answer within PONG_TIMEOUT is cut off.

Frames to clients are built once per message (``text_frame``) and shared by every socket.
No compression is negotiated: a per-socket deflate context would cost ~100 kB each, and
shared frames need every socket to take the same bytes.
"""

import logging
import socket
import time
from collections import deque

import gevent
from gevent.socket import wait_write
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

RECEIVE_BYTES = 16 * 1024
CLOSE_GRACE = 2.0  # seconds to wait for the peer's close frame before cutting the TCP

# Close codes (RFC 6455 and the contract).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED = 1003
TOO_BIG = 1009
INTERNAL_ERROR = 1011
RESTARTING = 1012
TRY_AGAIN_LATER = 1013
UNKNOWN_ROOM = 4404

_encoder = FrameProtocol(client=False, extensions=[])
PING_FRAME = bytes(_encoder.ping())


def text_frame(text):
    """A complete, unmasked server-to-client text frame: the same bytes for every socket."""
    return bytes(_encoder.send_data(text, fin=True))


def limit_send_buffer(sock, size):
    """Fix a socket's kernel send buffer: a peer that stops reading then fills it soon,
    and the rest waits in our own bounded backlog instead of megabytes of kernel memory."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


class _FinishedHandshake:
    """Stands in for wsproto's handshake once the connection is upgraded."""

    def events(self):
        return ()


FINISHED_HANDSHAKE = _FinishedHandshake()


class CallerReads:
    """Passed to simple-websocket as ``thread_class``: start no reader greenlet.

    The handler greenlet reads the socket itself (``WebSocket.receive``), which saves a
    greenlet and its stack per connection.
    """

    def __init__(self, target=None, **_kwargs):
        self.name = "caller-reads"

    def start(self):
        pass


class NoEvent:
    """Passed as ``event_class``: simple-websocket's reader would signal it; ours never
    waits on it (a gevent Event per socket saved)."""

    def set(self):
        pass

    def clear(self):
        pass

    def wait(self, timeout=None):
        return True


class WebSocket:
    """An accepted WebSocket: ``receive`` in the owner's greenlet, ``write`` from anywhere."""

    __slots__ = (
        "_server",
        "_sock",
        "_ws",
        "_max_message",
        "_backlog",
        "_backlog_bytes",
        "_backlog_since",
        "_backlog_limits",
        "_flusher",
        "_incoming",
        "_incoming_bytes",
        "_ready",
        "closing",
        "closed",
        "close_code",
        "last_seen",
        "ping_sent",
        "on_drop",
    )

    def __init__(self, server, max_message, backlog_limits, send_buffer=None, on_drop=None):
        """``server`` is flask-sock's handshaken simple_websocket.Server; ``send_buffer``
        fixes the kernel's send buffer (bytes)."""
        self._server = server
        self._sock = server.sock
        if send_buffer:
            limit_send_buffer(self._sock, send_buffer)
        self._ws = server.ws
        self._max_message = max_message
        self._backlog = None
        self._backlog_bytes = 0
        self._backlog_since = 0.0
        self._backlog_limits = backlog_limits  # (bytes, seconds)
        self._flusher = None
        self._incoming = None
        self._incoming_bytes = 0
        self._ready = None  # complete messages not yet returned by receive (a list, when any)
        if self._ws.connection is not None:
            # After the upgrade wsproto only asks its handshake for pending events, but
            # keeps the whole HTTP/1.1 machinery alive: ~2 kB per idle socket.
            self._ws.handshake = FINISHED_HANDSHAKE
        self.closing = False
        self.closed = False
        self.close_code = None
        self.last_seen = time.monotonic()
        self.ping_sent = None
        self.on_drop = on_drop  # called with a reason when we cut a slow or silent peer

    # -- reading (owner's greenlet only) ---------------------------------------------

    def receive(self):
        """The next complete message (``str`` for text, ``bytes`` for binary), or None
        once the connection has ended."""
        while not self._ready:
            if self.closed:
                return None
            try:
                data = self._sock.recv(RECEIVE_BYTES)
            except OSError:
                data = b""
            if not data:
                self._teardown()
                return None
            self.last_seen = time.monotonic()
            try:
                self._ws.receive_data(data)
                self._handle_events()
            except (LocalProtocolError, RemoteProtocolError) as exc:
                if not self.closing:
                    self.close(PROTOCOL_ERROR, "protocol error")
                log.debug("websocket protocol error: %s", exc)
        return self._ready.pop(0)

    def _handle_events(self):
        for event in self._ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, Ping):
                self._write_raw(self._ws.send(event.response()))
            elif isinstance(event, Pong):
                self.ping_sent = None
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                if not self.closing:
                    self.closing = True
                    try:
                        self._write_raw(self._ws.send(event.response()))
                    except LocalProtocolError:
                        pass
                self._teardown()
                return

    def _collect(self, event):
        if self.closing:
            return
        size = len(event.data.encode() if isinstance(event.data, str) else event.data)
        self._incoming_bytes += size
        if self._incoming_bytes > self._max_message:
            self._incoming = None
            self.close(TOO_BIG, f"message larger than {self._max_message} bytes")
            return
        if self._incoming is None:
            self._incoming = event.data
        else:
            self._incoming += event.data
        if event.message_finished:
            if self._ready is None:
                self._ready = []
            self._ready.append(self._incoming)
            self._incoming = None
            self._incoming_bytes = 0

    # -- writing (any greenlet; never blocks) ------------------------------------------

    def write(self, data):
        """Send a frame built by ``text_frame``. Queued if the peer is slow; a peer that
        falls too far behind is closed with 1013."""
        if self.closing:
            return
        self._write_raw(data)
        if self._backlog is not None:
            limit_bytes, limit_seconds = self._backlog_limits
            age = time.monotonic() - self._backlog_since
            if self._backlog_bytes > limit_bytes or age > limit_seconds:
                self._drop(f"too slow: {self._backlog_bytes} bytes waiting for {age:.1f}s")

    def send_text(self, text):
        """Send one text message to this socket only (errors, replies)."""
        self.write(text_frame(text))

    def _write_raw(self, data):
        if self.closed:
            return
        if self._backlog is not None:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            return
        try:
            sent = self._sock.send(data, 0, 0.0)  # gevent: timeout 0.0 = never wait
        except BlockingIOError:
            sent = 0
        except OSError:
            self._teardown()
            return
        if sent < len(data):
            self._backlog = deque([memoryview(data)[sent:]])
            self._backlog_bytes = len(data) - sent
            self._backlog_since = time.monotonic()
            self._flusher = gevent.spawn(self._flush)

    def _flush(self):
        """Drain the backlog as the peer reads; ends when it is empty."""
        try:
            while self._backlog:
                wait_write(self._sock.fileno())
                chunk = self._backlog[0]
                try:
                    sent = self._sock.send(chunk, 0, 0.0)
                except BlockingIOError:
                    continue
                self._backlog_bytes -= sent
                if sent < len(chunk):
                    self._backlog[0] = memoryview(chunk)[sent:]
                else:
                    self._backlog.popleft()
            self._backlog = None
        except (OSError, ValueError):
            self._teardown()
        finally:
            self._flusher = None

    # -- closing ---------------------------------------------------------------------

    def close(self, code=NORMAL, reason=""):
        """Send a close frame (after anything already queued) and end the connection
        once the peer answers, or after a short grace."""
        if self.closing or self.closed:
            return
        self.closing = True
        self.close_code = code
        try:
            self._write_raw(self._ws.send(CloseConnection(code=code, reason=reason[:100])))
        except LocalProtocolError:
            self._teardown()
            return
        gevent.spawn_later(CLOSE_GRACE, self._teardown)

    def _drop(self, reason):
        """Give up on a slow peer: keep only the frame in flight, then close with 1013."""
        if self._backlog:
            head = self._backlog[0]
            self._backlog.clear()
            self._backlog.append(head)
            self._backlog_bytes = len(head)
        if self.on_drop:
            self.on_drop(reason)
        self.close(TRY_AGAIN_LATER, "too slow to keep up")

    def keepalive(self, now, interval, timeout):
        """Called periodically by the owner: ping an idle peer, cut one that went silent,
        and drop one whose backlog has grown too old."""
        if self.closing or self.closed:
            return
        if self._backlog is not None and now - self._backlog_since > self._backlog_limits[1]:
            self._drop(f"too slow: nothing read for {now - self._backlog_since:.1f}s")
        elif self.ping_sent is not None:
            if now - self.ping_sent > timeout:
                if self.on_drop:
                    self.on_drop(f"no answer to ping for {now - self.ping_sent:.1f}s")
                self._teardown()
        elif now - self.last_seen >= interval:
            self.ping_sent = now
            self._write_raw(PING_FRAME)

    def _teardown(self):
        """End the TCP connection; the owner's ``receive`` then returns None."""
        if self.closed:
            return
        self.closed = True
        self._server.connected = False  # flask-sock's own close() becomes a no-op
        if self._flusher is not None and self._flusher is not gevent.getcurrent():
            self._flusher.kill(block=False)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
