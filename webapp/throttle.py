"""Rate limits: message rates per connection and per client address, and any other limit.

Each limit is a named ``limits`` moving window, declared once (``Throttle.add``) with
where it is counted:

* **local**: in this worker's memory. The per-connection window is local: a connection
  lives in exactly one worker, so that worker already sees every message it sends, and
  counting it in Redis would add a round trip to every message for nothing.
* **shared** (the default): with ``REDIS_URL`` set, in Redis, through ``limits``' own
  storages (``RedisStorage``; ``RedisClusterStorage`` when ``REDIS_URL`` names a cluster
  node), so a client address gets its allowance once across every worker and server, not
  once per worker. Without ``REDIS_URL`` there is one process and memory is exact.

A shared limit also says what happens while Redis cannot be reached (``when_unreachable``):
``LOCAL`` counts in this worker's memory meanwhile (the limit then holds per worker, as
if every worker were the only one), ``CLOSED`` refuses, ``OPEN`` allows. The change is
logged once, and so is the way back. A sender waits on Redis at most ``DEADLINE``, and
only until Redis is known to be away; then one background probe every ``RETRY`` seconds
asks again, so an outage costs senders nothing more.

RATE_LIMIT ``N/S`` allows N messages in any S seconds on one socket; one client address
may send ten times that across all its sockets and form or API posts together (an HTTP
post has no connection of its own, so only the address limit applies to it).
ROOM_CREATE_LIMIT ``N/S`` allows one client address N new rooms in any S seconds.
"""

import logging
import time
from urllib.parse import urlsplit

import gevent
from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from .redisconn import REDIS_ERRORS, is_cluster

log = logging.getLogger(__name__)

LOCAL, CLOSED, OPEN = "local", "closed", "open"
RETRY = 5.0  # seconds between attempts to reach Redis again
DEADLINE = 1.0  # the longest a sender waits on Redis for a limit
# Fail fast: one socket wait, well inside DEADLINE.
STORAGE_OPTIONS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def redis_storage(url, prefix):
    """The ``limits`` storage for ``url``: a cluster storage when it names a cluster node
    (``limits`` wants ``redis+cluster://host:port`` for that). Raises REDIS_ERRORS while
    the node cannot be asked."""
    key_prefix = f"{prefix}:limits"
    if not is_cluster(url):
        return RedisStorage(url, key_prefix=key_prefix, wrap_exceptions=True, **STORAGE_OPTIONS)
    parts = urlsplit(url)
    options = dict(STORAGE_OPTIONS, ssl=True) if parts.scheme == "rediss" else STORAGE_OPTIONS
    return RedisClusterStorage(f"redis+cluster://{parts.netloc}", key_prefix=key_prefix, wrap_exceptions=True,
                               require_full_coverage=False, **options)


class _Deadline(Exception):
    """Redis did not answer within DEADLINE."""


class SharedWindows:
    """Moving windows in Redis, with this worker's memory to stand in while it is away.

    A sender waits on Redis for at most DEADLINE, and only until Redis is known to be away:
    from then on, limits use their fallback at once while one background probe every
    ``retry`` seconds asks Redis again (a cluster failing over can otherwise hold a call
    for seconds of its own retries)."""

    def __init__(self, make_storage, retry=RETRY):
        self._make_storage = make_storage
        self._retry = retry
        self._limiter = None
        self.down = False
        self._probing = False
        self._retry_at = 0.0
        self.fallback = MovingWindowRateLimiter(MemoryStorage())

    def call(self, method, item, *identifiers):
        """``limiter.<method>(item, *identifiers)`` in Redis, or None when Redis is away."""
        if not self.down:
            return self._attempt(method, item, identifiers)
        if not self._probing and time.monotonic() >= self._retry_at:
            self._probing = True
            gevent.spawn(self._probe, item, identifiers)
        return None

    def _attempt(self, method, item, identifiers):
        try:
            with gevent.Timeout(DEADLINE, _Deadline):
                if self._limiter is None:
                    self._limiter = MovingWindowRateLimiter(self._make_storage())
                return getattr(self._limiter, method)(item, *identifiers)
        except (_Deadline, StorageError, *REDIS_ERRORS) as exc:
            self._retry_at = time.monotonic() + self._retry
            if not self.down:
                self.down = True
                log.warning("rate limits cannot reach Redis; each limit now does what it says when "
                            "Redis is unreachable", extra={"event": "rate_limits_unshared", "error": repr(exc)})
            return None

    def _probe(self, item, identifiers):
        """Ask Redis again (without counting anything); back to it if it answers."""
        try:
            if self._attempt("test", item, identifiers) is not None:
                self.down = False
                log.info("rate limits counted in Redis again", extra={"event": "rate_limits_shared"})
        finally:
            self._probing = False


class Throttle:
    """Named limits; ``hit(name, *key)`` counts one event and says whether it may go on."""

    def __init__(self, shared=None):
        """``shared``: SharedWindows for the shared limits (None: every limit is local)."""
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self.shared = shared
        self._limits = {}  # name -> (item, counted in Redis?, when_unreachable)

    def add(self, name, rate, shared=True, when_unreachable=LOCAL):
        """Declare limit ``name``: ``rate`` (settings.Rate) per key; a rate of 0 is no limit."""
        if rate.enabled:
            item = RateLimitItemPerSecond(rate.count, rate.seconds, namespace=name)
            self._limits[name] = (item, shared and self.shared is not None, when_unreachable)

    def hit(self, name, *key):
        """Count one event for ``key``; False (and nothing counted) when over the limit."""
        return self._run("hit", name, key)

    def test(self, name, *key):
        """Whether one more event for ``key`` would be allowed (nothing counted)."""
        return self._run("test", name, key)

    def clear(self, name, *key):
        """Forget ``key``'s window (a local limit only: shared windows lapse by themselves)."""
        if name in self._limits and not self._limits[name][1]:
            self._local.clear(self._limits[name][0], *key)

    def _run(self, method, name, key):
        if name not in self._limits:
            return True
        item, shared, when_unreachable = self._limits[name]
        if not shared:
            return getattr(self._local, method)(item, *key)
        allowed = self.shared.call(method, item, *key)
        if allowed is not None:
            return allowed
        if when_unreachable == LOCAL:
            return getattr(self.shared.fallback, method)(item, *key)
        return when_unreachable == OPEN

    # -- the message path's limits -------------------------------------------------------

    def allow(self, address, connection=None):
        """Count one message from ``address`` (on ``connection``, if a socket sent it);
        False (and nothing counted) when a limit is reached."""
        if connection is not None and not self.test("connection", connection):
            return False
        if not self.hit("address", address):
            return False
        if connection is not None:
            self.hit("connection", connection)
        return True

    def forget(self, connection):
        """Drop a closed connection's window."""
        self.clear("connection", connection)

    def allow_room(self, address):
        """Count one new room from ``address``; False (nothing counted) past ROOM_CREATE_LIMIT."""
        return self.hit("room", address)


def make_throttle(config):
    """The throttle the settings ask for, with the message limits declared."""
    url = config["REDIS_URL"]
    shared = SharedWindows(lambda: redis_storage(url, config["REDIS_CHANNEL_PREFIX"])) if url else None
    throttle = Throttle(shared)
    rate = config["RATE_LIMIT"]
    throttle.add("connection", rate, shared=False)
    throttle.add("address", rate.times(config["ADDRESS_RATE_FACTOR"]), when_unreachable=LOCAL)
    throttle.add("room", config["ROOM_CREATE_LIMIT"], when_unreachable=LOCAL)
    throttle.add("admin", config["ADMIN_RATE_LIMIT"], when_unreachable=LOCAL)
    return throttle


def init_app(app):
    app.extensions["chat.throttle"] = make_throttle(app.config)
