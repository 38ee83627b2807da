"""StreamResampler: chunk-exactness on real speech, quality measured with tones, delay, state.

Quality numbers are measured on the int16 output, the way a caller hears it: passband gain of
tones to 0.85 x the lower Nyquist (3.4 kHz on 8 kHz legs), alias level of tones above the output
Nyquist when downsampling, image level when upsampling, and the group delay from a tone's phase.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import RATES, StreamResampler

CHUNK_PAIRS = [
    (8000, 24000), (8000, 16000), (24000, 8000), (16000, 8000), (44100, 8000), (22050, 16000),
    (8000, 44100), (48000, 8000), (16000, 24000), (48000, 44100),
]
ALL_PAIRS = [p for p in itertools.permutations(RATES, 2)]
DOWN_PAIRS = [(a, b) for a, b in ALL_PAIRS if b < a]
UP_PAIRS = [(a, b) for a, b in ALL_PAIRS if b > a]
SPEECH = "Thanks for calling. Please tell me how I can help you today."


@cache
def _speech(rate: int) -> bytes:
    return speech_pcm16(SPEECH, rate)


def _i16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def _whole(in_rate: int, out_rate: int, data: bytes) -> bytes:
    r = StreamResampler(in_rate, out_rate)
    return r.process(data) + r.flush()


def _chunked(in_rate: int, out_rate: int, data: bytes, sizes: list[int]) -> bytes:
    """Feed `data` cutting it by `sizes` (byte counts, cycled) and flush."""
    r = StreamResampler(in_rate, out_rate)
    out = []
    pos = 0
    for n in itertools.cycle(sizes):
        if pos >= len(data):
            break
        out.append(r.process(data[pos : pos + n]))
        pos += n
    out.append(r.flush())
    return b"".join(out)


def _assert_same(a: bytes, b: bytes) -> None:
    assert len(a) == len(b)
    diff = np.abs(_i16(a) - _i16(b))
    assert diff.max(initial=0) <= 1, f"max diff {diff.max()} LSB"


def _tone(freq: float, rate: int, seconds: float, amp: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def _fit(y: np.ndarray, freq: float, rate: int, first: int) -> tuple[float, float, np.ndarray]:
    """Least-squares y[n] = A cos(w t - theta), t = n / rate; returns A, theta, residual."""
    t = (first + np.arange(len(y))) / rate
    basis = np.stack([np.cos(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
    return math.hypot(a, b), math.atan2(b, a), y - basis @ np.array([a, b])


def _steady(in_rate: int, out_rate: int, data: bytes) -> tuple[np.ndarray, int]:
    """Output without the start-up transient (first 20 ms) and without the flushed tail."""
    y = _i16(StreamResampler(in_rate, out_rate).process(data))
    first = out_rate // 50
    return y[first:], first


def _db(ratio: float) -> float:
    return 20 * math.log10(max(ratio, 1e-12))


# --- construction ------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(11025, 8000), (8000, 12000), (0, 8000), (8000, 96000)])
def test_unsupported_rates_raise_naming_the_accepted_ones(a: int, b: int) -> None:
    with pytest.raises(ValueError, match="8000, 16000, 22050, 24000, 44100, 48000"):
        StreamResampler(a, b)


def test_same_rate_is_passthrough() -> None:
    r = StreamResampler(16000, 16000)
    assert r.passthrough and r.delay_ms == 0
    assert r.process(b"\x01\x02\x03") == b"\x01\x02"
    assert r.process(b"\x04") == b"\x03\x04"
    assert r.flush() == b""


def test_construction_is_cheap_after_first_design() -> None:
    import time

    StreamResampler(8000, 24000)
    t0 = time.perf_counter()
    for _ in range(200):
        StreamResampler(8000, 24000)
    assert (time.perf_counter() - t0) / 200 < 1e-3


# --- chunk-exactness ---------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), CHUNK_PAIRS)
def test_chunked_equals_whole_on_speech(a: int, b: int) -> None:
    data = _speech(a)
    whole = _whole(a, b, data)
    frame = a // 50 * 2
    for sizes in ([frame], [a * 2], [0, 1, 3, frame - 1, frame + 1, 7, 999], [2 * 97, 0, 1]):
        _assert_same(_chunked(a, b, data, sizes), whole)


@pytest.mark.parametrize(("a", "b"), [(8000, 24000), (24000, 8000), (44100, 8000)])
def test_one_byte_chunks(a: int, b: int) -> None:
    data = _speech(a)[: a // 10 * 2]  # 100 ms: a few thousand calls
    _assert_same(_chunked(a, b, data, [1]), _whole(a, b, data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=st.sampled_from(CHUNK_PAIRS),
    sizes=st.lists(st.integers(0, 6000), min_size=1, max_size=12),
    start=st.integers(0, 20000),
)
def test_chunked_equals_whole_random_chunkings(pair: tuple[int, int], sizes: list[int], start: int) -> None:
    a, b = pair
    if sum(sizes) < 64:
        sizes = [*sizes, 4001]  # keep the number of calls bounded
    data = _speech(a)
    data = data[start * 2 : start * 2 + a // 2 * 2]  # 0.5 s of speech from a random offset
    _assert_same(_chunked(a, b, data, sizes), _whole(a, b, data))


@pytest.mark.parametrize(("a", "b"), [(8000, 16000), (8000, 24000), (24000, 8000), (8000, 8000)])
def test_samples_in_floats_are_the_same_stream_unrounded(a: int, b: int) -> None:
    """`process_samples` (what the speech model is fed) gives the samples `process` gives, before
    they are rounded and clipped to 16 bits, for any chunking: they round to the same PCM16."""
    data = _speech(a)
    whole = _i16(StreamResampler(a, b).process(data))
    x = _i16(data)
    r = StreamResampler(a, b)
    out, at = [], 0
    for size in itertools.cycle([a // 50, 1, a * 32 // 1000, 7, 999]):
        if at >= x.size:
            break
        out.append(r.process_samples(x[at : at + size]))
        at += size
    y = np.concatenate(out)
    assert y.dtype == np.float64 and y.size == whole.size
    assert np.abs(y - whole).max() <= 0.5 + 1e-6
    assert np.array_equal(np.clip(np.rint(y), -32768, 32767), whole)
    assert np.abs(y - np.rint(y)).max() > 0.01 or a == b  # really not rounded


@pytest.mark.parametrize(("a", "b"), ALL_PAIRS)
def test_20ms_frames_give_20ms_frames(a: int, b: int) -> None:
    r = StreamResampler(a, b)
    frame = bytes(a // 50 * 2)
    assert [len(r.process(frame)) for _ in range(5)] == [b // 50 * 2] * 5


# --- state ---------------------------------------------------------------------------------------


def test_odd_byte_counts_are_buffered_not_dropped() -> None:
    data = _speech(8000)[:3200]
    r = StreamResampler(8000, 24000)
    out = r.process(data[:321]) + r.process(data[321:322]) + r.process(data[322:]) + r.flush()
    assert out == _whole(8000, 24000, data)
    r = StreamResampler(8000, 24000)
    assert r.process(b"\x10") == b""  # half a sample: nothing yet
    assert len(r.process(b"\x00")) == 6  # now one input sample -> three outputs


@pytest.mark.parametrize(("a", "b"), [(8000, 24000), (24000, 8000), (44100, 8000), (8000, 44100), (48000, 8000)])
def test_flush_drains_the_tail(a: int, b: int) -> None:
    r = StreamResampler(a, b)
    delay_out = math.floor(r.delay_ms * b / 1000 + 1e-9)
    n = a // 10
    x = np.zeros(n, dtype="<i2")
    x[n - 1 - math.ceil((delay_out + 1) * a / b)] = 30000  # an impulse as late as still fits whole
    body = _i16(r.process(x.tobytes()))
    tail = _i16(r.flush())
    expected = 30000 * b / a  # DC gain 1: the impulse's area is preserved
    assert abs(body.sum() + tail.sum() - expected) < 0.002 * expected + 50
    assert np.abs(tail).max() > 100  # the impulse's later half was still in the filter
    assert abs(len(tail) - delay_out) <= 1
    # flush resets: the same stream again gives the same bytes
    assert r.process(x.tobytes()) + r.flush() == _whole(a, b, x.tobytes())


@pytest.mark.parametrize(("a", "b"), ALL_PAIRS)
def test_total_output_is_the_input_plus_at_most_the_delay(a: int, b: int) -> None:
    """n input samples give round(n * b/a) output samples plus the group delay (whole samples,
    never more than `delay_ms`), however the stream is chunked: no filter ringing beyond it."""
    data = _speech(a)
    n = len(data) // 2
    r = StreamResampler(a, b)
    delay = r.delay_ms * b / 1000
    for out in (_whole(a, b, data), _chunked(a, b, data, [2 * (a // 50), 2 * 7, 2 * 331])):
        extra = len(out) // 2 - math.floor(n * b / a + 0.5)  # rounded half up
        assert delay - 1 < extra <= delay + 1e-9, (extra, delay)


def test_reset_forgets_history() -> None:
    data = _speech(24000)
    r = StreamResampler(24000, 8000)
    r.process(data[:12345])
    r.reset()
    assert r.process(data) + r.flush() == _whole(24000, 8000, data)
    assert r.flush() == b""


# --- quality -------------------------------------------------------------------------------------


def _passband_gains(a: int, b: int) -> list[float]:
    edge = 0.85 * min(a, b) / 2
    freqs = [*np.linspace(100, edge, 24)]
    gains = []
    for f in freqs:
        y, first = _steady(a, b, _tone(f, a, 0.25, 16000))
        amp, _, _ = _fit(y, f, b, first)
        gains.append(_db(amp / 16000))
    return gains


@pytest.mark.parametrize(
    ("a", "b"),
    [(8000, 16000), (8000, 24000), (16000, 8000), (24000, 8000), (44100, 8000), (8000, 44100),
     (48000, 8000), (22050, 16000), (16000, 24000), (48000, 44100)],
)
def test_passband_flat_within_0_1_db(a: int, b: int) -> None:
    gains = _passband_gains(a, b)
    assert max(gains) - min(gains) <= 0.1, f"ripple {max(gains) - min(gains):.3f} dB"
    assert max(abs(g) for g in gains) <= 0.1


@pytest.mark.parametrize(("a", "b"), DOWN_PAIRS)
def test_downsampling_aliases_at_least_80_db_down(a: int, b: int) -> None:
    """Every tone between the output Nyquist and the input Nyquist must (nearly) vanish."""
    worst = math.inf
    for f in np.linspace(b / 2 * 1.002, a / 2 * 0.998, 24):
        y, _ = _steady(a, b, _tone(f, a, 0.2, 30000))
        worst = min(worst, _db(30000 / math.sqrt(2) / max(np.sqrt(np.mean(y**2)), 1e-9)))
    assert worst >= 80, f"worst alias only {worst:.1f} dB down"


@pytest.mark.parametrize(("a", "b"), UP_PAIRS)
def test_upsampling_images_at_least_80_db_down(a: int, b: int) -> None:
    """Tones anywhere below the input Nyquist: all that remains besides the tone is image/noise."""
    worst = math.inf
    for f in np.linspace(60, a / 2 * 0.995, 24):
        y, first = _steady(a, b, _tone(f, a, 0.2, 30000))
        _, _, residual = _fit(y, f, b, first)
        worst = min(worst, _db(30000 / math.sqrt(2) / max(np.sqrt(np.mean(residual**2)), 1e-9)))
    assert worst >= 80, f"worst image only {worst:.1f} dB down"


# --- delay ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), ALL_PAIRS)
def test_delay_at_most_3_ms_and_matches_measurement(a: int, b: int) -> None:
    r = StreamResampler(a, b)
    assert 0 < r.delay_ms <= 3.0
    f = 100.0
    y, first = _steady(a, b, _tone(f, a, 0.1, 16000))
    _, theta, _ = _fit(y, f, b, first)
    phase = (theta - math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
    measured_ms = phase / (2 * math.pi * f) * 1000
    assert measured_ms == pytest.approx(r.delay_ms, abs=0.002)


def test_impulse_peak_is_at_the_stated_delay() -> None:
    r = StreamResampler(8000, 24000)
    x = np.zeros(400, dtype="<i2")
    x[100] = 30000
    y = _i16(r.process(x.tobytes()) + r.flush())
    peak = int(np.argmax(y))
    assert peak / 24000 * 1000 - 100 / 8000 * 1000 == pytest.approx(r.delay_ms, abs=1e-9)
