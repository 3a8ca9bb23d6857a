"""The schema of the first release: rooms and messages (a database made by that release's
``init-db`` already has it, so this changes nothing there)."""

from peewee import (
    BigAutoField,
    BigIntegerField,
    CharField,
    DateTimeField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

from ..models import database, utcnow


class Room(Model):
    label = CharField(max_length=50, unique=True)
    name = CharField(max_length=200)
    created = DateTimeField(default=utcnow)
    last_activity = DateTimeField(default=utcnow, index=True)
    last_message_id = BigIntegerField(default=0)
    message_count = IntegerField(default=0)

    class Meta:
        database = database
        table_name = "room"


class Message(Model):
    id = BigAutoField()
    room = ForeignKeyField(Room, backref="messages", on_delete="CASCADE", index=False)
    handle = CharField(max_length=50)
    message = TextField()
    timestamp = DateTimeField(default=utcnow, index=True)

    class Meta:
        database = database
        table_name = "message"
        indexes = ((("room", "id"), False),)


def up(migrator, db):
    db.create_tables([Room, Message], safe=True)
