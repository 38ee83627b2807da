"""A virtual-clock harness for `TurnDetector`: the agent talks, the caller leg carries sounds.

It plays the agent's answer frame by frame the way the call bridge does (pausing, resuming and
stopping as the detector decides), mixes what the caller leg carries back (caller sounds at their
offsets, optional agent echo, line noise) through mu-law, and feeds both sides to the detector.
Used by the turn-taking tests and `bench/turns.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from telephony_agent.telephony.turns import (
    TurnAction,
    TurnDecision,
    TurnDetector,
    TurnSettings,
)
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

__all__ = ["AGENT_TEXT", "Run", "law", "onset", "simulate"]

AGENT_TEXT = (
    "Thanks for calling. Our opening hours are nine to five on weekdays, and ten to two on Saturdays. "
    "We are closed on Sundays and public holidays. Is there anything else I can help you with today?"
)
FRAME = 160  # 20 ms at 8 kHz


def law(x: np.ndarray) -> np.ndarray:
    """Through mu-law and back, as the phone leg carries it."""
    pcm = np.clip(x, -32768, 32767).astype("<i2").tobytes()
    return np.frombuffer(ulaw_to_pcm16(pcm16_to_ulaw(pcm)), "<i2").astype(np.float64)


def onset(x: np.ndarray, at: float) -> float:
    """Where a sound placed at `at` really starts: its first 10 ms above -40 dBFS."""
    frames = x[: len(x) // 80 * 80].reshape(-1, 80)
    loud = np.nonzero(np.mean(frames**2, axis=1) > (32768 * 0.01) ** 2)[0]
    return at + (int(loud[0]) * 0.01 if loud.size else 0.0)


@dataclass
class Run:
    decisions: list[TurnDecision] = field(default_factory=list)
    played: list[int] = field(default_factory=list)  # agent sample positions, in the order played
    cpu_s: float = 0.0  # process time spent inside the detector
    frames: int = 0

    def actions(self) -> list[TurnAction]:
        kinds = (TurnAction.PAUSE, TurnAction.RESUME, TurnAction.BARGE_IN)
        return [d.action for d in self.decisions if d.action in kinds]

    def first(self, action: TurnAction) -> TurnDecision | None:
        return next((d for d in self.decisions if d.action is action), None)

    def continuous(self) -> bool:
        """The agent's audio was heard in order with nothing skipped or repeated."""
        return self.played == list(range(0, FRAME * len(self.played), FRAME))


def simulate(
    agent: np.ndarray,
    caller: list[tuple[float, np.ndarray]],
    *,
    seconds: float = 7.0,
    echo_db: float | None = None,
    echo_ms: int = 150,
    settings: TurnSettings | None = None,
    detector: TurnDetector | None = None,
    schedule_lead_s: float = 0.0,
    provider_speech_at: float | None = None,
    noise_dbfs: float = -65.0,
    seed: int = 7,
    jitter_s: float = 0.0,
    echo_moves: tuple[tuple[float, int], ...] = (),
    late_start_s: float = 0.0,
    lost: tuple[float, float] | None = None,
    slow_until: tuple[float, float] | None = None,
) -> Run:
    """Play `agent` (PCM16 8 kHz samples, already through mu-law); the caller leg carries
    `caller` sounds (at their offsets in seconds), the agent's echo when `echo_db` is set, and
    white line noise at `noise_dbfs`. The bridge's schedule runs `schedule_lead_s` ahead (+-20 %).
    `jitter_s`: each caller frame arrives up to that much late. `echo_moves`: (at seconds, new
    echo_ms) pairs, the echo path moving mid-call (the leg's playout slipped or caught up).
    `late_start_s`: the caller frames of the first that many seconds all arrive then, in a burst
    (a stalled start). `lost`: (at, seconds) of caller frames the leg never delivers.
    `slow_until`: (until, seconds): every caller frame before `until` arrives that much late, all
    alike (a server too busy to read them on time), and on time from then on: the detector finds
    its timeline late and moves it back mid-call."""
    detector = detector or TurnDetector(settings or TurnSettings())
    n = int(seconds * 8000)
    track = np.random.default_rng(seed).normal(0, 32768 * 10 ** (noise_dbfs / 20), n)
    for offset, sound in caller:
        k = int(offset * 8000)
        track[k : k + sound.size] += sound[: max(0, n - k)]
    echo = np.zeros(n + 8000)
    gain = 0.0 if echo_db is None else 10 ** (echo_db / 20)
    delay = echo_ms * 8
    pos, playing, stopped = 0, True, False
    run = Run()
    scheduled = 0.0
    for i in range(n // FRAME):
        now = (i + 1) * 0.02
        chunk = None
        for at, moved_ms in echo_moves:
            if abs(i * 0.02 - at) < 0.01:
                delay = moved_ms * 8
        if playing and not stopped and pos < agent.size:
            chunk = agent[pos : pos + FRAME]
            run.played.append(pos)
            pos += FRAME
            if gain:
                echo[i * FRAME + delay : i * FRAME + delay + chunk.size] += law(chunk * gain)
        frame = law(track[i * FRAME : (i + 1) * FRAME] + echo[i * FRAME : (i + 1) * FRAME]).astype("<i2").tobytes()
        t = time.process_time()
        if chunk is not None:
            detector.agent_audio(chunk.astype("<i2").tobytes(), i * 0.02 + scheduled)
        late = jitter_s * ((i * 2654435761) % 1000) / 1000  # a fixed pseudo-random spread
        if lost is not None and lost[0] <= i * 0.02 < lost[0] + lost[1]:
            decisions = []
        else:
            if slow_until is not None and i * 0.02 < slow_until[0]:
                late += slow_until[1]
            decisions = detector.caller_audio(frame, max(now + late, late_start_s))
        if provider_speech_at is not None and abs(now - provider_speech_at) < 0.01:
            decisions += detector.provider_speech(now)
        deadline = detector.get_timer()
        if deadline is not None and now >= deadline:
            decisions += detector.handle_timer(now)
        run.cpu_s += time.process_time() - t
        run.frames += 1
        for d in decisions:
            run.decisions.append(d)
            if d.action is TurnAction.PAUSE:
                playing = False
                detector.agent_stopped(now)
            elif d.action is TurnAction.RESUME:
                playing = True
            elif d.action is TurnAction.BARGE_IN:
                stopped = True
                detector.agent_stopped(now)
        scheduled = schedule_lead_s * (0.8 + 0.4 * ((i * 7919) % 11) / 10)  # a jittery schedule
    return run
