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

_running = []  # every Participant started and not yet stopped (fixtures stop them)


def stop_all():
    """Stop every Participant still running; return the problems any of them saw."""
    problems = []
    while _running:
        person = _running.pop()
        person.stop()
        problems += [f"{person.name}: {problem}" for problem in person.problems]
    return problems


class Participant:
    """One chat client: reads in its own greenlet, reconnects with ``?last_id`` on the
    close codes a client should recover from, and records what it sees.

    Every message it sends is counted with the connection it went out on, so that each
    can be accounted for (``assert_nothing_lost``): stored once and delivered, or refused
    with an error frame, or in flight on a connection the sender saw drop. Anything its
    reader greenlet finds wrong goes to ``problems``, which the tests' fixtures turn into
    a failure (an ``assert`` in a greenlet would only be printed)."""

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
        self.problems = []  # what the reader found wrong
        self.sent = 0
        self.sent_on = [[]]  # per connection: texts sent on it, in order
        self.errors_on = [0]  # per connection: error frames it got
        self.dropped = set()  # connections that ended without us closing them
        self.send_failed = []  # texts whose send raised (never fully sent)
        self.client = None
        self.stopping = False
        self._reader = None

    @property
    def last_id(self):
        return max(self.received, default=None)

    @property
    def connection(self):
        return len(self.sent_on) - 1

    def start(self):
        self._connect()
        self._reader = gevent.spawn(self._read_forever)
        _running.append(self)
        return self

    def _connect(self, deadline=30.0):
        give_up = time.monotonic() + deadline
        while True:
            query = f"?last_id={self.last_id}" if self.last_id is not None else ""
            try:
                client = WSClient(self.url_for() + query)
            except (OSError, Refused, Closed, TimeoutError):
                if time.monotonic() > give_up:
                    raise
                gevent.sleep(0.1)
                continue
            if self.client is not None:
                self.sent_on.append([])
                self.errors_on.append(0)
            self.client = client
            return

    def _read_forever(self):
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - reported to the test through problems
            if not self.stopping:
                self.problems.append(f"reader failed: {exc!r}")

    def _read(self):
        while not self.stopping:
            try:
                frame = json.loads(self.client.recv(timeout=3600))
            except Closed as closed:
                if self.stopping:
                    return
                if closed.code not in RECONNECT_CODES:
                    self.problems.append(f"unexpected close {closed.code}")
                    return
                self.closes.append(closed.code)
                self.dropped.add(self.connection)
                self._connect()
                continue
            if "id" in frame:
                self.received.append(frame["id"])
                self.messages[frame["id"]] = frame
                self.arrived[frame["id"]] = time.time()
            elif frame.get("reset"):
                self.resets.append(frame["latest"])
            elif frame.get("error"):
                self.errors.append(frame["error"])
                self.errors_on[self.connection] += 1
            else:
                self.problems.append(f"unexpected frame {frame!r}")

    def send(self, text):
        """Send one message; a send that fails is recorded (the sender saw it fail)."""
        client, connection = self.client, self.connection
        self.sent += 1
        try:
            client.send(json.dumps({"handle": self.name, "message": text}))
        except OSError:
            self.send_failed.append(text)
            return False
        self.sent_on[connection].append(text)
        return True

    def acknowledged(self):
        """Texts of own messages this client saw come back (stored and delivered)."""
        return {m["message"] for m in self.messages.values() if m["handle"] == self.name}

    def stop(self):
        self.stopping = True
        if self._reader:
            self._reader.kill()  # first: the close below reads the socket too
        if self.client:
            self.client.close()
        if self in _running:
            _running.remove(self)


def stored_messages(base_url, label):
    """Every message of the room, from the API, oldest first."""
    messages, after = [], 0
    while True:
        page = requests.get(f"{base_url}/api/rooms/{label}/messages?after={after}&limit=200", timeout=10).json()
        if not page["messages"]:
            return messages
        messages += page["messages"]
        after = page["messages"][-1]["id"]


def unaccounted(person, stored):
    """What is wrong with the fate of the messages ``person`` sent: each must be stored
    exactly once, or refused with an error frame, or have gone out on a connection that
    dropped before it was answered. Returns a list of problems (empty: all accounted)."""
    counts = {}
    for m in stored:
        if m["handle"] == person.name:
            counts[m["message"]] = counts.get(m["message"], 0) + 1
    problems = [f"{text!r} stored {n} times" for text, n in counts.items() if n > 1]
    problems += [f"{text!r} stored although its send failed" for text in person.send_failed if counts.get(text)]
    for connection, texts in enumerate(person.sent_on):
        errors = person.errors_on[connection]
        missing = [text for text in texts if not counts.get(text)]
        last_stored = max((i for i, text in enumerate(texts) if counts.get(text)), default=-1)
        before_a_stored = [text for text in texts[:last_stored] if not counts.get(text)]
        if errors > len(missing):
            problems.append(f"connection {connection}: {errors} error frames for {len(missing)} unstored messages")
        if connection in person.dropped:
            # in flight when it dropped: only the messages after its last stored one
            if len(before_a_stored) > errors:
                problems.append(f"connection {connection}: {before_a_stored[:5]} neither stored nor refused")
        elif len(missing) != errors:
            problems.append(f"connection {connection}: {len(missing)} not stored ({missing[:5]}) "
                            f"but {errors} error frames")
    return problems


def answered(person):
    """True once every message ``person`` sent on its current connection came back to it
    (stored) or was refused with an error frame."""
    texts = person.sent_on[person.connection]
    mine = person.acknowledged()
    return sum(1 for text in texts if text in mine) + person.errors_on[person.connection] >= len(texts)


def assert_nothing_lost(participants, stored, since=0, timeout=20):
    """Every message a participant sent is accounted for (``unaccounted``); every stored
    message (after ``since``) reaches every participant exactly once, in id order; and
    no participant's reader saw anything unexpected.

    ``stored`` is the room's messages, or better a function returning them
    (``lambda: stored_messages(url, label)``): it is then read once every participant's
    messages have been answered, so none is still on its way."""
    deadline = time.monotonic() + timeout
    if callable(stored):
        while time.monotonic() < deadline and not all(answered(p) for p in participants):
            gevent.sleep(0.1)
        stored = stored()
    expected = [m["id"] for m in stored if m["id"] > since]
    while time.monotonic() < deadline and any(
        [i for i in p.received if i > since] != expected for p in participants
    ):
        gevent.sleep(0.1)
    for p in participants:
        assert not p.problems, f"{p.name}: {p.problems}"
        got = [i for i in p.received if i > since]
        missing = sorted(set(expected) - set(got))
        doubled = sorted(i for i in set(got) if got.count(i) > 1)
        assert not missing and not doubled, f"{p.name}: missing {missing[:20]}, doubled {doubled[:20]}"
        assert got == expected, f"{p.name}: out of order"
        problems = unaccounted(p, stored)
        assert not problems, f"{p.name}: {problems}"


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
