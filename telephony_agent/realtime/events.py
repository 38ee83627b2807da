"""Server events: one class per variant, a closed union (`ServerEvent`).

Providers translate their wire messages into these; anything they don't recognise becomes
`UnknownEvent` with the raw message, so nothing is silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from telephony_agent.realtime.types import AudioFormat


@dataclass(frozen=True, slots=True)
class SessionCreated:
    session_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The provider's VAD heard the caller start speaking: the barge-in signal (OpenAI)."""

    audio_start_ms: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class AudioCommitted:
    item_id: str | None = None
    previous_item_id: str | None = None


@dataclass(frozen=True, slots=True)
class AudioCleared:
    pass


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """`status`: completed | cancelled | failed | incomplete; `reason` e.g. turn_detected."""

    response_id: str
    status: str = "completed"
    reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """A response ended without the answer the caller is owed; follows that response's `ResponseDone`.

    `status`: `failed` (the provider gave up: server error, rate limit, rejected output) or
    `incomplete` (cut short by a limit or filter: `max_output_tokens`, `content_filter`, ...).
    `reason` is the provider's code, `message` its words, for logs.
    """

    response_id: str
    status: str
    reason: str | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class ToolRoundsCapped:
    """The runner refused the model's tool calls: `rounds` tool rounds in one caller turn passed
    the cap. `stopped`: the model kept calling after being told, so nothing more was sent to it."""

    rounds: int
    stopped: bool = False


@dataclass(init=False, slots=True)
class AudioDelta:
    """Agent audio (25-50 a call-second): `__init__` written out, as for `AudioChunk`."""

    item_id: str
    data: bytes = field(repr=False)
    format: AudioFormat
    content_index: int = 0
    response_id: str | None = None

    def __init__(self, item_id: str, data: bytes, format: AudioFormat, content_index: int = 0,
                 response_id: str | None = None) -> None:
        self.item_id = item_id
        self.data = data
        self.format = format
        self.content_index = content_index
        self.response_id = response_id


@dataclass(frozen=True, slots=True)
class AudioDone:
    item_id: str
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutputTranscriptDelta:
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class OutputTranscriptDone:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class InputTranscriptDelta:
    item_id: str | None
    delta: str


@dataclass(frozen=True, slots=True)
class InputTranscriptCompleted:
    item_id: str | None
    transcript: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TextDone:
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class FunctionCallDone:
    """`arguments` is a JSON string for every provider (Gemini's object is serialised)."""

    call_id: str
    name: str
    arguments: str
    item_id: str | None = None
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """`fatal`: the session does not survive this error."""

    message: str
    code: str | int | None = None
    fatal: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The provider cut its own output short because the caller spoke (Gemini's barge-in signal)."""

    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class GoAway:
    """The connection will close in `time_left` seconds (the provider resumes by itself)."""

    time_left: float


@dataclass(frozen=True, slots=True)
class ResumptionHandle:
    handle: str
    resumable: bool


@dataclass(frozen=True, slots=True)
class ToolCallCancelled:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The provider replaced its connection (session limit, goAway, drop); the conversation carried over."""

    reason: str


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    raw: dict[str, Any]


ServerEvent = Union[
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    AudioCommitted,
    AudioCleared,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ToolRoundsCapped,
    AudioDelta,
    AudioDone,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    InputTranscriptDelta,
    InputTranscriptCompleted,
    TextDelta,
    TextDone,
    FunctionCallDone,
    ErrorEvent,
    Interrupted,
    GoAway,
    ResumptionHandle,
    ToolCallCancelled,
    Usage,
    Reconnected,
    UnknownEvent,
]
