"""Who's here, remembered names, room names and typing, against real servers."""

import json
import os
import re
import signal
import time

import pytest
import requests

from .html import csrf_token, parse
from .sseclient import SSEClient
from .wsclient import WSClient

pytestmark = pytest.mark.live


class Watcher:
    """A JSON client that asked for presence, typing and renames (and says who it is)."""

    def __init__(self, server, label, handle=None, events="presence,typing,room"):
        query = f"?events={events}" + (f"&handle={handle}" if handle else "")
        self.ws = WSClient(server.ws_url(f"/chat/{label}/{query}"))
        self.frames = []

    def next_of(self, key, timeout=10, where=lambda value: True):
        """Read until a frame with ``key`` (whose value passes ``where``) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if key in frame and where(frame[key]):
                    self.frames.remove(frame)
                    return frame[key]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key} frame passing the check; got {self.frames}")
            try:
                self.frames.append(json.loads(self.ws.recv(timeout=remaining)))
            except TimeoutError:
                pass

    def presence(self, expected, timeout=10):
        return self.next_of("presence", timeout, lambda handles: handles == expected)


def browser_session(server, label):
    """A session like a browser's: the room page (setting the cookie), its CSRF token."""
    session = requests.Session()
    page = session.get(f"{server.url}/{label}/").text
    token = csrf_token(page)
    return session, token, page


def htmx_socket(server, label, session):
    cookie = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
    return WSClient(server.ws_url(f"/ws/{label}/"), headers=[("Cookie", cookie)])


def test_presence_is_shared_across_two_servers(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    one = live("one", database_url=database, REDIS_URL=redis_server.url)
    two = live("two", database_url=database, REDIS_URL=redis_server.url)
    one.open_room("lounge")
    ann = Watcher(one, "lounge", handle="ann")
    ann.presence(["ann"])
    bob = Watcher(two, "lounge", handle="bob")
    bob.presence(["ann", "bob"])
    ann.presence(["ann", "bob"])
    watcher = Watcher(two, "lounge")  # no handle: sees who is here, is not listed
    watcher.presence(["ann", "bob"])
    bob.ws.close()
    ann.presence(["ann"])
    assert one.get("/api/rooms").json()["rooms"][0]["here"] == 1


def test_a_killed_worker_s_clients_leave_the_list_by_themselves(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    doomed = live("doomed", database_url=database, REDIS_URL=redis_server.url, PRESENCE_TTL="2")
    observer = live("observer", database_url=database, REDIS_URL=redis_server.url, PRESENCE_TTL="2")
    doomed.open_room("expiry")
    ghost = Watcher(doomed, "expiry", handle="ghost")
    ghost.presence(["ghost"])
    watching = Watcher(observer, "expiry", handle="eve")
    watching.presence(["eve", "ghost"])
    for pid in doomed.worker_pids():
        os.kill(pid, signal.SIGKILL)  # no goodbye: its entry must lapse
    watching.presence(["eve"], timeout=6)  # within PRESENCE_TTL plus one refresh pass
    assert ghost.ws.sock.fileno() != -1  # the client never said goodbye


def test_the_seed_protocol_is_unchanged_by_presence_typing_and_renames(live):
    server = live()
    server.open_room("plain")
    seed_client = server.socket("plain")  # no ?events: the seed's own client
    session, token, _ = browser_session(server, "plain")
    with htmx_socket(server, "plain", session) as page_socket:
        page_socket.send(json.dumps({"action": "typing", "handle": "ann", "message": ""}))
        session.post(f"{server.url}/plain/name", data={"csrf_token": token, "name": "Plain talk"})
        server.post_json("plain", "ann", "just a message")
        assert seed_client.recv()["message"] == "just a message"
        with pytest.raises(TimeoutError):
            seed_client.recv(timeout=1)


def test_a_rename_reaches_every_kind_of_client_and_keeps_the_label(live):
    server = live()
    server.open_room("old-name")
    session, token, _ = browser_session(server, "old-name")
    watcher = Watcher(server, "old-name", events="room")
    stream = SSEClient(f"{server.url}/old-name/events?events=room")
    with htmx_socket(server, "old-name", session) as page_socket:
        response = session.post(f"{server.url}/old-name/name", data={"csrf_token": token, "name": "  Book club <3  "},
                                allow_redirects=False)
        assert response.status_code == 303 and response.headers["Location"] == "/old-name/"
        assert watcher.next_of("name") == "Book club <3"
        event = stream.next_event()
        assert event.event == "room" and event.data == "Book club &lt;3"
        fragment = ""
        while 'id="room-name"' not in fragment:
            fragment = page_socket.recv()
        heading = parse(fragment).by_id("room-name")
        assert heading.text() == "Book club <3" and heading.attrs["hx-swap-oob"] == "true"
    page = parse(server.get("/old-name/").text)
    assert page.by_id("room-name").text() == "Book club <3"
    assert page.by_id("room-label").text() == "old-name"
    assert server.get("/api/rooms").json()["rooms"][0]["name"] == "Book club <3"
    for bad, reason in [("", "needs a name"), ("x" * 81, "longer than 80"), ("tab\there", "one line")]:
        refused = session.post(f"{server.url}/old-name/name", data={"csrf_token": token, "name": bad})
        assert refused.status_code == 422 and reason in parse(refused.text).by_id("rename-error").text()
    assert session.post(f"{server.url}/old-name/name", data={"name": "no token"}).status_code == 400
    assert server.get("/api/rooms").json()["rooms"][0]["name"] == "Book club <3"


def test_typing_is_shown_to_the_others_throttled_and_never_stored(live):
    server = live(TYPING_THROTTLE="2")
    server.open_room("typing")
    ann_session, _, _ = browser_session(server, "typing")
    bob_session, _, _ = browser_session(server, "typing")
    watcher = Watcher(server, "typing", events="typing")
    with htmx_socket(server, "typing", ann_session) as ann, htmx_socket(server, "typing", bob_session) as bob:
        for _ in range(5):  # a burst of keystrokes
            ann.send(json.dumps({"action": "typing", "handle": "ann"}))
        assert watcher.next_of("typing") == "ann"
        shown = [frame for frame in _drain(bob, 2.5) if 'id="typing"' in frame]
        assert len(shown) == 1 and "ann is typing" in parse(shown[0]).by_id("typing").text()
        assert [frame for frame in _drain(ann, 0.5) if 'id="typing"' in frame] == []  # not to the typist
        with pytest.raises(AssertionError):
            watcher.next_of("typing", timeout=1)  # throttled: one signal per 2 s
    assert server.get("/api/rooms/typing/messages").json()["messages"] == []


def _drain(ws, seconds):
    frames, deadline = [], time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            frames.append(ws.recv(timeout=remaining))
        except TimeoutError:
            break
    return frames


def test_handles_are_generated_remembered_and_editable(live):
    server = live()
    server.open_room("names")
    session, token, page = browser_session(server, "names")
    generated = parse(page).by_id("handle").attrs["value"]
    assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", generated)
    assert parse(session.get(f"{server.url}/names/").text).by_id("handle").attrs["value"] == generated
    assert session.post(f"{server.url}/names/handle", data={"csrf_token": token, "handle": "  Zoë  "},
                        headers={"HX-Request": "true"}).status_code == 204
    assert parse(session.get(f"{server.url}/names/").text).by_id("handle").attrs["value"] == "Zoë"
    refused = session.post(f"{server.url}/names/handle", data={"csrf_token": token, "handle": " "},
                           headers={"HX-Request": "true"})
    assert refused.status_code == 422
    # posting under a name remembers it too (the no-JavaScript way)
    session.post(f"{server.url}/names/messages", data={"csrf_token": token, "handle": "Zed", "message": "hi"})
    page = parse(session.get(f"{server.url}/names/").text)
    assert page.by_id("handle").attrs["value"] == "Zed"
    assert "mine" in page.by_class("msg")[0].attrs["class"]  # own messages marked by the server


def test_the_same_person_in_two_tabs_is_listed_once(live):
    server = live()
    server.open_room("tabs")
    session, _, _ = browser_session(server, "tabs")
    watcher = Watcher(server, "tabs")
    handle = session.get(f"{server.url}/tabs/").text.split('id="handle"')[1].split('value="')[1].split('"')[0]
    with htmx_socket(server, "tabs", session), htmx_socket(server, "tabs", session):
        watcher.presence([handle])
        assert server.get("/api/rooms").json()["rooms"][0]["here"] == 1
    watcher.presence([])


def test_a_new_name_on_the_page_updates_presence_at_once(live):
    server = live()
    server.open_room("rename-me")
    session, _, _ = browser_session(server, "rename-me")
    watcher = Watcher(server, "rename-me")
    with htmx_socket(server, "rename-me", session) as page_socket:
        watcher.next_of("presence", where=lambda handles: len(handles) == 1)
        page_socket.send(json.dumps({"action": "handle", "handle": "New Name"}))
        watcher.presence(["New Name"])
        page_socket.send(json.dumps({"action": "handle", "handle": ""}))
        assert any("handle is required" in frame for frame in _drain(page_socket, 1))


def test_the_home_page_counts_who_is_in_each_room(live):
    server = live()
    for label in ("busy", "empty"):  # the home page lists rooms someone wrote in
        server.open_room(label)
        server.post_json(label, "z", "hi")
    first, second = Watcher(server, "busy", handle="a"), Watcher(server, "busy", handle="b")
    second.presence(["a", "b"])
    assert first.presence(["a", "b"])
    home = parse(server.get("/").text)
    rooms = {item.find(lambda n: n.tag == "a").attrs["href"]: item.text() for item in home.by_id("rooms").all(
        lambda n: n.tag == "li")}
    assert "2 here" in rooms["/busy/"] and "here" not in rooms["/empty/"]
    assert home.by_id("rooms").attrs["hx-trigger"] == "every 5s"
