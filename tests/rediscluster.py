"""A real Redis Cluster on loopback for the tests: three masters, three replicas.

Six ``redis-server`` processes in cluster mode, each in its own directory, joined by
``redis-cli --cluster create ... --cluster-replicas 1``. Each node's cluster bus listens on
its port + 10000, so the ports are picked below 55536 with both free. A test may SIGKILL a
master and wait for its replica to take over (about the node timeout), then start the dead
node again: it rejoins as a replica, and the cluster is whole for the next test. Every
process gets SIGTERM if the test run dies (as tests/support.py's RedisServer).
"""

import random
import socket
import subprocess
import time
from contextlib import closing

import redis

from .support import _die_with_parent, wait_for

NODE_TIMEOUT_MS = 2000
PORT_RANGE = (20000, 45000)  # bus ports (P + 10000) stay below 55536 and out of the ephemeral range


def _bindable(port):
    with closing(socket.socket()) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count):
    """``count`` ports P, each with P and P + 10000 free on loopback."""
    ports = []
    while len(ports) < count:
        port = random.randrange(*PORT_RANGE)
        if port not in ports and _bindable(port) and _bindable(port + 10000):
            ports.append(port)
    return ports


class ClusterNode:
    """One redis-server of the cluster."""

    def __init__(self, port, directory):
        self.port = port
        self.directory = directory
        self.process = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def client(self, timeout=1):
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def start(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        wait_for(self.answers, message=f"cluster node on {self.port}")
        return self

    @property
    def alive(self):
        return self.process is not None and self.process.poll() is None

    def answers(self):
        try:
            return self.client().ping()
        except (redis.RedisError, OSError):
            return False

    def info(self, section):
        return self.client().info(section)

    def role(self):
        """"master" or "slave", as this node sees itself (None when it does not answer)."""
        try:
            return self.info("replication")["role"]
        except (redis.RedisError, OSError):
            return None

    def synced(self):
        """A master, or a replica whose link to its master is up."""
        try:
            info = self.info("replication")
        except (redis.RedisError, OSError):
            return False
        return info["role"] == "master" or info.get("master_link_status") == "up"

    def cluster_ok(self):
        try:
            return self.client().execute_command("CLUSTER INFO").get("cluster_state") == "ok"
        except (redis.RedisError, OSError):
            return False

    def kill(self):
        """SIGKILL: no goodbye to the cluster, as when a machine dies."""
        if self.alive:
            self.process.kill()
            self.process.wait()

    stop = kill


class RedisCluster:
    """Six nodes, three masters with one replica each, on loopback."""

    def __init__(self, directory, masters=3):
        self.nodes = [ClusterNode(port, directory / f"node-{port}") for port in cluster_ports(masters * 2)]

    @property
    def url(self):
        """A ``REDIS_URL`` naming one node (the first that is alive)."""
        return self.url_of(next(node for node in self.nodes if node.alive))

    @staticmethod
    def url_of(node):
        return f"redis://{node.address}/0"

    def start(self):
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[node.address for node in self.nodes],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout=30):
        """Until every live node says ``cluster_state:ok``, three live masters serve the
        slots, and every live replica is in sync with its master (a replica that never
        synced is not eligible to take over, so a failover would never come)."""
        def settled():
            live = [node for node in self.nodes if node.alive]
            return (all(node.cluster_ok() for node in live)
                    and len(self.masters()) == len(self.nodes) // 2
                    and all(node.synced() for node in live))
        wait_for(settled, timeout=timeout, interval=0.1, message="cluster_state:ok on every node")

    def masters(self):
        """The live nodes that are masters now."""
        return [node for node in self.nodes if node.alive and node.role() == "master"]

    def master_for(self, key):
        """The live master serving ``key``'s slot."""
        masters = self.masters()
        slot = masters[0].client().cluster("keyslot", key)
        for node in masters:
            if any(start <= slot <= end for start, end in self.slots_of(node)):
                return node
        raise LookupError(f"no live master serves slot {slot}")

    def slots_of(self, node):
        """The slot ranges ``node`` serves as a master, as the node itself sees it."""
        return [(start, end) for start, end, master, *_ in node.client().execute_command("CLUSTER SLOTS")
                if int(master[1]) == node.port]

    def move_slot(self, key, target):
        """Move ``key``'s slot (keyless, as pub/sub channels are) to master ``target`` the
        way a resharding does: importing, migrating, then the new owner told to every
        master. Returns the master it left."""
        source = self.master_for(key)
        slot = source.client().cluster("keyslot", key)
        source_id, target_id = (node.client().execute_command("CLUSTER MYID").decode() for node in (source, target))
        target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        for node in (target, source, *[m for m in self.masters() if m not in (source, target)]):
            node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self.wait_ok()
        return source

    def kill_master(self, node=None):
        """SIGKILL a master (the first one if not given); return it."""
        node = node or self.masters()[0]
        node.kill()
        return node

    def wait_failover(self, dead, timeout=30):
        """Until a replica has taken ``dead``'s slots and the cluster is ok again; return the
        seconds it took."""
        started = time.monotonic()
        self.wait_ok(timeout)
        return time.monotonic() - started

    def restart(self, node):
        """Start a killed node again: it rejoins as a replica of its old slots' new master."""
        node.start()
        self.wait_ok()

    def stop(self):
        for node in self.nodes:
            node.kill()
