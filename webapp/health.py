"""``/healthz``: can this process reach its database and its broker?"""

from flask import Blueprint, current_app, jsonify

from . import db
from .errors import RETRY_AFTER

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@db.without_request_connection
def healthz():
    checks = {
        "db": "ok" if db.ping() else "error",
        "broker": "ok" if current_app.extensions["chat.realtime"].broker.healthy() else "error",
    }
    healthy = all(value == "ok" for value in checks.values())
    response = jsonify(status="ok" if healthy else "degraded", **checks)
    response.status_code = 200 if healthy else 503
    if not healthy:
        response.headers["Retry-After"] = RETRY_AFTER
    response.headers["Cache-Control"] = "no-store"
    return response
