"""One place that turns ``REDIS_URL`` into a Redis client.

``REDIS_URL`` may name a single Redis or any node of a Redis Cluster; nobody has to say
which. The node named is asked once (``INFO cluster``: ``cluster_enabled:1``), and the
answer picks ``redis.Redis`` or ``redis.RedisCluster`` (which follows ``MOVED``/``ASK``
and a failover by itself, and serves the slots that are up when others are not).

A node that does not answer yet must not stop the server: ``RedisConnector.client()``
raises ``redis.ConnectionError`` (a ``RedisError``, which every caller already handles
as "Redis is away") and asks again on a later call, at most once per ``retry_every``
seconds, so a dead Redis costs a caller one failed connect per interval, not one per use.
"""

import logging
import time

import redis
from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)

# What a call to Redis (or a Redis Cluster) may raise when it is away or failing over.
REDIS_ERRORS = (redis.RedisError, RedisClusterException, OSError)

# Every client made here: fail fast (callers fall back or retry on their own), keep idle
# connections alive through NAT and firewalls.
DEFAULTS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "socket_keepalive": True}


def is_cluster(url, timeout=1.0):
    """Whether the node ``url`` names runs in cluster mode. Raises ``redis.RedisError``
    (or ``OSError``) when it cannot be asked."""
    probe = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return probe.info("cluster").get("cluster_enabled") == 1
    finally:
        probe.close()


class RedisConnector:
    """A client for ``url``, of the right kind, made once the named node has answered."""

    def __init__(self, url, retry_every=1.0, **options):
        """``options`` go to the client (over ``DEFAULTS``)."""
        self.url = url
        self.retry_every = retry_every
        self.options = {**DEFAULTS, **options}
        self.cluster = None  # None until the node has answered
        self._client = None
        self._failed_at = float("-inf")

    def client(self):
        """The client; raises ``redis.ConnectionError`` while the node cannot be reached."""
        if self._client is not None:
            return self._client
        if time.monotonic() - self._failed_at < self.retry_every:
            raise redis.ConnectionError(f"Redis at {self.url} did not answer; will ask again")
        try:
            cluster = is_cluster(self.url, self.options["socket_connect_timeout"])
            self._client = self._make(cluster)
        except REDIS_ERRORS as exc:
            self._failed_at = time.monotonic()
            raise redis.ConnectionError(f"Redis at {self.url} did not answer: {exc}") from exc
        self.cluster = cluster
        log.info("connected to Redis", extra={"event": "redis_connected", "cluster": cluster})
        return self._client

    def _make(self, cluster):
        if cluster:
            # Serve the slots that are up while others are failing over.
            return redis.RedisCluster.from_url(self.url, require_full_coverage=False, **self.options)
        return redis.Redis.from_url(self.url, **self.options)

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None
