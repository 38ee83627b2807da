"""The call recording format (version 2): JSON Lines, one object per line, UTF-8.

Line 1 is the header; then one line per message on either leg of the call, in the order the
agent saw them; the last line (when the call ended cleanly) is the trailer.

    {"type": "header", "format": "telephony-agent-call", "version": 2, "transport": "twilio",
     "call_sid": "CA...", "stream_sid": "MZ...", "started_at": "2025-01-31T12:00:00.000Z",
     "clock": "monotonic", "recorded_by": "agent", "provider": "openai", ...}
    {"t": 0.0031, "leg": "phone", "dir": "in", "msg": {"event": "start", ...}}
    {"t": 0.2150, "leg": "provider", "dir": "out", "msg": {"type": "session.update", ...}}
    {"t": 9.9,    "leg": "phone", "dir": "in", "text": "{not json"}
    {"t": 9.9,    "leg": "phone", "dir": "in", "b64": "AAEC"}
    {"type": "trailer", "t": 12.5, "outcome": "caller_hangup", "stats": {...}}

* `transport` (header): what carried the phone leg: "twilio" (Twilio Media Streams), "sip",
  "browser" (the browser softphone, which speaks the Media Streams protocol), ... The phone
  leg's messages are that transport's own frames, verbatim.
* `t`: seconds since the recording started, from a monotonic clock (the event loop's clock),
  so the gaps between messages are exact even if the wall clock jumps.
* `leg`: "phone" (the caller's leg, whatever the transport) or "provider" (the realtime model's
  WebSocket).
* `dir`: as the agent sees it: "in" is to the agent (from the phone leg or from the provider),
  "out" is from the agent.
* `msg` holds the frame verbatim when it was a JSON object; `text` holds any other text frame;
  `b64` holds a binary frame, base64-encoded.
* `elided` (optional, corpus files): the byte count of audio whose base64 payload was removed to
  keep the file small (the payload field is then ""). Caller audio (phone "in" media) is never
  elided: it is what a replay sends.

Version 1 (before SIP) had no `transport` and called the phone leg "twilio"; `read_recording`
reads it as version 2 with `transport` "twilio" and the leg renamed "phone", so every reader
sees one shape. A reader ignores keys it does not know; a `.jsonl.gz` file is read the same way.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from telephony_agent.wiretap import IN, LEG_PHONE, LEG_PROVIDER, OUT

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IN",
    "LEG_PHONE",
    "LEG_PROVIDER",
    "LEG_V1_TWILIO",
    "OUT",
    "READABLE_VERSIONS",
    "TRANSPORT_V1",
    "Entry",
    "Recording",
    "RecordingError",
    "encode_entry",
    "header",
    "iter_lines",
    "read_recording",
]

FORMAT_NAME = "telephony-agent-call"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

LEG_V1_TWILIO = "twilio"  # version 1's name for the phone leg (read as LEG_PHONE)
TRANSPORT_V1 = "twilio"  # the only transport version 1 recorded


class RecordingError(ValueError):
    """The file is not a call recording this version can read."""


@dataclass(slots=True)
class Entry:
    """One message. `msg` is the parsed JSON object, or None for a non-JSON frame (`raw`)."""

    t: float
    leg: str
    dir: str
    msg: dict[str, Any] | None
    raw: str | bytes | None = None
    elided: int | None = None

    @property
    def event(self) -> str | None:
        """The phone leg's `event` (Media Streams) or the provider's `type`."""
        if self.msg is None:
            return None
        kind = self.msg.get("event") if self.leg == LEG_PHONE else self.msg.get("type")
        if kind is None and self.leg != LEG_PHONE:
            # Gemini Live messages are keyed by their single top-level field.
            keys = [k for k in self.msg if k != "usageMetadata"]
            kind = keys[0] if keys else None
        return kind if isinstance(kind, str) else None


@dataclass
class Recording:
    header: dict[str, Any]
    entries: list[Entry] = field(default_factory=list)
    trailer: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def call_sid(self) -> str | None:
        return self.header.get("call_sid")

    @property
    def transport(self) -> str:
        """What carried the phone leg ("twilio", "sip", "browser", ...)."""
        value = self.header.get("transport")
        return value if isinstance(value, str) else TRANSPORT_V1

    def leg(self, leg: str, direction: str | None = None) -> list[Entry]:
        return [e for e in self.entries if e.leg == leg and (direction is None or e.dir == direction)]

    @property
    def duration(self) -> float:
        if self.trailer is not None and isinstance(self.trailer.get("t"), (int, float)):
            return float(self.trailer["t"])
        return self.entries[-1].t if self.entries else 0.0


@functools.lru_cache(maxsize=64)
def _leg_and_dir(leg: str, direction: str) -> bytes:
    """The `"leg"` and `"dir"` fields of a line: a few pairs, the same on every line."""
    return b',"leg":' + orjson.dumps(leg) + b',"dir":' + orjson.dumps(direction) + b","


def encode_entry(t: float, leg: str, direction: str, message: str | bytes, parsed: Any = None) -> bytes:
    """One line (with its newline) for a frame. A JSON-object text frame is embedded verbatim
    when it is on one line; `parsed` may pass the already-decoded object to save a parse."""
    head = b'{"t":%.4f' % t + _leg_and_dir(leg, direction)
    if isinstance(message, (bytes, bytearray)):
        return b"".join((head, b'"b64":"', binascii.b2a_base64(message, newline=False), b'"}\n'))
    if parsed is None:
        try:
            parsed = orjson.loads(message)
        except orjson.JSONDecodeError:
            parsed = None
    if isinstance(parsed, dict):
        if "\n" not in message and "\r" not in message:
            return b"".join((head, b'"msg":', message.encode("utf-8", "surrogatepass"), b"}\n"))
        return b"".join((head, b'"msg":', orjson.dumps(parsed), b"}\n"))
    return b"".join((head, b'"text":', orjson.dumps(message), b"}\n"))


def header(call_sid: str | None, transport: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "header", "format": FORMAT_NAME, "version": FORMAT_VERSION, "transport": transport, "call_sid": call_sid,
    }
    out.update(extra)
    return out


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")  # type: ignore[return-value]
    return open(path, encoding="utf-8")


def iter_lines(path: str | Path) -> Iterator[dict[str, Any]]:
    with _open_text(Path(path)) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                # The last line of a recording cut off mid-write (a crash) is skipped, not fatal.
                continue
            if not isinstance(obj, dict):
                raise RecordingError(f"{path}:{n}: not a JSON object")
            yield obj


def read_recording(path: str | Path) -> Recording:
    """Load a recording (`.jsonl` or `.jsonl.gz`)."""
    lines = iter_lines(path)
    try:
        head = next(lines)
    except StopIteration:
        raise RecordingError(f"{path}: empty file") from None
    if head.get("type") != "header" or head.get("format") != FORMAT_NAME:
        raise RecordingError(f"{path}: not a {FORMAT_NAME} recording")
    version = head.get("version")
    if not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise RecordingError(f"{path}: format version {version!r}, this reader knows {READABLE_VERSIONS}")
    v1 = version == 1
    if v1:  # read as version 2: the transport named, the phone leg by its neutral name
        head = {**head, "version": FORMAT_VERSION, "transport": TRANSPORT_V1, "read_from_version": 1}
    rec = Recording(head, path=Path(path))
    for obj in lines:
        if obj.get("type") == "trailer" and "leg" not in obj:
            rec.trailer = obj
            continue
        t, leg, direction = obj.get("t"), obj.get("leg"), obj.get("dir")
        if not isinstance(t, (int, float)) or not isinstance(leg, str) or direction not in (IN, OUT):
            continue
        if v1 and leg == LEG_V1_TWILIO:
            leg = LEG_PHONE
        msg = obj.get("msg")
        raw: str | bytes | None = None
        if "text" in obj:
            raw = obj["text"]
        elif "b64" in obj:
            import base64

            raw = base64.b64decode(obj["b64"])
        rec.entries.append(
            Entry(float(t), leg, direction, msg if isinstance(msg, dict) else None, raw, obj.get("elided"))
        )
    return rec
