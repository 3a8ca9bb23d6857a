"""Every gunicorn setting of the server, read by the Procfile's ``web:`` line.

Configuration comes from the environment (see README): PORT, WEB_CONCURRENCY,
REDIS_URL, LOG_LEVEL, TRUST_PROXY, TRUSTED_PROXIES. The webapp package is imported only inside the worker (after
gevent has patched it), never here at the top.
"""

import multiprocessing
import os
import shutil
import sys
import tempfile

port = os.environ.get("PORT", "8000")
redis_url = os.environ.get("REDIS_URL", "")
default_workers = multiprocessing.cpu_count() if redis_url else 1
workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers)
if workers > 1 and not redis_url:
    sys.exit(
        f"WEB_CONCURRENCY={workers} needs REDIS_URL: the in-process broker only reaches the "
        "sockets of its own process. Set REDIS_URL, or run with WEB_CONCURRENCY=1."
    )

# Workers write their metrics here (prometheus_client reads this variable when it is
# imported, so it is set before any worker starts); a scrape sums every worker's files.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="chat-metrics-")
metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]

bind = [f"0.0.0.0:{port}"]
worker_class = "gevent"
# Every open WebSocket or event stream holds one of these: allow many.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
# Streams and sockets are closed with 1012 as soon as a stop begins (see
# post_worker_init); this bounds how long stragglers may hold a restart.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
timeout = 30
keepalive = 5
# gunicorn 27 binds a control socket under $HOME by default: two servers on one
# machine would clash, and nothing here uses it.
control_socket_disable = True
accesslog = "-" if os.environ.get("ACCESS_LOG", "").lower() in ("1", "true", "yes") else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# X-Forwarded-Proto (the request's scheme) is believed only with TRUST_PROXY, and only from
# the peers in TRUSTED_PROXIES: the app applies the same list to X-Forwarded-For/-Host.
_trust_proxy = os.environ.get("TRUST_PROXY", "").strip().lower() in ("1", "true", "yes", "on")
forwarded_allow_ips = (os.environ.get("TRUSTED_PROXIES") or "127.0.0.1,::1") if _trust_proxy else ""
proc_name = "chat"


def on_starting(server):
    """Start from empty metrics: files of an earlier run would be summed in."""
    os.makedirs(metrics_dir, exist_ok=True)
    for name in os.listdir(metrics_dir):
        os.remove(os.path.join(metrics_dir, name))


def child_exit(server, worker):
    """A worker ended (or was killed): its open-connection gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, metrics_dir)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def post_worker_init(worker):
    """Start the worker's real-time loops (its Redis subscription) now that it has forked;
    then watch for it being asked to stop, and close every socket with 1012 (clients
    reconnect to a live worker) instead of waiting out graceful_timeout."""
    import gevent

    realtime = worker.wsgi.extensions["chat.realtime"]
    realtime.start()
    worker.wsgi.extensions["chat.retention"].start()

    def drain_when_stopping():
        while worker.alive:
            gevent.sleep(0.25)
        # gunicorn's gevent worker stops accepting within a second of being told to stop
        # (its loop ticks once a second); draining after that sends reconnecting clients
        # to workers that stay, not to another one stopping at the same time.
        gevent.sleep(1.1)
        realtime.drain()

    worker.chat_drainer = gevent.spawn(drain_when_stopping)


def worker_exit(server, worker):
    """The worker's loop has ended. Sockets and streams have no greenlet of their own,
    so gunicorn did not wait for them: wait here for the drain above and for the close
    handshakes, before the process exits and cuts what is left."""
    drainer = getattr(worker, "chat_drainer", None)
    if drainer is not None:
        drainer.join(timeout=3.0)
        worker.wsgi.extensions["chat.realtime"].wait_drained(3.0)
