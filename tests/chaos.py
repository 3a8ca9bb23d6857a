"""Fault-test machinery: clients that chat and reconnect like real ones, counting every
message; and a TCP proxy a test can cut to make a real database unreachable."""

import json
import time

import gevent
import requests
from gevent.server import StreamServer
from gevent.socket import create_connection

from .wsclient import Closed, Refused, WSClient

RECONNECT_CODES = {1001, 1006, 1011, 1012, 1013}


class Participant:
    """One chat client: reads in its own greenlet, reconnects with ``?last_id`` on the
    close codes a client should recover from, and records what it sees."""

    def __init__(self, url_for, label, name):
        self.url_for = url_for  # () -> ws://.../chat/<label>/ (may pick a server)
        self.label = label
        self.name = name
        self.received = []  # ids, in arrival order (duplicates kept, to be found)
        self.messages = {}  # id -> message dict
        self.arrived = {}  # id -> time.time() when it arrived
        self.resets = []
        self.errors = []
        self.closes = []  # close codes that made it reconnect
        self.sent = 0
        self.client = None
        self.stopping = False
        self._reader = None

    @property
    def last_id(self):
        return max(self.received, default=None)

    def start(self):
        self._connect()
        self._reader = gevent.spawn(self._read_forever)
        return self

    def _connect(self, deadline=30.0):
        give_up = time.monotonic() + deadline
        while True:
            query = f"?last_id={self.last_id}" if self.last_id is not None else ""
            try:
                self.client = WSClient(self.url_for() + query)
                return
            except (OSError, Refused, Closed, TimeoutError):
                if time.monotonic() > give_up:
                    raise
                gevent.sleep(0.1)

    def _read_forever(self):
        while not self.stopping:
            try:
                frame = json.loads(self.client.recv(timeout=3600))
            except Closed as closed:
                if self.stopping:
                    return
                assert closed.code in RECONNECT_CODES, f"{self.name}: unexpected close {closed.code}"
                self.closes.append(closed.code)
                self._connect()
                continue
            if "id" in frame:
                self.received.append(frame["id"])
                self.messages[frame["id"]] = frame
                self.arrived[frame["id"]] = time.time()
            elif frame.get("reset"):
                self.resets.append(frame["latest"])
            else:
                self.errors.append(frame.get("error"))

    def send(self, text):
        try:
            self.client.send(json.dumps({"handle": self.name, "message": text}))
            self.sent += 1
        except OSError:
            pass  # the connection is going away; this one was never acknowledged

    def acknowledged(self):
        """Texts of own messages this client saw come back (stored and delivered)."""
        return {m["message"] for m in self.messages.values() if m["handle"] == self.name}

    def stop(self):
        self.stopping = True
        if self._reader:
            self._reader.kill()  # first: the close below reads the socket too
        if self.client:
            self.client.close()


def stored_messages(base_url, label):
    """Every message of the room, from the API, oldest first."""
    messages, after = [], 0
    while True:
        page = requests.get(f"{base_url}/api/rooms/{label}/messages?after={after}&limit=200", timeout=10).json()
        if not page["messages"]:
            return messages
        messages += page["messages"]
        after = page["messages"][-1]["id"]


def assert_nothing_lost(participants, stored, since=0, timeout=20):
    """Every stored message (after ``since``) reaches every participant exactly once, in
    id order, and every message a sender saw acknowledged is stored exactly once."""
    expected = [m["id"] for m in stored if m["id"] > since]
    texts = [m["message"] for m in stored]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        [i for i in p.received if i > since] != expected for p in participants
    ):
        gevent.sleep(0.1)
    for p in participants:
        got = [i for i in p.received if i > since]
        missing = sorted(set(expected) - set(got))
        doubled = sorted(i for i in set(got) if got.count(i) > 1)
        assert not missing and not doubled, f"{p.name}: missing {missing[:20]}, doubled {doubled[:20]}"
        assert got == expected, f"{p.name}: out of order"
        for text in p.acknowledged():
            assert texts.count(text) == 1, f"{p.name}: {text!r} stored {texts.count(text)} times"


class TCPProxy:
    """Forwards a local port to ``target``; ``cut()`` drops every connection and refuses
    new ones (an unreachable database), ``restore()`` serves again on the same port."""

    def __init__(self, target, port):
        self.target = target
        self.port = port
        self.server = None
        self.pipes = set()

    def start(self):
        self.server = StreamServer(("127.0.0.1", self.port), self._handle)
        self.server.init_socket()
        self.server.start()
        return self

    def _handle(self, downstream, _address):
        try:
            upstream = create_connection(self.target)
        except OSError:
            downstream.close()
            return
        pair = (downstream, upstream)
        self.pipes.add(pair)
        relays = [gevent.spawn(self._relay, downstream, upstream), gevent.spawn(self._relay, upstream, downstream)]
        gevent.joinall(relays, count=1)
        self._close(pair)
        gevent.killall(relays)
        self.pipes.discard(pair)

    @staticmethod
    def _relay(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _close(pair):
        for sock in pair:
            try:
                sock.close()
            except OSError:
                pass

    def cut(self):
        self.server.stop()
        for pair in list(self.pipes):
            self._close(pair)
        self.pipes.clear()

    def restore(self):
        self.start()

    stop = cut
