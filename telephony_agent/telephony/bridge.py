"""`CallBridge`: one phone call bridged to one realtime session, independent of the phone transport.

A transport (Twilio Media Streams today, SIP later) hands the bridge caller audio, DTMF and
mark echoes, and gives it a `CallTransport` to send audio, marks and `clear`, and to hang up or
transfer. The bridge talks to a `RealtimeSession` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from telephony_codecs import Framer, Transcoder

from telephony_agent.realtime import (
    PCMU_8K,
    AudioChunk,
    AudioDelta,
    AudioDone,
    AudioEncoding,
    AudioFormat,
    ErrorEvent,
    FunctionCallDone,
    InputTranscriptCompleted,
    Interrupted,
    OutputTranscriptDone,
    RealtimeConfig,
    Reconnected,
    RealtimeError,
    RealtimeModel,
    RealtimeRunner,
    RealtimeSession,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    ToolRegistry,
)
from telephony_agent.telephony.assets import prompt_ulaw
from telephony_agent.telephony.playout import FRAME_BYTES, Playout

log = logging.getLogger(__name__)

SILENCE_ULAW = b"\xff"
EARLY_AUDIO_FRAMES = 150  # 3 s of caller audio kept while the provider session opens


class CallTransport(Protocol):
    """What the bridge needs from the phone leg. Sends never block; they queue in order."""

    def send_frames(self, frames: list[bytes], mark: str) -> None: ...

    def send_clear(self) -> None: ...

    async def hangup(self) -> None: ...

    async def transfer(self, target: str) -> None: ...

    async def close(self) -> None:
        """End the media leg without hanging up (the phone side is already gone or moving on)."""


class CallOutcome(str, enum.Enum):
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    PROVIDER_FAILED = "provider_failed"
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"
    SERVER_SHUTDOWN = "server_shutdown"


@dataclass(frozen=True)
class BridgeOptions:
    playout_lead_ms: int = 200
    max_call_seconds: float = 3600.0
    idle_timeout_seconds: float = 30.0
    tool_timeout_seconds: float = 10.0
    greeting: str | None = None
    speak_first: bool = False  # ask for a response at once even without a greeting text (scripted engines)
    transfer_allowlist: tuple[str, ...] = ()
    goodbye_wait_seconds: float = 15.0


@dataclass
class CallStats:
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    clear_latency_ms: list[float] = field(default_factory=list)
    truncates: list[tuple[str, int]] = field(default_factory=list)
    first_audio_ms: float | None = None
    dtmf: list[str] = field(default_factory=list)
    tool_calls: list[str] = field(default_factory=list)
    provider_errors: int = 0
    reconnects: int = 0
    transcript: list[tuple[str, str]] = field(default_factory=list)


DtmfHook = Callable[[str], Awaitable[None] | None]


class CallBridge:
    def __init__(
        self,
        call_id: str,
        model: RealtimeModel,
        config: RealtimeConfig,
        transport: CallTransport,
        options: BridgeOptions | None = None,
        *,
        tools: ToolRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        self.call_id = call_id
        self.model = model
        self.options = options or BridgeOptions()
        self.transport = transport
        self.tools = tools if tools is not None else ToolRegistry()
        self.clock = clock
        self.log = logger or logging.LoggerAdapter(log, {"call_id": call_id})
        self.stats = CallStats()
        self.dtmf_hooks: list[DtmfHook] = []
        self.playout = Playout(lead_ms=self.options.playout_lead_ms)
        self.session: RealtimeSession | None = None
        self.runner: RealtimeRunner | None = None
        self.outcome: CallOutcome | None = None
        self._register_builtin_tools()
        self._config = config  # completed by start(): greeting and tools registered until then
        self._started_at = clock()
        self._ended = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._event_task: asyncio.Task[None] | None = None
        self._inbound: Transcoder | None = None  # mu-law 8k -> provider input; None: passthrough
        self._outbound: dict[int, Transcoder] = {}  # provider output rate -> mu-law 8k
        self._framer = Framer(FRAME_BYTES)
        self._out_item: str | None = None
        self._interrupted_items: set[str] = set()
        self._after_playout: Callable[[], Awaitable[None]] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_due = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._max_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._input_format: AudioFormat = PCMU_8K
        self._early_audio: list[bytes] = []

    # -- set-up ---------------------------------------------------------------------------

    def _prepare_config(self, config: RealtimeConfig) -> RealtimeConfig:
        instructions = config.instructions
        if self.options.greeting:
            instructions = (
                f"{instructions}\n\nThe call has just connected. Begin by greeting the caller with: "
                f"\"{self.options.greeting}\""
            ).strip()
        tools = tuple({t.name: t for t in (*config.tools, *self.tools.definitions)}.values())
        return config.with_changes(instructions=instructions, tools=tools)

    def _register_builtin_tools(self) -> None:
        from telephony_agent.telephony.call_tools import register_call_tools

        register_call_tools(self)

    async def start(self) -> None:
        """Open the provider session and start handling its events. A failure is spoken to the caller."""
        loop = asyncio.get_running_loop()
        self._max_timer = loop.call_later(self.options.max_call_seconds, self._on_max_duration)
        self._config = self._prepare_config(self._config)
        try:
            self.session = await self.model.connect(self._config)
        except (RealtimeError, OSError) as exc:
            self.stats.provider_errors += 1
            self.log.error("provider %s unreachable: %s", self.model.provider, exc)
            self._fail_politely()
            return
        self._input_format = self.session.input_format
        if self._input_format != PCMU_8K:
            if self._input_format.encoding is not AudioEncoding.PCM16:
                raise RealtimeError(f"unsupported provider input format {self._input_format}")
            self._inbound = Transcoder.ulaw8k_to_pcm(self._input_format.sample_rate)
        self.runner = RealtimeRunner(
            self.session, self.tools, tool_timeout=self.options.tool_timeout_seconds, logger=self.log
        )
        early, self._early_audio = self._early_audio, []
        if early:
            await self._send_inbound(self.session, b"".join(early))
        self._event_task = asyncio.create_task(self._event_loop(), name=f"call-events-{self.call_id}")
        if self.options.greeting or self.options.speak_first:
            await self._safe(self.session.create_response())
        self._arm_idle_timer()

    # -- inbound from the phone leg --------------------------------------------------------

    async def on_media(self, ulaw: bytes) -> None:
        self.stats.frames_in += 1
        session = self.session
        if session is None:
            if not self._closing and len(self._early_audio) < EARLY_AUDIO_FRAMES:
                self._early_audio.append(ulaw)  # the caller spoke while the provider was connecting
            return
        if self._closing:
            return
        await self._send_inbound(session, ulaw)

    async def _send_inbound(self, session: RealtimeSession, ulaw: bytes) -> None:
        data = ulaw if self._inbound is None else self._inbound.process(ulaw)
        try:
            await session.send_audio(AudioChunk(data, self._input_format))
        except RealtimeError as exc:
            self.log.debug("audio not sent: %s", exc)

    async def on_dtmf(self, digit: str) -> None:
        self.stats.dtmf.append(digit)
        self._arm_idle_timer()
        for hook in self.dtmf_hooks:
            result = hook(digit)
            if asyncio.iscoroutine(result):
                await result
        if self.session is not None and not self._closing:
            await self._safe(self.session.send_text(f"The caller pressed {digit}."))

    def on_mark(self, name: str) -> None:
        self.playout.on_mark(name, self.clock())
        self._pump()

    async def on_stop(self) -> None:
        """The caller hung up (or the phone leg ended the stream)."""
        await self.end(CallOutcome.CALLER_HANGUP, hangup=False)

    # -- provider events -------------------------------------------------------------------

    async def _event_loop(self) -> None:
        assert self.runner is not None and self.session is not None
        try:
            async for event in self.runner.events():
                received = self.clock()
                if isinstance(event, AudioDelta):
                    self._on_audio(event)
                elif isinstance(event, (SpeechStarted, Interrupted)):
                    self._cancel_idle_timer()
                    await self._barge_in(received)
                elif isinstance(event, SpeechStopped):
                    self._arm_idle_timer()
                elif isinstance(event, (AudioDone, ResponseDone)):
                    self._flush_outbound()
                elif isinstance(event, FunctionCallDone):
                    self.stats.tool_calls.append(event.name)
                    self.log.info("tool call %s", event.name)
                elif isinstance(event, InputTranscriptCompleted):
                    self.stats.transcript.append(("caller", event.transcript))
                    self.log.debug("caller said: %s", event.transcript)
                elif isinstance(event, OutputTranscriptDone):
                    self.stats.transcript.append(("agent", event.transcript))
                    self.log.debug("agent said: %s", event.transcript)
                elif isinstance(event, ErrorEvent):
                    self.stats.provider_errors += 1
                    self.log.warning("provider error %s: %s", event.code, event.message)
                    if event.fatal:
                        break
                elif isinstance(event, Reconnected):
                    self.stats.reconnects += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not leave the caller in silence
            self.log.exception("call event loop failed")
        if not self._closing:
            reason = self.session.disconnect_reason if self.session else None
            self.log.error("provider session ended mid-call: %s", reason)
            self._fail_politely()

    def _on_audio(self, event: AudioDelta) -> None:
        if event.item_id in self._interrupted_items or self._closing:
            return
        if event.item_id != self._out_item:
            if self._after_playout is not None:
                return  # the call is ending after what is already queued: nothing new is said
            self._flush_outbound()
            self._out_item = event.item_id
        self._play(event.item_id, self._to_ulaw(event.data, event.format))

    def _to_ulaw(self, data: bytes, fmt: AudioFormat) -> bytes:
        if fmt == PCMU_8K:
            return data
        if fmt.encoding is not AudioEncoding.PCM16:
            raise RealtimeError(f"unsupported provider output format {fmt}")
        transcoder = self._outbound.get(fmt.sample_rate)
        if transcoder is None:
            transcoder = self._outbound[fmt.sample_rate] = Transcoder.pcm_to_ulaw8k(fmt.sample_rate)
        return transcoder.process(data)

    def _play(self, item_id: str, ulaw: bytes) -> None:
        frames = self._framer.push(ulaw)
        if frames:
            if self.stats.first_audio_ms is None:
                self.stats.first_audio_ms = (self.clock() - self._started_at) * 1000
            self.playout.push(item_id, frames)
            self._pump()

    def _flush_outbound(self) -> None:
        """End of an item: drain resampler tails and pad the last frame with silence."""
        if self._out_item is None:
            return
        tail = b"".join(t.flush() for t in self._outbound.values())
        self._outbound.clear()
        if tail:
            self.playout.push(self._out_item, self._framer.push(tail))
        last = self._framer.flush(pad=SILENCE_ULAW)
        if last:
            self.playout.push(self._out_item, [last])
        self._out_item = None
        self._pump()

    def _pump(self) -> None:
        now = self.clock()
        for send in self.playout.poll(now):
            self.stats.frames_out += len(send.frames)
            self.transport.send_frames(send.frames, send.mark)
        self._arm_watchdog()
        if self.playout.idle:
            self._on_playout_idle()

    def _arm_watchdog(self) -> None:
        # Hot path (every frame and mark): move a deadline instead of cancelling and
        # re-creating a timer each time; one timer per call re-checks the deadline when it fires.
        if self.playout.idle or self._ended.is_set():
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            return
        loop = asyncio.get_running_loop()
        self._watchdog_due = loop.time() + self.playout.lead_ms / 1000 + self.playout.watchdog_s
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._watchdog_due, self._watchdog_timer)

    def _watchdog_timer(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._watchdog_due:
            self._watchdog = loop.call_at(self._watchdog_due, self._watchdog_timer)
            return
        self._on_watchdog()

    def _on_watchdog(self) -> None:
        self._watchdog = None
        if self.playout.watchdog(self.clock()):
            self.log.warning("phone leg stopped echoing marks; assuming audio played")
        self._pump()

    def _on_playout_idle(self) -> None:
        if self._after_playout is not None and self._out_item is None:
            action, self._after_playout = self._after_playout, None
            self._spawn(action())
        elif not self._closing:
            self._arm_idle_timer()

    # -- barge-in --------------------------------------------------------------------------

    async def _barge_in(self, received: float) -> None:
        item = self.playout.current_item or self._out_item
        if item is None or self._after_playout is not None:
            return  # the agent is silent (or saying a final goodbye): nothing to interrupt
        played = self.playout.played_ms(item, self.clock())
        if self._out_item is not None:
            self._interrupted_items.add(self._out_item)
        self._interrupted_items.add(item)
        self._drop_output()
        self.stats.clear_latency_ms.append((self.clock() - received) * 1000)
        self.stats.barge_ins += 1
        self.stats.truncates.append((item, played))
        self.log.info("barge-in: caller heard %d ms of %s", played, item)
        session = self.session
        if session is not None:
            await self._safe(session.interrupt(audio_end_ms=played))
            if self._config.turn_detection.manual:
                await self._safe(session.clear_audio())

    def _drop_output(self) -> None:
        """`clear` the phone leg and forget every bit of agent audio not yet heard."""
        self.transport.send_clear()
        self.playout.clear()
        self._framer.clear()
        self._outbound.clear()
        self._out_item = None

    # -- call control (used by the built-in tools) ------------------------------------------

    def after_playout(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once everything queued so far has been heard (by mark), e.g. hang up."""
        self._after_playout = action
        if self.playout.idle and self._out_item is None:
            self._after_playout = None
            self._spawn(action())
        else:
            self._spawn(self._bounded_after_playout())

    async def _bounded_after_playout(self) -> None:
        await asyncio.sleep(self.options.goodbye_wait_seconds)
        if self._after_playout is not None:
            action, self._after_playout = self._after_playout, None
            self.log.warning("playout did not finish in %.0fs; acting anyway", self.options.goodbye_wait_seconds)
            await action()

    async def hangup_after_playout(self, outcome: CallOutcome = CallOutcome.AGENT_HANGUP) -> None:
        async def hang_up() -> None:
            await self.end(outcome, hangup=True)

        self.after_playout(hang_up)

    async def transfer_after_playout(self, target: str) -> None:
        async def transfer() -> None:
            try:
                await self.transport.transfer(target)
            except Exception as exc:  # noqa: BLE001
                self.log.error("transfer to %s failed: %s", target, exc)
                await self.end(CallOutcome.PROVIDER_FAILED, hangup=True)
                return
            await self.end(CallOutcome.TRANSFERRED, hangup=False)

        self.after_playout(transfer)

    def _say_prompt(self, name: str, then: CallOutcome) -> None:
        """Play a pre-rendered prompt (no provider needed), then hang up."""
        if self._after_playout is not None:
            return
        self._drop_output()
        frames = self._framer.push(prompt_ulaw(name))
        last = self._framer.flush(pad=SILENCE_ULAW)
        self.playout.push(f"prompt-{name}", frames + ([last] if last else []))
        self._closing = True

        async def hang_up() -> None:
            await self.end(then, hangup=True)

        self.after_playout(hang_up)
        self._pump()

    def _fail_politely(self) -> None:
        if not self._ended.is_set():
            self._say_prompt("apology", CallOutcome.PROVIDER_FAILED)

    def _on_max_duration(self) -> None:
        self.log.info("call reached AGENT_MAX_CALL_SECONDS=%s", self.options.max_call_seconds)
        self._say_prompt("time_limit", CallOutcome.MAX_DURATION)

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        if not self._closing and not self._ended.is_set():
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.options.idle_timeout_seconds, self._on_idle_timeout
            )

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self.playout.idle and self._out_item is None and not (self.runner and self.runner.busy):
            self.log.info("caller silent for %.0fs; ending the call", self.options.idle_timeout_seconds)
            self._say_prompt("idle", CallOutcome.IDLE_TIMEOUT)
        else:
            self._arm_idle_timer()

    async def shutdown(self) -> None:
        """Server is draining past its deadline: end politely."""
        self._say_prompt("shutdown", CallOutcome.SERVER_SHUTDOWN)

    # -- teardown --------------------------------------------------------------------------

    async def end(self, outcome: CallOutcome, *, hangup: bool) -> None:
        if self._ended.is_set():
            return
        self.outcome = outcome
        self._closing = True
        self._ended.set()
        for timer in (self._watchdog, self._idle_timer, self._max_timer):
            if timer is not None:
                timer.cancel()
        self.log.info("call ended: %s", outcome.value)
        try:
            await asyncio.wait_for(self.transport.hangup() if hangup else self.transport.close(), 10.0)
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            self.log.warning("ending the phone leg failed: %s", exc)
        await self._teardown()

    async def _teardown(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.session.close(), 3.0)
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, self._event_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)

    async def wait_ended(self) -> CallOutcome | None:
        await self._ended.wait()
        return self.outcome

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _safe(self, awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except RealtimeError as exc:
            self.log.warning("provider call failed: %s", exc)
