"""The per-worker hub: order, no gaps, no duplicates, encode once, replay hand-off."""

from webapp.hub import PENDING_MAX, Hub, Listener


class Recorder(Listener):
    __slots__ = ("got", "closed_with")

    def __init__(self, fmt="json", kinds=frozenset()):
        super().__init__(fmt, kinds)
        self.got = []
        self.closed_with = None

    def write(self, data):
        self.got.append(data)

    def close(self, code, reason):
        self.closed_with = code


class Harness:
    def __init__(self):
        self.encoded = []
        self.catch_ups = []
        self.hub = Hub(self.encode, self.catch_ups.append)

    def encode(self, fmt, kind, payload):
        self.encoded.append((fmt, kind, payload["id"] if kind == "message" else payload))
        return (fmt, kind, payload["id"] if kind == "message" else payload)

    def message(self, label, message_id, prev):
        self.hub.receive(label, message_id, prev, {"id": message_id})

    def join(self, listener, label, room_id, latest_id):
        """Join for live messages, ready at once (no replay)."""
        self.hub.join(listener, label, room_id, latest_id)
        self.hub.finish_replay(listener)


def ids(listener):
    return [data[2] for data in listener.got if data[1] == "message"]


def test_messages_in_order_reach_every_listener_once():
    h = Harness()
    a, b = Recorder(), Recorder()
    h.join(a, "lobby", 1, latest_id=10)
    h.join(b, "lobby", 1, latest_id=10)
    h.message("lobby", 11, 10)
    h.message("lobby", 12, 11)
    h.message("lobby", 12, 11)  # the same message again (e.g. from the broker)
    h.message("lobby", 9, 8)  # older than what joined
    assert ids(a) == ids(b) == [11, 12]
    assert h.catch_ups == []


def test_each_wire_form_is_encoded_once_per_message():
    h = Harness()
    listeners = [Recorder("json") for _ in range(50)] + [Recorder("html") for _ in range(50)]
    for listener in listeners:
        h.join(listener, "lobby", 1, latest_id=0)
    h.message("lobby", 1, 0)
    assert sorted(h.encoded) == [("html", "message", 1), ("json", "message", 1)]
    assert h.hub.deliveries == 100


def test_a_message_that_overtakes_another_waits_for_it():
    h = Harness()
    a = Recorder()
    h.join(a, "lobby", 1, latest_id=10)
    h.message("lobby", 12, 11)  # 11 is still on its way
    assert ids(a) == [] and len(h.catch_ups) == 1
    h.message("lobby", 13, 12)
    h.message("lobby", 11, 10)
    assert ids(a) == [11, 12, 13]
    assert h.hub.channels["lobby"].pending == {}


def test_a_gap_is_filled_from_the_database():
    h = Harness()
    a = Recorder()
    h.join(a, "lobby", 1, latest_id=10)
    h.message("lobby", 13, 12)
    (channel,) = h.catch_ups
    # what the owner reads from the database: everything after the last delivered id
    h.hub.catch_up(channel, [(11, {"id": 11}), (12, {"id": 12}), (13, {"id": 13})])
    assert ids(a) == [11, 12, 13]
    assert channel.pending == {} and channel.last_id == 13


def test_rooms_do_not_mix():
    h = Harness()
    a, b = Recorder(), Recorder()
    h.join(a, "a", 1, latest_id=0)
    h.join(b, "b", 2, latest_id=5)
    h.message("a", 6, 0)
    h.message("b", 7, 5)
    h.message("c", 8, 0)  # nobody here listens to c
    assert ids(a) == [6] and ids(b) == [7]


def test_a_replaying_listener_gets_held_messages_after_its_replay_without_doubles():
    h = Harness()
    live, replaying = Recorder(), Recorder()
    h.join(live, "lobby", 1, latest_id=10)
    h.hub.join(replaying, "lobby", 1, latest_id=10, after=7)
    assert replaying.sent_id == 7 and replaying.held == []
    h.message("lobby", 11, 10)  # arrives while the replay is read
    h.message("lobby", 12, 11)
    assert ids(replaying) == []
    # the replay read 8..11 from the database (11 was committed before it was read)
    for message_id in (8, 9, 10, 11):
        replaying.write(h.encode("json", "message", {"id": message_id}))
        replaying.sent_id = message_id
    h.hub.finish_replay(replaying)
    assert ids(replaying) == [8, 9, 10, 11, 12]
    assert ids(live) == [11, 12]
    h.message("lobby", 13, 12)
    assert ids(replaying)[-1] == 13


def test_messages_stored_between_joining_and_being_ready_are_held_not_lost():
    """A socket joins before its handshake is answered; what arrives until it is ready
    is delivered once it is (the client already considers itself connected)."""
    h = Harness()
    a = Recorder()
    h.hub.join(a, "lobby", 1, latest_id=10)
    h.message("lobby", 11, 10)
    assert ids(a) == []
    h.hub.finish_replay(a)
    assert ids(a) == [11]


def test_a_resume_point_from_the_future_does_not_silence_a_listener():
    h = Harness()
    a = Recorder()
    h.hub.join(a, "lobby", 1, latest_id=10, after=999)
    assert a.sent_id == 10
    h.hub.finish_replay(a)
    h.message("lobby", 11, 10)
    assert ids(a) == [11]


def test_joining_behind_the_database_asks_for_a_catch_up():
    h = Harness()
    h.join(Recorder(), "lobby", 1, latest_id=10)
    h.join(Recorder(), "lobby", 1, latest_id=15)
    (channel,) = h.catch_ups
    assert channel.known_latest == 15 and channel.last_id == 10


def test_reset_tells_listeners_and_moves_on():
    h = Harness()
    a = Recorder()
    h.join(a, "lobby", 1, latest_id=10)
    h.message("lobby", 700, 699)
    channel = h.hub.channels["lobby"]
    h.hub.reset(channel, 700, "reset-payload")
    assert a.got == [("json", "reset", "reset-payload")]
    assert a.sent_id == 700 and channel.last_id == 700 and channel.pending == {}
    h.message("lobby", 701, 700)
    assert ids(a) == [701]


def test_leaving_removes_the_listener_and_an_empty_room():
    h = Harness()
    a, b = Recorder(), Recorder()
    h.join(a, "lobby", 1, latest_id=0)
    h.join(b, "lobby", 1, latest_id=0)
    h.hub.leave(a)
    h.hub.leave(a)  # twice is harmless
    h.message("lobby", 1, 0)
    assert ids(a) == [] and ids(b) == [1]
    h.hub.leave(b)
    assert h.hub.channels == {}
    assert list(h.hub.listeners()) == []


def test_other_events_go_only_to_listeners_that_asked():
    h = Harness()
    plain, curious = Recorder(), Recorder(kinds=frozenset({"presence"}))
    h.join(plain, "lobby", 1, latest_id=0)
    h.join(curious, "lobby", 1, latest_id=0)
    h.hub.broadcast("lobby", "presence", {"here": ["a"]})
    assert plain.got == [] and curious.got == [("json", "presence", {"here": ["a"]})]


def test_a_reset_reaches_a_listener_that_was_still_replaying():
    """README: no gap: a listener joining while its room is reset gets the reset after its replay."""
    h = Harness()
    ready, replaying = Recorder(), Recorder()
    h.join(ready, "lobby", 1, latest_id=10)
    h.hub.join(replaying, "lobby", 1, latest_id=10)  # still writing its replay
    h.hub.reset(h.hub.channels["lobby"], 900, {"latest": 900})
    h.hub.finish_replay(replaying)
    assert [data[1] for data in replaying.got] == ["reset"]
    assert replaying.sent_id == 900
    h.message("lobby", 901, 900)
    assert ids(replaying) == ids(ready) == [901]


def test_pending_messages_are_bounded_while_the_gap_stays_open():
    h = Harness()
    a = Recorder()
    h.join(a, "lobby", 1, latest_id=10)
    for message_id in range(12, 12 + PENDING_MAX * 3):  # 11 never comes; the database is away
        h.message("lobby", message_id, message_id - 1)
    channel = h.hub.channels["lobby"]
    assert len(channel.pending) <= PENDING_MAX
    assert channel.known_latest == 11 + PENDING_MAX * 3  # the catch-up knows how far to read
    h.hub.catch_up(channel, [(i, {"id": i}) for i in range(11, 12 + PENDING_MAX * 3)])
    assert ids(a) == list(range(11, 12 + PENDING_MAX * 3)) and channel.pending == {}
