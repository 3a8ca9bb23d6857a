"""The server-rendered pages: home, new room, the room, its form posts and its embed.

Every page works with JavaScript off; htmx only upgrades the room's form to a socket.
A visitor's handle lives in the signed session cookie: generated on the first visit,
changed by posting under another name (or by the page's name field).
"""

import logging

from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for

from . import chat, db, labels
from .extensions import csrf
from .models import Message, Room
from .rendering import embed_snippet

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

HOME_ROOMS = 20


@bp.get("/")
@db.without_request_connection  # who is here comes from Redis: no connection held meanwhile
def index():
    """The home page: create a room, or join one of the recently active ones."""
    return render_template("index.html", rooms=chat.active_rooms(HOME_ROOMS))


@bp.route("/new/", methods=["GET", "POST"])
@csrf.exempt  # creates nothing: it only picks a free label and sends the browser there
def new_room():
    """Redirect to a fresh, unused, human-readable room label."""
    label = chat.fresh_label()
    response = redirect(url_for("pages.room", label=label), 303 if request.method == "POST" else 302)
    response.headers["Cache-Control"] = "no-store"
    return response


def _my_handle():
    """The visitor's handle, generated (and remembered) on the first visit."""
    if not session.get("handle"):
        session["handle"] = labels.friendly_handle()
    return session["handle"]


def _before():
    """The ``?before=<id>`` of an earlier page, or None for the newest; 400 when bad."""
    text = request.args.get("before")
    if text is None:
        return None
    try:
        return chat.whole_number(text, "before", low=1)
    except chat.BadInput:
        abort(400, description="before must be a message id (a positive whole number).")


def _room_page(room, status=200, error=None, form=None, rename_error=None, before=None):
    """The room page: the newest messages (live), or with ``before`` the page of
    messages before that id (no live connection; links to earlier and to the newest)."""
    config = current_app.config
    with db.connection():
        if before is None:
            rows = Message.recent(room.id, config["HISTORY_SIZE"])
        else:
            rows = Message.before(room.id, before, config["HISTORY_SIZE"])
        messages = [m.as_dict(room.label) for m in rows]
        earlier = bool(messages) and bool(Message.before(room.id, messages[0]["id"], 1))
    me = _my_handle()
    embed_url = url_for("pages.embed", label=room.label, _external=True)
    page = render_template(
        "room.html",
        room=room,
        me=me,
        here=current_app.extensions["chat.realtime"].presence.handles(room.label),
        rename_error=rename_error,
        messages=messages,
        live=before is None,
        earlier_url=url_for("pages.room", label=room.label, before=messages[0]["id"]) if earlier else None,
        last_id=messages[-1]["id"] if messages else 0,
        share_url=url_for("pages.room", label=room.label, _external=True),
        embed_snippet=embed_snippet(embed_url, room.name),
        error=error,
        form=form or {"handle": me},
        limits={"handle": config["HANDLE_MAX"], "message": config["MESSAGE_MAX"], "name": config["ROOM_NAME_MAX"]},
    )
    return page, status


@bp.get("/<label:label>/")
@db.without_request_connection  # who is here comes from Redis: no connection held meanwhile
def room(label):
    """The room (created on first visit): the last messages, and the form to chat;
    ``?before=<id>`` shows the messages before that one instead."""
    before = _before()
    try:
        room = chat.open_room(label, request.remote_addr)
    except chat.TooManyRooms as exc:
        page = render_template("error.html", status=429, title="Too Many Requests", reason=str(exc))
        return page, 429, {"Retry-After": str(current_app.config["ROOM_CREATE_LIMIT"].seconds)}
    return _room_page(room, before=before)


def _from_htmx():
    return "HX-Request" in request.headers


def _done(label):
    """A form post succeeded: htmx needs nothing back; a plain browser goes back to the room."""
    if _from_htmx():
        return "", 204
    return redirect(url_for("pages.room", label=label), 303)


def _existing_room(label):
    room = Room.by_label(label)
    if room is None:
        abort(404, description=f"There is no room {label!r}. Visit /{label}/ to create it.")
    return room


@bp.post("/<label:label>/messages")
def post_message(label):
    """The form's plain (no-JS) post, and the htmx post of the fallback mode."""
    room = _existing_room(label)
    form = {"handle": request.form.get("handle", ""), "message": request.form.get("message", "")}
    try:
        message = chat.send(room, form["handle"], form["message"], chat.Sender(request.remote_addr))
    except chat.BadInput as exc:
        if _from_htmx():
            return render_template("_send_error.html", error=str(exc)), exc.status
        return _room_page(room, exc.status, error=str(exc), form=form)
    session["handle"] = message.handle
    return _done(label)


@bp.post("/<label:label>/handle")
def set_handle(label):
    """Remember the visitor's new name (the page's name field posts here on change)."""
    _existing_room(label)
    try:
        session["handle"] = chat.clean_handle(request.form.get("handle", ""), current_app.config["HANDLE_MAX"])
    except chat.BadInput as exc:
        if _from_htmx():
            return render_template("_send_error.html", error=str(exc)), exc.status
        abort(exc.status, description=str(exc))
    return _done(label)


@bp.post("/<label:label>/name")
def rename(label):
    """Give the room a new display name; every open page shows it at once."""
    room = _existing_room(label)
    try:
        chat.rename(room, request.form.get("name", ""), chat.Sender(request.remote_addr))
    except chat.BadInput as exc:
        if _from_htmx():
            return render_template("_rename_error.html", error=str(exc)), exc.status
        return _room_page(room, exc.status, rename_error=str(exc))
    return _done(label)


@bp.get("/<label:label>/embed")
def embed(label):
    """A read-only transcript for an <iframe>: the last messages, then live ones."""
    room = _existing_room(label)
    messages = [m.as_dict(room.label) for m in Message.recent(room.id, current_app.config["HISTORY_SIZE"])]
    return render_template(
        "embed.html", room=room, messages=messages, last_id=messages[-1]["id"] if messages else 0
    )
