"""Limits on what one client can make the server keep or show: new rooms per address
(ROOM_CREATE_LIMIT), the home page's list (rooms people wrote in), and /metrics behind
METRICS_TOKEN when the operator sets one."""

import pytest

from webapp import create_app
from webapp.models import Room

from .conftest import TEST_CONFIG, _fresh_schema
from .html import parse
from .support import using_db


def make(tmp_path, **config):
    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3", **config})
    _fresh_schema()
    return app


def visit(client, label, address="192.0.2.1"):
    return client.get(f"/{label}/", environ_overrides={"REMOTE_ADDR": address})


def test_new_rooms_are_rate_limited_per_address(tmp_path):
    """Security row: past ROOM_CREATE_LIMIT new rooms, an address gets a readable 429 and
    no room; rooms that exist still open, and other addresses still create."""
    app = make(tmp_path, ROOM_CREATE_LIMIT="3/60")
    client = app.test_client()
    assert [visit(client, f"r{n}").status_code for n in range(3)] == [200] * 3
    refused = visit(client, "one-too-many")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    page = parse(refused.get_data(as_text=True))
    assert "new rooms" in page.find(lambda n: n.tag == "p").text()
    with using_db(app):
        assert Room.by_label("one-too-many") is None
    assert visit(client, "r0").status_code == 200  # visiting is not creating
    assert visit(client, "one-too-many", address="192.0.2.2").status_code == 200


def test_room_creation_limit_zero_is_off(tmp_path):
    client = make(tmp_path, ROOM_CREATE_LIMIT="0").test_client()
    assert {visit(client, f"r{n}").status_code for n in range(40)} == {200}


def test_the_default_room_creation_limit_is_generous(app):
    client = app.test_client()
    assert {visit(client, f"r{n}").status_code for n in range(30)} == {200}
    assert visit(client, "r30").status_code == 429


def test_the_home_page_lists_every_room_by_activity(client):
    """Per the contract, a room nobody wrote in yet counts from its creation: it is
    listed (room creation itself is what ROOM_CREATE_LIMIT bounds)."""
    for label in ("quiet", "busy", "empty"):
        client.get(f"/{label}/")
    for label in ("quiet", "busy"):
        client.post(f"/api/rooms/{label}/messages", json={"handle": "a", "message": "hi"})
    page = parse(client.get("/").get_data(as_text=True))
    links = [a.attrs["href"] for a in page.by_id("rooms").all(lambda n: n.tag == "a")]
    assert links == ["/busy/", "/quiet/", "/empty/"]
    assert [room["label"] for room in client.get("/api/rooms").get_json()["rooms"]] == ["busy", "quiet", "empty"]


TOKEN = "metrics-token-0123456789"


def test_metrics_are_public_without_a_token(client):
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("header, status", [(None, 401), ("Bearer wrong-token", 401), ("Basic " + TOKEN, 401),
                                            ("Bearer " + TOKEN, 200)])
def test_metrics_token_guards_metrics(tmp_path, header, status):
    client = make(tmp_path, METRICS_TOKEN=TOKEN).test_client()
    response = client.get("/metrics", headers={"Authorization": header} if header else {})
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"chat_" not in response.data
    else:
        assert b"chat_messages_stored_total" in response.data


def test_room_creation_limit_is_checked_at_start(tmp_path):
    from webapp.settings import ConfigError

    with pytest.raises(ConfigError, match="ROOM_CREATE_LIMIT"):
        make(tmp_path, ROOM_CREATE_LIMIT="lots")
