"""The asyncio shell around one Twilio Media Stream WebSocket: protocol in, `CallBridge` out.

Everything Twilio-specific about a live call lives here: the sans-I/O `MediaStreamProtocol`
parses frames; this class is the call's `PhoneLeg` (mu-law 20 ms frames, each chunk followed by
a mark named by its tag; `clear`; hang-up and transfer through the REST API) and feeds the
bridge's `LegEvents` (media -> `on_caller_audio`, mark echo -> `on_played`, `stop` -> `on_hangup`).

Before `start` is authorised the socket is a stranger's: nothing is recorded or logged (bad
frames only move counters), at most `EARLY_FRAMES` small frames are kept (to record once the
call is authorised), a flood of bad frames or no `start` within the start timeout closes it,
and every refusal's close reason says what was wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web

from telephony_agent.logs import LogBudget
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.calls import CallRefused
from telephony_agent.telephony.leg import PCMU_20MS, PhoneFormat
from telephony_agent.telephony.twilio.rest import TwilioRest, TwilioRestError
from telephony_agent.telephony.twilio.stream import (
    BadInput,
    Dtmf,
    Event,
    MarkEcho,
    Media,
    MediaStreamProtocol,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
)
from telephony_agent.telephony.twilio.stream_auth import redact_start
from telephony_agent.websocket_read import InPlaceReader, Work, read_frames
from telephony_agent.websocket_write import FrameWriter
from telephony_agent.wiretap import WIRETAP, Wiretap

log = logging.getLogger(__name__)

START_TIMEOUT_S = 5.0
WS_MAX_MSG_SIZE = 4 * 1024 * 1024  # above the protocol's 64 KiB so oversize is counted, not fatal
WS_MAX_MSG_SIZE_UNAUTHENTICATED = 256 * 1024  # a socket nobody vouched for yet: larger is fatal
EARLY_FRAMES = 4  # frames before `start` kept for the recording (Twilio sends one: `connected`)
EARLY_BYTES = 4096
MAX_BAD_BEFORE_START = 32  # a stranger sending this much junk is closed
BAD_INPUT_LOG_INTERVAL_S = 10.0
CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 125 bytes with the code


def close_reason(text: str) -> bytes:
    """A WebSocket close reason: UTF-8, cut to what a close frame can carry."""
    return text.encode("utf-8")[:CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode("utf-8")


@dataclass
class MediaSocketHooks:
    """What the server supplies: authorise a `start`, build the bridge, count bad input.

    `authorize` returns None to admit the call, else the refusal reason (the close reason).
    `make_bridge` may raise `CallRefused` (admission). Recording starts at `on_admitted`, which
    the call manager calls once the call's WIRETAP is set.
    """

    authorize: Callable[[Start], str | None]
    make_bridge: Callable[[Start, TwilioMediaSocket], Awaitable[CallBridge]]
    on_bad_input: Callable[[str], None]
    on_call_end: Callable[[CallBridge], None]
    start_timeout: float = START_TIMEOUT_S


class TwilioMediaSocket:
    """Implements `PhoneLeg` over one Media Stream socket."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        hooks: MediaSocketHooks,
        rest: TwilioRest | None = None,
        request: web.BaseRequest | None = None,
    ) -> None:
        self.ws = ws
        self.request = request  # given, the call's frames are handled where they are read
        self.reader: InPlaceReader | None = None
        self.hooks = hooks
        self.rest = rest
        self.protocol = MediaStreamProtocol()
        self.bridge: CallBridge | None = None
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log
        self._frames = FrameWriter(ws, "media socket", self.log, self._record_out)
        self._closed = False
        self._tap: Wiretap | None = None  # the call's WIRETAP, read once the call is authorised
        self.authorized = False
        self.close_reason: str | None = None
        self._early: list[str] = []
        self._early_bytes = 0
        self._log_budget = LogBudget(BAD_INPUT_LOG_INTERVAL_S)
        self._start_text: str | None = None  # recorded only once the call is admitted

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
        """One media message with the chunk's frames, then a mark named `tag` (echoed once they
        have played). Twilio takes media payloads of any length; one message per chunk instead
        of one per 20 ms frame is fewer WebSocket frames to build, write and parse on both ends."""
        sid = self.protocol.stream_sid
        if sid is None or self._closed:
            return
        self._send([media_message(sid, frames[0] if len(frames) == 1 else b"".join(frames)), mark_message(sid, tag)])

    def send_clear(self) -> None:
        """Barge-in: unsent audio is dropped here and `clear` goes out ahead of anything else."""
        sid = self.protocol.stream_sid
        if sid is None or self._closed:
            return
        self._frames.drop_unsent()
        self._send([clear_message(sid)])

    def _send(self, messages: list[str]) -> None:
        """Written at the end of this pass of the event loop, with every other socket's frames
        (`FrameWriter`): at once while nothing is queued and the socket takes data (no hop to the
        writer task: at a few hundred calls a loop pass is milliseconds, and barge-in, `clear`,
        is measured in them), else queued for the writer task."""
        self._frames.send(messages)

    def _record_out(self, text: str) -> None:
        tap = self._tap
        if tap is not None:
            tap.record("phone", "out", text)

    async def hangup(self) -> None:
        call_sid = self.protocol.call_sid
        if self.rest is not None and call_sid:
            try:
                if not await self.rest.hangup(call_sid):
                    self.log.info("hang-up: the call had already ended")
            except (TimeoutError, TwilioRestError, aiohttp.ClientError) as exc:
                self.log.warning("REST hang-up failed (%s); closing the stream ends the call", exc)
        # With nothing after <Connect> in our TwiML, closing the socket ends the call too.
        await self.close()

    async def transfer(self, target: str) -> None:
        call_sid = self.protocol.call_sid
        if self.rest is None or not call_sid:
            raise RuntimeError("transfer needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        await self.rest.transfer(call_sid, target)

    # -- the socket -------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._frames.close(2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)
        if self.reader is not None:
            self.reader.wake()  # a task waiting for frames finds the socket closed

    def on_admitted(self) -> None:
        """The call passed authorisation and admission: record from here on, its first frames first.

        Called by the call manager once the call's recorder is its WIRETAP, before any audio flows.
        What arrived before is recorded now: the few early frames kept, then `start`, token blanked.
        """
        self.authorized = True
        self._tap = tap = WIRETAP.get()
        if tap is not None:
            for text in self._early:
                tap.record("phone", "in", text)
            if self._start_text is not None:
                tap.record("phone", "in", _redacted(self._start_text))
        self._early.clear()
        self._start_text = None

    def _bad(self, event: BadInput) -> None:
        """Count every bad frame; log only for an authorised call, at most one line per kind a while."""
        self.hooks.on_bad_input(event.kind.value)
        if not self.authorized:
            return
        dropped = self._log_budget.allow(event.kind.value, time.monotonic())
        if dropped is None:
            return
        more = f" ({dropped} more of this kind not logged)" if dropped else ""
        self.log.warning("bad input from Twilio (%s): %s%s", event.kind.value, event.detail, more)

    async def _refuse(self, code: int, reason: str) -> bool:
        self.close_reason = reason
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, message=close_reason(reason)), 2.0)
        return False

    async def run(self) -> None:
        """Serve the socket until the stream stops, the caller hangs up or the bridge ends the call."""
        self._frames.start()
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
            writer = self._frames.task
            if writer is not None and not writer.done():
                writer.cancel()

    async def _await_start(self) -> bool:
        """Until an authorised `start`: nothing logged, recorded or kept beyond a few small frames."""
        loop = asyncio.get_running_loop()
        timeout = self.hooks.start_timeout
        deadline = loop.time() + timeout
        bad = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await self._refuse(1008, f"no start within {timeout:g}s")
            try:
                msg = await self.ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            events = self._parse(msg)
            if events is None:
                return False
            for event in events:
                if isinstance(event, BadInput):
                    self._bad(event)
                    if event.event == "start":
                        return await self._refuse(1008, f"bad start: {event.detail}")
                    bad += 1
                    if bad >= MAX_BAD_BEFORE_START:
                        return await self._refuse(1008, f"{bad} bad frames before start; last: {event.kind.value}")
                elif isinstance(event, Start):
                    self._start_text = msg.data
                    return await self._on_start(event)
                elif isinstance(event, Stop):
                    return False
                elif len(self._early) < EARLY_FRAMES and self._early_bytes + len(msg.data) <= EARLY_BYTES:
                    self._early.append(msg.data)
                    self._early_bytes += len(msg.data)

    async def _on_start(self, start: Start) -> bool:
        from telephony_agent.logs import call_logger

        refusal = self.hooks.authorize(start)
        if refusal is not None:
            return await self._refuse(1008, f"refused: {refusal}")
        self.log = self._frames.log = call_logger(__name__, start.call_sid)
        try:
            self.bridge = await self.hooks.make_bridge(start, self)
        except CallRefused as exc:
            self.log.info("call refused at start: %s", exc.reason, extra={"event": "call_refused"})
            return await self._refuse(1013, f"refused: {exc.reason}")
        self.authorized = True
        return True

    async def _stream(self) -> None:
        """The call's frames: media and mark echoes where the socket reads them (`InPlaceReader`),
        the rest here, in order; without the reader (no request, or an aiohttp it does not know)
        all of them here."""
        bridge = self.bridge
        assert bridge is not None
        if self.request is not None:
            self.reader = InPlaceReader.install(self.ws, self.request.protocol, self._text_now)

        async def read_one() -> bool:
            events = self._parse(await self.ws.receive())
            return events is not None and not await self._handle(events)

        # When the bridge ends the call it closes this socket, which ends the loop.
        await read_frames(self.reader, read_one, lambda: not bridge.ended)

    def _text_now(self, text: str) -> Work | None:
        """A text frame handled where the socket read it: media and mark echoes here, what is
        left (a key, `stop`, a frame the bridge cannot finish at once) for `_stream`'s task."""
        bridge = self.bridge
        assert bridge is not None
        if bridge.ended:
            return _over()
        if self._tap is not None:
            self._tap.record("phone", "in", text)
        events = self.protocol.receive_text(text)
        for i, event in enumerate(events):
            if isinstance(event, Media):
                rest = bridge.caller_audio_now(event.payload)
                if rest is not None:
                    return self._after(rest, events[i + 1:])
            elif isinstance(event, MarkEcho):
                bridge.on_played(event.name)
            elif isinstance(event, BadInput):
                self._bad(event)
            else:
                return self._handle(events[i:])
        return None

    async def _after(self, rest: Awaitable[None], events: list[Event]) -> bool:
        await rest
        return await self._handle(events)

    async def _handle(self, events: list[Event]) -> bool:
        """The call's events from one frame; True once the stream is over (`stop`)."""
        bridge = self.bridge
        assert bridge is not None
        for event in events:
            if isinstance(event, Media):
                await bridge.on_caller_audio(event.payload)
            elif isinstance(event, MarkEcho):
                bridge.on_played(event.name)
            elif isinstance(event, Dtmf):
                await bridge.on_dtmf(event.digit)
            elif isinstance(event, Stop):
                await bridge.on_hangup()
                return True
            elif isinstance(event, BadInput):
                self._bad(event)
        return False

    def _parse(self, msg: aiohttp.WSMessage) -> list[Event] | None:
        """Events in a frame, or None when the socket has closed. Recorded only once authorised."""
        if self._tap is not None and msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self._tap.record("phone", "in", msg.data)
        if msg.type is aiohttp.WSMsgType.TEXT:
            return self.protocol.receive_text(msg.data)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return self.protocol.receive_bytes(msg.data)
        if msg.type is aiohttp.WSMsgType.ERROR and self.authorized:
            self.log.warning("media socket error: %s", msg.data)
        return None


async def _over() -> bool:
    return True


def _redacted(frame: str) -> str:
    """The `start` frame as recordings keep it: any stream token blanked."""
    try:
        parsed = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame
    if not isinstance(parsed, dict):
        return frame
    redacted = redact_start(parsed)
    return frame if redacted is parsed else orjson.dumps(redacted).decode("utf-8")
