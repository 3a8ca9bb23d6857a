"""Real-time chat against real servers: gunicorn with gevent workers, a redis-server of
the tests' own, real sockets. Every message counted: in order, none lost, none doubled."""

import json

import gevent
import pytest
import requests

from .html import csrf_token, rows
from .support import wait_for
from .wsclient import Closed, Refused, WSClient

pytestmark = pytest.mark.live


@pytest.fixture
def cluster(live, redis_server):
    """gunicorn, two gevent workers, sharing the tests' Redis."""
    return live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)


def texts(messages):
    return [m["message"] for m in messages]


def assert_in_order_once(messages):
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


def test_fifty_clients_each_receive_all_twenty_messages(cluster):
    cluster.open_room("crowd")
    clients = [cluster.socket("crowd") for _ in range(50)]
    sent = []
    for n in range(20):
        sender = clients[n % 50]
        sender.send(f"user{n}", f"message {n}")
        sent.append(f"message {n}")
    orders = []
    for client in clients:
        got = client.collect(20)
        assert sorted(texts(got)) == sorted(sent)
        assert_in_order_once(got)
        orders.append(texts(got))
    assert all(order == orders[0] for order in orders)  # everyone sees the stored order
    gevent.sleep(0.3)
    for client in clients:  # nothing extra trickles in
        with pytest.raises(TimeoutError):
            client.recv(timeout=0.05)
        client.close()


def test_messages_cross_between_two_servers_sharing_redis(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    one = live("one", database_url=database, REDIS_URL=redis_server.url)
    two = live("two", database_url=database, REDIS_URL=redis_server.url)
    one.open_room("bridge")
    alice, bob = one.socket("bridge"), two.socket("bridge")
    for n in range(10):
        (alice if n % 2 == 0 else bob).send("x", f"m{n}")
        gevent.sleep(0.01)
    for client in (alice, bob):
        got = client.collect(10)
        assert sorted(texts(got)) == sorted(f"m{n}" for n in range(10))
        assert_in_order_once(got)
    assert texts(alice.messages()) == texts(bob.messages())


def _all_at_once(clients, count):
    """Every client sends ``count`` messages ("u<i>-<n>"), all of them at the same time."""

    def chatter(client, who):
        for n in range(count):
            client.send(who, f"{who}-{n}")

    gevent.joinall([gevent.spawn(chatter, c, f"u{i}") for i, c in enumerate(clients)])


def test_concurrent_senders_on_both_workers_everyone_sees_the_same_order(cluster):
    cluster.open_room("busy")
    clients = [cluster.socket("busy") for _ in range(8)]
    _all_at_once(clients, 15)
    orders = []
    for client in clients:
        got = client.collect(120, timeout=20)
        assert_in_order_once(got)
        orders.append([m["id"] for m in got])
    assert all(order == orders[0] for order in orders)
    stored = cluster.get("/api/rooms/busy/messages?limit=200").json()["messages"]
    assert [m["id"] for m in stored] == orders[0]


def test_posts_from_the_form_and_the_api_reach_sockets(cluster):
    cluster.open_room("mixed")
    listener = cluster.socket("mixed")
    assert cluster.post_json("mixed", "api-bot", "via the API").status_code == 201
    session = requests.Session()
    token = csrf_token(session.get(cluster.url + "/mixed/").text)
    response = session.post(cluster.url + "/mixed/messages", allow_redirects=False,
                            data={"csrf_token": token, "handle": "form", "message": "via the form"})
    assert response.status_code == 303
    got = listener.collect(2)
    assert texts(got) == ["via the API", "via the form"]


def test_last_id_replays_what_was_missed_then_goes_live(cluster):
    cluster.open_room("replay")
    ids = [cluster.post_json("replay", "a", f"m{n}").json()["id"] for n in range(8)]
    late = cluster.socket("replay", last_id=ids[2])
    got = late.collect(5)
    assert [m["id"] for m in got] == ids[3:]
    cluster.post_json("replay", "a", "live one")
    got = late.collect(6)
    assert texts(got)[-1] == "live one"
    assert_in_order_once(got)


def test_replay_while_messages_keep_arriving_has_no_gap_and_no_double(cluster):
    cluster.open_room("stream")
    writer = cluster.socket("stream")
    first = cluster.post_json("stream", "w", "start").json()["id"]
    stop = gevent.event.Event()

    def keep_writing():
        n = 0
        while not stop.is_set():
            writer.send("w", f"during {n}")
            n += 1
            gevent.sleep(0.002)

    pump = gevent.spawn(keep_writing)
    gevent.sleep(0.1)
    joiners = [cluster.socket("stream", last_id=first) for _ in range(10)]
    gevent.sleep(0.3)
    stop.set()
    pump.join()
    total = len(cluster.get("/api/rooms/stream/messages?limit=200").json()["messages"])
    for joiner in joiners:
        got = joiner.collect(total - 1)
        assert [m["message"] for m in got][:1] == ["during 0"]
        assert_in_order_once(got)


def test_more_than_five_hundred_missed_is_an_explicit_reset(live):
    server = live(RATE_LIMIT="0")
    server.open_room("flood")
    first, latest = server.post_many("flood", 510)
    late = server.socket("flood", last_id=first)
    assert late.recv() == {"reset": True, "latest": latest}
    server.post_json("flood", "a", "after the reset")
    assert late.recv()["message"] == "after the reset"


def test_exactly_five_hundred_missed_are_all_replayed(live):
    server = live(RATE_LIMIT="0")
    server.open_room("full")
    first, _ = server.post_many("full", 500)
    got = server.socket("full", last_id=first).collect(500)
    assert texts(got) == [f"m{n}" for n in range(500)]


@pytest.mark.parametrize(
    "frame, reason",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"handle": "a"}', "missing field"),
        ('{"handle": "a", "message": "b", "extra": 1}', "unexpected field"),
        ('{"handle": "", "message": "b"}', "handle is required"),
        ('{"handle": "a", "message": ""}', "message is empty"),
        ('{"handle": "' + "h" * 51 + '", "message": "b"}', "longer than 50"),
        ('{"handle": "a", "message": "' + "m" * 2001 + '"}', "longer than 2000"),
        ('{"handle": "a", "message": "esc \\u001b"}', "control characters"),
        (b'{"handle": "a", "message": "binary"}', "text frames"),
    ],
)
def test_a_bad_frame_gets_an_error_and_the_socket_stays_open(cluster, frame, reason):
    cluster.open_room("strict")
    client = cluster.socket("strict")
    client.ws.send(frame)
    error = client.recv()
    assert set(error) == {"error"} and reason in error["error"]
    client.send("a", "still works")
    assert client.recv()["message"] == "still works"
    assert len(cluster.get("/api/rooms/strict/messages").json()["messages"]) == 1


def test_a_frame_over_64_kib_closes_with_1009(cluster):
    cluster.open_room("big")
    client = cluster.socket("big")
    client.ws.send(json.dumps({"handle": "a", "message": "m" * 70_000}))
    with pytest.raises(Closed) as closed:
        client.recv()
    assert closed.value.code == 1009
    assert cluster.get("/api/rooms/big/messages").json()["messages"] == []


def test_over_the_rate_limit_a_frame_gets_an_error(live):
    server = live(RATE_LIMIT="3/60")
    server.open_room("calm")
    client = server.socket("calm")
    for n in range(5):
        client.send("a", f"m{n}")
    frames = [client.recv() for _ in range(5)]
    assert texts([f for f in frames if "id" in f]) == ["m0", "m1", "m2"]
    assert [f["error"] for f in frames if "error" in f] == ["slow down: at most 3 messages in 60 seconds"] * 2


def test_unknown_room_closes_with_4404(cluster):
    for path in ("/chat/nowhere/", "/chat/bad%20label/", "/chat/new/"):
        with WSClient(cluster.ws_url(path)) as ws:
            with pytest.raises(Closed) as closed:
                ws.recv(timeout=5)
            assert closed.value.code == 4404
    assert cluster.get("/api/rooms").json() == {"rooms": []}


def test_a_foreign_origin_is_refused_at_the_handshake(live):
    server = live(ALLOWED_ORIGINS="https://friend.example")
    server.open_room("guarded")
    with pytest.raises(Refused) as refused:
        WSClient(server.ws_url("/chat/guarded/"), origin="https://evil.example")
    assert refused.value.status == 403
    for origin in (server.url, "https://friend.example", None):
        with WSClient(server.ws_url("/chat/guarded/"), origin=origin) as ws:
            ws.send(json.dumps({"handle": "a", "message": f"from {origin}"}))
            assert json.loads(ws.recv(timeout=5))["message"] == f"from {origin}"


def test_connections_per_address_are_capped_across_workers(live, redis_server):
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, MAX_CONNECTIONS_PER_ADDRESS=6)
    server.open_room("capped")
    held = [WSClient(server.ws_url("/chat/capped/")) for _ in range(6)]
    with pytest.raises(Refused) as refused:
        WSClient(server.ws_url("/chat/capped/"))
    assert refused.value.status == 429
    held.pop().close()
    wait_for(lambda: _can_connect(server.ws_url("/chat/capped/")), message="a freed slot")
    for ws in held:
        ws.close()


def _can_connect(url):
    try:
        WSClient(url).close()
        return True
    except Refused:
        return False


def test_the_htmx_socket_pushes_rendered_rows(cluster):
    cluster.open_room("htmx")
    with WSClient(cluster.ws_url("/ws/htmx/?last_id=0")) as ws:
        ws.send(json.dumps({"handle": "alice", "message": "<b>hi</b>", "csrf_token": "x",
                            "HEADERS": {"HX-Request": "true", "HX-Trigger": "chatform"}}))
        fragment = ws.recv(timeout=5)
        assert 'id="presence"' in fragment  # who is here comes first, on connect
        fragment = ws.recv(timeout=5)
        assert 'hx-swap-oob="beforeend:#chat"' in fragment
        assert rows(fragment)[0][1:] == ("alice", "<b>hi</b>")
        ws.send(json.dumps({"handle": "alice", "message": "  "}))
        error = ws.recv(timeout=5)
        assert 'id="chat-error"' in error and "message is empty" in error and 'hx-swap-oob="true"' in error


def test_the_in_process_broker_serves_one_worker(live):
    server = live()  # no REDIS_URL: one worker, in-process broker
    assert server.get("/healthz").json() == {"status": "ok", "db": "ok", "broker": "ok"}
    server.open_room("solo")
    a, b = server.socket("solo"), server.socket("solo")
    a.send("a", "hello")
    assert texts(b.collect(1)) == ["hello"]


def test_more_than_one_worker_without_redis_refuses_to_start(tmp_path):
    import subprocess

    from .support import PROJECT, LiveServer, procfile

    server = LiveServer(tmp_path, env={"WEB_CONCURRENCY": "2"})
    result = subprocess.run(procfile()["web"].split(), cwd=PROJECT, env=server.env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "WEB_CONCURRENCY=2 needs REDIS_URL" in result.stderr


@pytest.mark.parametrize("backend", ["postgres"])
def test_two_workers_on_postgres(live, redis_server, postgres, backend):
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, database_url=postgres.url)
    server.open_room("pg")
    clients = [server.socket("pg") for _ in range(10)]
    _all_at_once(clients, 10)
    orders = [[m["id"] for m in c.collect(100, timeout=20)] for c in clients]
    assert all(order == orders[0] == sorted(orders[0]) for order in orders)
    late = server.socket("pg", last_id=orders[0][49])
    assert [m["id"] for m in late.collect(50)] == orders[0][50:]


def test_idle_sockets_are_pinged_and_silent_peers_are_cut(live):
    server = live(PING_INTERVAL="1", PONG_TIMEOUT="1")
    server.open_room("idle")
    answering = server.socket("idle")
    silent = server.socket("idle")  # never reads again: no pong, like a vanished peer
    for _ in range(8):  # 4 s of reading, which answers the pings
        with pytest.raises(TimeoutError):
            answering.recv(timeout=0.5)
    answering.send("a", "still here")
    assert texts(answering.collect(1)) == ["still here"]
    assert server.metric("chat_dropped_clients_total", reason="silent") == 1
    with pytest.raises(Closed):
        while True:
            silent.recv(timeout=2)
    assert server.metric("chat_open_connections", kind="websocket") == 1


def test_the_example_bot_chats_in_the_seed_protocol(live):
    import subprocess
    import sys

    from .support import PROJECT

    server = live()
    server.open_room("bots")
    person = server.socket("bots")
    bot = subprocess.Popen([sys.executable, "examples/bot.py", server.ws_url("/chat/bots/")], cwd=PROJECT)
    try:
        assert person.recv()["message"] == "hello! say !time"
        person.send("ann", "!time")
        assert person.recv()["message"] == "!time"
        reply = person.recv()
        assert reply["handle"] == "clockbot" and reply["message"].startswith("ann: it is ")
    finally:
        bot.kill()
