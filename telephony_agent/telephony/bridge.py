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

This module is compiled with mypyc (`telephony_agent.native`): every frame of every call runs
through it (caller audio to the detector and the session, the leg's playout confirmations, the
provider's audio into the playout queue). A compiled coroutine passes a cancellation on with the
`throw()` signature Python 3.12 deprecates, so no coroutine is defined here: each method that
awaits returns the coroutine of its body in `bridge_awaits`, which is plain Python.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from telephony_agent.logs import LogBudget
from telephony_agent.realtime import (
    AudioChunk,
    AudioDelta,
    AudioEncoding,
    AudioFormat,
    RealtimeConfig,
    RealtimeError,
    RealtimeModel,
    RealtimeRunner,
    RealtimeSession,
    ToolRegistry,
)
from telephony_agent.telephony import bridge_awaits as awaits
from telephony_agent.telephony.assets import prompt_audio
from telephony_agent.telephony.bridge_awaits import loop_silero_batch
from telephony_agent.telephony.bridge_types import (
    AUDIO_BURST_S,
    AUDIO_RATE,
    EARLY_AUDIO_MS,
    EARLY_DIGITS,
    KEY_BURST,
    KEYS_PER_S,
    BridgeOptions,
    CallOutcome,
    CallPhase,
    CallStats,
    DtmfHook,
    Logger,
)
from telephony_agent.telephony.call_tools import register_call_tools
from telephony_agent.telephony.leg import AudioLaw, PhoneLeg
from telephony_agent.telephony.loop_timer import fired_at
from telephony_agent.telephony.pacing import Confirmer, PacingClock
from telephony_agent.telephony.playout import Playout
from telephony_agent.telephony.token_bucket import TokenBucket
from telephony_agent.telephony.turns import (
    DeadAirDecision,
    DeadAirGuard,
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
    TurnStats,
)
from telephony_codecs import Framer, Transcoder, alaw_to_pcm16, ulaw_to_pcm16

__all__ = [
    "AUDIO_BURST_S",
    "AUDIO_RATE",
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

    def start(self) -> Coroutine[Any, Any, None]:
        """Open the provider session and start handling its events. A failure is spoken to the caller."""
        return awaits.start(self)

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

    def on_caller_audio(self, payload: bytes) -> Coroutine[Any, Any, None]:
        """Caller audio in the leg's format."""
        return awaits.on_caller_audio(self, payload)

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

    def _decided_then_send(self, decisions: list[TurnDecision], session: RealtimeSession, chunk: AudioChunk) -> Coroutine[Any, Any, None]:
        return awaits._decided_then_send(self, decisions, session, chunk)

    def _inbound_chunk(self, payload: bytes) -> AudioChunk:
        """The frame as the provider takes it (transcoded once: the transcoder keeps state)."""
        return AudioChunk(payload if self._inbound is None else self._inbound.process(payload), self._input_format)

    def _send_chunk(self, session: RealtimeSession, chunk: AudioChunk) -> Coroutine[Any, Any, None]:
        return awaits._send_chunk(self, session, chunk)

    def on_dtmf(self, digit: str) -> Coroutine[Any, Any, None]:
        return awaits.on_dtmf(self, digit)

    def on_played(self, tag: str) -> None:
        """The leg confirmed that the chunk sent with `tag` has played (or was cleared)."""
        now = self.clock()
        self._leg_seen = now
        if self.playout.on_played(tag, now):
            self.pacing.leg_confirmed(tag)
        self._pump(now)

    def on_hangup(self) -> Coroutine[Any, Any, None]:
        """The caller hung up (or the leg ended the media stream)."""
        return awaits.on_hangup(self)

    # -- provider events -------------------------------------------------------------------

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

    def _on_turns(self, decisions: list[TurnDecision]) -> Coroutine[Any, Any, None]:
        """Act on the turn detector's decisions (pause / resume / barge-in / the caller's turn)."""
        return awaits._on_turns(self, decisions)

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

    def _on_dead_air(self, decisions: list[DeadAirDecision]) -> Coroutine[Any, Any, None]:
        """Recover from dead air: ask once more (a short filler covers the wait), then apologise."""
        return awaits._on_dead_air(self, decisions)

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

    def hangup_after_playout(self, outcome: CallOutcome = CallOutcome.AGENT_HANGUP) -> Coroutine[Any, Any, None]:
        return awaits.hangup_after_playout(self, outcome)

    def transfer_after_playout(self, target: str) -> Coroutine[Any, Any, None]:
        return awaits.transfer_after_playout(self, target)

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
        self.after_playout(awaits.ending(self, then))
        self._pump(self.clock())

    def _fail_politely(self) -> None:
        self._say_prompt("apology", CallOutcome.PROVIDER_FAILED)

    def shutdown(self) -> Coroutine[Any, Any, None]:
        """Server is draining past its deadline: end politely."""
        return awaits.shutdown(self)

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

    def end(self, outcome: CallOutcome, *, hangup: bool) -> Coroutine[Any, Any, None]:
        """End the call once: the phone leg, then the provider session."""
        return awaits.end(self, outcome, hangup=hangup)

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

    def _close_down(self, *, hangup: bool, session_first: bool = False) -> Coroutine[Any, Any, None]:
        """Normally the leg goes first (a tool's last result still reaches the session while the
        carrier hangs up); a dead leg may take its full bound to close, so the provider session,
        which costs money, is closed before it.
        """
        return awaits._close_down(self, hangup=hangup, session_first=session_first)

    def wait_ended(self) -> Coroutine[Any, Any, CallOutcome | None]:
        return awaits.wait_ended(self)

    @property
    def ended(self) -> bool:
        return self.phase is CallPhase.ENDED

    # -- helpers ---------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class TimedCall(Protocol):
    """What `CallTimer` asks of a bridge."""

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def log(self) -> Logger: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class CallTimer:
    """The asyncio shell's one event-loop timer for a bridge: due at `bridge.get_timer()`.

    The bridge calls `update()` whenever a deadline may have moved. A later deadline leaves the
    armed timer alone (it fires, finds nothing due, and re-arms), so the per-frame path never
    cancels and re-creates timers; only an earlier one re-arms.
    """

    __slots__ = ("_bridge", "_due", "_handle", "_loop")

    def __init__(self, bridge: TimedCall) -> None:
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
