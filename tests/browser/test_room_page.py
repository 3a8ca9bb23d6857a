"""The room page never strands a reader or a message, in real Chromium: whatever ends its
socket it comes back; a send while the socket is down goes over HTTP at once; earlier
messages load above without moving the reader; links; the unread count; the embed
snippet; forms that outlive their first hour; and an accessibility check (axe-core)."""

import os
import subprocess
import sys

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from playwright.sync_api import expect

from ..support import LiveServer, free_port, wait_for
from .test_chat_in_browser import RECORD_STATES, _answers, rows, say, texts, wait_live

pytestmark = pytest.mark.browser

HERE = os.path.dirname(__file__)
AXE = os.path.join(HERE, "node_modules", "axe-core", "axe.min.js")
SOCKETS = "**/ws/**"
LINK_REL = "nofollow noopener noreferrer ugc"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, redis_server):
    """One server for the tests here that need nothing of their own (each uses its own
    rooms): gunicorn with two gevent workers and Redis, no message rate limit."""
    server = LiveServer(tmp_path_factory.mktemp("room-page"),
                        env={"WEB_CONCURRENCY": 2, "REDIS_URL": redis_server.url, "RATE_LIMIT": "0"}).start()
    yield server
    server.stop()


@pytest.fixture
def ws_blocked(shared):
    """The server behind a proxy that refuses every WebSocket handshake (403)."""
    port = free_port()
    proxy = subprocess.Popen([sys.executable, os.path.join(HERE, "refusing_proxy.py"), str(port), str(shared.port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url + "/healthz"), message="the refusing proxy")
        yield url
    finally:
        proxy.kill()
        proxy.wait()


def proxied(page):
    """Route the page's sockets through Playwright; return the list of routes (newest
    last), whose ``close(code=...)`` ends the page's side as a proxy would."""
    routes = []

    def through(route):
        route.connect_to_server()
        routes.append(route)

    page.route_web_socket(SOCKETS, through)
    return routes


def record_closes(page):
    page.evaluate("""() => { window.closeCodes = [];
        document.body.addEventListener("htmx:wsClose", e => window.closeCodes.push(e.detail.event.code)); }""")


def api_messages(server, label):
    return [m["message"] for m in server.get(f"/api/rooms/{label}/messages?limit=200").json()["messages"]]


# -- 1. a page that always comes back ---------------------------------------------------

@pytest.mark.parametrize("code", [1000, 1001, 1005, 1008, 1011, 4404])
def test_whatever_ends_the_socket_the_page_comes_back(shared, open_page, code):
    """README guarantee: any close code but the server's own 4404 is recovered from."""
    label = f"closed-{code}"
    shared.open_room(label)
    page = open_page()
    routes = proxied(page)
    page.goto(f"{shared.url}/{label}/")
    wait_live(page)
    record_closes(page)
    page.evaluate(RECORD_STATES)
    shared.post_json(label, "ann", "before the close")
    expect(page.locator("#chat .msg")).to_have_count(1)
    routes[-1].close(code=code, reason="" if code == 1005 else "closed on the way")
    page.wait_for_function("window.closeCodes.length > 0")
    assert page.evaluate("window.closeCodes[0]") == code
    shared.post_json(label, "bob", "after the close")
    expect(page.locator("#chat .msg")).to_have_count(2, timeout=8000)
    assert texts(page) == ["before the close", "after the close"]
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=8000)
    assert len(routes) >= 2  # it opened a new socket
    assert "reconnecting" in page.evaluate("window.statesSeen")
    say(page, "sent after coming back", handle="ann")
    expect(page.locator("#chat .msg")).to_have_count(3)
    assert api_messages(shared, label) == ["before the close", "after the close", "sent after coming back"]


def test_the_servers_4404_is_final_and_says_so(shared, open_page, tmp_path):
    import sqlite3

    shared.open_room("doomed")
    page = open_page(f"{shared.url}/doomed/")
    wait_live(page)
    database = shared.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute("DELETE FROM room WHERE label = 'doomed'")
    shared.stop()  # its sockets close with 1012: the page reconnects, and is told 4404
    shared.start()
    expect(page.locator("#status")).to_have_attribute("data-state", "gone", timeout=15_000)
    expect(page.locator("#status")).to_have_text("room gone")
    page.wait_for_timeout(1500)
    expect(page.locator("#status")).to_have_attribute("data-state", "gone")  # no more attempts


# -- 2. no stranded message ---------------------------------------------------------------

def test_sockets_refused_a_message_sent_in_the_first_second_goes_at_once(shared, ws_blocked, open_page):
    """README guarantee: a message sent while the socket is not open goes over HTTP."""
    shared.open_room("refused")
    page = open_page(f"{ws_blocked}/refused/")
    say(page, "sent at once", handle="ann")
    expect(page.locator("#message")).to_have_value("", timeout=3000)
    wait_for(lambda: api_messages(shared, "refused") == ["sent at once"], timeout=3, message="the message stored")
    expect(page.locator("#chat .msg")).to_have_count(1, timeout=10_000)
    expect(page.locator("#status")).to_have_attribute("data-state", "fallback")
    expect(page.locator("#status")).to_have_text("live (event stream fallback)")
    page.wait_for_timeout(1000)
    assert api_messages(shared, "refused") == ["sent at once"]  # never a second time
    assert page.locator("#chat .msg").count() == 1


@pytest.mark.parametrize("blocked", [False, True], ids=["socket", "fallback"])
def test_a_double_enter_sends_once(shared, ws_blocked, open_page, blocked):
    label = f"double-{'fallback' if blocked else 'socket'}"
    shared.open_room(label)
    page = open_page(f"{ws_blocked if blocked else shared.url}/{label}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "fallback" if blocked else "live", timeout=10_000)
    page.fill("#handle", "ann")
    page.fill("#message", "only once")
    page.evaluate("""() => {  // two presses of Enter in a row, faster than any answer
        const box = document.getElementById("message");
        for (let n = 0; n < 2; n++) {
            box.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true, cancelable: true }));
        }
    }""")
    expect(page.locator("#chat .msg")).to_have_count(1)
    page.wait_for_timeout(500)
    assert api_messages(shared, label) == ["only once"]


def session_token(page, server, age):
    """A form token for the page's session, signed ``age`` seconds ago."""
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "session")
    app = Flask(__name__)
    app.secret_key = server.env["SECRET_KEY"]
    raw = SecureCookieSessionInterface().get_signing_serializer(app).loads(cookie)["csrf_token"]

    class Then(TimestampSigner):
        def get_timestamp(self):
            return super().get_timestamp() - age

    return URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token", signer=Then).dumps(raw)


def use_token(page, token):
    page.evaluate("t => document.querySelectorAll('input[name=csrf_token]').forEach(i => i.value = t)", token)


def test_fallback_sends_refused_show_why_keep_the_text_and_the_next_works(shared, ws_blocked, open_page):
    """README guarantee: a refused send in fallback mode shows a reason, keeps the text;
    a page whose form token is two hours old still sends and renames."""
    shared.open_room("refused-send")
    page = open_page(f"{ws_blocked}/refused-send/")
    expect(page.locator("#status")).to_have_attribute("data-state", "fallback", timeout=10_000)
    title = page.title()
    use_token(page, "not-a-token")
    say(page, "refused first", handle="ann")
    expect(page.locator("#chat-error")).to_contain_text("CSRF token")
    expect(page.locator("#message")).to_have_value("refused first")
    assert page.title() == title
    assert page.locator("#chat-error").evaluate("e => e.childElementCount") == 0
    page.evaluate("document.querySelector('#message').removeAttribute('maxlength')")
    use_token(page, session_token(page, shared, 2 * 3600))  # a page left open for two hours
    page.fill("#message", "x" * 2001)
    page.press("#message", "Enter")
    expect(page.locator("#chat-error")).to_contain_text("longer than 2000")
    say(page, "accepted next")
    expect(page.locator("#chat .msg")).to_have_count(1)
    expect(page.locator("#chat-error")).to_have_text("")
    expect(page.locator("#message")).to_have_value("")
    assert api_messages(shared, "refused-send") == ["accepted next"]
    page.click(".rename summary")
    page.fill("#room-name-input", "Two hours later")
    page.click("#rename-form button")
    expect(page.locator("#room-name")).to_have_text("Two hours later")
    use_token(page, "not-a-token")
    page.fill("#room-name-input", "Refused")
    page.click("#rename-form button")
    expect(page.locator("#rename-error")).to_contain_text("CSRF token")
    assert page.title() == title


# -- 3. earlier messages -----------------------------------------------------------------

@pytest.mark.parametrize("blocked", [False, True], ids=["socket", "fallback"])
def test_earlier_messages_load_above_and_the_reader_stays_put(shared, ws_blocked, open_page, blocked):
    """README guarantee: the whole history is reachable from the page, live meanwhile."""
    label = f"history-{'fallback' if blocked else 'socket'}"
    shared.open_room(label)
    first, _ = shared.post_many(label, 119)  # "first", m0..m118: 120 messages
    page = open_page(f"{ws_blocked if blocked else shared.url}/{label}/", viewport={"width": 1000, "height": 700})
    expect(page.locator("#status")).to_have_attribute("data-state", "fallback" if blocked else "live", timeout=10_000)
    expect(page.locator("#chat .msg")).to_have_count(50)

    def anchored(action):
        """Run ``action`` (script) in the page; the row that was first shown stays where
        it was on screen right after the action (before the older rows came in)."""
        anchor = page.locator("#chat .msg").first.get_attribute("id")
        count = page.locator("#chat .msg").count()
        before = page.evaluate(f"""id => {{ {action};
            return document.getElementById(id).getBoundingClientRect().top; }}""", anchor)
        expect(page.locator("#chat .msg")).not_to_have_count(count)
        assert abs(page.locator("#" + anchor).bounding_box()["y"] - before) <= 2

    chat = "document.getElementById('chat')"
    page.evaluate(f"{chat}.scrollTop = 200")
    anchored("document.getElementById('earlier').click()")  # following the link
    expect(page.locator("#chat .msg")).to_have_count(100)
    shared.post_json(label, "bob", "live while paging")  # still live
    expect(page.locator("#chat .msg").last).to_contain_text("live while paging")
    anchored(f"{chat}.scrollTop = 0")  # scrolling to the top
    expect(page.locator("#chat .msg")).to_have_count(121)
    expect(page.locator("#earlier")).to_have_count(0)  # the room's first message is shown
    ids = [row[0] for row in rows(page)]
    assert ids == sorted(set(ids)) and ids[0] == first
    assert texts(page) == ["first"] + [f"m{n}" for n in range(119)] + ["live while paging"]


def test_without_javascript_earlier_is_a_link_and_there_is_a_way_back(shared, open_page):
    shared.open_room("history-plain")
    shared.post_many("history-plain", 59)
    page = open_page(f"{shared.url}/history-plain/", java_script_enabled=False)
    page.click("#earlier")
    assert texts(page) == ["first"] + [f"m{n}" for n in range(9)]
    assert page.locator("#earlier").count() == 0
    page.click("#newest")
    assert texts(page)[-1] == "m58" and page.locator("#chat .msg").count() == 50


# -- 4. links -------------------------------------------------------------------------------

LINKED = "see https://example.org/a?b=1&c=2, or (http://x.example/y). Not javascript:alert(1) nor <a href=x>x</a>"


def test_links_are_links_in_the_page_the_socket_push_and_the_stream(shared, open_page):
    shared.open_room("linked")
    page = open_page(f"{shared.url}/linked/")
    embed = open_page(f"{shared.url}/linked/embed")
    wait_live(page)
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    shared.post_json("linked", "ann", LINKED)
    fresh = open_page(f"{shared.url}/linked/")  # rendered by the server
    for view in (page, embed, fresh):
        expect(view.locator("#chat .msg")).to_have_count(1)
        assert texts(view) == [LINKED]
        anchors = view.eval_on_selector_all(
            "#chat .msg a", "els => els.map(a => [a.getAttribute('href'), a.textContent, a.rel, a.target])")
        assert anchors == [["https://example.org/a?b=1&c=2", "https://example.org/a?b=1&c=2", LINK_REL, "_blank"],
                           ["http://x.example/y", "http://x.example/y", LINK_REL, "_blank"]]


# -- 5. coming back to the tab ---------------------------------------------------------------

SET_HIDDEN = """hidden => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    const state = hidden ? "hidden" : "visible";
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_while_away_the_title_counts_new_messages_and_a_divider_marks_them(shared, open_page):
    shared.open_room("book-club")
    page = open_page(f"{shared.url}/book-club/")
    wait_live(page)
    say(page, "seen already", handle="ann")
    expect(page.locator("#chat .msg")).to_have_count(1)
    assert page.title() == "book-club · Chat"
    page.evaluate(SET_HIDDEN, True)
    for n in range(3):
        shared.post_json("book-club", "bob", f"new {n}")
    expect(page.locator("#chat .msg")).to_have_count(4)
    expect(page).to_have_title("(3) book-club · Chat")
    page.evaluate(SET_HIDDEN, False)
    expect(page).to_have_title("book-club · Chat")
    order = page.eval_on_selector_all("#chat > li", "els => els.map(e => e.id || e.className)")
    assert order.index("new-divider") == 1 and len(order) == 5
    expect(page.locator("#new-divider")).to_have_text("New messages")
    # the next time away, the divider moves to the new first unseen message
    page.evaluate(SET_HIDDEN, True)
    shared.post_json("book-club", "bob", "newer")
    expect(page).to_have_title("(1) book-club · Chat")
    page.evaluate(SET_HIDDEN, False)
    order = page.eval_on_selector_all("#chat > li", "els => els.map(e => e.id || e.className)")
    assert order.index("new-divider") == 4 and order.count("new-divider") == 1


# -- the embed snippet (a hostile room name) ---------------------------------------------------

def test_the_copied_embed_snippet_is_one_iframe_whatever_the_name(shared, open_page):
    """README security row: the snippet a site owner copies holds no markup of the name."""
    hostile = 'x"><img src=x onerror=alert(document.domain)>'
    shared.open_room("snippet")
    page = open_page(f"{shared.url}/snippet/")
    wait_live(page)
    page.click(".rename summary")
    page.fill("#room-name-input", hostile)
    page.click("#rename-form button")
    expect(page.locator("#room-name")).to_have_text(hostile)
    page.reload()
    page.click(".embed-box summary")
    snippet = page.locator("#embed-snippet").input_value()
    parsed = page.evaluate("""text => {
        const template = document.createElement("template");
        template.innerHTML = text;
        const all = [...template.content.querySelectorAll("*")];
        return all.map(e => [e.tagName, e.getAttribute("title"), e.getAttribute("src"), e.attributes.length]);
    }""", snippet)
    assert parsed == [["IFRAME", hostile, f"{shared.url}/snippet/embed", 5]]


# -- accessibility -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/a11y/", "/a11y/?before=LAST", "/a11y/embed"])
def test_no_serious_accessibility_violations(shared, browser, path):
    """axe-core on the home, room, earlier-page and embed pages: nothing serious or critical."""
    assert os.path.exists(AXE), "axe-core is missing: make test installs it (npm ci in tests/browser)"
    shared.open_room("a11y")
    _, latest = shared.post_many("a11y", 55)
    shared.post_json("a11y", "bob", "a link: https://example.org/page")
    context = browser.new_context(bypass_csp=True)  # to add axe's script to the page
    try:
        page = context.new_page()
        page.goto(shared.url + path.replace("LAST", str(latest)))
        if path in ("/a11y/", "/a11y/embed"):
            expect(page.locator("#status")).to_have_attribute("data-state", "live")
        page.add_script_tag(path=AXE)
        violations = page.evaluate("""async () => (await axe.run(document)).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => ({ id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(" ")) }))""")
        assert violations == []
    finally:
        context.close()
