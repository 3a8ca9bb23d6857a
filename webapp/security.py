"""Security by default: response headers, cross-site refusals, the socket Origin check.

* A Content-Security-Policy with no inline script, no inline style and no eval (htmx
  is configured to match), ``nosniff``, a strict referrer policy, framing refused
  everywhere except the embeddable transcript, and HSTS once a request came over HTTPS.
* Form posts need the page's CSRF token (flask-wtf) and are refused outright when the
  browser says they come from another site (``Sec-Fetch-Site: cross-site``).
* WebSocket handshakes from a browser page of another origin are refused with 403
  before the upgrade (no ``Origin`` header means a script, which is allowed).
"""

import hmac
import ipaddress
import logging
from urllib.parse import urlsplit

from flask import abort, current_app, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from . import metrics

log = logging.getLogger(__name__)

CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)

FRAMABLE_ENDPOINTS = frozenset({"pages.embed"})


def origin_allowed(origin):
    """True when a browser ``Origin`` is this site or one of ALLOWED_ORIGINS."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in current_app.config["ALLOWED_ORIGINS"]:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def bearer_matches(expected):
    """True when the request carries ``Authorization: Bearer <expected>``, compared in
    constant time (the admin API's and /metrics' tokens)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def _refuse_cross_site():
    """Before every request: refuse cross-site form posts and foreign socket origins."""
    if request.method == "POST" and request.headers.get("Sec-Fetch-Site") == "cross-site":
        abort(403, description="Cross-site form posts are refused.")
    view = current_app.view_functions.get(request.endpoint)
    if getattr(view, "is_socket", False) and not origin_allowed(request.headers.get("Origin")):
        metrics.REFUSED.labels("foreign_origin").inc()
        log.warning("refused a socket from another origin",
                    extra={"event": "foreign_origin", "origin": request.headers.get("Origin"), "path": request.path})
        abort(403, description="This origin may not open a socket here.")


def _headers(response):
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.endpoint in FRAMABLE_ENDPOINTS:
        headers["Content-Security-Policy"] = CSP + "; frame-ancestors *"
    else:
        headers["Content-Security-Policy"] = CSP + "; frame-ancestors 'none'"
        headers["X-Frame-Options"] = "DENY"
    return response


class TrustedProxyFix:
    """werkzeug's ProxyFix for requests whose peer is one of TRUSTED_PROXIES; any other
    peer (a client that reaches gunicorn directly) keeps its own address, scheme and host,
    whatever X-Forwarded-* headers it sends. gunicorn applies the same list to
    X-Forwarded-Proto (forwarded_allow_ips, set in gunicorn.conf.py)."""

    def __init__(self, app, networks):
        self.app = app
        self.fixed = ProxyFix(app, x_for=1, x_proto=1, x_host=1)
        self.networks = networks

    def trusts(self, peer):
        """True for a peer in the list; like gunicorn, also for one without an IP address
        (a UNIX socket, reachable only on this machine)."""
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return True
        return any(address in network for network in self.networks)

    def __call__(self, environ, start_response):
        if self.trusts(environ.get("REMOTE_ADDR", "")):
            return self.fixed(environ, start_response)
        return self.app(environ, start_response)


class SessionInterface(SecureCookieSessionInterface):
    """The session cookie is ``Secure`` whenever the request came over HTTPS."""

    def get_cookie_secure(self, app):
        return request.is_secure or super().get_cookie_secure(app)


def init_app(app):
    if app.config["TRUST_PROXY"]:
        # One proxy in front sets X-Forwarded-For/-Proto/-Host; believe it, and only it.
        app.wsgi_app = TrustedProxyFix(app.wsgi_app, app.config["TRUSTED_PROXIES"])
    app.session_interface = SessionInterface()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    app.before_request(_refuse_cross_site)
    app.after_request(_headers)
