"""`CallBridge`: one phone call bridged to one realtime session, independent of the phone carrier.

A transport (a carrier's media stream, SIP/RTP, ...) hands the bridge a `PhoneLeg` and feeds it the
leg's events through `LegEvents` (`on_caller_audio`, `on_dtmf`, `on_played`, `on_hangup`). The
bridge converts audio to and from the leg's `PhoneFormat` (either G.711 law, any packet time),
talks to a `RealtimeSession`, and never learns which carrier it is on.

Timing is sans-I/O: the bridge reads one injected clock and keeps every deadline of the call
itself (idle, maximum duration, playout pacing and the fallback when a leg stops confirming, the
bound on a goodbye, a silent leg). `get_timer()` says when the earliest is due and
`handle_timer(now)` acts on what is due. `CallTimer`, the asyncio shell, arms one event-loop timer
per call for it; tests drive both by hand on a virtual clock. The bridge stays async only where
it awaits the session or the leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from telephony_agent.logs import LogBudget
from telephony_agent.per_loop import PerLoop
from telephony_agent.realtime import (
    AudioChunk,
    AudioDelta,
    AudioDone,
    AudioEncoding,
    AudioFormat,
    ErrorEvent,
    FunctionCallDone,
    InputTranscriptCompleted,
    Interrupted,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    RealtimeConfig,
    RealtimeError,
    RealtimeModel,
    RealtimeRunner,
    RealtimeSession,
    Reconnected,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    SpeechStarted,
    SpeechStopped,
    ToolRegistry,
    ToolRoundsCapped,
)
from telephony_agent.telephony.assets import prompt_audio
from telephony_agent.telephony.call_tools import register_call_tools
from telephony_agent.telephony.leg import AudioLaw, PhoneLeg
from telephony_agent.telephony.loop_timer import SharedTimer, fired_at
from telephony_agent.telephony.pacing import Confirmer, PacingClock
from telephony_agent.telephony.playout import Playout
from telephony_agent.telephony.token_bucket import TokenBucket
from telephony_agent.telephony.turns import (
    BatchedSileroScorer,
    DeadAirAction,
    DeadAirDecision,
    DeadAirGuard,
    SileroBatch,
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
    TurnState,
    TurnStats,
    make_scorer,
)
from telephony_codecs import Framer, Transcoder, alaw_to_pcm16, ulaw_to_pcm16

__all__ = [
    "EARLY_AUDIO_MS",
    "EARLY_DIGITS",
    "KEYS_PER_S",
    "KEY_BURST",
    "BridgeOptions",
    "CallBridge",
    "CallOutcome",
    "CallPhase",
    "CallStats",
    "CallTimer",
    "DtmfHook",
    "loop_silero_batch",
]

log = logging.getLogger(__name__)

EARLY_AUDIO_MS = 3000  # caller audio kept while the provider session opens
EARLY_DIGITS = 32  # keys kept while the provider session opens (a caller keying ahead, not a flood)
# Keys a call passes on (hooks, and a model request each): a person keys a few a second, a dialler
# sending a number at the fastest RFC 4733 / Q.24 timing about 12 in a burst; past that it is a
# flood, and each key would cost a response from a paid model.
KEYS_PER_S = 10.0
KEY_BURST = 20
# Caller audio a call passes on (the detector, then the provider, which bills by audio time): a
# phone sends it in real time, and a network stall delivers its backlog at once; more than that,
# sustained, is a peer flooding the call, whose audio would cost the CPU of several calls and a
# paid provider several times the call's length. A clock 5 % fast is still far inside the rate.
AUDIO_RATE = 1.05  # times real time
AUDIO_BURST_S = 5.0

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class CallOutcome(str, enum.Enum):
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    PROVIDER_FAILED = "provider_failed"
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    LEG_TIMEOUT = "leg_timeout"  # the phone leg went silent: no audio, no confirmations


class CallPhase(str, enum.Enum):
    """Where the call is in its life; what the bridge accepts follows from it."""

    CONNECTING = "connecting"  # the provider session is opening: caller audio and keys are held
    LIVE = "live"  # caller and agent talk
    FINISHING = "finishing"  # a hang-up or transfer waits for the agent's last words to play
    PROMPTING = "prompting"  # a pre-rendered prompt plays, then the call ends; the provider is not heard
    ENDED = "ended"


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
    leg_timeout_seconds: float = 10.0  # no caller audio and no playout confirmation this long: end the call
    playout_fallback_seconds: float = 1.0  # a confirming leg this late is paced by the clock instead
    # Turn-taking (telephony/turns.py): the bridge's own caller-speech detector and dead-air guard.
    vad: str = "silero"  # silero | energy | off
    min_interruption_ms: int = 250
    backchannel_ms: int = 800
    response_timeout_seconds: float = 4.0
    max_tool_rounds: int = 5
    filler_after_seconds: float = 2.0
    # Silero's windows are scored with other calls' on the loop (`speech_scorers.SileroBatch`),
    # waiting up to this long for company under load (0: what one pass of the loop brings)
    vad_batch_ms: int = 10


@dataclass
class CallStats:
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    clear_latency_ms: list[float] = field(default_factory=list)
    truncates: list[tuple[str, int]] = field(default_factory=list)
    first_audio_ms: float | None = None
    dtmf: list[str] = field(default_factory=list)
    dtmf_dropped: int = 0  # keys over the call's rate (`KEYS_PER_S`): a flood, not a person
    audio_dropped_ms: float = 0.0  # caller audio past real time (`AUDIO_RATE`, `AUDIO_BURST_S`): a flood
    tool_calls: list[str] = field(default_factory=list)
    provider_errors: int = 0
    reconnects: int = 0
    transcript: list[tuple[str, str]] = field(default_factory=list)


DtmfHook = Callable[[str], Awaitable[None] | None]


def _silero_batch(_loop: asyncio.AbstractEventLoop) -> SileroBatch:
    """A loop's Silero batch, run by its own timer. Neither holds the loop (`SharedTimer`)."""
    batch = SileroBatch(_loop_time)
    batch.on_add = SharedTimer(batch).changed
    return batch


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


_SILERO_BATCHES: PerLoop[SileroBatch] = PerLoop(_silero_batch)


def loop_silero_batch(loop: asyncio.AbstractEventLoop) -> SileroBatch | None:
    """The loop's Silero batch, if a call on it has scored with one (for the metrics)."""
    return _SILERO_BATCHES.get(loop) if loop in _SILERO_BATCHES else None


def _pressed(digits: list[str]) -> str:
    """The text a model reads for keys pressed: "The caller pressed 5." or "... pressed 1, 2, 3."."""
    return f"The caller pressed {', '.join(digits)}."


class CallBridge:
    """Implements `LegEvents` for one leg; see the module docstring."""

    def __init__(
        self,
        call_id: str,
        model: RealtimeModel,
        config: RealtimeConfig,
        leg: PhoneLeg,
        options: BridgeOptions | None = None,
        *,
        tools: ToolRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Logger | None = None,
        run_timer: bool = True,
    ) -> None:
        self.call_id = call_id
        self.model = model
        self.options = options or BridgeOptions()
        self.leg = leg
        self.format = leg.format
        self.tools = tools if tools is not None else ToolRegistry()
        self.clock = clock
        self.log: Logger = logger or logging.LoggerAdapter(log, {"call_id": call_id})
        self.stats = CallStats()
        self.dtmf_hooks: list[DtmfHook] = []
        self.phase = CallPhase.CONNECTING
        # A leg that confirms playout (Twilio marks) gets 40 ms chunks: its confirmations come
        # back as it plays. One that confirms nothing (RTP) is confirmed by the pacing clock, a
        # timer per chunk: 100 ms chunks fire it 10 times a second instead of 25 (the RTP pacer
        # still sends 20 ms packets; a pause still takes back whole frames).
        self.playout = Playout(
            lead_ms=self.options.playout_lead_ms,
            frame_ms=self.format.ptime_ms,
            chunk_ms=40 if leg.confirms_playout else 100,
        )
        self.pacing = PacingClock(leg.confirms_playout, fallback_s=self.options.playout_fallback_seconds)
        self.session: RealtimeSession | None = None
        self.runner: RealtimeRunner | None = None
        self.outcome: CallOutcome | None = None
        register_call_tools(self.tools, self, self.options.transfer_allowlist, self.log)
        self._config = config  # completed by start(): greeting and tools registered until then
        self._law = self.format.law
        self._leg_audio = self.format.audio_format
        self._silence = self._law.silence
        # Turn-taking: barge-in decided here from the caller's audio and the provider's signals.
        self.turns = TurnDetector(
            TurnSettings(
                vad=self.options.vad,
                min_interruption_ms=self.options.min_interruption_ms,
                backchannel_ms=self.options.backchannel_ms,
                agent_ahead_ms=self.options.playout_lead_ms + 1000,  # the lead, and arrival jitter
            ),
            self.format.sample_rate,
            load=False,  # start() loads the VAD model once the provider session is open
        )
        self.dead_air = DeadAirGuard(self.options.response_timeout_seconds, self.options.filler_after_seconds)
        self.turn_stats = TurnStats()
        self._to_pcm = ulaw_to_pcm16 if self._law is AudioLaw.PCMU else alaw_to_pcm16
        self._generated_ms: dict[str, float] = {}  # per output item: audio received from the provider
        self._said: dict[str, list[str]] = {}  # per output item: its transcript so far
        self._fillers = 0
        self._started_at = clock()
        self._ended = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._event_task: asyncio.Task[None] | None = None
        self._input_format: AudioFormat = self._leg_audio
        self._inbound: Transcoder | None = None  # leg audio -> provider input; None: passthrough
        self._outbound: dict[AudioFormat, Transcoder] = {}  # provider output format -> leg audio
        self._framer = Framer(self.format.frame_bytes)
        self._out_item: str | None = None
        self._interrupted_items: set[str] = set()
        self._early_audio: list[bytes] = []
        self._early_bytes = 0
        self._early_limit = int(self.format.sample_rate * EARLY_AUDIO_MS / 1000)
        self._early_digits: list[str] = []
        self._keys = TokenBucket(KEYS_PER_S, KEY_BURST)
        rate = self._leg_audio.bytes_per_ms * 1000  # the leg's bytes a second
        self._audio_budget = TokenBucket(rate * AUDIO_RATE, rate * AUDIO_BURST_S)
        self._log_budget = LogBudget(10.0)
        # Deadlines on `clock` (None: not armed) and the action waiting for playout to finish.
        self._after_playout: Callable[[], Awaitable[None]] | None = None
        self._goodbye_due: float | None = None
        self._idle_due: float | None = None
        self._max_due: float | None = None
        self._leg_seen = self._started_at  # the leg's last sign of life (audio, DTMF, confirmation)
        self._timer = CallTimer(self) if run_timer else None

    # -- set-up ---------------------------------------------------------------------------

    def _prepare_config(self, config: RealtimeConfig) -> RealtimeConfig:
        instructions = config.instructions
        if self.options.greeting:
            instructions = (
                f"{instructions}\n\nThe call has just connected. Begin by greeting the caller with: "
                f"\"{self.options.greeting}\""
            ).strip()
        tools = tuple({t.name: t for t in (*config.tools, *self.tools.definitions)}.values())
        changes: dict[str, object] = {"instructions": instructions, "tools": tools}
        # A model that prefers G.711 passthrough gets the leg's own law when it takes it, so
        # nothing is transcoded in either direction (`audio/pcma` for an A-law leg on OpenAI).
        preferred = self.model.input_formats[:1]
        if (
            config.input_format is None
            and preferred
            and AudioLaw.of(preferred[0].encoding) is not None
            and self._leg_audio in self.model.input_formats
        ):
            changes["input_format"] = self._leg_audio
            if config.output_format is None and self._leg_audio in self.model.output_formats:
                changes["output_format"] = self._leg_audio
        return config.with_changes(**changes)

    async def start(self) -> None:
        """Open the provider session and start handling its events. A failure is spoken to the caller."""
        if self._timer is not None:
            self._timer.attach()
        self._max_due = self._started_at + self.options.max_call_seconds
        self._timer_changed()
        self._config = self._prepare_config(self._config)
        try:
            session = await self.model.connect(self._config)
        except (RealtimeError, OSError) as exc:
            self.stats.provider_errors += 1
            self.log.error("provider %s unreachable: %s", self.model.provider, exc)
            self._fail_politely()
            return
        if self.phase is not CallPhase.CONNECTING:  # ended or told to end while connecting
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 3.0)
            return
        self.session = session
        if self.options.vad != "off":
            # A few ms of model loading, once the provider is there (never for a refused or failed
            # call), in line: a thread would make a replayed call's timing depend on the machine.
            batch = None
            if self.options.vad == "silero":
                batch = _SILERO_BATCHES.get(asyncio.get_running_loop())
                batch.max_wait_s = self.options.vad_batch_ms / 1000  # one process's calls share the setting
            scorer = make_scorer(self.options.vad, self.format.sample_rate, batch)
            if isinstance(scorer, BatchedSileroScorer):
                scorer.on_score = self._on_score
            self.turns.attach_scorer(scorer)
        try:
            self._inbound = self._inbound_transcoder(session.input_format)
        except RealtimeError as exc:
            self.log.error("%s", exc)
            self._fail_politely()
            return
        self._input_format = session.input_format
        self.phase = CallPhase.LIVE
        self.runner = RealtimeRunner(
            session,
            self.tools,
            tool_timeout=self.options.tool_timeout_seconds,
            max_tool_rounds=self.options.max_tool_rounds,
            on_tools_done=self._tools_done,
            logger=self.log,
        )
        early, self._early_audio, self._early_bytes = self._early_audio, [], 0
        if early:
            await self._send_chunk(session, self._inbound_chunk(b"".join(early)))
        self._event_task = asyncio.create_task(self._event_loop(), name=f"call-events-{self.call_id}")
        if self.options.greeting or self.options.speak_first:
            await self._safe(session.create_response())
        digits, self._early_digits = self._early_digits, []
        if digits:  # after the greeting's request, where a key pressed just after connecting would be
            await self._safe(session.send_text(_pressed(digits)))
        self._arm_idle_timer()

    def _inbound_transcoder(self, fmt: AudioFormat) -> Transcoder | None:
        if fmt == self._leg_audio:
            return None
        if fmt.encoding is AudioEncoding.PCM16:
            return Transcoder.g711_to_pcm(self._law.value, fmt.sample_rate)
        law = AudioLaw.of(fmt.encoding)
        if law is not None and fmt.sample_rate == self.format.sample_rate:
            return Transcoder.g711_to_g711(self._law.value, law.value)
        raise RealtimeError(f"unsupported provider input format {fmt}")

    # -- LegEvents: from the phone leg ---------------------------------------------------

    async def on_caller_audio(self, payload: bytes) -> None:
        """Caller audio in the leg's format."""
        rest = self.caller_audio_now(payload)
        if rest is not None:
            await rest

    def caller_audio_now(self, payload: bytes) -> Coroutine[Any, Any, None] | None:
        """`on_caller_audio` without a coroutine for the frames that need none: what is left to
        await (a turn decision, a session that cannot take audio here) comes back, else None.

        A leg that hands frames on where its socket read them (`websocket_read`) calls this:
        most frames decide nothing and the session takes them at once, so there is no task step
        for them; the rest, returned, its task awaits before the next frame.
        """
        now = self._leg_seen = self.clock()
        if not self._audio_budget.take(now, len(payload)):
            self._audio_flood(payload, now)
            return None
        self.stats.frames_in += 1
        phase = self.phase
        if phase is CallPhase.CONNECTING:
            if self._early_bytes < self._early_limit:  # the caller spoke while the provider was connecting
                self._early_audio.append(payload)
                self._early_bytes += len(payload)
            return None
        session = self.session
        if session is None or phase is CallPhase.PROMPTING or phase is CallPhase.ENDED:
            return None
        if phase is CallPhase.LIVE:
            decisions = self.turns.caller_audio(self._to_pcm(payload), now)
            if decisions:  # rarely: no coroutine for the 50 frames a second that decide nothing
                return self._decided_then_send(decisions, session, self._inbound_chunk(payload))
        chunk = self._inbound_chunk(payload)
        try:
            if session.send_audio_nowait(chunk):
                return None
        except RealtimeError as exc:
            self.log.debug("audio not sent: %s", exc)
            return None
        return self._send_chunk(session, chunk)

    def _audio_flood(self, payload: bytes, now: float) -> None:
        """A frame past the call's audio rate: dropped before the detector and the provider, counted."""
        stats = self.stats
        stats.audio_dropped_ms += self._leg_audio.duration_ms(len(payload))
        if self._log_budget.allow("audio", now) is not None:
            self.log.warning("caller audio arrives faster than real time: %.1f s dropped so far",
                             stats.audio_dropped_ms / 1000)

    async def _decided_then_send(self, decisions: list[TurnDecision], session: RealtimeSession,
                                 chunk: AudioChunk) -> None:
        await self._on_turns(decisions)
        await self._send_chunk(session, chunk)

    def _inbound_chunk(self, payload: bytes) -> AudioChunk:
        """The frame as the provider takes it (transcoded once: the transcoder keeps state)."""
        return AudioChunk(payload if self._inbound is None else self._inbound.process(payload), self._input_format)

    async def _send_chunk(self, session: RealtimeSession, chunk: AudioChunk) -> None:
        try:
            await session.send_audio(chunk)
        except RealtimeError as exc:
            self.log.debug("audio not sent: %s", exc)

    async def on_dtmf(self, digit: str) -> None:
        now = self._leg_seen = self.clock()
        if not self._keys.take(now):  # a flood: no hook and no model request for it, counted
            self.stats.dtmf_dropped += 1
            if self._log_budget.allow("keys", now) is not None:
                self.log.warning("keys arrive faster than %g a second: %d dropped so far", KEYS_PER_S,
                                 self.stats.dtmf_dropped)
            return
        self.stats.dtmf.append(digit)
        self._arm_idle_timer()
        for hook in self.dtmf_hooks:
            result = hook(digit)
            if asyncio.iscoroutine(result):
                await result
        if self.phase is CallPhase.CONNECTING:  # a caller keying ahead of the provider: sent by start()
            if len(self._early_digits) < EARLY_DIGITS:
                self._early_digits.append(digit)
                if len(self._early_digits) == EARLY_DIGITS:
                    self.log.warning("%d keys pressed while the provider connects: later ones are not sent",
                                     EARLY_DIGITS)
        elif self.session is not None and self.phase in (CallPhase.LIVE, CallPhase.FINISHING):
            await self._safe(self.session.send_text(_pressed([digit])))

    def on_played(self, tag: str) -> None:
        """The leg confirmed that the chunk sent with `tag` has played (or was cleared)."""
        now = self.clock()
        self._leg_seen = now
        if self.playout.on_played(tag, now):
            self.pacing.leg_confirmed(tag)
        self._pump(now)

    async def on_hangup(self) -> None:
        """The caller hung up (or the leg ended the media stream)."""
        await self.end(CallOutcome.CALLER_HANGUP, hangup=False)

    # -- provider events -------------------------------------------------------------------

    async def _event_loop(self) -> None:
        assert self.runner is not None and self.session is not None
        try:
            async for event in self.runner.events():
                received = self.clock()
                if isinstance(event, AudioDelta):
                    self._on_audio(event)
                    if self.dead_air.needs_audio:
                        await self._on_dead_air(self.dead_air.agent_audio(self._pcm_of(event.data, event.format), received))
                elif isinstance(event, (SpeechStarted, Interrupted)):
                    self._cancel_idle_timer()
                    await self._on_provider_speech(received)
                elif isinstance(event, SpeechStopped):
                    self.dead_air.caller_turn_ended(received)
                    self._arm_idle_timer()
                elif isinstance(event, AudioDone):
                    self._flush_outbound()
                elif isinstance(event, ResponseCreated):
                    self.dead_air.response_started()
                elif isinstance(event, ResponseDone):
                    self._flush_outbound()
                    await self._on_dead_air(self.dead_air.response_done(received))
                elif isinstance(event, ResponseFailed):
                    self.log.warning("response %s %s: %s %s", event.response_id, event.status, event.reason, event.message)
                    await self._on_dead_air(self.dead_air.response_failed(received, event.status, event.reason))
                elif isinstance(event, ToolRoundsCapped):
                    self.turn_stats.tool_round_caps += 1
                    if event.stopped:
                        await self._on_dead_air(self.dead_air.response_failed(received, "failed", "tool_loop"))
                elif isinstance(event, OutputTranscriptDelta):
                    self._said.setdefault(event.item_id, []).append(event.delta)
                elif isinstance(event, FunctionCallDone):
                    self.stats.tool_calls.append(event.name)
                    self.dead_air.tool_started(received)
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
        except Exception:
            self.log.exception("call event loop failed")
        if self.phase is CallPhase.LIVE or self.phase is CallPhase.FINISHING:
            reason = self.session.disconnect_reason if self.session else None
            self.log.error("provider session ended mid-call: %s", reason)
            self._fail_politely()

    def _on_audio(self, event: AudioDelta) -> None:
        phase = self.phase
        if event.item_id in self._interrupted_items or phase is CallPhase.PROMPTING or phase is CallPhase.ENDED:
            return
        if event.item_id != self._out_item:
            if phase is CallPhase.FINISHING:
                return  # the call is ending after what is already queued: nothing new is said
            self._flush_outbound()
            self._out_item = event.item_id
        fmt = event.format
        self._generated_ms[event.item_id] = self._generated_ms.get(event.item_id, 0.0) + (
            len(event.data) * 1000 / (fmt.sample_rate * (2 if fmt.encoding is AudioEncoding.PCM16 else 1))
        )
        self._play(event.item_id, self._to_leg(event.data, fmt))

    def _to_leg(self, data: bytes, fmt: AudioFormat) -> bytes:
        if fmt == self._leg_audio:
            return data
        transcoder = self._outbound.get(fmt)
        if transcoder is None:
            if fmt.encoding is AudioEncoding.PCM16:
                transcoder = Transcoder.pcm_to_g711(self._law.value, fmt.sample_rate)
            elif (law := AudioLaw.of(fmt.encoding)) is not None and fmt.sample_rate == self.format.sample_rate:
                transcoder = Transcoder.g711_to_g711(law.value, self._law.value)
            else:
                raise RealtimeError(f"unsupported provider output format {fmt}")
            self._outbound[fmt] = transcoder
        return transcoder.process(data)

    def _play(self, item_id: str, audio: bytes) -> None:
        frames = self._framer.push(audio)
        if frames:
            now = self.clock()
            if self.stats.first_audio_ms is None:
                self.stats.first_audio_ms = (now - self._started_at) * 1000
            self.playout.push(item_id, frames)
            self._pump(now)

    def _flush_outbound(self) -> None:
        """End of an item: drain resampler tails and pad the last frame with silence."""
        if self._out_item is None:
            return
        tail = b"".join(t.flush() for t in self._outbound.values())
        self._outbound.clear()
        if tail:
            self.playout.push(self._out_item, self._framer.push(tail))
        last = self._framer.flush(pad=self._silence)
        if last:
            self.playout.push(self._out_item, [last])
        self._out_item = None
        self._pump(self.clock())

    def _pump(self, now: float) -> None:
        """Send what the lead allows; start the next thing once everything has played."""
        sends = self.playout.poll(now)
        if sends:
            leg, pacing, stats = self.leg, self.pacing, self.stats
            was_idle = pacing.pending == 0
            turns, to_pcm = self.turns, self._to_pcm
            for send in sends:
                stats.frames_out += len(send.frames)
                leg.send_audio(send.frames, send.tag)
                ends = pacing.sent(send.tag, send.ms, now)
                turns.agent_audio(to_pcm(b"".join(send.frames)), ends - send.ms / 1000)  # the echo reference
            if was_idle:  # a new pacing deadline; later ones only move it later, which the timer finds
                self._timer_changed()
        if self.playout.idle:
            self._on_playout_idle()

    def _on_playout_idle(self) -> None:
        if self._after_playout is not None:
            if self._out_item is None:
                self._run_after_playout()
        elif self.phase is CallPhase.LIVE:
            self._arm_idle_timer()

    # -- barge-in --------------------------------------------------------------------------

    async def _on_turns(self, decisions: list[TurnDecision]) -> None:
        """Act on the turn detector's decisions (pause / resume / barge-in / the caller's turn)."""
        for d in decisions:
            if d.action is TurnAction.BARGE_IN:
                await self._barge_in(d.at, d)
            else:
                self._on_turn(d)
        if decisions:
            self._timer_changed()  # a pause has a deadline; a caller turn that ended, an answer owed

    def _on_turn(self, d: TurnDecision) -> None:
        """Every decision but a barge-in, which awaits the provider."""
        if d.action is TurnAction.PAUSE:
            self._pause(d)
        elif d.action is TurnAction.RESUME:
            self._resume(d)
        elif d.action is TurnAction.CALLER_STARTED:
            self._caller_spoke()
        elif d.action is TurnAction.CALLER_ENDED:
            self.dead_air.caller_turn_ended(self.turns.last_speech_end or d.at)

    def _on_score(self, prob: float) -> None:
        """The loop's Silero batch scored the caller block the detector waited on: act on what
        that block and the input held behind it decided, now, up to a barge-in, which goes to a
        task with whatever follows it (it awaits the provider)."""
        decisions = self.turns.scored(prob)
        if self.phase is not CallPhase.LIVE:
            return
        for i, d in enumerate(decisions):
            if d.action is TurnAction.BARGE_IN:
                self._spawn(self._on_turns(decisions[i:]))
                break
            self._on_turn(d)
        self._timer_changed()  # the detector's deadline, hidden while it waited

    async def _on_provider_speech(self, received: float) -> None:
        """The provider heard the caller: the detector confirms or rejects it; agent audio that
        is queued but not yet playing is dropped at once, as before."""
        self._caller_spoke()
        decisions = self.turns.provider_speech(received)
        if decisions:
            await self._on_turns(decisions)
        elif self.turns.state in (TurnState.LISTENING, TurnState.CALLER_TURN) and (
            not self.playout.idle or self._out_item is not None
        ):  # queued, not playing yet: nothing for the detector to hear over
            await self._barge_in(received, TurnDecision(TurnAction.BARGE_IN, received, received, "provider"))

    def _caller_spoke(self) -> None:
        self.dead_air.caller_spoke()
        if self.runner is not None:
            self.runner.caller_turn()

    def _pause(self, d: TurnDecision) -> None:
        """A caller onset while the agent talks: stop the audio at once, keep the place."""
        if self.phase is not CallPhase.LIVE or self.playout.idle or self.playout.paused:
            return
        now = self.clock()
        self._confirm_paced(now, pump=False)
        self.playout.pause(now)
        self.leg.send_clear()
        self.pacing.clear()
        if self.pacing.confirmer is Confirmer.CLOCK:
            self.playout.forget_cleared()
        self.turns.agent_stopped(now)
        self.turn_stats.pauses += 1
        if d.onset is not None:
            self.turn_stats.reaction_ms.append((now - d.onset) * 1000)
        self.log.info("caller sound (%s): agent paused", d.source)

    def _resume(self, d: TurnDecision) -> None:
        """The onset did not confirm (noise, a backchannel, echo): play on from the pause."""
        if not self.playout.paused:
            return
        self.playout.resume()
        self.turn_stats.false_interruptions += 1
        self.log.info("not an interruption (%s, %d ms voiced): agent resumes", d.reason, d.voiced_ms)
        self._pump(self.clock())

    async def _barge_in(self, received: float, decision: TurnDecision | None = None) -> None:
        item = self.playout.current_item or self._out_item
        if item is None or self.phase is not CallPhase.LIVE:
            return  # the agent is silent (or saying a final goodbye): nothing to interrupt
        now = self.clock()
        self._confirm_paced(now, pump=False)  # what the clock says has played by now counts as heard
        played = self.playout.played_ms(item, now)
        if self._out_item is not None:
            self._interrupted_items.add(self._out_item)
        self._interrupted_items.add(item)
        self._drop_output()
        self.stats.clear_latency_ms.append((self.clock() - received) * 1000)
        self.stats.barge_ins += 1
        self.stats.truncates.append((item, played))
        source = decision.source if decision is not None else "provider"
        self.turn_stats.count(self.turn_stats.barge_ins, source)
        self.turns.agent_stopped(now)
        self._caller_spoke()
        self.log.info("barge-in (%s): caller heard %d ms of %s (leg round trip %s ms)", source, played, item,
                      self.playout.leg_rtt_ms)
        session = self.session
        if session is not None:
            prompt = item.startswith("prompt-")  # our own audio: the provider has nothing to truncate
            await self._safe(session.interrupt(audio_end_ms=None if prompt else played))
            if self._config.turn_detection.manual:
                await self._safe(session.clear_audio())
            if not prompt and session.text_joins_caller_turn:
                await self._tell_what_was_heard(session, item, played)

    async def _tell_what_was_heard(self, session: RealtimeSession, item: str, played: int) -> None:
        """A model with no truncate (Gemini Live) remembers its whole answer; while the caller is
        still speaking, a note joins their turn saying how much of it they heard."""
        generated = self._generated_ms.get(item, 0.0)
        if generated <= 0 or played >= generated - 100:
            return
        words = "".join(self._said.get(item, [])).split()
        heard = " ".join(words[: int(len(words) * played / generated)])
        if heard:
            note = f'(The caller interrupted you. Of your last answer they heard only: "{heard}"; not the rest.)'
        else:
            note = "(The caller interrupted you before hearing any of your last answer.)"
        await self._safe(session.send_text(note))

    def _drop_output(self) -> None:
        """`clear` the phone leg and forget every bit of agent audio not yet heard."""
        if not self.playout.paused:  # a pause cleared the leg already, and nothing was sent since
            self.leg.send_clear()
        self.playout.clear()
        self.pacing.clear()
        if self.pacing.confirmer is Confirmer.CLOCK:
            self.playout.forget_cleared()  # nobody will confirm the discarded chunks
        self._framer.clear()
        self._outbound.clear()
        self._out_item = None

    # -- dead air ------------------------------------------------------------------------------

    def _pcm_of(self, data: bytes, fmt: AudioFormat) -> bytes:
        if fmt.encoding is AudioEncoding.PCM16:
            return data
        return ulaw_to_pcm16(data) if fmt.encoding is AudioEncoding.G711_ULAW else alaw_to_pcm16(data)

    def _tools_done(self) -> None:
        self.dead_air.tools_finished(self.clock())
        self._timer_changed()

    async def _on_dead_air(self, decisions: list[DeadAirDecision]) -> None:
        """Recover from dead air: ask once more (a short filler covers the wait), then apologise."""
        for d in decisions:
            stats = self.turn_stats
            if d.action is DeadAirAction.FILLER:
                self.log.info("tool call running past %.1fs: filler", self.options.filler_after_seconds)
                self._say_filler()
                continue
            stats.count(stats.response_problems, d.reason)
            if d.action is DeadAirAction.APOLOGISE:
                stats.apologies += 1
                self.log.error("still no answer (%s) after a retry: apologising and ending the call", d.reason)
                self._fail_politely()
                continue
            stats.retries += 1
            self.log.warning("no answer from the provider (%s): asking again", d.reason)
            if not self.playout.idle or self._out_item is not None:  # near-silent audio queued
                for item in (self.playout.current_item, self._out_item):
                    if item is not None:
                        self._interrupted_items.add(item)
                self._drop_output()
            self._say_filler()
            session = self.session
            if session is not None and self.phase is CallPhase.LIVE:
                await self._safe(session.interrupt())
                await self._safe(session.create_response())
        self.turn_stats.dead_air_seconds = self.dead_air.dead_air_seconds
        self._timer_changed()

    def _say_filler(self) -> None:
        """A short "one moment" while the caller waits, only over silence."""
        if self.phase is not CallPhase.LIVE or not self.playout.idle or self._out_item is not None:
            return
        self._fillers += 1
        self.turn_stats.fillers += 1
        frames = self._framer.push(prompt_audio("filler", self._law))
        last = self._framer.flush(pad=self._silence)
        self.playout.push(f"prompt-filler-{self._fillers}", frames + ([last] if last else []))
        self._pump(self.clock())

    # -- call control (CallControl, used by the built-in tools) ---------------------------------

    def after_playout(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` once everything queued so far has been heard, e.g. hang up; bounded by
        `goodbye_wait_seconds` in case the leg never plays it out."""
        self._after_playout = action
        if self.phase is CallPhase.LIVE:
            self.phase = CallPhase.FINISHING
        if self.playout.idle and self._out_item is None:
            self._run_after_playout()
        else:
            self._goodbye_due = self.clock() + self.options.goodbye_wait_seconds
            self._timer_changed()

    def _run_after_playout(self) -> None:
        action, self._after_playout = self._after_playout, None
        self._goodbye_due = None
        if action is not None:
            self._spawn(action())

    async def hangup_after_playout(self, outcome: CallOutcome = CallOutcome.AGENT_HANGUP) -> None:
        async def hang_up() -> None:
            await self.end(outcome, hangup=True)

        self.after_playout(hang_up)

    async def transfer_after_playout(self, target: str) -> None:
        async def transfer() -> None:
            try:
                await self.leg.transfer(target)
            except Exception as exc:  # noqa: BLE001
                self.log.error("transfer to %s failed: %s", target, exc)
                await self.end(CallOutcome.PROVIDER_FAILED, hangup=True)
                return
            await self.end(CallOutcome.TRANSFERRED, hangup=False)

        self.after_playout(transfer)

    def _say_prompt(self, name: str, then: CallOutcome) -> None:
        """Play a pre-rendered prompt in the leg's law (no provider needed), then hang up."""
        if self._after_playout is not None or self.phase is CallPhase.ENDED:
            return
        self._drop_output()
        frames = self._framer.push(prompt_audio(name, self._law))
        last = self._framer.flush(pad=self._silence)
        self.playout.push(f"prompt-{name}", frames + ([last] if last else []))
        self.phase = CallPhase.PROMPTING
        self._idle_due = None

        async def hang_up() -> None:
            await self.end(then, hangup=True)

        self.after_playout(hang_up)
        self._pump(self.clock())

    def _fail_politely(self) -> None:
        self._say_prompt("apology", CallOutcome.PROVIDER_FAILED)

    async def shutdown(self) -> None:
        """Server is draining past its deadline: end politely."""
        self._say_prompt("shutdown", CallOutcome.SERVER_SHUTDOWN)

    # -- deadlines (sans-I/O) --------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self.phase is CallPhase.LIVE or self.phase is CallPhase.CONNECTING:
            self._idle_due = self.clock() + self.options.idle_timeout_seconds
            self._timer_changed()

    def _cancel_idle_timer(self) -> None:
        self._idle_due = None

    def get_timer(self) -> float | None:
        """When `handle_timer` next has something to do (on `clock`), or None."""
        if self.phase is CallPhase.ENDED:
            return None
        due = self._max_due
        for other in (
            self._idle_due,
            self._goodbye_due,
            self.pacing.deadline(),
            self.turns.get_timer() if self.phase is CallPhase.LIVE else None,
            self.dead_air.get_timer() if self.phase is CallPhase.LIVE else None,
        ):
            if other is not None and (due is None or other < due):
                due = other
        if self.options.leg_timeout_seconds > 0 and self.phase is not CallPhase.CONNECTING:
            leg_due = self._leg_seen + self.options.leg_timeout_seconds
            if due is None or leg_due < due:
                due = leg_due
        return due

    def handle_timer(self, now: float) -> None:
        """Act on every deadline due by `now`. Actions that await (ending the call) are spawned."""
        if self.phase is CallPhase.ENDED:
            return
        self._confirm_paced(now)
        timeout = self.options.leg_timeout_seconds
        if timeout > 0 and self.phase is not CallPhase.CONNECTING and now >= self._leg_seen + timeout:
            self.log.warning("phone leg silent for %.1fs (no audio, no playout confirmation); ending the call", timeout)
            if self._set_ended(CallOutcome.LEG_TIMEOUT):
                self._spawn(self._close_down(hangup=True, session_first=True))
            return
        if self._max_due is not None and now >= self._max_due:
            self._max_due = None
            self.log.info("call reached AGENT_MAX_CALL_SECONDS=%s", self.options.max_call_seconds)
            self._say_prompt("time_limit", CallOutcome.MAX_DURATION)
        if self._idle_due is not None and now >= self._idle_due:
            self._idle_due = None
            self._on_idle_timeout()
        if self.phase is CallPhase.LIVE:
            turn_due, air_due = self.turns.get_timer(), self.dead_air.get_timer()
            if turn_due is not None and now >= turn_due:
                self._spawn(self._on_turns(self.turns.handle_timer(now)))
            if air_due is not None and now >= air_due:
                self._spawn(self._on_dead_air(self.dead_air.handle_timer(now)))
        if self._goodbye_due is not None and now >= self._goodbye_due and self._after_playout is not None:
            self.log.warning("playout did not finish in %.0fs; acting anyway", self.options.goodbye_wait_seconds)
            self._run_after_playout()
        self._timer_changed()

    def _confirm_paced(self, now: float, *, pump: bool = True) -> None:
        """Chunks the pacing clock says have played by `now` (a leg that confirms nothing, or one
        that stopped confirming) are confirmed at the times they ended."""
        deadline = self.pacing.deadline()
        if deadline is None or deadline > now:
            return
        due = self.pacing.due(now)
        if self.pacing.fell_back_at == now:
            self.log.warning("phone leg stopped confirming playout; pacing it by the clock from now on")
        for tag, ended_at in due:
            self.playout.on_played(tag, ended_at)
        if pump:
            self._pump(now)

    def _on_idle_timeout(self) -> None:
        if self.playout.idle and self._out_item is None and not (self.runner and self.runner.busy):
            self.log.info("caller silent for %.0fs; ending the call", self.options.idle_timeout_seconds)
            self._say_prompt("idle", CallOutcome.IDLE_TIMEOUT)
        else:
            self._arm_idle_timer()

    def _timer_changed(self) -> None:
        if self._timer is not None:
            self._timer.update()

    # -- teardown --------------------------------------------------------------------------

    async def end(self, outcome: CallOutcome, *, hangup: bool) -> None:
        """End the call once: the phone leg, then the provider session."""
        if self._set_ended(outcome):
            await self._close_down(hangup=hangup)

    def _set_ended(self, outcome: CallOutcome) -> bool:
        """The synchronous half of `end`: False if the call had already ended."""
        if self.phase is CallPhase.ENDED:
            return False
        self.outcome = outcome
        self.phase = CallPhase.ENDED
        self._ended.set()
        if self.runner is not None:
            self.runner.close()  # a tool call that still arrives is dropped
        if self._timer is not None:
            self._timer.cancel()
        self.log.info("call ended: %s", outcome.value)
        return True

    async def _close_down(self, *, hangup: bool, session_first: bool = False) -> None:
        """Normally the leg goes first (a tool's last result still reaches the session while the
        carrier hangs up); a dead leg may take its full bound to close, so the provider session,
        which costs money, is closed before it."""
        if session_first:
            await self._teardown()
        try:
            await asyncio.wait_for(self.leg.hangup() if hangup else self.leg.close(), 10.0)
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            self.log.warning("ending the phone leg failed: %s", exc)
        if not session_first:
            await self._teardown()

    async def _teardown(self) -> None:
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runner.aclose(), 3.0)
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
        return self.phase is CallPhase.ENDED

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


class CallTimer:
    """The asyncio shell's one event-loop timer for a bridge: due at `bridge.get_timer()`.

    The bridge calls `update()` whenever a deadline may have moved. A later deadline leaves the
    armed timer alone (it fires, finds nothing due, and re-arms), so the per-frame path never
    cancels and re-creates timers; only an earlier one re-arms.
    """

    __slots__ = ("_bridge", "_due", "_handle", "_loop")

    def __init__(self, bridge: CallBridge) -> None:
        self._bridge = bridge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def attach(self) -> None:
        """Arm timers on the running event loop from now on."""
        self._loop = asyncio.get_running_loop()

    def update(self) -> None:
        loop = self._loop
        if loop is None:
            return
        due = self._bridge.get_timer()
        if due is None:
            self.cancel()
            return
        handle = self._handle
        if handle is not None:
            if self._due <= due:
                return
            handle.cancel()
        self._due = due
        self._handle = loop.call_later(max(0.0, due - self._bridge.clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        bridge = self._bridge
        try:
            # never before the deadline it was armed for (uvloop fires up to 1 ms early by its
            # own clock, and acting on nothing would re-arm and spin: loop_timer.py)
            bridge.handle_timer(fired_at(bridge.clock(), self._due))  # re-arms through `update`
        except Exception:
            bridge.log.exception("call timer failed")
        if self._handle is None:
            self.update()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
