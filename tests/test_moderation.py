"""Operators: the admin API's security, deleting, locking, blocking and clearing, their
`flask` commands, and retention; in one process (live and browser tests run the same
across servers)."""

import logging
from datetime import timedelta

import pytest

from webapp import create_app, db, retention
from webapp.hub import Hub, Listener
from webapp.models import Message, Room, database, utcnow
from webapp.settings import ConfigError

from .conftest import TEST_CONFIG, _fresh_schema
from .html import parse, rows
from .support import using_db

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def admin_app(app):
    """The app with the admin API on (and locks and blocks re-read on every send)."""
    app.config["ADMIN_TOKEN"] = TOKEN
    app.extensions["chat.moderation"].refresh = 0
    return app


@pytest.fixture
def admin(admin_app):
    return admin_app.test_client()


def post(client, label, message, handle="bob"):
    return client.post(f"/api/rooms/{label}/messages", json={"handle": handle, "message": message})


def ids(client, label, query=""):
    return [m["id"] for m in client.get(f"/api/rooms/{label}/messages{query}").get_json()["messages"]]


ADMIN_ROUTES = [
    ("DELETE", "/api/rooms/lobby/messages/1"),
    ("DELETE", "/api/rooms/lobby/messages"),
    ("PUT", "/api/rooms/lobby/lock"),
    ("DELETE", "/api/rooms/lobby/lock"),
    ("GET", "/api/blocked-addresses"),
    ("PUT", "/api/blocked-addresses/10.0.0.1"),
    ("DELETE", "/api/blocked-addresses/10.0.0.1"),
]


# -- security ---------------------------------------------------------------------------


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
def test_every_admin_route_is_a_404_without_admin_token(client, method, path):
    """README, Moderation: unset ADMIN_TOKEN, every admin route is a 404."""
    client.get("/lobby/")
    post(client, "lobby", "hello")
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == 404
    assert ids(client, "lobby") == [1]


@pytest.mark.parametrize("method, path", ADMIN_ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN}x", TOKEN, "Bearer "])
def test_a_missing_or_wrong_token_is_a_401_and_changes_nothing(admin, method, path, authorization):
    admin.get("/lobby/")
    first = post(admin, "lobby", "hello").get_json()["id"]
    headers = {"Authorization": authorization} if authorization else {}
    response = admin.open(path.replace("/1", f"/{first}"), method=method, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.get_data(as_text=True)
    assert ids(admin, "lobby") == [first]
    assert post(admin, "lobby", "still open").status_code == 201
    assert admin.get("/api/blocked-addresses", headers=AUTH).get_json() == {"addresses": []}


def test_the_session_cookie_of_a_page_is_no_admin_credential(admin):
    """Admin routes take no cookies and no form posts: a browser session is worth nothing."""
    admin.get("/lobby/")  # the client now holds a session cookie
    message = post(admin, "lobby", "hello").get_json()["id"]
    token = parse(admin.get("/lobby/").get_data(as_text=True)).find(
        lambda node: node.attrs.get("name") == "csrf_token").attrs["value"]
    response = admin.delete(f"/api/rooms/lobby/messages/{message}", data={"csrf_token": token, "token": TOKEN})
    assert response.status_code == 401
    assert ids(admin, "lobby") == [message]


@pytest.mark.parametrize("token", ["short", "fifteen-chars-x", "               "])
def test_a_short_admin_token_stops_the_server_at_start(tmp_path, token):
    with pytest.raises(ConfigError, match="ADMIN_TOKEN must be at least 16 characters"):
        create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3", "ADMIN_TOKEN": token})


def test_admin_requests_are_rate_limited(tmp_path):
    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/chat.sqlite3", "ADMIN_TOKEN": TOKEN,
                      "ADMIN_RATE_LIMIT": "5/60"})
    _fresh_schema()
    try:
        client = app.test_client()
        statuses = [client.get("/api/blocked-addresses", headers={"Authorization": "Bearer guess"}).status_code
                    for _ in range(5)]
        assert statuses == [401] * 5
        assert client.get("/api/blocked-addresses", headers=AUTH).status_code == 429  # guesses count
    finally:
        app.extensions["chat.realtime"].stop()
        database.close_all()


def test_every_admin_action_is_one_log_line_with_a_token_fingerprint(admin, caplog):
    admin.get("/lobby/")
    message = post(admin, "lobby", "hello").get_json()["id"]
    caplog.set_level(logging.INFO)
    assert admin.delete(f"/api/rooms/lobby/messages/{message}", headers=AUTH).status_code == 204
    assert admin.put("/api/rooms/lobby/lock", headers=AUTH).status_code == 200
    assert admin.put("/api/blocked-addresses/10.1.2.3", headers=AUTH).status_code == 200
    actions = [r for r in caplog.records if getattr(r, "event", None) == "admin_action"]
    assert [(r.action, r.target) for r in actions] == [
        ("delete_message", f"lobby/{message}"), ("lock_room", "lobby"), ("block_address", "10.1.2.3")]
    assert all(r.actor.startswith("token:") and len(r.actor) == len("token:") + 12 for r in actions)
    assert TOKEN not in caplog.text


# -- deleting -----------------------------------------------------------------------------


def test_a_deleted_message_is_gone_from_page_history_and_api(admin):
    """README, Moderation: a deleted message is gone from pages, embeds, history and the API."""
    admin.get("/lobby/")
    kept, gone, last = (post(admin, "lobby", f"m{n}").get_json()["id"] for n in range(3))
    assert admin.delete(f"/api/rooms/lobby/messages/{gone}", headers=AUTH).status_code == 204
    assert ids(admin, "lobby") == [kept, last]
    assert ids(admin, "lobby", f"?after={kept}") == [last]
    assert ids(admin, "lobby", f"?before={last}") == [kept]
    for page in ("/lobby/", "/lobby/embed", f"/lobby/?before={last}"):
        assert gone not in [row[0] for row in rows(admin.get(page).get_data(as_text=True))]
    with using_db(admin.application):
        assert Room.by_label("lobby").message_count == 2
    assert admin.delete(f"/api/rooms/lobby/messages/{gone}", headers=AUTH).status_code == 404  # already
    assert admin.delete("/api/rooms/lobby/messages/999", headers=AUTH).status_code == 404
    assert admin.delete(f"/api/rooms/lobby/messages/{2**63}", headers=AUTH).status_code == 404  # past any id
    assert admin.delete(f"/api/rooms/nowhere/messages/{kept}", headers=AUTH).status_code == 404
    assert admin.delete(f"/api/rooms/lobby/messages/{kept}", headers=AUTH).status_code == 204


def test_a_deleted_newest_id_is_never_handed_out_again(any_app):
    """README, Moderation: ids are never reused (SQLite would reuse a deleted largest id
    without AUTOINCREMENT)."""
    any_app.config["ADMIN_TOKEN"] = TOKEN
    client = any_app.test_client()
    client.get("/reuse/")
    first, newest = (post(client, "reuse", f"m{n}").get_json()["id"] for n in range(2))
    assert client.delete(f"/api/rooms/reuse/messages/{newest}", headers=AUTH).status_code == 204
    again = post(client, "reuse", "after").get_json()["id"]
    assert again > newest
    with using_db(any_app):
        assert Room.by_label("reuse").last_message_id == again


def test_clearing_a_room_deletes_its_whole_history(admin):
    for label in ("lobby", "other"):
        admin.get(f"/{label}/")
        for n in range(3):
            post(admin, label, f"m{n}")
    response = admin.delete("/api/rooms/lobby/messages", headers=AUTH)
    assert response.status_code == 200 and response.get_json() == {"room": "lobby", "deleted": 3}
    assert ids(admin, "lobby") == [] and len(ids(admin, "other")) == 3
    assert rows(admin.get("/lobby/").get_data(as_text=True)) == []
    assert post(admin, "lobby", "fresh start").get_json()["id"] > 6


# -- locking and blocking -------------------------------------------------------------------


def test_a_locked_room_refuses_sends_with_a_reason_and_unlocking_restores(admin, csrf_token):
    admin.get("/lobby/")
    assert admin.put("/api/rooms/lobby/lock", headers=AUTH).get_json() == {"room": "lobby", "locked": True}
    api = post(admin, "lobby", "hello")
    assert api.status_code == 403 and "locked" in api.get_json()["error"]
    token = csrf_token(admin)
    form = admin.post("/lobby/messages", data={"handle": "bob", "message": "hi", "csrf_token": token})
    page = parse(form.get_data(as_text=True))
    assert form.status_code == 403 and "locked" in page.by_id("chat-error").text()
    assert "read-only" in page.by_id("room-locked").text()  # the page says so
    htmx = admin.post("/lobby/messages", data={"handle": "bob", "message": "hi", "csrf_token": token},
                      headers={"HX-Request": "true"})
    assert htmx.status_code == 403 and "locked" in htmx.get_data(as_text=True)
    rename = admin.post("/lobby/name", data={"name": "Taken over", "csrf_token": token})
    assert rename.status_code == 403 and "locked" in rename.get_data(as_text=True)
    assert ids(admin, "lobby") == []
    assert admin.get("/api/rooms").get_json()["rooms"][0]["name"] == "lobby"
    assert admin.delete("/api/rooms/lobby/lock", headers=AUTH).get_json() == {"room": "lobby", "locked": False}
    assert post(admin, "lobby", "hello").status_code == 201
    assert "hidden" in parse(admin.get("/lobby/").get_data(as_text=True)).by_id("room-locked").attrs  # hidden
    assert admin.put("/api/rooms/nowhere/lock", headers=AUTH).status_code == 404


def test_a_blocked_address_may_not_send_until_unblocked(admin):
    admin.get("/lobby/")
    assert admin.put("/api/blocked-addresses/127.0.0.1", headers=AUTH).get_json() == {
        "address": "127.0.0.1", "blocked": True}
    assert admin.get("/api/blocked-addresses", headers=AUTH).get_json() == {"addresses": ["127.0.0.1"]}
    refused = post(admin, "lobby", "hello")
    assert refused.status_code == 403 and "blocked" in refused.get_json()["error"]
    assert admin.put("/api/blocked-addresses/not-an-ip", headers=AUTH).status_code == 422
    assert admin.delete("/api/blocked-addresses/127.0.0.1", headers=AUTH).status_code == 200
    assert admin.delete("/api/blocked-addresses/127.0.0.1", headers=AUTH).status_code == 404
    assert post(admin, "lobby", "hello").status_code == 201


def test_the_flask_commands_do_the_same(admin_app):
    client, runner = admin_app.test_client(), admin_app.test_cli_runner()
    client.get("/lobby/")
    first, second = (post(client, "lobby", f"m{n}").get_json()["id"] for n in range(2))

    def run(*args):
        result = runner.invoke(args=list(args))
        return result.exit_code, result.output

    assert run("delete-message", "lobby", str(first)) == (0, f"deleted message {first} of lobby\n")
    assert run("delete-message", "lobby", str(first))[0] == 1  # already gone
    assert ids(client, "lobby") == [second]
    assert run("lock-room", "lobby")[0] == 0
    assert post(client, "lobby", "x").status_code == 403
    assert run("unlock-room", "lobby")[0] == 0
    assert run("block-address", "127.0.0.1")[0] == 0
    assert post(client, "lobby", "x").status_code == 403
    assert run("unblock-address", "127.0.0.1")[0] == 0
    assert post(client, "lobby", "x").status_code == 201
    assert run("clear-room", "lobby") == (0, "deleted 2 message(s) of lobby\n")
    assert run("lock-room", "nowhere")[0] == 1


# -- retention ---------------------------------------------------------------------------------


def _age(app, message_ids, days):
    with using_db(app):
        Message.update(timestamp=utcnow() - timedelta(days=days)).where(Message.id.in_(message_ids)).execute()


def test_retention_deletes_old_messages_in_batches_and_resuming_still_works(admin_app):
    client = admin_app.test_client()
    client.get("/lobby/")
    sent = [post(client, "lobby", f"m{n}").get_json()["id"] for n in range(7)]
    _age(admin_app, sent[:5], days=3)
    with admin_app.app_context():
        assert retention.purge(days=2, batch_size=2) == 5
        assert retention.purge(days=2, batch_size=2) == 0
    assert ids(client, "lobby") == sent[5:]
    assert ids(client, "lobby", f"?after={sent[0]}") == sent[5:]  # resuming from before the horizon
    with using_db(admin_app):
        assert Room.by_label("lobby").message_count == 2


def test_retention_skips_while_another_process_holds_the_lease(admin_app):
    client = admin_app.test_client()
    client.get("/lobby/")
    _age(admin_app, [post(client, "lobby", "old").get_json()["id"]], days=3)
    with admin_app.app_context(), db.connection():
        assert retention._take_lease("another process")
        assert retention.purge(days=1, batch_size=10) is None
        assert len(ids(client, "lobby")) == 1
        retention._give_back("another process")
        assert retention.purge(days=1, batch_size=10) == 1
    result = admin_app.test_cli_runner().invoke(args=["purge-messages", "--days", "1"])
    assert result.exit_code == 0 and "deleted 0 message(s)" in result.output


# -- the hub: a deleted id is not a gap ----------------------------------------------------------


class Collect(Listener):
    def __init__(self, kinds=frozenset({"delete"})):
        super().__init__("json", kinds)
        self.got = []

    def write(self, data):
        self.got.append(data)

    def close(self, code, reason):
        pass


def test_a_deleted_id_is_caught_up_once_not_waited_for():
    """README, Moderation: a deleted id is not a gap (no catch-up loop, no reset)."""
    requests = []
    hub = Hub(lambda fmt, kind, payload: (kind, payload), requests.append)
    listener = Collect()
    hub.join(listener, "r", 1, latest_id=10)
    hub.finish_replay(listener)
    channel = hub.channels["r"]
    # 11 was stored and deleted before this worker saw it; the database says 11 is the newest.
    channel.known_latest = 11
    hub.catch_up(channel, [], stored=11)
    assert channel.last_id == 11 and not channel.pending
    hub.receive("r", 12, 11, {"id": 12})
    assert listener.got == [("message", {"id": 12})]


def test_a_deletion_during_a_replay_is_written_after_it():
    hub = Hub(lambda fmt, kind, payload: (kind, payload), lambda channel: None)
    listener = Collect()
    hub.join(listener, "r", 1, latest_id=5, after=3)
    hub.broadcast("r", "delete", {"id": 4})  # while the replay (which may hold 4) is written
    listener.write(("message", {"id": 4}))
    listener.sent_id = 5
    hub.finish_replay(listener)
    assert listener.got == [("message", {"id": 4}), ("delete", {"id": 4})]


def test_a_message_whose_deletion_overtook_it_is_never_shown():
    """A worker hears of a deletion (or a clear) before the message itself (it waited for
    an earlier one, or came again after a Redis outage): it is skipped, the order kept."""
    hub = Hub(lambda fmt, kind, payload: (kind, payload), lambda channel: None)
    listener = Collect(frozenset({"delete", "clear"}))
    hub.join(listener, "r", 1, latest_id=1)
    hub.finish_replay(listener)
    hub.receive("r", 3, 2, {"id": 3})  # waits for 2
    hub.broadcast("r", "delete", {"id": 3})
    hub.receive("r", 2, 1, {"id": 2})
    hub.broadcast("r", "clear", {"through": 5})
    hub.receive("r", 5, 4, {"id": 5})
    hub.receive("r", 4, 3, {"id": 4})
    hub.receive("r", 6, 5, {"id": 6})
    assert [payload for kind, payload in listener.got if kind == "message"] == [{"id": 2}, {"id": 6}]


def test_retention_and_its_lease_on_both_databases(any_app):
    client = any_app.test_client()
    label = f"ret-{id(any_app) % 100000}"  # the PostgreSQL database is shared by tests
    client.get(f"/{label}/")
    sent = [post(client, label, f"m{n}").get_json()["id"] for n in range(4)]
    _age(any_app, sent[:3], days=3)
    with any_app.app_context(), db.connection():
        assert retention._take_lease("another process")
        assert not retention._take_lease("a third one")
        assert retention.purge(days=1, batch_size=2) is None
        retention._give_back("another process")
        assert retention.purge(days=1, batch_size=2) == 3
    assert ids(client, label) == sent[3:]
