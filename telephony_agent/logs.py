"""Logging set-up: text or one JSON object per line, with the call id when there is one."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

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
        line = super().format(record)
        call_id = getattr(record, "call_id", None)
        return f"{line} call_id={call_id}" if call_id else line


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
