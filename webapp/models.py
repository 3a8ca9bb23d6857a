"""Rooms and messages (peewee), with the queries the rest of the app asks for.

Models are bound to a ``DatabaseProxy``; ``webapp.db`` points it at the real database
when the app is created. The database is the source of truth: message ids come from it
and order everything, pub/sub only carries copies.
"""

from datetime import datetime, timezone

from peewee import (
    BigAutoField,
    BigIntegerField,
    CharField,
    DatabaseProxy,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
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
    def append(cls, room_id, handle, text, lock_room):
        """Store a message; call inside a write transaction. Returns (message, previous id).

        The room row is read first (``FOR UPDATE`` where the database supports it), so
        inserts into one room are serialized: ids then commit in the order they were
        assigned and a reader that resumes "after id N" never skips a late commit. The
        previous id lets every worker deliver a room's messages in order, without gaps.
        """
        query = Room.select(Room.last_message_id).where(Room.id == room_id)
        if lock_room:
            query = query.for_update()
        previous = query.scalar()
        now = utcnow()
        message = cls.create(room=room_id, handle=handle, message=text, timestamp=now)
        Room.update(
            last_message_id=message.id,
            last_activity=now,
            message_count=Room.message_count + 1,
        ).where(Room.id == room_id).execute()
        return message, previous

    def as_dict(self, label):
        return {
            "id": self.id,
            "room": label,
            "handle": self.handle,
            "message": self.message,
            "timestamp": isoformat(self.timestamp),
        }


MODELS = (Room, Message)
