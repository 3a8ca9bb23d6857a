"""The JSON API, per the contract: rooms, paged history, posting for scripts."""

import json
from datetime import datetime

import pytest


def send(client, label, handle="bot", message="hi", **kwargs):
    return client.post(f"/api/rooms/{label}/messages", json={"handle": handle, "message": message}, **kwargs)


def history(client, label, query=""):
    response = client.get(f"/api/rooms/{label}/messages{query}")
    return response.status_code, response.get_json()


@pytest.fixture
def lobby(client):
    client.get("/lobby/")
    return "lobby"


def test_post_returns_the_stored_message(client, lobby):
    response = send(client, lobby, handle="  alice ", message="hello\nworld")
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"id", "room", "handle", "message", "timestamp"}
    assert body["room"] == "lobby" and body["handle"] == "alice" and body["message"] == "hello\nworld"
    assert isinstance(body["id"], int)
    assert datetime.fromisoformat(body["timestamp"]).utcoffset().total_seconds() == 0
    assert history(client, lobby)[1]["messages"] == [body]


def test_ids_grow_in_the_order_messages_are_stored(client, lobby):
    ids = [send(client, lobby, message=f"m{n}").get_json()["id"] for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_post_needs_no_csrf_token_but_json(client, lobby):
    form = client.post(f"/api/rooms/{lobby}/messages", data={"handle": "a", "message": "b"})
    assert form.status_code == 415 and "application/json" in form.get_json()["error"]
    text = client.post(f"/api/rooms/{lobby}/messages", data='{"handle":"a","message":"b"}', content_type="text/plain")
    assert text.status_code == 415
    assert history(client, lobby)[1]["messages"] == []


@pytest.mark.parametrize(
    "body, status",
    [
        ("not json", 400),
        ("[1, 2]", 400),
        ('"text"', 400),
        ("null", 400),
        ('{"handle": "a"}', 400),
        ('{"handle": "a", "message": "b", "room": "x"}', 400),
        ('{"handle": "", "message": "b"}', 422),
        ('{"handle": "a", "message": "   "}', 422),
        ('{"handle": "a", "message": 5}', 422),
        ('{"handle": "' + "h" * 51 + '", "message": "b"}', 422),
        ('{"handle": "a", "message": "' + "m" * 2001 + '"}', 422),
        ('{"handle": "a", "message": "nul \\u0000"}', 422),
        ('{"handle": "a", "message": "lone \\ud800"}', 422),
        ("[" * 100000 + "]" * 100000, 400),
    ],
)
def test_bad_bodies_get_a_reason_and_store_nothing(client, lobby, body, status):
    response = client.post(f"/api/rooms/{lobby}/messages", data=body, content_type="application/json")
    assert response.status_code in (status, 413)
    assert response.get_json()["error"]
    assert history(client, lobby)[1]["messages"] == []


def test_posting_to_an_unknown_room_is_404_and_creates_nothing(client):
    response = send(client, "nowhere")
    assert response.status_code == 404 and "nowhere" in response.get_json()["error"]
    assert client.get("/api/rooms").get_json() == {"rooms": []}


def test_rooms_are_listed_most_recent_first(client):
    for label in ("a", "b", "c"):
        client.get(f"/{label}/")
    send(client, "a", message="wakes room a up")
    rooms = client.get("/api/rooms").get_json()["rooms"]
    assert [r["label"] for r in rooms] == ["a", "c", "b"]
    # the contract's four fields, and how many people are in the room now (an extension)
    assert rooms[0] == {"label": "a", "name": "a", "messages": 1, "last_activity": rooms[0]["last_activity"], "here": 0}
    datetime.fromisoformat(rooms[0]["last_activity"])


def test_at_most_a_hundred_rooms_are_listed(client):
    for n in range(105):  # from many addresses: one may create ROOM_CREATE_LIMIT a minute
        client.get(f"/r{n}/", environ_overrides={"REMOTE_ADDR": f"10.0.{n}.1"})
    assert len(client.get("/api/rooms").get_json()["rooms"]) == 100


def test_history_pages(client, lobby):
    ids = [send(client, lobby, message=f"m{n}").get_json()["id"] for n in range(12)]
    assert history(client, lobby) == (200, {"room": "lobby", "messages": history(client, lobby)[1]["messages"]})
    assert [m["id"] for m in history(client, lobby)[1]["messages"]] == ids
    assert [m["id"] for m in history(client, lobby, "?limit=3")[1]["messages"]] == ids[-3:]
    assert [m["id"] for m in history(client, lobby, f"?after={ids[3]}&limit=4")[1]["messages"]] == ids[4:8]
    assert [m["id"] for m in history(client, lobby, f"?before={ids[3]}&limit=2")[1]["messages"]] == ids[1:3]
    assert [m["id"] for m in history(client, lobby, f"?before={ids[1]}")[1]["messages"]] == ids[:1]
    assert history(client, lobby, f"?after={ids[-1]}")[1]["messages"] == []
    assert [m["id"] for m in history(client, lobby, "?after=0&limit=200")[1]["messages"]] == ids


def test_history_of_an_empty_room(client, lobby):
    assert history(client, lobby) == (200, {"room": "lobby", "messages": []})


@pytest.mark.parametrize(
    "query", ["?limit=0", "?limit=201", "?limit=-1", "?limit=ten", "?after=x", "?before=-5", "?after=1.5",
              "?after=1&before=5", "?limit=", "?after=%C2%B2"]
)
def test_bad_paging_parameters_are_400_with_a_reason(client, lobby, query):
    status, body = history(client, lobby, query)
    assert status == 400 and body["error"]


def test_history_of_an_unknown_or_invalid_room_is_404(client):
    for label in ("nowhere", "bad%20label", "x" * 51, "new"):
        status, body = history(client, label)
        assert status == 404 and body["error"]


def test_rate_limit_answers_429(tmp_path):
    from webapp import create_app

    from .conftest import TEST_CONFIG, _fresh_schema

    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/c.sqlite3", "RATE_LIMIT": "2/60"})
    _fresh_schema()
    client = app.test_client()
    client.get("/lobby/")
    statuses = [send(client, "lobby", message=f"m{n}").status_code for n in range(25)]
    # HTTP posts have no connection of their own: the address limit (10 x 2) applies.
    assert statuses[:20] == [201] * 20
    assert statuses[20:] == [429] * 5
    assert "slow down" in send(client, "lobby").get_json()["error"]
    assert len(history(client, "lobby")[1]["messages"]) == 20


def test_unknown_api_routes_answer_json(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.get_json()["error"]
    response = client.delete("/api/rooms")
    assert response.status_code == 405 and response.get_json()["error"]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert json.loads(response.get_data()) == {"status": "ok", "db": "ok", "broker": "ok"}
