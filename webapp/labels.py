"""Room labels: what a room may be called, the URL converter, and fresh labels."""

import re
import secrets

from coolname import generate, generate_slug
from werkzeug.routing import BaseConverter, ValidationError

LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,50}")
# First path segments that are routes (or may become routes), never rooms.
RESERVED = frozenset(
    "new api chat static healthz metrics embed events ws sse admin login logout "
    "about help settings assets favicon robots".split()
)


def is_valid_label(label):
    """True for labels a room can have: the contract's alphabet, and not a reserved word."""
    return bool(LABEL_RE.fullmatch(label)) and label.lower() not in RESERVED


def candidate():
    """A human-readable label such as ``quiet-river-4821`` (not checked for use)."""
    while True:
        label = f"{generate_slug(2)}-{1000 + secrets.randbelow(9000)}"
        if is_valid_label(label):
            return label


def friendly_handle():
    """A name for a visitor who has not chosen one, such as ``Quiet Otter``."""
    return " ".join(word.capitalize() for word in generate(2))[:50]


class LabelConverter(BaseConverter):
    """``<label:label>`` in a route: anything else is a 404, never a 500."""

    regex = r"[A-Za-z0-9_-]{1,50}"

    def to_python(self, value):
        if not is_valid_label(value):
            raise ValidationError()
        return value
