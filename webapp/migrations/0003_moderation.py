"""Moderation and retention: a room can be locked (read-only), client addresses can be
blocked from sending, and background jobs take a lease so one process runs them."""

from peewee import SQL, BooleanField, CharField, DateTimeField, Model
from playhouse.migrate import migrate

from ..models import database, utcnow


class BlockedAddress(Model):
    address = CharField(max_length=64, primary_key=True)
    created = DateTimeField(default=utcnow)

    class Meta:
        database = database
        table_name = "blockedaddress"


class MaintenanceLock(Model):
    name = CharField(max_length=50, primary_key=True)
    holder = CharField(max_length=100, default="")
    expires = DateTimeField(default=utcnow)

    class Meta:
        database = database
        table_name = "maintenancelock"


def up(migrator, db):
    # NOT NULL with a DEFAULT in the one ALTER: no table rebuild on SQLite.
    locked = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])
    migrate(migrator.add_column("room", "locked", locked, allow_not_null=True))
    db.create_tables([BlockedAddress, MaintenanceLock])
