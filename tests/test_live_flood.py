"""Flooding clients against a real one-worker server: one client never freezes a worker.

A client that writes as fast as it can (pings, or chat frames over the rate limit) and
never reads, or that keeps writing to its event-stream connection, must neither stop the
worker from serving everyone else nor make it hold unbounded memory: it is cut off once
it passes a bound (README, guarantees: "one client never freezes a worker").
"""

import json
import socket
import time

import gevent
import pytest
import requests
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Ping, TextMessage

from .support import wait_for
from .wsclient import WSClient

pytestmark = pytest.mark.live

FLOOD_SECONDS = 10


def _frames(event, count):
    """``count`` client (masked) frames of one event, as one block of bytes."""
    encoder = Connection(ConnectionType.CLIENT)
    return b"".join(encoder.send(event) for _ in range(count))


class Flooder:
    """Writes one block of bytes again and again from its own greenlet until the server
    cuts it off; reads nothing unless asked to."""

    def __init__(self, sock, block, read=False):
        self.sock = sock
        self.block = block
        self.sent = 0
        self.cut_at = None
        self._started = time.monotonic()
        self._writer = gevent.spawn(self._write)
        self._reader = gevent.spawn(self._read) if read else None

    def _write(self):
        try:
            while True:
                self.sock.sendall(self.block)
                self.sent += len(self.block)
                gevent.sleep(0)  # this test's own checks run in this process too
        except OSError:
            self._cut()

    def _read(self):
        try:
            while self.sock.recv(65536):
                gevent.sleep(0)
        except OSError:
            pass
        self._cut()

    def _cut(self):
        if self.cut_at is None:
            self.cut_at = time.monotonic() - self._started

    def stop(self):
        gevent.killall([g for g in (self._writer, self._reader) if g is not None])
        self.sock.close()


def _raw_socket(server, path, read=False):
    """A WebSocket whose handshake is done, as a bare TCP socket with a small receive buffer."""
    client = WSClient(server.ws_url(path), receive_buffer=None if read else 4096)
    client.sock.settimeout(None)
    return client.sock


def _own(chatter):
    """The next frame of the bystander's own (the flooders' few stored messages skipped)."""
    while True:
        frame = chatter.recv(timeout=2)
        assert "error" not in frame, frame
        if frame.get("handle") == "bystander":
            return frame


def _stays_responsive(server, flooders, chatter, until):
    """While ``until()`` is false (at most FLOOD_SECONDS): /healthz answers within a second
    and another client's chat is delivered, again and again."""
    started = time.monotonic()
    rounds = 0
    while not until() and time.monotonic() - started < FLOOD_SECONDS:
        begun = time.monotonic()
        try:
            assert requests.get(server.url + "/healthz", timeout=1).status_code == 200
        except requests.RequestException as exc:
            pytest.fail(f"/healthz did not answer within 1 s after {begun - started:.1f}s of flooding: {exc}")
        assert time.monotonic() - begun < 1.0
        if chatter is not None and rounds % 5 == 0:  # about once a second (the address limit)
            chatter.send("bystander", f"still here {rounds}")
            assert _own(chatter)["message"] == f"still here {rounds}"
        rounds += 1
        gevent.sleep(0.2)
    return rounds


def test_socket_flooders_are_cut_off_and_the_worker_keeps_serving(live):
    """Masked pings and refused chat frames, written without reading: the worker answers
    everyone else throughout, is never replaced, and cuts both flooders off."""
    server = live(RATE_LIMIT="5/1", SEND_BACKLOG_MAX_BYTES=64 * 1024, SOCKET_SEND_BUFFER=8192)
    server.open_room("flood")
    (worker,) = server.worker_pids()
    chatter = server.socket("flood")
    chatter.send("bystander", "hello")
    assert chatter.recv()["message"] == "hello"

    pings = Flooder(_raw_socket(server, "/chat/flood/"), _frames(Ping(b"p" * 100), 500))
    frame = TextMessage(json.dumps({"handle": "flood", "message": "x" * 100}))
    refused = Flooder(_raw_socket(server, "/chat/flood/"), _frames(frame, 200))
    flooders = [pings, refused]
    try:
        rounds = _stays_responsive(server, flooders, chatter, lambda: all(f.cut_at is not None for f in flooders))
        assert rounds >= 1
        assert pings.cut_at is not None, f"the ping flooder was never cut off ({pings.sent} bytes sent)"
        assert refused.cut_at is not None, f"the refused-frame flooder was never cut off ({refused.sent} bytes sent)"
        assert server.worker_pids() == [worker], "the worker was replaced"
        dropped = sum(server.metric("chat_dropped_clients_total", reason=r) for r in ("slow", "flood"))
        assert dropped >= 2, "both cut off by a bound: replies piling up (1013) or the frame budget (1008)"
    finally:
        for flooder in flooders:
            flooder.stop()
    chatter.send("bystander", "after the flood")
    assert _own(chatter)["message"] == "after the flood"
    stored = server.get("/api/rooms/flood/messages?limit=200").json()["messages"]
    assert sum(1 for m in stored if m["handle"] == "flood") <= 5 * (refused.cut_at + 2), "the rate limit held"


def test_a_ping_flooder_that_reads_is_cut_off_too(live):
    """A client that reads its pongs but pings without pause passes the per-connection
    frame budget and is closed (1008), while the worker keeps serving."""
    server = live()
    server.open_room("pinger")
    (worker,) = server.worker_pids()
    chatter = server.socket("pinger")
    pinger = Flooder(_raw_socket(server, "/chat/pinger/", read=True), _frames(Ping(b"p"), 500), read=True)
    try:
        _stays_responsive(server, [pinger], chatter, lambda: pinger.cut_at is not None)
        assert pinger.cut_at is not None, f"the ping flooder was never cut off ({pinger.sent} bytes sent)"
        assert server.worker_pids() == [worker]
    finally:
        pinger.stop()


def test_an_event_stream_client_that_writes_is_cut_off(live):
    """A stream client sends nothing after its request: one that keeps writing is done,
    and the worker keeps serving meanwhile."""
    server = live()
    server.open_room("streamflood")
    (worker,) = server.worker_pids()
    chatter = server.socket("streamflood")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /streamflood/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    writer = Flooder(sock, b"x" * 65536, read=True)
    try:
        _stays_responsive(server, [writer], chatter, lambda: writer.cut_at is not None)
        wait_for(lambda: writer.cut_at is not None, timeout=2, message="the writing stream client to be cut off")
        assert server.worker_pids() == [worker]
    finally:
        writer.stop()
    wait_for(lambda: server.metric("chat_open_connections", kind="event_stream") == 0, timeout=5,
             message="no stream left")
