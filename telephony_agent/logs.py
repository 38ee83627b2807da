"""Logging set-up: text or one JSON object per line, with the call id when there is one.

Text lines escape control characters in the message and fields, so a value from outside (a
CallSid with a newline in it) cannot forge a log line; JSON is escaped by the encoder.
`LogBudget` rate-limits repetitive lines (bad input, accept errors) by kind.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "CallLogAdapter",
    "JsonFormatter",
    "LogBudget",
    "TextFormatter",
    "call_logger",
    "configure_logging",
    "escape_text",
]

# C0/C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """`text` with control characters as `\\xNN` escapes: one log record stays one line."""
    return _CONTROL.sub(_escape_char, text)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = escape_text(record.getMessage()), None
        try:
            line = super().format(record)  # a traceback, if any, follows on its own lines
        finally:
            record.msg, record.args = saved
        call_id = getattr(record, "call_id", None)
        return f"{line} call_id={escape_text(str(call_id))}" if call_id else line


class _Static(logging.Filter):
    """Adds fixed fields (e.g. the worker number) to every record."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def configure_logging(fmt: str = "text", level: str = "INFO", *, worker: int | None = None) -> None:
    """Log to stderr, as text or (``AGENT_LOG_FORMAT=json``) one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_Static({"worker": worker}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class CallLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the call id to every line and keeps a call site's own ``extra`` fields too."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(kwargs.get("extra") or {}), **(self.extra or {})}
        return msg, kwargs


def call_logger(name: str, call_id: str) -> logging.LoggerAdapter[logging.Logger]:
    """A logger whose every line carries the call id (text: suffix; JSON: a `call_id` field)."""
    return CallLogAdapter(logging.getLogger(name), {"call_id": call_id})


@dataclass
class LogBudget:
    """Say so once per `interval` seconds per kind; count the rest (counters elsewhere stay exact).

    `allow(kind, now)` returns None when this line should be dropped, else how many lines of
    that kind were dropped since the last one logged (to append to it).
    """

    interval: float = 10.0
    _next: dict[str, float] = field(default_factory=dict)
    _dropped: dict[str, int] = field(default_factory=dict)

    def allow(self, kind: str, now: float) -> int | None:
        if now < self._next.get(kind, float("-inf")):
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return None
        if len(self._next) > 256:  # kinds come from a closed set; bound it anyway
            self._next.clear()
        self._next[kind] = now + self.interval
        return self._dropped.pop(kind, 0)
