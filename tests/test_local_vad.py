"""Energy VAD on real speech: onsets and ends within ~60 ms, min speech duration, chunking-independent."""

from __future__ import annotations

import numpy as np
from local_helpers import caller_pcm8k

from telephony_agent.realtime.providers.local.vad import EnergyVad, VadSettings


def _speech_bounds_ms(pcm: bytes, rate: int) -> tuple[int, int]:
    """Reference onset/offset: first and last 10 ms frame above -45 dBFS."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = rate // 100
    n = len(x) // frame
    db = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1) / 32768**2 + 1e-12)
    voiced = np.nonzero(db > -45)[0]
    return int(voiced[0]) * 10, int(voiced[-1] + 1) * 10


def _run(vad: EnergyVad, pcm: bytes, chunk: int) -> list[tuple[str, int]]:
    events = []
    for i in range(0, len(pcm), chunk):
        events += [(e.kind, e.position_ms) for e in vad.process(pcm[i : i + chunk])]
    return events


def test_onset_and_end_positions_on_real_speech() -> None:
    speech = caller_pcm8k("what are your opening hours on saturday")
    silence = b"\0\0" * 8000  # 1 s
    audio = silence + speech + silence * 2
    ref_start, ref_end = _speech_bounds_ms(speech, 8000)
    events = _run(EnergyVad(VadSettings(silence_ms=500), 8000), audio, 320)
    assert [k for k, _ in events] == ["started", "stopped"]
    assert abs(events[0][1] - (1000 + ref_start)) <= 60
    assert abs(events[1][1] - (1000 + ref_end)) <= 60


def test_chunking_does_not_change_events() -> None:
    audio = b"\0\0" * 4000 + caller_pcm8k("where are you") + b"\0\0" * 8000
    a = _run(EnergyVad(sample_rate=8000), audio, 160)
    b = _run(EnergyVad(sample_rate=8000), audio, 2222)
    assert a == b and len(a) == 2


def test_short_click_is_not_speech_and_two_utterances_are_two_turns() -> None:
    rate = 16000
    click = (np.sin(np.arange(rate // 20) * 0.3) * 12000).astype("<i2").tobytes()  # 50 ms burst
    quiet = b"\0\0" * rate
    vad = EnergyVad(VadSettings(min_speech_ms=120), rate)
    assert _run(vad, quiet + click + quiet, 640) == []
    speech = np.frombuffer(caller_pcm8k("goodbye"), dtype="<i2").repeat(2).tobytes()  # crude 16 kHz
    events = _run(vad, speech + quiet + speech + quiet, 640)
    assert [k for k, _ in events] == ["started", "stopped", "started", "stopped"]
    positions = [p for _, p in events]
    assert positions == sorted(positions) and positions[0] >= 2050  # positions count from the session start


def test_steady_line_noise_above_threshold_is_not_endless_speech() -> None:
    rate = 8000
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 600, rate * 3)).astype("<i2")  # about -35 dBFS hiss
    speech = np.frombuffer(caller_pcm8k("i need help"), dtype="<i2").astype(np.int32)
    mixed = noise.astype(np.int32).copy()
    mixed[rate : rate + len(speech)] += speech
    audio = np.clip(mixed, -32768, 32767).astype("<i2").tobytes()
    events = _run(EnergyVad(VadSettings(silence_ms=400), rate), audio, 160)
    assert [k for k, _ in events] == ["started", "stopped"]
