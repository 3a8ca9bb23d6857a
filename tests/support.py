"""Real parts for the tests: a redis-server of their own, scratch PostgreSQL databases, and
gunicorn started exactly as a platform starts it (the Procfile's release and web lines)."""

import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import closing, contextmanager

import psycopg2
import redis
import requests

from .sseclient import SSEClient
from .wsclient import WSClient

@contextmanager
def using_db(app):
    """Run a block with the app's context and a database connection (for assertions)."""
    from webapp import db

    with app.app_context(), db.connection():
        yield


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _die_with_parent():
    """preexec_fn: the server gets SIGTERM if the test run dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port():
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``condition()`` until it returns something truthy; return that, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


# -- Redis -------------------------------------------------------------------------------


class RedisServer:
    """A redis-server on a free port that a test may stop, kill and start again."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        return redis.Redis(port=self.port, socket_timeout=2)

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        wait_for(self._answers, message=f"redis-server on {self.port}")
        return self

    def _answers(self):
        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    stop = kill


# -- PostgreSQL --------------------------------------------------------------------------


def _pg_admin():
    for user in ("postgres", "root"):
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=5432, user=user, dbname="postgres")
            conn.autocommit = True
            return conn, user
        except psycopg2.OperationalError:
            continue
    raise RuntimeError("PostgreSQL at 127.0.0.1:5432 refused users postgres and root")


class ScratchPostgres:
    """A database created for a test run and dropped after it."""

    def __init__(self):
        self.admin, self.user = _pg_admin()
        self.name = f"chat_test_{uuid.uuid4().hex[:12]}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self):
        return f"postgresql://{self.user}@127.0.0.1:5432/{self.name}"

    def drop(self):
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()


# -- gunicorn ----------------------------------------------------------------------------


def procfile():
    """The Procfile's process types: {"web": "...", "release": "..."}."""
    lines = {}
    with open(os.path.join(PROJECT, "Procfile")) as file:
        for line in file:
            if ":" in line and not line.startswith("#"):
                kind, command = line.split(":", 1)
                lines[kind.strip()] = command.strip()
    return lines


class LiveServer:
    """gunicorn with gevent workers, started by the Procfile's lines on a free port."""

    def __init__(self, tmp_path, env=None, database_url=None, port=None, name="server", wrapper=()):
        """``wrapper``: a command the web line runs under (e.g. ``unshare --pid --fork``)."""
        self.port = port or free_port()
        self.wrapper = list(wrapper)
        self.log_path = tmp_path / f"{name}-{self.port}.log"
        self.process = None
        self.env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            "PORT": str(self.port),
            "DATABASE_URL": database_url or f"sqlite:///{tmp_path}/chat.sqlite3",
            "SECRET_KEY": "test-secret",
            "LOG_LEVEL": "INFO",
            "PING_INTERVAL": "5",
            "PONG_TIMEOUT": "5",
            "SSE_HEARTBEAT": "1",
            "BROKER_BACKOFF_MAX": "0.5",
            "GRACEFUL_TIMEOUT": "5",
        }
        self.env.pop("REDIS_URL", None)
        self.env.pop("WEB_CONCURRENCY", None)
        self.env.update({key: str(value) for key, value in (env or {}).items()})

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout=30, healthy=True):
        """Run the release line, then gunicorn; wait until /healthz says 200 (or, with
        ``healthy=False``, until it answers at all: for a server started while a part it
        needs is down)."""
        commands = procfile()
        subprocess.run(shlex.split(commands["release"]), cwd=PROJECT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.wrapper + shlex.split(commands["web"]), cwd=PROJECT, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        wait_for(lambda: self._healthy(answering=not healthy), timeout=timeout,
                 message=f"gunicorn on {self.port} ({self.log_path})")
        workers = int(self.env.get("WEB_CONCURRENCY", "1"))
        wait_for(lambda: len(self.worker_pids()) >= workers, timeout=timeout, message="workers")
        return self

    def _healthy(self, answering=False):
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n{self.log()}")
        try:
            status = requests.get(self.url + "/healthz", timeout=1).status_code
            return status in (200, 503) if answering else status == 200
        except requests.RequestException:
            return False

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def worker_pids(self):
        try:
            out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        except FileNotFoundError:
            return []
        return [int(pid) for pid in out.split()]

    def worker_holding(self, client_port):
        """The pid of the worker whose socket is connected to a client's local port."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                for row in list(rows)[1:]:
                    fields = row.split()
                    local, remote = fields[1], fields[2]
                    local_port, remote_port = (int(end.rsplit(":", 1)[1], 16) for end in (local, remote))
                    if local_port == self.port and remote_port == client_port:
                        inodes.add(f"socket:[{fields[9]}]")
        for pid in self.worker_pids():
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except FileNotFoundError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        return None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.alive():
            # A wrapper (unshare) may ignore the signal: gunicorn's master gets it then.
            for pid in (self.worker_pids() if self.wrapper else [self.process.pid]):
                os.kill(pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    # -- talking to it ---------------------------------------------------------------

    def get(self, path, **kwargs):
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post_json(self, label, handle, message):
        return requests.post(f"{self.url}/api/rooms/{label}/messages", json={"handle": handle, "message": message},
                             timeout=10)

    def post_many(self, label, count):
        """Post ``count`` messages "m0".."m<count-1>" after a first one; return that first id
        and the latest id."""
        first = self.post_json(label, "a", "first").json()["id"]
        latest = first
        for n in range(count):
            latest = self.post_json(label, "a", f"m{n}").json()["id"]
        return first, latest

    def metric(self, name, **labels):
        """The value of one sample on /metrics (0 when absent)."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            sample_name, _, sample_labels = sample.partition("{")
            if sample_name == name and sample_labels.rstrip("}") == wanted:
                return float(value)
        return 0.0

    def events(self, label, last_id=None, headers=()):
        query = f"?last_id={last_id}" if last_id is not None else ""
        return SSEClient(f"{self.url}/{label}/events{query}", headers=headers)

    def open_room(self, label):
        assert self.get(f"/{label}/").status_code == 200

    def socket(self, label, last_id=None, **kwargs):
        query = f"?last_id={last_id}" if last_id is not None else ""
        return ChatClient(WSClient(self.ws_url(f"/chat/{label}/{query}"), **kwargs))


class ChatClient:
    """A client of the seed's JSON protocol that keeps what it receives."""

    def __init__(self, ws):
        self.ws = ws
        self.frames = []

    def send(self, handle, message):
        self.ws.send(json.dumps({"handle": handle, "message": message}))

    def recv(self, timeout=5):
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        return frame

    def messages(self):
        return [f for f in self.frames if "id" in f]

    def collect(self, count, timeout=10):
        """Receive until ``count`` messages have arrived in total; return all of them."""
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.recv(timeout=remaining)
            except TimeoutError:
                ids = [m["id"] for m in self.messages()]
                raise AssertionError(f"got {len(ids)} of {count} messages: ids {ids}") from None
        return self.messages()

    def close(self):
        self.ws.close()
