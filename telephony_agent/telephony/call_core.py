"""`CallCore`: the synchronous, compiled half of a call bridge (`bridge.CallBridge` is the other).

Every frame of every call runs through here: caller audio to the turn detector and the session,
the leg's playout confirmations, the provider's audio into the playout queue, the call's
deadlines. The core converts audio to and from the leg's `PhoneFormat` and never learns which
carrier it is on.

It is sans-I/O in time: it reads one injected clock and keeps every deadline of the call itself
(idle, maximum duration, playout pacing and the fallback when a leg stops confirming, the bound on
a goodbye, a silent leg). `get_timer()` says when the earliest is due and `handle_timer(now)` acts
on what is due; `CallTimer` arms one event-loop timer per call for it, and tests drive both by
hand on a virtual clock.

What awaits (the provider session, the phone leg, teardown) is the shell's: the core asks for it
through `CallShell`, a few methods that return coroutines, and either hands them back to the leg
to await or has the shell run them. The core defines no coroutine because mypyc compiles it
(`telephony_agent.native`), and a compiled coroutine passes a cancellation on with the `throw()`
signature Python 3.12 deprecates (mypyc/mypyc#1214).
"""

from __future__ import annotations

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
from telephony_agent.telephony.assets import prompt_audio
from telephony_agent.telephony.bridge_types import (
    AUDIO_BURST_S,
    AUDIO_RATE,
    EARLY_AUDIO_MS,
    KEY_BURST,
    KEYS_PER_S,
    BridgeOptions,
    CallOutcome,
    CallPhase,
    CallStats,
    Logger,
)
from telephony_agent.telephony.leg import AudioLaw, PhoneLeg
from telephony_agent.telephony.loop_timer import CallTimer
from telephony_agent.telephony.pacing import Confirmer, PacingClock
from telephony_agent.telephony.playout import Playout
from telephony_agent.telephony.token_bucket import TokenBucket
from telephony_agent.telephony.turns import (
    BatchedSileroScorer,
    DeadAirDecision,
    DeadAirGuard,
    SpeechScorer,
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
    TurnStats,
)
from telephony_codecs import Framer, Transcoder, alaw_to_pcm16, ulaw_to_pcm16

__all__ = ["CallCore", "CallShell"]


class CallShell(Protocol):
    """What the core asks of its asyncio shell: the steps that await, as coroutines, and a task
    to run one in. Nothing here runs per frame, except for a frame that decided something or that
    the session could not take at once."""

    def spawn(self, coro: Awaitable[object]) -> None:
        """Run `coro` as a task of the call (cancelled at its teardown)."""
        ...

    def send_chunk(self, session: RealtimeSession, chunk: AudioChunk) -> Coroutine[Any, Any, None]: ...

    def decided_then_send(self, decisions: list[TurnDecision], session: RealtimeSession,
                          chunk: AudioChunk) -> Coroutine[Any, Any, None]: ...

    def on_turns(self, decisions: list[TurnDecision]) -> Coroutine[Any, Any, None]: ...

    def on_dead_air(self, decisions: list[DeadAirDecision]) -> Coroutine[Any, Any, None]: ...

    def close_down(self, *, hangup: bool, session_first: bool = False) -> Coroutine[Any, Any, None]: ...

    def ending(self, outcome: CallOutcome) -> Callable[[], Awaitable[None]]:
        """The action that ends the call with `outcome` and hangs up, for `after_playout`."""
        ...

    def on_ended(self) -> None:
        """The call has ended (once): wake whoever waits for it."""
        ...


class CallCore:
    """The state and synchronous paths of one call; see the module docstring.

    Implements `LegEvents.on_played` and the synchronous `caller_audio_now` for the leg
    (`bridge.CallBridge` hands legs these bound methods), and `TimedCall` for its `CallTimer`.
    """

    def __init__(
        self,
        shell: CallShell,
        call_id: str,
        model: RealtimeModel,
        config: RealtimeConfig,
        leg: PhoneLeg,
        options: BridgeOptions,
        tools: ToolRegistry,
        clock: Callable[[], float],
        logger: Logger,
        *,
        run_timer: bool = True,
    ) -> None:
        self._shell = shell
        self.call_id = call_id
        self.model = model
        self.options = options
        self.leg = leg
        self.format = leg.format
        self.tools = tools
        self.clock = clock
        self.log = logger
        self.stats = CallStats()
        self.phase = CallPhase.CONNECTING
        # A leg that confirms playout (Twilio marks) gets 40 ms chunks: its confirmations come
        # back as it plays. One that confirms nothing (RTP) is confirmed by the pacing clock, a
        # timer per chunk: 100 ms chunks fire it 10 times a second instead of 25 (the RTP pacer
        # still sends 20 ms packets; a pause still takes back whole frames).
        self.playout = Playout(
            lead_ms=options.playout_lead_ms,
            frame_ms=self.format.ptime_ms,
            chunk_ms=40 if leg.confirms_playout else 100,
        )
        self.pacing = PacingClock(leg.confirms_playout, fallback_s=options.playout_fallback_seconds)
        self.session: RealtimeSession | None = None
        self.runner: RealtimeRunner | None = None
        self.outcome: CallOutcome | None = None
        self.config = config  # completed by begin(): greeting and tools registered until then
        self._law = self.format.law
        self._leg_audio = self.format.audio_format
        self._silence = self._law.silence
        # Turn-taking: barge-in decided here from the caller's audio and the provider's signals.
        self.turns = TurnDetector(
            TurnSettings(
                vad=options.vad,
                min_interruption_ms=options.min_interruption_ms,
                backchannel_ms=options.backchannel_ms,
                agent_ahead_ms=options.playout_lead_ms + 1000,  # the lead, and arrival jitter
            ),
            self.format.sample_rate,
            load=False,  # the shell attaches the scorer (score_with) once the provider session is open
        )
        self.dead_air = DeadAirGuard(options.response_timeout_seconds, options.filler_after_seconds)
        self.turn_stats = TurnStats()
        self._to_pcm = ulaw_to_pcm16 if self._law is AudioLaw.PCMU else alaw_to_pcm16
        self._generated_ms: dict[str, float] = {}  # per output item: audio received from the provider
        self._said: dict[str, list[str]] = {}  # per output item: its transcript so far
        self._fillers = 0
        self._started_at = clock()
        self._input_format: AudioFormat = self._leg_audio
        self._inbound: Transcoder | None = None  # leg audio -> provider input; None: passthrough
        self._outbound: dict[AudioFormat, Transcoder] = {}  # provider output format -> leg audio
        self._framer = Framer(self.format.frame_bytes)
        self._out_item: str | None = None
        self._interrupted_items: set[str] = set()
        self._early_audio: list[bytes] = []
        self._early_bytes = 0
        self._early_limit = int(self.format.sample_rate * EARLY_AUDIO_MS / 1000)
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
        self.timer = CallTimer(self) if run_timer else None

    # -- set-up ---------------------------------------------------------------------------

    def begin(self) -> RealtimeConfig:
        """The call starts: its deadlines run from now on, and this is the session's config
        (the greeting, and every tool registered so far)."""
        self._max_due = self._started_at + self.options.max_call_seconds
        self.timer_changed()
        self.config = self._prepare_config(self.config)
        return self.config

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

    def go_live(self, session: RealtimeSession) -> AudioChunk | None:
        """The provider session is open: caller and agent talk from now on (the shell gives the
        `runner` that drives its events before it yields). Returns the caller's audio held while
        it opened, as one chunk, or None. Raises RealtimeError if the session takes no audio the
        leg can give; the call stays connecting and keeps the session, so teardown closes it."""
        self.session = session
        inbound = self._inbound_transcoder(session.input_format)
        self._inbound, self._input_format = inbound, session.input_format
        self.phase = CallPhase.LIVE
        early, self._early_audio, self._early_bytes = self._early_audio, [], 0
        return self.inbound_chunk(b"".join(early)) if early else None

    def _inbound_transcoder(self, fmt: AudioFormat) -> Transcoder | None:
        if fmt == self._leg_audio:
            return None
        if fmt.encoding is AudioEncoding.PCM16:
            return Transcoder.g711_to_pcm(self._law.value, fmt.sample_rate)
        law = AudioLaw.of(fmt.encoding)
        if law is not None and fmt.sample_rate == self.format.sample_rate:
            return Transcoder.g711_to_g711(self._law.value, law.value)
        raise RealtimeError(f"unsupported provider input format {fmt}")

    # -- from the phone leg -----------------------------------------------------------------

    def caller_audio_now(self, payload: bytes) -> Coroutine[Any, Any, None] | None:
        """Caller audio in the leg's format, taken without a coroutine for the frames that need
        none: what is left to await (a turn decision, a session that cannot take audio here)
        comes back, else None.

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
                return self._shell.decided_then_send(decisions, session, self.inbound_chunk(payload))
        chunk = self.inbound_chunk(payload)
        try:
            if session.send_audio_nowait(chunk):
                return None
        except RealtimeError as exc:
            self.log.debug("audio not sent: %s", exc)
            return None
        return self._shell.send_chunk(session, chunk)

    def _audio_flood(self, payload: bytes, now: float) -> None:
        """A frame past the call's audio rate: dropped before the detector and the provider, counted."""
        stats = self.stats
        stats.audio_dropped_ms += self._leg_audio.duration_ms(len(payload))
        if self._log_budget.allow("audio", now) is not None:
            self.log.warning("caller audio arrives faster than real time: %.1f s dropped so far",
                             stats.audio_dropped_ms / 1000)

    def inbound_chunk(self, payload: bytes) -> AudioChunk:
        """The frame as the provider takes it (transcoded once: the transcoder keeps state)."""
        return AudioChunk(payload if self._inbound is None else self._inbound.process(payload), self._input_format)

    def on_key(self, digit: str) -> bool:
        """A key the caller pressed: counted, and True if it is to be passed on; False for one
        past the call's rate (a flood: no hook and no model request for it)."""
        now = self._leg_seen = self.clock()
        if not self._keys.take(now):
            self.stats.dtmf_dropped += 1
            if self._log_budget.allow("keys", now) is not None:
                self.log.warning("keys arrive faster than %g a second: %d dropped so far", KEYS_PER_S,
                                 self.stats.dtmf_dropped)
            return False
        self.stats.dtmf.append(digit)
        self.arm_idle_timer()
        return True

    def on_played(self, tag: str) -> None:
        """The leg confirmed that the chunk sent with `tag` has played (or was cleared)."""
        now = self.clock()
        self._leg_seen = now
        if self.playout.on_played(tag, now):
            self.pacing.leg_confirmed(tag)
        self._pump(now)

    # -- provider events -------------------------------------------------------------------

    def on_audio(self, event: AudioDelta, received: float) -> list[DeadAirDecision] | None:
        """Agent audio from the provider, into the playout queue; what the dead-air guard
        decides from it (a near-silent answer), usually None (no list made per delta)."""
        phase = self.phase
        if event.item_id in self._interrupted_items or phase is CallPhase.PROMPTING or phase is CallPhase.ENDED:
            return self._heard_audio(event, received)
        if event.item_id != self._out_item:
            if phase is CallPhase.FINISHING:
                return self._heard_audio(event, received)  # the call is ending after what is queued: nothing new is said
            self.flush_outbound()
            self._out_item = event.item_id
        fmt = event.format
        self._generated_ms[event.item_id] = self._generated_ms.get(event.item_id, 0.0) + (
            len(event.data) * 1000 / (fmt.sample_rate * (2 if fmt.encoding is AudioEncoding.PCM16 else 1))
        )
        self._play(event.item_id, self._to_leg(event.data, fmt))
        return self._heard_audio(event, received)

    def _heard_audio(self, event: AudioDelta, received: float) -> list[DeadAirDecision] | None:
        if not self.dead_air.needs_audio:
            return None
        data, fmt = event.data, event.format
        if fmt.encoding is not AudioEncoding.PCM16:
            data = ulaw_to_pcm16(data) if fmt.encoding is AudioEncoding.G711_ULAW else alaw_to_pcm16(data)
        return self.dead_air.agent_audio(data, received)

    def agent_said(self, item_id: str, delta: str) -> None:
        """A piece of the transcript of what the agent says in `item_id`."""
        self._said.setdefault(item_id, []).append(delta)

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

    def flush_outbound(self) -> None:
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
                self.timer_changed()
        if self.playout.idle:
            self._on_playout_idle()

    def _on_playout_idle(self) -> None:
        if self._after_playout is not None:
            if self._out_item is None:
                self._run_after_playout()
        elif self.phase is CallPhase.LIVE:
            self.arm_idle_timer()

    # -- barge-in --------------------------------------------------------------------------

    def on_turn(self, d: TurnDecision) -> None:
        """Every decision but a barge-in, which awaits the provider (`barge_in`, then the shell)."""
        if d.action is TurnAction.PAUSE:
            self._pause(d)
        elif d.action is TurnAction.RESUME:
            self._resume(d)
        elif d.action is TurnAction.CALLER_STARTED:
            self.caller_spoke()
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
                self._shell.spawn(self._shell.on_turns(decisions[i:]))
                break
            self.on_turn(d)
        self.timer_changed()  # the detector's deadline, hidden while it waited

    def score_with(self, scorer: SpeechScorer) -> None:
        """The caller-speech detector's scorer, once the provider session is open; a batched
        Silero scorer hands its late scores back through `_on_score`."""
        if isinstance(scorer, BatchedSileroScorer):
            scorer.on_score = self._on_score
        self.turns.attach_scorer(scorer)

    def caller_spoke(self) -> None:
        self.dead_air.caller_spoke()
        if self.runner is not None:
            self.runner.caller_turn()

    @property
    def agent_audio_queued(self) -> bool:
        """Agent audio is playing, queued, or still arriving."""
        return not self.playout.idle or self._out_item is not None

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

    def barge_in(self, received: float, source: str) -> tuple[str, int] | None:
        """The caller interrupts: the agent's audio stops and what was not heard is dropped.
        Returns the item interrupted and the ms of it the caller heard, for the provider, or None
        when there was nothing to interrupt (the agent is silent, or says a final goodbye)."""
        item = self.playout.current_item or self._out_item
        if item is None or self.phase is not CallPhase.LIVE:
            return None
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
        self.turn_stats.count(self.turn_stats.barge_ins, source)
        self.turns.agent_stopped(now)
        self.caller_spoke()
        self.log.info("barge-in (%s): caller heard %d ms of %s (leg round trip %s ms)", source, played, item,
                      self.playout.leg_rtt_ms)
        return item, played

    def heard_note(self, item: str, played: int) -> str | None:
        """For a model with no truncate (Gemini Live), which remembers its whole answer: a note
        saying how much of `item` the caller heard, or None if they heard (nearly) all of it."""
        generated = self._generated_ms.get(item, 0.0)
        if generated <= 0 or played >= generated - 100:
            return None
        words = "".join(self._said.get(item, [])).split()
        heard = " ".join(words[: int(len(words) * played / generated)])
        if heard:
            return f'(The caller interrupted you. Of your last answer they heard only: "{heard}"; not the rest.)'
        return "(The caller interrupted you before hearing any of your last answer.)"

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

    def drop_queued_output(self) -> None:
        """Drop the agent audio queued or arriving (a near-silent answer, before asking again)."""
        if not self.agent_audio_queued:
            return
        for item in (self.playout.current_item, self._out_item):
            if item is not None:
                self._interrupted_items.add(item)
        self._drop_output()

    # -- dead air ------------------------------------------------------------------------------

    def tools_done(self) -> None:
        self.dead_air.tools_finished(self.clock())
        self.timer_changed()

    def say_filler(self) -> None:
        """A short "one moment" while the caller waits, only over silence."""
        if self.phase is not CallPhase.LIVE or self.agent_audio_queued:
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
        if not self.agent_audio_queued:
            self._run_after_playout()
        else:
            self._goodbye_due = self.clock() + self.options.goodbye_wait_seconds
            self.timer_changed()

    def _run_after_playout(self) -> None:
        action, self._after_playout = self._after_playout, None
        self._goodbye_due = None
        if action is not None:
            self._shell.spawn(action())

    def say_prompt(self, name: str, then: CallOutcome) -> None:
        """Play a pre-rendered prompt in the leg's law (no provider needed), then hang up."""
        if self._after_playout is not None or self.phase is CallPhase.ENDED:
            return
        self._drop_output()
        frames = self._framer.push(prompt_audio(name, self._law))
        last = self._framer.flush(pad=self._silence)
        self.playout.push(f"prompt-{name}", frames + ([last] if last else []))
        self.phase = CallPhase.PROMPTING
        self._idle_due = None
        self.after_playout(self._shell.ending(then))
        self._pump(self.clock())

    def fail_politely(self) -> None:
        self.say_prompt("apology", CallOutcome.PROVIDER_FAILED)

    # -- deadlines (sans-I/O) --------------------------------------------------------------

    def arm_idle_timer(self) -> None:
        if self.phase is CallPhase.LIVE or self.phase is CallPhase.CONNECTING:
            self._idle_due = self.clock() + self.options.idle_timeout_seconds
            self.timer_changed()

    def cancel_idle_timer(self) -> None:
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
            if self.set_ended(CallOutcome.LEG_TIMEOUT):
                self._shell.spawn(self._shell.close_down(hangup=True, session_first=True))
            return
        if self._max_due is not None and now >= self._max_due:
            self._max_due = None
            self.log.info("call reached AGENT_MAX_CALL_SECONDS=%s", self.options.max_call_seconds)
            self.say_prompt("time_limit", CallOutcome.MAX_DURATION)
        if self._idle_due is not None and now >= self._idle_due:
            self._idle_due = None
            self._on_idle_timeout()
        if self.phase is CallPhase.LIVE:
            turn_due, air_due = self.turns.get_timer(), self.dead_air.get_timer()
            if turn_due is not None and now >= turn_due:
                self._shell.spawn(self._shell.on_turns(self.turns.handle_timer(now)))
            if air_due is not None and now >= air_due:
                self._shell.spawn(self._shell.on_dead_air(self.dead_air.handle_timer(now)))
        if self._goodbye_due is not None and now >= self._goodbye_due and self._after_playout is not None:
            self.log.warning("playout did not finish in %.0fs; acting anyway", self.options.goodbye_wait_seconds)
            self._run_after_playout()
        self.timer_changed()

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
        if not self.agent_audio_queued and not (self.runner and self.runner.busy):
            self.log.info("caller silent for %.0fs; ending the call", self.options.idle_timeout_seconds)
            self.say_prompt("idle", CallOutcome.IDLE_TIMEOUT)
        else:
            self.arm_idle_timer()

    def timer_changed(self) -> None:
        """A deadline may have moved: the call's timer re-arms if it is now due earlier."""
        if self.timer is not None:
            self.timer.update()

    # -- the end ---------------------------------------------------------------------------

    def set_ended(self, outcome: CallOutcome) -> bool:
        """End the call (the synchronous half: the shell then closes the leg and the session);
        False if the call had already ended."""
        if self.phase is CallPhase.ENDED:
            return False
        self.outcome = outcome
        self.phase = CallPhase.ENDED
        if self.runner is not None:
            self.runner.close()  # a tool call that still arrives is dropped
        if self.timer is not None:
            self.timer.cancel()
        self.log.info("call ended: %s", outcome.value)
        self._shell.on_ended()
        return True

    @property
    def ended(self) -> bool:
        return self.phase is CallPhase.ENDED
