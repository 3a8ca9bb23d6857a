"""The server-rendered pages, as a browser without JavaScript meets them."""

import pytest

from webapp import labels
from webapp.models import Message, Room

from .html import parse, rows
from .support import using_db

XSS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '"><svg onload=alert(1)>',
    "<a href=\"javascript:alert(1)\">click</a>",
    '<div hx-get="/api/rooms" hx-trigger="load">x</div>',
    '<div hx-swap-oob="innerHTML:#chat">gone</div>',
    "{{ 7*7 }} {% raw %}",
    "&lt;already escaped&gt; &amp;",
]


def post(client, label, token, **fields):
    return client.post(f"/{label}/messages", data={"csrf_token": token, **fields})


def say_hi(client, label):
    client.get(f"/{label}/")
    client.post(f"/api/rooms/{label}/messages", json={"handle": "a", "message": "hi"})


def test_home_offers_a_new_room_and_lists_active_ones(client):
    for label in ("first", "second", "third"):
        say_hi(client, label)
    page = parse(client.get("/").get_data(as_text=True))
    link = page.by_id("new-room")
    assert link.attrs["href"] == "/new/" and "Create new chat room" in link.text()
    listed = [a.attrs["href"] for a in page.by_id("rooms").all(lambda n: n.tag == "a")]
    assert listed == ["/third/", "/second/", "/first/"]


def test_home_lists_at_most_twenty_rooms(client):
    for n in range(25):
        say_hi(client, f"room-{n}")
    page = parse(client.get("/").get_data(as_text=True))
    assert len(page.by_id("rooms").all(lambda n: n.tag == "li")) == 20


@pytest.mark.parametrize("method, status", [("get", 302), ("post", 303)])
def test_new_sends_the_browser_to_a_fresh_label(client, method, status):
    response = getattr(client, method)("/new/")
    assert response.status_code == status
    label = response.headers["Location"].strip("/").rsplit("/", 1)[-1]
    assert labels.is_valid_label(label) and len(label.split("-")) >= 3
    with using_db(client.application):
        assert Room.by_label(label) is None  # the visit creates it, nothing else
    assert client.get(f"/{label}/").status_code == 200


def test_new_labels_are_unique(client):
    seen = {client.get("/new/").headers["Location"] for _ in range(30)}
    assert len(seen) == 30


def test_room_page_has_everything_the_contract_names(client):
    response = client.get("/lobby/")
    assert response.status_code == 200
    page = parse(response.get_data(as_text=True))
    assert page.find(lambda n: n.tag == "h1").text() == "lobby"
    assert "lobby" in page.by_id("room-label").text()
    assert page.by_id("share-url").text() == "http://localhost/lobby/"
    assert page.by_id("chat") is not None
    form = page.by_id("chatform")
    assert form.attrs["method"] == "post" and form.attrs["action"] == "/lobby/messages"
    names = {n.attrs.get("name") for n in form.iter() if n.tag in ("input", "textarea")}
    assert {"handle", "message", "csrf_token"} <= names


def test_room_shows_the_last_fifty_messages_oldest_first(client, csrf_token):
    token = csrf_token(client)
    for n in range(55):
        assert post(client, "lobby", token, handle="bot", message=f"message {n}").status_code == 303
    shown = rows(client.get("/lobby/").get_data(as_text=True))
    assert [text for _, _, text in shown] == [f"message {n}" for n in range(5, 55)]
    assert [i for i, _, _ in shown] == sorted(i for i, _, _ in shown)


def test_a_row_shows_time_handle_and_message_as_text(client, csrf_token):
    post(client, "lobby", csrf_token(client), handle="alice", message="two\nlines")
    page = parse(client.get("/lobby/").get_data(as_text=True))
    (row,) = page.by_class("msg")
    assert row.id.startswith("message-")
    time = row.find(lambda n: n.tag == "time")
    assert time.attrs["datetime"].endswith("+00:00") and len(time.text()) == 5
    assert rows(client.get("/lobby/").get_data(as_text=True))[0][1:] == ("alice", "two\nlines")


@pytest.mark.parametrize(
    "path",
    ["/" + "x" * 51 + "/", "/caf%C3%A9/", "/new/x/", "/api/", "/chat/", "/static/", "/healthz/", "/metrics/",
     "/../", "/a%2Fb/", "/a b/", "/%00/", "/NEW/"],
)
def test_bad_labels_are_404_never_500(client, path):
    assert client.get(path).status_code == 404
    with using_db(client.application):
        assert Room.select().count() == 0


def test_a_label_of_fifty_characters_is_fine(client):
    assert client.get("/" + "x" * 50 + "/").status_code == 200


def test_plain_post_stores_and_redirects_back(client, csrf_token):
    response = post(client, "lobby", csrf_token(client), handle=" alice ", message="hello")
    assert response.status_code == 303
    assert response.headers["Location"] == "/lobby/"
    assert rows(client.get("/lobby/").get_data(as_text=True))[-1][1:] == ("alice", "hello")


def test_post_without_or_with_a_wrong_csrf_token_stores_nothing(client, csrf_token):
    csrf_token(client)
    assert client.post("/lobby/messages", data={"handle": "a", "message": "b"}).status_code == 400
    assert post(client, "lobby", "forged", handle="a", message="b").status_code == 400
    assert rows(client.get("/lobby/").get_data(as_text=True)) == []


def test_cross_site_post_is_refused(client, csrf_token):
    token = csrf_token(client)
    response = client.post(
        "/lobby/messages",
        data={"csrf_token": token, "handle": "a", "message": "b"},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 403
    assert rows(client.get("/lobby/").get_data(as_text=True)) == []


@pytest.mark.parametrize(
    "handle, message, reason",
    [
        ("", "hello", "handle is required"),
        ("   ", "hello", "handle is required"),
        ("x" * 51, "hello", "longer than 50"),
        ("alice", "", "message is empty"),
        ("alice", " \n ", "message is empty"),
        ("alice", "m" * 2001, "longer than 2000"),
        ("alice", "bell\x07", "control characters"),
    ],
)
def test_bad_input_rerenders_the_page_keeping_what_was_typed(client, csrf_token, handle, message, reason):
    response = post(client, "lobby", csrf_token(client), handle=handle, message=message)
    assert response.status_code == 422
    page = parse(response.get_data(as_text=True))
    assert reason in page.by_id("chat-error").text()
    assert page.by_id("handle").attrs["value"] == handle
    assert page.by_id("message").text() == message.replace("\r\n", "\n")
    assert rows(client.get("/lobby/").get_data(as_text=True)) == []


def test_htmx_post_answers_204_or_an_error_fragment(client, csrf_token):
    token = csrf_token(client)
    ok = client.post("/lobby/messages", data={"csrf_token": token, "handle": "a", "message": "b"},
                     headers={"HX-Request": "true"})
    assert ok.status_code == 204
    bad = client.post("/lobby/messages", data={"csrf_token": token, "handle": "a", "message": ""},
                      headers={"HX-Request": "true"})
    assert bad.status_code == 422
    assert parse(bad.get_data(as_text=True)).by_id("chat-error").text() == "message is empty"


def test_posting_to_an_unknown_room_is_404_and_creates_nothing(client, csrf_token):
    response = post(client, "nowhere", csrf_token(client), handle="a", message="b")
    assert response.status_code == 404
    with using_db(client.application):
        assert Room.by_label("nowhere") is None


@pytest.mark.parametrize("payload", XSS)
def test_user_text_is_shown_as_text(client, csrf_token, payload):
    post(client, "lobby", csrf_token(client), handle=payload[:50], message=payload)
    html = client.get("/lobby/").get_data(as_text=True)
    assert rows(html)[-1][1:] == (payload[:50].strip(), payload)
    chat = parse(html).by_id("chat")
    tags = {node.tag for node in chat.iter()}
    assert tags <= {"li", "span", "time", "br"}  # nothing the user typed became an element
    assert not any(k.startswith(("on", "hx-")) for node in chat.iter() for k in node.attrs)


def test_pages_carry_security_headers(client):
    headers = client.get("/lobby/").headers
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"


def test_embed_is_read_only_and_framable(client, csrf_token):
    post(client, "lobby", csrf_token(client), handle="alice", message="hi")
    response = client.get("/lobby/embed")
    assert response.status_code == 200
    assert "frame-ancestors *" in response.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in response.headers
    page = parse(response.get_data(as_text=True))
    assert page.by_id("chatform") is None and page.find(lambda n: n.tag == "form") is None
    assert rows(response.get_data(as_text=True))[0][1:] == ("alice", "hi")
    assert page.by_id("live").attrs["sse-connect"].startswith("/lobby/events?last_id=")


def test_embed_of_an_unknown_room_is_404(client):
    assert client.get("/nowhere/embed").status_code == 404
    with using_db(client.application):
        assert Room.by_label("nowhere") is None


def test_errors_are_pages_without_internals(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "Traceback" not in response.get_data(as_text=True)


def test_the_form_post_reaches_the_database_once(client, csrf_token):
    post(client, "lobby", csrf_token(client), handle="a", message="once")
    with using_db(client.application):
        assert Message.select().where(Message.message == "once").count() == 1


def test_an_unreachable_database_is_a_503_page_and_json_never_a_500(tmp_path):
    from webapp import create_app

    app = create_app({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "SECRET_KEY": "x"})
    client = app.test_client()
    page = client.get("/lobby/")
    assert page.status_code == 503 and page.headers["Retry-After"] == "2"
    assert "not reachable" in page.get_data(as_text=True)
    api = client.get("/api/rooms")
    assert api.status_code == 503 and "nothing was stored" in api.get_json()["error"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.get_json()["db"] == "error"
