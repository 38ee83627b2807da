"""Gemini Live over WebSocket: `GeminiLiveModel` and `GeminiLiveSession`.

The wire protocol lives in `gemini_protocol` (sans-I/O); this module owns the sockets, the
setup handshake and session resumption:

- On `goAway` (the connection is about to end) the session opens a NEW connection with the
  latest resumption handle while the old one still works, buffers outgoing messages (audio
  bounded) during the switch, flushes them to the new connection, closes the old one and emits
  `Reconnected`. If a model turn or a tool call is in progress it waits (bounded by the time
  left) until it is over, so the handle includes it. An unexpected close (or 1011) with a
  handle available resumes the same way. Without a handle: `ErrorEvent(fatal=True)` and the end
  of the stream.
- `mutate_context` returns `REQUIRES_RESUMPTION`; `resume_with(config)` applies it by resuming
  on a new connection with a new `setup` (the model stays the same).

Semantics of the methods Gemini has no direct equivalent for:

- `create_response()`: no-op (Gemini answers a `toolResponse`, text or the end of speech by
  itself); in manual-VAD mode it ends an open activity (`activityEnd`), like `commit_audio()`.
- `commit_audio()`: manual VAD: `activityEnd` (the caller's turn is over; the model answers).
  Automatic VAD: `audioStreamEnd` (the server flushes what it has cached).
- `clear_audio()`: Gemini cannot discard input it already received. Drops audio buffered
  locally during a reconnect; in manual-VAD mode it also starts a fresh activity
  (`activityStart`) when none is open, so the next turn starts clean.
- `interrupt()`: Gemini has no cancel. Manual VAD: `activityStart` cuts the generation (and
  opens the caller's activity). Either way, audio of the turn the API caller is currently
  receiving is dropped from then on, including audio already queued, until the next turn.
- In manual-VAD mode an activity opens automatically at the first `send_audio` while the model
  is idle; while it is answering, audio is sent without opening one (so it cannot cut the reply).

Never logged: the API key, audio payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from telephony_agent.realtime.errors import RealtimeError, SessionClosedError
from telephony_agent.realtime.events import (
    AudioDelta,
    ErrorEvent,
    FunctionCallDone,
    GoAway,
    Reconnected,
    ResponseCreated,
    ResponseDone,
    ServerEvent,
    SessionCreated,
)
from telephony_agent.realtime.providers.gemini_protocol import (
    CLOSE_INVALID_ARGUMENT,
    CLOSE_POLICY,
    DEFAULT_MODEL,
    GEMINI_LIVE_URL,
    INPUT_FORMAT,
    OUTPUT_FORMAT,
    GeminiEventTranslator,
    activity_end_message,
    activity_start_message,
    audio_message,
    audio_stream_end_message,
    close_error,
    decode_frame,
    setup_message,
    text_message,
    tool_response_message,
    validate_config,
)
from telephony_agent.realtime.reconnect import OutboundBuffer, RetryPolicy, open_connection, receive_before, retry
from telephony_agent.realtime.session import QueuedSession, RealtimeModel, SessionLogger
from telephony_agent.realtime.transport import SharedHttpClient, WebSocketTransport, secret_value
from telephony_agent.realtime.types import (
    AudioChunk,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolResponse,
)

log = logging.getLogger(__name__)

#: Close codes after which resuming cannot help: the request itself is refused.
_FATAL_CLOSE_CODES = frozenset({1002, 1003, CLOSE_INVALID_ARGUMENT, CLOSE_POLICY, 1009, 1010})

RESPOND_NUDGE = "(The caller is on the line, waiting for you to speak.)"
"""What `create_response` says to Gemini when there is nothing new to answer (e.g. a greeting)."""


class GeminiLiveModel(RealtimeModel):
    """Sessions on the Gemini Live API (BidiGenerateContent over WebSocket, API-key auth).

    The key goes in the `x-goog-api-key` header, never in the URL. `http` is borrowed if given;
    otherwise the model creates one on first use and `aclose()` closes it.
    """

    def __init__(
        self,
        api_key: Any,
        *,
        url: str = GEMINI_LIVE_URL,
        model: str = DEFAULT_MODEL,
        http: aiohttp.ClientSession | None = None,
        setup_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_buffered_audio_ms: int = 5000,
        reconnect_attempts: int = 3,
        reconnect_backoff: float = 0.1,
    ) -> None:
        key = secret_value(api_key)
        if not key:
            raise ValueError("a Gemini API key is required")
        if "?" in url and "key=" in url.split("?", 1)[1]:
            raise ValueError("put the API key in api_key, not in the URL")
        self._key = key
        self._url = url
        self._model = model
        self._http = SharedHttpClient(http)
        self.setup_timeout = setup_timeout
        self.connect_timeout = connect_timeout
        self.max_buffered_audio_ms = max_buffered_audio_ms
        self.reconnect = RetryPolicy(reconnect_attempts, reconnect_backoff)

    def __repr__(self) -> str:
        return f"GeminiLiveModel(model={self._model!r}, url={self._url!r})"

    @property
    def provider(self) -> str:
        return "gemini"

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def input_formats(self) -> tuple[AudioFormat, ...]:
        return (INPUT_FORMAT,)

    @property
    def output_formats(self) -> tuple[AudioFormat, ...]:
        return (OUTPUT_FORMAT,)

    async def connect(self, config: RealtimeConfig) -> GeminiLiveSession:
        validate_config(config)
        session = GeminiLiveSession(self, config)
        await session._start()
        return session

    async def _open(
        self, config: RealtimeConfig, handle: str | None, session_log: SessionLogger = log
    ) -> tuple[WebSocketTransport, dict[str, Any]]:
        """A connected socket that has completed setup; raises the error its close code stands for."""

        async def handshake(transport: WebSocketTransport) -> dict[str, Any]:
            transport.send(setup_message(config, self._model, handle))
            deadline = asyncio.get_running_loop().time() + self.setup_timeout
            while True:
                frame = await receive_before(
                    transport, deadline, f"Gemini did not complete setup within {self.setup_timeout:g}s"
                )
                if frame is None:
                    raise close_error(transport.close_code, transport.close_reason, during_setup=True)
                try:
                    message = decode_frame(frame)
                except ValueError as exc:
                    session_log.warning("ignoring a bad frame before setupComplete: %s", exc)
                    continue
                if "setupComplete" in message:
                    return message
                session_log.debug("ignoring %s before setupComplete", list(message))

        return await open_connection(self._http.get(), self._url, {"x-goog-api-key": self._key}, handshake,
                                     connect_timeout=self.connect_timeout, close_timeout=0.5)

    async def aclose(self) -> None:
        await self._http.close()


@dataclass(eq=False)
class _Connection:
    transport: WebSocketTransport
    seq: int
    retired: bool = False
    reader: asyncio.Task[None] | None = field(default=None, repr=False)


class GeminiLiveSession(QueuedSession):
    """One Gemini Live conversation, possibly spanning several connections (resumption)."""

    text_joins_caller_turn = True  # realtimeInput.text: the end of the turn follows the caller's activity

    def __init__(self, model: GeminiLiveModel, config: RealtimeConfig) -> None:
        super().__init__()
        self._model = model
        self._config = config
        self._id = f"gemini-{uuid.uuid4().hex[:16]}"
        self._translator = GeminiEventTranslator(self._id)
        self._conn: _Connection | None = None
        self._conn_seq = 0
        self._closing = False
        self._switch_lock = asyncio.Lock()
        self._switching = False
        self._buffer = OutboundBuffer(int(model.max_buffered_audio_ms * INPUT_FORMAT.bytes_per_ms))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._goaway_task: asyncio.Task[None] | None = None
        self._consumer_turn: str | None = None
        self._dropped_turns: set[str] = set()
        self._activity_open = False
        self._awaiting_reply = False
        self._answered_tools = False
        self._tool_conn: dict[str, int] = {}
        self.reconnects = 0

    # -- properties -----------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._id

    @property
    def is_connected(self) -> bool:
        return not self._finished and self._conn is not None and self._conn.transport.open

    @property
    def input_format(self) -> AudioFormat:
        return INPUT_FORMAT

    @property
    def output_format(self) -> AudioFormat:
        return OUTPUT_FORMAT

    @property
    def config(self) -> RealtimeConfig:
        return self._config

    @property
    def dropped_audio_bytes(self) -> int:
        """Caller audio dropped because a switch took longer than the buffer holds."""
        return self._buffer.dropped_audio_bytes

    @property
    def resumption_handle(self) -> str | None:
        """The latest non-empty handle the server gave (None before the first)."""
        return self._translator.latest_handle

    @property
    def _manual(self) -> bool:
        return self._config.turn_detection.manual

    # -- lifecycle ------------------------------------------------------------------------

    async def _start(self) -> None:
        transport, message = await self._model._open(self._config, None)
        self._attach(transport)
        body = message.get("setupComplete") or {}
        sid = body.get("sessionId") if isinstance(body, dict) else None
        self._emit(SessionCreated(str(sid or self._id), raw=message))

    def _attach(self, transport: WebSocketTransport) -> _Connection:
        self._conn_seq += 1
        conn = _Connection(transport, self._conn_seq)
        conn.reader = asyncio.create_task(self._read_loop(conn), name=f"gemini-reader-{conn.seq}")
        self._conn = conn
        return conn

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Close the connection(s) and end the event stream; bounded (well under 2 s)."""
        if self._closing:
            self._finish(self._disconnect_reason or "closed by client")
            return
        self._closing = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        conn = self._conn
        if conn is not None:
            conn.retired = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.transport.close(timeout=0.8), 1.2)
            if conn.reader is not None and conn.reader is not current:
                conn.reader.cancel()
                tasks.append(conn.reader)
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)
        self._finish("closed by client")

    async def _die(self, message: str, code: Any = None) -> None:
        """A fatal error: report it, close everything, end the stream."""
        if self._closing:
            return
        self._log.error("%s; the session is over", message)
        self._emit(ErrorEvent(message, code=code, fatal=True))
        self._finish(message)
        self._closing = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        conn = self._conn
        if conn is not None:
            conn.retired = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.transport.close(timeout=0.5), 1.0)

    # -- reading --------------------------------------------------------------------------

    async def _read_loop(self, conn: _Connection) -> None:
        def on_frame(frame: str | bytes) -> None:
            if not conn.retired:
                for event in self._translator.feed(frame):
                    self._on_event(conn, event)

        try:
            await conn.transport.pump(on_frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reader bug must not leave the session hanging
            self._log.exception("Gemini reader failed")
            if not conn.retired:
                self._spawn(self._die(f"Gemini reader failed: {type(exc).__name__}: {exc}"), "gemini-die")
            return
        if conn.retired or self._closing:
            return
        code, reason = conn.transport.close_code, conn.transport.close_reason
        self._spawn(self._connection_lost(conn, code, reason), "gemini-lost")

    def _on_event(self, conn: _Connection, event: ServerEvent) -> None:
        if isinstance(event, AudioDelta) and event.item_id in self._dropped_turns:
            return
        if isinstance(event, ResponseCreated):
            self._awaiting_reply = False
        elif isinstance(event, ResponseDone):
            if event.reason != "tool_calls":
                self._awaiting_reply = False
        elif isinstance(event, GoAway):
            if self._goaway_task is None or self._goaway_task.done():
                self._goaway_task = self._spawn(self._handle_goaway(conn, event.time_left), "gemini-goaway")
        if isinstance(event, FunctionCallDone):
            self._tool_conn[event.call_id] = conn.seq
        self._emit(event)

    async def next_event(self) -> ServerEvent | None:
        while True:
            event = await super().next_event()
            if isinstance(event, AudioDelta) and event.item_id in self._dropped_turns:
                continue  # queued audio of a turn the API caller interrupted
            if isinstance(event, ResponseCreated):
                self._consumer_turn = event.response_id
            elif isinstance(event, ResponseDone) and event.response_id == self._consumer_turn:
                self._consumer_turn = None
            return event

    # -- resumption -----------------------------------------------------------------------

    async def _handle_goaway(self, conn: _Connection, time_left: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, time_left - 1.0) * 0.8
        # Let the turn (or tool call) in progress finish so the handle includes it; the server
        # sends the new handle just after turnComplete, so then wait (briefly) for it too.
        handles = self._translator.handle_updates
        waited = False
        while not self._translator.idle and loop.time() < deadline and conn is self._conn:
            waited = True
            await asyncio.sleep(0.02)
        settle = min(deadline, loop.time() + 0.5)
        while waited and self._translator.handle_updates == handles and loop.time() < settle:
            await asyncio.sleep(0.02)
        if conn is not self._conn or self._closing:
            return
        if self._translator.latest_handle is None:
            # Wait for a handle until the connection ends; _connection_lost reports the failure.
            while self._translator.latest_handle is None and conn is self._conn and not self._closing:
                await asyncio.sleep(0.05)
            if conn is not self._conn or self._closing:
                return
        self._log.warning("Gemini sent goAway (%.1fs left); resuming on a new connection", time_left)
        try:
            await self._switch("go_away", self._config, expected=conn)
        except RealtimeError as exc:
            self._log.warning("resuming after goAway failed: %s", exc)

    async def _connection_lost(self, conn: _Connection, code: int | None, reason: str) -> None:
        if conn is not self._conn or self._closing:
            return
        error = close_error(code, reason)
        if code in _FATAL_CLOSE_CODES:
            await self._die(str(error), code)
            return
        if self._translator.latest_handle is None:
            why = "after goAway" if self._goaway_task is not None else "unexpectedly"
            await self._die(
                f"Gemini closed the connection {why} and no resumption handle was available "
                f"(close {code}: {reason or 'no reason given'})",
                code,
            )
            return
        self._log.warning("Gemini connection lost (%s); resuming", error)
        self._emit(ErrorEvent(str(error), code=code, fatal=False))
        why = f"connection closed ({code}): {reason or 'no reason'}"
        try:
            await retry(lambda: self._switch(why, self._config, expected=conn), self._model.reconnect,
                        log=self._log, what="Gemini resumption")
        except RealtimeError as exc:
            await self._die(f"Gemini connection lost and resumption failed: {exc}", code)

    async def _switch(self, reason: str, config: RealtimeConfig, expected: _Connection | None = None) -> None:
        """Open a new connection (resuming with the latest handle), switch to it, close the old one."""
        async with self._switch_lock:
            old = self._conn
            if self._closing:
                raise SessionClosedError("the session is closed")
            if expected is not None and old is not expected:
                return  # someone else already switched
            self._switching = True
            started = asyncio.get_running_loop().time()
            try:
                transport, _ = await self._model._open(config, self._translator.latest_handle, self._log)
            except BaseException:
                self._switching = False
                if old is not None and old.transport.open and not old.retired:
                    self._flush(old.transport)
                raise
            if old is not None:
                old.retired = True
            for event in self._translator.abort_turn("reconnected"):
                self._emit(event)
            self._activity_open = False
            self._awaiting_reply = False
            self._config = config
            new = self._attach(transport)
            self._flush(new.transport)
            self._switching = False
            self.reconnects += 1
            if old is not None:
                self._spawn(self._retire(old), "gemini-retire")
            self._log.warning("Gemini session resumed after %.0f ms (%s)",
                              1000 * (asyncio.get_running_loop().time() - started), reason)
            self._emit(Reconnected(reason))

    async def _retire(self, conn: _Connection) -> None:
        with contextlib.suppress(Exception):
            await conn.transport.close(timeout=1.0)
        if conn.reader is not None and not conn.reader.done():
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(conn.reader, 0.5)

    def _flush(self, transport: WebSocketTransport) -> None:
        for message in self._buffer.take():
            transport.send(message)

    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        """Gemini cannot change anything on an open connection: resume with a new setup."""
        validate_config(config)
        return ContextMutationOutcome.requires_resumption(config)

    async def resume_with(self, config: RealtimeConfig) -> None:
        """Resume on a new connection with `config` (model unchanged) and the latest handle.

        Without a handle yet the new connection starts a fresh conversation.
        """
        validate_config(config)
        if self._translator.latest_handle is None:
            self._log.warning("no resumption handle yet: the new Gemini connection starts a fresh conversation")
        await self._switch("context_update", config)

    # -- sending --------------------------------------------------------------------------

    def _send(self, message: dict[str, Any], *, audio_bytes: int = 0) -> None:
        if self._finished or self._closing:
            raise SessionClosedError(f"the Gemini session is closed ({self._disconnect_reason or 'closing'})")
        conn = self._conn
        if self._switching or conn is None or conn.retired or not conn.transport.open:
            self._buffer.add(message, audio_bytes)
            return
        conn.transport.send(message)

    async def send_audio(self, chunk: AudioChunk) -> None:
        self.send_audio_nowait(chunk)

    def send_audio_nowait(self, chunk: AudioChunk) -> bool:
        """Always sent: the write is queued or made at once, never awaited."""
        if chunk.format != INPUT_FORMAT:
            raise RealtimeError(
                f"Gemini Live takes PCM16 16 kHz audio, not {chunk.format.encoding.value} at "
                f"{chunk.format.sample_rate} Hz"
            )
        if len(chunk.data) % 2:
            raise RealtimeError("PCM16 audio must have an even number of bytes")
        if not chunk.data:
            return True
        if self._manual and not self._activity_open and self._translator.idle and not self._awaiting_reply:
            self._send(activity_start_message())
            self._activity_open = True
        self._send(audio_message(chunk.data), audio_bytes=len(chunk.data))
        return True

    async def send_text(self, text: str) -> None:
        if not text:
            return
        self._send(text_message(text))

    async def send_tool_output(self, response: ToolResponse) -> None:
        owner = self._tool_conn.pop(response.call_id, None)
        self._translator.tool_answered(response.call_id)
        if owner is not None and self._conn is not None and owner != self._conn.seq:
            self._log.warning("dropping the result of tool call %s: it was made on a previous connection",
                              response.call_id)
            return
        self._send(tool_response_message(response))
        self._answered_tools = True

    async def create_response(self) -> None:
        """Gemini answers by itself after input and after tool results; asked to respond with
        nothing new to answer (the agent speaking first, a greeting), it needs a nudge: a line of
        realtime text, which the instructions tell it how to answer."""
        if self._answered_tools:
            self._answered_tools = False  # the model continues after the toolResponse by itself
            return
        if self._manual and self._activity_open:
            await self.commit_audio()
        elif self._translator.idle and not self._awaiting_reply:
            self._send(text_message(RESPOND_NUDGE))

    async def commit_audio(self) -> None:
        if self._manual:
            if self._activity_open:
                self._send(activity_end_message())
                self._activity_open = False
                self._awaiting_reply = True
        else:
            self._send(audio_stream_end_message())

    async def clear_audio(self) -> None:
        self._buffer.drop_audio()
        if self._manual and not self._activity_open:
            self._send(activity_start_message())
            self._activity_open = True

    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        """Drop the rest of the turn being received; in manual mode `activityStart` cuts generation."""
        turn = self._consumer_turn
        if turn is not None:
            self._dropped_turns.add(turn)
            self._translator.discard(turn)
            if len(self._dropped_turns) > 16:
                self._dropped_turns = {turn}
        if self._manual and not self._activity_open:
            self._send(activity_start_message())
            self._activity_open = True
            self._awaiting_reply = False

    async def send_event(self, event: ClientEvent) -> None:
        if not isinstance(event.payload, dict) or not event.payload:
            raise RealtimeError("a raw Gemini client message must be a non-empty JSON object")
        if "setup" in event.payload:
            raise RealtimeError("setup can only be sent once per connection: use mutate_context")
        self._send(event.payload)
