"""WebSocket connections that cost little per socket.

flask-sock does the routing and simple-websocket the handshake; after that a connection
here has no greenlet of its own: the handler sets it up, calls ``listen`` and returns,
and the event loop watches the socket (``Transport.watch``); a short-lived greenlet reads
and handles frames when some arrive. simple-websocket's reader greenlet is never started
(``CallerReads``). Writes never block (``Transport``): a client too slow to keep up is
closed with 1013 (try again later). Keepalive pings are sent by the owner's periodic
sweep (``keepalive``), not by a timer per socket; a peer that does not answer within
PONG_TIMEOUT is cut off.

One client never holds its worker: ``recv`` returns at once while data is buffered, so a
client writing without pause would keep the read loop running forever.
The loop yields to the event loop after every ``YIELD_EVERY`` frames, a client sending
more than ``FRAMES_PER_SECOND_MAX`` frames in a second is closed (1008), and every reply
(pongs, error frames) goes through the same backlog limit as deliveries, so a client
that writes without reading is closed (1013) once its replies pile up.

Frames to clients are built once per message (``text_frame``) and shared by every socket.
No compression is negotiated: a per-socket deflate context would cost ~100 kB each, and
shared frames need every socket to take the same bytes.
"""

import logging
import time

import gevent
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .transport import Transport

log = logging.getLogger(__name__)

RECEIVE_BYTES = 16 * 1024
CLOSE_GRACE = 2.0  # seconds to wait for the peer's close frame before cutting the TCP
YIELD_EVERY = 32  # frames handled before the read loop lets other greenlets run
FRAMES_PER_SECOND_MAX = 1000  # any client past this (pings included) is flooding

# Close codes (RFC 6455 and the contract).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED = 1003
POLICY_VIOLATION = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
RESTARTING = 1012
TRY_AGAIN_LATER = 1013
UNKNOWN_ROOM = 4404

_encoder = FrameProtocol(client=False, extensions=[])
PING_FRAME = bytes(_encoder.ping())


def text_frame(text):
    """A complete, unmasked server-to-client text frame: the same bytes for every socket.

    Built by hand (RFC 6455 5.2: FIN + opcode 1, then a 7-, 16- or 64-bit length): it is
    all a server frame needs, once per message and worker, at a fraction of wsproto's cost."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


class _FinishedHandshake:
    """Stands in for wsproto's handshake once the connection is upgraded."""

    def events(self):
        return ()


FINISHED_HANDSHAKE = _FinishedHandshake()


class CallerReads:
    """Passed to simple-websocket as ``thread_class``: start no reader greenlet (the
    event loop watches the socket instead, see ``WebSocket.listen``)."""

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


class WebSocket(Transport):
    """An accepted WebSocket: ``listen`` hands its messages to a callback, ``write``
    from anywhere."""

    __slots__ = (
        "_ws",
        "_on_message",
        "_max_message",
        "_incoming",
        "_incoming_bytes",
        "_ready",
        "_work",
        "_window_start",
        "_window_frames",
        "close_code",
        "last_seen",
        "ping_sent",
    )

    def __init__(self, server, max_message, backlog_limits, send_buffer=None, on_drop=None):
        """``server`` is flask-sock's handshaken simple_websocket.Server."""
        super().__init__(server.sock, backlog_limits, send_buffer, on_drop)
        server.connected = False  # flask-sock's own close() after the handler is a no-op
        self._ws = server.ws
        self._on_message = None
        self._max_message = max_message
        self._incoming = None
        self._incoming_bytes = 0
        self._ready = None  # complete messages not yet handed to on_message (a list, when any)
        self._work = 0  # frames handled since the reading greenlet last yielded
        self._window_start = 0.0  # the frame budget's current one-second window
        self._window_frames = 0
        if self._ws.connection is not None:
            # After the upgrade wsproto only asks its handshake for pending events, but
            # keeps the whole HTTP/1.1 machinery alive: ~2 kB per idle socket.
            self._ws.handshake = FINISHED_HANDSHAKE
        self.close_code = None
        self.last_seen = time.monotonic()
        self.ping_sent = None

    # -- reading ---------------------------------------------------------------------

    def listen(self, on_message, on_end):
        """From now on call ``on_message(message)`` (``str`` for text, ``bytes`` for
        binary) for every complete message, in a greenlet, in order; and ``on_end()``
        once the connection is over. Returns at once."""
        self._on_message = on_message
        self.watch(on_end)

    def read_available(self):
        """Read and handle what the peer sent, yielding to others every YIELD_EVERY
        frames; False once the connection is over."""
        while True:
            data = self._recv(RECEIVE_BYTES)
            if data is None:
                return True
            if not data:
                return False
            self.last_seen = now = time.monotonic()
            if now - self._window_start >= 1.0:
                self._window_start, self._window_frames = now, 0
            try:
                self._ws.receive_data(data)
                self._handle_events()
            except (LocalProtocolError, RemoteProtocolError) as exc:
                if not self.closing:
                    self.close(PROTOCOL_ERROR, "protocol error")
                log.debug("websocket protocol error: %s", exc)
            while self._ready:
                self._on_message(self._ready.pop(0))
            if self._work >= YIELD_EVERY:
                # While data is buffered recv returns at once and never switches by itself.
                self._work = 0
                gevent.sleep(0)

    def _handle_events(self):
        for event in self._ws.events():
            self._work += 1
            self._window_frames += 1
            if self._window_frames > FRAMES_PER_SECOND_MAX and not self.closing:
                if self.on_drop:
                    self.on_drop("flood", f"more than {FRAMES_PER_SECOND_MAX} frames in a second")
                self.close(POLICY_VIOLATION, "too many frames")
            if isinstance(event, (TextMessage, BytesMessage)):
                self._collect(event)
            elif isinstance(event, Ping):
                self.write(self._ws.send(event.response()))  # bounded like any write
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
                self.teardown()
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

    # -- writing ---------------------------------------------------------------------

    def send_text(self, text):
        """Send one text message to this socket only (errors, replies)."""
        self.write(text_frame(text))

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
            self.teardown()
            return
        gevent.spawn_later(CLOSE_GRACE, self.teardown)

    def drop(self):
        self.close(TRY_AGAIN_LATER, "too slow to keep up")

    def keepalive(self, now, interval, timeout):
        """Called periodically by the owner: ping an idle peer, cut one that went silent,
        and drop one whose backlog has grown too old."""
        if self.closing or self.closed or self.drop_if_stuck(now):
            return
        if self.ping_sent is not None:
            if now - self.ping_sent > timeout:
                if self.on_drop:
                    self.on_drop("silent", f"no answer to ping for {now - self.ping_sent:.1f}s")
                self.teardown()
        elif now - self.last_seen >= interval:
            self.ping_sent = now
            self._write_raw(PING_FRAME)

