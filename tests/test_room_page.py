"""The room page's history pages, links in messages, the embed snippet and form tokens,
as the server renders them (the browser side is in tests/browser/test_room_page.py)."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from webapp.rendering import message_html

from .html import csrf_token, parse, rows
from .support import using_db

LINK_REL = "nofollow noopener noreferrer ugc"


def fill(client, label, count):
    """A room with ``count`` messages "m0".."m<count-1>"; their ids, oldest first."""
    from webapp import chat
    from webapp.models import Room

    client.get(f"/{label}/")
    with using_db(client.application):
        room = Room.by_label(label)
        return [chat.send(room, "ann", f"m{n}", chat.Sender("127.0.0.1")).id for n in range(count)]


def test_earlier_pages_reach_the_first_message(client):
    """README guarantee: every message of a room is reachable from its page (#earlier)."""
    ids = fill(client, "long", 120)
    page = parse(client.get("/long/").get_data(as_text=True))
    assert [r[2] for r in rows(client.get("/long/").get_data(as_text=True))] == [f"m{n}" for n in range(70, 120)]
    seen = []
    link = page.by_id("earlier")
    while link is not None:
        html = client.get(link.attrs["href"]).get_data(as_text=True)
        found = rows(html)
        assert len(found) <= 50 and found == sorted(found)
        seen[:0] = found
        page = parse(html)
        assert page.by_id("newest").attrs["href"] == "/long/"  # a way back
        assert page.by_id("room").attrs.get("ws-connect") is None  # a still view
        link = page.by_id("earlier")
    assert [r[0] for r in seen] == ids[:70]
    assert [r[2] for r in seen] == [f"m{n}" for n in range(70)]


def test_no_earlier_link_when_everything_is_shown(client):
    fill(client, "short", 3)
    assert parse(client.get("/short/").get_data(as_text=True)).by_id("earlier") is None
    assert parse(client.get("/empty-one/").get_data(as_text=True)).by_id("earlier") is None


@pytest.mark.parametrize("before", ["", "x", "-1", "0", "1.5", "99999999999999999999", "9" * 5000, "١٢"])
def test_a_bad_before_is_a_400_page(client, before):
    fill(client, "paged", 2)
    response = client.get("/paged/", query_string={"before": before})
    assert response.status_code == 400
    assert "before must be a message id" in response.get_data(as_text=True)


@pytest.mark.parametrize("text, links", [
    ("see https://example.org/a?b=1&c=2.", ["https://example.org/a?b=1&c=2"]),
    ("(http://en.wikipedia.org/wiki/Foo_(bar)) and HTTPS://X.example", ["http://en.wikipedia.org/wiki/Foo_(bar)",
                                                                       "HTTPS://X.example"]),
    ("javascript:alert(1) data:text/html,<b>x</b> ftp://a.example www.a.example", []),
    ('http://"onmouseover=alert(1)// <a href="https://x.example">y</a>', ["https://x.example"]),
    ("first line\nhttp://two.example/\tthird", ["http://two.example/"]),
    ("http:// nothing http://[::1", []),
])
def test_only_http_urls_become_links_and_the_text_is_kept(text, links):
    row = parse(f"<p>{message_html(text)}</p>")
    anchors = row.all(lambda node: node.tag == "a")
    assert [a.attrs["href"] for a in anchors] == links
    assert [a.text() for a in anchors] == links  # visible text exactly as sent
    for anchor in anchors:
        assert anchor.attrs == {"href": anchor.attrs["href"], "rel": LINK_REL, "target": "_blank"}
    assert row.text() == text
    assert not row.all(lambda node: node.tag not in ("p", "a", "br"))


def test_the_embed_snippet_is_text_with_the_name_escaped_inside(client):
    """README security row: the copied snippet is one iframe, whatever the room's name."""
    hostile = 'x"><img src=x onerror=alert(document.domain)>'
    client.get("/named/")
    token = csrf_token(client.get("/named/").get_data(as_text=True))
    assert client.post("/named/name", data={"csrf_token": token, "name": hostile}).status_code == 303
    snippet = parse(client.get("/named/").get_data(as_text=True)).by_id("embed-snippet").text()
    frame = parse(snippet)
    elements = list(frame.iter())
    assert [e.tag for e in elements] == ["iframe"]
    assert elements[0].attrs["title"] == hostile
    assert elements[0].attrs["src"] == "http://localhost/named/embed"


class _SignedInThePast(TimestampSigner):
    age = 2 * 3600

    def get_timestamp(self):
        return int(time.time()) - self.age


def old_token(client):
    """The session's form token as a page rendered two hours ago carried it."""
    with client.session_transaction() as session:
        raw = session["csrf_token"]
    secret = client.application.config["SECRET_KEY"]
    return URLSafeTimedSerializer(secret, salt="wtf-csrf-token", signer=_SignedInThePast).dumps(raw)


def test_a_page_older_than_an_hour_still_sends_and_renames(client):
    """README guarantee: form tokens are valid for the session, not an hour."""
    client.get("/patient/")
    token = old_token(client)
    sent = client.post("/patient/messages", data={"csrf_token": token, "handle": "ann", "message": "still here"})
    assert sent.status_code == 303, sent.get_data(as_text=True)
    renamed = client.post("/patient/name", data={"csrf_token": token, "name": "Still open"},
                          headers={"HX-Request": "true"})
    assert renamed.status_code == 204
    page = client.get("/patient/").get_data(as_text=True)
    assert rows(page)[-1][1:] == ("ann", "still here")
    assert parse(page).by_id("room-name").text() == "Still open"


URLISH = st.lists(st.sampled_from(["http://", "https://", "HTTP://", "javascript:", "a.example", "/p", "?q=1", "&",
                                   "(", ")", ".", ",", '"', "'", "<", ">", "<a href=", " ", "\n", "\t", "é", "%2F"]),
                  max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(URLISH)
def test_any_text_reads_back_as_sent_and_links_only_http(text):
    row = parse(f"<p>{message_html(text)}</p>")
    assert row.text() == text
    for anchor in row.all(lambda node: node.tag == "a"):
        assert anchor.text() == anchor.attrs["href"]
        assert anchor.attrs["href"].lower().startswith(("http://", "https://"))
        assert anchor.attrs["href"] in text
