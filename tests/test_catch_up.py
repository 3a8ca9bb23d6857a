"""Filling a room's gap from the database when the database is away: the worker backs
off instead of hammering it, and fills the gap once it is back (a real PostgreSQL
behind a TCP proxy the test cuts)."""

import json

import gevent

from webapp import chat, create_app
from webapp.hub import Listener
from webapp.models import database

from .chaos import TCPProxy
from .conftest import TEST_CONFIG, _fresh_schema
from .support import free_port, using_db, wait_for


class Recorder(Listener):
    __slots__ = ("got",)

    def __init__(self):
        super().__init__("json")
        self.got = []

    def write(self, data):
        self.got.append(data)

    def close(self, code, reason):
        pass


def _frame_id(frame):
    """The message id in a server's WebSocket text frame (unmasked, short or 16-bit length)."""
    start = 2 if frame[1] < 126 else 4
    return json.loads(frame[start:])["id"]


def test_a_failing_catch_up_backs_off_then_fills_the_gap(postgres, caplog):
    proxy = TCPProxy(("127.0.0.1", 5432), free_port()).start()
    app = create_app({**TEST_CONFIG, "DATABASE_URL": postgres.url.replace(":5432", f":{proxy.port}")})
    _fresh_schema()
    realtime = app.extensions["chat.realtime"]
    try:
        with app.test_request_context(), using_db(app):
            room = chat.open_room("gaps")
            first = chat.send(room, "ann", "one", chat.Sender("127.0.0.1"))
            second = chat.send(room, "ann", "two", chat.Sender("127.0.0.1"))
        listener = Recorder()
        # This worker saw the room before either message, and hears only the second.
        realtime.join(listener, chat.RoomRef(room.id, room.label, first.id - 1))
        realtime.hub.finish_replay(listener)
        proxy.cut()
        database.close_all()
        realtime.hub.receive("gaps", second.id, first.id, {"id": second.id})
        gevent.sleep(1.6)
        failures = [r for r in caplog.records if getattr(r, "event", None) == "catch_up_failed"]
        # Backing off from 50 ms (doubling): about 5 tries in 1.6 s, not one every 50 ms.
        assert 1 <= len(failures) <= 6, len(failures)
        assert listener.got == []
        proxy.restore()
        wait_for(lambda: len(listener.got) == 2, timeout=10, message="the gap filled once the database is back")
        assert [_frame_id(data) for data in listener.got] == [first.id, second.id]
    finally:
        realtime.stop()
        proxy.cut()
        database.close_all()
