"""``/metrics`` in Prometheus' text format, correct across gunicorn's worker processes.

Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker
imports prometheus_client; each worker writes its samples there and a scrape, whichever
worker answers it, sums them (gauges of open connections count live workers only).
Without it (tests, ``flask`` commands) the process's own registry is used.
"""

import os
import time
from datetime import datetime

from flask import Blueprint, Response, current_app
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from . import security  # (which imports this module too: used at call time only)

OPEN_CONNECTIONS = Gauge(
    "chat_open_connections", "Open WebSockets and event streams.", ["kind"], multiprocess_mode="livesum"
)
SERVING_GREENLETS = Gauge(
    "chat_serving_greenlets",
    "Greenlets still in a socket's or stream's request (its handshake and setup); none "
    "waits on an open connection, so this is 0 whenever they are all idle.",
    multiprocess_mode="livesum",
)
MESSAGES_STORED = Counter("chat_messages_stored_total", "Messages stored.")
DELIVERIES = Counter("chat_deliveries_total", "Messages written to sockets and event streams.")
DELIVERY_LATENCY = Histogram(
    "chat_delivery_latency_seconds",
    "Time from storing a message to writing it to a worker's listeners.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DROPPED = Counter("chat_dropped_clients_total", "Clients cut off by the server.", ["reason"])
REFUSED = Counter("chat_refused_total", "Refused messages and connections.", ["reason"])
BROKER_EVENTS = Counter(
    "chat_broker_events_received_total", "Events a worker received from the broker (only rooms it serves)."
)
BROKER_RECONNECTS = Counter("chat_broker_reconnects_total", "Times a worker re-subscribed to Redis after losing it.")
REPLAYED = Counter("chat_replayed_messages_total", "Messages replayed to reconnecting clients.")
RESETS = Counter("chat_replay_resets_total", "Clients told to reload history (more missed than replayed).")
CATCH_UPS = Counter("chat_catch_ups_total", "Gaps in a room's live messages filled from the database.")

# Listener wire form -> the kind of connection it is.
KINDS = {"json": "websocket", "html": "htmx", "sse": "event_stream"}


def observe_delivery(sent, message):
    """Once per message per worker: how many got it, and how long after it was stored."""
    DELIVERIES.inc(sent)
    if sent:
        stored = datetime.fromisoformat(message["timestamp"]).timestamp()
        DELIVERY_LATENCY.observe(max(0.0, time.time() - stored))


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    """Every metric, summed over the workers; behind METRICS_TOKEN when one is set."""
    token = current_app.config["METRICS_TOKEN"]
    if token is not None and not security.bearer_matches(token):
        return Response("Send Authorization: Bearer <METRICS_TOKEN>.\n", 401, mimetype="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app):
    from .db import without_request_connection

    without_request_connection(scrape)
    app.register_blueprint(bp)
