"""A real-time chat server: Flask pages, htmx, WebSockets, an event stream, Redis fan-out.

``create_app(config=None)`` builds the app: settings (defaults, then the environment,
then ``config``), then each part in the order requests meet them.
"""

import logging
import os
import secrets

from flask import Flask

from . import (
    admin,
    admission,
    api,
    db,
    errors,
    events,
    health,
    logs,
    metrics,
    moderation,
    pages,
    realtime,
    rendering,
    retention,
    security,
    settings,
    sockets,
    throttle,
)
from .extensions import csrf
from .labels import LabelConverter

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger(__name__)


def create_app(config=None):
    """Create the app. ``config`` overrides the environment (tests use it)."""
    app = Flask(
        __name__,
        template_folder=os.path.join(PROJECT_ROOT, "templates"),
        static_folder=os.path.join(PROJECT_ROOT, "static"),
        instance_path=os.path.join(PROJECT_ROOT, "instance"),
    )
    app.config.from_mapping(settings.defaults(app.instance_path))
    app.config.update(settings.from_environ(os.environ))
    app.config.update(config or {})
    settings.check(app.config)
    logs.configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or _instance_secret_key(app.instance_path)
    app.config["MAX_CONTENT_LENGTH"] = app.config["FRAME_MAX"]
    app.url_map.converters["label"] = LabelConverter

    # before_request hooks run in this order: refuse what is foreign, count connections,
    # then check out a database connection for what is left.
    security.init_app(app)
    sockets.init_app(app)
    db.init_app(app)
    csrf.init_app(app)
    rendering.init_app(app)
    errors.init_app(app)
    metrics.init_app(app)
    admission.init_app(app)
    realtime.init_app(app)
    moderation.init_app(app)
    retention.init_app(app)
    throttle.init_app(app)

    app.register_blueprint(pages.bp)
    api.init_app(app)
    admin.init_app(app)
    events.init_app(app)
    app.register_blueprint(health.bp)
    return app


def _instance_secret_key(instance_path):
    """A key generated once and kept in the instance folder, shared by every worker.

    Set SECRET_KEY instead when more than one server signs cookies.
    """
    path = os.path.join(instance_path, "secret_key")
    if not os.path.exists(path):
        os.makedirs(instance_path, exist_ok=True)
        scratch = f"{path}.{os.getpid()}"
        with open(os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(secrets.token_hex(32))
        try:
            os.link(scratch, path)  # atomic: the first worker's key wins
            log.warning("SECRET_KEY is not set: generated one", extra={"event": "secret_key_generated", "path": path})
        except FileExistsError:
            pass
        finally:
            os.unlink(scratch)
    with open(path) as file:
        return file.read().strip()
