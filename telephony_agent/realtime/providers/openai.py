"""OpenAI Realtime (GA) over WebSocket: `OpenAIRealtimeModel` and `OpenAIRealtimeSession`.

The wire protocol itself lives in `openai_protocol` (sans-I/O); this module owns the socket,
the handshake, and reconnecting when OpenAI ends a session (60-minute limit, `session_expired`,
close 1001) or the connection drops: the conversation is carried over as text items and the
API caller sees one `Reconnected` event.

Never logged: the API key, audio payloads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeConnectionError,
    RealtimeError,
    SessionClosedError,
)
from telephony_agent.realtime.events import ErrorEvent, Reconnected, ResponseDone, ServerEvent
from telephony_agent.realtime.providers.openai_protocol import (
    AUTH_ERROR_CODES,
    BENIGN_ERROR_CODES,
    EXPIRY_ERROR_CODES,
    PCMA_8K,
    OpenAIEventTranslator,
    audio_append_message,
    item_create_message,
    new_item_id,
    session_update_message,
    tool_output_item,
    truncate_message,
    user_text_item,
)
from telephony_agent.realtime.reconnect import OutboundBuffer, RetryPolicy, open_connection, receive_before, retry
from telephony_agent.realtime.session import QueuedSession, RealtimeModel, SessionLogger
from telephony_agent.realtime.transport import SharedHttpClient, WebSocketTransport, secret_value
from telephony_agent.realtime.types import (
    PCM16_24K,
    PCMU_8K,
    AudioChunk,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolResponse,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"

#: Close codes after which reconnecting cannot help (protocol/policy errors, 4xxx application codes).
_FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009, 1010})


class OpenAIRealtimeModel(RealtimeModel):
    """Sessions on OpenAI's Realtime API (GA interface: no `OpenAI-Beta` header).

    `audio` picks the wire format when the config does not name a supported one: "pcmu"
    (G.711 8 kHz passthrough: μ-law, or A-law when the config asks for it) or "pcm" (PCM16 24 kHz).
    """

    def __init__(
        self,
        api_key: Any,
        *,
        url: str = DEFAULT_URL,
        model: str = DEFAULT_MODEL,
        audio: str = "pcmu",
        http: aiohttp.ClientSession | None = None,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        reconnect_attempts: int = 3,
        reconnect_backoff: float = 0.25,
        reconnect_buffer_ms: int = 5000,
    ) -> None:
        if audio not in ("pcmu", "pcm"):
            raise RealtimeConfigError(f"audio must be 'pcmu' or 'pcm', not {audio!r}")
        self.__api_key = secret_value(api_key)
        if not self.__api_key:
            raise RealtimeAuthError("no OpenAI API key")
        self.url = url
        self.model = model
        self.audio = audio
        self._http = SharedHttpClient(http)
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.reconnect = RetryPolicy(reconnect_attempts, reconnect_backoff)
        self.reconnect_buffer_ms = reconnect_buffer_ms

    def __repr__(self) -> str:
        return f"OpenAIRealtimeModel(url={self.url!r}, model={self.model!r}, audio={self.audio!r})"

    @property
    def provider(self) -> str:
        return "openai"

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def input_formats(self) -> tuple[AudioFormat, ...]:
        # "pcmu" means G.711 passthrough: a caller on an A-law leg asks for `audio/pcma` by naming
        # it in `RealtimeConfig.input_format` (the bridge does), and nothing is transcoded.
        return (PCMU_8K, PCMA_8K, PCM16_24K) if self.audio == "pcmu" else (PCM16_24K, PCMU_8K, PCMA_8K)

    @property
    def output_formats(self) -> tuple[AudioFormat, ...]:
        return self.input_formats

    def negotiate(self, config: RealtimeConfig) -> tuple[AudioFormat, AudioFormat]:
        """The (input, output) formats a session with `config` will use."""
        supported = (PCMU_8K, PCM16_24K, PCMA_8K)
        default = self.input_formats[0]
        in_fmt = config.input_format if config.input_format in supported else default
        out_fmt = config.output_format if config.output_format in supported else default
        return in_fmt, out_fmt

    @property
    def endpoint(self) -> str:
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}model={quote(self.model, safe='')}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.__api_key}"}

    async def connect(self, config: RealtimeConfig) -> OpenAIRealtimeSession:
        in_fmt, out_fmt = self.negotiate(config)
        translator = OpenAIEventTranslator(out_fmt)
        transport, early = await self._open(config, in_fmt, out_fmt, translator)
        return OpenAIRealtimeSession(self, config, in_fmt, out_fmt, transport, translator, early)

    async def _open(
        self,
        config: RealtimeConfig,
        in_fmt: AudioFormat,
        out_fmt: AudioFormat,
        translator: OpenAIEventTranslator,
        session_log: SessionLogger = log,
    ) -> tuple[WebSocketTransport, list[ServerEvent]]:
        """Open a socket, wait for `session.created`, configure it, wait for `session.updated`."""
        update = session_update_message(config, input_format=in_fmt, output_format=out_fmt)

        async def handshake(transport: WebSocketTransport) -> list[ServerEvent]:
            early: list[ServerEvent] = []
            deadline = asyncio.get_running_loop().time() + self.handshake_timeout
            await self._expect(transport, "session.created", deadline, translator, early, session_log)
            transport.send(update)
            await self._expect(transport, "session.updated", deadline, translator, early, session_log)
            return early

        return await open_connection(self._http.get(), self.endpoint, self._headers(), handshake,
                                     connect_timeout=self.connect_timeout)

    async def _expect(
        self,
        transport: WebSocketTransport,
        wanted: str,
        deadline: float,
        translator: OpenAIEventTranslator,
        early: list[ServerEvent],
        session_log: SessionLogger,
    ) -> None:
        while True:
            raw = await receive_before(transport, deadline, f"OpenAI did not send {wanted} in time")
            if raw is None:
                raise _closed_error(transport.close_code, transport.close_reason, wanted)
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                session_log.warning("undecodable message from OpenAI during the handshake")
                continue
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "error":
                err = _error_body(msg)
                code, text = err.get("code"), str(err.get("message") or "error")
                if code in AUTH_ERROR_CODES or err.get("type") == "authentication_error":
                    raise RealtimeAuthError(f"OpenAI refused the credentials: {text}")
                if wanted == "session.updated":
                    raise RealtimeConfigError(f"OpenAI refused the session configuration: {text} (code {code})")
                raise RealtimeConnectionError(f"OpenAI error during the handshake: {text} (code {code})")
            early.extend(translator.translate(msg))
            if kind == wanted:
                return

    async def aclose(self) -> None:
        await self._http.close()


def _error_body(msg: dict[str, Any]) -> dict[str, Any]:
    """The `error` object of an OpenAI `error` event ({} if it is missing or not an object)."""
    err = msg.get("error")
    return err if isinstance(err, dict) else {}


def _closed_error(code: int | None, reason: str, wanted: str) -> RealtimeConnectionError:
    text = f"OpenAI closed the connection before {wanted} (code {code}{', ' + reason if reason else ''})"
    lowered = (reason or "").lower()
    if code in (4001, 4003) or (
        (code == 1008 or (code or 0) >= 4000) and any(w in lowered for w in ("auth", "api key", "api_key", "unauthorized"))
    ):
        return RealtimeAuthError(text)
    return RealtimeConnectionError(text)


class OpenAIRealtimeSession(QueuedSession):
    """One conversation; survives OpenAI's session limit and connection drops by reconnecting."""

    def __init__(
        self,
        owner: OpenAIRealtimeModel,
        config: RealtimeConfig,
        input_format: AudioFormat,
        output_format: AudioFormat,
        transport: WebSocketTransport,
        translator: OpenAIEventTranslator,
        early_events: list[ServerEvent],
    ) -> None:
        super().__init__()
        self._owner = owner
        self._config = config
        self._in = input_format
        self._out = output_format
        self._transport = transport
        self._translator = translator
        self._session_id = translator.session_id or ""
        self._closing = False
        self._reconnecting = False
        self._expired = False
        self._pending = OutboundBuffer(int(owner.reconnect_buffer_ms * input_format.bytes_per_ms))
        self.reconnects = 0
        self.benign_errors = 0
        self.truncates: list[tuple[str, int]] = []
        for event in early_events:
            self._emit(event)
        self._main = asyncio.create_task(self._run(), name="openai-session")

    # -- properties -------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The id of the first server session (stable across reconnects)."""
        return self._session_id

    @property
    def server_session_id(self) -> str | None:
        """The id of the current server session."""
        return self._translator.session_id

    @property
    def is_connected(self) -> bool:
        return not self._finished and not self._closing and not self._reconnecting and self._transport.open

    @property
    def input_format(self) -> AudioFormat:
        return self._in

    @property
    def output_format(self) -> AudioFormat:
        return self._out

    @property
    def config(self) -> RealtimeConfig:
        return self._config

    @property
    def translator(self) -> OpenAIEventTranslator:
        return self._translator

    @property
    def response_active(self) -> bool:
        return self._translator.response_active

    @property
    def dropped_audio_bytes(self) -> int:
        """Caller audio dropped because a reconnect took longer than the buffer holds."""
        return self._pending.dropped_audio_bytes

    # -- sending ----------------------------------------------------------------------------

    def _send(self, msg: dict[str, Any], audio_bytes: int = 0) -> None:
        if self._finished or self._closing:
            raise SessionClosedError("the OpenAI session is closed")
        if not self._reconnecting:
            try:
                self._transport.send(msg)
                return
            except SessionClosedError:
                pass  # dropped under us: the reader notices and reconnects; keep the message
        self._pending.add(msg, audio_bytes)

    async def send_audio(self, chunk: AudioChunk) -> None:
        self.send_audio_nowait(chunk)

    def send_audio_nowait(self, chunk: AudioChunk) -> bool:
        """Always sent: the write is queued or made at once, never awaited."""
        if chunk.format != self._in:
            raise RealtimeError(f"audio in {chunk.format} but the session takes {self._in}")
        if chunk.data:
            self._send(audio_append_message(chunk.data), len(chunk.data))
        return True

    async def send_text(self, text: str) -> None:
        item = user_text_item(text, new_item_id())
        self._translator.record_item(item)
        self._send(item_create_message(item))
        self._send({"type": "response.create"})

    async def send_tool_output(self, response: ToolResponse) -> None:
        item = tool_output_item(response, new_item_id())
        self._translator.record_item(item)
        self._send(item_create_message(item))

    async def commit_audio(self) -> None:
        self._send({"type": "input_audio_buffer.commit"})

    async def clear_audio(self) -> None:
        self._send({"type": "input_audio_buffer.clear"})

    async def create_response(self) -> None:
        # Sent even if a response seems active: `conversation_already_has_active_response` is benign.
        self._send({"type": "response.create"})

    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        """Cancel the response in progress and truncate the current item to what the caller heard."""
        tr = self._translator
        if tr.response_active:
            self._send({"type": "response.cancel"})
        item = tr.current_item_id
        if item is None or audio_end_ms is None:
            return
        generated = tr.generated_ms(item)
        end = max(0, int(audio_end_ms))
        if end >= generated:
            return  # the caller heard everything generated: nothing to cut
        self._send(truncate_message(item, end))
        tr.record_truncate(item, end)
        self.truncates.append((item, end))

    async def send_event(self, event: ClientEvent) -> None:
        self._send(dict(event.payload))

    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        for wanted, have in ((config.input_format, self._in), (config.output_format, self._out)):
            if wanted is not None and wanted != have:
                raise RealtimeConfigError(f"the audio format cannot change mid-session ({have} -> {wanted})")
        include_voice = config.voice != self._config.voice  # voice is fixed once audio was produced
        self._send(session_update_message(config, input_format=self._in, output_format=self._out,
                                          include_voice=include_voice))
        self._config = config
        return ContextMutationOutcome.applied()

    # -- lifecycle --------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closing:
            if not self._main.done():
                await asyncio.wait({self._main}, timeout=0.5)
            return
        self._closing = True
        self._finish("closed by client")
        try:
            await self._transport.close(timeout=0.6)
        except Exception as exc:  # noqa: BLE001 - closing must not raise
            self._log.debug("closing the OpenAI socket: %s", exc)
        if not self._main.done():
            self._main.cancel()
            await asyncio.wait({self._main}, timeout=0.5)

    async def _run(self) -> None:
        try:
            while True:
                reason = await self._read_connection()
                if self._closing:
                    return
                if reason is None:
                    return
                if not await self._reconnect(reason):
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - never let the reader die silently
            self._log.exception("OpenAI session reader failed")
            self._emit(ErrorEvent(f"internal error: {type(exc).__name__}", "internal_error", True))
            self._finish(f"internal error: {type(exc).__name__}")
        finally:
            if not self._finished:
                self._finish(self._disconnect_reason or "connection closed")

    async def _read_connection(self) -> str | None:
        """Read until the socket ends; the reason to reconnect, or None if the session is over."""
        transport = self._transport
        await transport.pump(self._handle)
        await transport.close(timeout=0.2)
        if self._closing:
            return None
        code, why = transport.close_code, transport.close_reason
        if self._expired:
            self._expired = False
            return "session_expired"
        if code is not None and (code in _FATAL_CLOSE_CODES or 4000 <= code <= 4999):
            text = f"OpenAI closed the connection (code {code}{', ' + why if why else ''})"
            self._log.error("%s; the session is over", text)
            self._emit(ErrorEvent(text, code, True))
            self._finish(text)
            return None
        return f"connection closed (code {code})" if code not in (None, 1006) else "connection lost"

    def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self._log.warning("unexpected binary frame from OpenAI (%d bytes) ignored", len(raw))
            return
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._log.warning("undecodable message from OpenAI (%d chars) ignored", len(raw))
            self._emit(ErrorEvent("undecodable message from OpenAI", "bad_server_message", False))
            return
        if isinstance(msg, dict) and msg.get("type") == "error":
            err = _error_body(msg)
            code = err.get("code")
            if code in EXPIRY_ERROR_CODES:
                self._log.warning("OpenAI session expired; reconnecting when the server closes")
                self._expired = True
                return
            if code in BENIGN_ERROR_CODES:
                self.benign_errors += 1
                self._log.debug("benign OpenAI error %s", code)
                return
            self._log.warning("OpenAI error %s: %s", code, err.get("message"))
        elif isinstance(msg, dict):
            log.debug("openai <- %s", msg.get("type"))
        for event in self._translator.translate(msg):
            self._emit(event)

    async def _reconnect(self, reason: str) -> bool:
        """Open a new connection, carry the conversation over as items, flush what was buffered."""
        self._reconnecting = True
        tr = self._translator
        lost = tr.response_id if tr.response_active else None
        tr.reset_connection()
        if lost:
            self._emit(ResponseDone(lost, "incomplete", "connection_lost"))
        owner = self._owner
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._log.warning("OpenAI connection ended (%s); reconnecting", reason)
        try:
            transport, _early = await retry(
                lambda: owner._open(self._config, self._in, self._out, tr, self._log),
                owner.reconnect, log=self._log, what="OpenAI reconnect",
            )
        except RealtimeError as exc:
            text = f"could not reconnect to OpenAI after {reason}: {exc}"
            self._log.error("%s", text)
            self._emit(ErrorEvent(text, "reconnect_failed", True))
            self._finish(text)
            return False
        self._transport = transport
        items = tr.reinjection_items()
        for item in items:
            transport.send(item_create_message(item))
        for msg in self._pending.take():
            transport.send(msg)
        self._reconnecting = False
        self.reconnects += 1
        self._log.warning("OpenAI session reconnected after %.0f ms (%s); %d items carried over",
                          1000 * (loop.time() - started), reason, len(items))
        self._emit(Reconnected(reason))
        return True
