"""Writing to a client socket without ever blocking: shared by WebSockets and event streams.

``Transport.write`` sends at once when the kernel buffer has room, which is the common
case, and otherwise keeps the rest in a backlog drained by one short-lived greenlet. A
backlog older than ``SEND_BACKLOG_MAX_SECONDS`` or larger than ``SEND_BACKLOG_MAX_BYTES``
marks a client too slow to keep up: it is dropped (``drop``), so one slow reader never
delays anyone else and never holds more than a bounded amount of memory. The kernel's
own send buffer is fixed (``limit_send_buffer``): Linux would otherwise grow it to
megabytes for a client that stopped reading, hiding it from the backlog limit.

No greenlet waits on an open connection. The transport takes the socket over from
gunicorn (``take_over``: once the handler returns, gunicorn's close no longer touches
it) and ``watch`` hands it to the event loop: an idle connection is a file descriptor
and a libev watcher, and a greenlet runs only while there is something to read
(``read_available``). That is most of what a connection used to cost: a greenlet parked
in ``recv`` keeps its stack, gunicorn's request and Flask's request context alive.
"""

import _socket
import logging
import socket
import time
from collections import deque

import gevent
from gevent.socket import wait_write

log = logging.getLogger(__name__)


def limit_send_buffer(sock, size):
    """Fix a socket's kernel send buffer (bytes)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except OSError:
        pass


def take_over(sock):
    """The connection of gunicorn's socket ``sock`` as a plain non-blocking socket that
    gunicorn no longer closes (its socket object is detached from the descriptor)."""
    own = _socket.socket(fileno=sock.detach())
    own.setblocking(False)
    return own


class Transport:
    """A client connection, taken over from gunicorn, written without blocking and
    watched by the event loop (``watch``) until it ends."""

    __slots__ = (
        "_sock",
        "_backlog",
        "_backlog_bytes",
        "_backlog_since",
        "_backlog_limits",
        "_flusher",
        "_watcher",
        "_on_end",
        "closing",
        "closed",
        "on_drop",
    )

    def __init__(self, sock, backlog_limits, send_buffer=None, on_drop=None):
        """``sock`` is gunicorn's socket of the connection (taken over here);
        ``backlog_limits`` is (bytes, seconds); ``on_drop(kind, reason)`` hears of drops
        (kind: "slow", or "silent" for a peer that stopped answering)."""
        self._sock = sock = take_over(sock)
        if send_buffer:
            limit_send_buffer(sock, send_buffer)
        self._backlog = None
        self._backlog_bytes = 0
        self._backlog_since = 0.0
        self._backlog_limits = backlog_limits
        self._flusher = None
        self._watcher = None
        self._on_end = None
        self.closing = False
        self.closed = False
        self.on_drop = on_drop

    def write(self, data):
        """Send bytes (the same object may go to many clients); queued if the peer is
        slow; a peer too far behind is dropped."""
        if self.closing:
            return
        if self._backlog is None and not self.closed:
            # The common case, once per delivery: straight to the kernel.
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.teardown()
                return
            if sent == len(data):
                return
            self._start_backlog(data, sent)
            return
        self._write_raw(data)
        if self._backlog is not None:
            limit_bytes, limit_seconds = self._backlog_limits
            age = time.monotonic() - self._backlog_since
            if self._backlog_bytes > limit_bytes or age > limit_seconds:
                self._too_slow(f"too slow: {self._backlog_bytes} bytes waiting for {age:.1f}s")

    def _write_raw(self, data):
        if self.closed:
            return
        if self._backlog is not None:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            return
        try:
            sent = self._sock.send(data)  # never waits: the socket is non-blocking
        except BlockingIOError:
            sent = 0
        except OSError:
            self.teardown()
            return
        if sent < len(data):
            self._start_backlog(data, sent)

    def _start_backlog(self, data, sent):
        """The kernel took only ``sent`` bytes of ``data``: keep the rest, drain it later."""
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
                    sent = self._sock.send(chunk)
                except BlockingIOError:
                    continue
                self._backlog_bytes -= sent
                if sent < len(chunk):
                    self._backlog[0] = memoryview(chunk)[sent:]
                else:
                    self._backlog.popleft()
            self._backlog = None
        except (OSError, ValueError):
            self.teardown()
        finally:
            self._flusher = None

    def _too_slow(self, reason):
        """Keep only the bytes already in flight (a frame cut in half would corrupt the
        stream), tell the owner, and end the connection."""
        if self._backlog:
            head = self._backlog[0]
            self._backlog.clear()
            self._backlog.append(head)
            self._backlog_bytes = len(head)
        if self.on_drop:
            self.on_drop("slow", reason)
        self.drop()

    def drop(self):
        """End a connection whose peer cannot keep up (subclasses say goodbye first)."""
        self.teardown()

    def drop_if_stuck(self, now):
        """Drop the client if its backlog has waited longer than allowed (a peer that
        stopped reading between writes); True if it was dropped."""
        if self._backlog is None or now - self._backlog_since <= self._backlog_limits[1]:
            return False
        self._too_slow(f"too slow: nothing read for {now - self._backlog_since:.1f}s")
        return True

    # -- watching ----------------------------------------------------------------------

    def watch(self, on_end):
        """Hand the connection to the event loop: from now on ``read_available`` runs (in
        a greenlet of its own) whenever the peer sent something, and ``on_end()`` once,
        in a greenlet, when the connection is over and its socket closed. ``teardown``
        (from anywhere) ends it: the next read sees the end."""
        self._on_end = on_end
        self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        self._watcher.start(self._wake)

    def _wake(self):
        """In the event loop (never blocks): read in a greenlet of its own."""
        self._watcher.stop()
        gevent.spawn(self._serve_input)

    def _serve_input(self):
        try:
            more = self.read_available()
        except Exception:  # a fault nobody foresaw: the connection ends, the worker lives
            log.exception("unhandled error on a connection", extra={"event": "unhandled_error"})
            more = False
        if more and not self.closed:
            self._watcher.start(self._wake)
        else:
            self._finish()

    def read_available(self):
        """Handle what the peer sent (without waiting for more); False once the
        connection is over (the peer closed it, or it was torn down)."""
        raise NotImplementedError

    def _recv(self, size):
        """What the peer sent (b"" at its end or after teardown), or None for nothing yet."""
        if self.closed:
            return b""
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _finish(self):
        self.teardown()
        if self._watcher is None:
            return
        self._watcher.stop()
        self._watcher = None
        self._sock.close()  # after the watcher stopped: the number may be reused at once
        on_end, self._on_end = self._on_end, None
        on_end()

    def teardown(self):
        """End the TCP connection; the next read sees it closed."""
        if self.closed:
            return
        self.closed = True
        if self._flusher is not None and self._flusher is not gevent.getcurrent():
            self._flusher.kill(block=False)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
