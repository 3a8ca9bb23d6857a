"""Schema migrations: small ordered files here, each applied once and recorded.

Each file is named ``NNNN_purpose.py`` and has ``up(migrator, database)``, written with
peewee's ``playhouse.migrate`` and its own frozen copies of the tables it touches (never
the live models, which describe the newest schema). ``migrate()`` applies, in order, the
ones the database has not recorded in ``schema_migration``; the Procfile's release step
runs it (``flask --app webapp init-db``), so a deployment upgrades in place before the new
code serves.

Two release steps may run at once: the first takes a lock (PostgreSQL: an advisory lock;
SQLite: the write lock, ``BEGIN IMMEDIATE``, for the whole run) and the second, once it
gets the lock, finds everything recorded and does nothing. On PostgreSQL each migration
is its own transaction; on SQLite the whole run is one.

A caution for new files: on SQLite, never rebuild the ``room`` table (as some
``SqliteMigrator`` operations do) while foreign keys are on: dropping it would cascade
to every message.
"""

import importlib
import logging
import os
import re
import time
from contextlib import contextmanager

from peewee import OperationalError, PostgresqlDatabase
from playhouse.migrate import PostgresqlMigrator, SqliteMigrator

from ..models import POSTGRES_FUNCTIONS, SchemaMigration, database

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.py$")
# Any fixed 64-bit number: the advisory lock every release step of this app agrees on.
POSTGRES_LOCK_KEY = 0x63686174_6D696772  # "chatmigr"
SQLITE_LOCK_WAIT = 120.0  # seconds a second release step waits for the first


def available():
    """Every migration file here, oldest first: [(version, name, module)]."""
    found = []
    for file_name in os.listdir(os.path.dirname(__file__)):
        match = FILE_NAME.match(file_name)
        if match:
            module = importlib.import_module(f"{__name__}.{file_name[:-3]}")
            found.append((int(match[1]), match[2], module))
    found.sort(key=lambda entry: entry[0])
    versions = [version for version, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def _applied():
    return {row.version for row in SchemaMigration.select(SchemaMigration.version)}


@contextmanager
def _exclusive(db):
    """Hold the migration lock for the block (see the module docstring)."""
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql("SELECT pg_advisory_lock(%s)", (POSTGRES_LOCK_KEY,))
        try:
            yield
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (POSTGRES_LOCK_KEY,))
        return
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    while True:
        try:
            transaction = db.atomic(lock_type="IMMEDIATE")
            transaction.__enter__()
            break
        except OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    try:
        yield
    except BaseException as exc:
        transaction.__exit__(type(exc), exc, exc.__traceback__)
        raise
    transaction.__exit__(None, None, None)


def migrate():
    """Apply what the database has not recorded yet; return the names applied now.

    Call with a connection held (``db.connection()``).
    """
    db = database.obj
    postgres = isinstance(db, PostgresqlDatabase)
    migrator = PostgresqlMigrator(db) if postgres else SqliteMigrator(db)
    done_now = []
    with _exclusive(db):
        db.create_tables([SchemaMigration], safe=True)
        applied = _applied()
        for version, name, module in available():
            if version in applied:
                continue
            with db.atomic():
                module.up(migrator, db)
                SchemaMigration.create(version=version, name=name)
            log.info("applied a migration", extra={"event": "migration_applied", "version": version, "migration": name})
            done_now.append(f"{version:04d}_{name}")
        if postgres:
            # Replaced on every run, still under the lock: two concurrent CREATE OR
            # REPLACE FUNCTION fail with "tuple concurrently updated".
            db.execute_sql(POSTGRES_FUNCTIONS)
    return done_now
