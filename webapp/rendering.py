"""Rendering shared by every view of a message: the page, both sockets, the event stream.

One Jinja partial (``templates/_message.html``) renders a message row from the message's
JSON form, autoescaped; rows come out on a single line (newlines in the text become
``<br>``), so the event stream can carry a row as one ``data:`` line.

``WireForms.encode(fmt, kind, payload)`` turns an event into the bytes one kind of
listener takes: ``json`` (the seed's protocol), ``html`` (the htmx socket: out-of-band
swaps) or ``sse`` (an event-stream chunk). The hub calls it once per message and form.
"""

import json
from datetime import datetime

from markupsafe import escape

from .websocket import text_frame


def clock(iso):
    """``HH:MM`` (UTC) of an ISO-8601 timestamp; the page script shows local time."""
    return datetime.fromisoformat(iso).strftime("%H:%M")


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


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

    def _html_presence(self, handles):
        return text_frame(self._render("_presence.html", here=handles, oob=True))

    def _html_typing(self, typing):
        return text_frame(self._render("_typing.html", handle=typing["handle"], oob=True))

    def _html_room(self, room):
        return text_frame(self._render("_room_name.html", name=room["name"], oob=True))

    # The event stream.
    def _sse_message(self, message):
        row = self.row(message)
        return f"id: {message['id']}\nevent: message\ndata: {row}\n\n".encode()

    def _sse_reset(self, reset):
        data = to_json({"reset": True, "latest": reset["latest"]})
        return f"id: {reset['latest']}\nevent: reset\ndata: {data}\n\n".encode()

    def _sse_presence(self, handles):
        return f"event: presence\ndata: {to_json(handles)}\n\n".encode()

    def _sse_typing(self, typing):
        return f"event: typing\ndata: {to_json(typing['handle'])}\n\n".encode()

    def _sse_room(self, room):
        # The name as HTML text (escaped, one line): the embed swaps it into its header.
        return f"event: room\ndata: {escape(room['name'])}\n\n".encode()


def init_app(app):
    app.add_template_filter(clock)
