"""The processes under test: a redis-server, scratch PostgreSQL databases and gunicorn
servers started exactly as a platform starts them (the Procfile's ``release:`` line, then
its ``web:`` line), plus what /proc says about them (CPU time, resident memory).

Every process is started in its own session (Ctrl-C reaches only the runner, which then
stops them in order) and with PR_SET_PDEATHSIG, so none outlives a runner that is killed
outright. ``Resources`` stops and removes everything it was given, in reverse order.
"""

import ctypes
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import closing

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def free_port():
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """preexec_fn: get SIGTERM when the runner dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def raise_nofile(want=None):
    """Raise this process's open-files limit: to ``want`` (soft and hard) where that is
    allowed (raising the hard limit needs CAP_SYS_RESOURCE, and at most
    /proc/sys/fs/nr_open), else the soft limit to the hard one. Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if want and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def spawn(argv, nofile=None, **kwargs):
    """Start ``argv`` in its own session, dying with the runner; ``nofile``: the open-files
    limit to ask for (``raise_nofile``)."""

    def prepare():
        _die_with_parent()
        if nofile:
            raise_nofile(nofile)

    return subprocess.Popen(argv, start_new_session=True, preexec_fn=prepare, **kwargs)


def stop_process(process, sig=signal.SIGTERM, timeout=10.0, also=()):
    """Signal ``process`` and wait; SIGKILL it (and the pids in ``also``) if it lingers."""
    if process is None:
        return
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    for pid in also:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# -- /proc ---------------------------------------------------------------------------------


def cpu_times(pid):
    """(utime, stime) of a process in seconds, or (0.0, 0.0) if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat(5)


def cpu_seconds(pid):
    """utime + stime of a process (seconds), or 0.0 if it is gone."""
    return sum(cpu_times(pid))


def rss_kb(pid):
    """VmRSS of a process (kB), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(condition, timeout, message, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


# -- Redis -----------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        self.process = spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--loglevel", "warning",
             "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, f"redis-server on {self.port}")
        return self

    def _answers(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        stop_process(self.process, timeout=5)


# -- PostgreSQL ------------------------------------------------------------------------------


class ScratchPostgres:
    """A database created for one configuration and dropped after it."""

    PREFIX = "chatbench_"

    def __init__(self, host=None, port=None, user=None):
        import psycopg2

        self.host, self.port, self.user = postgres_address(host, port, user)
        self.admin = psycopg2.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=5)
        self.admin.autocommit = True
        self.name = f"{self.PREFIX}{uuid.uuid4().hex[:12]}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def url(self):
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    def backend_pids(self):
        """The server processes serving this database's connections (for their CPU time)."""
        try:
            with self.admin.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,))
                return [row[0] for row in cur.fetchall()]
        except Exception:  # noqa: BLE001 - CPU accounting is best effort
            return []

    def stop(self):
        try:
            with self.admin.cursor() as cur:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (self.name,)
                )
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
        finally:
            self.admin.close()


def postgres_address(host=None, port=None, user=None):
    """Where the benchmark's PostgreSQL is: the arguments, else libpq's PGHOST, PGPORT and
    PGUSER, else 127.0.0.1:5432 as postgres."""
    return (host or os.environ.get("PGHOST", "127.0.0.1"), int(port or os.environ.get("PGPORT", 5432)),
            user or os.environ.get("PGUSER", "postgres"))


def postgres_available(host=None, port=None, user=None):
    host, port, user = postgres_address(host, port, user)
    try:
        import psycopg2

        psycopg2.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not here"
        return False


# -- gunicorn --------------------------------------------------------------------------------


def procfile():
    lines = {}
    with open(os.path.join(PROJECT, "Procfile")) as file:
        for line in file:
            if ":" in line and not line.startswith("#"):
                kind, command = line.split(":", 1)
                lines[kind.strip()] = command.strip()
    return lines


def server_env(port, database_url, redis_url, workers, extra=None):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "WEB_CONCURRENCY": str(workers),
        "SECRET_KEY": "bench-secret",
        "RATE_LIMIT": "0",
        "MAX_CONNECTIONS_PER_ADDRESS": "0",
        "ROOM_CREATE_LIMIT": "0",
        "LOG_LEVEL": "WARNING",
        "GRACEFUL_TIMEOUT": "3",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update({key: str(value) for key, value in (extra or {}).items()})
    return env


def release(database_url, log_path):
    """The Procfile's ``release:`` line (creates the schema) for one database."""
    env = server_env(0, database_url, None, 1)
    with open(log_path, "ab") as log:
        subprocess.run(shlex.split(procfile()["release"]), cwd=PROJECT, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                       preexec_fn=_die_with_parent, timeout=60)


class Server:
    """One gunicorn (master + gevent workers) started by the Procfile's ``web:`` line."""

    def __init__(self, directory, name, database_url, redis_url, workers, extra_env=None, nofile=None):
        self.name = name
        self.nofile = nofile
        self.port = free_port()
        self.workers = workers
        self.log_path = os.path.join(directory, f"{name}-{self.port}.log")
        # Prometheus' multiprocess files of this server go in the scratch directory (and
        # so are removed with it even if the server is killed).
        metrics = os.path.join(directory, f"metrics-{name}")
        os.makedirs(metrics, exist_ok=True)
        self.env = server_env(self.port, database_url, redis_url, workers,
                              {"PROMETHEUS_MULTIPROC_DIR": metrics, **(extra_env or {})})
        self.process = None
        self._pids = []

    host = "127.0.0.1"

    def start(self):
        self._log = open(self.log_path, "ab")
        self.process = spawn(shlex.split(procfile()["web"]), nofile=self.nofile, cwd=PROJECT, env=self.env,
                             stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout=60):
        wait_for(self._healthy, timeout, f"gunicorn {self.name} on {self.port} ({self.log_path})", 0.1)
        wait_for(lambda: len(self.worker_pids(refresh=True)) >= self.workers, timeout, f"{self.name}'s workers")
        return self

    def _healthy(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn {self.name} exited ({self.process.returncode}):\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def worker_pids(self, refresh=False):
        if refresh or not self._pids:
            self._pids = children(self.process.pid) if self.process else []
        return self._pids

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as file:
                return "".join(file.readlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_warnings(self):
        """Lines of the log at WARNING or above (the servers log nothing else), and the last
    line of each traceback (the exception)."""
        try:
            with open(self.log_path, errors="replace") as file:
                return [line.rstrip() for line in file if " WARNING " in line or " ERROR " in line
                        or "Traceback" in line or "[CRITICAL]" in line or EXCEPTION_LINE.match(line)]
        except FileNotFoundError:
            return []

    def stop(self):
        # SIGINT: gunicorn's quick shutdown (no graceful wait for the benchmark's leftovers).
        pids = self.worker_pids(refresh=True) if self.process and self.process.poll() is None else []
        stop_process(self.process, signal.SIGINT, timeout=8, also=pids)
        if getattr(self, "_log", None):
            self._log.close()


class Cluster:
    """``servers`` gunicorn servers of ``workers`` workers each, sharing one database and
    one Redis (when given): a message sent on one server reaches the others via Redis."""

    def __init__(self, directory, name, database_url, redis_url, servers=1, workers=1, extra_env=None, nofile=None):
        self.name = name
        self.directory = directory
        self.database_url = database_url
        self.redis_url = redis_url
        self.servers = [
            Server(directory, f"{name}-s{i}", database_url, redis_url, workers, extra_env, nofile)
            for i in range(servers)
        ]

    def start(self):
        release(self.database_url, os.path.join(self.directory, f"{self.name}-release.log"))
        for server in self.servers:
            server.start()
        for server in self.servers:
            server.wait_ready()
        return self

    def stop(self):
        for server in self.servers:
            server.stop()

    scratch = None  # the ScratchPostgres behind database_url, if any
    client_kind = "ws"  # how the load generator talks to it (bench.clients.KINDS)

    @staticmethod
    def socket_path(label):
        """Where a member of room ``label`` connects."""
        return f"/chat/{label}/"

    def worker_pids(self):
        return [pid for server in self.servers for pid in server.worker_pids()]

    def database_pids(self):
        """PostgreSQL backends of this cluster's database (none for SQLite: it runs inside
        the workers, so its CPU time is part of theirs)."""
        return self.scratch.backend_pids() if self.scratch is not None else []

    def cpu_seconds(self):
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def rss_kb(self):
        return {pid: rss_kb(pid) for pid in self.worker_pids()}

    def warnings(self):
        return [line for server in self.servers for line in server.log_warnings()]

    def describe(self):
        db = "postgresql" if self.database_url.startswith("postgres") else "sqlite"
        per = self.servers[0].workers
        return f"{len(self.servers)} server(s) x {per} worker(s), {db}, {'redis' if self.redis_url else 'no redis'}"


class Resources:
    """Everything started, stopped in reverse order (also on errors and Ctrl-C)."""

    def __init__(self):
        self._items = []

    def add(self, item):
        self._items.append(item)
        return item

    def release(self, item):
        if item in self._items:
            self._items.remove(item)
            self._stop(item)

    @staticmethod
    def _stop(item):
        try:
            if isinstance(item, str):
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.stop()
        except Exception as exc:  # noqa: BLE001 - keep cleaning up the rest
            print(f"cleanup of {item!r} failed: {exc}", file=sys.stderr)

    def close(self):
        # Ignore further Ctrl-C while cleaning up, so nothing is left behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while self._items:
                self._stop(self._items.pop())
        finally:
            signal.signal(signal.SIGINT, previous)
