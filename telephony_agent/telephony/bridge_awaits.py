"""The coroutines of `bridge.CallBridge`: what the bridge awaits (the provider session, the phone
leg, its own teardown), each a function of the bridge.

`bridge.py` is compiled with mypyc and defines no coroutine (a compiled one passes a cancellation
on with the `throw()` signature Python 3.12 deprecates, mypyc/mypyc#1214): each of its methods
that awaits returns the one of its name (the method's docstring says what it does). The rest
(the event loop, barge-in, teardown, `_safe`) are called only from here. None of them runs per frame except on a frame that decided
something (a pause, a barge-in) or that a session could not take at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

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
    RealtimeError,
    RealtimeRunner,
    RealtimeSession,
    Reconnected,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    SpeechStarted,
    SpeechStopped,
    ToolRoundsCapped,
)
from telephony_agent.telephony.bridge_types import EARLY_DIGITS, KEYS_PER_S, CallOutcome, CallPhase
from telephony_agent.telephony.loop_timer import SharedTimer
from telephony_agent.telephony.turns import (
    BatchedSileroScorer,
    DeadAirAction,
    DeadAirDecision,
    SileroBatch,
    TurnAction,
    TurnDecision,
    TurnState,
    make_scorer,
)

if TYPE_CHECKING:
    from telephony_agent.telephony.bridge import CallBridge

__all__ = ["ending", "loop_silero_batch"]


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


def ending(bridge: CallBridge, outcome: CallOutcome) -> Callable[[], Awaitable[None]]:
    """The action that ends the call with `outcome` and hangs up, for `after_playout`."""

    async def hang_up() -> None:
        await bridge.end(outcome, hangup=True)

    return hang_up


async def start(bridge: CallBridge) -> None:
    if bridge._timer is not None:
        bridge._timer.attach()
    bridge._max_due = bridge._started_at + bridge.options.max_call_seconds
    bridge._timer_changed()
    bridge._config = bridge._prepare_config(bridge._config)
    try:
        session = await bridge.model.connect(bridge._config)
    except (RealtimeError, OSError) as exc:
        bridge.stats.provider_errors += 1
        bridge.log.error("provider %s unreachable: %s", bridge.model.provider, exc)
        bridge._fail_politely()
        return
    if bridge.phase is not CallPhase.CONNECTING:  # ended or told to end while connecting
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.close(), 3.0)
        return
    bridge.session = session
    if bridge.options.vad != "off":
        # A few ms of model loading, once the provider is there (never for a refused or failed
        # call), in line: a thread would make a replayed call's timing depend on the machine.
        batch = None
        if bridge.options.vad == "silero":
            batch = _SILERO_BATCHES.get(asyncio.get_running_loop())
            batch.max_wait_s = bridge.options.vad_batch_ms / 1000  # one process's calls share the setting
        scorer = make_scorer(bridge.options.vad, bridge.format.sample_rate, batch)
        if isinstance(scorer, BatchedSileroScorer):
            scorer.on_score = bridge._on_score
        bridge.turns.attach_scorer(scorer)
    try:
        bridge._inbound = bridge._inbound_transcoder(session.input_format)
    except RealtimeError as exc:
        bridge.log.error("%s", exc)
        bridge._fail_politely()
        return
    bridge._input_format = session.input_format
    bridge.phase = CallPhase.LIVE
    bridge.runner = RealtimeRunner(
        session,
        bridge.tools,
        tool_timeout=bridge.options.tool_timeout_seconds,
        max_tool_rounds=bridge.options.max_tool_rounds,
        on_tools_done=bridge._tools_done,
        logger=bridge.log,
    )
    early, bridge._early_audio, bridge._early_bytes = bridge._early_audio, [], 0
    if early:
        await bridge._send_chunk(session, bridge._inbound_chunk(b"".join(early)))
    bridge._event_task = asyncio.create_task(_event_loop(bridge), name=f"call-events-{bridge.call_id}")
    if bridge.options.greeting or bridge.options.speak_first:
        await _safe(bridge, session.create_response())
    digits, bridge._early_digits = bridge._early_digits, []
    if digits:  # after the greeting's request, where a key pressed just after connecting would be
        await _safe(bridge, session.send_text(_pressed(digits)))
    bridge._arm_idle_timer()


async def on_caller_audio(bridge: CallBridge, payload: bytes) -> None:
    rest = bridge.caller_audio_now(payload)
    if rest is not None:
        await rest


async def _decided_then_send(bridge: CallBridge, decisions: list[TurnDecision], session: RealtimeSession,
                             chunk: AudioChunk) -> None:
    await bridge._on_turns(decisions)
    await bridge._send_chunk(session, chunk)


async def _send_chunk(bridge: CallBridge, session: RealtimeSession, chunk: AudioChunk) -> None:
    try:
        await session.send_audio(chunk)
    except RealtimeError as exc:
        bridge.log.debug("audio not sent: %s", exc)


async def on_dtmf(bridge: CallBridge, digit: str) -> None:
    now = bridge._leg_seen = bridge.clock()
    if not bridge._keys.take(now):  # a flood: no hook and no model request for it, counted
        bridge.stats.dtmf_dropped += 1
        if bridge._log_budget.allow("keys", now) is not None:
            bridge.log.warning("keys arrive faster than %g a second: %d dropped so far", KEYS_PER_S,
                             bridge.stats.dtmf_dropped)
        return
    bridge.stats.dtmf.append(digit)
    bridge._arm_idle_timer()
    for hook in bridge.dtmf_hooks:
        result = hook(digit)
        if asyncio.iscoroutine(result):
            await result
    if bridge.phase is CallPhase.CONNECTING:  # a caller keying ahead of the provider: sent by start()
        if len(bridge._early_digits) < EARLY_DIGITS:
            bridge._early_digits.append(digit)
            if len(bridge._early_digits) == EARLY_DIGITS:
                bridge.log.warning("%d keys pressed while the provider connects: later ones are not sent",
                                 EARLY_DIGITS)
    elif bridge.session is not None and bridge.phase in (CallPhase.LIVE, CallPhase.FINISHING):
        await _safe(bridge, bridge.session.send_text(_pressed([digit])))


async def on_hangup(bridge: CallBridge) -> None:
    await bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def _event_loop(bridge: CallBridge) -> None:
    assert bridge.runner is not None and bridge.session is not None
    try:
        async for event in bridge.runner.events():
            received = bridge.clock()
            if isinstance(event, AudioDelta):
                bridge._on_audio(event)
                if bridge.dead_air.needs_audio:
                    await bridge._on_dead_air(bridge.dead_air.agent_audio(bridge._pcm_of(event.data, event.format), received))
            elif isinstance(event, (SpeechStarted, Interrupted)):
                bridge._cancel_idle_timer()
                await _on_provider_speech(bridge, received)
            elif isinstance(event, SpeechStopped):
                bridge.dead_air.caller_turn_ended(received)
                bridge._arm_idle_timer()
            elif isinstance(event, AudioDone):
                bridge._flush_outbound()
            elif isinstance(event, ResponseCreated):
                bridge.dead_air.response_started()
            elif isinstance(event, ResponseDone):
                bridge._flush_outbound()
                await bridge._on_dead_air(bridge.dead_air.response_done(received))
            elif isinstance(event, ResponseFailed):
                bridge.log.warning("response %s %s: %s %s", event.response_id, event.status, event.reason, event.message)
                await bridge._on_dead_air(bridge.dead_air.response_failed(received, event.status, event.reason))
            elif isinstance(event, ToolRoundsCapped):
                bridge.turn_stats.tool_round_caps += 1
                if event.stopped:
                    await bridge._on_dead_air(bridge.dead_air.response_failed(received, "failed", "tool_loop"))
            elif isinstance(event, OutputTranscriptDelta):
                bridge._said.setdefault(event.item_id, []).append(event.delta)
            elif isinstance(event, FunctionCallDone):
                bridge.stats.tool_calls.append(event.name)
                bridge.dead_air.tool_started(received)
                bridge.log.info("tool call %s", event.name)
            elif isinstance(event, InputTranscriptCompleted):
                bridge.stats.transcript.append(("caller", event.transcript))
                bridge.log.debug("caller said: %s", event.transcript)
            elif isinstance(event, OutputTranscriptDone):
                bridge.stats.transcript.append(("agent", event.transcript))
                bridge.log.debug("agent said: %s", event.transcript)
            elif isinstance(event, ErrorEvent):
                bridge.stats.provider_errors += 1
                bridge.log.warning("provider error %s: %s", event.code, event.message)
                if event.fatal:
                    break
            elif isinstance(event, Reconnected):
                bridge.stats.reconnects += 1
    except asyncio.CancelledError:
        raise
    except Exception:
        bridge.log.exception("call event loop failed")
    if bridge.phase is CallPhase.LIVE or bridge.phase is CallPhase.FINISHING:
        reason = bridge.session.disconnect_reason if bridge.session else None
        bridge.log.error("provider session ended mid-call: %s", reason)
        bridge._fail_politely()


async def _on_turns(bridge: CallBridge, decisions: list[TurnDecision]) -> None:
    for d in decisions:
        if d.action is TurnAction.BARGE_IN:
            await _barge_in(bridge, d.at, d)
        else:
            bridge._on_turn(d)
    if decisions:
        bridge._timer_changed()  # a pause has a deadline; a caller turn that ended, an answer owed


async def _on_provider_speech(bridge: CallBridge, received: float) -> None:
    """The provider heard the caller: the detector confirms or rejects it; agent audio that
    is queued but not yet playing is dropped at once, as before."""
    bridge._caller_spoke()
    decisions = bridge.turns.provider_speech(received)
    if decisions:
        await bridge._on_turns(decisions)
    elif bridge.turns.state in (TurnState.LISTENING, TurnState.CALLER_TURN) and (
        not bridge.playout.idle or bridge._out_item is not None
    ):  # queued, not playing yet: nothing for the detector to hear over
        await _barge_in(bridge, received, TurnDecision(TurnAction.BARGE_IN, received, received, "provider"))


async def _barge_in(bridge: CallBridge, received: float, decision: TurnDecision | None = None) -> None:
    item = bridge.playout.current_item or bridge._out_item
    if item is None or bridge.phase is not CallPhase.LIVE:
        return  # the agent is silent (or saying a final goodbye): nothing to interrupt
    now = bridge.clock()
    bridge._confirm_paced(now, pump=False)  # what the clock says has played by now counts as heard
    played = bridge.playout.played_ms(item, now)
    if bridge._out_item is not None:
        bridge._interrupted_items.add(bridge._out_item)
    bridge._interrupted_items.add(item)
    bridge._drop_output()
    bridge.stats.clear_latency_ms.append((bridge.clock() - received) * 1000)
    bridge.stats.barge_ins += 1
    bridge.stats.truncates.append((item, played))
    source = decision.source if decision is not None else "provider"
    bridge.turn_stats.count(bridge.turn_stats.barge_ins, source)
    bridge.turns.agent_stopped(now)
    bridge._caller_spoke()
    bridge.log.info("barge-in (%s): caller heard %d ms of %s (leg round trip %s ms)", source, played, item,
                  bridge.playout.leg_rtt_ms)
    session = bridge.session
    if session is not None:
        prompt = item.startswith("prompt-")  # our own audio: the provider has nothing to truncate
        await _safe(bridge, session.interrupt(audio_end_ms=None if prompt else played))
        if bridge._config.turn_detection.manual:
            await _safe(bridge, session.clear_audio())
        if not prompt and session.text_joins_caller_turn:
            await _tell_what_was_heard(bridge, session, item, played)


async def _tell_what_was_heard(bridge: CallBridge, session: RealtimeSession, item: str, played: int) -> None:
    """A model with no truncate (Gemini Live) remembers its whole answer; while the caller is
    still speaking, a note joins their turn saying how much of it they heard."""
    generated = bridge._generated_ms.get(item, 0.0)
    if generated <= 0 or played >= generated - 100:
        return
    words = "".join(bridge._said.get(item, [])).split()
    heard = " ".join(words[: int(len(words) * played / generated)])
    if heard:
        note = f'(The caller interrupted you. Of your last answer they heard only: "{heard}"; not the rest.)'
    else:
        note = "(The caller interrupted you before hearing any of your last answer.)"
    await _safe(bridge, session.send_text(note))


async def _on_dead_air(bridge: CallBridge, decisions: list[DeadAirDecision]) -> None:
    for d in decisions:
        stats = bridge.turn_stats
        if d.action is DeadAirAction.FILLER:
            bridge.log.info("tool call running past %.1fs: filler", bridge.options.filler_after_seconds)
            bridge._say_filler()
            continue
        stats.count(stats.response_problems, d.reason)
        if d.action is DeadAirAction.APOLOGISE:
            stats.apologies += 1
            bridge.log.error("still no answer (%s) after a retry: apologising and ending the call", d.reason)
            bridge._fail_politely()
            continue
        stats.retries += 1
        bridge.log.warning("no answer from the provider (%s): asking again", d.reason)
        if not bridge.playout.idle or bridge._out_item is not None:  # near-silent audio queued
            for item in (bridge.playout.current_item, bridge._out_item):
                if item is not None:
                    bridge._interrupted_items.add(item)
            bridge._drop_output()
        bridge._say_filler()
        session = bridge.session
        if session is not None and bridge.phase is CallPhase.LIVE:
            await _safe(bridge, session.interrupt())
            await _safe(bridge, session.create_response())
    bridge.turn_stats.dead_air_seconds = bridge.dead_air.dead_air_seconds
    bridge._timer_changed()


async def hangup_after_playout(bridge: CallBridge, outcome: CallOutcome = CallOutcome.AGENT_HANGUP) -> None:
    async def hang_up() -> None:
        await bridge.end(outcome, hangup=True)

    bridge.after_playout(hang_up)


async def transfer_after_playout(bridge: CallBridge, target: str) -> None:
    async def transfer() -> None:
        try:
            await bridge.leg.transfer(target)
        except Exception as exc:  # noqa: BLE001
            bridge.log.error("transfer to %s failed: %s", target, exc)
            await bridge.end(CallOutcome.PROVIDER_FAILED, hangup=True)
            return
        await bridge.end(CallOutcome.TRANSFERRED, hangup=False)

    bridge.after_playout(transfer)


async def shutdown(bridge: CallBridge) -> None:
    bridge._say_prompt("shutdown", CallOutcome.SERVER_SHUTDOWN)


async def end(bridge: CallBridge, outcome: CallOutcome, *, hangup: bool) -> None:
    if bridge._set_ended(outcome):
        await bridge._close_down(hangup=hangup)


async def _close_down(bridge: CallBridge, *, hangup: bool, session_first: bool = False) -> None:
    if session_first:
        await _teardown(bridge)
    try:
        await asyncio.wait_for(bridge.leg.hangup() if hangup else bridge.leg.close(), 10.0)
    except Exception as exc:  # noqa: BLE001 - teardown must go on
        bridge.log.warning("ending the phone leg failed: %s", exc)
    if not session_first:
        await _teardown(bridge)


async def _teardown(bridge: CallBridge) -> None:
    if bridge.runner is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bridge.runner.aclose(), 3.0)
    if bridge.session is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bridge.session.close(), 3.0)
    current = asyncio.current_task()
    tasks = [t for t in (*bridge._tasks, bridge._event_task) if t is not None and t is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=3.0)


async def wait_ended(bridge: CallBridge) -> CallOutcome | None:
    await bridge._ended.wait()
    return bridge.outcome


async def _safe(bridge: CallBridge, awaitable: Awaitable[object]) -> None:
    try:
        await awaitable
    except RealtimeError as exc:
        bridge.log.warning("provider call failed: %s", exc)
