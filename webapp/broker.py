"""The broker carries events between worker processes and servers.

One small interface, two implementations, chosen by ``REDIS_URL``:

* ``InProcessBroker``: for the default single-process run; delivers at once to the
  subscribers registered in this process.
* ``RedisBroker``: Redis pub/sub. One subscriber connection per process (a pattern
  subscription read by one greenlet), created lazily after fork, reconnecting with
  backoff forever; publishing goes through a bounded queue and one publisher greenlet
  that pipelines, so a sender never waits on Redis and never fails because of it.

Pub/sub is at-most-once. Every (re)subscription is reported to ``on_resync``: the
subscriber may have missed events and should catch up from the database, which is
the source of truth.
"""

import logging
import os
import socket
import time

import gevent
import redis
from gevent.queue import Full, Queue
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)


class Broker:
    """What the rest of the app may ask of a broker."""

    def start(self, on_event, on_resync):
        """Begin delivering: ``on_event(payload: bytes)`` for every event published by
        any process, ``on_resync()`` whenever events may have been missed."""
        raise NotImplementedError

    def publish(self, channel, payload):
        """Queue ``payload`` (bytes) for every subscriber; never blocks, never raises."""
        raise NotImplementedError

    def publish_now(self, channel, payload):
        """Publish synchronously, for a process that runs no loops (a ``flask`` command)."""
        raise NotImplementedError

    def healthy(self):
        """True when events published now would reach the other processes."""
        raise NotImplementedError

    def stop(self):
        """Stop delivering and release connections."""


class InProcessBroker(Broker):
    """Delivers to subscribers in this process only (valid for one worker process)."""

    def __init__(self):
        self._subscribers = []

    def start(self, on_event, on_resync):
        self._subscribers.append(on_event)
        on_resync()

    def publish(self, channel, payload):
        for on_event in list(self._subscribers):
            on_event(payload)

    def publish_now(self, channel, payload):
        self.publish(channel, payload)  # reaches this process only

    def healthy(self):
        return True

    def stop(self):
        self._subscribers.clear()


class RedisBroker(Broker):
    """Redis pub/sub: channel ``<prefix>:<room>``, one pattern subscription per process."""

    PUBLISH_QUEUE = 10_000
    PUBLISH_BATCH = 200
    DROP_LOG_EVERY = 5.0  # seconds between "dropped copies" warnings

    def __init__(self, url, prefix="chat", backoff_max=2.0, on_state=None):
        self.url = url
        self.prefix = prefix
        self.backoff_max = backoff_max
        self._on_state = on_state or (lambda event: None)
        self._queue = Queue(self.PUBLISH_QUEUE)
        self._dropped = 0
        self._drop_logged_at = float("-inf")
        self._greenlets = []
        self._pid = None
        self.subscribed = False
        # Our loops own reconnecting (with backoff and a log line), so redis-py's own
        # retries are off: a failure shows up at once instead of after silent retries.
        options = dict(socket_connect_timeout=2, socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        self._client = redis.Redis.from_url(url, socket_timeout=5, health_check_interval=5, **options)
        self._probe = redis.Redis.from_url(url, socket_timeout=1, **options)
        # The subscriber blocks in one read for as long as the channel is quiet; a Redis
        # that went away without closing the connection is noticed by TCP keepalive
        # (about 25 s), and the sweep fills any gap from the database meanwhile.
        self._subscriber = redis.Redis.from_url(url, socket_timeout=None, socket_keepalive_options={
            socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3}, **options)

    def channel(self, name):
        return f"{self.prefix}:{name}"

    def start(self, on_event, on_resync):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._greenlets = [
            gevent.spawn(self._subscribe_forever, on_event, on_resync),
            gevent.spawn(self._publish_forever),
        ]

    def publish(self, channel, payload):
        try:
            self._queue.put_nowait((self.channel(channel), payload))
        except Full:
            # Redis has been away (or too slow) for long: the oldest copies go. The messages
            # themselves are stored, and subscribers catch up on the gap by id.
            self._queue.get_nowait()
            self._queue.put_nowait((self.channel(channel), payload))
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged_at >= self.DROP_LOG_EVERY:
                log.warning("publish queue full: dropped the oldest copies",
                            extra={"event": "broker_queue_full", "dropped": self._dropped})
                self._dropped, self._drop_logged_at = 0, now

    def publish_now(self, channel, payload):
        self._client.publish(self.channel(channel), payload)

    def healthy(self):
        try:
            return bool(self._probe.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self):
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        self._pid = None

    def _backoff(self, attempt):
        return min(self.backoff_max, 0.05 * 2**attempt)

    def _subscribe_forever(self, on_event, on_resync):
        """Read events; on any failure, log, back off and subscribe again."""
        pattern = self.channel("*")
        failures = 0
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                pubsub.psubscribe(pattern)
                # listen() reads the socket only when hiredis has nothing buffered, without
                # the readiness polls that get_message(timeout) makes for every message.
                for message in pubsub.listen():
                    if message["type"] == "pmessage":
                        on_event(message["data"])
                    elif message["type"] == "psubscribe":
                        if failures:
                            log.info("subscribed to Redis again",
                                     extra={"event": "broker_reconnected", "attempts": failures})
                            self._on_state("reconnect")
                        failures = 0
                        self.subscribed = True
                        on_resync()
            except (redis.RedisError, OSError) as exc:
                self.subscribed = False
                delay = self._backoff(failures)
                failures += 1
                log.warning("Redis subscription lost; retrying",
                            extra={"event": "broker_subscription_lost", "error": str(exc), "retry_in": round(delay, 2)})
                time.sleep(delay)
            finally:
                self.subscribed = False
                try:
                    pubsub.close()
                except (redis.RedisError, OSError):
                    pass

    def _publish_forever(self):
        """Send queued events in pipelined batches; keep a failed batch and retry it."""
        batch = []
        failures = 0
        while True:
            if not batch:
                batch.append(self._queue.get())
                while len(batch) < self.PUBLISH_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            try:
                pipe = self._client.pipeline(transaction=False)
                for channel, payload in batch:
                    pipe.publish(channel, payload)
                pipe.execute()
                batch = []
                if failures:
                    log.info("publishing to Redis again",
                             extra={"event": "broker_publish_recovered", "attempts": failures})
                failures = 0
            except (redis.RedisError, OSError) as exc:
                delay = self._backoff(failures)
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("publish to Redis failed; kept for retry",
                                extra={"event": "broker_publish_failed", "error": str(exc), "kept": len(batch)})
                time.sleep(delay)


def make_broker(config, on_state=None):
    """The broker ``REDIS_URL`` asks for."""
    if config["REDIS_URL"]:
        return RedisBroker(
            config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"], config["BROKER_BACKOFF_MAX"], on_state
        )
    return InProcessBroker()
