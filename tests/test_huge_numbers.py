"""Ids and counts past what the database holds are bad input, never a 500.

Message ids are 64-bit (BIGINT); a number past that (``99999999999999999999``) used to
overflow the database driver, and one of thousands of digits used to fail Python's
int() itself. Every path that reads a number from a client answers a clear refusal:
the API a 400 ``{"error"}``, a socket a 400 at its handshake, an event stream a 400.
"""

import pytest

from .wsclient import Refused, WSClient

HUGE = ["99999999999999999999", "9223372036854775808", "9" * 5000]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("name", ["after", "before", "limit"])
def test_huge_paging_numbers_are_400_on_the_api(any_app, name, value, caplog):
    """Contract: a bad parameter of the history API is a 400 ``{"error": reason}``."""
    client = any_app.test_client()
    client.get("/lobby/")
    response = client.get(f"/api/rooms/lobby/messages?{name}={value}")
    assert response.status_code == 400 and response.get_json()["error"]
    assert not [r for r in caplog.records if getattr(r, "event", None) == "unhandled_error"]


def test_the_largest_id_is_still_a_number(any_app):
    client = any_app.test_client()
    client.get("/lobby/")
    response = client.get(f"/api/rooms/lobby/messages?after={2**63 - 1}")
    assert response.status_code == 200 and response.get_json()["messages"] == []


def _refusal(server, path, headers=()):
    try:
        WSClient(server.ws_url(path), headers=headers, timeout=5).close()
    except Refused as refused:
        return refused.status
    return 101


@pytest.mark.parametrize("storage", ["sqlite", "postgres"])
def test_huge_resume_points_are_refused_on_sockets_and_streams(live, request, storage):
    """A socket's or stream's ``last_id`` (or ``Last-Event-ID``) past any id is a 400 before
    anything is sent; a good one still works; nothing is logged as unhandled."""
    database_url = request.getfixturevalue("postgres").url if storage == "postgres" else None
    server = live(database_url=database_url)
    server.open_room("lobby")
    first = server.post_json("lobby", "a", "hello").json()["id"]
    # gunicorn itself refuses a request line over 4094 bytes (414): URLs carry less.
    for value in HUGE[:2] + ["9" * 4000, "12abc", "-1"]:
        for path in ("/chat/lobby/", "/ws/lobby/"):
            assert _refusal(server, f"{path}?last_id={value}") == 400, (path, value[:30])
        stream = server.events("lobby", last_id=value)
        assert stream.stream.status == 400, value[:30]
        stream.close()
    for value in HUGE + ["12abc", "-1"]:
        stream = server.events("lobby", headers=[("Last-Event-ID", value)])
        assert stream.stream.status == 400, value[:30]
        stream.close()
    socket = server.socket("lobby", last_id=first - 1)
    assert socket.recv()["message"] == "hello"
    socket.close()
    assert 'event="unhandled_error"' not in server.log()
    assert "Traceback" not in server.log()
