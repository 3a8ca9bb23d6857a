"""MESSAGE_RETENTION_DAYS: messages older than that are deleted, a batch at a time.

Every worker of every server runs ``Retention`` every RETENTION_INTERVAL seconds, but
only one process at a time does the work: it first takes a lease on the ``retention``
row of ``maintenancelock`` (an UPDATE that succeeds only when the lease is free or has
lapsed, so a crashed holder never blocks it for long), renews it before every batch and
gives it back at the end. The others find the lease taken and skip their turn. Each
batch (RETENTION_BATCH messages, oldest first) is one short write transaction, so
senders are never held up for long. ``flask --app webapp purge-messages`` does the same
once, for cron.

A client resuming from before the horizon gets what remains (replay reads by id), or
the explicit reset when that is more than a replay sends: never an error. Open pages
keep showing purged rows until they reload.
"""

import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from datetime import timedelta

import click
import gevent
from flask import current_app
from flask.cli import with_appcontext

from . import db
from .models import MaintenanceLock, Message, utcnow

log = logging.getLogger(__name__)

LOCK_NAME = "retention"
LEASE = timedelta(seconds=60)  # renewed before every batch


def _holder():
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _take_lease(holder):
    """True when this holder now has the lease (new, renewed, or taken over after it lapsed)."""
    now = utcnow()

    def take():
        MaintenanceLock.insert(name=LOCK_NAME, holder="", expires=now - LEASE).on_conflict_ignore().execute()
        return (MaintenanceLock.update(holder=holder, expires=now + LEASE)
                .where((MaintenanceLock.name == LOCK_NAME)
                       & ((MaintenanceLock.expires < now) | (MaintenanceLock.holder == holder)))
                .execute())

    return db.write_transaction(take) == 1


def _give_back(holder):
    db.write_transaction(lambda: MaintenanceLock.update(holder="", expires=utcnow() - LEASE)
                         .where((MaintenanceLock.name == LOCK_NAME) & (MaintenanceLock.holder == holder))
                         .execute())


def _delete_batch(horizon, size):
    """Delete the oldest ``size`` messages stored before ``horizon``; return how many."""
    rows = (Message.select(Message.id, Message.room).where(Message.timestamp < horizon)
            .order_by(Message.timestamp, Message.id).limit(size).tuples())
    by_room = defaultdict(list)
    for message_id, room_id in rows:
        by_room[room_id].append(message_id)
    return sum(Message.remove(room_id, ids) for room_id, ids in by_room.items())


def purge(days, batch_size):
    """Delete every message older than ``days``, if no other process is doing it.

    Returns how many were deleted, or None when another process holds the lease.
    Call within an app context.
    """
    holder = _holder()
    started = time.time()
    horizon = utcnow() - timedelta(days=days)
    deleted = 0
    with db.connection():
        if not _take_lease(holder):
            log.debug("retention: another process is purging", extra={"event": "retention_busy"})
            return None
        try:
            while True:
                count = db.write_transaction(_delete_batch, horizon, batch_size)
                deleted += count
                if count < batch_size or not _take_lease(holder):
                    break
        finally:
            _give_back(holder)
    if deleted:
        log.info("retention: deleted old messages",
                 extra={"event": "retention_purged", "deleted": deleted, "days": days, "holder": holder,
                        "started": started, "finished": time.time()})
    return deleted


class Retention:
    """The periodic purge of one worker process (started once it has forked)."""

    def __init__(self, app):
        self.app = app
        self._pid = None

    def start(self):
        if not self.app.config["MESSAGE_RETENTION_DAYS"] or self._pid == os.getpid():
            return
        self._pid = os.getpid()
        gevent.spawn(self._forever)

    def _forever(self):
        config = self.app.config
        interval = config["RETENTION_INTERVAL"]
        gevent.sleep(interval * (0.5 + 0.5 * (os.getpid() % 7) / 7))  # workers spread out
        while True:
            started = time.monotonic()
            try:
                with self.app.app_context():
                    purge(config["MESSAGE_RETENTION_DAYS"], config["RETENTION_BATCH"])
            except db.StorageUnavailable as exc:
                log.warning("retention skipped: database unavailable",
                            extra={"event": "retention_failed", "error": str(exc)})
            gevent.sleep(max(0.0, interval - (time.monotonic() - started)))


@click.command("purge-messages")
@click.option("--days", type=float, default=None,
              help="Delete messages older than this many days (default: MESSAGE_RETENTION_DAYS).")
@with_appcontext
def purge_command(days):
    """Delete old messages now (for cron), unless another process is already at it."""
    days = days or current_app.config["MESSAGE_RETENTION_DAYS"]
    if not days:
        raise click.ClickException("set MESSAGE_RETENTION_DAYS or pass --days")
    deleted = purge(days, current_app.config["RETENTION_BATCH"])
    if deleted is None:
        click.echo("another process is deleting old messages right now; nothing done")
    else:
        click.echo(f"deleted {deleted} message(s) older than {days:g} day(s)")


def init_app(app):
    app.extensions["chat.retention"] = Retention(app)
    app.cli.add_command(purge_command)
