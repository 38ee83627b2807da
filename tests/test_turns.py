"""Turn-taking decisions on real speech (eSpeak NG) and sox-made noise, on a virtual clock
(`telephony_agent.testing.turn_sim`: the agent talks, the caller leg carries sounds and echo)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from telephony_agent.telephony.turns import (
    DeadAirAction,
    DeadAirGuard,
    EchoGuard,
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
    near_silent,
)
from telephony_agent.testing import turn_sim
from telephony_agent.testing.noise import NAMES, noise_pcm16
from telephony_agent.testing.speech import speech_pcm16
from telephony_agent.testing.turn_sim import AGENT_TEXT, Run, law
from telephony_agent.testing.turn_sim import onset as _onset

INTERRUPTION = "wait, stop, I have a different question"


def _pcm(text: str, **kwargs: object) -> np.ndarray:
    return np.frombuffer(speech_pcm16(text, **kwargs), "<i2").astype(np.float64)  # type: ignore[arg-type]


def _pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def simulate(caller: list[tuple[float, np.ndarray]], **kwargs: Any) -> Run:
    return turn_sim.simulate(law(_pcm(AGENT_TEXT, voice="en-us+f3")), caller, **kwargs)


@pytest.mark.parametrize("vad", ["silero", "energy"])
def test_a_real_interruption_pauses_at_once_and_barges_in(vad: str) -> None:
    speech = _pcm(INTERRUPTION)
    run = simulate([(3.0, speech)], settings=TurnSettings(vad=vad))
    onset = _onset(speech, 3.0)
    pause, barge = run.first(TurnAction.PAUSE), run.first(TurnAction.BARGE_IN)
    assert pause is not None and barge is not None, run.decisions
    if vad == "silero":
        assert pause.at - onset <= 0.3  # outbound audio stopped within 300 ms of speech onset
        assert run.actions() == [TurnAction.PAUSE, TurnAction.BARGE_IN]
    assert barge.at - onset < 2.5
    assert barge.source == "local"


def test_a_caller_louder_than_any_echo_the_line_allows_is_no_echo_without_an_fft() -> None:
    """No echo on the line (it stayed quiet while only the agent spoke): the onset is bounded out
    of being the agent's echo before any correlation is computed, and still pauses the agent."""
    detector = TurnDetector(TurnSettings())
    run = simulate([(3.0, _pcm(INTERRUPTION))], detector=detector)
    assert run.actions() == [TurnAction.PAUSE, TurnAction.BARGE_IN]
    assert detector.echo.explains_asked >= 1 and detector.echo.explains_searched == 0


@pytest.mark.parametrize("vad", ["silero", "energy"])
@pytest.mark.parametrize("noise", NAMES)
def test_noise_over_agent_speech_leaves_the_agent_talking(noise: str, vad: str) -> None:
    run = simulate([(3.0, np.frombuffer(noise_pcm16(noise), "<i2").astype(np.float64))], settings=TurnSettings(vad=vad))
    assert TurnAction.BARGE_IN not in run.actions(), run.decisions
    assert run.actions().count(TurnAction.PAUSE) == run.actions().count(TurnAction.RESUME)
    assert run.continuous()
    if vad == "silero":
        assert run.actions() == []  # Silero does not even pause for these


@pytest.mark.parametrize("word", ["mhm", "yeah", "okay", "uh-huh", "right"])
def test_backchannels_do_not_end_the_agents_turn(word: str) -> None:
    run = simulate([(3.0, _pcm(word))])
    assert TurnAction.BARGE_IN not in run.actions(), run.decisions
    assert run.actions() == [TurnAction.PAUSE, TurnAction.RESUME]
    assert run.continuous()
    resume = run.first(TurnAction.RESUME)
    assert resume is not None and resume.reason == "backchannel"


def test_backchannels_interrupt_when_turned_off() -> None:
    run = simulate([(3.0, _pcm("okay"))], settings=TurnSettings(backchannel_ms=0))
    assert TurnAction.BARGE_IN in run.actions()


@pytest.mark.parametrize(("echo_db", "echo_ms"), [(-6, 100), (-10, 150), (-20, 300)])
def test_agent_echo_is_not_an_interruption(echo_db: float, echo_ms: int) -> None:
    run = simulate([], echo_db=echo_db, echo_ms=echo_ms)
    assert run.actions() == []


@pytest.mark.parametrize("schedule_lead_s", [0.0, 0.2, 2.0])  # 2 s: the longest AGENT_PLAYOUT_LEAD_MS
def test_caller_speech_over_the_echo_barges_in(schedule_lead_s: float) -> None:
    speech = _pcm(INTERRUPTION)
    quiet = simulate([], echo_db=-10, echo_ms=150, schedule_lead_s=schedule_lead_s)
    assert quiet.actions() == []
    run = simulate([(3.0, speech)], echo_db=-10, echo_ms=150, schedule_lead_s=schedule_lead_s)
    pause = run.first(TurnAction.PAUSE)
    assert pause is not None and pause.at - _onset(speech, 3.0) <= 0.3
    assert TurnAction.BARGE_IN in run.actions()


@pytest.mark.parametrize("jitter_s", [0.04, 0.12])
def test_caller_frames_arriving_with_jitter_do_not_move_the_echo(jitter_s: float) -> None:
    """Frames that come a little late, by a different amount each (a busy loop, a jittery
    network), neither make the agent's echo an interruption nor hide the caller speaking over it."""
    quiet = simulate([], echo_db=-10, echo_ms=150, jitter_s=jitter_s)
    assert quiet.actions() == []
    speech = _pcm(INTERRUPTION)
    run = simulate([(3.0, speech)], echo_db=-10, echo_ms=150, jitter_s=jitter_s)
    assert TurnAction.BARGE_IN in run.actions()


ECHO_MOVES = {
    "slip": ((2.5, 270),),
    "catch-up": ((2.5, 60),),
    "long slip": ((2.5, 400),),
    "there and back": ((2.0, 300), (4.0, 150)),
    "drift": ((1.5, 230), (3.0, 310), (4.5, 390)),
}


@pytest.mark.parametrize(
    ("moves", "echo_db"),
    [(moves, -10) for moves in ECHO_MOVES.values()] + [(ECHO_MOVES["slip"], -6), (ECHO_MOVES["catch-up"], -6)],
    ids=[f"{name}, -10 dB" for name in ECHO_MOVES] + ["slip, -6 dB", "catch-up, -6 dB"],
)
def test_an_echo_path_that_moves_is_still_not_an_interruption(moves: tuple[tuple[float, int], ...], echo_db: float) -> None:
    """The leg's playout slips or catches up mid-answer (a stalled event loop, a jitter buffer
    that grew), so the echo comes back at a new delay before the path estimate follows it: that
    is no interruption, and the caller speaking just after it still is one."""
    quiet = simulate([], echo_db=echo_db, echo_ms=150, echo_moves=moves)
    assert quiet.actions() == []
    speech = _pcm(INTERRUPTION)
    at = moves[-1][0] + 0.3
    run = simulate([(at, speech)], seconds=at + 2.0, echo_db=echo_db, echo_ms=150, echo_moves=moves)
    pause = run.first(TurnAction.PAUSE)
    assert pause is not None and 0.0 <= pause.at - _onset(speech, at) <= 0.3
    assert TurnAction.BARGE_IN in run.actions()


@pytest.mark.parametrize("echo_db", [None, -20])
def test_a_timeline_moved_mid_interruption_keeps_what_was_learnt_of_the_line(echo_db: float | None) -> None:
    """Caller frames read 50 ms late for minutes (a busy server), then on time: the detector moves
    its timeline back during the caller's interruption. The line's level against the agent is no
    less true after a move that small; forgotten, the echo bound went back to the agent's own
    level and took the caller's speech over it for echo: 'too short', and the agent resumed."""
    speech = _pcm(INTERRUPTION)
    detector = TurnDetector(TurnSettings())
    run = simulate([(4.0, speech)], seconds=6.5, echo_db=echo_db, echo_ms=150, detector=detector,
                   slow_until=(4.15, 0.05))
    assert detector.timeline_moves == 1
    pause = run.first(TurnAction.PAUSE)
    assert pause is not None and 0.0 <= pause.at - _onset(speech, 4.0) <= 0.3
    assert TurnAction.BARGE_IN in run.actions() and TurnAction.RESUME not in run.actions(), run.actions()


@pytest.mark.parametrize("echo_db", [-6, -10, -20])
def test_a_timeline_moved_mid_call_is_no_interruption_of_the_echo(echo_db: float) -> None:
    """The other side of keeping the line level over a small move: the agent's echo alone, with
    the timeline moved back 50 ms mid-answer, pauses nothing."""
    detector = TurnDetector(TurnSettings())
    run = simulate([], seconds=7.0, echo_db=echo_db, echo_ms=150, detector=detector, slow_until=(4.15, 0.05))
    assert detector.timeline_moves == 1 and run.actions() == []


@pytest.mark.parametrize(
    "timeline",
    [{"late_start_s": 0.3}, {"late_start_s": 1.0}, {"lost": (2.0, 0.3)}, {"lost": (1.5, 1.0)}],
    ids=["start 0.3 s late", "start 1 s late", "0.3 s lost", "1 s lost"],
)
def test_a_stalled_start_or_lost_audio_does_not_move_the_echo(timeline: dict[str, Any]) -> None:
    """The first caller frames arrive late in a burst (a stalled start), or the leg loses a
    stretch of the caller's audio: caller sample 0, or the samples after the gap, would sit
    late on the clock for the rest of the call, out of the echo guard's reach. The detector
    finds that from when frames arrive, corrects its timeline, and stays right: the echo is
    no interruption, and the caller speaking later still is."""
    detector = TurnDetector(TurnSettings())
    quiet = simulate([], echo_db=-6, echo_ms=150, detector=detector, **timeline)
    assert quiet.actions() == [] and detector.timeline_moves == 1
    assert detector.echo.delay is not None and abs(detector.echo.delay - 150 * 8) <= 2
    speech = _pcm(INTERRUPTION)
    run = simulate([(4.0, speech)], seconds=6.0, echo_db=-6, echo_ms=150, **timeline)
    pause = run.first(TurnAction.PAUSE)
    assert pause is not None and 0.0 <= pause.at - _onset(speech, 4.0) <= 0.3
    assert TurnAction.BARGE_IN in run.actions()


def test_a_provider_signal_alone_pauses_then_resumes() -> None:
    run = simulate([], provider_speech_at=3.0)
    assert run.actions() == [TurnAction.PAUSE, TurnAction.RESUME]
    pause, resume = run.first(TurnAction.PAUSE), run.first(TurnAction.RESUME)
    assert pause is not None and resume is not None and pause.source == "provider"
    assert resume.at - pause.at <= 0.5
    assert run.continuous()


def test_provider_and_local_speech_together_barge_in_as_both() -> None:
    speech = _pcm(INTERRUPTION)
    run = simulate([(3.0, speech)], provider_speech_at=3.3)
    barge = run.first(TurnAction.BARGE_IN)
    assert barge is not None and barge.source == "both"


def test_without_a_local_detector_the_provider_signal_barges_in() -> None:
    run = simulate([], provider_speech_at=3.0, settings=TurnSettings(vad="off"))
    assert run.actions() == [TurnAction.BARGE_IN]
    assert run.decisions[0].source == "provider"


def test_a_pause_never_outlasts_max_pause_without_caller_audio() -> None:
    detector = TurnDetector(TurnSettings())
    detector.caller_audio(b"\x00\x00" * 160, 0.02)
    detector.agent_audio(b"\x10\x10" * 8000, 0.02)
    assert [d.action for d in detector.provider_speech(0.5)] == [TurnAction.PAUSE]
    deadline = detector.get_timer()
    assert deadline is not None and 0.5 < deadline <= 0.5 + 1.5
    assert detector.handle_timer(deadline - 0.01) == []
    assert [d.action for d in detector.handle_timer(deadline)] == [TurnAction.RESUME]
    assert detector.get_timer() is None


def test_caller_turn_end_is_reported_when_the_agent_is_silent() -> None:
    detector = TurnDetector(TurnSettings())
    speech = law(_pcm("what are your opening hours"))
    x = np.concatenate([np.zeros(4000), speech, np.zeros(12000)])
    decisions: list[TurnDecision] = []
    for i in range(x.size // 160):
        decisions += detector.caller_audio(x[i * 160 : (i + 1) * 160].astype("<i2").tobytes(), (i + 1) * 0.02)
    kinds = [d.action for d in decisions]
    assert kinds == [TurnAction.CALLER_STARTED, TurnAction.CALLER_ENDED]
    end = decisions[1]
    speech_end = (4000 + speech.size) / 8000
    assert detector.last_speech_end is not None and abs(detector.last_speech_end - speech_end) < 0.6
    assert end.at - detector.last_speech_end >= 0.6



def test_path_estimates_back_off_while_they_find_no_echo_or_the_same_path() -> None:
    """The caller talks over the agent on a leg with no echo: the FFT path search finds nothing,
    so it runs every 200, then 400, then 800 ms. On a leg with a steady echo it finds the same
    path again and again: every 400 ms once it has (18 searches in 4.5 s before, 10 now)."""
    talk = law(_pcm("I would like to book a table for two people tonight please, at eight") * 0.3)
    never = TurnSettings(min_interruption_ms=10_000, max_pause_ms=10_000)  # never barges in
    no_echo = TurnDetector(never)
    simulate([(0.5, talk)], seconds=4.5, provider_speech_at=None, detector=no_echo)
    guard = no_echo.echo
    assert 1 <= guard.searches <= 7 and guard.best_peak < 0.5, (guard.searches, guard.best_peak)
    echo = TurnDetector(TurnSettings())
    assert simulate([], seconds=4.5, echo_db=-10, detector=echo).actions() == []
    guard = echo.echo
    assert 8 <= guard.searches <= 12 and guard.worst_peak > 0.9, (guard.searches, guard.worst_peak)


def test_the_loudest_reference_block_is_bounded_from_cells_within_a_cell() -> None:
    """The echo guard's bound on the loudest block of reference in range comes from per-cell
    energies brought up to date lazily as the reference is written, moved and cut: always what
    cells computed afresh give, never below the exact value (a sample at a time) and above it by
    at most a cell's share, through every way the reference changes (chunks at any offset,
    several between two questions, overwrites, cuts, the timeline moving, the window sliding)."""
    rng = np.random.default_rng(3)
    guard = EchoGuard(8000)
    n, cell = 256, 8
    at, size = 0, 1
    for step in range(400):
        if rng.random() < 0.2:  # a clear inside what the last question saw written
            guard.cut_reference(at + int(rng.integers(0, size)))
        for _ in range(int(rng.integers(1, 4))):
            at, size = guard._mic_end + int(rng.integers(-600, 4000)), int(rng.integers(1, 400))
            guard.add_reference(_pcm16(rng.normal(0, float(rng.choice([30.0, 3000.0])), size)), at)
            if rng.random() < 0.1:
                guard.cut_reference(guard._mic_end + int(rng.integers(-200, 2000)))
            if rng.random() < 0.05:
                guard.shift(int(rng.integers(-300, 300)))
            if rng.random() < 0.05:  # audio scheduled far ahead: the buffer moves under the rest
                guard.add_reference(_pcm16(rng.normal(0, 3000, 160)), guard._mic_end + guard._cap - int(rng.integers(0, 8000)))
        guard.hear(_pcm16(rng.normal(0, 100, n)), n)  # the caller's timeline moves on
        lo, hi = guard._mic_end - guard.max_delay - 1, guard._mic_end + n + guard.lead + 1
        bound = guard._loudest_block(lo, hi, n)
        # the same bound from cells computed afresh
        a, b = max(lo - guard._ref_base, 0), min(hi - guard._ref_base, guard._cap)
        ref = guard._ref.astype(np.float64)
        fresh = np.add.reduceat(ref * ref, np.arange(0, guard._cap, cell))[a // cell : -(-b // cell)]
        k = (n + 2 * cell - 2) // cell
        sums = np.convolve(fresh, np.ones(k), "valid") if fresh.size > k else np.array([fresh.sum()])
        assert bound == pytest.approx(float(sums.max()) / n, rel=1e-9, abs=1e-6), step
        span = guard._ref_slice(lo, hi)
        c = np.concatenate([[0.0], np.cumsum(span * span)])
        exact = float((c[n:] - c[:-n]).max()) / n
        assert exact <= bound * (1 + 1e-9) + 1e-9, (step, exact, bound)


def test_speech_that_did_enough_is_scored_sparingly() -> None:
    """Silero is most of the detector's cost: a barge-in that already has `min_interruption_ms`
    of speech is scored every other block while the pause waits to confirm it, and a caller
    turn while the agent is silent is scored only until 128 ms of it are speech (energy follows
    it from there), with the same decisions (18 and 11 blocks scored before)."""
    talk = law(_pcm(INTERRUPTION))
    detector = TurnDetector(TurnSettings())
    run = simulate([(1.5, talk)], seconds=5.0, detector=detector)
    assert run.actions() == [TurnAction.PAUSE, TurnAction.BARGE_IN]
    assert abs(run.decisions[0].onset - _onset(talk, 1.5)) < 0.1  # type: ignore[operator]
    assert detector.scored_blocks <= 15, detector.scored_blocks
    detector = TurnDetector(TurnSettings())
    run = turn_sim.simulate(np.zeros(0), [(0.5, talk)], seconds=4.0, detector=detector)
    assert [d.action for d in run.decisions] == [TurnAction.CALLER_STARTED, TurnAction.CALLER_ENDED]
    assert detector.scored_blocks <= 8, detector.scored_blocks


@pytest.mark.parametrize("echo_db", [None, -10.0])
@pytest.mark.parametrize("gap_s", [0.2, 0.4, 1.0])
def test_a_caller_answering_promptly_starts_their_turn(gap_s: float, echo_db: float | None) -> None:
    """The caller speaks `gap_s` after the answer played out, while its echo could still come
    back: no pause (nothing is left to interrupt), their turn starts and ends (the dead-air guard
    needs the end), and Silero scores the onset only, not every block of the turn."""
    agent = law(_pcm("Our opening hours are nine to five on weekdays.", voice="en-us+f3"))
    caller = law(_pcm("I would like to book a table for two people tonight please") * 0.7)
    at = agent.size / 8000 + gap_s
    detector = TurnDetector(TurnSettings())
    run = turn_sim.simulate(agent, [(at, caller)], seconds=at + caller.size / 8000 + 1.0, detector=detector,
                            noise_dbfs=-70.0, echo_db=echo_db)
    assert [d.action for d in run.decisions] == [TurnAction.CALLER_STARTED, TurnAction.CALLER_ENDED]
    assert abs(run.decisions[0].onset - _onset(caller, at)) < 0.1  # type: ignore[operator]
    assert detector.scored_blocks <= 15, detector.scored_blocks  # the onset; the whole turn is ~110 blocks

def test_16khz_caller_audio() -> None:
    detector = TurnDetector(TurnSettings(), sample_rate=16000)
    speech = _pcm(INTERRUPTION, rate=16000)
    agent = _pcm(AGENT_TEXT, rate=16000, voice="en-us+f3")
    x = np.concatenate([np.zeros(32000), speech, np.zeros(8000)])
    actions = []
    for i in range(x.size // 320):
        if i * 320 < agent.size:
            detector.agent_audio(agent[i * 320 : (i + 1) * 320].astype("<i2").tobytes(), i * 0.02)
        actions += [d.action for d in detector.caller_audio(x[i * 320 : (i + 1) * 320].astype("<i2").tobytes(), (i + 1) * 0.02)]
    assert actions[:2] == [TurnAction.PAUSE, TurnAction.BARGE_IN]


# -- dead air -----------------------------------------------------------------------------------

LOUD = (np.sin(np.arange(2400) / 3) * 8000).astype("<i2").tobytes()
SILENT = bytes(4800)


def test_near_silent() -> None:
    assert near_silent(SILENT)
    assert near_silent((np.ones(2400) * 20).astype("<i2").tobytes())
    assert not near_silent(LOUD)


def test_no_answer_is_retried_once_then_apologised_for() -> None:
    guard = DeadAirGuard(response_timeout=4.0)
    guard.caller_turn_ended(10.0)
    assert guard.get_timer() == 14.0
    assert guard.handle_timer(13.9) == []
    assert [d.action for d in guard.handle_timer(14.0)] == [DeadAirAction.RETRY]
    assert guard.get_timer() == 18.0
    decisions = guard.handle_timer(18.0)
    assert [(d.action, d.reason) for d in decisions] == [(DeadAirAction.APOLOGISE, "response_timeout")]
    assert guard.get_timer() is None
    assert guard.dead_air_seconds == pytest.approx(7.0)


def test_an_answer_in_time_settles_it() -> None:
    guard = DeadAirGuard(response_timeout=4.0)
    guard.caller_turn_ended(10.0)
    assert guard.agent_audio(LOUD, 11.5) == []
    assert guard.get_timer() is None and not guard.waiting
    assert guard.dead_air_seconds == pytest.approx(0.5)


def test_a_failed_response_is_retried_then_apologised_for() -> None:
    guard = DeadAirGuard()
    guard.caller_turn_ended(0.0)
    assert [d.action for d in guard.response_failed(0.5, "failed", "server_error")] == [DeadAirAction.RETRY]
    assert [d.action for d in guard.response_failed(1.0, "failed", "server_error")] == [DeadAirAction.APOLOGISE]


def test_an_incomplete_response_that_was_heard_is_left_alone() -> None:
    guard = DeadAirGuard()
    guard.caller_turn_ended(0.0)
    guard.response_started()
    guard.agent_audio(LOUD, 0.5)
    assert guard.response_failed(2.0, "incomplete", "max_output_tokens") == []
    guard.caller_turn_ended(3.0)
    guard.response_started()
    assert [d.action for d in guard.response_failed(3.5, "incomplete", "content_filter")] == [DeadAirAction.RETRY]


def test_near_silent_output_is_no_answer() -> None:
    guard = DeadAirGuard(near_silent_after=1.5)
    guard.caller_turn_ended(0.0)
    for k in range(10):
        assert guard.agent_audio(SILENT, 0.5 + 0.1 * k) == []
    assert guard.get_timer() == pytest.approx(2.0)
    assert [(d.action, d.reason) for d in guard.handle_timer(2.0)] == [(DeadAirAction.RETRY, "near_silent")]


def _state(obj: object) -> dict[str, Any]:
    """Every attribute of `obj`, compiled (mypyc classes list theirs; they have no `__dict__`) or not."""
    names = getattr(type(obj), "__mypyc_attrs__", None)
    return {n: getattr(obj, n) for n in names if hasattr(obj, n)} if names else dict(vars(obj))


@pytest.mark.parametrize("seed", range(4))
def test_audio_the_guard_does_not_need_changes_nothing(seed: int) -> None:
    """The bridge skips converting agent audio for the guard while `needs_audio` is False: in
    random sequences of everything the guard hears, agent audio then changes none of its state."""
    rng = np.random.default_rng(seed)
    guard = DeadAirGuard(response_timeout=4.0, filler_after=2.0)
    now, skipped = 0.0, 0
    for _ in range(400):
        now += float(rng.uniform(0.0, 0.7))
        kind = int(rng.integers(0, 9))
        if kind <= 2:
            needed, before = guard.needs_audio, _state(guard)
            out = guard.agent_audio(SILENT if rng.integers(0, 2) else LOUD, now)
            if not needed:
                skipped += 1
                assert out == [] and _state(guard) == before
        elif kind == 3:
            guard.caller_turn_ended(now)
        elif kind == 4:
            guard.caller_spoke()
        elif kind == 5:
            guard.response_started()
            guard.response_done(now)
        elif kind == 6:
            guard.tool_started(now)
        elif kind == 7:
            guard.tools_finished(now)
        elif guard.get_timer() is not None and now >= guard.get_timer():  # type: ignore[operator]
            guard.handle_timer(now)
    assert skipped > 20


def test_a_slow_tool_gets_one_filler_and_holds_the_timeout() -> None:
    guard = DeadAirGuard(response_timeout=4.0, filler_after=2.0)
    guard.caller_turn_ended(0.0)
    guard.tool_started(0.5)
    guard.tool_started(0.6)
    assert guard.get_timer() == 2.5
    assert [d.action for d in guard.handle_timer(2.5)] == [DeadAirAction.FILLER]
    assert guard.get_timer() is None  # no timeout while the tools run
    guard.tools_finished(7.0)
    assert guard.get_timer() == 11.0


def test_turn_stats_reach_the_metrics() -> None:
    from types import SimpleNamespace

    from telephony_agent.metrics import Metrics
    from telephony_agent.telephony.turns import TurnStats

    metrics = Metrics()
    stats = SimpleNamespace(frames_in=0, frames_out=0, barge_ins=0, provider_errors=0, reconnects=0,
                            clear_latency_ms=[], first_audio_ms=None)
    turns = TurnStats()
    call = SimpleNamespace(call_id="CA1", stats=stats, model=SimpleNamespace(provider="gemini"), turn_stats=turns)
    turns.count(turns.barge_ins, "local")
    turns.false_interruptions = 2
    turns.count(turns.response_problems, "response_timeout")
    turns.dead_air_seconds = 1.5
    metrics.observe_call(call)
    turns.count(turns.barge_ins, "local")
    turns.tool_round_caps = 1
    metrics.observe_call(call, final=True)
    text = metrics.render().decode()
    assert 'agent_turn_barge_ins_total{source="local"} 2.0' in text
    assert "agent_false_interruptions_resumed_total 2.0" in text
    assert 'agent_response_problems_total{kind="response_timeout"} 1.0' in text
    assert "agent_dead_air_seconds_total 1.5" in text
    assert "agent_tool_round_caps_total 1.0" in text


def test_a_calls_detector_holds_under_450_kib() -> None:
    """The echo guard's reference buffer is most of a call's memory: it holds the history an echo
    can come from and what the playout schedules ahead (AGENT_PLAYOUT_LEAD_MS, at most 2 s), not
    8 s ahead as it did (650 KiB a call then)."""
    import tracemalloc

    TurnDetector(TurnSettings())  # the shared Silero weights, loaded once per process
    rng = np.random.default_rng(5)
    tracemalloc.start()
    try:
        detector = TurnDetector(TurnSettings())
        for k in range(150):  # 3 s of both sides, so every buffer has been touched
            detector.agent_audio(rng.normal(0, 3000, 160).astype("<i2").tobytes(), k * 0.02)
            detector.caller_audio(rng.normal(0, 3000, 160).astype("<i2").tobytes(), (k + 1) * 0.02)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 450 * 1024, held // 1024
