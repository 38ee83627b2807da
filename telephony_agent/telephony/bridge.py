"""`CallBridge`: one phone call bridged to one realtime session, independent of the phone carrier.

A transport (a carrier's media stream, SIP/RTP, ...) hands the bridge a `PhoneLeg` and feeds it the
leg's events through `LegEvents` (`on_caller_audio`, `on_dtmf`, `on_played`, `on_hangup`). The
bridge talks to a `RealtimeSession` and never learns which carrier it is on.

The bridge is two halves. `call_core.CallCore`, compiled, holds the call's state, its deadlines
and every synchronous path (each frame runs only there). This module is the asyncio shell around
it: what awaits the provider session or the phone leg (set-up, the provider's events, keys,
barge-in, dead air, teardown), and the call's tasks. The core asks the shell for those through
`CallShell`; the shell drives the core through its methods. This module stays plain Python, so
its coroutines are ordinary ones (see `call_core` for why no compiled module defines one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from telephony_agent.per_loop import PerLoop
from telephony_agent.realtime import (
    AudioChunk,
    AudioDelta,
    AudioDone,
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
from telephony_agent.telephony.call_core import CallCore
from telephony_agent.telephony.call_tools import register_call_tools
from telephony_agent.telephony.leg import PhoneLeg
from telephony_agent.telephony.loop_timer import CallTimer, SharedTimer
from telephony_agent.telephony.turns import (
    DeadAirAction,
    DeadAirDecision,
    SileroBatch,
    TurnAction,
    TurnDecision,
    TurnState,
    make_scorer,
)

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
    """Implements `LegEvents` for one leg (and `CallShell` for its core); see the module docstring.

    What the rest of the server reads of a call (its counters, phase, session, detector, ...)
    is the core's, named here too.
    """

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
        self.dtmf_hooks: list[DtmfHook] = []
        core = self.core = CallCore(self, call_id, model, config, leg, self.options, self.tools, clock, self.log,
                                    run_timer=run_timer)
        # The core's objects and its synchronous entry points, as the bridge's: a leg calls the
        # compiled methods themselves, with no Python frame between.
        self.stats, self.turn_stats, self.playout, self.pacing = core.stats, core.turn_stats, core.playout, core.pacing
        self.turns, self.dead_air = core.turns, core.dead_air
        self.caller_audio_now = core.caller_audio_now
        self.on_played = core.on_played
        self.get_timer, self.handle_timer = core.get_timer, core.handle_timer
        self.after_playout = core.after_playout
        register_call_tools(self.tools, self, self.options.transfer_allowlist, self.log)
        self.ended = False  # set by the core's `on_ended`: legs read it on every frame
        self._early_digits: list[str] = []
        self._ended = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._event_task: asyncio.Task[None] | None = None

    @property
    def phase(self) -> CallPhase:
        return self.core.phase

    @property
    def session(self) -> RealtimeSession | None:
        return self.core.session

    @property
    def runner(self) -> RealtimeRunner | None:
        return self.core.runner

    @property
    def outcome(self) -> CallOutcome | None:
        return self.core.outcome

    # -- set-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the provider session and start handling its events. A failure is spoken to the caller."""
        core = self.core
        if core.timer is not None:
            core.timer.attach()
        config = core.begin()
        try:
            session = await self.model.connect(config)
        except (RealtimeError, OSError) as exc:
            self.stats.provider_errors += 1
            self.log.error("provider %s unreachable: %s", self.model.provider, exc)
            core.fail_politely()
            return
        if core.phase is not CallPhase.CONNECTING:  # ended or told to end while connecting
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.close(), 3.0)
            return
        try:
            early = core.go_live(session)
        except RealtimeError as exc:  # the session is the core's now: teardown closes it
            self.log.error("%s", exc)
            core.fail_politely()
            return
        core.runner = RealtimeRunner(
            session,
            self.tools,
            tool_timeout=self.options.tool_timeout_seconds,
            max_tool_rounds=self.options.max_tool_rounds,
            on_tools_done=core.tools_done,
            logger=self.log,
        )
        if self.options.vad != "off":
            # A few ms of model loading, once the provider is there (never for a refused or failed
            # call), in line: a thread would make a replayed call's timing depend on the machine.
            batch = None
            if self.options.vad == "silero":
                batch = _SILERO_BATCHES.get(asyncio.get_running_loop())
                batch.max_wait_s = self.options.vad_batch_ms / 1000  # one process's calls share the setting
            core.score_with(make_scorer(self.options.vad, self.format.sample_rate, batch))
        if early is not None:
            await self.send_chunk(session, early)
        self._event_task = asyncio.create_task(self._event_loop(), name=f"call-events-{self.call_id}")
        core.runner.take_audio_now(self._audio_now)
        if self.options.greeting or self.options.speak_first:
            await self._safe(session.create_response())
        digits, self._early_digits = self._early_digits, []
        if digits:  # after the greeting's request, where a key pressed just after connecting would be
            await self._safe(session.send_text(_pressed(digits)))
        core.arm_idle_timer()

    # -- LegEvents: from the phone leg ---------------------------------------------------

    async def on_caller_audio(self, payload: bytes) -> None:
        """Caller audio in the leg's format (`caller_audio_now`, awaiting what it leaves)."""
        rest = self.core.caller_audio_now(payload)
        if rest is not None:
            await rest

    async def on_dtmf(self, digit: str) -> None:
        if not self.core.on_key(digit):
            return
        for hook in self.dtmf_hooks:
            result = hook(digit)
            if asyncio.iscoroutine(result):
                await result
        phase = self.core.phase
        if phase is CallPhase.CONNECTING:  # a caller keying ahead of the provider: sent by start()
            if len(self._early_digits) < EARLY_DIGITS:
                self._early_digits.append(digit)
                if len(self._early_digits) == EARLY_DIGITS:
                    self.log.warning("%d keys pressed while the provider connects: later ones are not sent",
                                     EARLY_DIGITS)
        elif self.core.session is not None and phase in (CallPhase.LIVE, CallPhase.FINISHING):
            await self._safe(self.core.session.send_text(_pressed([digit])))

    async def on_hangup(self) -> None:
        """The caller hung up (or the leg ended the media stream)."""
        await self.end(CallOutcome.CALLER_HANGUP, hangup=False)

    # -- CallShell: what the core awaits ---------------------------------------------------

    def spawn(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_chunk(self, session: RealtimeSession, chunk: AudioChunk) -> None:
        try:
            await session.send_audio(chunk)
        except RealtimeError as exc:
            self.log.debug("audio not sent: %s", exc)

    async def decided_then_send(self, decisions: list[TurnDecision], session: RealtimeSession,
                                chunk: AudioChunk) -> None:
        await self.on_turns(decisions)
        await self.send_chunk(session, chunk)

    def ending(self, outcome: CallOutcome) -> Callable[[], Awaitable[None]]:
        async def hang_up() -> None:
            await self.end(outcome, hangup=True)

        return hang_up

    def on_ended(self) -> None:
        self.ended = True
        self._ended.set()

    # -- provider events -------------------------------------------------------------------

    async def _event_loop(self) -> None:
        core = self.core
        assert core.runner is not None and core.session is not None
        try:
            async for event in core.runner.events():
                received = self.clock()
                if isinstance(event, AudioDelta):
                    decisions = core.on_audio(event, received)
                    if decisions:
                        await self.on_dead_air(decisions)
                elif isinstance(event, (SpeechStarted, Interrupted)):
                    core.cancel_idle_timer()
                    await self._on_provider_speech(received)
                elif isinstance(event, SpeechStopped):
                    self.dead_air.caller_turn_ended(received)
                    core.arm_idle_timer()
                elif isinstance(event, AudioDone):
                    core.flush_outbound()
                elif isinstance(event, ResponseCreated):
                    self.dead_air.response_started()
                elif isinstance(event, ResponseDone):
                    core.flush_outbound()
                    await self.on_dead_air(self.dead_air.response_done(received))
                elif isinstance(event, ResponseFailed):
                    self.log.warning("response %s %s: %s %s", event.response_id, event.status, event.reason,
                                     event.message)
                    await self.on_dead_air(self.dead_air.response_failed(received, event.status, event.reason))
                elif isinstance(event, ToolRoundsCapped):
                    self.turn_stats.tool_round_caps += 1
                    if event.stopped:
                        await self.on_dead_air(self.dead_air.response_failed(received, "failed", "tool_loop"))
                elif isinstance(event, OutputTranscriptDelta):
                    core.agent_said(event.item_id, event.delta)
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
        if core.phase is CallPhase.LIVE or core.phase is CallPhase.FINISHING:
            reason = core.session.disconnect_reason if core.session else None
            self.log.error("provider session ended mid-call: %s", reason)
            core.fail_politely()

    def _audio_now(self, event: AudioDelta) -> bool:
        """Agent audio handled where the provider's socket read it, while the event task waits
        with nothing before it (`RealtimeRunner.take_audio_now`): most of a call's deltas. Left
        to the task (False) while the dead-air guard listens, as its decisions are awaited
        there, and once the call has ended. Should `on_audio` raise (a format no transcoder
        reaches), the task meets the same delta and ends the call as it always has."""
        core = self.core
        if core.phase is CallPhase.ENDED or core.dead_air.needs_audio:
            return False
        try:
            core.on_audio(event, self.clock())
        except Exception:  # noqa: BLE001 -- handed to the task, which fails the same way
            return False
        return True

    # -- barge-in --------------------------------------------------------------------------

    async def on_turns(self, decisions: list[TurnDecision]) -> None:
        """Act on the turn detector's decisions (pause / resume / barge-in / the caller's turn)."""
        for d in decisions:
            if d.action is TurnAction.BARGE_IN:
                await self._barge_in(d.at, d.source)
            else:
                self.core.on_turn(d)
        if decisions:
            self.core.timer_changed()  # a pause has a deadline; a caller turn that ended, an answer owed

    async def _on_provider_speech(self, received: float) -> None:
        """The provider heard the caller: the detector confirms or rejects it; agent audio that
        is queued but not yet playing is dropped at once, as before."""
        core = self.core
        core.caller_spoke()
        decisions = self.turns.provider_speech(received)
        if decisions:
            await self.on_turns(decisions)
        elif self.turns.state in (TurnState.LISTENING, TurnState.CALLER_TURN) and core.agent_audio_queued:
            await self._barge_in(received, "provider")  # queued, not playing yet: nothing to hear over

    async def _barge_in(self, received: float, source: str) -> None:
        """Stop the agent (the core), then tell the provider how much of its answer was heard."""
        core = self.core
        interrupted = core.barge_in(received, source)
        session = core.session
        if interrupted is None or session is None:
            return
        item, played = interrupted
        prompt = item.startswith("prompt-")  # our own audio: the provider has nothing to truncate
        await self._safe(session.interrupt(audio_end_ms=None if prompt else played))
        if core.config.turn_detection.manual:
            await self._safe(session.clear_audio())
        if not prompt and session.text_joins_caller_turn:
            # A model with no truncate (Gemini Live): a note joins the caller's turn
            note = core.heard_note(item, played)
            if note is not None:
                await self._safe(session.send_text(note))

    # -- dead air ------------------------------------------------------------------------------

    async def on_dead_air(self, decisions: list[DeadAirDecision]) -> None:
        """Recover from dead air: ask once more (a short filler covers the wait), then apologise."""
        core, stats = self.core, self.turn_stats
        for d in decisions:
            if d.action is DeadAirAction.FILLER:
                self.log.info("tool call running past %.1fs: filler", self.options.filler_after_seconds)
                core.say_filler()
                continue
            stats.count(stats.response_problems, d.reason)
            if d.action is DeadAirAction.APOLOGISE:
                stats.apologies += 1
                self.log.error("still no answer (%s) after a retry: apologising and ending the call", d.reason)
                core.fail_politely()
                continue
            stats.retries += 1
            self.log.warning("no answer from the provider (%s): asking again", d.reason)
            core.drop_queued_output()  # near-silent audio queued
            core.say_filler()
            session = core.session
            if session is not None and core.phase is CallPhase.LIVE:
                await self._safe(session.interrupt())
                await self._safe(session.create_response())
        stats.dead_air_seconds = self.dead_air.dead_air_seconds
        core.timer_changed()

    # -- call control (CallControl, used by the built-in tools) ---------------------------------

    async def hangup_after_playout(self, outcome: CallOutcome = CallOutcome.AGENT_HANGUP) -> None:
        self.core.after_playout(self.ending(outcome))

    async def transfer_after_playout(self, target: str) -> None:
        async def transfer() -> None:
            try:
                await self.leg.transfer(target)
            except Exception as exc:  # noqa: BLE001
                self.log.error("transfer to %s failed: %s", target, exc)
                await self.end(CallOutcome.PROVIDER_FAILED, hangup=True)
                return
            await self.end(CallOutcome.TRANSFERRED, hangup=False)

        self.core.after_playout(transfer)

    async def shutdown(self) -> None:
        """Server is draining past its deadline: end politely."""
        self.core.say_prompt("shutdown", CallOutcome.SERVER_SHUTDOWN)

    # -- teardown --------------------------------------------------------------------------

    async def end(self, outcome: CallOutcome, *, hangup: bool) -> None:
        """End the call once: the phone leg, then the provider session."""
        if self.core.set_ended(outcome):
            await self.close_down(hangup=hangup)

    async def close_down(self, *, hangup: bool, session_first: bool = False) -> None:
        """Normally the leg goes first (a tool's last result still reaches the session while the
        carrier hangs up); a dead leg may take its full bound to close, so the provider session,
        which costs money, is closed before it.
        """
        if session_first:
            await self._teardown()
        try:
            await asyncio.wait_for(self.leg.hangup() if hangup else self.leg.close(), 10.0)
        except Exception as exc:  # noqa: BLE001 - teardown must go on
            self.log.warning("ending the phone leg failed: %s", exc)
        if not session_first:
            await self._teardown()

    async def _teardown(self) -> None:
        core = self.core
        if core.runner is not None:
            core.runner.take_audio_now(None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(core.runner.aclose(), 3.0)
        if core.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(core.session.close(), 3.0)
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, self._event_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)

    async def wait_ended(self) -> CallOutcome | None:
        await self._ended.wait()
        return self.core.outcome

    async def _safe(self, awaitable: Awaitable[object]) -> None:
        try:
            await awaitable
        except RealtimeError as exc:
            self.log.warning("provider call failed: %s", exc)
