"""Rooms and messages (peewee), with the queries the rest of the app asks for.

Models are bound to a ``DatabaseProxy``; ``webapp.db`` points it at the real database
when the app is created. The database is the source of truth: message ids come from it
and order everything, pub/sub only carries copies.
"""

import functools
from datetime import datetime, timezone

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    BooleanField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
)

database = DatabaseProxy()


def utcnow():
    """Now, in UTC, without tzinfo: how timestamps are stored."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def isoformat(moment):
    """A stored (naive UTC) timestamp as ISO-8601 with its UTC offset."""
    return moment.replace(tzinfo=timezone.utc).isoformat()


class BaseModel(Model):
    class Meta:
        database = database


class Room(BaseModel):
    label = CharField(max_length=50, unique=True)
    name = CharField(max_length=200)
    created = DateTimeField(default=utcnow)
    last_activity = DateTimeField(default=utcnow, index=True)
    # The newest message's id and the number of messages, kept by Message.append in the
    # same transaction as the insert (the room row is also the per-room insert lock).
    last_message_id = BigIntegerField(default=0)
    message_count = IntegerField(default=0)
    # Read-only: sends are refused (see webapp.moderation).
    locked = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])

    @classmethod
    def by_label(cls, label):
        """The room with this label, or None."""
        return cls.get_or_none(cls.label == label)

    @classmethod
    def recently_active(cls, limit):
        """Rooms, most recently active first (a room without messages counts from its creation)."""
        return list(cls.select().order_by(cls.last_activity.desc(), cls.id.desc()).limit(limit))

    def as_dict(self):
        return {
            "label": self.label,
            "name": self.name,
            "messages": self.message_count,
            "last_activity": isoformat(self.last_activity),
        }


class Message(BaseModel):
    id = BigAutoField()
    room = ForeignKeyField(Room, backref="messages", on_delete="CASCADE", index=False)
    handle = CharField(max_length=50)
    message = TextField()
    timestamp = DateTimeField(default=utcnow, index=True)

    class Meta:
        # Every read is "this room, by id": history, replay and paging.
        indexes = ((("room", "id"), False),)

    @classmethod
    def _in_room(cls, room_id):
        return cls.select().where(cls.room == room_id)

    @classmethod
    def recent(cls, room_id, limit):
        """The newest ``limit`` messages of the room, oldest first."""
        rows = cls._in_room(room_id).order_by(cls.id.desc()).limit(limit)
        return list(reversed(list(rows)))

    @classmethod
    def after(cls, room_id, after_id, limit):
        """The first ``limit`` messages with id > ``after_id``, oldest first."""
        return list(cls._in_room(room_id).where(cls.id > after_id).order_by(cls.id).limit(limit))

    @classmethod
    def before(cls, room_id, before_id, limit):
        """The last ``limit`` messages with id < ``before_id``, oldest first."""
        rows = cls._in_room(room_id).where(cls.id < before_id).order_by(cls.id.desc()).limit(limit)
        return list(reversed(list(rows)))

    @classmethod
    def store(cls, room_id, handle, text, write_transaction):
        """Store a message as the next of its room. Returns (message, previous id).

        On PostgreSQL one call of ``chat_append_message`` (see ``POSTGRES_FUNCTIONS``)
        does it in a single round trip; elsewhere ``append`` runs in
        ``write_transaction`` (which knows how to wait for SQLite's write lock).
        """
        if isinstance(database.obj, PostgresqlDatabase):
            now = utcnow()
            message_id, previous = database.execute_sql(
                "SELECT message_id, previous_id FROM chat_append_message(%s, %s, %s, %s)",
                (room_id, handle, text, now),
            ).fetchone()
            return cls(id=message_id, room=room_id, handle=handle, message=text, timestamp=now), previous
        return write_transaction(cls.append, room_id, handle, text)

    @classmethod
    def append(cls, room_id, handle, text):
        """Store a message inside a write transaction that holds the database's write lock
        (SQLite's ``BEGIN IMMEDIATE``). Returns (message, previous id).

        Writers are serialized, so ids commit in the order they were assigned and a reader
        that resumes "after id N" never skips a late commit; the previous id lets every
        worker deliver a room's messages in order, without gaps. This is the hot path of
        every message: its statements are rendered by peewee once (``_append_statements``)
        and only executed here.
        """
        db = database.obj
        read_previous, insert, update, returns_id = _append_statements(type(db))
        now = utcnow()
        previous = db.execute_sql(read_previous, (room_id,)).fetchone()[0]
        cursor = db.execute_sql(insert, (room_id, handle, text, now))
        message_id = cursor.fetchone()[0] if returns_id else cursor.lastrowid
        db.execute_sql(update, (now, message_id, 1, room_id))
        return cls(id=message_id, room=room_id, handle=handle, message=text, timestamp=now), previous

    @classmethod
    def remove(cls, room_id, message_ids):
        """Delete these messages of the room for good; return how many there were.

        The room keeps its ``last_message_id``: the next message still names the newest
        id ever stored as its previous one, so no worker waits for a deleted id.
        """
        removed = cls.delete().where(cls.room == room_id, cls.id.in_(list(message_ids))).execute()
        if removed:
            Room.update(message_count=Room.message_count - removed).where(Room.id == room_id).execute()
        return removed

    @classmethod
    def clear(cls, room_id):
        """Delete every message of the room; return how many there were."""
        removed = cls.delete().where(cls.room == room_id).execute()
        # Less what was removed, not zero: a message stored meanwhile still counts.
        Room.update(message_count=Room.message_count - removed).where(Room.id == room_id).execute()
        return removed

    def as_dict(self, label):
        return {
            "id": self.id,
            "room": label,
            "handle": self.handle,
            "message": self.message,
            "timestamp": isoformat(self.timestamp),
        }


class BlockedAddress(BaseModel):
    """A client address that may not send (kept here so every server sees it)."""

    address = CharField(max_length=64, primary_key=True)
    created = DateTimeField(default=utcnow)


class MaintenanceLock(BaseModel):
    """A lease on a background job, so one process at a time runs it across servers."""

    name = CharField(max_length=50, primary_key=True)
    holder = CharField(max_length=100, default="")
    expires = DateTimeField(default=utcnow)


class SchemaMigration(BaseModel):
    """One applied migration (see ``webapp.migrations``)."""

    version = IntegerField(primary_key=True)
    name = CharField(max_length=100)
    applied = DateTimeField(default=utcnow)

    class Meta:
        table_name = "schema_migration"


MODELS = (Room, Message, BlockedAddress, MaintenanceLock, SchemaMigration)

# Created with the schema on PostgreSQL (idempotent). The room row is locked before the
# insert takes its id from the sequence, so ids commit in order within a room.
POSTGRES_FUNCTIONS = """
CREATE OR REPLACE FUNCTION chat_append_message(
    p_room integer, p_handle varchar, p_message text, p_timestamp timestamp,
    OUT message_id bigint, OUT previous_id bigint
) LANGUAGE plpgsql AS $$
BEGIN
    SELECT last_message_id INTO previous_id FROM room WHERE id = p_room FOR UPDATE;
    INSERT INTO message (room_id, handle, message, timestamp)
        VALUES (p_room, p_handle, p_message, p_timestamp) RETURNING id INTO message_id;
    UPDATE room SET last_message_id = message_id, last_activity = p_timestamp,
        message_count = message_count + 1 WHERE id = p_room;
END
$$;
"""


@functools.cache
def _append_statements(database_class):
    """The SQL of Message.append's three statements for one kind of database, rendered
    by peewee (placeholders stay placeholders; their order is the one append passes),
    and whether the insert returns the new id (else the cursor's lastrowid has it)."""
    read_previous = Room.select(Room.last_message_id).where(Room.id == 0)
    insert = Message.insert(room=0, handle="", message="", timestamp=None)
    update = Room.update(
        last_activity=None, last_message_id=0, message_count=Room.message_count + 1
    ).where(Room.id == 0)
    statements = tuple(query.sql()[0] for query in (read_previous, insert, update))
    return (*statements, "RETURNING" in statements[1])
