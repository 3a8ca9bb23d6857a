"""Security by default: headers, no inline code, CSRF and cross-site refusals, cookies
behind HTTPS, client addresses from a trusted proxy, errors without internals."""

import re

import pytest

from webapp import create_app

from .conftest import TEST_CONFIG, _fresh_schema
from .html import parse


def make(tmp_path, **config):
    app = create_app({**TEST_CONFIG, "DATABASE_URL": f"sqlite:///{tmp_path}/s.sqlite3", **config})
    _fresh_schema()
    return app


@pytest.mark.parametrize("path", ["/", "/lobby/", "/lobby/embed", "/new/x/", "/healthz", "/api/rooms"])
def test_every_answer_carries_the_policy(client, path):
    client.get("/lobby/")
    headers = client.get(path).headers
    csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["object-src"] == "'none'" and csp["base-uri"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "Strict-Transport-Security" not in headers  # plain HTTP here


@pytest.mark.parametrize("path", ["/", "/lobby/", "/lobby/embed"])
def test_pages_hold_no_inline_script_style_or_handlers(client, path):
    client.get("/lobby/")
    html = client.get(path).get_data(as_text=True)
    document = parse(html)
    for node in document.iter():
        if node.tag == "script":
            assert node.attrs.get("src", "").startswith("/static/"), "only our own script files"
            assert not node.text().strip()
        assert not any(name.startswith("on") for name in node.attrs), node.attrs
        assert "style" not in node.attrs
        for value in node.attrs.values():
            assert not (value or "").strip().lower().startswith("javascript:")
    assert "<style" not in html


def test_htmx_is_configured_to_match_the_policy(client):
    page = parse(client.get("/lobby/").get_data(as_text=True))
    config = page.find(lambda node: node.attrs.get("name") == "htmx-config").attrs["content"]
    assert '"allowEval": false' in config and '"includeIndicatorStyles": false' in config
    assert '"allowScriptTags": false' in config and '"selfRequestsOnly": true' in config


def test_the_session_cookie_is_httponly_lax_and_secure_only_behind_https(tmp_path):
    plain = make(tmp_path).test_client().get("/lobby/")
    cookie = plain.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie

    # a proxy's X-Forwarded-Proto is believed only when the operator says so
    untrusted = make(tmp_path).test_client().get("/lobby/", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in untrusted.headers["Set-Cookie"]
    trusted = make(tmp_path, TRUST_PROXY=True).test_client().get("/lobby/", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in trusted.headers["Set-Cookie"]
    assert trusted.headers["Strict-Transport-Security"].startswith("max-age=")


def test_client_addresses_come_from_a_trusted_proxy_only(tmp_path):
    app = make(tmp_path, TRUST_PROXY=True, RATE_LIMIT="1/60")
    client = app.test_client()
    client.get("/lobby/")

    def post(address):
        return client.post("/api/rooms/lobby/messages", json={"handle": "a", "message": "b"},
                           headers={"X-Forwarded-For": address}).status_code

    # the address limit (10 x 1) is per forwarded client address
    assert [post("203.0.113.1") for _ in range(11)] == [201] * 10 + [429]
    assert post("203.0.113.2") == 201


def test_csrf_protects_the_form_but_not_the_json_api(client, csrf_token):
    csrf_token(client)
    assert client.post("/lobby/messages", data={"handle": "a", "message": "b"}).status_code == 400
    assert client.post("/api/rooms/lobby/messages", json={"handle": "a", "message": "b"}).status_code == 201


def test_a_cross_site_form_post_is_refused_even_with_a_token(client, csrf_token):
    token = csrf_token(client)
    response = client.post("/lobby/messages", data={"csrf_token": token, "handle": "a", "message": "b"},
                           headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    same = client.post("/lobby/messages", data={"csrf_token": token, "handle": "a", "message": "b"},
                       headers={"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 303


def test_an_unexpected_error_shows_no_internals(tmp_path):
    app = make(tmp_path)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals: /etc/passwd")

    response = app.test_client().get("/boom")
    body = response.get_data(as_text=True)
    assert response.status_code == 500
    assert "Traceback" not in body and "secret internals" not in body and "RuntimeError" not in body


def test_a_plain_get_on_a_socket_route_is_a_clear_400(client):
    client.get("/lobby/")
    response = client.get("/chat/lobby/")
    assert response.status_code == 400
    assert "WebSocket" in response.get_data(as_text=True)


def test_request_bodies_are_bounded(client):
    client.get("/lobby/")
    response = client.post("/api/rooms/lobby/messages", data="x" * (70 * 1024), content_type="application/json")
    assert response.status_code == 413


def test_vendored_scripts_match_their_recorded_checksums():
    import base64
    import hashlib

    from .support import PROJECT

    folder = f"{PROJECT}/static/vendor"
    lines = [line.split() for line in open(f"{folder}/VERSIONS") if line.strip() and not line.startswith("#")]
    assert {name for name, *_ in lines} == {"htmx.min.js", "ws.min.js", "sse.min.js"}
    for name, version, digest in lines:
        data = open(f"{folder}/{name}", "rb").read()
        assert digest == "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode(), name
        assert re.fullmatch(r"[\w.-]+@\d+\.\d+\.\d+", version)


def test_trusted_proxies_are_addresses_or_networks(tmp_path):
    from webapp.settings import ConfigError

    app = make(tmp_path, TRUST_PROXY=True, TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.7")
    assert [str(n) for n in app.config["TRUSTED_PROXIES"]] == ["10.0.0.0/8", "192.0.2.7/32"]
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        make(tmp_path, TRUSTED_PROXIES="proxy.local")
