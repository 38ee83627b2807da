"""Silero windows of many calls scored together (`speech_scorers.SileroBatch`): the same scores
and the same turn decisions as one call at a time, whenever the batch runs; when it runs; and a
batch that fails."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from telephony_agent.per_loop import PerLoop
from telephony_agent.telephony.loop_timer import SharedTimer
from telephony_agent.telephony.silero import shared_model
from telephony_agent.telephony.turns import (
    BatchedSileroScorer,
    SileroBatch,
    SileroScorer,
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
)
from telephony_agent.testing.noise import noise_pcm16
from telephony_agent.testing.speech import speech_pcm16
from telephony_agent.testing.turn_sim import AGENT_TEXT, law

FRAME = 160


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_batched_scores_match_one_window_at_a_time() -> None:
    """Streams with none, one or two windows per round, over rounds that carry LSTM state."""
    model = shared_model()
    rng = np.random.default_rng(3)
    alone = [model.new_state() for _ in range(9)]
    together = [model.new_state() for _ in range(9)]
    speech = np.frombuffer(speech_pcm16("Hold on, I have a question about that.", 16000), "<i2") / 32767.0
    seen: list[float] = []
    for r in range(6):
        requests, expected = [], []
        for i in range(9):
            count = (i + r) % 3
            start = (r * 3 + i) * 512 % (speech.size - 1536)
            gain = 10 ** rng.uniform(-4, 0)
            windows = [(speech[start + k * 512 : start + (k + 1) * 512] * gain).astype(np.float32) for k in range(count)]
            expected.append(max((alone[i].probability(w) for w in windows), default=0.0))
            requests.append((together[i], windows))
        got = model.score_batch(requests)
        # float32 either way, but a batch goes through matrix-matrix products and one window through
        # matrix-vector ones: BLAS sums in another order, by kernel and CPU (on an AVX-512 host one
        # score of 54 differed by 1.06e-5, carried through the LSTM state); decisions sit at 0.3-0.5
        assert got == pytest.approx(expected, abs=1e-4)
        seen += [p for p in expected if p > 0]
    assert max(seen) > 0.9 and min(seen) < 0.1  # speech and quiet both scored
    for a, b in zip(alone, together, strict=True):
        assert np.allclose(a._xh, b._xh, atol=1e-4) and np.allclose(a._c, b._c, atol=1e-4)


# -- turn decisions -------------------------------------------------------------------------------


def _call_audio(k: int) -> tuple[np.ndarray, np.ndarray]:
    """(agent answer, what the caller leg carries) for call `k`: an interruption, a cough, a
    backchannel, or the agent's echo with the caller speaking over it, over line noise."""
    agent = law(np.frombuffer(speech_pcm16(AGENT_TEXT, voice="en-us+f3"), "<i2").astype(np.float64))[: 8000 * 6]
    leg = np.random.default_rng(k).normal(0, 32768 * 10 ** (-65 / 20), agent.size)

    def put(at: float, pcm: bytes, gain: float = 1.0) -> None:
        x = np.frombuffer(pcm, "<i2").astype(np.float64) * gain
        i = int(at * 8000)
        leg[i : i + x.size] += x[: max(0, leg.size - i)]

    kind = k % 4
    if kind == 0:
        put(1.5, speech_pcm16("wait, stop, I have a different question"))
    elif kind == 1:
        put(1.2, noise_pcm16("cough"))
        put(3.0, speech_pcm16("mhm"))
    elif kind == 2:
        put(2.0, speech_pcm16("okay"))
        put(3.5, speech_pcm16("Sorry, can I ask you something?"))
    else:
        echo = np.zeros_like(leg)
        echo[1200:] = agent[:-1200] * 10 ** (-10 / 20)  # 150 ms, -10 dB
        leg += echo
        put(2.5, speech_pcm16("No, I need to change my booking."))
    return agent, law(leg)


class _Call:
    """One call's detector, fed the way the bridge feeds it, every input recorded."""

    def __init__(self, k: int, detector: TurnDetector) -> None:
        self.agent, self.leg = _call_audio(k)
        self.detector = detector
        self.inputs: list[tuple[str, tuple[Any, ...]]] = []
        self.decisions: list[TurnDecision] = []
        self.pos, self.playing, self.stopped = 0, True, False
        self.provider_at = 1.6 + 0.1 * k if k % 3 == 0 else None

    def feed(self, name: str, *args: Any) -> None:
        self.inputs.append((name, args))
        self.act(getattr(self.detector, name)(*args) or [], args[-1])

    def act(self, decisions: list[TurnDecision], now: float) -> None:
        for d in decisions:
            self.decisions.append(d)
            if d.action is TurnAction.PAUSE:
                self.playing = False
                self.feed("agent_stopped", now)
            elif d.action is TurnAction.RESUME:
                self.playing = True
            elif d.action is TurnAction.BARGE_IN:
                self.stopped = True
                self.feed("agent_stopped", now)

    def frame(self, i: int) -> None:
        now = (i + 1) * 0.02
        if self.playing and not self.stopped and self.pos < self.agent.size:
            self.feed("agent_audio", self.agent[self.pos : self.pos + FRAME].astype("<i2").tobytes(), i * 0.02)
            self.pos += FRAME
        self.feed("caller_audio", self.leg[i * FRAME : (i + 1) * FRAME].astype("<i2").tobytes(), now)
        if self.provider_at is not None and abs(now - self.provider_at) < 0.01:
            self.feed("provider_speech", now)
        deadline = self.detector.get_timer()
        if deadline is not None and now >= deadline:
            self.feed("handle_timer", now)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batched_detector_decides_exactly_what_one_scoring_at_once_does(seed: int) -> None:
    """Eight calls share one batch, which runs every 0-4 frames (so blocks wait, and agent
    audio, pauses, provider signals and timers arrive while they do). Each call's inputs, fed to
    a detector that scores at once, give the same decisions in the same order."""
    clock = Clock()
    batch = SileroBatch(clock)
    calls = []
    for k in range(8):
        scorer = BatchedSileroScorer(batch)
        call = _Call(k, TurnDetector(TurnSettings(), scorer=scorer))
        scorer.on_score = lambda p, c=call: c.act(c.detector.scored(p), clock.t)
        calls.append(call)
    rng = random.Random(seed)
    next_run, waited = 0, 0
    for i in range(calls[0].leg.size // FRAME):
        clock.t = (i + 1) * 0.02
        for call in calls:
            call.frame(i)
        waited += sum(c.detector.waiting for c in calls)
        if i >= next_run:
            batch.run()
            next_run = i + rng.randint(0, 4)
    batch.run()
    assert batch.batches > 50 and waited > 100
    assert sum(b.action is TurnAction.BARGE_IN for c in calls for b in c.decisions) >= 4
    assert sum(b.action is TurnAction.RESUME for c in calls for b in c.decisions) >= 1

    for call in calls:
        alone = TurnDetector(TurnSettings(), scorer=SileroScorer())
        decisions: list[TurnDecision] = []
        for name, args in call.inputs:
            decisions += getattr(alone, name)(*args) or []
        assert decisions == call.decisions
        assert not call.detector.waiting and not call.detector._held


# -- when the batch runs --------------------------------------------------------------------------


class _Scored:
    def __init__(self, batch: SileroBatch) -> None:
        self.scorer = BatchedSileroScorer(batch)
        self.got: list[float] = []
        self.scorer.on_score = self.got.append

    def submit(self, gain: float = 0.3) -> None:
        block = np.random.default_rng(len(self.got)).normal(0, 32767 * gain, 256)
        while self.scorer.submit(block) is not None:  # the resampler's first block makes no window
            pass


def test_the_batch_waits_for_company_only_under_load() -> None:
    clock = Clock()
    batch = SileroBatch(clock, max_wait_s=0.01, min_batch=2, full=4)
    calls = [_Scored(batch) for _ in range(5)]
    # light load: due at once (the end of the pass that added it)
    clock.t = 1.0
    calls[0].submit()
    assert batch.get_timer() == 1.0
    batch.handle_timer(1.0)
    assert len(calls[0].got) == 1 and batch.get_timer() is None
    # 300 windows a second for a second: now a block waits up to 10 ms for others
    for k in range(300):
        clock.t = 1.0 + k / 300
        calls[k % 5].submit()
        batch.run()
    clock.t = 2.5
    calls[0].submit()
    assert batch.rate > 200 and batch.get_timer() == pytest.approx(2.51)
    batch.handle_timer(2.505)
    assert len(batch) == 1  # not due yet
    calls[1].submit()
    batch.handle_timer(2.51)
    assert len(batch) == 0 and batch.batches == 302
    # a full batch does not wait
    clock.t = 3.0
    for call in calls[:4]:
        call.submit()
    assert batch.get_timer() == 3.0


def test_a_submitted_block_must_be_scored_before_the_next() -> None:
    batch = SileroBatch(Clock())
    call = _Scored(batch)
    call.submit()
    with pytest.raises(RuntimeError):
        call.scorer.submit(np.zeros(256))


def test_a_failing_batch_scores_no_speech_and_a_failing_call_keeps_no_other_from_its_score(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        def score_batch(self, requests: object) -> list[float]:
            raise FloatingPointError("overflow")

    clock = Clock()
    batch = SileroBatch(clock, model=Broken())  # type: ignore[arg-type]
    calls = [_Scored(batch) for _ in range(3)]
    with caplog.at_level(logging.ERROR):
        for k in range(5):
            clock.t = k * 0.5
            for call in calls:
                call.submit()
            batch.run()
    assert [c.got for c in calls] == [[0.0] * 5] * 3 and batch.failures == 5
    assert len([r for r in caplog.records if "Silero" in r.getMessage()]) == 1  # once per 10 s

    good = SileroBatch(clock)
    calls = [_Scored(good) for _ in range(3)]

    def broken(prob: float) -> None:
        raise RuntimeError("the call's handler failed")

    calls[0].scorer.on_score = broken
    for call in calls:
        call.submit()
    good.run()
    assert len(calls[1].got) == len(calls[2].got) == 1
    assert not calls[0].scorer.pending


# -- on a running loop ----------------------------------------------------------------------------


def _loops() -> list[Callable[[], asyncio.AbstractEventLoop]]:
    import uvloop

    return [asyncio.new_event_loop, uvloop.new_event_loop]


@pytest.mark.parametrize("new_loop", _loops(), ids=["asyncio", "uvloop"])
def test_the_shared_timer_runs_the_batch_after_the_pass_or_the_wait_and_keeps_no_loop(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    registry: PerLoop[SileroBatch] = PerLoop(lambda _loop: SileroBatch(lambda: asyncio.get_running_loop().time()))

    async def main() -> None:
        batch = registry.get(asyncio.get_running_loop())
        batch.on_add = SharedTimer(batch).changed
        call = _Scored(batch)
        call.submit()
        assert not call.got
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(call.got) == 1  # light load: the pass after
        batch.rate, batch.max_wait_s = 1000.0, 0.05  # under load: it waits for company
        loop = asyncio.get_running_loop()
        added = loop.time()
        call.submit()
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(call.got) == 1 or loop.time() - added >= 0.045
        for _ in range(200):
            if len(call.got) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(call.got) == 2 and loop.time() - added >= 0.045

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None


def test_the_batch_reaches_the_metrics_as_deltas() -> None:
    from telephony_agent.metrics import Metrics

    metrics = Metrics()
    batch = SileroBatch(Clock())
    calls = [_Scored(batch) for _ in range(3)]
    for call in calls:
        call.submit()
    batch.run()
    metrics.observe_vad_batch(batch)
    calls[0].submit()
    batch.run()
    batch.failures += 1
    metrics.observe_vad_batch(batch)
    metrics.observe_vad_batch(batch)
    text = metrics.render().decode()
    assert "agent_vad_batches_total 2.0" in text
    assert f"agent_vad_windows_total {float(batch.windows_scored)}" in text and batch.windows_scored >= 4
    assert "agent_vad_batch_failures_total 1.0" in text
