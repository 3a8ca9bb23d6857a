"""Faults caused for real: Redis killed or dropping its subscribers, a worker killed with
SIGKILL, a restart and a reload, the database unreachable or locked, a client that stops
reading. What users would notice is asserted, and messages are counted: every message
acknowledged to its sender is stored once and reaches every client that stays, once."""

import os
import signal
import sqlite3
import time

import gevent
import psycopg2
import pytest
import requests

from webapp.realtime import SWEEP_INTERVAL

from .chaos import Participant, TCPProxy, answered, assert_nothing_lost, stored_messages
from .html import csrf_token
from .support import free_port, wait_for
from .wsclient import Closed, WSClient

pytestmark = pytest.mark.live


def people(server, label, count):
    return [Participant(lambda: server.ws_url(f"/chat/{label}/"), label, f"p{i}").start() for i in range(count)]


def people_on_both_workers(server, label, at_least=8):
    """At least ``at_least`` participants, two or more held by each of the server's two
    workers; returns (participants, {worker pid: its participants})."""
    crowd, holders = [], {}
    while len(crowd) < 40 and (len(crowd) < at_least or len(holders) < 2
                               or min(map(len, holders.values())) < 2):
        person = Participant(lambda: server.ws_url(f"/chat/{label}/"), label, f"p{len(crowd)}").start()
        crowd.append(person)
        port = person.client.sock.getsockname()[1]
        pid = wait_for(lambda port=port: server.worker_holding(port), message="its worker")
        holders.setdefault(pid, []).append(person)
        gevent.sleep(0.02)
    assert len(holders) == 2, "clients on both workers"
    return crowd, holders


def chat_for(participants, rounds, tag, pause=0.02):
    for n in range(rounds):
        for person in participants:
            person.send(f"{tag} {n} from {person.name}")
        gevent.sleep(pause)


def health(server):
    response = server.get("/healthz")
    return response.status_code, response.json()


# -- Redis ---------------------------------------------------------------------------------


def test_a_redis_outage_loses_nothing_and_heals_by_itself(live, own_redis):
    """Guarantee "Redis dies mid-chat": while Redis is down, people on other workers get
    each message within the sweep interval (the database sweep, the only path left);
    every message sent is stored once and delivered, or refused; re-subscribed within
    5 s of Redis returning."""
    server = live(WEB_CONCURRENCY=2, REDIS_URL=own_redis.url, BROKER_BACKOFF_MAX="0.5")
    server.open_room("outage")
    crowd, holders = people_on_both_workers(server, "outage")
    chat_for(crowd, 5, "before")
    own_redis.kill()
    wait_for(lambda: health(server) == (503, {"status": "degraded", "db": "ok", "broker": "error"}),
             message="/healthz to name the broker")
    # pages and the API keep serving; sending still stores, and senders see their message
    assert server.get("/outage/").status_code == 200
    assert server.post_json("outage", "api", "posted while Redis is down").status_code == 201
    # only one worker's clients send: the other worker hears of nothing but by its sweep
    senders, listeners = holders.values()
    chat_for(senders, 5, "during")
    sent = time.monotonic()
    for person in senders:
        wait_for(lambda person=person: f"during 4 from {person.name}" in person.acknowledged(), message="own echo")
    during = {f"during {n} from {p.name}" for n in range(5) for p in senders}
    wait_for(lambda: all(during <= {m["message"] for m in p.messages.values()} for p in listeners),
             timeout=2 * SWEEP_INTERVAL + 5, message="the sweep to deliver to the other worker")
    assert time.monotonic() - sent < 2 * SWEEP_INTERVAL + 5
    assert own_redis.process.poll() is not None, "Redis was down all along"
    reconnects = server.metric("chat_broker_reconnects_total")
    own_redis.start()  # same port
    started = time.monotonic()
    wait_for(lambda: server.metric("chat_broker_reconnects_total") >= reconnects + 2, timeout=5,
             message="both workers to re-subscribe within 5 s")
    assert time.monotonic() - started < 5
    assert health(server) == (200, {"status": "ok", "db": "ok", "broker": "ok"})
    chat_for(crowd, 5, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "outage"))


def test_redis_dropping_subscribers_loses_nothing(live, own_redis):
    server = live(WEB_CONCURRENCY=2, REDIS_URL=own_redis.url)
    server.open_room("dropped")
    # Both workers subscribed (a worker with nobody in the room has no subscription to drop).
    crowd, _ = people_on_both_workers(server, "dropped", at_least=6)
    chat_for(crowd, 3, "before")
    reconnects = server.metric("chat_broker_reconnects_total")
    # what Redis does to a subscriber whose output buffer overflows
    own_redis.client().client_kill_filter(_type="pubsub")
    chat_for(crowd, 3, "while dropped", pause=0)
    wait_for(lambda: server.metric("chat_broker_reconnects_total") >= reconnects + 2, timeout=5,
             message="re-subscription")
    chat_for(crowd, 3, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "dropped"))


# -- workers and restarts -------------------------------------------------------------------


def test_a_killed_worker_loses_nothing(live, redis_server):
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)
    server.open_room("killed")
    crowd, holders = people_on_both_workers(server, "killed")
    victim, survivor = holders
    chat_for(crowd, 5, "before")
    pump = gevent.spawn(chat_for, crowd, 20, "around the kill")
    gevent.sleep(0.1)
    os.kill(victim, signal.SIGKILL)
    pump.get()  # raises what the pump raised
    wait_for(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == 2,
             message="gunicorn to replace the worker")
    chat_for(crowd, 5, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "killed"))
    assert all(person.closes == [1006] for person in holders[victim]), "the killed worker's clients reconnect"
    assert all(not person.closes for person in holders[survivor]), "the other worker's clients notice nothing"


def test_a_restart_drains_with_1012_and_clients_resume(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    first = live("first", database_url=database, REDIS_URL=redis_server.url)
    other = live("other", database_url=database, REDIS_URL=redis_server.url)
    first.open_room("restart")
    crowd = people(first, "restart", 6)
    chat_for(crowd, 3, "before")
    started = time.monotonic()
    first.stop()  # SIGTERM
    assert time.monotonic() - started < 5, "a stop drains at once instead of waiting out its timeout"
    for n in range(5):
        other.post_json("restart", "api", f"while it was down {n}")
    live("first-again", database_url=database, port=first.port, REDIS_URL=redis_server.url)
    chat_for(crowd, 3, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(other.url, "restart"))
    assert all(1012 in person.closes for person in crowd)


def test_a_graceful_reload_moves_clients_to_new_workers(live, redis_server):
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url)
    server.open_room("reload")
    crowd = people(server, "reload", 6)
    chat_for(crowd, 3, "before")
    old_workers = set(server.worker_pids())
    server.process.send_signal(signal.SIGHUP)  # new workers start, old ones drain
    wait_for(lambda: not old_workers & set(server.worker_pids()) and len(server.worker_pids()) == 2,
             timeout=20, message="the new workers")
    chat_for(crowd, 3, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "reload"))
    assert all(person.closes == [1012] for person in crowd), [person.closes for person in crowd]


# -- the database ---------------------------------------------------------------------------


def test_postgres_unreachable_then_back(live, redis_server, postgres):
    proxy = TCPProxy((postgres.host, postgres.port), free_port()).start()
    database = postgres.url.replace(f"{postgres.host}:{postgres.port}", f"127.0.0.1:{proxy.port}")
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, database_url=database)
    server.open_room("pgdown")
    crowd = people(server, "pgdown", 4)
    chat_for(crowd, 3, "before")
    workers = set(server.worker_pids())
    browser = requests.Session()
    token = csrf_token(browser.get(server.url + "/pgdown/").text)
    proxy.cut()
    crowd[0].send("while the database is away")
    wait_for(lambda: crowd[0].errors, message="an error frame")
    assert crowd[0].errors[-1] == "not stored: the database is unavailable; try again"
    response = server.post_json("pgdown", "api", "also not stored")
    assert response.status_code == 503 and "nothing was stored" in response.json()["error"]
    assert int(response.headers["Retry-After"]) > 0
    form = browser.post(server.url + "/pgdown/messages", allow_redirects=False,
                        data={"csrf_token": token, "handle": "form", "message": "nor this"})
    assert form.status_code == 503 and int(form.headers["Retry-After"]) > 0
    page = server.get("/pgdown/")
    assert page.status_code == 503 and "not reachable" in page.text and "Traceback" not in page.text
    assert health(server) == (503, {"status": "degraded", "db": "error", "broker": "ok"})
    assert int(server.get("/healthz").headers["Retry-After"]) > 0
    with pytest.raises(Closed) as closed:
        WSClient(server.ws_url("/chat/pgdown/")).recv()
    assert closed.value.code == 1011  # try again later
    proxy.restore()
    wait_for(lambda: health(server)[0] == 200, message="the database to be back")
    chat_for(crowd, 3, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "pgdown"))
    stored = stored_messages(server.url, "pgdown")
    assert {"while the database is away", "also not stored", "nor this"}.isdisjoint(m["message"] for m in stored)
    assert set(server.worker_pids()) == workers, "the workers survived"


def test_an_unforeseen_database_error_closes_the_socket_with_1011_and_nothing_else(live, postgres):
    server = live(database_url=postgres.url)
    server.open_room("broken")
    client = server.socket("broken")
    with psycopg2.connect(postgres.url) as conn, conn.cursor() as cur:
        cur.execute("ALTER TABLE message RENAME TO message_moved")  # an operator's mistake
    try:
        client.send("a", "into the void")
        with pytest.raises(Closed) as closed:
            client.recv(timeout=5)
        assert closed.value.code == 1011
    finally:
        with psycopg2.connect(postgres.url) as conn, conn.cursor() as cur:
            cur.execute("ALTER TABLE message_moved RENAME TO message")
    again = server.socket("broken")
    again.send("a", "after the fix")
    assert again.recv()["message"] == "after the fix"
    log = server.log()
    assert 'event="unhandled_error"' in log and "UndefinedTable" in log
    assert "Invalid request" not in log  # no HTTP error page written into the socket


def test_sqlite_locked_too_long_is_a_clear_error_then_recovers(live, tmp_path):
    path = tmp_path / "locked.sqlite3"
    server = live(database_url=f"sqlite:///{path}", DATABASE_WRITE_TIMEOUT="1")
    server.open_room("locked")
    crowd = people(server, "locked", 2)
    chat_for(crowd, 2, "before")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another program holding the write lock
    try:
        crowd[0].send("blocked")
        wait_for(lambda: crowd[0].errors, timeout=5, message="an error frame")
        assert "database is unavailable" in crowd[0].errors[-1]
        assert server.get("/locked/").status_code == 200  # readers are not blocked (WAL)
        assert server.post_json("locked", "api", "blocked too").status_code == 503
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    chat_for(crowd, 2, "after")
    assert_nothing_lost(crowd, lambda: stored_messages(server.url, "locked"))
    assert {"blocked", "blocked too"}.isdisjoint(m["message"] for m in stored_messages(server.url, "locked"))


def test_every_pooled_connection_busy_on_a_live_socket_is_an_error_and_the_socket_stays_open(live, postgres):
    """Guarantee "overload": a worker whose only pooled connection waits on a lock held
    outside answers the next message with an error frame after DATABASE_WRITE_TIMEOUT;
    the socket stays open, and the waiting message is stored once the lock goes."""
    server = live(database_url=postgres.url, DATABASE_POOL_SIZE="1", DATABASE_WRITE_TIMEOUT="1")
    server.open_room("overload")
    first, second = people(server, "overload", 2)
    chat_for([first, second], 1, "before")
    wait_for(lambda: all(answered(p) for p in (first, second)), message="the first messages")
    holder = psycopg2.connect(postgres.url)
    try:
        with holder.cursor() as cur:  # another program holding the room's insert lock
            cur.execute("SELECT id FROM room WHERE label = 'overload' FOR UPDATE")
        first.send("waits for the lock")  # takes the worker's one connection, and waits
        gevent.sleep(0.3)
        second.send("finds no connection")
        wait_for(lambda: second.errors, timeout=10, message="an error frame")
        assert second.errors == ["not stored: the database is unavailable; try again"]
    finally:
        holder.rollback()
        holder.close()
    wait_for(lambda: "waits for the lock" in first.acknowledged(), message="the waiting message")
    second.send("after the lock")  # the same socket, still open
    wait_for(lambda: "after the lock" in second.acknowledged(), message="the same socket to work")
    assert not second.closes and not first.closes
    assert_nothing_lost([first, second], lambda: stored_messages(server.url, "overload"))
    assert "finds no connection" not in [m["message"] for m in stored_messages(server.url, "overload")]


# -- slow clients ---------------------------------------------------------------------------


def _latencies(participant, tag):
    """Seconds from sending to arriving, for this client's messages of a burst."""
    return [
        participant.arrived[i] - float(m["message"].split()[-1]) for i, m in participant.messages.items()
        if m["message"].startswith(tag)
    ]


def _p99(values):
    values = sorted(values)
    return values[int(len(values) * 0.99) - 1] if values else 0.0


def _timed_burst(sender, readers, tag, count, size):
    arrival = {}
    padding = "x" * size
    for n in range(count):
        sender.send(f"{tag} {n} {padding} {time.time()}")
        gevent.sleep(0.005)
    wait_for(lambda: all(sum(1 for m in r.messages.values() if m["message"].startswith(tag)) == count
                         for r in readers), timeout=20, message=f"{tag} to arrive")
    for reader in readers:
        arrival[reader.name] = _latencies(reader, tag)
    return _p99([value for values in arrival.values() for value in values])


def _closed_with(client, timeout=10):
    """Read whatever is still buffered for ``client`` until it closes; return the code."""
    deadline = time.monotonic() + timeout
    with pytest.raises(Closed) as closed:
        while time.monotonic() < deadline:
            client.recv(timeout=max(0.1, deadline - time.monotonic()))
    return closed.value.code


def test_a_client_that_stops_reading_never_slows_the_others(live):
    """Guarantee "a client stops reading" (the byte limit): the others' p99 stays within
    2x the run without it (plus 50 ms of noise), the stuck socket is closed with 1013, memory stays
    bounded, nothing is lost for the others."""
    server = live(SEND_BACKLOG_MAX_BYTES="262144", MAX_CONNECTIONS_PER_ADDRESS=0, RATE_LIMIT="0")
    server.open_room("slow")
    readers = people(server, "slow", 10)
    sender = readers[0]
    worker = server.worker_pids()[0]
    rss_before = _rss(worker)
    baseline = _timed_burst(sender, readers, "calm", 200, 1000)
    stuck = WSClient(server.ws_url("/chat/slow/"), receive_buffer=4096)  # stops reading here
    burst = gevent.spawn(_timed_burst, sender, readers, "busy", 1000, 1000)
    wait_for(lambda: server.metric("chat_dropped_clients_total", reason="slow") == 1, timeout=15,
             message="the stuck client to be dropped")
    # it reads again at once (within the close grace): behind its old frames, a 1013
    assert _closed_with(stuck) == 1013, "the stuck client is told to come back later"
    with_slow = burst.get()
    # a worker that waited on the stuck socket would add seconds; 50 ms is the machine's noise
    assert with_slow <= 2 * baseline + 0.05, f"p99 {with_slow:.4f}s with a stuck client, {baseline:.4f}s without"
    assert _rss(worker) - rss_before < 40 * 1024 * 1024, "the worker's memory stays bounded"
    assert_nothing_lost(readers, lambda: stored_messages(server.url, "slow"))


def test_a_backlog_that_waits_too_long_is_dropped_with_1013(live):
    """Guarantee "a client stops reading" (the time limit): a backlog far below the byte
    limit that nobody reads for SEND_BACKLOG_MAX_SECONDS is dropped with 1013."""
    server = live(SEND_BACKLOG_MAX_BYTES=str(64 * 1024 * 1024), SEND_BACKLOG_MAX_SECONDS="1",
                  SOCKET_SEND_BUFFER="4096", RATE_LIMIT="0")
    server.open_room("stale")
    stuck = WSClient(server.ws_url("/chat/stale/"), receive_buffer=4096)  # never reads
    sender = server.socket("stale")
    for n in range(60):  # ~110 kB: more than both kernel buffers, far below the byte limit
        sender.send("a", f"{n} " + "x" * 1800)
        assert "id" in sender.recv()
    filled = time.monotonic()
    wait_for(lambda: server.metric("chat_dropped_clients_total", reason="slow") == 1, timeout=10,
             message="the stale backlog to be dropped")
    assert time.monotonic() - filled >= 0.5, "dropped for its age, not its size"
    assert _closed_with(stuck) == 1013
    sender.send("a", "the sender is fine")
    assert sender.recv()["message"] == "the sender is fine"


def _rss(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
