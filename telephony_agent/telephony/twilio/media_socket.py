"""The asyncio shell around one Twilio Media Stream WebSocket: protocol in, `CallBridge` out.

Everything Twilio-specific about a live call lives here: the sans-I/O `MediaStreamProtocol`
parses frames; this class is the call's `PhoneLeg` (mu-law 20 ms frames, each chunk followed by
a mark named by its tag; `clear`; hang-up and transfer through the REST API) and feeds the
bridge's `LegEvents` (media -> `on_caller_audio`, mark echo -> `on_played`, `stop` -> `on_hangup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.calls import CallRefused
from telephony_agent.telephony.leg import PCMU_20MS, PhoneFormat
from telephony_agent.wiretap import WIRETAP
from telephony_agent.telephony.twilio.rest import TwilioRest, TwilioRestError
from telephony_agent.telephony.twilio.stream import (
    BadInput,
    Dtmf,
    MarkEcho,
    Media,
    MediaStreamProtocol,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
)

log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0
WS_MAX_MSG_SIZE = 4 * 1024 * 1024  # above the protocol's 64 KiB so oversize is counted, not fatal
WRITE_NOW_LIMIT = 64 * 1024  # past this much unsent, writes go through the writer task, which waits for drain


@dataclass
class MediaSocketHooks:
    """What the server supplies: authorise a `start`, build the bridge, count bad input."""

    authorize: Callable[[Start], bool]
    make_bridge: Callable[[Start, "TwilioMediaSocket"], Awaitable[CallBridge]]
    on_bad_input: Callable[[str], None]
    on_call_end: Callable[[CallBridge], None]


class TwilioMediaSocket:
    """Implements `PhoneLeg` over one Media Stream socket."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hooks: MediaSocketHooks,
        rest: TwilioRest | None = None,
    ) -> None:
        self.ws = ws
        self.hooks = hooks
        self.rest = rest
        self.protocol = MediaStreamProtocol()
        self.bridge: CallBridge | None = None
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._tap = WIRETAP.get()
        self._start_text: str | bytes | None = None  # recorded only once the call is admitted

    # -- PhoneLeg ---------------------------------------------------------------------------

    @property
    def format(self) -> PhoneFormat:
        """Media Streams carry mu-law 8 kHz; we send 20 ms frames."""
        return PCMU_20MS

    @property
    def transport(self) -> str:
        return "twilio"

    @property
    def confirms_playout(self) -> bool:
        """Twilio echoes a mark once the audio sent before it has played."""
        return True

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        """Media messages for the frames, then a mark named `tag` (echoed once they have played)."""
        sid = self.protocol.stream_sid
        if sid is None or self._closed:
            return
        messages = [media_message(sid, frame) for frame in frames]
        messages.append(mark_message(sid, tag))
        self._send(messages)

    def send_clear(self) -> None:
        """Barge-in: unsent audio is dropped here and `clear` goes out ahead of anything else."""
        sid = self.protocol.stream_sid
        if sid is None or self._closed:
            return
        self._outbox.clear()
        self._send([clear_message(sid)])

    def _send(self, messages: list[str]) -> None:
        """Write now when nothing is queued and the socket takes it; else queue for the writer task.

        Writing in the caller's turn of the event loop saves the hop to the writer task: at a few
        hundred calls a loop pass is milliseconds, and barge-in (`clear`) is measured in them.
        """
        if not self._outbox and self._write_now(messages):
            return
        self._outbox.extend(messages)
        self._wake.set()

    def _write_now(self, messages: list[str]) -> bool:
        writer = getattr(self.ws, "_writer", None)
        write = getattr(writer, "_write_websocket_frame", None)  # aiohttp's synchronous frame write
        transport = getattr(writer, "transport", None)
        if (
            write is None
            or transport is None
            or transport.is_closing()
            or getattr(writer, "_closing", True)
            or transport.get_write_buffer_size() > WRITE_NOW_LIMIT
        ):
            return False
        tap = self._tap
        for text in messages:
            if tap is not None:
                tap.record("phone", "out", text)
            write(text.encode(), aiohttp.WSMsgType.TEXT, 0)
        return True

    async def hangup(self) -> None:
        call_sid = self.protocol.call_sid
        if self.rest is not None and call_sid:
            try:
                if not await self.rest.hangup(call_sid):
                    self.log.info("hang-up: the call had already ended")
            except (TwilioRestError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.log.warning("REST hang-up failed (%s); closing the stream ends the call", exc)
        # With nothing after <Connect> in our TwiML, closing the socket ends the call too.
        await self.close()

    async def transfer(self, target: str) -> None:
        call_sid = self.protocol.call_sid
        if self.rest is None or not call_sid:
            raise RuntimeError("transfer needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        await self.rest.transfer(call_sid, target)

    # -- the socket -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._outbox:
                    text = self._outbox.popleft()
                    tap = self._tap
                    if tap is not None:
                        tap.record("phone", "out", text)
                    await ws.send_str(text)
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError) as exc:
            self.log.debug("media socket write failed: %s", exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)

    def on_admitted(self) -> None:
        """The call passed authorisation and admission: record from here on, start message first."""
        self._tap = WIRETAP.get()
        if self._tap is not None and self._start_text is not None:
            self._tap.record("phone", "in", self._start_text)
        self._start_text = None

    def _bad(self, event: BadInput) -> None:
        self.hooks.on_bad_input(event.kind.value)
        self.log.warning("bad input from Twilio (%s): %s", event.kind.value, event.detail)

    async def run(self) -> None:
        """Serve the socket until the stream stops, the caller hangs up or the bridge ends the call."""
        self._writer = asyncio.create_task(self._write_loop(), name="twilio-writer")
        try:
            if await self._await_start():
                await self._stream()
        finally:
            bridge = self.bridge
            if bridge is not None:
                if not bridge.ended:
                    await bridge.on_hangup()
                self.hooks.on_call_end(bridge)
            await self.close()
            if self._writer is not None and not self._writer.done():
                self._writer.cancel()

    async def _await_start(self) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.log.warning("no start within %.0fs; closing", START_TIMEOUT_S)
                await self.ws.close(code=1008, message=b"no start")
                return False
            try:
                msg = await self.ws.receive(timeout=remaining)
            except asyncio.TimeoutError:
                continue
            events = self._parse(msg)
            if events is None:
                return False
            for event in events:
                if isinstance(event, BadInput):
                    self._bad(event)
                elif isinstance(event, Start):
                    self._start_text = msg.data
                    return await self._on_start(event)
                elif isinstance(event, Stop):
                    return False

    async def _on_start(self, start: Start) -> bool:
        from telephony_agent.logs import call_logger

        self.log = call_logger(__name__, start.call_sid)
        if not self.hooks.authorize(start):
            self.log.warning("media stream refused: no valid signature or stream token")
            await self.ws.close(code=1008, message=b"unauthorized")
            return False
        try:
            self.bridge = await self.hooks.make_bridge(start, self)
        except CallRefused as exc:
            self.log.warning("media stream refused: %s", exc.reason)
            await self.ws.close(code=1013, message=f"refused: {exc.reason}".encode())
            return False
        return True

    async def _stream(self) -> None:
        bridge = self.bridge
        assert bridge is not None
        # When the bridge ends the call it closes this socket, which ends the loop.
        while not bridge.ended:
            events = self._parse(await self.ws.receive())
            if events is None:
                return
            for event in events:
                if isinstance(event, Media):
                    await bridge.on_caller_audio(event.payload)
                elif isinstance(event, MarkEcho):
                    bridge.on_played(event.name)
                elif isinstance(event, Dtmf):
                    await bridge.on_dtmf(event.digit)
                elif isinstance(event, Stop):
                    await bridge.on_hangup()
                    return
                elif isinstance(event, BadInput):
                    self._bad(event)

    def _parse(self, msg: aiohttp.WSMessage) -> list | None:
        """Events in a frame, or None when the socket has closed."""
        if self._tap is not None and msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self._tap.record("phone", "in", msg.data)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return self.protocol.receive_text(msg.data)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return self.protocol.receive_bytes(msg.data)
        if msg.type is aiohttp.WSMsgType.ERROR:
            self.log.warning("media socket error: %s", msg.data)
        return None
