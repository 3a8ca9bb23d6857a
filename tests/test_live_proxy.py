"""Forwarded headers are believed from the configured proxies only (``TRUSTED_PROXIES``).

gunicorn listens on every address: with ``TRUST_PROXY=1`` a client that reaches it
directly must not pick its own address (fresh rate-limit and connection buckets) or its
own host (the Origin check, the share URL) through ``X-Forwarded-*``. Here the trusted
proxy is 127.0.0.2 and the direct client 127.0.0.1 (both loopback, so no network needed).
"""

import http.client
from contextlib import closing

import pytest

PROXY = "127.0.0.2"
DIRECT = "127.0.0.1"


def request(server, path, source, headers=()):
    """A GET from ``source``; returns (status, body text or None, the response: closing it
    ends the connection, so a stream stays open while the caller keeps it)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5, source_address=(source, 0))
    connection.request("GET", path, headers=dict(headers))
    response = connection.getresponse()
    streaming = response.status in (101, 200) and "event-stream" in (response.getheader("Content-Type") or "")
    body = None if streaming or response.status == 101 else response.read().decode()
    return response.status, body, response


def handshake(server, path, source, headers=()):
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **dict(headers)}
    status, _, response = request(server, path, source, headers)
    response.close()
    return status


@pytest.fixture
def server(live):
    server = live(TRUST_PROXY="1", TRUSTED_PROXIES=PROXY, MAX_CONNECTIONS_PER_ADDRESS="2")
    server.open_room("lobby")
    return server


def test_a_direct_client_cannot_choose_its_address(server):
    """Security row: X-Forwarded-For from a peer outside TRUSTED_PROXIES is ignored, so the
    connection cap still counts the direct client's own address."""
    opened = []
    try:
        for n in range(2):
            status, _, response = request(server, "/lobby/events", DIRECT, [("X-Forwarded-For", f"198.51.100.{n}")])
            assert status == 200
            opened.append(response)
        status, _, response = request(server, "/lobby/events", DIRECT, [("X-Forwarded-For", "198.51.100.9")])
        response.close()
        assert status == 429
        # the trusted proxy's forwarded addresses each get their own bucket
        for n in range(3):
            status, _, response = request(server, "/lobby/events", PROXY, [("X-Forwarded-For", f"203.0.113.{n}")])
            assert status == 200
            opened.append(response)
    finally:
        for response in opened:
            response.close()


def test_a_direct_client_cannot_choose_the_host(server):
    """X-Forwarded-Host from an untrusted peer changes neither the share URL nor what the
    socket's Origin check calls this site; from the trusted proxy it does."""
    forged = [("X-Forwarded-Host", "evil.example")]
    status, body, response = request(server, "/lobby/", DIRECT, forged)
    response.close()
    assert status == 200 and "evil.example" not in body
    assert f"127.0.0.1:{server.port}/lobby/" in body
    assert handshake(server, "/chat/lobby/", DIRECT, forged + [("Origin", "http://evil.example")]) == 403
    assert handshake(server, "/chat/lobby/", DIRECT, [("Origin", f"http://127.0.0.1:{server.port}")]) == 101

    status, body, response = request(server, "/lobby/", PROXY, [("X-Forwarded-Host", "chat.example")])
    response.close()
    assert status == 200 and "http://chat.example/lobby/" in body
    assert handshake(server, "/chat/lobby/", PROXY, [("X-Forwarded-Host", "chat.example"),
                                                    ("Origin", "http://chat.example")]) == 101


def test_a_direct_client_cannot_claim_https(server):
    """gunicorn's own X-Forwarded-Proto handling follows the same list: no Secure cookie
    (nor HSTS) for a direct client that says it came over HTTPS."""
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=5,
                                            source_address=(DIRECT, 0))) as connection:
        connection.request("GET", "/lobby/", headers={"X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        response.read()
        assert "Secure" not in response.getheader("Set-Cookie")
        assert response.getheader("Strict-Transport-Security") is None
    with closing(http.client.HTTPConnection("127.0.0.1", server.port, timeout=5,
                                            source_address=(PROXY, 0))) as connection:
        connection.request("GET", "/lobby/", headers={"X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        response.read()
        assert "Secure" in response.getheader("Set-Cookie")
