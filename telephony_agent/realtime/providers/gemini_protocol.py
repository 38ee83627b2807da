"""Gemini Live (BidiGenerateContent) wire protocol, sans-I/O.

No sockets and no clocks here: `setup_message` and the `*_message` builders make client JSON
(camelCase, one top-level key each), and `GeminiEventTranslator` turns server messages (decoded
from binary or text frames) into our events while tracking turns, tool calls and the latest
session-resumption handle.

Gemini has no response objects, so the translator synthesises them: a model turn is a response
with id `turn-<n>` (also the item id of its audio), opened by `ResponseCreated` at its first
content and closed by `ResponseDone` at `turnComplete` (or right after a `toolCall`, with
reason `tool_calls`, because the runner answers tool calls per response).
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Iterable
from typing import Any

import orjson

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeConnectionError,
    RealtimeError,
    ServerError,
)
from telephony_agent.realtime.events import (
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCallDone,
    GoAway,
    InputTranscriptCompleted,
    InputTranscriptDelta,
    Interrupted,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ResumptionHandle,
    ServerEvent,
    SessionCreated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    ToolCallCancelled,
    UnknownEvent,
    Usage,
)
from telephony_agent.realtime.types import (
    PCM16_16K,
    PCM16_24K,
    AudioFormat,
    RealtimeConfig,
    ToolResponse,
    deep_merge,
)

log = logging.getLogger(__name__)

GEMINI_LIVE_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
DEFAULT_MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"
INPUT_FORMAT = PCM16_16K
OUTPUT_FORMAT = PCM16_24K
INPUT_MIME = "audio/pcm;rate=16000"

_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$")
_RATE = re.compile(r"rate=(\d+)")
_AUTH_WORDS = ("api key", "api_key", "unauthenticated", "permission", "credential", "unauthorized")

#: Close codes Gemini uses for errors (it has no JSON error message).
CLOSE_INVALID_ARGUMENT = 1007
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011


# -- client messages --------------------------------------------------------------------------


def model_name(model: str) -> str:
    """`setup.model` wants `models/<id>` (or a full Vertex resource name)."""
    if model.startswith(("models/", "projects/", "publishers/", "tunedModels/")):
        return model
    return f"models/{model}"


def validate_config(config: RealtimeConfig) -> None:
    """Refuse what Gemini Live cannot do, before a paid session opens."""
    if config.input_format is not None and config.input_format != INPUT_FORMAT:
        raise RealtimeConfigError(
            f"Gemini Live takes PCM16 16 kHz input, not {config.input_format.encoding.value} "
            f"at {config.input_format.sample_rate} Hz"
        )
    if config.output_format is not None and config.output_format != OUTPUT_FORMAT:
        raise RealtimeConfigError(
            f"Gemini Live produces PCM16 24 kHz output, not {config.output_format.encoding.value} "
            f"at {config.output_format.sample_rate} Hz"
        )
    for tool in config.tools:
        if not _TOOL_NAME.match(tool.name):
            raise RealtimeConfigError(f"invalid Gemini function name {tool.name!r}")
        if not isinstance(tool.parameters, dict):
            raise RealtimeConfigError(f"parameters of tool {tool.name!r} must be a JSON schema object")


def setup_message(config: RealtimeConfig, model: str, handle: str | None = None) -> dict[str, Any]:
    """The first (and only) `setup` message of a connection; `handle` resumes a session."""
    validate_config(config)
    modality = "AUDIO" if "audio" in config.modalities else "TEXT"
    generation: dict[str, Any] = {"responseModalities": [modality]}
    if config.voice:
        generation["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": config.voice}}}
    if config.temperature is not None:
        generation["temperature"] = config.temperature
    if config.max_output_tokens is not None:
        generation["maxOutputTokens"] = config.max_output_tokens
    setup: dict[str, Any] = {"model": model_name(model), "generationConfig": generation}
    if config.instructions:
        setup["systemInstruction"] = {"parts": [{"text": config.instructions}]}
    if config.tools and config.tool_choice != "none":
        setup["tools"] = [
            {
                "functionDeclarations": [
                    {"name": t.name, "description": t.description, "parametersJsonSchema": t.parameters}
                    for t in config.tools
                ]
            }
        ]
    td = config.turn_detection
    if td.manual:
        detection: dict[str, Any] = {"disabled": True}
    else:
        detection = {
            "disabled": False,
            "prefixPaddingMs": td.prefix_padding_ms,
            "silenceDurationMs": td.silence_duration_ms,
        }
    setup["realtimeInputConfig"] = {
        "automaticActivityDetection": detection,
        "activityHandling": "START_OF_ACTIVITY_INTERRUPTS" if td.interrupt_response else "NO_INTERRUPTION",
    }
    setup["inputAudioTranscription"] = {}
    setup["outputAudioTranscription"] = {}
    setup["sessionResumption"] = {"handle": handle} if handle else {}
    setup["contextWindowCompression"] = {"slidingWindow": {}}
    if config.extras:
        setup = deep_merge(setup, config.extras)
        setup["model"] = model_name(model)  # the model never changes within a session
    return {"setup": setup}


def audio_message(data: bytes) -> dict[str, Any]:
    return {"realtimeInput": {"audio": {"mimeType": INPUT_MIME, "data": binascii.b2a_base64(data, newline=False).decode("ascii")}}}


def text_message(text: str) -> dict[str, Any]:
    return {"realtimeInput": {"text": text}}


def activity_start_message() -> dict[str, Any]:
    return {"realtimeInput": {"activityStart": {}}}


def activity_end_message() -> dict[str, Any]:
    return {"realtimeInput": {"activityEnd": {}}}


def audio_stream_end_message() -> dict[str, Any]:
    return {"realtimeInput": {"audioStreamEnd": True}}


def _function_response(response: ToolResponse) -> dict[str, Any]:
    if not response.call_id:
        raise RealtimeError("a Gemini function response needs the call's id")
    output = response.output
    if isinstance(output, (str, bytes)):
        text = output.decode() if isinstance(output, bytes) else output
        try:
            output = orjson.loads(text)
        except orjson.JSONDecodeError:
            output = text
    if response.is_error:
        body: dict[str, Any] = {"error": output}
    else:
        body = {"output": output}
    item: dict[str, Any] = {"id": response.call_id, "response": body}
    if response.name:
        item["name"] = response.name
    return item


def tool_response_message(responses: ToolResponse | Iterable[ToolResponse]) -> dict[str, Any]:
    """One `toolResponse`; results go under `response.output`, errors under `response.error`."""
    items = [responses] if isinstance(responses, ToolResponse) else list(responses)
    return {"toolResponse": {"functionResponses": [_function_response(r) for r in items]}}


# -- server messages --------------------------------------------------------------------------


def parse_duration(value: Any) -> float:
    """A protobuf Duration as seconds: `"50s"`, `"9.5s"`, or `{"seconds": 5, "nanos": ...}`."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("s"):
            text = text[:-1]
        try:
            return float(text)
        except ValueError:
            return 0.0
    if isinstance(value, dict):
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return 0.0
    return 0.0


def decode_frame(frame: str | bytes | bytearray) -> dict[str, Any]:
    """A server frame (binary or text, UTF-8 JSON) as a dict; ValueError if it is not one."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"server frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("server frame is not a JSON object")
    return message


def close_error(code: int | None, reason: str, *, during_setup: bool = False) -> RealtimeError:
    """The error a Gemini close code stands for; its message names the server's reason."""
    reason = (reason or "").strip()
    what = reason or "no reason given"
    lowered = reason.lower()
    if code in (CLOSE_INVALID_ARGUMENT, CLOSE_POLICY) and any(w in lowered for w in _AUTH_WORDS):
        return RealtimeAuthError(f"Gemini refused the credentials (close {code}): {what}")
    if code == CLOSE_INVALID_ARGUMENT:
        return RealtimeConfigError(f"Gemini rejected the request as invalid (close 1007): {what}")
    if code == CLOSE_POLICY:
        return RealtimeConfigError(f"Gemini refused the request by policy or not found (close 1008): {what}")
    if code == CLOSE_INTERNAL:
        return ServerError(f"Gemini internal error (close 1011): {what}", code)
    stage = "during setup" if during_setup else "unexpectedly"
    return RealtimeConnectionError(f"Gemini closed the connection {stage} (close {code}): {what}")


def _usage(meta: dict[str, Any]) -> Usage:
    def num(key: str) -> int:
        value = meta.get(key, 0)
        return value if isinstance(value, int) else 0

    prompt = num("promptTokenCount")
    response = num("responseTokenCount") or num("candidatesTokenCount")
    total = num("totalTokenCount") or prompt + response
    return Usage(input_tokens=prompt, output_tokens=response, total_tokens=total, raw=meta)


_FAILED_TURN_REASONS = frozenset({"MALFORMED_FUNCTION_CALL", "RESPONSE_REJECTED"})


class GeminiEventTranslator:
    """Server messages in, our events out; tracks turns, pending tool calls and resumption.

    `discard(turn_id)` makes the translator drop the rest of that turn's audio (after a local
    `interrupt()`); a server `interrupted` does the same for the turn it cuts.
    """

    def __init__(self, session_id: str = "gemini") -> None:
        self.session_id = session_id
        self.latest_handle: str | None = None
        self.handle_updates = 0
        self.pending_tool_ids: set[str] = set()
        self._turn_seq = 0
        self._turn: str | None = None  # the model turn in progress
        self._last_turn: str | None = None
        self._turn_ended_by_tools = False
        self._interrupted: str | None = None  # turn cut by the server, until its turnComplete
        self._interrupt_pending = False
        self._discarded: set[str] = set()
        self._text: list[str] = []
        self._transcript: list[str] = []
        self._input_seq = 0
        self._input_text: list[str] = []
        self._call_seq = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def current_turn(self) -> str | None:
        return self._turn

    @property
    def idle(self) -> bool:
        """No model turn in progress and no tool call waiting for its result."""
        return self._turn is None and not self.pending_tool_ids and not self._interrupt_pending

    def discard(self, turn_id: str | None) -> None:
        if turn_id is not None:
            self._discarded.add(turn_id)
            if len(self._discarded) > 16:
                self._discarded = {t for t in self._discarded if t == self._turn or t == turn_id}

    def is_discarded(self, turn_id: str | None) -> bool:
        return turn_id is not None and turn_id in self._discarded

    def tool_answered(self, call_id: str) -> None:
        self.pending_tool_ids.discard(call_id)

    def abort_turn(self, reason: str) -> list[ServerEvent]:
        """Close what the old connection left open (its turn never completes); used on a switch."""
        events: list[ServerEvent] = []
        self.pending_tool_ids.clear()
        self._interrupt_pending = False
        if self._turn is not None:
            events.extend(self._end_turn("incomplete", reason, None))
        self._interrupted = None
        self._turn_ended_by_tools = False
        return events

    # -- translation ----------------------------------------------------------------------

    def feed(self, frame: str | bytes | bytearray) -> list[ServerEvent]:
        """Decode one frame and translate it; a bad frame becomes a non-fatal `ErrorEvent`."""
        try:
            message = decode_frame(frame)
        except ValueError as exc:
            return [ErrorEvent(str(exc), code="invalid_message")]
        return self.translate(message)

    def translate(self, message: dict[str, Any]) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        known = False
        if "setupComplete" in message:
            known = True
            body = message.get("setupComplete") or {}
            sid = body.get("sessionId") if isinstance(body, dict) else None
            events.append(SessionCreated(str(sid or self.session_id), raw=message))
        content = message.get("serverContent")
        usage_meta = message.get("usageMetadata")
        usage = _usage(usage_meta) if isinstance(usage_meta, dict) else None
        if isinstance(content, dict):
            known = True
            events.extend(self._server_content(content, usage))
        elif usage is not None:
            known = True
            events.append(usage)
        if "toolCall" in message:
            known = True
            events.extend(self._tool_call(message.get("toolCall")))
        if "toolCallCancellation" in message:
            known = True
            body = message.get("toolCallCancellation") or {}
            ids = tuple(str(i) for i in (body.get("ids") or []) if isinstance(i, (str, int)))
            for call_id in ids:
                self.pending_tool_ids.discard(call_id)
            events.append(ToolCallCancelled(ids))
        if "goAway" in message:
            known = True
            body = message.get("goAway") or {}
            events.append(GoAway(parse_duration(body.get("timeLeft", 0) if isinstance(body, dict) else 0)))
        if "sessionResumptionUpdate" in message:
            known = True
            body = message.get("sessionResumptionUpdate") or {}
            handle = str(body.get("newHandle") or "") if isinstance(body, dict) else ""
            resumable = bool(body.get("resumable", bool(handle))) if isinstance(body, dict) else False
            if handle:
                self.latest_handle = handle
                self.handle_updates += 1
            events.append(ResumptionHandle(handle, resumable and bool(handle)))
        if "voiceActivity" in message:
            known = True
            body = message.get("voiceActivity") or {}
            kind = body.get("voiceActivityType") if isinstance(body, dict) else None
            offset_ms = int(parse_duration(body.get("audioOffset", 0)) * 1000) if isinstance(body, dict) else 0
            if kind == "ACTIVITY_START":
                events.append(SpeechStarted(offset_ms))
            elif kind == "ACTIVITY_END":
                events.append(SpeechStopped(offset_ms))
            else:
                events.append(UnknownEvent(message))
        if not known:
            events.append(UnknownEvent(message))
        return events

    def _begin_turn(self, events: list[ServerEvent]) -> str:
        if self._turn is None:
            self._turn_seq += 1
            self._turn = f"turn-{self._turn_seq}"
            self._turn_ended_by_tools = False
            self._text = []
            self._transcript = []
            events.append(ResponseCreated(self._turn))
        return self._turn

    def _end_turn(self, status: str, reason: str | None, usage: Usage | None) -> list[ServerEvent]:
        turn = self._turn
        assert turn is not None
        events: list[ServerEvent] = []
        if self._text:
            events.append(TextDone(turn, "".join(self._text)))
        if self._transcript:
            events.append(OutputTranscriptDone(turn, "".join(self._transcript)))
        events.append(ResponseDone(turn, status=status, reason=reason, usage=usage))
        self._last_turn = turn
        self._turn = None
        self._text = []
        self._transcript = []
        self._discarded.discard(turn)
        return events

    def _server_content(self, content: dict[str, Any], usage: Usage | None) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        recognised = False
        model_turn = content.get("modelTurn")
        if isinstance(model_turn, dict):
            recognised = True
            for part in model_turn.get("parts") or []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                inline = part.get("inlineData")
                if isinstance(inline, dict):
                    events.extend(self._audio(inline))
                elif isinstance(part.get("text"), str) and part["text"]:
                    turn = self._begin_turn(events)
                    self._text.append(part["text"])
                    events.append(TextDelta(turn, part["text"]))
        output = content.get("outputTranscription")
        if isinstance(output, dict):
            recognised = True
            text = output.get("text")
            if isinstance(text, str) and text:
                turn = self._turn or self._interrupted or self._begin_turn(events)
                if turn == self._turn:
                    self._transcript.append(text)
                events.append(OutputTranscriptDelta(turn, text))
        for key in ("inputTranscription", "interimInputTranscription"):
            transcription = content.get(key)
            if isinstance(transcription, dict):
                recognised = True
                events.extend(self._input_transcription(transcription, final_allowed=key == "inputTranscription"))
        if content.get("interrupted"):
            recognised = True
            cut = self._turn
            events.append(Interrupted(item_id=cut))
            self._interrupt_pending = True
            self._interrupted = cut
            if cut is not None:
                self._discarded.add(cut)
        if content.get("generationComplete"):
            recognised = True
            if self._turn is not None and self._interrupted != self._turn:
                events.append(AudioDone(self._turn, response_id=self._turn))
        if content.get("turnComplete"):
            recognised = True
            reason = content.get("turnCompleteReason")
            # the turn ended without an answer: an unusable function call or a rejected response
            failure = reason.lower() if isinstance(reason, str) and reason in _FAILED_TURN_REASONS else None
            if self._input_text:
                events.append(self._input_done())
            if usage is not None:
                events.append(usage)
            if self._interrupt_pending:
                if self._turn is None:
                    parked = self._last_turn if self._turn_ended_by_tools else None
                    self._turn = self._interrupted or parked or self._begin_turn(events)
                events.extend(self._end_turn("cancelled", "turn_detected", usage))
                self._interrupt_pending = False
                self._interrupted = None
            elif failure is not None:
                turn = self._turn or self._begin_turn(events)
                self._turn_ended_by_tools = False
                events.extend(self._end_turn("failed", failure, usage))
                events.append(ResponseFailed(turn, "failed", failure, f"turnCompleteReason {failure.upper()}"))
            elif self._turn is not None:
                events.extend(self._end_turn("completed", None, usage))
            elif self._turn_ended_by_tools:
                self._turn_ended_by_tools = False  # the toolCall already closed this response
            else:
                self._begin_turn(events)  # an empty turn: the model chose not to speak
                events.extend(self._end_turn("completed", None, usage))
        elif usage is not None:
            events.append(usage)
        if not recognised and not any(k in content for k in ("turnCompleteReason", "waitingForInput")):
            events.append(UnknownEvent({"serverContent": content}))
        return events

    def _audio(self, inline: dict[str, Any]) -> list[ServerEvent]:
        mime = str(inline.get("mimeType") or "audio/pcm;rate=24000")
        if not mime.startswith("audio/pcm"):
            return [UnknownEvent({"inlineData": {"mimeType": mime}})]
        try:
            # binascii itself, as for OpenAI's deltas: strict mode refuses what `validate=True` did
            data = binascii.a2b_base64(inline.get("data") or "", strict_mode=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            return [ErrorEvent(f"invalid base64 audio from Gemini: {exc}", code="invalid_audio")]
        events: list[ServerEvent] = []
        turn = self._turn
        if turn is not None and (turn in self._discarded or turn == self._interrupted):
            return events  # the rest of an interrupted turn
        if turn is None and self._interrupt_pending:
            return events  # stragglers between `interrupted` and `turnComplete`
        turn = self._begin_turn(events)
        match = _RATE.search(mime)
        rate = int(match.group(1)) if match else 24000
        fmt = OUTPUT_FORMAT if rate == 24000 else AudioFormat.pcm16(rate)
        if data:
            events.append(AudioDelta(turn, data, fmt, response_id=turn))
        return events

    def _input_transcription(self, body: dict[str, Any], final_allowed: bool) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        text = body.get("text")
        if not self._input_text and isinstance(text, str) and text:
            self._input_seq += 1
        item = f"input-{self._input_seq}" if self._input_seq else None
        if isinstance(text, str) and text:
            self._input_text.append(text)
            events.append(InputTranscriptDelta(item, text))
        if final_allowed and body.get("finished") and self._input_text:
            events.append(self._input_done())
        return events

    def _input_done(self) -> InputTranscriptCompleted:
        transcript = "".join(self._input_text)
        self._input_text = []
        return InputTranscriptCompleted(f"input-{self._input_seq}", transcript)

    def _tool_call(self, body: Any) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        calls = body.get("functionCalls") if isinstance(body, dict) else None
        if not isinstance(calls, list) or not calls:
            return [UnknownEvent({"toolCall": body})]
        turn = self._begin_turn(events)
        for call in calls:
            if not isinstance(call, dict):
                continue
            call_id = call.get("id")
            if not call_id:
                self._call_seq += 1
                call_id = f"{turn}-call-{self._call_seq}"
            args = call.get("args")
            if args is None:
                args = {}
            self.pending_tool_ids.add(str(call_id))
            events.append(
                FunctionCallDone(
                    call_id=str(call_id),
                    name=str(call.get("name") or ""),
                    arguments=orjson.dumps(args).decode(),
                    item_id=turn,
                    response_id=turn,
                )
            )
        events.extend(self._end_turn("completed", "tool_calls", None))
        self._turn_ended_by_tools = True
        return events
