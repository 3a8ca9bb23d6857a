"""Storage, on SQLite and on PostgreSQL: rooms, messages, history queries, id order."""

import uuid

import gevent
import gevent.event
import pytest
from peewee import IntegrityError

from webapp import chat, db
from webapp.models import Message, Room


def _room(label="lobby"):
    return chat.open_room(label)


def _append(room, text, handle="alice"):
    with db.connection():
        return Message.store(room.id, handle, text, db.write_transaction)


def test_visiting_creates_a_room_once(any_app):
    with any_app.app_context():
        first = _room("lobby")
        again = _room("lobby")
        assert first.id == again.id
        assert first.name == "lobby"
        with db.connection():
            assert Room.select().count() == 1


def test_labels_are_case_sensitive(any_app):
    with any_app.app_context():
        assert _room("Lobby").id != _room("lobby").id


def test_a_duplicate_label_is_refused_by_the_database(any_app):
    with any_app.app_context():
        _room("lobby")
        with pytest.raises(IntegrityError):
            db.write_transaction(lambda: Room.create(label="lobby", name="lobby"))


def test_append_returns_the_previous_id_and_keeps_room_counters(any_app):
    with any_app.app_context():
        room = _room()
        first, before_first = _append(room, "one")
        second, before_second = _append(room, "two")
        assert before_first == 0
        assert before_second == first.id
        assert second.id > first.id
        with db.connection():
            room = Room.by_label("lobby")
        assert room.last_message_id == second.id
        assert room.message_count == 2
        assert room.last_activity == second.timestamp


def test_history_queries_page_by_id(any_app):
    with any_app.app_context():
        room, other = _room("lobby"), _room("other")
        ids = []
        for n in range(10):
            ids.append(_append(room, f"m{n}")[0].id)
            _append(other, f"noise {n}")
        with db.connection():
            assert [m.id for m in Message.recent(room.id, 3)] == ids[-3:]
            assert [m.id for m in Message.recent(room.id, 50)] == ids
            assert [m.id for m in Message.after(room.id, ids[2], 4)] == ids[3:7]
            assert [m.id for m in Message.after(room.id, ids[-1], 4)] == []
            assert [m.id for m in Message.after(room.id, 0, 100)] == ids
            assert [m.id for m in Message.before(room.id, ids[5], 2)] == ids[3:5]
            assert [m.id for m in Message.before(room.id, ids[0], 2)] == []


def test_recently_active_rooms_come_first(any_app):
    with any_app.app_context():
        quiet, busy, fresh = _room("quiet"), _room("busy"), None
        _append(quiet, "old news")
        _append(busy, "news")
        fresh = _room("fresh")  # no messages: counts from its creation
        with db.connection():
            assert [r.label for r in Room.recently_active(10)] == ["fresh", "busy", "quiet"]
            assert [r.label for r in Room.recently_active(2)] == ["fresh", "busy"]
        assert fresh.message_count == 0


def test_messages_keep_unicode_and_newlines(any_app):
    text = "Zoë says 👋\nline two\twith a tab <b>not bold</b>"
    with any_app.app_context():
        room = _room()
        stored, _ = _append(room, text, handle="Zoë 🐙")
        with db.connection():
            (read,) = Message.recent(room.id, 1)
        assert read.message == text and read.handle == "Zoë 🐙"
        assert read.as_dict("lobby") == stored.as_dict("lobby")


def test_json_form_of_a_message(any_app):
    from datetime import datetime

    with any_app.app_context():
        message, _ = _append(_room(), "hi")
    data = message.as_dict("lobby")
    assert set(data) == {"id", "room", "handle", "message", "timestamp"}
    assert data["room"] == "lobby"
    moment = datetime.fromisoformat(data["timestamp"])
    assert moment.utcoffset().total_seconds() == 0


def test_concurrent_senders_get_ids_in_commit_order(any_app):
    """Inserts into one room are serialized: the previous ids form one unbroken chain."""
    with any_app.app_context():
        room = _room()

    def send(n):
        with any_app.app_context():
            return _append(room, f"message {n}")

    results = [g.get() for g in [gevent.spawn(send, n) for n in range(40)]]
    chain = {message.id: previous for message, previous in results}
    ids = sorted(chain)
    assert chain[ids[0]] == 0
    for earlier, later in zip(ids, ids[1:], strict=False):
        assert chain[later] == earlier


def test_schema_creation_is_idempotent(any_app):
    with any_app.app_context():
        db.create_schema()
        db.create_schema()
        room = _room()
        _append(room, "still here")
        db.create_schema()
        with db.connection():
            assert Message.select().count() == 1


def test_init_db_command(app):
    result = app.test_cli_runner().invoke(args=["init-db"])
    assert result.exit_code == 0
    assert "schema ready" in result.output


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_pooled_connection_busy_is_a_clear_error_then_recovers(request, tmp_path, backend):
    from webapp import create_app
    from webapp.models import database

    url = f"sqlite:///{tmp_path}/chat.sqlite3" if backend == "sqlite" else request.getfixturevalue("postgres").url
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "x", "DATABASE_POOL_SIZE": 1,
                      "DATABASE_WRITE_TIMEOUT": 0.2})
    try:
        with app.app_context():
            db.create_schema()
            room = chat.open_room(f"busy-{uuid.uuid4().hex[:8]}")  # the PostgreSQL database is shared
            held, release = gevent.event.Event(), gevent.event.Event()

            def hold():
                with app.app_context(), db.connection():
                    held.set()
                    release.wait()

            holder = gevent.spawn(hold)
            held.wait(timeout=5)
            with pytest.raises(db.StorageUnavailable, match="connection of this worker is busy"):
                chat.send(room, "alice", "while busy", chat.Sender("127.0.0.1"))
            release.set()
            holder.join()
            sent = chat.send(room, "alice", "after", chat.Sender("127.0.0.1"))
            with db.connection():
                assert [m.message for m in Message.recent(room.id, 50)] == ["after"]
            assert sent.id
    finally:
        app.extensions["chat.realtime"].stop()
        database.close_all()


def test_an_unreachable_database_is_reported_not_crashed(tmp_path):
    from webapp import create_app

    app = create_app({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "SECRET_KEY": "x"})
    with app.app_context():
        assert db.ping() is False
        with pytest.raises(db.StorageUnavailable):
            chat.open_room("lobby")
