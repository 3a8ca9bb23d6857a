"""Database lifecycle: binding the models to DATABASE_URL, units of work, the schema CLI.

Connections come from a pool and are held for one unit of work: one HTTP request, or one
operation of a WebSocket or event stream (those never hold a connection while they wait).
Peewee keeps connection state per thread, which under gevent's patching means per
greenlet, so no connection is ever shared between greenlets.
"""

import logging
import os
import time
from contextlib import contextmanager

import click
from flask import current_app, g, request
from flask.cli import with_appcontext
from peewee import DatabaseError, InterfaceError, OperationalError, PostgresqlDatabase
from playhouse import db_url
from playhouse.pool import MaxConnectionsExceeded

from .models import database

log = logging.getLogger(__name__)

# Plain URLs get the pooled class: checking a connection out is then cheap, and SQLite
# does not checkpoint its WAL (an fsync) every time a unit of work ends.
POOLED_SCHEMES = {
    "sqlite": "sqlite+pool",
    "postgres": "postgresql+pool",
    "postgresql": "postgresql+pool",
}

SQLITE_PRAGMAS = (
    ("journal_mode", "wal"),
    ("synchronous", "normal"),
    ("foreign_keys", 1),
    # No blocking busy handler: it would freeze every greenlet of the worker while it
    # sleeps. Writers retry cooperatively instead (see write_transaction).
    ("busy_timeout", 0),
)


class StorageUnavailable(Exception):
    """The database could not do what was asked (unreachable, locked too long, failing)."""


def open_database(url, pool_size=20, pool_wait=10.0):
    """A peewee database for ``url`` (pooled, waiting up to ``pool_wait`` seconds for a free
    connection), not yet connected."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"DATABASE_URL must look like scheme://..., not {url!r}")
    scheme = POOLED_SCHEMES.get(scheme, scheme)
    options = {"autoconnect": False, "max_connections": pool_size, "stale_timeout": 300, "timeout": pool_wait}
    if scheme.startswith("sqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        options.update(pragmas=SQLITE_PRAGMAS, check_same_thread=False)
    elif scheme.startswith("postgres"):
        # An unreachable server fails a unit of work in seconds, not after TCP's minutes.
        options.update(connect_timeout=3, keepalives=1, keepalives_idle=10, keepalives_interval=5,
                       keepalives_count=3)
    return db_url.connect(f"{scheme}://{rest}", **options)


def is_postgres():
    return isinstance(database.obj, PostgresqlDatabase)


def _make_psycopg_cooperative():
    """Under gevent workers, let psycopg2 wait on sockets through gevent, not in C."""
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        import psycogreen.gevent

        psycogreen.gevent.patch_psycopg()


@contextmanager
def _unavailable_as_storage_errors():
    """Turn "cannot reach the database" and "no free pooled connection" into StorageUnavailable."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        forget_idle_connections()
        raise StorageUnavailable(str(exc)) from exc
    except MaxConnectionsExceeded as exc:
        log.warning("no free database connection", extra={"event": "database_busy"})
        raise StorageUnavailable("every database connection of this worker is busy") from exc


@contextmanager
def connection():
    """Hold a connection for the block (reusing this greenlet's open one, if any)."""
    with _unavailable_as_storage_errors(), database.connection_context():
        yield


def forget_idle_connections():
    """After a connection-level failure the pool's idle connections are suspect (a
    restarted server left them all dead): close them, so the next unit of work opens a
    fresh one instead of failing once per stale connection."""
    close_idle = getattr(database.obj, "close_idle", None)
    if close_idle is not None:
        close_idle()


def write_transaction(work, *args):
    """Run ``work(*args)`` in a write transaction and return its result.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (the write lock up front, so
    two writers never deadlock upgrading a read lock); while another process holds the
    lock we sleep cooperatively and retry, up to DATABASE_WRITE_TIMEOUT seconds.
    """
    sqlite = not is_postgres()
    options = {"lock_type": "IMMEDIATE"} if sqlite else {}
    deadline = time.monotonic() + current_app.config["DATABASE_WRITE_TIMEOUT"]
    delay = 0.001
    with connection():
        while True:
            try:
                with database.atomic(**options):
                    return work(*args)
            except OperationalError as exc:
                locked = sqlite and "locked" in str(exc)
                if not locked or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)  # gevent's sleep under the gevent worker
                delay = min(delay * 2, 0.05)


def ping():
    """True when the database answers a trivial query."""
    try:
        with connection():
            database.execute_sql("SELECT 1").fetchone()
        return True
    except (StorageUnavailable, DatabaseError) as exc:
        log.warning("database health check failed", extra={"event": "database_unavailable", "error": str(exc)})
        return False


def create_schema():
    """Bring the schema up to date (see ``webapp.migrations``; safe to run every start,
    and from two release steps at once). Returns the migrations applied now."""
    from .migrations import migrate

    with connection():
        return migrate()


def without_request_connection(view):
    """Mark a view that must not hold a connection for its whole life (sockets, streams)."""
    view.holds_no_connection = True
    return view


def _open_for_request():
    view = current_app.view_functions.get(request.endpoint)
    if view is None or request.endpoint == "static" or getattr(view, "holds_no_connection", False):
        return
    context = database.connection_context()
    with _unavailable_as_storage_errors():
        context.__enter__()
    g.db_context = context


def _close_for_request(exc):
    context = g.pop("db_context", None)
    if context is not None:
        context.__exit__(None, None, None)


@click.command("init-db")
@with_appcontext
def init_db_command():
    """Create or upgrade the database schema (idempotent; the Procfile's release step)."""
    applied = create_schema()
    for name in applied:
        click.echo(f"applied migration {name}")
    click.echo(f"schema ready: {current_app.config['DATABASE_URL'].split('@')[-1]}")


def init_app(app):
    """Bind the models to DATABASE_URL and manage a connection per request."""
    db = open_database(app.config["DATABASE_URL"], app.config["DATABASE_POOL_SIZE"],
                       app.config["DATABASE_WRITE_TIMEOUT"])
    database.initialize(db)
    if is_postgres():
        _make_psycopg_cooperative()
    app.extensions["database"] = db
    app.before_request(_open_for_request)
    app.teardown_request(_close_for_request)
    app.cli.add_command(init_db_command)
