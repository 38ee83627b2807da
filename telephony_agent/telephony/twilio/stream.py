"""Twilio Media Streams protocol (bidirectional `<Connect><Stream>`), sans-I/O.

`MediaStreamProtocol.receive_text` turns one WebSocket text frame into typed events; the
`*_message` builders make the frames we send. No sockets, no clock: recorded traffic can be
fed straight in. Bad input becomes a `BadInput` event and a counter, never an exception, so
one bad frame cannot end its call. Wire facts: docs/protocols.md, "Twilio".

Strict where it matters for safety (frame size, field types, lengths) and lenient where
Twilio-compatible senders differ: stream and call ids of any reasonable shape (Twilio's
`MZ...`/`CA...`, UUIDs), no `accountSid`, media frames without `chunk`/`timestamp` (derived
from arrival order: chunk n, timestamp = the audio received before it).

Hot path: ~50 media frames/s per call for hundreds of calls. Parsing is one `orjson.loads`
plus strict base64 decoding; building a media frame is string formatting (base64 has no
characters JSON would escape).
"""

from __future__ import annotations

import binascii
import collections
import enum
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

import orjson

__all__ = [
    "MAX_MESSAGE_SIZE",
    "BadInput",
    "BadInputKind",
    "Connected",
    "Dtmf",
    "Event",
    "MarkEcho",
    "Media",
    "MediaFormat",
    "MediaStreamProtocol",
    "Start",
    "Stop",
    "StreamParser",
    "StreamState",
    "clear_message",
    "connected_message",
    "dtmf_message",
    "inbound_media_message",
    "mark_echo_message",
    "mark_message",
    "media_message",
    "media_messages",
    "start_message",
    "stop_message",
]

MAX_MESSAGE_SIZE = 64 * 1024
"""Largest text frame accepted (bytes). A 20 ms media frame is ~330 bytes."""

_MAX_SID = 128
_SID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_MAX_NAME = 256
_MAX_PARAMETERS = 64
_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


class BadInputKind(str, enum.Enum):
    OVERSIZED = "oversized"
    BINARY_FRAME = "binary_frame"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    BAD_BASE64 = "bad_base64"
    UNKNOWN_EVENT = "unknown_event"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BEFORE_START = "before_start"
    WRONG_STREAM_SID = "wrong_stream_sid"
    DUPLICATE = "duplicate"
    AFTER_STOP = "after_stop"


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str = "Call"
    version: str = ""


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str | None
    """None when the sender did not say (Twilio always does; some compatible senders don't)."""
    custom_parameters: dict[str, str]
    media_format: MediaFormat
    tracks: tuple[str, ...]
    sequence: int | None = None


@dataclass(init=False, slots=True)
class Media:
    """A caller frame's audio. Made for every frame, so its `__init__` is written out (see
    `AudioChunk` in `realtime/types.py` for why); not frozen, but never changed once made."""

    payload: bytes
    """Raw mu-law 8 kHz bytes (base64-decoded, still mu-law)."""
    chunk: int
    timestamp_ms: int
    sequence: int | None = None
    track: str = "inbound"

    def __init__(self, payload: bytes, chunk: int, timestamp_ms: int, sequence: int | None = None,
                 track: str = "inbound") -> None:
        self.payload = payload
        self.chunk = chunk
        self.timestamp_ms = timestamp_ms
        self.sequence = sequence
        self.track = track


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    sequence: int | None = None


@dataclass(init=False, slots=True)
class MarkEcho:
    """A mark Twilio echoed (25 a call-second): `__init__` written out, as for `Media`."""

    name: str
    sequence: int | None = None

    def __init__(self, name: str, sequence: int | None = None) -> None:
        self.name = name
        self.sequence = sequence


@dataclass(frozen=True, slots=True)
class Stop:
    sequence: int | None = None
    account_sid: str | None = None
    call_sid: str | None = None


@dataclass(frozen=True, slots=True)
class BadInput:
    kind: BadInputKind
    detail: str
    event: str = ""
    """The frame's `event` when it had a known one ("start", "media", ...)."""


Event = Union[Connected, Start, Media, Dtmf, MarkEcho, Stop, BadInput]


class StreamState(str, enum.Enum):
    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


def _int_field(value: Any) -> int | None:
    """Twilio sends counters as decimal strings; accept ints too. None if not a sane integer."""
    if isinstance(value, str):
        if 0 < len(value) <= 12 and value.isdigit() and value.isascii():
            return int(value)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
        return value
    return None


def _sid(value: Any) -> bool:
    """A stream/call/account id: Twilio's `MZ`+32 hex, a UUID, ... (printable, no spaces, bounded)."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_SID and _SID_RE.fullmatch(value) is not None


_a2b = binascii.a2b_base64


@dataclass(slots=True)
class MediaStreamProtocol:
    """State machine for one Media Stream socket: connected -> start -> media/dtmf/mark... -> stop.

    Feed frames in with `receive_text` / `receive_bytes`; act on the returned events.
    `bad_input` counts every rejected frame by kind; `sequence_gaps` counts jumps in Twilio's
    sequence numbers (informational: the frame is still delivered).
    """

    max_message_size: int = MAX_MESSAGE_SIZE
    state: StreamState = StreamState.AWAITING_START
    stream_sid: str | None = None
    call_sid: str | None = None
    account_sid: str | None = None
    start: Start | None = None
    connected_seen: bool = False
    last_sequence: int | None = None
    last_chunk: int | None = None
    media_count: int = 0
    media_ms: int = 0
    """Caller audio received so far (ms): the timestamp of a media frame that carries none."""
    sequence_gaps: int = 0
    bad_input: collections.Counter[str] = field(default_factory=collections.Counter)

    # --- input -------------------------------------------------------------------------------

    def receive_bytes(self, data: bytes) -> list[Event]:
        """Twilio only sends text frames; a binary frame is bad input."""
        return [self._bad(BadInputKind.BINARY_FRAME, f"binary frame of {len(data)} bytes")]

    def receive_text(self, text: str) -> list[Event]:
        """Parse one text frame. Returns zero or more events; never raises on bad input."""
        n = len(text)
        if n > self.max_message_size or (n * 4 > self.max_message_size and len(text.encode("utf-8", "surrogatepass")) > self.max_message_size):
            return [self._bad(BadInputKind.OVERSIZED, f"message of {n} characters exceeds {self.max_message_size} bytes")]
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return [self._bad(BadInputKind.BAD_JSON, f"invalid JSON: {str(exc)[:120]}")]
        if type(msg) is not dict:
            return [self._bad(BadInputKind.NOT_OBJECT, f"JSON {type(msg).__name__}, not an object")]
        event = msg.get("event")
        if event == "media":
            result = self._media(msg)
        else:
            handler = _HANDLERS.get(event) if isinstance(event, str) else None
            if handler is None:
                return [self._bad(BadInputKind.UNKNOWN_EVENT, f"unknown event {str(event)[:40]!r}")]
            result = handler(self, msg)
        if type(result) is BadInput:
            result = BadInput(result.kind, result.detail, event)  # type: ignore[arg-type]
        return [result]

    # --- helpers -----------------------------------------------------------------------------

    def _bad(self, kind: BadInputKind, detail: str) -> BadInput:
        self.bad_input[kind.value] += 1
        return BadInput(kind, detail)

    def _check_stream(self, msg: dict[str, Any], event: str) -> BadInput | None:
        """Common checks for events after `start`: state, streamSid, sequence bookkeeping."""
        if self.state is StreamState.STOPPED:
            return self._bad(BadInputKind.AFTER_STOP, f"{event} after stop")
        if self.state is StreamState.AWAITING_START:
            return self._bad(BadInputKind.BEFORE_START, f"{event} before start")
        sid = msg.get("streamSid")
        if sid is None:
            return self._bad(BadInputKind.MISSING_FIELD, f"{event}: streamSid")
        if sid != self.stream_sid:
            return self._bad(BadInputKind.WRONG_STREAM_SID, f"{event}: streamSid {str(sid)[:70]!r}")
        return None

    def _sequence(self, msg: dict[str, Any]) -> tuple[int | None, BadInput | None]:
        raw = msg.get("sequenceNumber")
        if raw is None:
            return None, None
        seq = _int_field(raw)
        if seq is None:
            return None, self._bad(BadInputKind.BAD_FIELD, f"sequenceNumber {str(raw)[:20]!r}")
        last = self.last_sequence
        if last is not None and seq != last + 1:
            self.sequence_gaps += 1
        self.last_sequence = seq
        return seq, None

    # --- events ------------------------------------------------------------------------------

    def _media(self, msg: dict[str, Any]) -> Event:
        bad = self._check_stream(msg, "media")
        if bad is not None:
            return bad
        media = msg.get("media")
        if type(media) is not dict:
            return self._bad(BadInputKind.MISSING_FIELD, "media: media object")
        payload = media.get("payload")
        if type(payload) is not str:
            return self._bad(BadInputKind.MISSING_FIELD, "media: payload")
        raw_chunk, raw_timestamp = media.get("chunk"), media.get("timestamp")
        chunk = _int_field(raw_chunk) if raw_chunk is not None else (self.last_chunk or 0) + 1
        timestamp = _int_field(raw_timestamp) if raw_timestamp is not None else self.media_ms
        if chunk is None or timestamp is None:
            return self._bad(BadInputKind.BAD_FIELD, "media: chunk/timestamp not integers")
        try:
            audio = _a2b(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            return self._bad(BadInputKind.BAD_BASE64, f"media: payload of {len(payload)} characters")
        if not audio:
            return self._bad(BadInputKind.BAD_BASE64, "media: empty payload")
        seq, bad = self._sequence(msg)
        if bad is not None:
            return bad
        self.media_count += 1
        self.media_ms += len(audio) // 8  # mu-law at 8 kHz: 8 bytes a millisecond
        self.last_chunk = chunk
        track = media.get("track")
        return Media(audio, chunk, timestamp, seq, track if type(track) is str else "inbound")

    def _connected(self, msg: dict[str, Any]) -> Event:
        if self.connected_seen or self.state is not StreamState.AWAITING_START:
            return self._bad(BadInputKind.DUPLICATE, "connected after connected/start")
        self.connected_seen = True
        protocol, version = msg.get("protocol"), msg.get("version")
        return Connected(protocol if isinstance(protocol, str) else "", version if isinstance(version, str) else "")

    def _start(self, msg: dict[str, Any]) -> Event:
        if self.state is StreamState.STOPPED:
            return self._bad(BadInputKind.AFTER_STOP, "start after stop")
        if self.state is StreamState.STREAMING:
            return self._bad(BadInputKind.DUPLICATE, "second start")
        start = msg.get("start")
        if type(start) is not dict:
            return self._bad(BadInputKind.MISSING_FIELD, "start: start object")
        sids: dict[str, str | None] = {}
        for key in ("streamSid", "callSid", "accountSid"):
            value = start.get(key)
            if key == "streamSid" and value is None:
                value = msg.get("streamSid")  # some senders put it only at the top level
            if value is None and key == "accountSid":
                sids[key] = None
                continue
            if value is None:
                return self._bad(BadInputKind.MISSING_FIELD, f"start: {key}")
            if not _sid(value):
                return self._bad(BadInputKind.BAD_FIELD, f"start: {key} {str(value)[:70]!r}")
            sids[key] = value
        top = msg.get("streamSid")
        if top is not None and top != sids["streamSid"]:
            return self._bad(BadInputKind.WRONG_STREAM_SID, "start: top-level streamSid differs")
        params = start.get("customParameters", {})
        if params is None:
            params = {}
        if type(params) is not dict or len(params) > _MAX_PARAMETERS or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= _MAX_NAME for k, v in params.items()
        ):
            return self._bad(BadInputKind.BAD_FIELD, "start: customParameters must map strings to strings")
        fmt = start.get("mediaFormat")
        if fmt is None:
            media_format = MediaFormat()
        elif type(fmt) is not dict:
            return self._bad(BadInputKind.BAD_FIELD, "start: mediaFormat")
        else:
            media_format = MediaFormat(fmt.get("encoding"), _int_field(fmt.get("sampleRate")), _int_field(fmt.get("channels")))  # type: ignore[arg-type]
            if media_format != MediaFormat():
                return self._bad(BadInputKind.BAD_FIELD, f"start: unsupported mediaFormat {fmt!r}"[:200])
        tracks = start.get("tracks", ["inbound"])
        if type(tracks) is not list or not all(isinstance(t, str) for t in tracks):
            return self._bad(BadInputKind.BAD_FIELD, "start: tracks")
        seq, bad = self._sequence(msg)
        if bad is not None:
            return bad
        stream_sid, call_sid = sids["streamSid"], sids["callSid"]
        assert stream_sid is not None and call_sid is not None
        event = Start(stream_sid, call_sid, sids["accountSid"], dict(params), media_format, tuple(tracks), seq)
        self.state = StreamState.STREAMING
        self.stream_sid, self.call_sid, self.account_sid = event.stream_sid, event.call_sid, event.account_sid
        self.start = event
        return event

    def _dtmf(self, msg: dict[str, Any]) -> Event:
        bad = self._check_stream(msg, "dtmf")
        if bad is not None:
            return bad
        body = msg.get("dtmf")
        digit = body.get("digit") if type(body) is dict else None
        if digit is None:
            return self._bad(BadInputKind.MISSING_FIELD, "dtmf: digit")
        if not isinstance(digit, str) or len(digit) != 1 or digit not in _DTMF_DIGITS:
            return self._bad(BadInputKind.BAD_FIELD, f"dtmf: digit {str(digit)[:10]!r}")
        seq, bad = self._sequence(msg)
        if bad is not None:
            return bad
        return Dtmf(digit.upper(), seq)

    def _mark(self, msg: dict[str, Any]) -> Event:
        bad = self._check_stream(msg, "mark")
        if bad is not None:
            return bad
        body = msg.get("mark")
        name = body.get("name") if type(body) is dict else None
        if name is None:
            return self._bad(BadInputKind.MISSING_FIELD, "mark: name")
        if not isinstance(name, str) or len(name) > _MAX_NAME:
            return self._bad(BadInputKind.BAD_FIELD, "mark: name")
        seq, bad = self._sequence(msg)
        if bad is not None:
            return bad
        return MarkEcho(name, seq)

    def _stop(self, msg: dict[str, Any]) -> Event:
        bad = self._check_stream(msg, "stop")
        if bad is not None:
            return bad
        seq, bad = self._sequence(msg)
        if bad is not None:
            return bad
        body = msg.get("stop")
        account = call = None
        if type(body) is dict:
            account = body.get("accountSid") if _sid(body.get("accountSid")) else None
            call = body.get("callSid") if _sid(body.get("callSid")) else None
        self.state = StreamState.STOPPED
        return Stop(seq, account, call)

    # --- output, bound to this stream ---------------------------------------------------------

    def media(self, ulaw: bytes) -> str:
        """A media frame for this stream (after `start`)."""
        return media_message(self._require_sid(), ulaw)

    def mark(self, name: str) -> str:
        return mark_message(self._require_sid(), name)

    def clear(self) -> str:
        return clear_message(self._require_sid())

    def _require_sid(self) -> str:
        if self.stream_sid is None:
            raise RuntimeError("no stream sid before start")
        return self.stream_sid

    @property
    def bad_input_total(self) -> int:
        return sum(self.bad_input.values())


StreamParser = MediaStreamProtocol

_HANDLERS = {
    "connected": MediaStreamProtocol._connected,
    "start": MediaStreamProtocol._start,
    "dtmf": MediaStreamProtocol._dtmf,
    "mark": MediaStreamProtocol._mark,
    "stop": MediaStreamProtocol._stop,
}


# --- builders ---------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def _json_str(value: str) -> str:
    return orjson.dumps(value).decode("utf-8")


_b2a = binascii.b2a_base64


def media_message(stream_sid: str, ulaw: bytes) -> str:
    """`{"event":"media","streamSid":..,"media":{"payload":<base64 mu-law>}}`."""
    payload = _b2a(ulaw, newline=False).decode("ascii")
    return '{"event":"media","streamSid":' + _json_str(stream_sid) + ',"media":{"payload":"' + payload + '"}}'


def media_messages(stream_sid: str, ulaw: bytes, frame_bytes: int = 160) -> list[str]:
    """Cut audio into frames (20 ms = 160 bytes by default) and build one media message each."""
    if frame_bytes <= 0:
        raise ValueError("frame_bytes must be positive")
    view = memoryview(ulaw)
    return [media_message(stream_sid, bytes(view[i : i + frame_bytes])) for i in range(0, len(view), frame_bytes)]


def mark_message(stream_sid: str, name: str) -> str:
    """Ask Twilio to echo `name` when the audio queued before it has played."""
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode("utf-8")


def clear_message(stream_sid: str) -> str:
    """Drop audio buffered at Twilio; pending marks come back at once."""
    return '{"event":"clear","streamSid":' + _json_str(stream_sid) + "}"


# --- caller-side builders: the frames Twilio sends us (the caller simulator, tests, tools) -----


def connected_message() -> str:
    """The first frame of every stream."""
    return '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def start_message(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    custom_parameters: dict[str, str],
    *,
    sequence: int = 1,
    media_format: MediaFormat = MediaFormat(),
) -> str:
    """`start`: the stream's SIDs, the TwiML `<Parameter>`s and the (mu-law 8 kHz) format."""
    return orjson.dumps({
        "event": "start",
        "sequenceNumber": str(sequence),
        "start": {
            "accountSid": account_sid,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": custom_parameters,
            "mediaFormat": {
                "encoding": media_format.encoding,
                "sampleRate": media_format.sample_rate,
                "channels": media_format.channels,
            },
        },
        "streamSid": stream_sid,
    }).decode("utf-8")


def inbound_media_message(stream_sid: str, ulaw: bytes, *, sequence: int, chunk: int, timestamp_ms: int) -> str:
    """Caller audio as Twilio frames it: counters are decimal strings, `timestamp` in ms."""
    payload = _b2a(ulaw, newline=False).decode("ascii")
    return (
        '{"event":"media","sequenceNumber":"' + str(sequence) + '","streamSid":' + _json_str(stream_sid)
        + ',"media":{"track":"inbound","chunk":"' + str(chunk) + '","timestamp":"' + str(timestamp_ms)
        + '","payload":"' + payload + '"}}'
    )


def dtmf_message(stream_sid: str, digit: str, *, sequence: int) -> str:
    """A key the caller pressed."""
    return orjson.dumps({
        "event": "dtmf", "streamSid": stream_sid, "sequenceNumber": str(sequence),
        "dtmf": {"track": "inbound_track", "digit": digit},
    }).decode("utf-8")


def mark_echo_message(stream_sid: str, name: str, *, sequence: int) -> str:
    """Twilio's echo of a mark once the audio before it has played (or was cleared)."""
    return orjson.dumps({
        "event": "mark", "sequenceNumber": str(sequence), "streamSid": stream_sid, "mark": {"name": name},
    }).decode("utf-8")


def stop_message(stream_sid: str, account_sid: str, call_sid: str, *, sequence: int) -> str:
    """The caller hung up (or the call was redirected): the last frame of the stream."""
    return orjson.dumps({
        "event": "stop", "sequenceNumber": str(sequence), "streamSid": stream_sid,
        "stop": {"accountSid": account_sid, "callSid": call_sid},
    }).decode("utf-8")
