"""Configuration in one place: defaults, then the environment, then explicit overrides.

Every setting an operator can change is read here from the environment, parsed and
checked once at start-up, so a typo fails loudly instead of half-working. The README's
configuration table documents the same names and defaults.
"""

import ipaddress
import os
import re
from dataclasses import dataclass


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


@dataclass(frozen=True)
class Rate:
    """At most ``count`` events per ``seconds``; ``count == 0`` turns the limit off."""

    count: int
    seconds: int

    @property
    def enabled(self):
        return self.count > 0

    def times(self, factor):
        return Rate(self.count * factor, self.seconds)

    def __str__(self):
        return f"{self.count}/{self.seconds}" if self.enabled else "0"

    @classmethod
    def parse(cls, text, name="RATE_LIMIT"):
        """Read ``N/S`` (or ``0``, meaning off); ``name`` is the setting, for the error."""
        text = str(text).strip()
        if text == "0":
            return cls(0, 1)
        match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
        if not match or int(match[2]) == 0:
            raise ConfigError(f"{name} must look like N/S (e.g. 60/10) or 0, not {text!r}")
        return cls(int(match[1]), int(match[2]))


def defaults(instance_path):
    """The built-in values, used where the environment says nothing."""
    return {
        "DATABASE_URL": "sqlite:///" + os.path.join(instance_path, "chat.sqlite3"),
        "DATABASE_POOL_SIZE": 20,
        "REDIS_URL": None,
        "REDIS_CHANNEL_PREFIX": "chat",
        "SECRET_KEY": None,
        "WEB_CONCURRENCY": 1,
        "ALLOWED_ORIGINS": (),
        "RATE_LIMIT": Rate(60, 10),
        # Per client address, every message path together: ten times RATE_LIMIT.
        "ADDRESS_RATE_FACTOR": 10,
        "MAX_CONNECTIONS_PER_ADDRESS": 100,
        # New rooms per client address (a visit to an unused label creates one).
        "ROOM_CREATE_LIMIT": Rate(30, 60),
        # Bearer token for /metrics; None: /metrics is public.
        "METRICS_TOKEN": None,
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "TRUST_PROXY": False,
        # Peers whose X-Forwarded-* headers TRUST_PROXY believes (gunicorn.conf.py reads
        # the same variable for its forwarded_allow_ips).
        "TRUSTED_PROXIES": "127.0.0.1,::1",
        # Form tokens (flask-wtf) stay valid for the whole session: a room page left open
        # for hours still sends and renames (its default, 3600 s, killed every form).
        "WTF_CSRF_TIME_LIMIT": None,
        # Limits of the contract.
        "HANDLE_MAX": 50,
        "MESSAGE_MAX": 2000,
        "FRAME_MAX": 64 * 1024,
        "HISTORY_SIZE": 50,
        "REPLAY_MAX": 500,
        "ROOM_NAME_MAX": 80,
        # Timings (seconds); tests shorten them.
        "PING_INTERVAL": 25.0,
        "PONG_TIMEOUT": 10.0,
        "SSE_HEARTBEAT": 15.0,
        "SSE_RETRY_MS": 2000,
        "BROKER_BACKOFF_MAX": 2.0,
        "BROKER_LINGER": 5.0,
        "DATABASE_WRITE_TIMEOUT": 5.0,
        "PRESENCE_TTL": 20.0,
        "TYPING_THROTTLE": 2.0,
        # Delivery: how far a client may fall behind before it is dropped.
        "SEND_BACKLOG_MAX_BYTES": 512 * 1024,
        "SEND_BACKLOG_MAX_SECONDS": 10.0,
        # The kernel's send buffer per socket or stream (fixed: Linux would otherwise
        # autotune it up to megabytes for a client that stopped reading).
        "SOCKET_SEND_BUFFER": 256 * 1024,
        # Operators (see webapp.admin, webapp.moderation, webapp.retention).
        "ADMIN_TOKEN": None,
        "ADMIN_RATE_LIMIT": Rate(60, 60),
        "MODERATION_REFRESH": 2.0,
        "MESSAGE_RETENTION_DAYS": None,
        "RETENTION_INTERVAL": 600.0,
        "RETENTION_BATCH": 1000,
    }

ADMIN_TOKEN_MIN = 16


# name -> parser for values that come from the environment as text.
def _int(name, minimum=0):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, not {text!r}") from None
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum}, not {value}")
        return value

    return parse


def _float(name, unit="seconds"):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be a number of {unit}, not {text!r}") from None
        if value <= 0:
            raise ConfigError(f"{name} must be positive, not {value}")
        return value

    return parse


def _choice(name, choices):
    def parse(text):
        value = text.strip().lower()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {text!r}")
        return value

    return parse


def _origins(text):
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def _flag(text):
    return text.strip().lower() in ("1", "true", "yes", "on")


def proxy_networks(text):
    """TRUSTED_PROXIES: comma-separated addresses or CIDR networks, or ``*`` for any peer."""
    networks = []
    for item in (part.strip() for part in str(text).split(",")):
        if item == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        elif item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"TRUSTED_PROXIES must list addresses or networks (CIDR), not {item!r}") from None
    return tuple(networks)


def _log_level(text):
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {text!r}")
    return level


PARSERS = {
    "DATABASE_URL": str,
    "DATABASE_POOL_SIZE": _int("DATABASE_POOL_SIZE", 1),
    "REDIS_URL": lambda text: text or None,
    "REDIS_CHANNEL_PREFIX": str,
    "SECRET_KEY": lambda text: text or None,
    "WEB_CONCURRENCY": _int("WEB_CONCURRENCY", 1),
    "ALLOWED_ORIGINS": _origins,
    "RATE_LIMIT": Rate.parse,
    "MAX_CONNECTIONS_PER_ADDRESS": _int("MAX_CONNECTIONS_PER_ADDRESS"),
    "ROOM_CREATE_LIMIT": lambda text: Rate.parse(text, "ROOM_CREATE_LIMIT"),
    "METRICS_TOKEN": lambda text: text.strip() or None,
    "LOG_LEVEL": _log_level,
    "LOG_FORMAT": _choice("LOG_FORMAT", ("text", "json")),
    "TRUST_PROXY": _flag,
    "TRUSTED_PROXIES": proxy_networks,
    "HANDLE_MAX": _int("HANDLE_MAX", 1),
    "MESSAGE_MAX": _int("MESSAGE_MAX", 1),
    "FRAME_MAX": _int("FRAME_MAX", 1024),
    "HISTORY_SIZE": _int("HISTORY_SIZE", 1),
    "REPLAY_MAX": _int("REPLAY_MAX", 1),
    "PING_INTERVAL": _float("PING_INTERVAL"),
    "PONG_TIMEOUT": _float("PONG_TIMEOUT"),
    "SSE_HEARTBEAT": _float("SSE_HEARTBEAT"),
    "SSE_RETRY_MS": _int("SSE_RETRY_MS", 100),
    "DATABASE_WRITE_TIMEOUT": _float("DATABASE_WRITE_TIMEOUT"),
    "BROKER_BACKOFF_MAX": _float("BROKER_BACKOFF_MAX"),
    "BROKER_LINGER": _float("BROKER_LINGER"),
    "PRESENCE_TTL": _float("PRESENCE_TTL"),
    "TYPING_THROTTLE": _float("TYPING_THROTTLE"),
    "SEND_BACKLOG_MAX_BYTES": _int("SEND_BACKLOG_MAX_BYTES", 1024),
    "SEND_BACKLOG_MAX_SECONDS": _float("SEND_BACKLOG_MAX_SECONDS"),
    "SOCKET_SEND_BUFFER": _int("SOCKET_SEND_BUFFER", 4096),
    "ADMIN_TOKEN": lambda text: text.strip() or None,  # a secrets file's newline is not part of it
    "ADMIN_RATE_LIMIT": lambda text: Rate.parse(text, "ADMIN_RATE_LIMIT"),
    "MODERATION_REFRESH": _float("MODERATION_REFRESH"),
    "MESSAGE_RETENTION_DAYS": _float("MESSAGE_RETENTION_DAYS", "days"),
    "RETENTION_INTERVAL": _float("RETENTION_INTERVAL"),
    "RETENTION_BATCH": _int("RETENTION_BATCH", 1),
}


def from_environ(environ):
    """The settings the environment sets, parsed; unset or empty names are left out."""
    settings = {}
    for name, parse in PARSERS.items():
        text = environ.get(name)
        if text is not None and (text.strip() or name in ("REDIS_URL", "SECRET_KEY", "METRICS_TOKEN", "ADMIN_TOKEN")):
            settings[name] = parse(text)
    return settings


def check(config):
    """Refuse combinations that cannot work, with a message an operator can act on."""
    for name in ("RATE_LIMIT", "ROOM_CREATE_LIMIT", "ADMIN_RATE_LIMIT"):
        if not isinstance(config[name], Rate):
            config[name] = Rate.parse(config[name], name)
    if isinstance(config["TRUSTED_PROXIES"], str):
        config["TRUSTED_PROXIES"] = proxy_networks(config["TRUSTED_PROXIES"])
    if isinstance(config["ALLOWED_ORIGINS"], str):
        config["ALLOWED_ORIGINS"] = _origins(config["ALLOWED_ORIGINS"])
    token = config.get("ADMIN_TOKEN")
    if token is not None and len(token) < ADMIN_TOKEN_MIN:
        raise ConfigError(
            f"ADMIN_TOKEN must be at least {ADMIN_TOKEN_MIN} characters (it is {len(token)}): "
            "a short token can be guessed. Use a long random one (e.g. `openssl rand -hex 32`), "
            "or unset it to turn the admin API off."
        )
    if int(config["WEB_CONCURRENCY"]) > 1 and not config["REDIS_URL"]:
        raise ConfigError(
            f"WEB_CONCURRENCY={config['WEB_CONCURRENCY']} needs REDIS_URL: the in-process "
            "broker only reaches sockets of its own process, so messages would not reach "
            "everyone. Set REDIS_URL, or run one worker."
        )
