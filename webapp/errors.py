"""Error answers: JSON under /api/, a readable page elsewhere, never a stack trace."""

import logging

from flask import jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from peewee import InterfaceError, OperationalError

from . import db

log = logging.getLogger(__name__)


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
    return _answer(exc.code, exc.name, exc.description)


def _storage_unavailable(exc):
    if not isinstance(exc, db.StorageUnavailable):  # raised by a view's own query
        db.forget_idle_connections()
    log.error("database unavailable: %s", exc)
    reason = "The message store is not reachable right now; nothing was stored. Try again shortly."
    response = _answer(503, ServiceUnavailable.name, reason)
    response.headers["Retry-After"] = "2"
    return response


def _unexpected(exc):
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _answer(500, InternalServerError.name, "Something went wrong on our side.")


def init_app(app):
    app.register_error_handler(HTTPException, _http_error)
    for error in (db.StorageUnavailable, OperationalError, InterfaceError):
        app.register_error_handler(error, _storage_unavailable)
    app.register_error_handler(Exception, _unexpected)
