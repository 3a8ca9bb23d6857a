"""Operator actions: delete a message, clear a room, lock a room, block an address.

The admin API (``webapp.admin``) and the ``flask`` commands here call the same functions.
Each stores its change first (the database is the source of truth, and every server
reads it), then tells open pages, sockets and streams through the same real-time path as
messages (``Realtime.broadcast``: this worker's hub now, every other worker and server
through the broker), and logs one line ``event=admin_action`` naming the action, its
target and who did it (a fingerprint of the admin token, never the token).

Deleting is for good: the row is gone, and ids are never handed out again (see
migration 0002). The room keeps its ``last_message_id``, so a deleted id is never taken
for a gap: the next message names it as its previous one, and replay simply skips it.

Locks and blocks are checked on every send (``Gate.check``, called by ``chat.send``, the
one message path) against a copy of the database's lists that each worker refreshes at
most every ``MODERATION_REFRESH`` seconds (2 s by default): a lock or block takes effect
on every server within that time, and at once on the worker that made it.
"""

import hashlib
import ipaddress
import logging
import time

import click
import redis
from flask import current_app
from flask.cli import with_appcontext
from peewee import IntegrityError

from . import chat, db, metrics
from .models import BlockedAddress, Message, Room

log = logging.getLogger(__name__)

SHELL = "shell"  # who acted, for a `flask` command run by someone at a shell


class NotFound(LookupError):
    """The room, message or address an action names does not exist."""


def fingerprint(token):
    """Who acted, for the log: the first 12 hex digits of the token's SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _logged(action, target, actor, **details):
    log.info("admin action: %s %s", action, target,
             extra={"event": "admin_action", "action": action, "target": target, "actor": actor, **details})


class Gate:
    """Who may send where: locked rooms and blocked addresses, refreshed from the
    database at most every ``refresh`` seconds (call ``check`` with a connection held)."""

    def __init__(self, refresh):
        self.refresh = refresh
        self._loaded_at = float("-inf")
        self._locked = frozenset()
        self._blocked = frozenset()

    def reload(self):
        self._locked = frozenset(row[0] for row in Room.select(Room.id).where(Room.locked).tuples())
        self._blocked = frozenset(row[0] for row in BlockedAddress.select(BlockedAddress.address).tuples())
        self._loaded_at = time.monotonic()

    def forget(self):
        """Read the lists again on the next check (after this worker changed them)."""
        self._loaded_at = float("-inf")

    def check(self, room_id, address):
        """Raise chat.Refused when the room is locked or the address blocked."""
        if time.monotonic() - self._loaded_at >= self.refresh:
            self.reload()
        if room_id in self._locked:
            metrics.REFUSED.labels("room_locked").inc()
            raise chat.Refused("this room is locked: it is read-only for now")
        if address in self._blocked:
            metrics.REFUSED.labels("address_blocked").inc()
            raise chat.Refused("sending from your address is blocked")


def _gate():
    return current_app.extensions["chat.moderation"]


def _room(label):
    room = chat.find_room(label)
    if room is None:
        raise NotFound(f"no room {label!r}")
    return room


def _broadcast(label, kind, data, announce):
    (announce or current_app.extensions["chat.realtime"].broadcast)(label, kind, data)


def delete_message(label, message_id, actor, announce=None):
    """Delete one message for good and drop it from every open page, socket and stream."""
    room = _room(label)
    removed = 0
    if 0 < message_id <= chat.ID_MAX:  # a larger number names no message (and overflows the driver)
        with db.connection():
            removed = db.write_transaction(Message.remove, room.id, [message_id])
    if not removed:
        raise NotFound(f"no message {message_id} in room {label!r}")
    _broadcast(room.label, "delete", {"id": message_id}, announce)
    _logged("delete_message", f"{room.label}/{message_id}", actor)


def clear_room(label, actor, announce=None):
    """Delete every message of a room; open pages empty their transcript. Returns how many."""
    room = _room(label)

    def clear():
        query = Room.select(Room.last_message_id).where(Room.id == room.id)
        if db.is_postgres():  # like an append: no message stored between this read and the delete
            query = query.for_update()
        last_id = query.scalar()
        return Message.clear(room.id), last_id

    with db.connection():
        removed, last_id = db.write_transaction(clear)
    _broadcast(room.label, "clear", {"through": last_id}, announce)
    _logged("clear_room", room.label, actor, deleted=removed)
    return removed


def set_locked(label, locked, actor, announce=None):
    """Lock (read-only) or unlock a room; open pages show or hide the notice at once."""
    room = _room(label)
    with db.connection():
        db.write_transaction(lambda: Room.update(locked=locked).where(Room.id == room.id).execute())
    _gate().forget()
    _broadcast(room.label, "lock", {"locked": locked}, announce)
    _logged("lock_room" if locked else "unlock_room", room.label, actor)


def clean_address(text):
    """A client address in its normal form, or BadInput."""
    try:
        return str(ipaddress.ip_address(str(text).strip()))
    except ValueError:
        raise chat.BadInput(f"not an IP address: {str(text)[:60]!r}") from None


def block_address(address, actor):
    """Refuse sends from this client address on every server. Returns the address."""
    address = clean_address(address)
    with db.connection():
        try:
            db.write_transaction(lambda: BlockedAddress.create(address=address))
        except IntegrityError:
            pass  # already blocked
    _gate().forget()
    _logged("block_address", address, actor)
    return address


def unblock_address(address, actor):
    """Let this address send again."""
    address = clean_address(address)
    with db.connection():
        removed = db.write_transaction(
            lambda: BlockedAddress.delete().where(BlockedAddress.address == address).execute())
    if not removed:
        raise NotFound(f"{address} is not blocked")
    _gate().forget()
    _logged("unblock_address", address, actor)
    return address


def blocked_addresses():
    with db.connection():
        return [row.address for row in BlockedAddress.select().order_by(BlockedAddress.created)]


# -- the same actions from a shell ---------------------------------------------------------


def _from_shell(action, *args):
    """Run an action for a `flask` command; a failure is a readable message, exit code 1.
    Live updates go out synchronously (this process serves nobody)."""
    try:
        return action(*args)
    except (NotFound, chat.BadInput) as exc:
        raise click.ClickException(str(exc)) from None
    except (redis.RedisError, OSError) as exc:  # stored; only the live update failed
        raise click.ClickException(
            f"done, but open pages were not told (Redis: {exc}); they show it on reload") from None


def _announce_now(label, kind, data):
    current_app.extensions["chat.realtime"].broadcast_now(label, kind, data)


@click.command("delete-message")
@click.argument("label")
@click.argument("message_id", type=int)
@with_appcontext
def delete_message_command(label, message_id):
    """Delete message MESSAGE_ID of room LABEL for good."""
    _from_shell(delete_message, label, message_id, SHELL, _announce_now)
    click.echo(f"deleted message {message_id} of {label}")


@click.command("clear-room")
@click.argument("label")
@with_appcontext
def clear_room_command(label):
    """Delete every message of room LABEL."""
    removed = _from_shell(clear_room, label, SHELL, _announce_now)
    click.echo(f"deleted {removed} message(s) of {label}")


@click.command("lock-room")
@click.argument("label")
@with_appcontext
def lock_room_command(label):
    """Make room LABEL read-only (sends are refused)."""
    _from_shell(set_locked, label, True, SHELL, _announce_now)
    click.echo(f"locked {label}")


@click.command("unlock-room")
@click.argument("label")
@with_appcontext
def unlock_room_command(label):
    """Let room LABEL take messages again."""
    _from_shell(set_locked, label, False, SHELL, _announce_now)
    click.echo(f"unlocked {label}")


@click.command("block-address")
@click.argument("address")
@with_appcontext
def block_address_command(address):
    """Refuse messages from client ADDRESS on every server."""
    click.echo(f"blocked {_from_shell(block_address, address, SHELL)}")


@click.command("unblock-address")
@click.argument("address")
@with_appcontext
def unblock_address_command(address):
    """Let client ADDRESS send again."""
    click.echo(f"unblocked {_from_shell(unblock_address, address, SHELL)}")


COMMANDS = (
    delete_message_command,
    clear_room_command,
    lock_room_command,
    unlock_room_command,
    block_address_command,
    unblock_address_command,
)


def init_app(app):
    app.extensions["chat.moderation"] = Gate(app.config["MODERATION_REFRESH"])
    for command in COMMANDS:
        app.cli.add_command(command)
