"""The admin API: operator actions over HTTP (the actions themselves: ``moderation``).

Security, checked before any route runs:

* ``ADMIN_TOKEN`` unset: every admin route is a 404, as if it did not exist.
* ``Authorization: Bearer <ADMIN_TOKEN>`` on every request, compared in constant time
  (``hmac.compare_digest``); anything else is a 401 with ``WWW-Authenticate: Bearer``
  and changes nothing. Cookies and the session are never read, and the routes take no
  form posts (no body at all), so a browser page of another site cannot act through a
  logged-in operator: there is no CSRF surface, and the blueprint is CSRF-exempt.
* At most ADMIN_RATE_LIMIT requests per client address (counted across servers, like
  every limit of ``throttle``), wrong tokens included, so a token cannot be guessed quickly.
"""

from flask import Blueprint, abort, current_app, jsonify, request

from . import moderation, security
from .extensions import csrf

bp = Blueprint("admin", __name__, url_prefix="/api")
csrf.exempt(bp)


class _Unauthorized(Exception):
    pass


@bp.before_request
def _authorize():
    """404 when the admin API is off; 429 over the rate; 401 without the right token."""
    expected = current_app.config["ADMIN_TOKEN"]
    if not expected:
        abort(404)
    if not current_app.extensions["chat.throttle"].hit("admin", request.remote_addr):
        return jsonify(error="too many admin requests; wait a minute"), 429
    if not security.bearer_matches(expected):
        raise _Unauthorized()
    return None


@bp.errorhandler(_Unauthorized)
def _unauthorized(_exc):
    response = jsonify(error="send Authorization: Bearer <ADMIN_TOKEN>")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="admin"'
    return response


@bp.errorhandler(moderation.NotFound)
def _not_found(exc):
    return jsonify(error=str(exc)), 404


def _actor():
    return moderation.fingerprint(current_app.config["ADMIN_TOKEN"])


@bp.delete("/rooms/<label>/messages/<int:message_id>")
def delete_message(label, message_id):
    """Delete one message for good (every open page drops it at once)."""
    moderation.delete_message(label, message_id, _actor())
    return "", 204


@bp.delete("/rooms/<label>/messages")
def clear_room(label):
    """Delete every message of the room."""
    return {"room": label, "deleted": moderation.clear_room(label, _actor())}


@bp.put("/rooms/<label>/lock")
def lock_room(label):
    """Make the room read-only."""
    moderation.set_locked(label, True, _actor())
    return {"room": label, "locked": True}


@bp.delete("/rooms/<label>/lock")
def unlock_room(label):
    """Let the room take messages again."""
    moderation.set_locked(label, False, _actor())
    return {"room": label, "locked": False}


@bp.get("/blocked-addresses")
def blocked_addresses():
    """Every client address that may not send."""
    return {"addresses": moderation.blocked_addresses()}


@bp.put("/blocked-addresses/<path:address>")
def block_address(address):
    """Refuse messages from this client address, on every server."""
    return {"address": moderation.block_address(address, _actor()), "blocked": True}


@bp.delete("/blocked-addresses/<path:address>")
def unblock_address(address):
    """Let this client address send again."""
    return {"address": moderation.unblock_address(address, _actor()), "blocked": False}


def init_app(app):
    app.register_blueprint(bp)
