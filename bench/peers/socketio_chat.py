"""The same chat on Flask-SocketIO: the benchmark's peer, the way its documentation says to.

Run by ``bench.peers`` in a virtualenv of its own (``bench/peers/.venv``), as
``gunicorn -k gevent -w N socketio_chat:app`` with ``REDIS_URL`` (the message queue that
connects the workers) and ``DATABASE`` (an SQLite file). Only the websocket transport is
allowed, so the workers need no sticky sessions.

It does what the project's server does for a message, as Flask-SocketIO users write it:
a client joins its room at connect (``auth={"room": label}``), a ``chat`` event
``{"handle", "message"}`` is validated, stored in SQLite (the id orders the room) and
emitted to the room as a ``message`` event carrying the same JSON message as the
project's socket (``{"id", "room", "handle", "message", "timestamp"}``).
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sqlite3  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

from flask import Flask, jsonify, request  # noqa: E402
from flask_socketio import SocketIO, emit, join_room  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(
    app,
    async_mode="gevent",
    message_queue=os.environ.get("REDIS_URL"),
    transports=["websocket"],
    cors_allowed_origins="*",
)

_db = None
_rooms = {}  # sid -> the room label it joined


def db():
    """One SQLite connection per worker process (WAL, like the project's)."""
    global _db
    if _db is None:
        _db = sqlite3.connect(os.environ["DATABASE"], isolation_level=None, timeout=10, check_same_thread=False)
        _db.execute("PRAGMA journal_mode=WAL")
        _db.execute("PRAGMA synchronous=NORMAL")
        _db.execute(
            "CREATE TABLE IF NOT EXISTS message (id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL,"
            " handle TEXT NOT NULL, message TEXT NOT NULL, timestamp TEXT NOT NULL)"
        )
    return _db


@app.get("/healthz")
def healthz():
    db().execute("SELECT 1")
    return jsonify(status="ok")


@app.get("/<label>/")
def room(label):
    """The room's page stands in for the project's (the benchmark only needs a 200)."""
    return f"room {label}"


@socketio.on("connect")
def connect(auth):
    label = (auth or {}).get("room") or request.args.get("room")
    if not label:
        return False
    join_room(label)
    _rooms[request.sid] = label
    return None


@socketio.on("disconnect")
def disconnect(*_reason):
    _rooms.pop(request.sid, None)


@socketio.on("chat")
def chat(data):
    handle, text = (data or {}).get("handle"), (data or {}).get("message")
    if not isinstance(handle, str) or not isinstance(text, str) or not handle.strip() or not text.strip():
        emit("error", {"error": "handle and message are required"})
        return
    if len(handle) > 50 or len(text) > 2000:
        emit("error", {"error": "too long"})
        return
    label = _rooms[request.sid]
    stamp = datetime.now(timezone.utc).isoformat()
    cursor = db().execute(
        "INSERT INTO message (room, handle, message, timestamp) VALUES (?, ?, ?, ?)", (label, handle, text, stamp)
    )
    message = {"id": cursor.lastrowid, "room": label, "handle": handle, "message": text, "timestamp": stamp}
    emit("message", message, to=label)
