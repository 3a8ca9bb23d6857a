"""Error answers: JSON under /api/, a readable page elsewhere, never a stack trace."""

import logging

from flask import jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import WebsocketMismatch

from peewee import InterfaceError, OperationalError

from . import chat, db

log = logging.getLogger(__name__)

RETRY_AFTER = "2"  # seconds, on every 503: the fault is expected to pass


def _wants_json():
    return request.path.startswith("/api/") or request.path == "/healthz"


def _answer(status, title, reason):
    if _wants_json():
        response = jsonify(error=reason)
    else:
        response = make_response(render_template("error.html", status=status, title=title, reason=reason))
    response.status_code = status
    return response


def _http_error(exc):
    if isinstance(exc, WebsocketMismatch):  # a plain request to a socket route
        return _answer(400, exc.name, "This is a WebSocket endpoint: connect with a WebSocket client.")
    response = _answer(exc.code, exc.name, exc.description)
    if exc.code == 503:  # e.g. an event stream asked for while the worker drains
        response.headers["Retry-After"] = RETRY_AFTER
    return response


def _bad_input(exc):
    """Input refused (chat.BadInput and its kinds) that a view did not answer itself: the
    reason with its status, as ``{"error"}`` under /api/ (the API's and the admin API's
    bad input), as a page elsewhere (e.g. a socket's bad ``last_id``)."""
    return _answer(exc.status, HTTP_STATUS_CODES.get(exc.status, "Bad Request"), str(exc))


def _storage_unavailable(exc):
    if not isinstance(exc, db.StorageUnavailable):  # raised by a view's own query
        db.forget_idle_connections()
    log.error("database unavailable", extra={"event": "database_unavailable", "error": str(exc), "path": request.path})
    reason = "The message store is not reachable right now; nothing was stored. Try again shortly."
    response = _answer(503, ServiceUnavailable.name, reason)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def _unexpected(exc):
    log.exception("unhandled error", extra={"event": "unhandled_error", "method": request.method, "path": request.path})
    return _answer(500, InternalServerError.name, "Something went wrong on our side.")


def init_app(app):
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(chat.BadInput, _bad_input)
    for error in (db.StorageUnavailable, OperationalError, InterfaceError):
        app.register_error_handler(error, _storage_unavailable)
    app.register_error_handler(Exception, _unexpected)
