"""Guarantee "a proxy blocks WebSockets", its second half: once sockets get through
again, the page leaves the event stream for the socket, and no message is lost or shown
twice."""

import subprocess
import sys

import pytest
from playwright.sync_api import expect

from ..support import free_port, wait_for
from .test_chat_in_browser import _answers, rows, say, texts, wait_live

pytestmark = pytest.mark.browser

PROXY = __file__.replace("test_switch_back.py", "blocking_proxy.py")


@pytest.fixture
def blocking_proxy(server, tmp_path):
    """(url, flag): the server behind a proxy that refuses sockets while ``flag`` exists."""
    flag = tmp_path / "blocked"
    flag.touch()
    port = free_port()
    proxy = subprocess.Popen([sys.executable, PROXY, str(port), str(server.port), str(flag)])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(url + "/healthz"), message="the proxy")
    yield url, flag
    proxy.kill()
    proxy.wait()


def test_the_page_switches_back_to_the_socket_when_it_works_again(server, blocking_proxy, open_page):
    url, blocked = blocking_proxy
    server.open_room("unblocked")
    page = open_page(url + "/unblocked/")
    expect(page.locator("#status")).to_have_attribute("data-state", "fallback", timeout=15_000)
    server.post_json("unblocked", "bob", "while on the stream")
    expect(page.locator("#chat .msg")).to_have_count(1, timeout=5000)
    blocked.unlink()  # the proxy lets sockets through again
    # htmx's reconnect backoff (at most 5 s here) + 3 s open
    expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=20_000)
    wait_live(page)
    wait_for(lambda: server.metric("chat_open_connections", kind="event_stream") == 0,
             message="the page to close its event stream")
    server.post_json("unblocked", "bob", "over the socket again")
    say(page, "from the page", handle="ann")
    expect(page.locator("#chat .msg")).to_have_count(3, timeout=5000)
    assert texts(page) == ["while on the stream", "over the socket again", "from the page"]
    ids = [row[0] for row in rows(page)]
    assert ids == sorted(set(ids))
