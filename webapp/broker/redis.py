"""The Redis broker: a channel per room, subscribed only while this process serves it.

``REDIS_URL`` names a single Redis or any node of a Redis Cluster; which one is found out
on the first connection (``webapp.redisconn``), so a Redis that is down at start-up stops
nothing: the broker reports itself unhealthy and connects when the node answers. The
two differ only in their ``Topology``: a single Redis is one node, ``SUBSCRIBE`` and
``PUBLISH``; a cluster (``cluster.py``) maps each room's channel to the master serving its
slot, ``SSUBSCRIBE`` and ``SPUBLISH``, so a room's traffic touches one shard.

* Subscribing: one subscriber connection per node that serves a held room
  (``NodeReader``), each read by its own greenlet. A room's subscription counts as
  confirmed when Redis says so; ``hold`` waits for that (see ``base``).
* Faults: a reader whose connection fails (or whose node gives its channels away, as a
  demoted master does) ends; the supervisor looks the channels' nodes up again and
  subscribes them anew, backing off while nothing answers. Every reader that comes back
  reports ``on_resync``: events may have been missed, and the database (the source of
  truth) fills the gap by id.
* Publishing goes through a bounded queue and one publisher greenlet that pipelines, so
  a sender never waits on Redis and never fails because of it; what could not be sent is
  kept and sent again (a duplicate is harmless: listeners skip ids they have).

Pub/sub is at-most-once: nothing here is trusted to deliver, only to deliver soon.
"""

import logging
import os
import socket
import time

import gevent
import redis
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..redisconn import REDIS_ERRORS, RedisConnector
from .base import Broker

log = logging.getLogger(__name__)

# Our loops own reconnecting (with backoff and a log line), so redis-py's own retries are
# off: a failure shows up at once instead of after silent retries.
NO_RETRY = {"retry": Retry(NoBackoff(), 0)}
# A subscriber blocks in one read for as long as its rooms are quiet; a node that went
# away without closing the connection is noticed by TCP keepalive (about 25 s).
SUBSCRIBER_OPTIONS = dict(
    socket_timeout=None, socket_connect_timeout=1.0, socket_keepalive=True, health_check_interval=0,
    socket_keepalive_options={socket.TCP_KEEPIDLE: 10, socket.TCP_KEEPINTVL: 5, socket.TCP_KEEPCNT: 3},
    **NO_RETRY,
)


class ChannelMoved(Exception):
    """The node gave a channel away (its slot moved, or it is no longer a master)."""


class PublishLine:
    """The publishing greenlet's own connection to one node, events sent in one write.

    Not a pipeline from the client's pool: taking a pooled connection checks it for
    unread data with a zero-timeout read, which under gevent is a timer and a trip
    through the event loop (measured alone: 165 µs of CPU for a one-event pipeline, 62 µs
    here)."""

    def __init__(self, pool, command):
        self._pool, self._command, self._connection = pool, command, None

    def send(self, events):
        """Send ``[(channel, payload)]``; return the events Redis refused (say, ``MOVED``).
        A connection failure raises, and the next send starts on a fresh connection."""
        connection = self._connection
        if connection is None:
            connection = self._connection = self._pool.make_connection()
        try:
            connection.send_packed_command(
                connection.pack_commands([(self._command, channel, payload) for channel, payload in events]),
                check_health=False)
            refused = []
            for event in events:
                try:
                    connection.read_response()
                except redis.ResponseError:
                    refused.append(event)
            return refused
        except BaseException:
            self.close()  # replies may be left unread on it
            raise

    def close(self):
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()


class SingleRedis:
    """A single Redis: one node for every channel, plain pub/sub."""

    sharded = False
    NODE = "redis"

    def __init__(self, client):
        self.client = client
        self._line = PublishLine(client.connection_pool, "PUBLISH")

    def node_for(self, channel):
        return self.NODE

    def subscriber(self, node):
        kwargs = self.client.connection_pool.connection_kwargs
        return redis.Redis(host=kwargs.get("host", "localhost"), port=kwargs.get("port", 6379),
                           db=kwargs.get("db", 0), username=kwargs.get("username"),
                           password=kwargs.get("password"), **SUBSCRIBER_OPTIONS)

    def publish(self, batch):
        """Send ``[(channel, payload)]`` in one write; return what must be sent again."""
        return self._line.send(batch)

    def refresh(self):
        """Look the nodes up again (nothing to do with one node)."""

    def healthy(self):
        return bool(self.client.ping())


class NodeReader:
    """One subscriber connection to one node, read by its own greenlet; ends on any
    failure, and the broker then finds its channels a home again."""

    def __init__(self, broker, node, client, sharded):
        self.broker = broker
        self.node = node
        self.client = client
        self.sharded = sharded
        self.channels = set()
        self.ready = False  # connected, and every channel it had then is confirmed
        self._connection = None
        self._sending = Semaphore()
        self.greenlet = gevent.spawn(self._run)

    def add(self, channel):
        self.channels.add(channel)
        if self._connection is not None:
            self._send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", channel)

    def remove(self, channel):
        self.channels.discard(channel)
        if self._connection is not None:
            self._send("SUNSUBSCRIBE" if self.sharded else "UNSUBSCRIBE", channel)

    def close(self):
        self.greenlet.kill(block=False)

    def _send(self, *args):
        # A failed send shows up in the reading greenlet too, which then ends.
        with self._sending:
            try:
                self._connection.send_command(*args)
            except (redis.RedisError, OSError) as exc:
                log.debug("subscription command to %s failed: %s", self.node, exc)

    def _run(self):
        connection = None
        try:
            connection = self.client.connection_pool.get_connection()
            self._connection = connection
            for channel in list(self.channels):  # one by one: a cluster refuses CROSSSLOT
                self._send("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", channel)
            self._send("PING")  # answered after every subscription above is confirmed
            while True:
                self._handle(connection.read_response(push_request=True))
        except (redis.RedisError, OSError, ChannelMoved) as exc:
            self._connection = None
            self.ready = False
            self.broker._reader_lost(self, exc)
        finally:
            self._connection = None
            if connection is not None:
                connection.disconnect()

    def _handle(self, response):
        if not isinstance(response, list):  # PONG outside subscribed mode
            kind, channel, data = b"pong", None, None
        else:
            kind, channel, data = response[0], response[1], response[2] if len(response) > 2 else None
            channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind in (b"message", b"smessage"):
            self.broker._on_event(data)
        elif kind in (b"subscribe", b"ssubscribe"):
            if channel in self.channels:
                self.broker._confirmed(channel)
        elif kind == b"pong":
            if not self.ready:
                self.ready = True
                self.broker._reader_ready(self)
        elif kind == b"sunsubscribe" and channel in self.channels:
            # We did not ask: the slot moved, or the node is a master no more.
            raise ChannelMoved(f"{self.node} gave {channel} away")


class RedisBroker(Broker):
    """Redis pub/sub, a channel ``<prefix>:<room>`` per room; a single Redis or a cluster."""

    PUBLISH_QUEUE = 10_000
    PUBLISH_BATCH = 200
    DROP_LOG_EVERY = 5.0  # seconds between "dropped copies" warnings
    REHOME_BACKOFF_MAX = 0.5  # while a node is away, look its channels' nodes up this often

    def __init__(self, url, prefix="chat", backoff_max=2.0, on_state=None, linger=5.0):
        super().__init__(linger)
        self.url = url
        self.prefix = prefix
        self.backoff_max = backoff_max
        self._on_state = on_state or (lambda event: None)
        self._connector = RedisConnector(url, retry_every=0.0, **NO_RETRY)
        self._probe = RedisConnector(url, retry_every=0.5, **NO_RETRY)
        self._queue = Queue(self.PUBLISH_QUEUE)
        self._dropped = 0
        self._drop_logged_at = float("-inf")
        self._greenlets = []
        self._pid = None
        self._on_event_cb = self._on_resync = None
        self.topology = None
        self._readers = {}  # node -> NodeReader
        self._events = {}  # channel -> Event, set while its subscription is confirmed
        self._homeless = set()  # channels whose node is away
        self._failures = 0
        self._lost = Event()  # set when some channel needs a new home

    def channel(self, room):
        return f"{self.prefix}:{room}"

    @property
    def connected(self):
        """Every held room is subscribed (and Redis answered)."""
        return self.topology is not None and not self._homeless and all(r.ready for r in self._readers.values())

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, on_event, on_resync):
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._on_event_cb, self._on_resync = on_event, on_resync
        self._greenlets = [gevent.spawn(self._supervise), gevent.spawn(self._publish_forever)]

    def stop(self):
        gevent.killall(self._greenlets, block=False)
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        self._greenlets = []
        self._pid = None
        self._drop_holds()

    # -- subscriptions ------------------------------------------------------------------

    def _subscribe(self, room):
        channel = self.channel(room)
        self._events[channel] = Event()
        self._place(channel)

    def _unsubscribe(self, room):
        channel = self.channel(room)
        self._events.pop(channel, None)
        self._homeless.discard(channel)
        for reader in self._readers.values():
            if channel in reader.channels:
                reader.remove(channel)

    def _wait_subscribed(self, room, timeout):
        event = self._events.get(self.channel(room))
        if event is None:
            return False
        if event.is_set():
            return True
        if self._failures or (self.topology is not None and self._homeless):
            return False  # Redis is away: don't make every join wait; the resync covers it
        return event.wait(timeout)

    def _place(self, channel, homeless=None):
        """Subscribe ``channel`` on the node serving it, once Redis has answered; while
        some node is away, leave it to the supervisor (unless it is the one placing)."""
        if self.topology is None or (self._homeless and homeless is None):
            self._homeless.add(channel)  # the supervisor places it with the others
            self._lost.set()
            return
        try:
            node = self.topology.node_for(channel)
        except REDIS_ERRORS:
            self._homeless.add(channel)
            self._lost.set()
            return
        reader = self._readers.get(node)
        if reader is None:
            reader = self._readers[node] = NodeReader(self, node, self.topology.subscriber(node), self.topology.sharded)
        reader.add(channel)

    def _confirmed(self, channel):
        event = self._events.get(channel)
        if event is not None:
            event.set()

    def _on_event(self, payload):
        self._on_event_cb(payload)

    def _reader_ready(self, reader):
        if self._failures:
            log.info("subscribed to Redis again",
                     extra={"event": "broker_reconnected", "attempts": self._failures, "node": reader.node})
            self._on_state("reconnect")
        if self.connected:
            self._failures = 0
        self._on_resync()

    def _reader_lost(self, reader, exc):
        """A reader ended: its channels need a home again (the supervisor finds it)."""
        if self._readers.get(reader.node) is reader:
            del self._readers[reader.node]
        for channel in reader.channels:
            event = self._events.get(channel)
            if event is not None:
                event.clear()
                self._homeless.add(channel)
        log.warning("Redis subscription lost; retrying",
                    extra={"event": "broker_subscription_lost", "error": str(exc), "node": reader.node})
        self._lost.set()

    def _supervise(self):
        """Connect once Redis answers; then give every channel whose node went away a new
        one, backing off while nothing answers."""
        while True:
            if self._needs_rehome():
                try:
                    self._rehome()
                except REDIS_ERRORS as exc:
                    delay = self._rehome_delay()
                    self._failures += 1
                    log.warning("Redis unreachable; retrying", extra={
                        "event": "broker_subscription_lost", "error": str(exc), "retry_in": round(delay, 2)})
                    gevent.sleep(delay)
                    continue
            self._lost.wait()
            self._lost.clear()
            if self._needs_rehome():
                gevent.sleep(self._rehome_delay())
                self._failures += 1

    def _needs_rehome(self):
        return (self.topology is None or bool(self._homeless)
                or (not self.topology.sharded and SingleRedis.NODE not in self._readers))

    def _rehome_delay(self):
        """How long to wait before looking for lost channels' nodes again: backing off,
        but on a cluster never long, so a finished failover is noticed within a second."""
        delay = self._backoff(self._failures)
        if self.topology is not None and self.topology.sharded:
            delay = min(delay, self.REHOME_BACKOFF_MAX)
        return delay

    def _rehome(self):
        if self.topology is None:
            self.topology = self._make_topology(self._connector.client())
            self._homeless |= set(self._events)
            self._on_resync()  # connected: whatever was published before, catch up on it
        else:
            self.topology.refresh()
        homeless, self._homeless = self._homeless, set()
        for channel in homeless:
            if channel in self._events:
                self._place(channel, self._homeless)
        if not self.topology.sharded and SingleRedis.NODE not in self._readers:
            # A single Redis always has its reader: its coming back reports a resync.
            self._readers[SingleRedis.NODE] = NodeReader(self, SingleRedis.NODE, self.topology.subscriber(None), False)

    def _make_topology(self, client):
        if self._connector.cluster:
            from .cluster import ClusterRedis

            return ClusterRedis(client)
        return SingleRedis(client)

    def _backoff(self, attempt):
        return min(self.backoff_max, 0.05 * 2**attempt)

    # -- health -------------------------------------------------------------------------

    def healthy(self):
        try:
            if self.topology is None:
                self._probe.client()
                return False
            return self.topology.healthy() and not self._homeless
        except REDIS_ERRORS:
            return False

    # -- publishing ---------------------------------------------------------------------

    def publish(self, room, payload):
        try:
            self._queue.put_nowait((self.channel(room), payload))
        except Full:
            # Redis has been away (or too slow) for long: the oldest copies go. The messages
            # themselves are stored, and subscribers catch up on the gap by id.
            self._queue.get_nowait()
            self._queue.put_nowait((self.channel(room), payload))
            self._dropped += 1
            now = time.monotonic()
            if now - self._drop_logged_at >= self.DROP_LOG_EVERY:
                log.warning("publish queue full: dropped the oldest copies",
                            extra={"event": "broker_queue_full", "dropped": self._dropped})
                self._dropped, self._drop_logged_at = 0, now

    def publish_now(self, room, payload):
        # A topology of its own: the running one's publishing connection is its greenlet's.
        topology = self._make_topology(self._connector.client())
        if topology.publish([(self.channel(room), payload)]):
            raise redis.ConnectionError("Redis did not take the event")

    def _publish_forever(self):
        """Send queued events in pipelined batches; keep what failed and retry it."""
        batch = []
        failures = 0
        while True:
            if not batch:
                batch.append(self._queue.get())
            while len(batch) < self.PUBLISH_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except Empty:
                    break
            try:
                if self.topology is None:
                    raise redis.ConnectionError("Redis has not answered yet")
                batch = self.topology.publish(batch)
                if batch:
                    raise redis.ConnectionError(f"{len(batch)} event(s) not sent")
                if failures:
                    log.info("publishing to Redis again",
                             extra={"event": "broker_publish_recovered", "attempts": failures})
                failures = 0
            except REDIS_ERRORS as exc:
                delay = min(self._backoff(failures), self.REHOME_BACKOFF_MAX)
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("publish to Redis failed; kept for retry",
                                extra={"event": "broker_publish_failed", "error": str(exc), "kept": len(batch)})
                gevent.sleep(delay)
