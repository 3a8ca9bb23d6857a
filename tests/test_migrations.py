"""Upgrades in place: a database made and filled by the first release (commit ec2ae6e,
its own code) is migrated by today's release step, keeping every message, handle,
timestamp, id and room name; two release steps at once; on SQLite and PostgreSQL."""

import os
import shlex
import subprocess
import sys
import textwrap

import psycopg2
import pytest

from .support import BIN, PROJECT, ScratchPostgres, procfile

pytestmark = pytest.mark.live

FIRST_RELEASE = "ec2ae6e"

# Run inside the first release's tree: rooms and messages through its own models.
FILL = textwrap.dedent("""
    from webapp import create_app, chat
    app = create_app()
    with app.app_context():
        for label, name in (("lobby", "The lobby ✓"), ("quiet-river-4821", "quiet-river-4821")):
            room = chat.open_room(label)
            if name != label:
                chat.rename(room, name, chat.Sender("127.0.0.1"))
        for n, (label, handle, text) in enumerate([
            ("lobby", "alice", "hello"), ("lobby", "bob", "two\\nlines\\tand a tab"),
            ("quiet-river-4821", "Zoë", "<b>not bold</b> ✓"), ("lobby", "alice", "x" * 2000),
            ("quiet-river-4821", "carol", "last one"),
        ]):
            chat.send(chat.find_room(label), handle, text, chat.Sender(f"10.0.0.{n}"))
""")

ROWS = (
    "SELECT m.id, r.label, r.name, m.handle, m.message, m.timestamp FROM message m "
    "JOIN room r ON r.id = m.room_id ORDER BY m.id"
)
ROOMS = "SELECT id, label, name, created, last_activity, last_message_id, message_count FROM room ORDER BY id"


def _env(database_url, **extra):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "DATABASE_URL": database_url,
           "SECRET_KEY": "test", **extra}
    env.pop("REDIS_URL", None)
    env.pop("WEB_CONCURRENCY", None)
    return env


@pytest.fixture(scope="module")
def first_release(tmp_path_factory):
    """The first release's source tree, from git history."""
    tree = tmp_path_factory.mktemp("first-release")
    archive = subprocess.run(["git", "-C", PROJECT, "archive", FIRST_RELEASE], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def _made_by_first_release(tree, database_url):
    """Create and fill a database with the first release's release step and models."""
    env = _env(database_url)
    subprocess.run(shlex.split(procfile()["release"]), cwd=tree, env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", FILL], cwd=tree, env=env, check=True, capture_output=True)


def _release_now(database_url):
    """Today's release step (the Procfile's release: line), as a platform runs it."""
    return subprocess.Popen(shlex.split(procfile()["release"]), cwd=PROJECT, env=_env(database_url),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _query(database_url, sql):
    if database_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(database_url.split("///", 1)[1]) as conn:
            return [tuple(str(value) for value in row) for row in conn.execute(sql)]
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall()
    conn.close()
    return [tuple(str(value) for value in row) for row in rows]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/upgrade.sqlite3"
        return
    scratch = ScratchPostgres()
    yield scratch.url
    scratch.drop()


def test_a_first_release_database_upgrades_in_place_keeping_everything(first_release, database_url):
    """README, Upgrading: two release steps at once upgrade a first-release database in
    place; every message, handle, timestamp, id and room name is kept."""
    _made_by_first_release(first_release, database_url)
    messages_before, rooms_before = _query(database_url, ROWS), _query(database_url, ROOMS)
    assert len(messages_before) == 5 and len(rooms_before) == 2

    steps = [_release_now(database_url) for _ in range(2)]  # two deploys racing
    outputs = [step.communicate(timeout=120)[0] for step in steps]
    assert [step.returncode for step in steps] == [0, 0], outputs
    applied = sorted(line for output in outputs for line in output.splitlines() if line.startswith("applied"))
    assert applied == ["applied migration 0001_initial", "applied migration 0002_message_ids_never_reused",
                       "applied migration 0003_moderation"]  # each once, by one of the two

    assert _query(database_url, ROWS) == messages_before
    assert _query(database_url, ROOMS) == rooms_before
    assert {row[0] for row in _query(database_url, "SELECT locked FROM room")} <= {"0", "False"}
    versions = _query(database_url, "SELECT version FROM schema_migration ORDER BY version")
    assert versions == [("1",), ("2",), ("3",)]

    again = _release_now(database_url)
    output = again.communicate(timeout=60)[0]
    assert again.returncode == 0 and "applied" not in output and "schema ready" in output  # idempotent

    # The upgraded database works with today's code, and a deleted newest id stays unused.
    newest = int(messages_before[-1][0])
    script = textwrap.dedent(f"""
        from webapp import create_app, chat, moderation
        app = create_app({{"ADMIN_TOKEN": "{'t' * 20}"}})
        with app.app_context():
            moderation.delete_message("quiet-river-4821", {newest}, "test", lambda *args: None)
            print(chat.send(chat.find_room("quiet-river-4821"), "dave", "after", chat.Sender("10.0.0.9")).id)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=_env(database_url),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) > newest
    assert [row[0] for row in _query(database_url, ROWS)] == [row[0] for row in messages_before[:-1]] + [
        result.stdout.strip().splitlines()[-1]]


def test_two_release_steps_at_once_on_a_fresh_database(database_url):
    steps = [_release_now(database_url) for _ in range(3)]
    outputs = [step.communicate(timeout=120)[0] for step in steps]
    assert [step.returncode for step in steps] == [0, 0, 0], outputs
    assert _query(database_url, "SELECT version FROM schema_migration ORDER BY version") == [("1",), ("2",), ("3",)]
