"""Peers: other servers of the same chat, booted and loaded beside ours in the same run.

``flask-socketio``: ``socketio_chat.py`` on gunicorn gevent workers with Redis as its
message queue, installed from PyPI (``requirements.txt``, pinned) into a virtualenv of
its own, ``bench/peers/.venv``, created on first use and never committed. Its clients
speak Socket.IO over the Engine.IO 4 websocket transport (``bench.clients.SIOClient``).

A peer cluster looks like ``bench.servers.Cluster`` to the scenarios: ``servers`` (each
with ``port``, ``name`` and ``worker_pids``), ``worker_pids``, ``database_pids``,
``client_kind`` and ``socket_path`` (how a member connects to a room).
"""

import hashlib
import os
import subprocess
import sys

from ..servers import Cluster, Server, spawn

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.join(HERE, ".venv")
REQUIREMENTS = os.path.join(HERE, "requirements.txt")


def ensure_venv(log=print):
    """The peers' virtualenv, (re)installed when requirements.txt changed; its bin dir."""
    bindir = os.path.join(VENV, "bin")
    with open(REQUIREMENTS, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    stamp = os.path.join(VENV, ".requirements-sha256")
    try:
        with open(stamp) as file:
            if file.read().strip() == digest:
                return bindir
    except FileNotFoundError:
        pass
    log(f"installing the peers' virtualenv in {VENV} (once)")
    if not os.path.exists(os.path.join(bindir, "python")):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([os.path.join(bindir, "python"), "-m", "pip", "install", "-q", "-r", REQUIREMENTS], check=True)
    with open(stamp, "w") as file:
        file.write(digest)
    return bindir


class SocketIOServer(Server):
    """gunicorn serving the Flask-SocketIO chat from the peers' virtualenv."""

    def __init__(self, directory, name, database_path, redis_url, workers):
        super().__init__(directory, name, f"sqlite:///{database_path}", redis_url, workers)
        self.env.update({"DATABASE": database_path, "PYTHONPATH": HERE})
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def start(self):
        bindir = os.path.join(VENV, "bin")
        self._log = open(self.log_path, "ab")
        self.process = spawn(
            [os.path.join(bindir, "gunicorn"), "-k", "gevent", "-w", str(self.workers),
             "--worker-connections", "20000", "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
             "--graceful-timeout", "3", "--chdir", HERE, "socketio_chat:app"],
            cwd=HERE, env={**self.env, "PATH": f"{bindir}:{self.env['PATH']}"},
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self


class SocketIOCluster(Cluster):
    """One Flask-SocketIO server of ``workers`` gevent workers (or several servers)."""

    client_kind = "sio"

    def __init__(self, directory, name, redis_url, servers=1, workers=1):
        database = os.path.join(directory, f"{name}.sqlite3")
        super().__init__(directory, name, f"sqlite:///{database}", redis_url, servers, workers)
        self.servers = [
            SocketIOServer(directory, f"{name}-s{i}", database, redis_url, workers) for i in range(servers)
        ]

    def start(self):
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready()
        return self

    @staticmethod
    def socket_path(label):
        return f"/socket.io/?EIO=4&transport=websocket&room={label}"

    def describe(self):
        per = self.servers[0].workers
        return f"Flask-SocketIO: {len(self.servers)} server(s) x {per} worker(s), sqlite, redis message queue"
