"""An operator deletes a message: open pages and embeds on the other server drop it at
once, in real Chromium (over the page's socket, over the event stream of its fallback,
and in the embed), and it stays gone after a reload; clearing a room empties them."""

import pytest
import requests
from playwright.sync_api import expect

from .test_chat_in_browser import texts, wait_live

pytestmark = pytest.mark.browser

TOKEN = "browser-admin-token-0123456789"


@pytest.fixture
def pair(live, redis_server, tmp_path):
    database = f"sqlite:///{tmp_path}/shared.sqlite3"
    env = {"REDIS_URL": redis_server.url, "ADMIN_TOKEN": TOKEN}
    return live("one", database_url=database, **env), live("two", database_url=database, **env)


def delete(server, label, message_id):
    return requests.delete(f"{server.url}/api/rooms/{label}/messages/{message_id}",
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)


def test_a_deleted_message_leaves_pages_and_embeds_on_the_other_server_at_once(pair, open_page):
    """README, Moderation: open room pages and embeds on every server drop a deleted row."""
    one, two = pair
    one.open_room("mod")
    ids = [one.post_json("mod", "ann", f"message {n}").json()["id"] for n in range(3)]
    page = open_page(two.url + "/mod/")
    fallback = open_page()
    fallback.route_web_socket("**/ws/**", lambda socket: socket.close())  # this one lives on the event stream
    fallback.goto(two.url + "/mod/")
    embed = open_page(two.url + "/mod/embed")
    wait_live(page)
    expect(fallback.locator("#status")).to_have_attribute("data-state", "fallback", timeout=10_000)
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    views = (page, fallback, embed)
    for view in views:
        assert texts(view) == ["message 0", "message 1", "message 2"]

    assert delete(one, "mod", ids[1]).status_code == 204
    for view in views:
        expect(view.locator(f"#message-{ids[1]}")).to_have_count(0, timeout=3000)
        assert texts(view) == ["message 0", "message 2"]

    assert delete(one, "mod", ids[2]).status_code == 204  # the newest
    one.post_json("mod", "bob", "after the deletions")
    for view in views:  # the count alone is 2 before the deletion arrives, too
        expect(view.locator(f"#message-{ids[2]}")).to_have_count(0, timeout=3000)
        expect(view.locator("#chat .msg")).to_have_count(2, timeout=3000)
        assert texts(view) == ["message 0", "after the deletions"]
    for view in (page, embed):  # the same server-rendered rows as the fallback's page
        view.reload()
        expect(view.locator("#chat .msg")).to_have_count(2)
        assert texts(view) == ["message 0", "after the deletions"]

    # Clearing the room's history empties every open transcript.
    wait_live(page)
    expect(embed.locator("#status")).to_have_attribute("data-state", "live")
    cleared = requests.delete(f"{two.url}/api/rooms/mod/messages", headers={"Authorization": f"Bearer {TOKEN}"},
                              timeout=5)
    assert cleared.json() == {"room": "mod", "deleted": 2}
    for view in views:
        expect(view.locator("#chat .msg")).to_have_count(0, timeout=3000)


def test_a_lock_shows_on_open_pages_at_once_and_unlocking_hides_it(pair, open_page):
    """README, Moderation: locking a room shows its read-only notice on every open page
    (socket or event-stream fallback) on every server at once; unlocking hides it."""
    one, two = pair
    one.open_room("lockable")
    page = open_page(two.url + "/lockable/")
    fallback = open_page()
    fallback.route_web_socket("**/ws/**", lambda socket: socket.close())
    fallback.goto(two.url + "/lockable/")
    wait_live(page)
    expect(fallback.locator("#status")).to_have_attribute("data-state", "fallback", timeout=10_000)
    for view in (page, fallback):
        expect(view.locator("#room-locked")).to_be_hidden()
    for method, visible in (("PUT", True), ("DELETE", False)):
        response = requests.request(method, f"{one.url}/api/rooms/lockable/lock",
                                    headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert response.json()["locked"] is visible
        for view in (page, fallback):
            if visible:
                expect(view.locator("#room-locked")).to_be_visible(timeout=3000)
            else:
                expect(view.locator("#room-locked")).to_be_hidden(timeout=3000)
