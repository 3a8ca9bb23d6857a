"""Logging: the standard library's, configured once, plain text or JSON lines.

Every fault the server handles is logged with an ``event`` name and its details as
``extra`` fields, so operators can count and alert on them::

    log.warning("broker subscription lost", extra={"event": "broker_lost", "error": str(exc)})

Text lines end with the fields as ``key=value``; ``LOG_FORMAT=json`` writes one JSON
object per line instead.
"""

import json
import logging

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record):
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")

    def format(self, record):
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in fields.items())
        return line


class JSONFormatter(logging.Formatter):
    def format(self, record):
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level, fmt="text"):
    """Send the root logger's records to stderr in ``fmt`` at ``level`` (idempotent)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "chat_handler", False)), None)
    if handler is None and not root.handlers:
        handler = logging.StreamHandler()
        handler.chat_handler = True
        root.addHandler(handler)
    if handler is not None:
        handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root.setLevel(level)
