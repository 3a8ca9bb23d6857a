"""The JSON API: rooms, paged history, and posting for scripts (no CSRF token: JSON only)."""

import json

from flask import Blueprint, jsonify, request, url_for

from . import chat, db
from .extensions import csrf
from .models import Message, Room

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)

ROOMS_MAX = 100
PAGE_MAX = 200
PAGE_DEFAULT = 50


class ApiError(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


@bp.errorhandler(ApiError)
def _api_error(exc):
    return jsonify(error=str(exc)), exc.status


def _room(label):
    room = Room.by_label(label) if chat.is_valid_label(label) else None
    if room is None:
        raise ApiError(404, f"no room {label!r}")
    return room


def _int_arg(name, low, high=chat.ID_MAX):
    """A query parameter as a whole number in bounds, None when absent; else a 400."""
    text = request.args.get(name)
    return None if text is None else chat.whole_number(text, name, low, high)


@bp.get("/rooms")
@db.without_request_connection  # who is here comes from Redis: no connection held meanwhile
def rooms():
    """The most recently active rooms, with how many people are in each now."""
    return {"rooms": chat.active_rooms(ROOMS_MAX)}


@bp.get("/rooms/<label>/messages")
def messages(label):
    """A page of a room's history, oldest first: ``after``, ``before`` or the newest."""
    room = _room(label)
    limit = _int_arg("limit", 1, PAGE_MAX) or PAGE_DEFAULT
    after, before = _int_arg("after", 0), _int_arg("before", 0)
    if after is not None and before is not None:
        raise ApiError(400, "give after or before, not both")
    if after is not None:
        rows = Message.after(room.id, after, limit)
    elif before is not None:
        rows = Message.before(room.id, before, limit)
    else:
        rows = Message.recent(room.id, limit)
    return {"room": room.label, "messages": [m.as_dict(room.label) for m in rows]}


@bp.post("/rooms/<label>/messages")
def post_message(label):
    """Store and broadcast a message sent as JSON ``{"handle", "message"}``."""
    room = _room(label)
    if request.mimetype != "application/json":
        raise ApiError(415, "send Content-Type: application/json")
    try:
        data = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    handle, text = chat.parse_fields(data)
    message = chat.send(room, handle, text, chat.Sender(request.remote_addr))
    response = jsonify(message.as_dict(room.label))
    response.status_code = 201
    response.headers["Location"] = url_for("api.messages", label=room.label, after=message.id - 1, limit=1)
    return response


def init_app(app):
    app.register_blueprint(bp)
