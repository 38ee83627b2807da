"""A fake Gemini Live server (BidiGenerateContent over WebSocket) on 127.0.0.1, per docs/protocols.md, "Gemini Live".

- Auth: `?key=` or `x-goog-api-key`; a wrong key closes with 1008. The first frame must be
  `setup` (else 1007); an unknown model closes with 1008. All server JSON goes out as BINARY
  frames, `setupComplete` included.
- Accepts camelCase and snake_case top-level keys; `realtimeInput` (`audio`, `mediaChunks`,
  `audioStreamEnd`, `activityStart`/`End`, `text`), `clientContent`, `toolResponse` (each
  function response must carry `id`, else close 1007).
- Energy VAD on the 16 kHz input (automatic mode): when speech ends the next scripted `Reply`
  streams at 24 kHz faster than real time (`reply_speed`), with `outputTranscription`, then
  `generationComplete`, then `turnComplete` + `usageMetadata`, then a `sessionResumptionUpdate`.
  Speech (or `activityStart` in manual mode) during a reply: `toolCallCancellation` if a tool
  call is pending, `interrupted`, `turnComplete` (no `generationComplete`).
- Generation is faster than real time and, like the real service, `interrupted` only comes
  while a reply is still being generated: speech after `generationComplete` gets no signal.
- Misbehaving (issue: dead air): `stall_replies = N` (the next N replies send nothing at all),
  `fail_replies = N` (`turnComplete` with `turnCompleteReason: MALFORMED_FUNCTION_CALL` and no
  content), `tool_loop = "name"` (every reply calls that tool again after each toolResponse, up
  to `tool_loop_limit` rounds).
- Resumption: handles map to a copy of the conversation state, restored when a new
  connection's setup carries `sessionResumption.handle`.
- Every client message is validated against google-genai's types (see `validate_client_message`)
  and reported to `peers.conformance`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from aiohttp import WSMsgType, web

from peers import conformance

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
KNOWN_MODELS = frozenset(
    {
        "gemini-2.5-flash-native-audio-preview-09-2025",
        "gemini-2.5-flash-native-audio-preview-12-2025",
        "gemini-live-2.5-flash-preview",
        "gemini-2.0-flash-live-001",
        "gemini-3.1-flash-live-preview",
    }
)
_TOP_LEVEL = {
    "setup": "setup",
    "clientContent": "clientContent",
    "client_content": "clientContent",
    "realtimeInput": "realtimeInput",
    "realtime_input": "realtimeInput",
    "toolResponse": "toolResponse",
    "tool_response": "toolResponse",
}


def tone_pcm24k(duration_ms: int, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    n = int(24000 * duration_ms / 1000)
    t = np.arange(n) / 24000.0
    return (amplitude * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def validate_client_message(message: Any) -> str | None:
    """None if `message` is a valid Live client message per google-genai's pydantic types."""
    from google.genai import types

    if not isinstance(message, dict) or len(message) != 1:
        return "a client message must have exactly one top-level key"
    key, body = next(iter(message.items()))
    if key not in _TOP_LEVEL:
        return f"unknown top-level key {key!r}"
    try:
        if _TOP_LEVEL[key] == "setup" and isinstance(body, dict):
            body = dict(body)
            ric = body.pop("realtimeInputConfig", None)
            ric_snake = body.pop("realtime_input_config", None)
            for part in (ric, ric_snake):
                if part is not None:
                    types.RealtimeInputConfig.model_validate_json(orjson.dumps(part))
        if _TOP_LEVEL[key] == "realtimeInput":
            if not isinstance(body, dict) or len(body) != 1:
                return "realtimeInput must carry exactly one field per message"
        types.LiveClientMessage.model_validate_json(orjson.dumps({key: body}))
    except Exception as exc:  # noqa: BLE001 - pydantic.ValidationError and friends
        return str(exc)
    return None


def _get(body: dict[str, Any], camel: str) -> Any:
    """A field by its camelCase or snake_case name."""
    if camel in body:
        return body[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return body.get(snake)


@dataclass
class Reply:
    """What the model says next. `tool_calls`: `[{"name", "args", "id"?}]`, sent first; the
    audio follows once every call has its `toolResponse`."""

    audio: bytes | None = None  # PCM16 24 kHz; None: a tone of `duration_ms`
    duration_ms: int = 600
    transcript: str | None = "Sure, I can help with that."
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def pcm(self) -> bytes:
        return self.audio if self.audio is not None else tone_pcm24k(self.duration_ms)


@dataclass
class Conversation:
    """State carried by resumption handles."""

    turns: int = 0
    history: list[str] = field(default_factory=list)
    audio_bytes: int = 0


@dataclass(eq=False)
class FakeConnection:
    index: int
    headers: dict[str, str]
    query: dict[str, str]
    ws: web.WebSocketResponse | None = None
    setup: dict[str, Any] | None = None
    resumed_from: str | None = None
    conversation: Conversation = field(default_factory=Conversation)
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    function_responses: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    opened_at: float = 0.0
    closed_at: float | None = None
    close_code: int | None = None  # set when the fake closed it
    close_reason: str = ""
    # VAD and turn state
    manual: bool = False
    interrupts: bool = True
    speaking: bool = False
    loud_ms: float = 0.0
    quiet_ms: float = 0.0
    pending_pcm: bytearray = field(default_factory=bytearray)
    reply_task: asyncio.Task[None] | None = None
    pending_tools: dict[str, str] = field(default_factory=dict)
    tools_done: asyncio.Event = field(default_factory=asyncio.Event)
    barge_ins: int = 0

    def kinds(self) -> list[str]:
        """The top-level key (and realtimeInput field) of every client message, in order."""
        out = []
        for _, m in self.messages:
            key = next(iter(m))
            norm = _TOP_LEVEL.get(key, key)
            if norm == "realtimeInput" and isinstance(m[key], dict) and m[key]:
                out.append(f"realtimeInput.{next(iter(m[key]))}")
            else:
                out.append(norm)
        return out

    def sent_times(self, predicate: Callable[[dict[str, Any]], bool]) -> list[float]:
        return [t for t, m in self.sent if predicate(m)]

    @property
    def replying(self) -> bool:
        return self.reply_task is not None and not self.reply_task.done()


class FakeGemini:
    """Scriptable fake; use as `async with FakeGemini() as fake:` and connect to `fake.url`."""

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        models: frozenset[str] = KNOWN_MODELS,
        reply_speed: float = 8.0,
        chunk_ms: int = 40,
        vad_threshold: float = 300.0,
        silence_ms: int = 300,
        min_speech_ms: int = 60,
        send_handles: bool = True,
        input_transcript: str | None = "hello",
        default_reply: Reply | None = None,
    ) -> None:
        self.api_key = api_key
        self.models = models
        self.reply_speed = reply_speed
        self.chunk_ms = chunk_ms
        self.vad_threshold = vad_threshold
        self.silence_ms = silence_ms
        self.min_speech_ms = min_speech_ms
        self.send_handles = send_handles
        self.input_transcript = input_transcript
        self.default_reply = default_reply or Reply()
        self.replies: deque[Reply] = deque()
        self.connections: list[FakeConnection] = []
        self.handles: dict[str, Conversation] = {}
        #: Close the next N setups with `fail_setup_code`/`fail_setup_reason` (resumption tests).
        self.fail_setups = 0
        self.fail_setup_code = 1011
        self.fail_setup_reason = "Internal error encountered."
        # misbehaving modes
        self.stall_replies = 0
        self.fail_replies = 0
        self.tool_loop: str | None = None
        self.tool_loop_limit = 10_000
        self.tool_loop_rounds = 0
        self._handle_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeGemini:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for conn in self.connections:
            if conn.reply_task is not None:
                conn.reply_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        for conn in self.connections:
            if conn.ws is not None and not conn.ws.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.ws.close(), 0.5)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    @property
    def last(self) -> FakeConnection:
        return self.connections[-1]

    @property
    def total_audio(self) -> int:
        return sum(len(c.audio) for c in self.connections)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("fake Gemini: condition not met in time")
            await asyncio.sleep(0.01)

    # -- injection ------------------------------------------------------------------------

    def _target(self, conn: FakeConnection | None) -> FakeConnection:
        if conn is not None:
            return conn
        for candidate in reversed(self.connections):
            if candidate.ws is not None and not candidate.ws.closed and candidate.setup is not None:
                return candidate
        raise AssertionError("no open connection")

    async def go_away(
        self,
        time_left: float = 2.0,
        *,
        close_after: float | None = None,
        code: int = 1000,
        reason: str = "",
        conn: FakeConnection | None = None,
    ) -> FakeConnection:
        """Send `goAway{timeLeft}`; close the connection `close_after` seconds later if given."""
        target = self._target(conn)
        await self._send(target, {"goAway": {"timeLeft": f"{time_left:g}s"}})
        if close_after is not None:

            async def later() -> None:
                await asyncio.sleep(close_after)
                await self.close_connection(code, reason, conn=target)

            self._spawn(later())
        return target

    async def close_connection(self, code: int, reason: str = "", *, conn: FakeConnection | None = None) -> None:
        target = conn or self._target(None)
        if target.ws is None or target.ws.closed:
            return
        if target.reply_task is not None:
            target.reply_task.cancel()
        target.close_code, target.close_reason = code, reason
        target.closed_at = time.monotonic()
        with contextlib.suppress(Exception):
            await target.ws.close(code=code, message=reason.encode()[:120])

    async def send_raw(self, message: dict[str, Any], *, conn: FakeConnection | None = None) -> None:
        await self._send(self._target(conn), message)

    # -- connection -----------------------------------------------------------------------

    async def _send(self, conn: FakeConnection, message: dict[str, Any]) -> None:
        if conn.ws is None or conn.ws.closed:
            return
        conn.sent.append((time.monotonic(), message))
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.ws.send_bytes(orjson.dumps(message))

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        conn = FakeConnection(
            index=len(self.connections),
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query),
            ws=ws,
            opened_at=time.monotonic(),
        )
        self.connections.append(conn)
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key != self.api_key:
            await self.close_connection(1008, "API key not valid. Please pass a valid API key.", conn=conn)
            return ws
        try:
            await self._serve(conn)
        finally:
            if conn.reply_task is not None:
                conn.reply_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.reply_task
            if conn.closed_at is None:
                conn.closed_at = time.monotonic()
        return ws

    async def _receive_json(self, conn: FakeConnection, timeout: float | None = None) -> dict[str, Any] | None:
        assert conn.ws is not None
        while True:
            msg = await conn.ws.receive(timeout=timeout)
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    message = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    await self.close_connection(1007, "Invalid JSON payload received.", conn=conn)
                    return None
                conn.messages.append((time.monotonic(), message))
                error = validate_client_message(message)
                if error is None:
                    conformance.checked("gemini")
                else:
                    conformance.record("gemini", message, error)
                if not isinstance(message, dict):
                    await self.close_connection(1007, "Invalid JSON payload received.", conn=conn)
                    return None
                return message
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return None

    async def _serve(self, conn: FakeConnection) -> None:
        try:
            first = await self._receive_json(conn, timeout=5.0)
        except TimeoutError:
            await self.close_connection(1007, "Setup not received in time.", conn=conn)
            return
        if first is None:
            return
        if "setup" not in first or not isinstance(first["setup"], dict):
            await self.close_connection(1007, "Invalid argument: the first message must be setup.", conn=conn)
            return
        setup = first["setup"]
        model = str(setup.get("model") or "")
        model_id = model.split("/", 1)[1] if model.startswith("models/") else model
        if model_id not in self.models:
            await self.close_connection(1008, f"models/{model_id[:40]} is not found for API version v1beta", conn=conn)
            return
        if self.fail_setups > 0:
            self.fail_setups -= 1
            await self.close_connection(self.fail_setup_code, self.fail_setup_reason, conn=conn)
            return
        resumption = _get(setup, "sessionResumption") or {}
        handle = resumption.get("handle") if isinstance(resumption, dict) else None
        if handle:
            state = self.handles.get(handle)
            if state is None:
                await self.close_connection(1007, "Invalid session resumption handle.", conn=conn)
                return
            conn.conversation = copy.deepcopy(state)
            conn.resumed_from = handle
        conn.setup = setup
        ric = _get(setup, "realtimeInputConfig") or {}
        detection = _get(ric, "automaticActivityDetection") or {}
        conn.manual = bool(detection.get("disabled"))
        conn.interrupts = _get(ric, "activityHandling") != "NO_INTERRUPTION"
        await self._send(conn, {"setupComplete": {}})
        while True:
            message = await self._receive_json(conn)
            if message is None:
                return
            await self._dispatch(conn, message)

    async def _dispatch(self, conn: FakeConnection, message: dict[str, Any]) -> None:
        key, body = next(iter(message.items()))
        kind = _TOP_LEVEL.get(key)
        if kind is None or kind == "setup" or not isinstance(body, dict):
            await self.close_connection(1007, f"Invalid argument: unexpected message {key}.", conn=conn)
            return
        if kind == "realtimeInput":
            await self._realtime_input(conn, body)
        elif kind == "clientContent":
            for turn in body.get("turns") or []:
                for part in turn.get("parts") or []:
                    if "text" in part:
                        conn.conversation.history.append(f"{turn.get('role', 'user')}: {part['text']}")
            if _get(body, "turnComplete"):
                await self._barge_in(conn)
                self._start_reply(conn)
        elif kind == "toolResponse":
            for response in _get(body, "functionResponses") or []:
                if not response.get("id"):
                    await self.close_connection(1007, "Invalid argument: function response id is missing.", conn=conn)
                    return
                conn.function_responses.append(response)
                conn.pending_tools.pop(response["id"], None)
            if not conn.pending_tools:
                conn.tools_done.set()

    async def _realtime_input(self, conn: FakeConnection, body: dict[str, Any]) -> None:
        blobs = []
        if "audio" in body:
            blobs.append(body["audio"])
        blobs.extend(_get(body, "mediaChunks") or [])
        for blob in blobs:
            mime = str(_get(blob, "mimeType") or "")
            if not mime.startswith("audio/pcm"):
                continue
            pcm = base64.b64decode(blob.get("data") or "")
            conn.audio.extend(pcm)
            conn.conversation.audio_bytes += len(pcm)
            if not conn.manual:
                await self._vad(conn, pcm)
        if _get(body, "audioStreamEnd"):
            if conn.speaking and not conn.manual:
                conn.speaking = False
                await self._end_of_speech(conn)
        if _get(body, "activityStart") is not None:
            if not conn.manual:
                await self.close_connection(
                    1007, "Explicit activity control is not supported when automatic activity detection is enabled.", conn=conn
                )
                return
            conn.speaking = True
            if conn.interrupts:
                await self._barge_in(conn)
        if _get(body, "activityEnd") is not None:
            if not conn.manual:
                await self.close_connection(
                    1007, "Explicit activity control is not supported when automatic activity detection is enabled.", conn=conn
                )
                return
            conn.speaking = False
            await self._end_of_speech(conn)
        text = body.get("text")
        if isinstance(text, str) and text:
            conn.texts.append(text)
            conn.conversation.history.append(f"user: {text}")
            if not conn.replying and not conn.speaking:  # said while the caller talks: part of their turn
                self._start_reply(conn)

    # -- VAD and turns --------------------------------------------------------------------

    async def _vad(self, conn: FakeConnection, pcm: bytes) -> None:
        conn.pending_pcm.extend(pcm)
        frame = 640  # 20 ms at 16 kHz
        while len(conn.pending_pcm) >= frame:
            chunk = np.frombuffer(bytes(conn.pending_pcm[:frame]), dtype="<i2").astype(np.float64)
            del conn.pending_pcm[:frame]
            rms = float(np.sqrt(np.mean(chunk * chunk)))
            if rms >= self.vad_threshold:
                conn.loud_ms += 20
                conn.quiet_ms = 0
                if not conn.speaking and conn.loud_ms >= self.min_speech_ms:
                    conn.speaking = True
                    if conn.interrupts:
                        await self._barge_in(conn)
            else:
                conn.quiet_ms += 20
                if conn.quiet_ms >= 60:
                    conn.loud_ms = 0
                if conn.speaking and conn.quiet_ms >= self.silence_ms:
                    conn.speaking = False
                    await self._end_of_speech(conn)

    async def _end_of_speech(self, conn: FakeConnection) -> None:
        if self.input_transcript:
            await self._send(conn, {"serverContent": {"inputTranscription": {"text": self.input_transcript, "finished": True}}})
        conn.conversation.history.append("user: <audio>")
        if not conn.replying:
            self._start_reply(conn)

    def _start_reply(self, conn: FakeConnection) -> None:
        reply = self.replies.popleft() if self.replies else self.default_reply
        conn.reply_task = asyncio.create_task(self._reply(conn, reply))

    async def _barge_in(self, conn: FakeConnection) -> None:
        if not conn.replying:
            return
        conn.barge_ins += 1
        assert conn.reply_task is not None
        conn.reply_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conn.reply_task
        if conn.pending_tools:
            await self._send(conn, {"toolCallCancellation": {"ids": list(conn.pending_tools)}})
            conn.pending_tools.clear()
        await self._send(conn, {"serverContent": {"interrupted": True}})
        await self._send(conn, {"serverContent": {"turnComplete": True}})
        await self._new_handle(conn)

    async def _new_handle(self, conn: FakeConnection) -> None:
        if not self.send_handles:
            return
        handle = f"handle-{next(self._handle_ids)}"
        self.handles[handle] = copy.deepcopy(conn.conversation)
        await self._send(conn, {"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})

    async def _reply(self, conn: FakeConnection, reply: Reply) -> None:
        if self.send_handles:
            await self._send(conn, {"sessionResumptionUpdate": {"resumable": False}})
        if self.stall_replies > 0:
            self.stall_replies -= 1
            await asyncio.Event().wait()  # nothing, ever (cancelled by a barge-in or the close)
        if self.fail_replies > 0:
            self.fail_replies -= 1
            await self._send(conn, {"serverContent": {"turnComplete": True,
                                                      "turnCompleteReason": "MALFORMED_FUNCTION_CALL"}})
            return
        while self.tool_loop and self.tool_loop_rounds < self.tool_loop_limit:
            self.tool_loop_rounds += 1
            call_id = f"fc_loop_{conn.index}_{self.tool_loop_rounds}"
            conn.pending_tools[call_id] = self.tool_loop
            conn.tools_done.clear()
            await self._send(conn, {"toolCall": {"functionCalls": [
                {"id": call_id, "name": self.tool_loop, "args": {"attempt": self.tool_loop_rounds}}]}})
            await conn.tools_done.wait()
        if reply.tool_calls:
            calls = []
            for i, call in enumerate(reply.tool_calls):
                call_id = call.get("id") or f"fc_{conn.index}_{conn.conversation.turns}_{i}"
                conn.pending_tools[call_id] = call["name"]
                calls.append({"id": call_id, "name": call["name"], "args": call.get("args", {})})
            conn.tools_done.clear()
            await self._send(conn, {"toolCall": {"functionCalls": calls}})
            await conn.tools_done.wait()
        if reply.transcript:
            await self._send(conn, {"serverContent": {"outputTranscription": {"text": reply.transcript}}})
        if reply.text:
            await self._send(conn, {"serverContent": {"modelTurn": {"parts": [{"text": reply.text}]}}})
        pcm = reply.pcm()
        step = 48 * self.chunk_ms
        for start in range(0, len(pcm), step):
            data = base64.b64encode(pcm[start : start + step]).decode()
            part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
            await self._send(conn, {"serverContent": {"modelTurn": {"parts": [part]}}})
            await asyncio.sleep(self.chunk_ms / 1000 / self.reply_speed)
        await self._send(conn, {"serverContent": {"generationComplete": True}})
        conn.conversation.turns += 1
        conn.conversation.history.append(f"model: {reply.transcript or '<audio>'}")
        await self._send(
            conn,
            {
                "serverContent": {"turnComplete": True},
                "usageMetadata": {"promptTokenCount": 100, "responseTokenCount": 20, "totalTokenCount": 120},
            },
        )
        await self._new_handle(conn)
