"""The chat as people use it: real Chromium pages against a real server."""

import time

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

ROW_SCRIPT = """els => els.map(e => [Number(e.id.slice(8)), e.querySelector('.handle').textContent,
                                     e.querySelector('.text').innerText])"""


def rows(page):
    return page.eval_on_selector_all("#chat .msg", ROW_SCRIPT)


def texts(page):
    return [text for _, _, text in rows(page)]


def wait_live(page):
    expect(page.locator("#status")).to_have_attribute("data-state", "live")


# Every state the connection status shows from now on, in order, in window.statesSeen.
RECORD_STATES = """() => {
    const status = document.getElementById("status");
    window.statesSeen = [];
    new MutationObserver(() => window.statesSeen.push(status.dataset.state))
        .observe(status, { attributes: true, attributeFilter: ["data-state"] });
}"""


def say(page, message, handle=None):
    if handle is not None:
        page.fill("#handle", handle)
    page.fill("#message", message)
    page.press("#message", "Enter")


def test_two_pages_see_each_other_at_once(server, open_page):
    server.open_room("pair")
    ann = open_page(server.url + "/pair/")
    bob = open_page(server.url + "/pair/")
    wait_live(ann)
    wait_live(bob)
    started = time.monotonic()
    say(ann, "hello from ann", handle="ann")
    for page in (ann, bob):
        expect(page.locator("#chat .msg")).to_have_count(1, timeout=1000)
    assert time.monotonic() - started < 1.0
    expect(ann.locator("#message")).to_have_value("")
    assert ann.evaluate("document.activeElement.id") == "message"
    say(bob, "hi ann, bob here", handle="bob")
    for page in (ann, bob):
        expect(page.locator("#chat .msg")).to_have_count(2, timeout=1000)
        assert texts(page) == ["hello from ann", "hi ann, bob here"]
    # own messages are told apart from others'
    assert ann.locator("#chat .msg.mine").count() == 1
    assert "hello" in ann.locator("#chat .msg.mine").inner_text()


def test_shift_enter_makes_a_new_line_and_newlines_survive(server, open_page):
    server.open_room("lines")
    page = open_page(server.url + "/lines/")
    wait_live(page)
    page.fill("#handle", "ann")
    page.click("#message")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    expect(page.locator("#chat .msg")).to_have_count(1)
    assert texts(page) == ["first line\nsecond line"]


def test_without_javascript_the_form_still_posts(server, open_page):
    server.open_room("plain")
    page = open_page(server.url + "/plain/", java_script_enabled=False)
    page.fill("#handle", "nojs")
    page.fill("#message", "posted the old way")
    page.click("#chatform button[type=submit]")
    page.wait_for_url(server.url + "/plain/")
    assert rows(page)[-1][1:] == ["nojs", "posted the old way"]
    page.fill("#handle", "nojs")
    page.fill("#message", "  ")  # the browser's own check is bypassed below
    page.evaluate("document.querySelector('#message').removeAttribute('required')")
    page.click("#chatform button[type=submit]")
    expect(page.locator("#chat-error")).to_have_text("message is empty")


def test_the_embed_updates_live(server, open_page):
    server.open_room("shown")
    server.post_json("shown", "ann", "before the embed opened")
    embed = open_page(server.url + "/shown/embed")
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    assert texts(embed) == ["before the embed opened"]
    server.socket("shown").send("bob", "live into the embed")
    expect(embed.locator("#chat .msg")).to_have_count(2, timeout=2000)
    assert texts(embed)[-1] == "live into the embed"
    assert embed.locator("form").count() == 0


def test_the_embed_works_in_an_iframe_of_another_origin(server, open_page, tmp_path):
    """A page served from another origin frames the embed and sees messages live."""
    import subprocess
    import sys

    from ..support import free_port, wait_for

    server.open_room("framed")
    (tmp_path / "host.html").write_text(
        f'<h1>A blog</h1><iframe id="chat" src="{server.url}/framed/embed" width="400" height="400"></iframe>'
    )
    port = free_port()
    host = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/host.html"), message="the host page")
        page = open_page(f"http://127.0.0.1:{port}/host.html")
        frame = page.frame_locator("#chat")
        expect(frame.locator("#status")).to_have_attribute("data-state", "live")
        server.post_json("framed", "ann", "seen through the frame")
        expect(frame.locator("#chat .msg")).to_have_count(1, timeout=2000)
    finally:
        host.kill()


def _answers(url):
    import requests

    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_new_lands_in_a_fresh_room_that_works_at_once(server, open_page):
    page = open_page(server.url + "/")
    page.click("#new-room")
    page.wait_for_url(f"{server.url}/*/")
    label = page.url.rstrip("/").rsplit("/", 1)[-1]
    assert page.locator("#room-name").inner_text() == label
    assert page.locator("#chat .msg").count() == 0
    wait_live(page)
    say(page, "first words", handle="ann")
    expect(page.locator("#chat .msg")).to_have_count(1)
    assert server.get(f"/api/rooms/{label}/messages").json()["messages"][0]["message"] == "first words"


def test_a_refused_message_shows_why_and_keeps_the_text(server, open_page):
    server.open_room("refusal")
    page = open_page(server.url + "/refusal/")
    wait_live(page)
    page.evaluate("document.querySelector('#message').removeAttribute('maxlength')")
    long_text = "x" * 2001
    say(page, long_text, handle="ann")
    expect(page.locator("#chat-error")).to_contain_text("longer than 2000")
    expect(page.locator("#message")).to_have_value(long_text)
    assert page.locator("#chat .msg").count() == 0


def test_websockets_blocked_the_page_falls_back_to_the_event_stream(server, open_page):
    server.open_room("blocked")
    blocked = open_page()
    blocked.route_web_socket("**/ws/**", lambda socket: socket.close())  # never reaches the server
    blocked.goto(server.url + "/blocked/")
    expect(blocked.locator("#status")).to_have_attribute("data-state", "fallback", timeout=10_000)
    other = open_page(server.url + "/blocked/")
    wait_live(other)
    say(other, "to the blocked page", handle="bob")
    expect(blocked.locator("#chat .msg")).to_have_count(1, timeout=3000)
    say(blocked, "from the blocked page", handle="ann")
    for page in (blocked, other):
        expect(page.locator("#chat .msg")).to_have_count(2, timeout=3000)
        assert texts(page) == ["to the blocked page", "from the blocked page"]
    expect(blocked.locator("#message")).to_have_value("")


def test_the_page_reconnects_after_a_restart_and_misses_nothing(live, redis_server, tmp_path, open_page):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    first = live("first", database_url=database, REDIS_URL=redis_server.url)
    other = live("other", database_url=database, REDIS_URL=redis_server.url)
    first.open_room("restart")
    page = open_page(first.url + "/restart/")
    wait_live(page)
    page.evaluate(RECORD_STATES)
    other.post_json("restart", "ann", "before the restart")
    expect(page.locator("#chat .msg")).to_have_count(1)
    first.stop()  # SIGTERM: sockets are closed with 1012, the page starts reconnecting
    expect(page.locator("#status")).not_to_have_attribute("data-state", "live")
    for n in range(3):
        other.post_json("restart", "ann", f"while it was down {n}")
    live("first-again", database_url=database, port=first.port, REDIS_URL=redis_server.url)
    expect(page.locator("#chat .msg")).to_have_count(4, timeout=15_000)
    wait_live(page)
    other.post_json("restart", "ann", "after")
    expect(page.locator("#chat .msg")).to_have_count(5)
    ids = [row[0] for row in rows(page)]
    assert ids == sorted(set(ids))
    assert texts(page) == ["before the restart"] + [f"while it was down {n}" for n in range(3)] + ["after"]
    # A restart is not a blocked socket: the page never showed the event-stream fallback.
    assert "fallback" not in page.evaluate("window.statesSeen"), page.evaluate("window.statesSeen")


PAYLOADS = [line for line in open(__file__.replace("test_chat_in_browser.py", "xss_payloads.txt")).read().splitlines()
            if line]
SUSPICIOUS = "#chat script, #chat img, #chat svg, #chat .msg a:not([href^='http']), #chat iframe, " \
             "#chat object, #chat embed, #chat input, " \
             "#chat form, #chat style, #chat link, #chat meta, #chat base, #chat [hx-get], #chat [hx-post], " \
             "#chat [hx-swap-oob], #chat [hx-on\\:click], #chat [data-hx-get], #chat [ws-connect], #chat [sse-connect]"


def test_hostile_text_is_shown_as_text_and_does_nothing(live, redis_server, open_page):
    """66 payloads, each arriving three ways (rendered in the page, pushed over the htmx
    socket, streamed to the embed): all shown as the text that was sent, none acts; the
    only links are the http(s) URLs in the text."""
    assert len(PAYLOADS) >= 50
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, RATE_LIMIT="0")  # one socket sends them all
    server.open_room("hostile")
    page = open_page(server.url + "/hostile/")
    embed = open_page(server.url + "/hostile/embed")
    dialogs, requests = [], []
    for watched in (page, embed):
        watched.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        watched.on("request", lambda request: requests.append(request.url))
    wait_live(page)
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    sender = server.socket("hostile")
    for payload in PAYLOADS:
        sender.send(payload[:50], payload)
    for live_view in (page, embed):  # pushed live
        expect(live_view.locator("#chat .msg")).to_have_count(len(PAYLOADS), timeout=5000)
        assert texts(live_view) == PAYLOADS
    page.reload()  # rendered by the server
    wait_live(page)
    page.wait_for_timeout(500)
    assert texts(page) == PAYLOADS[-50:]  # the page shows the last 50
    assert [handle for _, handle, _ in rows(page)] == [p[:50].strip() for p in PAYLOADS[-50:]]
    assert dialogs == []
    assert [url for url in requests if not url.startswith(server.url)] == []
    assert not [url for url in requests if "/api/" in url or url.endswith(("/x", "/x.js"))]
    for view in (page, embed):
        assert view.locator(SUSPICIOUS).count() == 0
        # the only links are http(s) URLs of the text, shown as sent, opening a new tab
        for href, text, rel, target in view.eval_on_selector_all(
                "#chat .msg a", "els => els.map(a => [a.getAttribute('href'), a.textContent, a.rel, a.target])"):
            assert href.lower().startswith(("http://", "https://")) and text == href
            assert (rel, target) == ("nofollow noopener noreferrer ugc", "_blank")
        assert view.locator("#room-name").inner_text() == "hostile"
    assert page.locator("#chat-error").inner_text() == ""


SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}


@pytest.mark.parametrize("size", list(SIZES))
def test_screenshots(live, redis_server, open_page, screenshot, size):
    """Home, room and embed at phone and desktop widths (written to artifacts/screenshots):
    a longer room (a short history page, so "Earlier messages" shows) with a link."""
    server = live(WEB_CONCURRENCY=2, REDIS_URL=redis_server.url, HISTORY_SIZE=6 if size == "desktop" else 4)
    server.open_room("design-review")
    for handle, message in [
        ("chen", "Who has the release checklist?"),
        ("bob", "Pinned it last week, scroll up."),
        ("ann", "Morning! Is the deploy still on for 10:00?"),
        ("bob", "Yes. Redis is upgraded, the workers restart one by one."),
        ("chen", "Runbook: https://example.org/runbooks/rolling-restart"),
        ("ann", "Great. I'll watch /metrics while it happens."),
        ("chen", "Reconnects are automatic, nobody should notice 👍"),
        ("bob", "Going ahead now."),
    ]:
        server.post_json("design-review", handle, message)
    server.open_room("release-notes")
    viewport = SIZES[size]
    home = open_page(server.url + "/", viewport=viewport)
    screenshot(home, f"home-{size}")
    room = open_page(server.url + "/design-review/", viewport=viewport)
    wait_live(room)
    room.fill("#handle", "ann")
    room.press("#handle", "Tab")
    expect(room.locator("#presence")).to_have_text("ann")
    room.evaluate("document.querySelectorAll('#chat .msg')"
                  ".forEach(r => r.classList.toggle('mine', r.dataset.handle === 'ann'))")
    expect(room.locator("#earlier")).to_be_visible()
    expect(room.locator("#chat .msg a")).to_have_text("https://example.org/runbooks/rolling-restart")
    screenshot(room, f"room-{size}")
    embed = open_page(server.url + "/design-review/embed", viewport=viewport)
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    screenshot(embed, f"embed-{size}")
    # no horizontal scrolling at this width
    assert room.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # the newest message is in view and the composer is on screen
    last = room.locator("#chat .msg").last.bounding_box()
    composer = room.locator("#chatform").bounding_box()
    assert last["y"] + last["height"] <= composer["y"] + 1
    assert composer["y"] + composer["height"] <= viewport["height"] + 1


@pytest.mark.parametrize("path", ["/away/", "/away/embed"])
def test_away_for_more_than_five_hundred_the_page_reloads_its_history(live, redis_server, tmp_path, open_page, path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    first = live("first", database_url=database, REDIS_URL=redis_server.url)
    other = live("other", database_url=database, REDIS_URL=redis_server.url, RATE_LIMIT="0")
    first.open_room("away")
    other.post_json("away", "ann", "before")
    page = open_page(first.url + path)
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    expect(page.locator("#chat .msg")).to_have_count(1)
    first.stop()
    for n in range(510):
        other.post_json("away", "bob", f"missed {n}")
    live("first-again", database_url=database, port=first.port, REDIS_URL=redis_server.url)
    # not a silent partial replay: the latest 50, then live again
    expect(page.locator("#chat .msg .text").first).to_have_text("missed 460", timeout=20_000)
    expect(page.locator("#chat .msg")).to_have_count(50)
    assert texts(page) == [f"missed {n}" for n in range(460, 510)]
    if path == "/away/":  # the older ones stay reachable
        expect(page.locator("#earlier")).to_have_attribute("href", f"/away/?before={rows(page)[0][0]}")
    expect(page.locator("#status")).to_have_attribute("data-state", "live")
    other.post_json("away", "bob", "back to live")
    expect(page.locator("#chat .msg").last).to_contain_text("back to live")
    ids = [row[0] for row in rows(page)]
    assert ids == sorted(set(ids))


def presence(page):
    return page.eval_on_selector_all("#presence li", "els => els.map(e => e.textContent)")


def test_people_see_who_is_here_who_is_typing_and_renames(server, open_page):
    server.open_room("club")
    ann = open_page(server.url + "/club/")
    wait_live(ann)
    ann.fill("#handle", "Ann")
    ann.press("#handle", "Tab")  # change: remembered, and shown to the others
    bob = open_page(server.url + "/club/")
    wait_live(bob)
    bob.fill("#handle", "Bob")
    bob.press("#handle", "Tab")
    for page in (ann, bob):
        expect(page.locator("#presence li")).to_have_count(2)
        expect(page.locator("#presence")).to_contain_text("Ann")
        expect(page.locator("#presence")).to_contain_text("Bob")
    # typing
    bob.click("#message")
    bob.keyboard.type("hello a")
    expect(ann.locator("#typing")).to_have_text("Bob is typing…")
    assert bob.locator("#typing").inner_text() == ""
    # a rename shows everywhere, the label stays
    ann.click(".rename summary")
    ann.fill("#room-name-input", "Book club")
    ann.click("#rename-form button")
    for page in (ann, bob):
        expect(page.locator("#room-name")).to_have_text("Book club")
        assert page.locator("#room-label").inner_text() == "club"
    # a closed tab leaves the list
    bob.context.close()
    expect(ann.locator("#presence li")).to_have_count(1)
    assert presence(ann) == ["Ann"]
    # the name is remembered on the next visit
    again = open_page(server.url + "/club/")
    expect(again.locator("#handle")).not_to_have_value("Ann")  # another browser, another visitor
    ann.reload()
    expect(ann.locator("#handle")).to_have_value("Ann")


def test_the_home_page_updates_without_a_reload(server, open_page):
    server.open_room("quiet-room")
    server.post_json("quiet-room", "z", "hi")  # the home page lists rooms someone wrote in
    home = open_page(server.url + "/")
    assert "here" not in home.locator("#rooms").inner_text()
    visitor = open_page(server.url + "/quiet-room/")
    wait_live(visitor)
    expect(home.locator("#rooms")).to_contain_text("1 here", timeout=8000)
