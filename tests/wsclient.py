"""A small, synchronous WebSocket client for the tests (wsproto over a plain socket).

The test process is patched by gevent; websockets' sync client closes a socket that is
still registered with a selector from another thread, which makes libev abort
(gevent issue 2100). This client reads in the caller's own greenlet instead.
"""

import socket
import time
from collections import deque
from urllib.parse import urlsplit

from gevent.lock import Semaphore
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .sseclient import recv_within


class Refused(Exception):
    """The server answered the handshake with an HTTP status instead of 101."""

    def __init__(self, status):
        super().__init__(f"handshake refused with {status}")
        self.status = status


class Closed(Exception):
    """The connection ended: ``code`` is the close code (1006 when it just dropped)."""

    def __init__(self, code, reason=""):
        super().__init__(f"closed with {code} {reason}".strip())
        self.code = code
        self.reason = reason


class WSClient:
    def __init__(self, url, origin=None, headers=(), timeout=10, receive_buffer=None):
        """``receive_buffer`` (bytes) fixes the kernel's receive buffer before connecting,
        turning off its autotuning: a client that stops reading then fills up quickly."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.socket()
        self.sock.settimeout(timeout)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect((parts.hostname, parts.port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        extra = list(headers) + ([("Origin", origin)] if origin else [])
        self.sock.sendall(self.ws.send(Request(host=parts.netloc, target=target, extra_headers=extra)))
        self._inbox = deque()
        self._partial = None
        self._send_lock = Semaphore()  # a reader greenlet answers pings while others send
        self.closed = None
        while True:
            try:
                events = self._read(timeout)
            except RemoteProtocolError:
                self.sock.close()
                raise ConnectionError("the server closed during the handshake") from None
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self._handle(events[index + 1:])  # frames in the same packet as the 101
                    return
                if isinstance(event, (RejectConnection, RejectData)):
                    status = getattr(event, "status_code", None)
                    if status is not None:
                        self.sock.close()
                        raise Refused(status)

    def _read(self, timeout):
        data = recv_within(self.sock, timeout)
        self.ws.receive_data(data or None)
        return list(self.ws.events())

    def _handle(self, events):
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                self._partial = event.data if self._partial is None else self._partial + event.data
                if event.message_finished:
                    self._inbox.append(self._partial)
                    self._partial = None
            elif isinstance(event, Ping):
                with self._send_lock:
                    self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.closed is None:
                    self.closed = Closed(event.code, event.reason or "")
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except (LocalProtocolError, OSError):
                        pass
                    self.sock.close()

    def send(self, data):
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        with self._send_lock:
            try:
                self.sock.sendall(self.ws.send(message))
            except LocalProtocolError:
                raise OSError("the connection is closing") from None

    def recv(self, timeout=5):
        """The next message (``str`` or ``bytes``) within ``timeout`` seconds (pings are
        answered meanwhile); raises Closed, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while not self._inbox:
            if self.closed is not None:
                raise self.closed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message in time")
            self._handle(self._read(remaining))  # a dropped connection reads as close 1006
        return self._inbox.popleft()

    def close(self, code=1000):
        if self.closed is None:
            try:
                self.sock.sendall(self.ws.send(CloseConnection(code=code)))
                while self.closed is None:
                    self._handle(self._read(2))
            except (LocalProtocolError, OSError, TimeoutError):
                pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
