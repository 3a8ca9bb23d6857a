"""Fixtures, layered like the app: an app and its client; a database of each kind; a Redis
of the tests' own; real gunicorn servers. No mocks where the real part can run here.

The test process is patched by gevent like a gunicorn worker, so the app's greenlets
(broker loops, hub) run here exactly as in production.
"""

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import pytest  # noqa: E402

from webapp import create_app, db  # noqa: E402
from webapp.models import MODELS, database  # noqa: E402

from . import chaos  # noqa: E402
from .html import csrf_token as csrf_token_in  # noqa: E402
from .rediscluster import RedisCluster  # noqa: E402
from .support import LiveServer, RedisServer, ScratchPostgres, shared_postgres, unique_prefix  # noqa: E402

TEST_CONFIG = {
    "SECRET_KEY": "test",
    "REDIS_URL": None,
    "WEB_CONCURRENCY": 1,
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def postgres_server():
    """The tests' own PostgreSQL server (a fresh cluster on a free port, never the
    machine's), stopped and deleted at the end of the run."""
    server = shared_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(postgres_server):
    """A scratch PostgreSQL database for the whole run (``.url``), dropped at the end."""
    scratch = ScratchPostgres(postgres_server)
    yield scratch
    scratch.drop()


def _fresh_schema():
    with database.connection_context():
        database.drop_tables(MODELS, safe=True)
    db.create_schema()


@pytest.fixture
def app(tmp_path):
    """An app on a fresh SQLite file, with the in-process broker."""
    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/chat.sqlite3"})
    _fresh_schema()
    yield app
    app.extensions["chat.realtime"].stop()
    database.close_all()


@pytest.fixture(params=["sqlite", "postgres"])
def any_app(request, tmp_path):
    """The same app on SQLite and on PostgreSQL (storage tests run against both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/chat.sqlite3"
    else:
        url = request.getfixturevalue("postgres").url
    app = create_app({**TEST_CONFIG, "DATABASE_URL": url})
    _fresh_schema()
    yield app
    app.extensions["chat.realtime"].stop()
    database.close_all()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def csrf_token():
    """Read the CSRF token out of a page the test client fetched."""

    def token(client, path="/lobby/"):
        return csrf_token_in(client.get(path).get_data(as_text=True))

    return token


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of the tests' own, shared by tests that do not stop it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server this test alone may kill and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def live(tmp_path):
    """Start real gunicorn servers: ``live(**env)``; all are stopped after the test. The
    servers of one test share a Redis prefix of their own (a test's presence entries,
    connection counts and channels never meet another's)."""
    servers = []
    prefix = unique_prefix()

    def start(name="server", database_url=None, port=None, healthy=True, **env):
        env.setdefault("REDIS_CHANNEL_PREFIX", prefix)
        server = LiveServer(tmp_path, env=env, database_url=database_url, port=port, name=name)
        servers.append(server)
        return server.start(healthy=healthy)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _participants_stopped():
    """Stop every chat client a test started (no reader reconnects into later tests), and
    fail the test if one of them saw something it should not have (an assertion in a
    greenlet cannot fail the test by itself)."""
    yield
    problems = chaos.stop_all()
    assert not problems, "chat clients saw: " + "; ".join(problems)


@pytest.fixture(autouse=True)
def _greenlet_failures_fail_the_test():
    """An exception that ends a greenlet is only printed by gevent: one raised by a test's
    own greenlet (a pump, a chatter), or any failed ``assert`` in a greenlet, fails the
    test instead."""
    hub = gevent.get_hub()
    original = hub.handle_error
    failures = []

    def handle_error(context, kind, value, traceback):
        run = getattr(context, "_run", None)
        if isinstance(context, gevent.Greenlet) and (
            issubclass(kind, AssertionError) or getattr(run, "__module__", "").startswith("tests")
        ):
            failures.append(f"{getattr(run, '__qualname__', context)!s}: {kind.__name__}: {value}")
        return original(context, kind, value, traceback)

    hub.handle_error = handle_error
    yield
    del hub.handle_error
    assert not failures, "a greenlet failed: " + "; ".join(failures)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster (three masters, three replicas) for the whole run; a test that
    kills a master starts it again, so the next test finds the cluster whole."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
