"""Message ids are never handed out twice, even after the newest message is deleted.

SQLite gives an ``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT`` the largest id in the
table plus one: delete the newest message and its id comes back. With ``AUTOINCREMENT``
it remembers the largest id ever used (``sqlite_sequence``). So the table is rebuilt with
it, every row copied with its id. PostgreSQL's sequence never goes back: nothing to do.
"""

import importlib

from peewee import SqliteDatabase
from playhouse.migrate import migrate
from playhouse.sqlite_ext import AutoIncrementField

from ..models import database

OLD = "message_before_0002"
initial = importlib.import_module(f"{__package__}.0001_initial")


class Message(initial.Message):
    """The first release's message table, with ids that are never reused."""

    id = AutoIncrementField()

    class Meta:
        database = database
        table_name = "message"
        indexes = ((("room", "id"), False),)


def up(migrator, db):
    if not isinstance(db, SqliteDatabase):
        return
    (table_sql,) = db.execute_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'message'").fetchone()
    if "AUTOINCREMENT" in table_sql.upper():
        return
    # Index names are global in SQLite: the old ones go before the new table makes its own.
    migrate(
        *(migrator.drop_index("message", index.name) for index in db.get_indexes("message")),
        migrator.rename_table("message", OLD),
    )
    db.create_tables([Message])
    db.execute_sql(
        f'INSERT INTO "message" (id, room_id, handle, message, timestamp) '
        f'SELECT id, room_id, handle, message, timestamp FROM "{OLD}" ORDER BY id'
    )
    db.execute_sql(f'DROP TABLE "{OLD}"')
