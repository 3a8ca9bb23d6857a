"""Fixtures, layered like the app: an app and its client; a database of each kind; a Redis
of the tests' own; real gunicorn servers. No mocks where the real part can run here.

The test process is patched by gevent like a gunicorn worker, so the app's greenlets
(broker loops, hub) run here exactly as in production.
"""

from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402

from webapp import create_app, db  # noqa: E402
from webapp.models import MODELS, database  # noqa: E402

from .html import csrf_token as csrf_token_in  # noqa: E402
from .rediscluster import RedisCluster  # noqa: E402
from .support import LiveServer, RedisServer, ScratchPostgres  # noqa: E402

TEST_CONFIG = {
    "SECRET_KEY": "test",
    "REDIS_URL": None,
    "WEB_CONCURRENCY": 1,
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session")
def postgres():
    """A scratch PostgreSQL database for the whole run, dropped at the end."""
    scratch = ScratchPostgres()
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
    """Start real gunicorn servers: ``live(**env)``; all are stopped after the test."""
    servers = []

    def start(name="server", database_url=None, port=None, healthy=True, **env):
        server = LiveServer(tmp_path, env=env, database_url=database_url, port=port, name=name)
        servers.append(server)
        return server.start(healthy=healthy)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real Redis Cluster (three masters, three replicas) for the whole run; a test that
    kills a master starts it again, so the next test finds the cluster whole."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()
