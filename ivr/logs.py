"""Structured logs: one JSON object per line, static messages, personal data masked in fields."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from ivr import phone

# Fields that carry personal data; their values are masked before they are written.
SENSITIVE_FIELDS = frozenset({
    "caller_number", "callback_number", "number", "digits", "dtmf", "transcript", "text",
    "embedding", "password",
})
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def mask_value(value: object) -> str:
    """Keep enough of a value to correlate: a phone number in any spelling as
    :func:`ivr.phone.mask` shows it (first 3 and last 2 digits), other text as its length."""
    text = str(value)
    if phone.parse(text) is not None or (text.isdigit() and len(text) >= 7):
        return phone.mask(text) or ""
    return f"<{len(text)} chars masked>"


class JsonFormatter(logging.Formatter):
    """Formats a record and its ``extra`` fields as JSON, masking sensitive fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render one line."""
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_"):
                continue
            out[key] = mask_value(value) if key in SENSITIVE_FIELDS else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str) -> None:
    """Send JSON logs to stderr at ``level``; quiet chatty libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request lines of our HTTP clients are noise at INFO (and carry ids, not data).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
