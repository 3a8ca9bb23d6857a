"""A Redis Cluster for the broker: sharded pub/sub, so each room's traffic touches one shard.

A room's channel hashes to a slot; the master serving that slot carries the room
(``SPUBLISH`` is routed there, ``SSUBSCRIBE`` is made there). Plain ``PUBLISH`` would be
broadcast to every node of the cluster.

redis-py's ``ClusterPubSub`` was tried here first: after a master was SIGKILLed it kept
reconnecting to the dead node until a command on the cluster client happened to refresh
the slot map, and it moves subscriptions in a thread pool of its own. The broker instead
keeps one plain subscriber connection per master (``NodeReader``, each read by its own
greenlet) and, when one fails or its node gives a channel away (Redis sends
``sunsubscribe`` when a slot moves or a master is demoted), asks the cluster for its slot
map again and subscribes the channels where they now live. Publishing writes each
master's share of a batch on a connection of its own (``PublishLine``); anything refused
or undelivered goes again through ``RedisCluster``, which follows ``MOVED``/``ASK`` and
refreshes its map by itself.
"""

import logging

import redis

from ..redisconn import REDIS_ERRORS
from .redis import SUBSCRIBER_OPTIONS, PublishLine

log = logging.getLogger(__name__)


class ClusterRedis:
    """A Redis Cluster: each channel on the master serving its slot."""

    sharded = True

    def __init__(self, client):
        self.client = client  # redis.RedisCluster
        self._lines = {}  # master name -> the publisher's own connection to it

    def node_for(self, channel):
        """The ``host:port`` of the master serving ``channel``'s slot."""
        return self.client.get_node_from_key(channel).name

    def subscriber(self, node):
        host, _, port = node.rpartition(":")
        kwargs = self.client.get_default_node().redis_connection.connection_pool.connection_kwargs
        return redis.Redis(host=host, port=int(port), username=kwargs.get("username"),
                           password=kwargs.get("password"), **SUBSCRIBER_OPTIONS)

    def publish(self, batch):
        """Send ``[(channel, payload)]``, each master's share in one write; whatever a
        master refused or could not take is sent one by one through ``RedisCluster``
        (which follows ``MOVED`` and refreshes its slot map). Returns what its nodes
        could not take (in order), to be sent again."""
        shares, rest = {}, []
        for channel, payload in batch:
            try:
                node = self.client.get_node_from_key(channel)
            except REDIS_ERRORS:
                rest.append((channel, payload))  # its slot is not served right now
                continue
            shares.setdefault(node.name, (node, []))[1].append((channel, payload))
        for name, (node, events) in shares.items():
            line = self._lines.get(name)
            if line is None:
                line = self._lines[name] = PublishLine(node.redis_connection.connection_pool, "SPUBLISH")
            try:
                rest += line.send(events)
            except REDIS_ERRORS as exc:
                log.debug("SPUBLISH to %s failed (%s); sending one by one", name, exc)
                rest += events
        return self._one_by_one(rest) if rest else []

    def _one_by_one(self, events):
        kept, away = [], set()
        for channel, payload in events:
            try:
                node = self.node_for(channel)
            except REDIS_ERRORS:
                node = None  # its slot is not served right now
            if node is not None and node not in away:
                try:
                    self.client.spublish(channel, payload)
                    continue
                except REDIS_ERRORS:
                    away.add(node)
            kept.append((channel, payload))
        return kept

    def refresh(self):
        """Ask the cluster for its slot map again (after a failover or a slot move)."""
        self.client.nodes_manager.initialize()

    def healthy(self):
        """The cluster says ``cluster_state:ok`` (asked of the first master that answers)."""
        for node in self.client.get_primaries():
            try:
                info = node.redis_connection.execute_command("CLUSTER INFO")
            except (redis.RedisError, OSError):
                continue
            return _cluster_state(info) == "ok"
        return False


def _cluster_state(info):
    if isinstance(info, dict):
        return info.get("cluster_state")
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return None
