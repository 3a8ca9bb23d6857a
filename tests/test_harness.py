"""The test machinery itself: what it counts as lost, how it keeps servers apart from each
other and from the shell. A harness that cannot fail proves nothing."""

import socket

import pytest

from .chaos import Participant, stop_all, unaccounted
from .support import LiveServer, RedisServer


def _person(sent_on, errors_on, dropped=(), send_failed=()):
    person = Participant(lambda: "ws://unused", "room", "p")
    person.sent_on, person.errors_on = [list(texts) for texts in sent_on], list(errors_on)
    person.dropped, person.send_failed = set(dropped), list(send_failed)
    return person


def _stored(*texts):
    return [{"id": n, "handle": "p", "message": text} for n, text in enumerate(texts, 1)]


def test_every_message_sent_is_stored_once_or_refused():
    assert unaccounted(_person([["a", "b"]], [0]), _stored("a", "b")) == []
    assert unaccounted(_person([["a", "b"]], [1]), _stored("a")) == []  # b refused
    assert unaccounted(_person([["a", "b"]], [0]), _stored("a")), "b neither stored nor refused"
    assert unaccounted(_person([["a"]], [0]), _stored("a", "a")), "stored twice"
    assert unaccounted(_person([["a"]], [1]), _stored("a")), "an error frame for a stored message"
    assert unaccounted(_person([[]], [0], send_failed=["x"]), _stored("x")), "stored although its send failed"


def test_only_messages_in_flight_when_a_connection_dropped_may_vanish():
    assert unaccounted(_person([["a", "b", "c"], []], [0, 0], dropped={0}), _stored("a")) == []
    assert unaccounted(_person([["a", "b", "c"], []], [0, 0], dropped={0}), _stored("a", "c")), \
        "b vanished although a later message on its connection was stored"


def test_stop_all_reports_what_readers_saw():
    person = Participant(lambda: "ws://unused", "room", "p")
    person.problems.append("unexpected close 1000")
    from . import chaos

    chaos._running.append(person)
    assert stop_all() == ["p: unexpected close 1000"]
    assert stop_all() == []


@pytest.mark.live
def test_servers_start_from_a_clean_environment(live, monkeypatch):
    """Settings in the shell that runs the tests never reach a server they start."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("RATE_LIMIT", "1/100")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
    server = live()
    assert len(server.worker_pids()) == 1 and server.get("/healthz").json()["broker"] == "ok"
    server.open_room("clean")
    for n in range(3):
        assert server.post_json("clean", "a", f"{n}").status_code == 201


@pytest.mark.live
def test_a_port_taken_before_the_server_binds_it_is_replaced(tmp_path):
    redis_server = RedisServer(tmp_path)
    live_server = LiveServer(tmp_path)
    squatters = []
    for port, host in ((redis_server.port, "127.0.0.1"), (live_server.port, "0.0.0.0")):
        squatter = socket.socket()
        squatter.bind((host, port))
        squatter.listen()
        squatters.append(squatter)
    taken = redis_server.port, live_server.port
    try:
        redis_server.start()
        live_server.start()
        assert redis_server.port != taken[0] and live_server.port != taken[1]
        assert live_server.get("/healthz").status_code == 200
    finally:
        live_server.stop()
        redis_server.kill()
        for squatter in squatters:
            squatter.close()

