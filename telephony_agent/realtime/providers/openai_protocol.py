"""OpenAI Realtime (GA) wire protocol, sans-I/O: building client messages, translating server events.

No sockets and no clocks here: `session_update_message` builds the GA `session.update`, and
`OpenAIEventTranslator` turns server JSON dicts into our events while tracking what a
reconnect needs (the conversation so far) and what barge-in needs (audio generated per item,
whether a response is active).
"""

from __future__ import annotations

import binascii
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from telephony_agent.realtime.errors import RealtimeConfigError
from telephony_agent.realtime.events import (
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCallDone,
    InputTranscriptCompleted,
    InputTranscriptDelta,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    UnknownEvent,
    Usage,
)
from telephony_agent.realtime.types import (
    PCM16_24K,
    PCMU_8K,
    AudioEncoding,
    AudioFormat,
    RealtimeConfig,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
    deep_merge,
)

log = logging.getLogger(__name__)

PCMA_8K = AudioFormat.alaw8k()
SUPPORTED_FORMATS: tuple[AudioFormat, ...] = (PCMU_8K, PCM16_24K, PCMA_8K)

#: Error codes that need no action from the API caller.
BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})
#: Error codes that mean the server is about to close: the session reconnects.
EXPIRY_ERROR_CODES = frozenset({"session_expired"})
AUTH_ERROR_CODES = frozenset({"invalid_api_key", "authentication_error", "unauthorized", "insufficient_quota"})

_TOOL_CHOICES = ("auto", "none", "required")


# -- formats ----------------------------------------------------------------------------------


def format_object(fmt: AudioFormat) -> dict[str, Any]:
    """Our `AudioFormat` as a GA format object (`{"type": "audio/pcmu"}`, ...)."""
    if fmt.channels != 1:
        raise RealtimeConfigError(f"OpenAI Realtime takes mono audio, not {fmt.channels} channels")
    if fmt.encoding is AudioEncoding.PCM16 and fmt.sample_rate == 24000:
        return {"type": "audio/pcm", "rate": 24000}
    if fmt.encoding is AudioEncoding.G711_ULAW and fmt.sample_rate == 8000:
        return {"type": "audio/pcmu"}
    if fmt.encoding is AudioEncoding.G711_ALAW and fmt.sample_rate == 8000:
        return {"type": "audio/pcma"}
    raise RealtimeConfigError(f"OpenAI Realtime does not support {fmt.encoding.value} at {fmt.sample_rate} Hz")


def format_from_object(obj: Any) -> AudioFormat | None:
    """A GA format object as our `AudioFormat`; None if it is not one we know."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("type")
    if kind == "audio/pcm" and obj.get("rate", 24000) == 24000:
        return PCM16_24K
    if kind == "audio/pcmu":
        return PCMU_8K
    if kind == "audio/pcma":
        return PCMA_8K
    return None


# -- client messages --------------------------------------------------------------------------


def turn_detection_object(td: TurnDetection) -> dict[str, Any] | None:
    if td.type is TurnDetectionType.NONE:
        return None
    if td.type is TurnDetectionType.SEMANTIC_VAD:
        return {
            "type": "semantic_vad",
            "eagerness": td.eagerness,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
    obj: dict[str, Any] = {
        "type": "server_vad",
        "threshold": td.threshold,
        "prefix_padding_ms": td.prefix_padding_ms,
        "silence_duration_ms": td.silence_duration_ms,
        "create_response": td.create_response,
        "interrupt_response": td.interrupt_response,
    }
    if td.idle_timeout_ms is not None:
        obj["idle_timeout_ms"] = td.idle_timeout_ms
    return obj


def session_object(
    config: RealtimeConfig,
    *,
    input_format: AudioFormat | None = None,
    output_format: AudioFormat | None = None,
    include_voice: bool = True,
) -> dict[str, Any]:
    """The GA `session` object for `config` (formats default to the config's, else μ-law).

    `config.temperature` is ignored: the GA session has none. `config.extras` is merged in last
    (deeply), so it can set anything else (`truncation`, `audio.input.noise_reduction`, ...).
    """
    in_fmt = input_format or config.input_format or PCMU_8K
    out_fmt = output_format or config.output_format or in_fmt
    audio_in: dict[str, Any] = {
        "format": format_object(in_fmt),
        "turn_detection": turn_detection_object(config.turn_detection),
        "transcription": {"model": config.input_transcription} if config.input_transcription else None,
    }
    audio_out: dict[str, Any] = {"format": format_object(out_fmt)}
    if include_voice and config.voice:
        audio_out["voice"] = config.voice
    modalities = ["text"] if tuple(config.modalities) == ("text",) else ["audio"]
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": config.instructions,
        "output_modalities": modalities,
        "audio": {"input": audio_in, "output": audio_out},
        "tools": [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters}
            for t in config.tools
        ],
    }
    choice = config.tool_choice or "auto"
    session["tool_choice"] = choice if choice in _TOOL_CHOICES else {"type": "function", "name": choice}
    if config.max_output_tokens is not None:
        session["max_output_tokens"] = config.max_output_tokens
    if config.extras:
        session = deep_merge(session, config.extras)
    return session


def session_update_message(
    config: RealtimeConfig,
    *,
    input_format: AudioFormat | None = None,
    output_format: AudioFormat | None = None,
    include_voice: bool = True,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A GA `session.update` for `config`."""
    msg: dict[str, Any] = {
        "type": "session.update",
        "session": session_object(
            config, input_format=input_format, output_format=output_format, include_voice=include_voice
        ),
    }
    if event_id:
        msg["event_id"] = event_id
    return msg


def new_item_id() -> str:
    """A client-side item id (OpenAI allows up to 32 characters)."""
    return "item_" + secrets.token_hex(12)


def audio_append_message(data: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": binascii.b2a_base64(data, newline=False).decode("ascii")}


def user_text_item(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    return item


def tool_output_item(response: ToolResponse, item_id: str | None = None) -> dict[str, Any]:
    output = response.output
    if not isinstance(output, str):
        output = orjson.dumps(output, default=str).decode()
    item: dict[str, Any] = {"type": "function_call_output", "call_id": response.call_id, "output": output}
    if item_id:
        item["id"] = item_id
    return item


def item_create_message(item: dict[str, Any], previous_item_id: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "conversation.item.create", "item": item}
    if previous_item_id:
        msg["previous_item_id"] = previous_item_id
    return msg


def truncate_message(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": audio_end_ms}


# -- the conversation record ------------------------------------------------------------------


@dataclass
class TranscriptEntry:
    """One conversation item as text; `kind`: user | assistant | system | function_call | function_call_output."""

    item_id: str
    kind: str
    text: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    output: str = ""

    def as_item(self) -> dict[str, Any] | None:
        """The item to re-create on a new connection (None if there is nothing to carry over)."""
        if self.kind in ("user", "system"):
            if not self.text:
                return None
            return {"id": self.item_id, "type": "message", "role": self.kind,
                    "content": [{"type": "input_text", "text": self.text}]}
        if self.kind == "assistant":
            if not self.text:
                return None
            return {"id": self.item_id, "type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": self.text}]}
        if self.kind == "function_call":
            if not self.call_id or not self.name:
                return None
            return {"id": self.item_id, "type": "function_call", "call_id": self.call_id,
                    "name": self.name, "arguments": self.arguments or "{}"}
        if self.kind == "function_call_output":
            return {"id": self.item_id, "type": "function_call_output", "call_id": self.call_id,
                    "output": self.output}
        return None


def _content_text(content: Any) -> str:
    parts: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                value = part.get("text") or part.get("transcript")
                if isinstance(value, str):
                    parts.append(value)
    return " ".join(parts)


def _cut_text(text: str, fraction: float) -> str:
    """The first `fraction` of `text`, cut back to a word boundary."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    cut = int(len(text) * fraction)
    head = text[:cut]
    if cut < len(text) and not text[cut].isspace() and " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip()


# -- server events ----------------------------------------------------------------------------


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, (int, float)):
        return int(value)
    return default


_SILENT = frozenset(
    {
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.function_call_arguments.delta",
        "conversation.item.truncated",
    }
)


class OpenAIEventTranslator:
    """Server JSON dicts in, our events out; keeps the state a session needs.

    - `response_active` / `response_id`: the response in progress, if any.
    - `current_item_id` and `generated_ms(item_id)`: the latest assistant audio item and how much
      audio the model produced for it (the upper bound of a truncate).
    - `entries` / `reinjection_items()`: the conversation so far as text, to carry over to a new
      connection (user speech only if input transcription is on).
    """

    def __init__(self, output_format: AudioFormat = PCMU_8K, *, max_entries: int = 200) -> None:
        self.output_format = output_format
        self.max_entries = max_entries
        self.session_id: str | None = None
        self.response_id: str | None = None
        self.response_active = False
        self.current_item_id: str | None = None
        self._generated_bytes: dict[str, int] = {}
        self.entries: OrderedDict[str, TranscriptEntry] = OrderedDict()
        self.unknown_events = 0

    # -- state queries ----------------------------------------------------------------------

    def generated_ms(self, item_id: str | None = None) -> float:
        item = item_id or self.current_item_id
        if item is None:
            return 0.0
        return self.output_format.duration_ms(self._generated_bytes.get(item, 0))

    def reinjection_items(self) -> list[dict[str, Any]]:
        """`conversation.item.create` items for the conversation so far, oldest first.

        A function_call_output whose call was dropped from the record is left out too (the
        server refuses an output for an unknown call).
        """
        items: list[dict[str, Any]] = []
        calls: set[str] = set()
        for entry in self.entries.values():
            item = entry.as_item()
            if item is None:
                continue
            if entry.kind == "function_call":
                calls.add(entry.call_id)
            elif entry.kind == "function_call_output" and entry.call_id not in calls:
                continue
            items.append(item)
        return items

    def reset_connection(self) -> None:
        """A new connection: nothing is in progress there; the record carries over."""
        self.response_active = False
        self.response_id = None
        self.current_item_id = None
        self._generated_bytes.clear()

    # -- recording ----------------------------------------------------------------------------

    def _entry(self, item_id: str, kind: str) -> TranscriptEntry:
        entry = self.entries.get(item_id)
        if entry is None:
            entry = TranscriptEntry(item_id, kind)
            self.entries[item_id] = entry
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        return entry

    def record_item(self, item: Any) -> None:
        """Record a conversation item (one we create, or one the server reports)."""
        if not isinstance(item, dict):
            return
        item_id = _str(item.get("id"))
        if not item_id:
            return
        kind = item.get("type")
        if kind == "message":
            role = _str(item.get("role"))
            if role not in ("user", "assistant", "system"):
                return
            entry = self._entry(item_id, role)
            text = _content_text(item.get("content"))
            if text and not entry.text:
                entry.text = text
        elif kind == "function_call":
            entry = self._entry(item_id, "function_call")
            entry.call_id = _str(item.get("call_id"), entry.call_id)
            entry.name = _str(item.get("name"), entry.name)
            if item.get("arguments"):
                entry.arguments = _str(item.get("arguments"), entry.arguments)
        elif kind == "function_call_output":
            entry = self._entry(item_id, "function_call_output")
            entry.call_id = _str(item.get("call_id"), entry.call_id)
            entry.output = _str(item.get("output"), entry.output)

    def record_truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The caller heard only `audio_end_ms` of the item: keep that share of its transcript."""
        generated = self.generated_ms(item_id)
        entry = self.entries.get(item_id)
        if entry is not None and entry.text and generated > 0:
            entry.text = _cut_text(entry.text, audio_end_ms / generated)
        if item_id == self.current_item_id:
            self.current_item_id = None

    # -- translation --------------------------------------------------------------------------

    def translate(self, msg: Any) -> list[ServerEvent]:
        """Our events for one server message (possibly none). Never raises."""
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.unknown_events += 1
            return [UnknownEvent(msg if isinstance(msg, dict) else {"value": msg})]
        try:
            return self._translate(msg)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("malformed %s event from OpenAI: %s", msg.get("type"), type(exc).__name__)
            self.unknown_events += 1
            return [UnknownEvent(msg)]

    def _translate(self, msg: dict[str, Any]) -> list[ServerEvent]:
        kind: str = msg["type"]

        if kind in ("response.output_audio.delta", "response.audio.delta"):
            item_id = _str(msg.get("item_id"))
            try:
                # binascii itself: `base64.b64decode(validate=True)` adds a Python call and a regex
                # match for each delta (25-50 a call-second); strict mode refuses what that refused
                data = binascii.a2b_base64(_str(msg.get("delta")), strict_mode=True)
            except (binascii.Error, ValueError):
                return [ErrorEvent("undecodable audio delta from OpenAI", "bad_audio_delta", False, msg)]
            self._generated_bytes[item_id] = self._generated_bytes.get(item_id, 0) + len(data)
            if self.current_item_id != item_id:
                self.current_item_id = item_id
            return [AudioDelta(item_id, data, self.output_format, _int(msg.get("content_index")),
                               _opt_str(msg.get("response_id")))]
        if kind in ("response.output_audio_transcript.delta", "response.audio_transcript.delta"):
            return [OutputTranscriptDelta(_str(msg.get("item_id")), _str(msg.get("delta")))]
        if kind == "session.created":
            session = msg.get("session") or {}
            self.session_id = _str(session.get("id")) or self.session_id
            return [SessionCreated(self.session_id or "", msg)]
        if kind == "session.updated":
            return [SessionUpdated(msg)]
        if kind == "error":
            err = msg.get("error")
            err = err if isinstance(err, dict) else {}
            code = err.get("code")
            return [ErrorEvent(_str(err.get("message"), "error from OpenAI"),
                               code if isinstance(code, (str, int)) else None, False, msg)]
        if kind == "input_audio_buffer.speech_started":
            return [SpeechStarted(_int(msg.get("audio_start_ms")), _opt_str(msg.get("item_id")))]
        if kind == "input_audio_buffer.speech_stopped":
            return [SpeechStopped(_int(msg.get("audio_end_ms")), _opt_str(msg.get("item_id")))]
        if kind == "input_audio_buffer.committed":
            return [AudioCommitted(_opt_str(msg.get("item_id")), _opt_str(msg.get("previous_item_id")))]
        if kind == "input_audio_buffer.cleared":
            return [AudioCleared()]
        if kind in ("conversation.item.added", "conversation.item.created", "conversation.item.done"):
            self.record_item(msg.get("item"))
            return []
        if kind == "conversation.item.input_audio_transcription.delta":
            return [InputTranscriptDelta(_opt_str(msg.get("item_id")), _str(msg.get("delta")))]
        if kind == "conversation.item.input_audio_transcription.completed":
            user_item = _opt_str(msg.get("item_id"))
            transcript = _str(msg.get("transcript"))
            if user_item:
                self._entry(user_item, "user").text = transcript
            return [InputTranscriptCompleted(user_item, transcript)]
        if kind == "conversation.item.input_audio_transcription.failed":
            error = msg.get("error")
            failure: dict[str, Any] = error if isinstance(error, dict) else {}
            return [ErrorEvent(_str(failure.get("message"), "input transcription failed"),
                               "input_transcription_failed", False, msg)]
        if kind == "conversation.item.deleted":
            item_id = _str(msg.get("item_id"))
            self.entries.pop(item_id, None)
            return [UnknownEvent(msg)]
        if kind == "response.created":
            response = msg.get("response") or {}
            self.response_id = _str(response.get("id")) or None
            self.response_active = True
            return [ResponseCreated(self.response_id or "")]
        if kind == "response.output_item.added":
            item = msg.get("item") or {}
            self.record_item(item)
            if item.get("type") == "message" and item.get("role") == "assistant" and item.get("id"):
                self.current_item_id = item["id"]
                self._generated_bytes.setdefault(item["id"], 0)
            return []
        if kind in ("response.output_audio.done", "response.audio.done"):
            return [AudioDone(_str(msg.get("item_id")), _opt_str(msg.get("response_id")))]
        if kind in ("response.output_audio_transcript.done", "response.audio_transcript.done"):
            item_id = _str(msg.get("item_id"))
            transcript = _str(msg.get("transcript"))
            if item_id:
                self._entry(item_id, "assistant").text = transcript
            return [OutputTranscriptDone(item_id, transcript)]
        if kind in ("response.output_text.delta", "response.text.delta"):
            return [TextDelta(_str(msg.get("item_id")), _str(msg.get("delta")))]
        if kind in ("response.output_text.done", "response.text.done"):
            item_id = _str(msg.get("item_id"))
            text = _str(msg.get("text"))
            if item_id:
                self._entry(item_id, "assistant").text = text
            return [TextDone(item_id, text)]
        if kind == "response.function_call_arguments.done":
            call_item = _opt_str(msg.get("item_id"))
            call_id = _str(msg.get("call_id"))
            name = _str(msg.get("name"))
            arguments = _str(msg.get("arguments"), "{}")
            if call_item:
                entry = self._entry(call_item, "function_call")
                entry.call_id, entry.arguments = call_id, arguments
                entry.name = name or entry.name
            return [FunctionCallDone(call_id, name or (self.entries[call_item].name if call_item else ""),
                                     arguments, call_item, _opt_str(msg.get("response_id")))]
        if kind == "response.done":
            done = self._response_done(msg)
            if done.status in ("failed", "incomplete"):
                return [done, ResponseFailed(done.response_id, done.status, done.reason, self._failure_message(msg))]
            return [done]
        if kind in _SILENT:
            return []
        self.unknown_events += 1
        return [UnknownEvent(msg)]

    @staticmethod
    def _failure_message(msg: dict[str, Any]) -> str:
        details = (msg.get("response") or {}).get("status_details")
        error = details.get("error") if isinstance(details, dict) else None
        if isinstance(error, dict):
            return _str(error.get("message")) or _str(error.get("type"))
        return ""

    def _response_done(self, msg: dict[str, Any]) -> ResponseDone:
        response = msg.get("response") or {}
        response_id = _str(response.get("id")) or (self.response_id or "")
        if response_id == self.response_id or not response_id:
            self.response_active = False
        status = _str(response.get("status"), "completed")
        details = response.get("status_details")
        reason = None
        if isinstance(details, dict):
            reason = _opt_str(details.get("reason")) or _opt_str((details.get("error") or {}).get("code")
                                                                 if isinstance(details.get("error"), dict) else None)
        for item in response.get("output") or ():
            self.record_item(item)
        usage = None
        raw_usage = response.get("usage")
        if isinstance(raw_usage, dict):
            usage = Usage(_int(raw_usage.get("input_tokens")), _int(raw_usage.get("output_tokens")),
                          _int(raw_usage.get("total_tokens")), raw_usage)
        return ResponseDone(response_id, status, reason, usage)
