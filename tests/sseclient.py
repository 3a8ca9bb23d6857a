"""A small server-sent events client for the tests: a raw socket, HTTP/1.1, de-chunking,
and the event-stream format (``id:``, ``event:``, ``data:``, comments, ``retry:``)."""

import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def recv_within(sock, timeout):
    """What the socket has (b"" once the peer has gone), or TimeoutError after ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except socket.timeout:
        raise TimeoutError("nothing received in time") from None
    except OSError:
        return b""


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None


@dataclass
class Stream:
    status: int
    headers: dict
    events: list = field(default_factory=list)
    comments: list = field(default_factory=list)
    retry: int | None = None


class SSEClient:
    def __init__(self, url, headers=(), timeout=10):
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._raw = b""
        self._body = b""
        self._chunked = False
        self._eof = False
        head = self._read_until(b"\r\n\r\n", timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers_seen = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers_seen[name.strip().lower()] = value.strip()
        self.stream = Stream(int(status_line.split()[1]), headers_seen)
        self._chunked = headers_seen.get("transfer-encoding", "").lower() == "chunked"
        self._pending = Event()

    # -- bytes ------------------------------------------------------------------------

    def _fill(self, timeout):
        data = recv_within(self.sock, timeout)
        if not data:
            self._eof = True
        self._raw += data

    def _read_until(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while marker not in self._raw:
            if self._eof:
                raise ConnectionError("closed")
            self._fill(max(0.01, deadline - time.monotonic()))
        head, _, self._raw = self._raw.partition(marker)
        return head

    def _decode_body(self):
        """Move complete body bytes from the raw buffer to ``_body`` (de-chunking)."""
        if not self._chunked:
            self._body += self._raw
            self._raw = b""
            return
        while True:
            size_line, sep, rest = self._raw.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._eof = True
                return
            if len(rest) < size + 2:
                return
            self._body += rest[:size]
            self._raw = rest[size + 2:]

    # -- events -----------------------------------------------------------------------

    def next_event(self, timeout=5):
        """The next dispatched event (comments and ``retry:`` are recorded on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            self._decode_body()
            while b"\n" in self._body:
                line, _, self._body = self._body.partition(b"\n")
                event = self._line(line.decode("utf-8").rstrip("\r"))
                if event is not None:
                    self.stream.events.append(event)
                    return event
            if self._eof:
                raise ConnectionError("the stream ended")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event in time")
            self._fill(remaining)

    def _line(self, line):
        if line == "":
            event, self._pending = self._pending, Event()
            return event if (event.data or event.id is not None or event.event != "message") else None
        if line.startswith(":"):
            self.stream.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._pending.data = f"{self._pending.data}\n{value}" if self._pending.data else value
        elif name == "event":
            self._pending.event = value
        elif name == "id":
            self._pending.id = value
        elif name == "retry":
            self.stream.retry = int(value)
        return None

    def messages(self, count, timeout=10):
        """Read until ``count`` message events have arrived in total; return them."""
        deadline = time.monotonic() + timeout
        while len([e for e in self.stream.events if e.event == "message"]) < count:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.next_event(remaining)
            except TimeoutError:
                got = [e.id for e in self.stream.events if e.event == "message"]
                raise AssertionError(f"got {len(got)} of {count} events: ids {got}") from None
        return [e for e in self.stream.events if e.event == "message"]

    def close(self):
        self.sock.close()
