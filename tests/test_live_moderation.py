"""Operators against real servers: two gunicorn servers sharing a database and the tests'
Redis. A deletion reaches every kind of open connection on the other server at once;
locks and blocks hold on every path and every server; retention runs one process at a
time while several race for it."""

import json
import shlex
import subprocess
import threading
import time
from datetime import timedelta

import pytest
import requests

from .html import csrf_token, rows
from .support import PROJECT, LiveServer, procfile, wait_for
from .wsclient import WSClient

pytestmark = pytest.mark.live

TOKEN = "live-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REFRESH = 0.5  # MODERATION_REFRESH of these servers: how stale a worker's lists may be


@pytest.fixture
def pair(live, redis_server, tmp_path):
    """Two servers (one worker each) sharing a SQLite file and Redis, admin API on."""
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {"REDIS_URL": redis_server.url, "ADMIN_TOKEN": TOKEN, "MODERATION_REFRESH": str(REFRESH)}
    return live("one", database_url=database, **env), live("two", database_url=database, **env)


def flask_command(server, *args):
    """A `flask` command run at a shell next to ``server`` (same database and Redis)."""
    return subprocess.run(["flask", "--app", "webapp", *args], cwd=PROJECT, env=server.env,
                          capture_output=True, text=True, timeout=60)


def api_ids(server, label, query=""):
    return [m["id"] for m in server.get(f"/api/rooms/{label}/messages{query}").json()["messages"]]


def next_frame(ws, wanted, timeout=5):
    """The next frame of a socket containing ``wanted`` (others, like presence, skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if wanted in frame:
            return frame


def next_event(stream, kind, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        event = stream.next_event(timeout=max(0.01, deadline - time.monotonic()))
        if event.event == kind:
            return event


def test_a_deletion_reaches_every_open_connection_on_the_other_server(pair):
    """README, Moderation: open pages, embeds, JSON sockets (?events=deletes) and event
    streams on every server drop a deleted message at once; a deleted id is not a gap."""
    one, two = pair
    one.open_room("mod")
    first, doomed, newest = (one.post_json("mod", "alice", f"m{n}").json()["id"] for n in range(3))
    json_socket = WSClient(two.ws_url("/chat/mod/?events=deletes"))
    plain = two.socket("mod")  # did not ask for deletions
    stream = two.events("mod")
    htmx = WSClient(two.ws_url("/ws/mod/"))
    next_frame(htmx, 'id="presence"')

    assert requests.delete(f"{one.url}/api/rooms/mod/messages/{doomed}", headers=AUTH, timeout=5).status_code == 204
    assert json.loads(next_frame(json_socket, "deleted")) == {"deleted": doomed}
    event = next_event(stream, "delete")
    assert event.data == str(doomed)
    assert f'<div id="message-{doomed}" hx-swap-oob="delete"></div>' in next_frame(htmx, "hx-swap-oob")

    # The newest deleted (from a shell this time): the next message follows it at once,
    # without a reset, and the seed's plain client only ever sees messages.
    result = flask_command(one, "delete-message", "mod", str(newest))
    assert result.returncode == 0, result.stderr
    assert json.loads(next_frame(json_socket, "deleted")) == {"deleted": newest}
    assert next_event(stream, "delete").data == str(newest)
    after = two.post_json("mod", "bob", "after the deletions").json()["id"]
    assert after > newest
    assert json.loads(next_frame(json_socket, '"id"'))["id"] == after
    assert next_event(stream, "message").id == str(after)
    assert [frame["id"] for frame in [plain.recv()]] == [after]

    # Gone for good: history, API, pages, embeds and replay on both servers.
    for server in (one, two):
        assert api_ids(server, "mod") == [first, after]
        for page in ("/mod/", "/mod/embed"):
            assert [row[0] for row in rows(server.get(page).text)] == [first, after]
        replay = server.socket("mod", last_id=0)
        assert [m["id"] for m in replay.collect(2)] == [first, after]
        resumed = server.events("mod", last_id=first)
        assert [e.id for e in resumed.messages(1)] == [str(after)]
        with pytest.raises(TimeoutError):
            replay.recv(timeout=0.3)
        assert all(e.event != "reset" for e in resumed.stream.events)
        replay.close()
        resumed.close()
    for client in (json_socket, plain, stream, htmx):
        client.close()


def htmx_verdict(ws):
    """What the page's socket answered a send with: the error line, or None for the row."""
    while True:
        frame = ws.recv(timeout=5)
        if 'id="chat-error"' in frame:
            return frame
        if 'hx-swap-oob="beforeend:#chat"' in frame:
            return None


def refused_on_api(server, label):
    """Whether the API refuses a send (403); stored (201) is the only other answer allowed
    (a 429 from polling too fast must not pass for "accepted")."""
    response = server.post_json(label, "eve", "probe")
    assert response.status_code in (201, 403), (response.status_code, response.text)
    return response.status_code == 403


def _send_everywhere(server, label, session, token):
    """Try to send on every path of one server: {path: the refusal (or None if stored)}."""
    refusals = {}
    api = server.post_json(label, "eve", "via the API")
    refusals["api"] = None if api.status_code == 201 else api.json().get("error")
    form = session.post(f"{server.url}/{label}/messages", data={"handle": "eve", "message": "via the form",
                                                                 "csrf_token": token}, allow_redirects=False)
    refusals["form"] = None if form.is_redirect else form.text
    with WSClient(server.ws_url(f"/chat/{label}/")) as ws:
        ws.send(json.dumps({"handle": "eve", "message": "via the JSON socket"}))
        frame = json.loads(ws.recv())
        refusals["json socket"] = frame.get("error")
    with WSClient(server.ws_url(f"/ws/{label}/")) as ws:
        ws.send(json.dumps({"handle": "eve", "message": "via the htmx socket", "HEADERS": {"HX-Request": "true"}}))
        refusals["htmx socket"] = htmx_verdict(ws)
    return refusals


def test_a_locked_room_refuses_sends_on_every_path_and_server(pair):
    """README, Moderation: a locked room refuses the form, both sockets and the API, on
    every server, with a readable reason shown on the page; unlocking restores."""
    one, two = pair
    one.open_room("quiet")
    sessions = {}
    for server in (one, two):
        session = requests.Session()
        sessions[server] = (session, csrf_token(session.get(f"{server.url}/quiet/").text))
    watcher = WSClient(two.ws_url("/chat/quiet/?events=lock"))  # told of locks as they happen
    assert requests.put(f"{one.url}/api/rooms/quiet/lock", headers=AUTH, timeout=5).json()["locked"] is True
    assert json.loads(watcher.recv(timeout=5)) == {"locked": True}
    time.sleep(REFRESH + 0.5)
    for server in (one, two):
        wait_for(lambda server=server: refused_on_api(server, "quiet"), timeout=10, message="locked")
        refusals = _send_everywhere(server, "quiet", *sessions[server])
        assert all(reason and "locked" in reason for reason in refusals.values()), refusals
        assert _lock_notice(server.get("/quiet/").text) == "shown"
    assert api_ids(one, "quiet") == []

    result = flask_command(two, "unlock-room", "quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads(watcher.recv(timeout=5)) == {"locked": False}
    watcher.close()
    time.sleep(REFRESH + 0.5)  # every worker's copy of the lists is now newer than the change
    for server in (one, two):
        wait_for(lambda server=server: not refused_on_api(server, "quiet"), timeout=10, message="unlocked")
        before = len(api_ids(server, "quiet", "?limit=200"))
        assert _send_everywhere(server, "quiet", *sessions[server]) == dict.fromkeys(
            ("api", "form", "json socket", "htmx socket"))
        assert len(api_ids(server, "quiet", "?limit=200")) == before + 4
        assert _lock_notice(server.get("/quiet/").text) == "hidden"


def _lock_notice(page):
    """Whether the page shows its read-only notice (it is always there, hidden when open)."""
    (notice,) = [line for line in page.splitlines() if 'id="room-locked"' in line]
    return "hidden" if " hidden>" in notice else "shown"


def test_a_blocked_address_is_refused_on_every_server(pair):
    one, two = pair
    one.open_room("open")
    response = requests.put(f"{two.url}/api/blocked-addresses/127.0.0.1", headers=AUTH, timeout=5)
    assert response.json() == {"address": "127.0.0.1", "blocked": True}
    started = time.monotonic()
    for server in (one, two):
        wait_for(lambda server=server: refused_on_api(server, "open"), timeout=10, message="blocked")
        assert "blocked" in server.post_json("open", "eve", "hello").json()["error"]
    assert time.monotonic() - started < 5  # MODERATION_REFRESH is 0.5 s here
    with WSClient(one.ws_url("/chat/open/")) as ws:
        ws.send(json.dumps({"handle": "eve", "message": "over the socket"}))
        assert "blocked" in json.loads(ws.recv())["error"]
    assert api_ids(two, "open") == []
    assert flask_command(one, "unblock-address", "127.0.0.1").returncode == 0
    for server in (one, two):
        wait_for(lambda server=server: server.post_json("open", "eve", "hello").status_code == 201, timeout=10,
                 message="unblocked")


def test_admin_tokens_wrong_missing_and_short(pair, tmp_path):
    one, _ = pair
    one.open_room("safe")
    message = one.post_json("safe", "a", "keep me").json()["id"]
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": f"Basic {TOKEN}"}):
        response = requests.delete(f"{one.url}/api/rooms/safe/messages/{message}", headers=headers, timeout=5)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert api_ids(one, "safe") == [message]
    short = LiveServer(tmp_path, env={"ADMIN_TOKEN": "too-short"}, name="short")
    for line in (procfile()["release"], procfile()["web"]):
        result = subprocess.run(shlex.split(line), cwd=PROJECT, env=short.env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode != 0
        assert "ADMIN_TOKEN must be at least 16 characters" in result.stdout + result.stderr


def test_retention_runs_in_one_process_at_a_time_across_racing_servers(live, redis_server, tmp_path):
    """README, Retention: old messages are deleted in batches by one process at a time,
    across servers (four workers and a cron command racing); resuming from before the
    horizon gets what remains."""
    from webapp import create_app, db
    from webapp.models import Message, Room, database, utcnow

    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "x"})
    try:
        with app.app_context():
            db.create_schema()
            with db.connection(), database.atomic():
                room = Room.create(label="old", name="old")
                long_ago = utcnow() - timedelta(days=10)
                Message.insert_many([{"room": room.id, "handle": "h", "message": f"old {n}", "timestamp": long_ago}
                                     for n in range(3000)]).execute()
                Room.update(message_count=3000, last_message_id=3000).where(Room.id == room.id).execute()
    finally:
        app.extensions["chat.realtime"].stop()
        database.close_all()
    env = {"REDIS_URL": redis_server.url, "WEB_CONCURRENCY": 2, "MESSAGE_RETENTION_DAYS": 1,
           "RETENTION_INTERVAL": 1, "RETENTION_BATCH": 25, "LOG_FORMAT": "json"}
    one = live("one", database_url=url, **env)
    cron = []
    threading.Thread(target=lambda: cron.append(flask_command(one, "purge-messages"))).start()
    two = live("two", database_url=url, **env)
    kept = [two.post_json("old", "new", f"recent {n}").json()["id"] for n in range(3)]
    wait_for(lambda: api_ids(one, "old", "?limit=200") == kept, timeout=60, message="old messages purged")
    wait_for(lambda: cron, timeout=30, message="the cron command")
    assert cron[0].returncode == 0, cron[0].stderr

    runs = []
    for log in (one.log(), two.log(), cron[0].stderr):
        for line in log.splitlines():
            if '"retention_purged"' in line:
                entry = json.loads(line[line.index("{"):])
                runs.append((entry["started"], entry["finished"], entry["deleted"], entry["holder"]))
    assert sum(run[2] for run in runs) == 3000
    runs.sort()
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier[1] <= later[0], f"two purges overlapped: {earlier} and {later}"
    # A client resuming from before the horizon gets what remains, not an error.
    socket = one.socket("old", last_id=1)
    assert [m["id"] for m in socket.collect(3)] == kept
    socket.close()
    assert one.get("/api/rooms").json()["rooms"][0]["messages"] == 3
