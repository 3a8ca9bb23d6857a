"""Claims the README makes that no other test would notice breaking: a resumed event
stream across a restart, connection caps counted across workers, X-Forwarded-For ignored
unless TRUST_PROXY, JSON logs, and the metrics the README lists."""

import json
import re

import pytest

from .html import rows
from .support import PROJECT, declared_metrics, wait_for
from .wsclient import Refused, WSClient

pytestmark = pytest.mark.live


def test_an_event_stream_resumes_by_last_event_id_across_a_restart(live, redis_server, tmp_path):
    """Guarantee "restart": streams resume by Last-Event-ID, with what was sent through
    another server while this one was down."""
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    first = live("first", database_url=database, REDIS_URL=redis_server.url)
    other = live("other", database_url=database, REDIS_URL=redis_server.url)
    first.open_room("resumed")
    stream = first.events("resumed")
    for n in range(2):
        other.post_json("resumed", "a", f"seen {n}")
    seen = stream.messages(2)
    first.stop()  # drains: the stream ends
    with pytest.raises(ConnectionError):
        while True:
            stream.next_event(timeout=5)
    for n in range(3):
        other.post_json("resumed", "a", f"while down {n}")
    again = live("first-again", database_url=database, port=first.port, REDIS_URL=redis_server.url)
    # what a browser's EventSource sends when it reconnects by itself
    resumed = again.events("resumed", headers=[("Last-Event-ID", seen[-1].id)])
    other.post_json("resumed", "a", "live")
    events = resumed.messages(4)
    assert [rows(e.data)[0][2] for e in events] == [f"while down {n}" for n in range(3)] + ["live"]
    assert [int(e.id) for e in events] == sorted({int(e.id) for e in events})
    assert int(events[0].id) > int(seen[-1].id)


def test_connection_caps_count_sockets_on_every_worker(live, redis_server):
    """The per-address cap is one count across workers: with sockets held on both
    workers, one more is refused (each worker alone is under the cap)."""
    cap = 6
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, MAX_CONNECTIONS_PER_ADDRESS=cap)
    server.open_room("capped")
    held, on = [], {}
    for _attempt in range(60):
        if len(held) == cap:
            break
        ws = WSClient(server.ws_url("/chat/capped/"))
        pid = wait_for(lambda ws=ws: server.worker_holding(ws.sock.getsockname()[1]), message="its worker")
        if len(on.get(pid, [])) >= cap - 2:  # keep at least two on the other worker
            ws.close()
            wait_for(lambda: server.metric("chat_open_connections", kind="websocket") == len(held),
                     message="the slot to be free")
            continue
        on.setdefault(pid, []).append(ws)
        held.append(ws)
    assert len(held) == cap and len(on) == 2, {pid: len(sockets) for pid, sockets in on.items()}
    with pytest.raises(Refused) as refused:
        WSClient(server.ws_url("/chat/capped/"))
    assert refused.value.status == 429
    for ws in held:
        ws.close()


def test_x_forwarded_for_counts_only_with_trust_proxy(live):
    """TRUST_PROXY off: a client cannot pick its own address with X-Forwarded-For (the
    connection cap still counts its real one); on: each forwarded address counts apart."""
    untrusting = live("untrusting", MAX_CONNECTIONS_PER_ADDRESS=2)
    untrusting.open_room("proxied")
    url = untrusting.ws_url("/chat/proxied/")
    held = [WSClient(url, headers=[("X-Forwarded-For", f"10.0.0.{n}")]) for n in (1, 2)]
    with pytest.raises(Refused) as refused:
        WSClient(url, headers=[("X-Forwarded-For", "10.0.0.3")])
    assert refused.value.status == 429
    trusting = live("trusting", MAX_CONNECTIONS_PER_ADDRESS=2, TRUST_PROXY=1)
    trusting.open_room("proxied")
    url = trusting.ws_url("/chat/proxied/")
    held += [WSClient(url, headers=[("X-Forwarded-For", f"10.0.0.{n}")]) for n in (1, 2, 3)]
    for ws in held:
        ws.close()


def test_log_format_json_writes_one_object_per_line(live):
    server = live(LOG_FORMAT="json")
    server.open_room("logged")
    with pytest.raises(Refused):
        WSClient(server.ws_url("/chat/logged/"), origin="https://evil.example")
    line = wait_for(lambda: next((line for line in server.log().splitlines() if "foreign_origin" in line), None),
                    message="the refusal's log line")
    entry = json.loads(line)
    assert entry["event"] == "foreign_origin" and entry["level"] and entry["message"], entry


def _metric_families():
    """Family names as /metrics shows them (counters with _total)."""
    return {name for name in declared_metrics() if not name.endswith(("_created", "_bucket", "_sum", "_count"))} | {
        name[: -len("_count")] for name in declared_metrics() if name.endswith("_count")}


def test_the_readme_lists_exactly_the_metrics_the_server_has():
    with open(f"{PROJECT}/README.md") as file:
        readme = file.read()
    section = readme.split("## Observability", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| `chat_")]
    listed = set(re.findall(r"`(chat_[a-z_]+)", "\n".join(table)))
    assert listed == _metric_families()


def test_the_metrics_count_what_happens(live):
    server = live()
    server.open_room("counted")
    first = server.post_json("counted", "a", "before").json()["id"]
    stream = server.events("counted")
    socket = server.socket("counted", last_id=first - 1)  # one replayed
    assert socket.recv()["message"] == "before"
    socket.send("a", "hello")
    assert socket.recv()["message"] == "hello"
    socket.send("a", "")
    assert "error" in socket.recv()
    socket.ws.send("not json")
    assert "error" in socket.recv()
    assert server.metric("chat_messages_stored_total") == 2
    assert server.metric("chat_replayed_messages_total") >= 1
    assert server.metric("chat_deliveries_total") == 2  # "hello" to the socket and the stream
    assert server.metric("chat_delivery_latency_seconds_count") >= 1
    assert server.metric("chat_refused_total", reason="bad_input") == 2  # an empty message, a frame not JSON
    assert server.metric("chat_open_connections", kind="websocket") == 1
    assert server.metric("chat_open_connections", kind="event_stream") == 1
    # Both connections are open and idle: no greenlet waits on either (issue 18).
    wait_for(lambda: server.metric("chat_serving_greenlets") == 0, message="no greenlet per idle connection")
    with pytest.raises(AssertionError, match="no metric"):
        server.metric("chat_messages_saved_total")  # a name that is not there never reads as 0
    stream.close()
    socket.close()
