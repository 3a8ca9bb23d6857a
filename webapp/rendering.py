"""Rendering shared by every view of a message: the page, both sockets, the event stream.

One Jinja partial (``templates/_message.html``) renders a message row from the message's
JSON form, autoescaped; rows come out on a single line (newlines in the text become
``<br>``), so the event stream can carry a row as one ``data:`` line. ``message_html``
is the only place a message's text becomes markup: every character is escaped, and an
``http``/``https`` URL becomes a link whose visible text is exactly the URL as sent;
nothing else (``javascript:``, ``data:``, HTML in the text) ever becomes a link.

``WireForms.encode(fmt, kind, payload)`` turns an event into the bytes one kind of
listener takes: ``json`` (the seed's protocol), ``html`` (the htmx socket: out-of-band
swaps) or ``sse`` (an event-stream chunk). The hub calls it once per message and form.
"""

import json
import re
from datetime import datetime
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from .websocket import text_frame


def clock(iso):
    """``HH:MM`` (UTC) of an ISO-8601 timestamp; the page script shows local time."""
    return datetime.fromisoformat(iso).strftime("%H:%M")


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# A URL runs to the next space or a character that cannot be part of one unescaped.
URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
# Punctuation that ends a sentence rather than the URL.
TRAILING = ".,;:!?'\""
LINK = Markup('<a href="{}" rel="nofollow noopener noreferrer ugc" target="_blank">{}</a>')
EMBED_SNIPPET = Markup('<iframe src="{}" title="{}" width="400" height="500" loading="lazy"></iframe>')


def _url_end(url):
    """Where a matched URL really ends: without trailing punctuation, and without a
    closing bracket it does not open itself (``(see https://a.example/x)``)."""
    while url:
        if url[-1] in TRAILING:
            url = url[:-1]
        elif url[-1] == ")" and url.count(")") > url.count("("):
            url = url[:-1]
        else:
            break
    return len(url)


def _linked(line):
    parts, position = [], 0
    for match in URL.finditer(line):
        url = match.group()[: _url_end(match.group())]
        try:
            parsed = urlsplit(url)
        except ValueError:  # e.g. a malformed IPv6 host: stays text
            continue
        if not parsed.hostname:
            continue
        parts.append(escape(line[position : match.start()]))
        parts.append(LINK.format(url, url))
        position = match.start() + len(url)
    parts.append(escape(line[position:]))
    return Markup("").join(parts)


def message_html(text):
    """A message's text as markup: escaped, newlines as ``<br>``, http(s) URLs as links
    (opening in a new tab, ``rel="nofollow noopener noreferrer ugc"``)."""
    return Markup("<br>").join(_linked(line) for line in text.split("\n"))


def embed_snippet(embed_url, title):
    """The ``<iframe>`` a site owner copies, as text: the URL and the room's name (anyone
    may set it) are escaped inside it, so pasted anywhere it is exactly one iframe. The
    page escapes this text once more to show it in a ``<textarea>``."""
    return str(EMBED_SNIPPET.format(embed_url, title))


def to_json(value):
    """Compact JSON, as sent on sockets (one encoder for all: json.dumps would build one
    per call for these options)."""
    return _encode_json(value)


class WireForms:
    def __init__(self, jinja_env):
        self._env = jinja_env

    def _render(self, template, **context):
        return self._env.get_template(template).render(**context)

    def row(self, message):
        """The HTML row of a message (its JSON dict), on one line."""
        return self._render("_message.html", m=message)

    def encode(self, fmt, kind, payload):
        return getattr(self, f"_{fmt}_{kind}")(payload)

    # The seed's JSON protocol.
    def _json_message(self, message):
        return text_frame(to_json(message))

    def _json_reset(self, reset):
        return text_frame(to_json({"reset": True, "latest": reset["latest"]}))

    # The htmx socket: every top-level element is swapped out of band.
    def _html_message(self, message):
        return text_frame(self._render("_push.html", m=message))

    def _html_reset(self, reset):
        return text_frame(self._render("_reset.html", messages=reset["recent"], latest=reset["latest"]))

    def _json_presence(self, handles):
        return text_frame(to_json({"presence": handles}))

    def _json_typing(self, typing):
        return text_frame(to_json({"typing": typing["handle"]}))

    def _json_room(self, room):
        return text_frame(to_json({"name": room["name"]}))

    def _json_lock(self, lock):
        return text_frame(to_json({"locked": bool(lock["locked"])}))

    def _json_delete(self, deleted):
        return text_frame(to_json({"deleted": deleted["id"]}))

    def _json_clear(self, cleared):
        return text_frame(to_json({"cleared": cleared["through"]}))

    def _html_delete(self, deleted):
        return text_frame(f'<div id="message-{int(deleted["id"])}" hx-swap-oob="delete"></div>')

    def _html_clear(self, cleared):
        # Read by the page script: rows up to this id go, a later one (stored after the
        # clear, maybe delivered before the news of it) stays.
        return text_frame(f'<template data-cleared-through="{int(cleared["through"])}"></template>')

    def _html_presence(self, handles):
        return text_frame(self._render("_presence.html", here=handles, oob=True))

    def _html_typing(self, typing):
        return text_frame(self._render("_typing.html", handle=typing["handle"], oob=True))

    def _html_lock(self, lock):
        return text_frame(self._render("_locked.html", locked=lock["locked"], oob=True))

    def _html_room(self, room):
        return text_frame(self._render("_room_name.html", name=room["name"], oob=True))

    # The event stream.
    def _sse_message(self, message):
        row = self.row(message)
        return f"id: {message['id']}\nevent: message\ndata: {row}\n\n".encode()

    def _sse_reset(self, reset):
        data = to_json({"reset": True, "latest": reset["latest"]})
        return f"id: {reset['latest']}\nevent: reset\ndata: {data}\n\n".encode()

    def _sse_delete(self, deleted):
        return f"event: delete\ndata: {int(deleted['id'])}\n\n".encode()

    def _sse_clear(self, cleared):
        return f"event: clear\ndata: {int(cleared['through'])}\n\n".encode()

    def _sse_presence(self, handles):
        return f"event: presence\ndata: {to_json(handles)}\n\n".encode()

    def _sse_typing(self, typing):
        return f"event: typing\ndata: {to_json(typing['handle'])}\n\n".encode()

    def _sse_lock(self, lock):
        return f"event: lock\ndata: {'locked' if lock['locked'] else 'unlocked'}\n\n".encode()

    def _sse_room(self, room):
        # The name as HTML text (escaped, one line): the embed swaps it into its header.
        return f"event: room\ndata: {escape(room['name'])}\n\n".encode()


def init_app(app):
    app.add_template_filter(clock)
    app.add_template_filter(message_html)
