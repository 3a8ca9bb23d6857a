"""The server-sent event stream against real servers: live delivery across workers,
resuming by id, the reset past the replay cap, many readers, and nothing left behind."""

import gevent
import pytest

from .html import rows
from .support import wait_for

pytestmark = pytest.mark.live


@pytest.fixture
def cluster(live, redis_server):
    return live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)


def texts(events):
    return [rows(e.data)[0][2] for e in events]


def test_the_stream_answers_with_the_right_headers_and_a_retry_hint(cluster):
    cluster.open_room("lobby")
    stream = cluster.events("lobby")
    assert stream.stream.status == 200
    assert stream.stream.headers["content-type"].startswith("text/event-stream")
    assert stream.stream.headers["cache-control"] == "no-cache"
    assert stream.stream.headers["x-accel-buffering"] == "no"
    cluster.post_json("lobby", "a", "hello")
    (event,) = stream.messages(1)
    assert stream.stream.retry == 2000
    assert event.event == "message" and event.id.isdigit()
    assert "\n" not in event.data
    assert rows(event.data) == [(int(event.id), "a", "hello")]


def test_a_websocket_message_reaches_streams_on_every_worker(cluster):
    cluster.open_room("mixed")
    streams = [cluster.events("mixed") for _ in range(10)]  # spread over both workers
    writer = cluster.socket("mixed")
    for n in range(5):
        writer.send("w", f"line {n}\nwith a newline")
    for stream in streams:
        assert texts(stream.messages(5)) == [f"line {n}\nwith a newline" for n in range(5)]


def test_streams_on_another_server_get_messages_through_redis(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    one = live("one", database_url=database, REDIS_URL=redis_server.url)
    two = live("two", database_url=database, REDIS_URL=redis_server.url)
    one.open_room("bridge")
    stream = two.events("bridge")
    one.socket("bridge").send("a", "across")
    assert texts(stream.messages(1)) == ["across"]


def test_without_a_resume_point_only_live_messages_come(cluster):
    cluster.open_room("live")
    cluster.post_json("live", "a", "before")
    stream = cluster.events("live")
    cluster.post_json("live", "a", "after")
    assert texts(stream.messages(1)) == ["after"]


def test_last_event_id_replays_exactly_what_was_missed(cluster):
    cluster.open_room("resume")
    stream = cluster.events("resume")
    for n in range(3):
        cluster.post_json("resume", "a", f"seen {n}")
    seen = stream.messages(3)
    stream.close()
    for n in range(4):
        cluster.post_json("resume", "a", f"missed {n}")
    again = cluster.events("resume", headers=[("Last-Event-ID", seen[-1].id)])
    cluster.post_json("resume", "a", "live")
    assert texts(again.messages(5)) == [f"missed {n}" for n in range(4)] + ["live"]


def test_the_header_wins_over_the_query_parameter(cluster):
    cluster.open_room("both")
    ids = [cluster.post_json("both", "a", f"m{n}").json()["id"] for n in range(5)]
    stream = cluster.events("both", last_id=ids[0], headers=[("Last-Event-ID", str(ids[2]))])
    assert [int(e.id) for e in stream.messages(2)] == ids[3:]
    by_query = cluster.events("both", last_id=ids[0])
    assert [int(e.id) for e in by_query.messages(4)] == ids[1:]


def test_more_than_five_hundred_missed_is_a_reset_event(live):
    server = live(RATE_LIMIT="0")
    server.open_room("flood")
    first, latest = server.post_many("flood", 505)
    stream = server.events("flood", last_id=first)
    reset = stream.next_event()
    assert reset.event == "reset"
    import json

    assert json.loads(reset.data) == {"reset": True, "latest": latest}
    server.post_json("flood", "a", "after")
    assert texts(stream.messages(1)) == ["after"]


def test_replay_while_messages_arrive_has_no_gap_and_no_double(cluster):
    cluster.open_room("busy")
    first = cluster.post_json("busy", "a", "start").json()["id"]
    writer = cluster.socket("busy")
    done = gevent.event.Event()

    def keep_writing():
        for n in range(60):
            writer.send("w", f"m{n}")
            gevent.sleep(0.003)
        done.set()

    pump = gevent.spawn(keep_writing)
    gevent.sleep(0.05)
    streams = [cluster.events("busy", last_id=first) for _ in range(8)]
    pump.join()
    for stream in streams:
        got = stream.messages(60, timeout=15)
        assert texts(got) == [f"m{n}" for n in range(60)]


def test_two_hundred_streams_on_one_worker_all_get_a_broadcast(live):
    server = live(MAX_CONNECTIONS_PER_ADDRESS=0)  # one worker; every stream from one address
    server.open_room("crowd")
    streams = [server.events("crowd") for _ in range(200)]
    assert {stream.stream.status for stream in streams} == {200}
    wait_for(lambda: server.metric("chat_open_connections", kind="event_stream") == 200, message="200 streams")
    server.post_json("crowd", "a", "to everyone")
    for stream in streams:
        assert texts(stream.messages(1)) == ["to everyone"]


def test_streams_that_go_away_leave_nothing_behind(live):
    server = live(MAX_CONNECTIONS_PER_ADDRESS=30)
    server.open_room("leaky")
    streams = [server.events("leaky") for _ in range(30)]
    wait_for(lambda: server.metric("chat_open_connections", kind="event_stream") == 30, message="30 streams")
    for stream in streams:
        stream.close()
    # noticed at the next heartbeat (1 s here), then the hub entry and the slot are gone
    wait_for(lambda: server.metric("chat_open_connections", kind="event_stream") == 0, timeout=10,
             message="streams to be released")
    again = [server.events("leaky") for _ in range(30)]
    assert all(stream.stream.status == 200 for stream in again)


def test_idle_streams_get_heartbeat_comments(live):
    server = live(SSE_HEARTBEAT="0.5")
    server.open_room("quiet")
    stream = server.events("quiet")
    with pytest.raises(TimeoutError):
        stream.next_event(timeout=1.6)
    assert stream.stream.comments.count("keepalive") >= 2


def test_unknown_or_invalid_rooms_are_404(cluster):
    for path in ("/nowhere/events", "/bad%20label/events", "/new/events"):
        assert cluster.get(path).status_code == 404
    assert cluster.get("/api/rooms").json() == {"rooms": []}


def test_embed_is_framable_and_other_pages_are_not(cluster):
    cluster.open_room("framed")
    embed = cluster.get("/framed/embed")
    assert "frame-ancestors *" in embed.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in embed.headers
    for path in ("/", "/framed/", "/healthz", "/api/rooms"):
        headers = cluster.get(path).headers
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
