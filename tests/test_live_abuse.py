"""Abuse against a real server: hostile frames, connection churn, foreign origins."""

import json
import os
import random
import time

import gevent
import pytest

from .support import wait_for
from .wsclient import Closed, Refused, WSClient

pytestmark = pytest.mark.live


def _open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_connects_and_disconnects_leave_nothing_behind(live):
    server = live(MAX_CONNECTIONS_PER_ADDRESS=0)
    server.open_room("churn")
    (worker,) = server.worker_pids()
    server.socket("churn").close()  # warm up: first use opens pools and Redis-free loops
    gevent.sleep(0.5)
    fds_before = _open_fds(worker)

    def churn(count):
        for n in range(count):
            client = WSClient(server.ws_url("/chat/churn/"))
            if n % 3 == 0:
                client.sock.close()  # vanish without a close frame
            else:
                client.close()

    started = time.monotonic()
    gevent.joinall([gevent.spawn(churn, 100) for _ in range(10)])
    assert time.monotonic() - started < 10, "1,000 connects and disconnects within 10 s"
    wait_for(lambda: server.metric("chat_open_connections", kind="websocket") == 0, timeout=10,
             message="no hub entries")
    wait_for(lambda: server.metric("chat_serving_greenlets") == 0, timeout=10, message="no greenlets")
    wait_for(lambda: _open_fds(worker) <= fds_before + 1, timeout=10, message="no file descriptors")
    # and it still chats
    client = server.socket("churn")
    client.send("a", "still fine")
    assert client.recv()["message"] == "still fine"


def _hostile_frames(rng):
    alphabet = "".join(map(chr, range(0, 0x80))) + "é€𝄞\u2028\ufeff\udcff"
    pick = lambda n: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    frames = [
        pick(rng.randint(0, 40)),
        json.dumps({"handle": pick(rng.randint(0, 60)), "message": pick(rng.randint(0, 80))}),
        json.dumps({"handle": "a", "message": "m" * rng.randint(1990, 2010)}),
        json.dumps([rng.random()] * rng.randint(0, 5)),
        "[" * rng.randint(1, 5000) + "]" * rng.randint(0, 5000),
        json.dumps({"handle": {"nested": [1, {"x": None}]}, "message": ["a"]}),
        json.dumps({"handle": "a", "message": "b", pick(3): pick(3)}),
        "\ufeff" + json.dumps({"handle": "a", "message": "bom"}),
        '{"handle": "a", "message": "\\ud800"}',
    ]
    return [rng.choice(frames) for _ in range(300)]


def test_hostile_frames_never_break_a_socket_or_a_worker(live):
    server = live(RATE_LIMIT="0")
    server.open_room("fuzz")
    workers = server.worker_pids()
    client = server.socket("fuzz")
    frames = _hostile_frames(random.Random(1234))
    answers = []
    for frame in frames:
        client.ws.send(frame.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        answers.append(client.recv())
    assert len(answers) == len(frames)
    assert all(("error" in a and a["error"]) or "id" in a for a in answers)
    stored = server.get("/api/rooms/fuzz/messages?limit=200").json()["messages"]
    assert len(stored) == sum(1 for a in answers if "id" in a)
    assert server.worker_pids() == workers and server.get("/healthz").status_code == 200
    client.send("a", "after the storm")
    assert client.recv()["message"] == "after the storm"


def test_both_sockets_check_the_origin(live):
    server = live()
    server.open_room("origin")
    for path in ("/chat/origin/", "/ws/origin/"):
        with pytest.raises(Refused) as refused:
            WSClient(server.ws_url(path), origin="https://evil.example")
        assert refused.value.status == 403
        WSClient(server.ws_url(path), origin=server.url).close()
    assert server.metric("chat_refused_total", reason="foreign_origin") == 2


def test_a_silent_connection_is_cut_and_counted(live):
    server = live(PING_INTERVAL="1", PONG_TIMEOUT="1")
    server.open_room("quiet")
    quiet = WSClient(server.ws_url("/chat/quiet/"), receive_buffer=4096)
    wait_for(lambda: server.metric("chat_dropped_clients_total", reason="silent") == 1, timeout=6,
             message="the silent peer to be cut")
    with pytest.raises(Closed):
        while True:
            quiet.recv(timeout=2)
