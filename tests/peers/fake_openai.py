"""A fake OpenAI Realtime (GA) server on 127.0.0.1 that speaks the wire protocol (docs/protocols.md, "OpenAI Realtime").

Scripting:
- `server.replies`: a deque of `Reply(text, pcm16_8k)` used by the next audio responses (the
  audio is converted to the session's output format); `default_reply` when it is empty.
- `server.queue_reply(text, pcm16_8k, then_calls=[("end_call", {})])`: speech, then calls, one response.
- `server.queue_function_calls([("name", {"arg": 1}), ...])`: the next response emits these
  function calls (one response, several calls) instead of audio, then waits for outputs and a
  `response.create` like the real API.
- `await server.expire()`: `error` `session_expired` then close 1001 (the 60-minute limit).
  `await server.drop()`: abort the TCP connection (no close frame).
- `chunk_ms` / `chunk_interval`: audio per delta and the pause between deltas (faster than real time).
- Misbehaving (issue: dead air): `fail_responses = N` ends the next N responses `failed`
  (`failure_status="incomplete"` for `incomplete`) with no output; `stall_responses = N` leaves
  the next N responses open and silent (`response.created`, then nothing until cancelled);
  `tool_loop = "name"` makes every response call that tool again, without end;
  `near_silent_pcm(ms)` is audio for a reply that "speaks" near-silence.
- `user_transcripts`: transcripts for committed user audio (when transcription is on).

Records: `received` (every client message), `connections[i].received`, `.session`, `.truncates`,
`.conversation`, `.headers`; `errors_sent`; `beta_rejections`; `auth_failures`.
Every client message is validated against the `openai` SDK's `RealtimeClientEvent` models; a
failure is recorded in `peers.conformance` (which fails the test).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import itertools
import json
import math
import secrets
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
from aiohttp import WSMsgType, web

from peers import conformance

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# -- SDK conformance --------------------------------------------------------------------------


def _client_event_models() -> dict[str, type[pydantic.BaseModel]]:
    import typing

    from openai.types.realtime import realtime_client_event

    union = realtime_client_event.RealtimeClientEvent
    args = typing.get_args(union)
    members = typing.get_args(args[0]) if args and typing.get_origin(args[0]) is typing.Union else args
    models: dict[str, type[pydantic.BaseModel]] = {}
    for model in members:
        literal = model.model_fields["type"].annotation
        for value in typing.get_args(literal):
            models[value] = model
    return models


_MODELS = _client_event_models()


def validate_client_event(msg: Any) -> str | None:
    """None if the SDK's client-event types accept `msg`, else the error."""
    if not isinstance(msg, dict):
        return "not a JSON object"
    model = _MODELS.get(msg.get("type"))  # type: ignore[arg-type]
    if model is None:
        return f"unknown client event type {msg.get('type')!r}"
    try:
        model.model_validate(msg)
    except pydantic.ValidationError as exc:
        return str(exc)
    return None


# -- audio ------------------------------------------------------------------------------------


def _ids(prefix: str) -> Callable[[], str]:
    return lambda: f"{prefix}_{secrets.token_hex(8)}"


new_event_id, new_item_id, new_response_id, new_call_id = (_ids(p) for p in ("event", "item", "resp", "call"))


def tone_pcm16(ms: int = 1000, rate: int = 8000, freq: float = 440.0, amp: int = 8000) -> bytes:
    n = rate * ms // 1000
    t = np.arange(n) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def near_silent_pcm(ms: int = 2000, rate: int = 8000) -> bytes:
    """Audio a broken model might stream instead of speech: +-3 LSB of noise (about -80 dBFS)."""
    return np.random.default_rng(5).integers(-3, 4, rate * ms // 1000).astype("<i2").tobytes()


def encode_output(pcm16_8k: bytes, fmt: dict[str, Any]) -> bytes:
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return audioop.lin2ulaw(pcm16_8k, 2)
    if kind == "audio/pcma":
        return audioop.lin2alaw(pcm16_8k, 2)
    x = np.frombuffer(pcm16_8k, "<i2").astype(np.float64)
    if len(x) == 0:
        return b""
    t_in = np.arange(len(x))
    t_out = np.arange(len(x) * 3) / 3.0
    return np.clip(np.interp(t_out, t_in, x), -32768, 32767).astype("<i2").tobytes()


def decode_input(data: bytes, fmt: dict[str, Any]) -> tuple[np.ndarray, int]:
    """PCM16 samples and their rate."""
    kind = fmt.get("type")
    if kind == "audio/pcmu":
        return np.frombuffer(audioop.ulaw2lin(data, 2), "<i2"), 8000
    if kind == "audio/pcma":
        return np.frombuffer(audioop.alaw2lin(data, 2), "<i2"), 8000
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2"), 24000


def bytes_per_ms(fmt: dict[str, Any]) -> int:
    return 48 if fmt.get("type") == "audio/pcm" else 8


@dataclass
class Reply:
    text: str
    pcm16_8k: bytes | None = None  # None: a tone as long as the text roughly takes to say
    then_calls: list[tuple[str, Any]] | None = None  # function calls after the audio, same response


def default_session() -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": "sess_" + secrets.token_hex(8),
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "Your knowledge cutoff is 2023-10. You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": 0,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                   "silence_duration_ms": 200, "idle_timeout_ms": None,
                                   "create_response": True, "interrupt_response": True},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
    }


_SESSION_KEYS = {"type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
                 "max_output_tokens", "truncation", "tracing", "include", "prompt", "reasoning",
                 "parallel_tool_calls"}
_FORMAT_TYPES = {"audio/pcm", "audio/pcmu", "audio/pcma"}


class InvalidRequest(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("format", "turn_detection"):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


# -- one connection ---------------------------------------------------------------------------


@dataclass
class ActiveResponse:
    id: str
    task: asyncio.Task[None] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    cancel_reason: str | None = None


class FakeConnection:
    def __init__(self, server: FakeOpenAIServer, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.server = server
        self.ws = ws
        self.request = request
        self.headers = dict(request.headers)
        self.session = default_session()
        self.received: list[dict[str, Any]] = []
        self.truncates: list[dict[str, Any]] = []
        self.conversation: list[dict[str, Any]] = []
        self.generated_bytes: dict[str, int] = {}
        self.response: ActiveResponse | None = None
        self.responses: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        # input buffer / VAD
        self.audio_ms = 0.0  # all audio appended this session
        self.buffer_bytes = 0  # since the last commit/clear
        self._samples = np.zeros(0, dtype=np.int16)
        self._in_speech = False
        self._speech_item: str | None = None
        self._silence_ms = 0.0
        self._voiced_ms = 0.0
        self._speech_start_ms = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- output -----------------------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed or self.ws.closed:
            return
        event = {"event_id": new_event_id(), **event}
        self.sent.append(event)
        try:
            await self.ws.send_str(json.dumps(event))
        except (ConnectionResetError, RuntimeError):
            self.closed = True

    async def error(self, code: str | None, message: str, *, param: str | None = None,
                    event_id: str | None = None, type_: str = "invalid_request_error") -> None:
        err = {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}
        self.server.errors_sent.append(err)
        await self.send({"type": "error", "error": err})

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- input ------------------------------------------------------------------------------

    async def handle(self, msg: Any) -> None:
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            await self.error("invalid_value", "Invalid event: missing 'type'.")
            return
        kind = msg["type"]
        eid = msg.get("event_id")
        handler = getattr(self, "on_" + kind.replace(".", "_"), None)
        if handler is None:
            await self.error("invalid_value", f"Invalid value: '{kind}'. Supported values are: ...",
                             param="type", event_id=eid)
            return
        try:
            await handler(msg)
        except InvalidRequest as exc:
            await self.error(exc.code, exc.message, param=exc.param, event_id=eid)

    async def on_session_update(self, msg: dict[str, Any]) -> None:
        session = msg.get("session")
        if not isinstance(session, dict):
            raise InvalidRequest("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        if "type" not in session:
            raise InvalidRequest("missing_required_parameter", "Missing required parameter: 'session.type'.",
                                 "session.type")
        if session["type"] != "realtime":
            raise InvalidRequest("invalid_value", "Invalid value for 'session.type'.", "session.type")
        for key in session:
            if key not in _SESSION_KEYS:
                raise InvalidRequest("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")
        audio = session.get("audio") or {}
        for side in ("input", "output"):
            sub = audio.get(side) or {}
            if "format" in sub:
                fmt = sub["format"]
                param = f"session.audio.{side}.format"
                if not isinstance(fmt, dict):
                    raise InvalidRequest("invalid_type", f"Invalid type for '{param}': expected an object, "
                                         f"but got a {type(fmt).__name__} instead.", param)
                if fmt.get("type") not in _FORMAT_TYPES or (fmt.get("type") == "audio/pcm"
                                                           and fmt.get("rate", 24000) != 24000):
                    raise InvalidRequest("invalid_value", f"Invalid value for '{param}'.", param)
        if "model" in session and session["model"] != self.session["model"]:
            raise InvalidRequest("invalid_value", "Cannot update a session's model.", "session.model")
        voice = (audio.get("output") or {}).get("voice")
        if voice is not None and voice != self.session["audio"]["output"]["voice"] and self.generated_bytes:
            raise InvalidRequest("cannot_update_voice",
                                 "Cannot update a conversation's voice if assistant audio is present.",
                                 "session.audio.output.voice")
        _merge(self.session, session)
        await self.send({"type": "session.updated", "session": copy.deepcopy(self.session)})

    async def on_input_audio_buffer_append(self, msg: dict[str, Any]) -> None:
        try:
            data = base64.b64decode(msg.get("audio") or "", validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("invalid_value", "Invalid base64 audio.", "audio") from None
        fmt = self.session["audio"]["input"]["format"]
        self.buffer_bytes += len(data)
        samples, rate = decode_input(data, fmt)
        await self._vad(samples, rate)

    async def _vad(self, samples: np.ndarray, rate: int) -> None:
        td = self.session["audio"]["input"].get("turn_detection")
        frame = rate // 100  # 10 ms
        self._samples = np.concatenate([self._samples, samples])
        while len(self._samples) >= frame:
            chunk, self._samples = self._samples[:frame], self._samples[frame:]
            start_ms = self.audio_ms
            self.audio_ms += 10.0
            if not td:
                continue
            rms = float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)))
            voiced = rms >= self.server.vad_rms
            if not self._in_speech:
                if voiced:
                    self._voiced_ms += 10.0
                    if self._voiced_ms >= self.server.vad_onset_ms:
                        onset = start_ms - self._voiced_ms + 10.0
                        await self._speech_started(max(0, int(onset - td.get("prefix_padding_ms", 300))), td)
                else:
                    self._voiced_ms = 0.0
            else:
                self._silence_ms = 0.0 if voiced else self._silence_ms + 10.0
                if self._silence_ms >= td.get("silence_duration_ms", 500):
                    await self._speech_stopped(int(self.audio_ms - self._silence_ms), td)

    async def _speech_started(self, audio_start_ms: int, td: dict[str, Any]) -> None:
        self._in_speech = True
        self._silence_ms = 0.0
        self._speech_item = new_item_id()
        self.server.speech_starts += 1
        await self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": audio_start_ms,
                         "item_id": self._speech_item})
        if td.get("interrupt_response", True) and self.response is not None:
            await self.cancel_response("turn_detected")

    async def _speech_stopped(self, audio_end_ms: int, td: dict[str, Any]) -> None:
        self._in_speech = False
        self._voiced_ms = 0.0
        item_id = self._speech_item or new_item_id()
        self._speech_item = None
        await self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": audio_end_ms,
                         "item_id": item_id})
        await self._commit(item_id)
        if td.get("create_response", True):
            await self.start_response()

    async def _commit(self, item_id: str) -> None:
        previous = self.conversation[-1]["id"] if self.conversation else None
        self.buffer_bytes = 0
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": previous})
        item = {"id": item_id, "type": "message", "object": "realtime.item", "status": "completed",
                "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        await self._add_item(item, previous)
        if self.session["audio"]["input"].get("transcription"):
            transcript = self.server.user_transcripts.popleft() if self.server.user_transcripts else "(speech)"
            item["content"][0]["transcript"] = transcript
            await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                             "content_index": 0, "transcript": transcript,
                             "usage": {"type": "duration", "seconds": 1}})

    async def _add_item(self, item: dict[str, Any], previous: str | None) -> None:
        self.conversation.append(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": item})

    async def on_input_audio_buffer_commit(self, msg: dict[str, Any]) -> None:
        if self.buffer_bytes < bytes_per_ms(self.session["audio"]["input"]["format"]) * 100:
            raise InvalidRequest("input_audio_buffer_commit_empty",
                                 "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                                 "of audio, but buffer only has 0.00ms of audio.")
        await self._commit(self._speech_item or new_item_id())
        self._in_speech = False
        self._speech_item = None

    async def on_input_audio_buffer_clear(self, msg: dict[str, Any]) -> None:
        self.buffer_bytes = 0
        self._in_speech = False
        self._voiced_ms = 0.0
        await self.send({"type": "input_audio_buffer.cleared"})

    async def on_conversation_item_create(self, msg: dict[str, Any]) -> None:
        item = msg.get("item")
        if not isinstance(item, dict):
            raise InvalidRequest("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        item = copy.deepcopy(item)
        item_id = item.get("id") or new_item_id()
        if any(i["id"] == item_id for i in self.conversation):
            raise InvalidRequest("invalid_value", f"Item with id '{item_id}' already exists.", "item.id")
        if item.get("type") == "function_call_output":
            calls = {i.get("call_id") for i in self.conversation if i.get("type") == "function_call"}
            if item.get("call_id") not in calls:
                raise InvalidRequest("invalid_value", f"Tool call ID '{item.get('call_id')}' not found in "
                                     "conversation.", "item.call_id")
        if item.get("type") == "message" and item.get("role") == "assistant":
            for part in item.get("content") or []:
                if part.get("type") != "output_text":
                    raise InvalidRequest("invalid_value", "Assistant content must be output_text.", "item.content")
        item["id"] = item_id
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        previous = msg.get("previous_item_id") or (self.conversation[-1]["id"] if self.conversation else None)
        await self._add_item(item, previous)

    async def on_conversation_item_truncate(self, msg: dict[str, Any]) -> None:
        item_id = msg.get("item_id")
        item = next((i for i in self.conversation if i["id"] == item_id), None)
        if item is None:
            raise InvalidRequest("invalid_value", f"Item with item_id '{item_id}' not found.", "item_id")
        generated_ms = self.generated_bytes.get(item_id, 0) / bytes_per_ms(self.session["audio"]["output"]["format"])
        end = msg.get("audio_end_ms")
        if not isinstance(end, int) or end < 0 or end > generated_ms:
            raise InvalidRequest("invalid_value", f"Audio content of {generated_ms:.0f}ms is already shorter than "
                                 f"{end}ms", "audio_end_ms")
        record = {"item_id": item_id, "audio_end_ms": end, "generated_ms": generated_ms}
        self.truncates.append(record)
        self.server.truncates.append(record)
        await self.send({"type": "conversation.item.truncated", "item_id": item_id,
                         "content_index": msg.get("content_index", 0), "audio_end_ms": end})

    async def on_conversation_item_delete(self, msg: dict[str, Any]) -> None:
        self.conversation = [i for i in self.conversation if i["id"] != msg.get("item_id")]
        await self.send({"type": "conversation.item.deleted", "item_id": msg.get("item_id")})

    async def on_response_create(self, msg: dict[str, Any]) -> None:
        if self.response is not None:
            raise InvalidRequest("conversation_already_has_active_response",
                                 f"Conversation already has an active response in progress: {self.response.id}. "
                                 "Wait until the response is finished before creating a new one.")
        await self.start_response()

    async def on_response_cancel(self, msg: dict[str, Any]) -> None:
        if self.response is None:
            raise InvalidRequest("response_cancel_not_active", "Cancellation failed: no active response found")
        await self.cancel_response("client_cancelled")

    async def on_output_audio_buffer_clear(self, msg: dict[str, Any]) -> None:
        raise InvalidRequest("invalid_value", "output_audio_buffer.clear is only supported for WebRTC/SIP.")

    # -- responses --------------------------------------------------------------------------

    async def start_response(self) -> None:
        if self.response is not None:
            return
        resp = ActiveResponse(new_response_id())
        self.response = resp
        self.server.responses_started += 1
        await self.send({"type": "response.created", "response": self._response_obj(resp, "in_progress")})
        await self.send({"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.01},
            {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}]})
        server = self.server
        if server.fail_responses > 0:
            server.fail_responses -= 1
            server.failed_responses += 1
            resp.task = self.spawn(self._fail(resp))
            return
        if server.stall_responses > 0:
            server.stall_responses -= 1
            server.stalled_responses += 1
            return  # open and silent until cancelled
        calls = server.function_calls.popleft() if server.function_calls else None
        if calls is None and server.tool_loop:
            calls = [(server.tool_loop, {"attempt": server.responses_started})]
        resp.task = self.spawn(self._stream(resp, calls))

    async def _fail(self, resp: ActiveResponse) -> None:
        await asyncio.sleep(self.server.chunk_interval)
        if self.response is not resp:
            return
        self.response = None
        status = self.server.failure_status
        done = self._response_obj(resp, status)
        if status == "failed":
            done["status_details"] = {"type": "failed", "error": {
                "type": "server_error", "code": "server_error",
                "message": "The server had an error while processing your request."}}
        else:
            done["status_details"] = {"type": "incomplete", "reason": "max_output_tokens"}
        self.responses.append(done)
        await self.send({"type": "response.done", "response": done})

    def _response_obj(self, resp: ActiveResponse, status: str, reason: str | None = None) -> dict[str, Any]:
        out = {"id": resp.id, "object": "realtime.response", "status": status,
               "status_details": None if reason is None else {"type": status, "reason": reason},
               "output": resp.items, "conversation_id": "conv_fake",
               "output_modalities": self.session["output_modalities"],
               "audio": {"output": {"format": self.session["audio"]["output"]["format"],
                                    "voice": self.session["audio"]["output"]["voice"]}},
               "metadata": None, "usage": None}
        if status != "in_progress":
            out["usage"] = {"total_tokens": 150, "input_tokens": 100, "output_tokens": 50,
                            "input_token_details": {"text_tokens": 20, "audio_tokens": 80, "image_tokens": 0,
                                                    "cached_tokens": 0},
                            "output_token_details": {"text_tokens": 10, "audio_tokens": 40}}
        return out

    async def _stream(self, resp: ActiveResponse, calls: list[tuple[str, Any]] | None) -> None:
        try:
            if calls:
                await self._stream_calls(resp, calls)
            else:
                reply = await self._stream_reply(resp)
                if reply.then_calls:
                    await self._stream_calls(resp, reply.then_calls, first_index=1)
        except asyncio.CancelledError:
            return
        if self.response is resp:
            self.response = None
            done = self._response_obj(resp, "completed")
            self.responses.append(done)
            await self.send({"type": "response.done", "response": done})

    async def _stream_calls(self, resp: ActiveResponse, calls: list[tuple[str, Any]], first_index: int = 0) -> None:
        for index, (name, arguments) in enumerate(calls, start=first_index):
            args = arguments if isinstance(arguments, str) else json.dumps(arguments)
            item = {"id": new_item_id(), "type": "function_call", "object": "realtime.item", "status": "in_progress",
                    "name": name, "call_id": new_call_id(), "arguments": ""}
            resp.items.append(item)
            base = {"response_id": resp.id, "item_id": item["id"], "output_index": index}
            previous = self.conversation[-1]["id"] if self.conversation else None
            await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": index,
                             "item": dict(item)})
            self.conversation.append(item)
            await self.send({"type": "conversation.item.added", "previous_item_id": previous, "item": dict(item)})
            await self.send({"type": "response.function_call_arguments.delta", **base, "call_id": item["call_id"],
                             "delta": args})
            await asyncio.sleep(self.server.chunk_interval)
            item["arguments"], item["status"] = args, "completed"
            await self.send({"type": "response.function_call_arguments.done", **base, "call_id": item["call_id"],
                             "name": name, "arguments": args})
            await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index,
                             "item": dict(item)})
            await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": dict(item)})

    async def _stream_reply(self, resp: ActiveResponse) -> Reply:
        server = self.server
        reply = server.replies.popleft() if server.replies else server.default_reply
        pcm = reply.pcm16_8k if reply.pcm16_8k is not None else tone_pcm16(max(300, 60 * len(reply.text.split())))
        text_only = self.session["output_modalities"] == ["text"]
        out_fmt = self.session["audio"]["output"]["format"]
        item = {"id": new_item_id(), "type": "message", "object": "realtime.item", "status": "in_progress",
                "role": "assistant", "content": []}
        resp.items.append(item)
        previous = self.conversation[-1]["id"] if self.conversation else None
        base = {"response_id": resp.id, "item_id": item["id"], "output_index": 0, "content_index": 0}
        await self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                         "item": copy.deepcopy(item)})
        self.conversation.append(item)
        await self.send({"type": "conversation.item.added", "previous_item_id": previous,
                         "item": copy.deepcopy(item)})
        words = reply.text.split()
        if text_only:
            await self.send({"type": "response.content_part.added", **base, "part": {"type": "text", "text": ""}})
            for i, word in enumerate(words):
                await self.send({"type": "response.output_text.delta", **base, "delta": word if i == 0 else " " + word})
                await asyncio.sleep(server.chunk_interval)
            item["content"] = [{"type": "output_text", "text": reply.text}]
            await self.send({"type": "response.output_text.done", **base, "text": reply.text})
            part = {"type": "text", "text": reply.text}
        else:
            await self.send({"type": "response.content_part.added", **base,
                             "part": {"type": "audio", "transcript": ""}})
            audio = encode_output(pcm, out_fmt)
            step = bytes_per_ms(out_fmt) * server.chunk_ms
            chunks = [audio[i:i + step] for i in range(0, len(audio), step)] or [b""]
            per_chunk = max(1, math.ceil(len(words) / len(chunks)))
            word_iter = iter(enumerate(words))
            self.generated_bytes.setdefault(item["id"], 0)
            for chunk in chunks:
                self.generated_bytes[item["id"]] += len(chunk)
                await self.send({"type": "response.output_audio.delta", **base,
                                 "delta": base64.b64encode(chunk).decode()})
                for i, word in itertools.islice(word_iter, per_chunk):
                    await self.send({"type": "response.output_audio_transcript.delta", **base,
                                     "delta": word if i == 0 else " " + word})
                await asyncio.sleep(server.chunk_interval)
            await self.send({"type": "response.output_audio.done", **base})
            await self.send({"type": "response.output_audio_transcript.done", **base, "transcript": reply.text})
            item["content"] = [{"type": "output_audio", "transcript": reply.text}]
            part = {"type": "audio", "transcript": reply.text}
        item["status"] = "completed"
        await self.send({"type": "response.content_part.done", **base, "part": part})
        await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0,
                         "item": copy.deepcopy(item)})
        await self.send({"type": "conversation.item.done", "previous_item_id": previous, "item": copy.deepcopy(item)})
        return reply

    async def cancel_response(self, reason: str) -> None:
        resp = self.response
        if resp is None:
            return
        self.response = None
        if resp.task is not None:
            resp.task.cancel()
        for index, item in enumerate(resp.items):
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
                await self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index,
                                 "item": copy.deepcopy(item)})
        done = self._response_obj(resp, "cancelled", reason)
        self.responses.append(done)
        self.server.cancellations.append(reason)
        await self.send({"type": "response.done", "response": done})

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)


# -- the server -------------------------------------------------------------------------------


class FakeOpenAIServer:
    def __init__(self, *, api_key: str = "sk-test-key", auth_mode: str = "http") -> None:
        self.api_key = api_key
        self.auth_mode = auth_mode  # "http": 401 on the upgrade; "error": error event then close 1008
        self.replies: deque[Reply] = deque()
        self.default_reply = Reply("Hello, how can I help you today?")
        self.function_calls: deque[list[tuple[str, Any]]] = deque()
        self.user_transcripts: deque[str] = deque()
        self.chunk_ms = 100
        self.chunk_interval = 0.01
        self.vad_rms = 400.0
        self.vad_onset_ms = 30.0
        self.session_created_delay = 0.0
        self.hold_session_created: asyncio.Event | None = None  # set: a provider slow to open, released by the test
        self.refuse_connections = 0  # the next N connection attempts get HTTP 503
        self.raw_to_send: list[str] = []  # text frames sent right after session.updated (bad JSON tests)
        self.received: list[dict[str, Any]] = []
        self.connections: list[FakeConnection] = []
        self.errors_sent: list[dict[str, Any]] = []
        self.truncates: list[dict[str, Any]] = []
        self.cancellations: list[str] = []
        self.beta_rejections = 0
        self.auth_failures = 0
        self.speech_starts = 0
        self.responses_started = 0
        self.connection_attempts = 0
        # misbehaving modes
        self.fail_responses = 0
        self.failure_status = "failed"
        self.stall_responses = 0
        self.tool_loop: str | None = None
        self.failed_responses = 0
        self.stalled_responses = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- scripting --------------------------------------------------------------------------

    def queue_reply(self, text: str, pcm16_8k: bytes | None = None,
                    then_calls: list[tuple[str, Any]] | None = None) -> None:
        """The next reply; `then_calls` are emitted after its audio in the same response (a goodbye
        followed by `end_call`, as models do)."""
        self.replies.append(Reply(text, pcm16_8k, then_calls))

    def queue_function_calls(self, calls: list[tuple[str, Any]]) -> None:
        self.function_calls.append(list(calls))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    @property
    def current(self) -> FakeConnection:
        return self.connections[-1]

    def received_types(self, conn: FakeConnection | None = None) -> list[str]:
        return [m.get("type") for m in (conn.received if conn else self.received)]

    def user_texts(self) -> list[str]:
        """The text of the conversation items the client created, in order ("The caller pressed 5.")."""
        return [
            part.get("text", "")
            for m in self.received
            if m["type"] == "conversation.item.create"
            for part in m["item"].get("content", [])
        ]

    async def expire(self, conn: FakeConnection | None = None) -> None:
        """The 60-minute limit: `session_expired`, then close 1001."""
        conn = conn or self.current
        await conn.error("session_expired", "Your session hit the maximum duration of 60 minutes.")
        await conn.shutdown()
        conn.closed = True
        await conn.ws.close(code=1001, message=b"Your session hit the maximum duration of 60 minutes.")

    async def drop(self, conn: FakeConnection | None = None) -> None:
        """Abort the TCP connection without a close frame."""
        conn = conn or self.current
        await conn.shutdown()
        conn.closed = True
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("fake OpenAI: condition not met in time")
            await asyncio.sleep(0.005)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> FakeOpenAIServer:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for conn in self.connections:
            await conn.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.connection_attempts += 1
        if self.refuse_connections > 0:
            self.refuse_connections -= 1
            return web.Response(status=503, text="overloaded")
        auth = request.headers.get("Authorization", "")
        good_auth = auth == f"Bearer {self.api_key}"
        if not good_auth and self.auth_mode == "http":
            self.auth_failures += 1
            return web.json_response({"error": {"type": "invalid_request_error", "code": "invalid_api_key",
                                                "message": "Incorrect API key provided."}}, status=401)
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        if "OpenAI-Beta" in request.headers:
            self.beta_rejections += 1
            await ws.send_str(json.dumps({"type": "error", "event_id": new_event_id(), "error": {
                "type": "invalid_request_error", "code": "beta_api_shape_disabled",
                "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."}}))
            await ws.close(code=4000, message=b"beta_api_shape_disabled")
            return ws
        conn = FakeConnection(self, ws, request)
        if not good_auth:
            self.auth_failures += 1
            await conn.error("invalid_api_key", "Incorrect API key provided.", type_="authentication_error")
            await ws.close(code=1008, message=b"invalid_api_key")
            return ws
        if request.query.get("model"):
            conn.session["model"] = request.query["model"]
        self.connections.append(conn)
        if self.session_created_delay:
            await asyncio.sleep(self.session_created_delay)
        if self.hold_session_created is not None:
            await asyncio.wait_for(self.hold_session_created.wait(), 30)
        await conn.send({"type": "session.created", "session": copy.deepcopy(conn.session)})
        try:
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                try:
                    msg = json.loads(frame.data)
                except json.JSONDecodeError:
                    conformance.record("openai", frame.data[:300], "not JSON")
                    await conn.error("invalid_json", "We could not parse the JSON body of your request.")
                    continue
                self.received.append(msg)
                conn.received.append(msg)
                problem = validate_client_event(msg)
                if problem is None:
                    conformance.checked("openai")
                else:
                    conformance.record("openai", msg, problem)
                await conn.handle(msg)
                if msg.get("type") == "session.update" and self.raw_to_send:
                    for raw in self.raw_to_send:
                        await ws.send_str(raw)
                    self.raw_to_send = []
        finally:
            conn.closed = True
            await conn.shutdown()
        return ws


@contextlib.asynccontextmanager
async def fake_openai(**kwargs: Any):
    server = FakeOpenAIServer(**kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
