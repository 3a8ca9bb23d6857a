"""The broker carries events between worker processes and servers, per room.

One small interface (``base.Broker``), three implementations, chosen by ``REDIS_URL``:

* ``memory.InProcessBroker``: the default single-process run; delivers at once inside
  this process.
* ``redis.RedisBroker`` on a single Redis: a channel per room, ``SUBSCRIBE``d while this
  process serves someone in the room, ``PUBLISH``ed to.
* the same on a Redis Cluster (``cluster.py``): sharded pub/sub, each room on the master
  serving its slot, failovers and slot moves followed by themselves.

Pub/sub is at-most-once. Every (re)subscription after a fault is reported to
``on_resync``: the subscriber may have missed events and catches up from the database,
which is the source of truth.
"""

from .base import Broker
from .memory import InProcessBroker
from .redis import RedisBroker

__all__ = ["Broker", "InProcessBroker", "RedisBroker", "make_broker"]


def make_broker(config, on_state=None):
    """The broker ``REDIS_URL`` asks for (a single Redis or a cluster: found out later)."""
    linger = config["BROKER_LINGER"]
    if config["REDIS_URL"]:
        return RedisBroker(
            config["REDIS_URL"], config["REDIS_CHANNEL_PREFIX"], config["BROKER_BACKOFF_MAX"], on_state, linger
        )
    return InProcessBroker(linger)
