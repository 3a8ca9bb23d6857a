"""The one message path: every way of sending (both sockets, the form, the API) ends here.

``send`` checks the sender's rate, validates, stores the message in one transaction (the
database assigns the id that orders everything) and only then publishes it. A message
that could not be stored is never published; one that was stored but could not be
published is still delivered, by replay from the database.
"""

import re
from dataclasses import dataclass
from typing import NamedTuple

from flask import current_app
from peewee import IntegrityError

from . import db, labels, metrics
from .labels import is_valid_label
from .models import Message, Room

# Control characters (C0, DEL, C1): refused everywhere except newline and tab in messages.
_CONTROL_IN_MESSAGE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadInput(ValueError):
    """Input the server refuses; ``str(exc)`` is a reason a person can read."""

    status = 422


class Malformed(BadInput):
    """Input that is not even of the expected shape (not JSON, not an object, ...)."""

    status = 400


class RateLimited(BadInput):
    status = 429


ID_MAX = 2**63 - 1  # ids are 64-bit (BIGINT): nothing larger can name a message


def whole_number(text, name, low=0, high=ID_MAX):
    """``text`` (ASCII digits) as an int from ``low`` to ``high``, or Malformed.

    Checked before int() reads it: a number of thousands of digits is refused, not
    parsed, and one past ``ID_MAX`` never reaches the database driver (an overflow).
    """
    if not text.isascii() or not text.isdigit():
        raise Malformed(f"{name} must be a whole number")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)) or int(digits) > high or int(digits) < low:
        raise Malformed(f"{name} must be between {low} and {high}")
    return int(digits)


def resume_point(text, name="last_id"):
    """A client's "everything after this id" (None when not given or empty), or Malformed."""
    text = (text or "").strip()
    return whole_number(text, name) if text else None


class Refused(BadInput):
    """Sending is not allowed here (a locked room, a blocked address): see ``moderation``."""

    status = 403


def _text(value, field):
    if not isinstance(value, str):
        raise BadInput(f"{field} must be text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"{field} is not valid Unicode text") from None
    return value


def _clean_line(value, field, limit, missing):
    """One line of text, trimmed, 1..limit characters, or BadInput."""
    line = _text(value, field).strip()
    if not line:
        raise BadInput(missing)
    if len(line) > limit:
        raise BadInput(f"{field} is longer than {limit} characters")
    if _CONTROL_IN_LINE.search(line):
        raise BadInput(f"{field} must be one line without control characters")
    return line


def clean_handle(value, limit):
    """The handle trimmed, or BadInput."""
    return _clean_line(value, "handle", limit, "handle is required")


def clean_message(value, limit):
    """The message (CRLF newlines made LF), or BadInput."""
    text = _text(value, "message").replace("\r\n", "\n")
    if not text.strip():
        raise BadInput("message is empty")
    if len(text) > limit:
        raise BadInput(f"message is longer than {limit} characters")
    if _CONTROL_IN_MESSAGE.search(text):
        raise BadInput("message contains control characters (only newlines and tabs are allowed)")
    return text


def clean_room_name(value, limit):
    """A room's display name, trimmed, or BadInput."""
    return _clean_line(value, "room name", limit, "the room needs a name")


def malformed(reason):
    """A Malformed error for input not even of the expected shape, counted as refused."""
    metrics.REFUSED.labels("bad_input").inc()
    return Malformed(reason)


def parse_fields(data):
    """Check a JSON object holds exactly ``handle`` and ``message``; return them raw."""
    if not isinstance(data, dict):
        raise malformed('expected a JSON object like {"handle": "...", "message": "..."}')
    unknown = sorted(set(data) - {"handle", "message"})
    if unknown:
        raise malformed("unexpected field(s): " + ", ".join(map(str, unknown))[:200])
    missing = [name for name in ("handle", "message") if name not in data]
    if missing:
        raise malformed("missing field(s): " + ", ".join(missing))
    return data["handle"], data["message"]


class RoomRef(NamedTuple):
    """What a long-lived connection keeps of its room (a model instance weighs ~1 kB)."""

    id: int
    label: str
    last_message_id: int

    @classmethod
    def of(cls, room):
        return cls(room.id, room.label, room.last_message_id)


@dataclass(frozen=True)
class Sender:
    """Who is sending, for rate limits: the client address, and the socket if there is one."""

    address: str
    connection: str | None = None


def send(room, handle, text, sender):
    """Validate, store and publish one message; return the stored Message.

    Raises RateLimited, Refused or BadInput (nothing stored), or db.StorageUnavailable.
    """
    config = current_app.config
    throttle = current_app.extensions["chat.throttle"]
    if not throttle.allow(sender.address, sender.connection):
        metrics.REFUSED.labels("rate_limited").inc()
        rate = config["RATE_LIMIT"]
        raise RateLimited(f"slow down: at most {rate.count} messages in {rate.seconds} seconds")
    try:
        handle = clean_handle(handle, config["HANDLE_MAX"])
        text = clean_message(text, config["MESSAGE_MAX"])
    except BadInput:
        metrics.REFUSED.labels("bad_input").inc()
        raise
    with db.connection():
        current_app.extensions["chat.moderation"].check(room.id, sender.address)
        message, previous = Message.store(room.id, handle, text, db.write_transaction)
    metrics.MESSAGES_STORED.inc()
    current_app.extensions["chat.realtime"].publish_message(room.label, message, previous)
    return message


def rename(room, name, sender):
    """Give ``room`` a new display name (the label stays) and show it everywhere."""
    config = current_app.config
    if not current_app.extensions["chat.throttle"].allow(sender.address, sender.connection):
        metrics.REFUSED.labels("rate_limited").inc()
        raise RateLimited("slow down: too many changes")
    name = clean_room_name(name, config["ROOM_NAME_MAX"])
    with db.connection():
        current_app.extensions["chat.moderation"].check(room.id, sender.address)  # read-only, blocked
        db.write_transaction(lambda: Room.update(name=name).where(Room.id == room.id).execute())
    room.name = name
    current_app.extensions["chat.realtime"].broadcast(room.label, "room", {"name": name})
    return name


def active_rooms(limit):
    """The most recently active rooms (JSON form), each with how many people are in it."""
    with db.connection():
        rooms = [room.as_dict() for room in Room.recently_active(limit)]
    here = current_app.extensions["chat.realtime"].presence.counts([room["label"] for room in rooms])
    for room in rooms:
        room["here"] = here.get(room["label"], 0)
    return rooms


def find_room(label):
    """The room with this label, or None (also for labels that cannot be rooms)."""
    if not is_valid_label(label):
        return None
    with db.connection():
        return Room.by_label(label)


def _create_room(label):
    return Room.by_label(label) or Room.create(label=label, name=label)


def fresh_label():
    """An unused, human-readable label for a new room."""
    with db.connection():
        while True:
            label = labels.candidate()
            if Room.by_label(label) is None:
                return label


class TooManyRooms(RateLimited):
    """An address has created ROOM_CREATE_LIMIT rooms within its window."""


def open_room(label, address=None):
    """The room with this label, created if this is its first visit (as in the seed).

    Raises TooManyRooms when ``address`` (a visitor's; None for the server's own use) has
    created its ROOM_CREATE_LIMIT of rooms lately.
    """
    with db.connection():
        room = Room.by_label(label)
        if room is None:
            if address is not None and not current_app.extensions["chat.throttle"].allow_room(address):
                metrics.REFUSED.labels("too_many_rooms").inc()
                rate = current_app.config["ROOM_CREATE_LIMIT"]
                raise TooManyRooms(f"Too many new rooms from your address: at most {rate.count} in "
                                   f"{rate.seconds} seconds. Try again shortly, or join an existing room.")
            try:
                room = db.write_transaction(_create_room, label)
            except IntegrityError:  # another worker created it a moment ago
                room = Room.by_label(label)
        return room

