"""Structured logging: one JSON object per line (or plain text for humans).

Log records carry their context as ``extra={...}``; nothing here ever logs
secrets, PINs or passwords, and callers must not pass them as extras.
"""

import json
import logging
import sys
import time
from typing import Any

from ocs.config import resolved_log_format

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line with its extras as fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line, its extra fields included."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with extras appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one readable line, its extra fields as key=value."""
        base = f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        if extras:
            base += " " + " ".join(extras)
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Send ocs logs to stderr in the chosen format (``auto``: text on a terminal); idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = resolved_log_format(fmt) == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log repeats what our metrics already count.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
