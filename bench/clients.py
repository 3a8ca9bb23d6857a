"""Minimal, cheap asyncio clients for the load generator: WebSocket (RFC 6455) and SSE.

No third-party websocket library: the receive path is the load generator's hot loop and
it shares the machine's cores with the server under test, so it is kept to a handful of
operations per frame:

* both clients are ``asyncio.BufferedProtocol``\\ s that ``recv_into`` one buffer shared by
  every connection (a single-threaded loop handles one read at a time), so a read
  allocates nothing; only a partial frame left at the end of a read is copied into the
  connection's own ``bytearray``;
* frames and events are parsed in place by offsets (``bytearray.find(sub, start, end)``);
* of a chat message only the ``message`` field's text is extracted (no JSON decoding):
  it is appended to ``client.got`` as ``bytes``, preceded by one ``int`` (``time.time_ns()``
  of the read) per read that carried messages. Everything else (error frames, resets,
  unexpected frames) is kept whole in ``client.other``;
* ``client.n`` counts the messages received, so a waiter can poll cheaply.

``SIOClient`` is the same WebSocket client speaking Socket.IO 5 over the Engine.IO 4
websocket transport (``/socket.io/?EIO=4&transport=websocket``), for the Flask-SocketIO
peer (``bench/peers``): it is open once its namespace connect (``40``) is answered, answers
the server's pings (``2`` -> ``3``), and sends ``42["chat",{...}]``. A ``42["message",{...}]``
event carries the same JSON message, so the same ``"message":"`` marker finds the text.

The benchmark's message texts are ASCII letters, digits and spaces, which JSON and HTML
leave unescaped, so the text between the markers is exactly what was sent.
"""

import asyncio
import base64
import hashlib
import os
import socket
import time

__all__ = ["WSClient", "SIOClient", "SSEClient", "HandshakeError", "connect", "connect_ws", "connect_sse", "http_get"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
JSON_MARK = b'"message":"'
JSON_MARK_LEN = len(JSON_MARK)
SSE_MARK = b'<span class="text">'
SSE_MARK_LEN = len(SSE_MARK)
SSE_END = b"</span>"
HEADER_MAX = 64 * 1024

_SHARED = bytearray(256 * 1024)
_VIEW = memoryview(_SHARED)
_time_ns = time.time_ns


class HandshakeError(Exception):
    """The server did not accept the connection (``status`` is its HTTP status, or 0)."""

    def __init__(self, message, status=0):
        super().__init__(message)
        self.status = status


def _mask(payload, key):
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 5.3), as one big-int operation."""
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")


def client_frame(opcode, payload=b""):
    """A complete, masked client-to-server frame (FIN set)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return header + key + _mask(payload, key)


class _Client(asyncio.BufferedProtocol):
    """Shared plumbing: the shared receive buffer, partial-data carry-over, state."""

    def __init__(self, name=""):
        loop = asyncio.get_running_loop()
        self.name = name
        self.transport = None
        self.opened = loop.create_future()
        self.closed = loop.create_future()
        self.is_open = False
        self.is_closed = False
        self.got = []  # int (read time, ns) followed by the message texts (bytes) of that read
        self.n = 0  # message texts received
        self.other = []  # payloads that are not chat messages (errors, resets, ...)
        self.close_code = None  # the close code the server sent (None: none yet)
        self.error = None
        self._pending = None  # bytearray: data not yet parsed (a partial frame)

    # -- asyncio.BufferedProtocol -------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return _VIEW

    def buffer_updated(self, nbytes):
        pending = self._pending
        if pending is None:
            data, end = _SHARED, nbytes
        else:
            pending += _VIEW[:nbytes]
            data, end = pending, len(pending)
        pos = self._consume(data, end)
        if pos >= end:
            self._pending = None
        elif pending is None:
            self._pending = bytearray(_VIEW[pos:end])
        elif self._pending is pending:
            del pending[:pos]
        if self._pending is not None and len(self._pending) > 64 * 1024 * 1024:
            self._fail(HandshakeError("more than 64 MiB unparsed"))

    def eof_received(self):
        return False  # close the transport

    def connection_lost(self, exc):
        self.is_closed = True
        if exc is not None and self.error is None:
            self.error = exc
        if not self.opened.done():
            self.opened.set_exception(self.error or HandshakeError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # -- helpers --------------------------------------------------------------------------

    def _fail(self, exc):
        if self.error is None:
            self.error = exc
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _consume(self, data, end):
        """Parse ``data[:end]``; return how many bytes were used (the rest is kept)."""
        raise NotImplementedError

    def reset(self):
        """Forget what was received so far (a new measurement begins)."""
        self.got = []
        self.n = 0
        self.other = []

    def pause(self):
        """Stop reading the socket: the kernel buffers fill and the server's writes back up."""
        if self.transport is not None and not self.is_closed:
            self.transport.pause_reading()

    def resume(self):
        if self.transport is not None and not self.is_closed:
            self.transport.resume_reading()

    def abort(self):
        if self.transport is not None:
            self.transport.abort()


def _parse_head(head):
    """(status, {lower-case name: value}) of an HTTP response head (bytes, no blank line)."""
    lines = bytes(head).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


class WSClient(_Client):
    """One WebSocket connection: handshake, cheap frame parsing, pongs, close."""

    def __init__(self, host, port, path, name=""):
        super().__init__(name)
        self.host, self.port, self.path = host, port, path
        self._key = base64.b64encode(os.urandom(16))
        self._fragments = None  # list of payload pieces of a fragmented message
        self._fragment_text = False
        self._close_sent = False

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port, self._key)
        )

    def _handshake(self, data, end):
        i = data.find(b"\r\n\r\n", 0, end)
        if i < 0:
            if end > HEADER_MAX:
                self._fail(HandshakeError("response head too large"))
                return end
            return -1
        status, headers = _parse_head(data[:i])
        if status != 101:
            self._fail(HandshakeError(f"handshake refused with HTTP {status}", status))
            return end
        accept = base64.b64encode(hashlib.sha1(self._key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            self._fail(HandshakeError("bad Sec-WebSocket-Accept", status))
            return end
        self._upgraded()
        return i + 4

    def _upgraded(self):
        """The server answered 101: the connection is open."""
        self.is_open = True
        self.opened.set_result(self)

    def _consume(self, data, end):
        pos = 0
        if not self.is_open:
            pos = self._handshake(data, end)
            if pos < 0:
                return 0
            if not self.is_open:
                return end
        got = self.got
        now = 0
        find = data.find
        while end - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            if length < 126:
                head = pos + 2
            elif length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                head = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = pos + 10
            else:  # the mask bit: servers must not mask
                self._fail(HandshakeError("masked frame from the server"))
                return end
            stop = head + length
            if stop > end:
                break
            if b0 == 0x81:  # a whole text frame: the common case
                i = find(JSON_MARK, head, stop)
                if i >= 0:
                    i += JSON_MARK_LEN
                    if not now:
                        now = _time_ns()
                        got.append(now)
                    j = find(b'"', i, stop)
                    got.append(bytes(data[i:j if j >= 0 else stop]))
                    self.n += 1
                else:
                    self._other_text(bytes(data[head:stop]))
            else:
                self._frame(b0, bytes(data[head:stop]))
            pos = stop
        return pos

    def _frame(self, b0, payload):
        """Every frame but a whole text frame: control frames and fragments."""
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode == 0x9:  # ping
            self._write(client_frame(0xA, payload))
        elif opcode == 0xA:  # pong
            pass
        elif opcode == 0x8:  # close
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self._close_sent:
                self._close_sent = True
                self._write(client_frame(0x8, payload[:2]))
            if self.transport is not None:
                self.transport.close()
        elif opcode in (0x1, 0x2):  # the first fragment of a message
            self._fragments = [payload]
            self._fragment_text = opcode == 0x1
            if fin:
                self._message()
        elif opcode == 0x0 and self._fragments is not None:
            self._fragments.append(payload)
            if fin:
                self._message()
        else:
            self._fail(HandshakeError(f"unexpected opcode {opcode}"))

    def _message(self):
        payload = b"".join(self._fragments)
        self._fragments = None
        i = payload.find(JSON_MARK) if self._fragment_text else -1
        if i >= 0:
            i += JSON_MARK_LEN
            self.got.append(_time_ns())
            self.got.append(payload[i:payload.find(b'"', i)])
            self.n += 1
        elif self._fragment_text:
            self._other_text(payload)
        else:
            self.other.append(payload)

    def _other_text(self, payload):
        """A text message that is not a chat message (an error, a reset, ...)."""
        self.other.append(payload)

    def _write(self, data):
        if self.transport is not None and not self.is_closed:
            self.transport.write(data)

    # -- sending ------------------------------------------------------------------------------

    def send_text(self, text):
        self._write(client_frame(0x1, text.encode() if isinstance(text, str) else text))

    def send_chat(self, handle, message):
        """Send ``{"handle", "message"}`` (both must need no JSON escaping)."""
        self.send_text('{"handle":"%s","message":"%s"}' % (handle, message))

    def start_close(self, code=1000):
        if not self._close_sent and not self.is_closed:
            self._close_sent = True
            self._write(client_frame(0x8, code.to_bytes(2, "big")))

    async def close(self, code=1000, timeout=2.0):
        """The close handshake, then the TCP connection (aborted after ``timeout``)."""
        self.start_close(code)
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except asyncio.TimeoutError:
            self.abort()


class SIOClient(WSClient):
    """A Socket.IO client (Engine.IO 4, websocket transport only, namespace ``/``)."""

    def __init__(self, host, port, path, name=""):
        super().__init__(host, port, path, name)
        query = path.partition("?")[2]
        self._room = dict(part.partition("=")[::2] for part in query.split("&")).get("room", "")
        self._upgrade_done = False

    def _upgraded(self):
        self._upgrade_done = True
        self.is_open = True  # frames flow; ``opened`` waits for the namespace connect

    def _other_text(self, payload):
        kind = payload[:2]
        if payload == b"2":  # Engine.IO ping
            self.send_text(b"3")
        elif kind == b"0{":  # Engine.IO open: connect to the default namespace, joining the room
            self.send_text(b'40{"room":"%s"}' % self._room.encode())
        elif kind == b"40":  # namespace connect answered
            if not self.opened.done():
                self.opened.set_result(self)
        elif kind == b"44":  # connect refused
            self._fail(HandshakeError(f"socket.io connect refused: {payload[:200]!r}"))
        else:
            self.other.append(payload)

    def send_chat(self, handle, message):
        self.send_text('42["chat",{"handle":"%s","message":"%s"}]' % (handle, message))


class SSEClient(_Client):
    """One ``text/event-stream`` response: HTTP/1.1 GET, de-chunking, ``id:``/``data:`` events."""

    def __init__(self, host, port, path, name=""):
        super().__init__(name)
        self.host, self.port, self.path = host, port, path
        self.chunked = False
        self.last_event_id = None
        self._left = 0  # bytes still to come in the current chunk
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self._events = bytearray()  # de-chunked stream not yet split into events

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port)
        )

    def _consume(self, data, end):
        pos = 0
        if not self.is_open:
            i = data.find(b"\r\n\r\n", 0, end)
            if i < 0:
                if end > HEADER_MAX:
                    self._fail(HandshakeError("response head too large"))
                    return end
                return 0
            status, headers = _parse_head(data[:i])
            if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
                self._fail(HandshakeError(f"stream refused with HTTP {status}", status))
                return end
            self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            self.is_open = True
            self.opened.set_result(self)
            pos = i + 4
        events = self._events
        if not self.chunked:
            events += data[pos:end]
            pos = end
        else:
            while pos < end:
                if self._left:
                    take = min(self._left, end - pos)
                    events += data[pos:pos + take]
                    pos += take
                    self._left -= take
                    if self._left:
                        break
                    self._crlf = True
                if self._crlf:
                    if end - pos < 2:
                        break
                    pos += 2
                    self._crlf = False
                i = data.find(b"\r\n", pos, end)
                if i < 0:
                    break
                size = int(bytes(data[pos:i]).split(b";", 1)[0], 16)
                pos = i + 2
                if size == 0:  # the last chunk: the server ended the stream
                    self.transport.close()
                    pos = end
                    break
                self._left = size
        if events:
            self._split_events(events)
        return pos

    def _split_events(self, events):
        """Take every complete event (ended by a blank line) off the front of ``events``."""
        find = events.find
        start = 0
        now = 0
        got = self.got
        while True:
            k = find(b"\n\n", start)
            if k < 0:
                break
            i = find(SSE_MARK, start, k)
            if i >= 0:
                i += SSE_MARK_LEN
                if not now:
                    now = _time_ns()
                    got.append(now)
                got.append(bytes(events[i:find(SSE_END, i, k)]))
                self.n += 1
            elif k > start and events[start] != 0x3A and not events.startswith(b"retry:", start):
                # (a line starting with ':' is a comment: the greeting, heartbeats)
                self.other.append(bytes(events[start:k]))
            start = k + 2
        if start:
            del events[:start]

    async def close(self, code=None, timeout=0):
        self.abort()


# Bind the source address but leave the port to connect(): each (source, destination) pair
# then has the whole ephemeral port range to itself (Linux's option 24; not named in 3.11).
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def _connect(cls, host, port, path, name, timeout, rcvbuf, source=None):
    loop = asyncio.get_running_loop()
    if rcvbuf or source:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        except BaseException:
            sock.close()
            raise
        _, client = await loop.create_connection(lambda: cls(host, port, path, name), sock=sock)
    else:
        _, client = await asyncio.wait_for(
            loop.create_connection(lambda: cls(host, port, path, name), host, port), timeout
        )
    try:
        await asyncio.wait_for(client.opened, timeout)
    except BaseException:
        client.abort()
        raise
    return client


KINDS = {"ws": WSClient, "sio": SIOClient, "sse": SSEClient}


async def connect(kind, host, port, path, name="", timeout=15.0, rcvbuf=None, source=None):
    """An open client of ``kind`` (``ws``, ``sio`` or ``sse``), or an exception. ``source``:
    the local address to connect from (e.g. ``127.0.0.2``; one address gives ~28,000
    connections to one server port)."""
    return await _connect(KINDS[kind], host, port, path, name, timeout, rcvbuf, source)


async def connect_ws(host, port, path, name="", timeout=15.0, rcvbuf=None):
    """An open WSClient (the server has answered 101), or an exception."""
    return await _connect(WSClient, host, port, path, name, timeout, rcvbuf)


async def connect_sse(host, port, path, name="", timeout=15.0):
    """An open SSEClient (the server has sent the response head), or an exception."""
    return await _connect(SSEClient, host, port, path, name, timeout, None)


async def http_get(host, port, path, timeout=10.0):
    """(status, body) of a plain GET (``Connection: close``)."""

    async def run():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status, headers = _parse_head(head)
        if "chunked" in headers.get("transfer-encoding", ""):
            out, pos = bytearray(), 0
            while True:
                i = body.find(b"\r\n", pos)
                size = int(body[pos:i].split(b";")[0], 16) if i >= 0 else 0
                if size == 0:
                    break
                out += body[i + 2:i + 2 + size]
                pos = i + 2 + size + 2
            body = bytes(out)
        return status, body

    return await asyncio.wait_for(run(), timeout)
