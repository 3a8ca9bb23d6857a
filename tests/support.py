"""Real parts for the tests: a redis-server of their own, a PostgreSQL server of their own
(scratch databases on it), and gunicorn started exactly as a platform starts it (the
Procfile's release and web lines).

Every server the tests start is isolated from the others and from the machine: it gets
a clean environment (nothing leaks in from the shell), a Redis key and channel prefix of
its test's own, and a port it is seen to bind (a port taken meanwhile by someone else is
retried with another). The machine's own PostgreSQL (port 5432) is never used.
"""

import atexit
import ctypes
import glob
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing, contextmanager

import psycopg2
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
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
    """A port nobody listens on now (it may be taken before it is used: servers that fail
    to bind are started again on another one)."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Variables a server may take from the test run's own environment; everything else is set
# by the test, so a REDIS_URL or RATE_LIMIT in the shell never changes what is tested.
INHERITED = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")


def clean_env(**settings):
    """An environment for a server: PATH (the virtualenv first), the few variables in
    ``INHERITED``, and ``settings``; nothing else from ``os.environ``."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env["PATH"] = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    env.update({key: str(value) for key, value in settings.items()})
    return env


def unique_prefix():
    """A Redis key and channel prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


BIND_RETRIES = 5


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
        """Start (or start again, on the same port); the first start moves to another
        port if this one was taken since it was picked."""
        first = self.process is None
        for attempt in range(BIND_RETRIES):
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                env=clean_env(),
            )
            if wait_for(self._answers, message=f"redis-server on {self.port}") == "exited":
                if attempt + 1 == BIND_RETRIES:
                    raise AssertionError(f"redis-server could not bind a port (last {self.port})")
                if first:
                    self.port = free_port()
                else:
                    time.sleep(0.5)
                continue
            return self

    def _answers(self):
        if self.process.poll() is not None:
            return "exited"  # it could not bind its port
        probe = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5,
                            retry=Retry(NoBackoff(), 0))
        try:  # ours answers, not another server that took the port first
            return probe.info("server")["process_id"] == self.process.pid
        except redis.RedisError:
            return False
        finally:
            probe.close()

    def kill(self):
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    stop = kill


# -- PostgreSQL --------------------------------------------------------------------------


def postgres_bin(name):
    """A PostgreSQL server program (initdb, postgres) from Debian's packages, newest major
    version first; PATH as a last resort."""
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True):
        if os.access(os.path.join(directory, name), os.X_OK):
            return os.path.join(directory, name)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: scripts/system-deps.sh installs PostgreSQL (Debian: postgresql)")
    return found


def _major_version(directory):
    try:
        return int(directory.split("/")[-2])
    except ValueError:
        return 0


class PostgresServer:
    """A PostgreSQL server of the tests' own: a fresh cluster in a temporary directory on a
    free port, trust authentication for user ``postgres``, no durability (a test database).

    initdb and postgres refuse to run as root: as root, they run as the ``postgres`` system
    user (the Debian package creates it), which owns the directory."""

    def __init__(self):
        self.port = None
        self.process = None
        self.directory = tempfile.mkdtemp(prefix="chat-test-pg-")
        self.data = os.path.join(self.directory, "data")
        self.owner = None
        if os.geteuid() == 0:
            self.owner = pwd.getpwnam("postgres")
            os.chown(self.directory, self.owner.pw_uid, self.owner.pw_gid)

    def _as_owner(self):
        if self.owner is None:
            return {}
        return {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}

    def start(self, timeout=60):
        subprocess.run(
            [postgres_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(), **self._as_owner(),
        )
        for _attempt in range(BIND_RETRIES):
            self.port = free_port()
            self._log = open(os.path.join(self.directory, "postgres.log"), "ab")
            self.process = subprocess.Popen(
                [postgres_bin("postgres"), "-D", self.data, "-p", str(self.port), "-k", self.directory,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=400", "-c", "shared_buffers=32MB"],
                stdout=self._log, stderr=subprocess.STDOUT, env=clean_env(), preexec_fn=_die_with_parent,
                **self._as_owner(),
            )
            if wait_for(self._answers, timeout=timeout, message=f"postgres on {self.port}") != "exited":
                return self
            self._log.close()
        raise AssertionError(f"postgres did not start:\n{self.log()}")

    def _answers(self):
        if self.process.poll() is not None:
            return "exited"
        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def admin(self):
        """A connection to the ``postgres`` database, in autocommit."""
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        return conn

    def log(self):
        try:
            with open(os.path.join(self.directory, "postgres.log"), errors="replace") as file:
                return file.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


_shared_postgres = None


def shared_postgres():
    """The test run's one PostgresServer, started on first use and stopped at exit."""
    global _shared_postgres
    if _shared_postgres is None:
        _shared_postgres = PostgresServer().start()
        atexit.register(_shared_postgres.stop)
    return _shared_postgres


class ScratchPostgres:
    """A database created for a test run and dropped after it, on the tests' own server
    (``server``, a PostgresServer)."""

    def __init__(self, server=None):
        self.server = server = server or shared_postgres()
        self.host, self.port, self.user = "127.0.0.1", server.port, "postgres"
        self.admin = server.admin()
        self.name = f"chat_test_{uuid.uuid4().hex[:12]}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self):
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    def drop(self):
        with self.admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        self.admin.close()


# -- metrics -----------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


def declared_metrics():
    """{sample name: label names} for every metric the app declares in webapp/metrics.py."""
    from prometheus_client.metrics import MetricWrapperBase

    from webapp import metrics

    declared = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in _SUFFIXES[value._type]:
                names = set(value._labelnames) | ({"le"} if suffix == "_bucket" else set())
                declared[value._name + suffix] = names
    return declared


def check_declared(name, labels):
    """Fail unless ``name`` is a sample the app declares, with exactly these label names."""
    declared = declared_metrics()
    assert name in declared, f"no metric {name!r}: the app declares {sorted(declared)}"
    assert set(labels) == declared[name], f"{name} has labels {sorted(declared[name])}, not {sorted(labels)}"


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
    """gunicorn with gevent workers, started by the Procfile's lines on a free port.

    Its environment is built from scratch (``clean_env``) with the test's settings; its
    Redis keys and channels carry ``REDIS_CHANNEL_PREFIX`` (a fresh one unless the test
    gives one: servers of one test that must hear each other share the test's)."""

    def __init__(self, tmp_path, env=None, database_url=None, port=None, name="server", wrapper=()):
        """``wrapper``: a command the web line runs under (e.g. ``unshare --pid --fork``)."""
        self.tmp_path = tmp_path
        self.name = name
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.wrapper = list(wrapper)
        self.process = None
        self.env = clean_env(**{
            "DATABASE_URL": database_url or f"sqlite:///{tmp_path}/chat.sqlite3",
            "SECRET_KEY": "test-secret",
            "LOG_LEVEL": "INFO",
            "PING_INTERVAL": "5",
            "PONG_TIMEOUT": "5",
            "SSE_HEARTBEAT": "1",
            "BROKER_BACKOFF_MAX": "0.5",
            "GRACEFUL_TIMEOUT": "5",
            "REDIS_CHANNEL_PREFIX": unique_prefix(),
            **(env or {}),
        })
        self.env["PORT"] = str(self.port)

    @property
    def log_path(self):
        return self.tmp_path / f"{self.name}-{self.port}.log"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def start(self, timeout=30, healthy=True):
        """Run the release line, then the web line; wait until /healthz says 200 (or, with
        ``healthy=False``, until it answers at all: for a server started while a part it
        needs is down) and every worker is up. A port someone else bound meanwhile is
        replaced by a free one (unless the test chose the port: then binding is retried)."""
        commands = procfile()
        subprocess.run(shlex.split(commands["release"]), cwd=PROJECT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        for attempt in range(BIND_RETRIES):
            self._log = open(self.log_path, "ab")
            self.process = subprocess.Popen(self.wrapper + shlex.split(commands["web"]), cwd=PROJECT, env=self.env,
                                            stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
            up = wait_for(lambda: self._healthy(answering=not healthy), timeout=timeout,
                          message=f"gunicorn on {self.port} ({self.log_path})")
            if up is True:
                break
            self._log.close()
            if attempt + 1 == BIND_RETRIES:
                raise AssertionError(f"gunicorn could not bind a port:\n{self.log()}")
            if not self.fixed_port:
                self.port = free_port()
                self.env["PORT"] = str(self.port)
        workers = int(self.env.get("WEB_CONCURRENCY", "1"))
        wait_for(lambda: len(self.worker_pids()) >= workers, timeout=timeout, message="workers")
        return self

    def _healthy(self, answering=False):
        if self.process.poll() is not None:
            if "Connection in use" in self.log() or "Address already in use" in self.log():
                return "port taken"
            raise AssertionError(f"gunicorn exited ({self.process.returncode}):\n{self.log()}")
        try:
            response = requests.get(self.url + "/healthz", timeout=1)
        except requests.RequestException:
            return False
        if answering:
            return response.status_code in (200, 503)
        return response.status_code == 200 and self.worker_pids() != []

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
        """The value of one sample on /metrics: 0 while nothing has been counted for those
        labels, and a failure for a sample the app does not declare (a metric or label
        renamed or gone), so a wait for "== 0" cannot pass on a name that is not there."""
        check_declared(name, labels)
        response = self.get("/metrics")
        assert response.status_code == 200, response.status_code
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        for line in response.text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            sample_name, _, sample_labels = sample.partition("{")
            if sample_name == name and ",".join(sorted(sample_labels.rstrip("}").split(","))) == wanted:
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
