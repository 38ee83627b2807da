"""Framer and Transcoder: the stateful pieces the call bridge uses every 20 ms."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import Framer, StreamResampler, Transcoder, pcm16_to_ulaw, ulaw_to_pcm16


def test_framer_cuts_and_keeps_remainder() -> None:
    f = Framer(160)
    assert f.push(b"a" * 100) == []
    assert f.pending == 100
    frames = f.push(b"b" * 400)
    assert frames == [b"a" * 100 + b"b" * 60, b"b" * 160, b"b" * 160]
    assert f.pending == 20
    assert f.flush() == b"b" * 20
    assert f.pending == 0 and f.flush() is None


def test_framer_whole_frames_fast_path_and_empty() -> None:
    f = Framer(160)
    assert f.push(b"") == []
    data = bytes(range(160)) * 3
    assert f.push(data) == [bytes(range(160))] * 3
    assert f.pending == 0


def test_framer_flush_pads_with_silence() -> None:
    f = Framer(160)
    f.push(b"\x01" * 10)
    last = f.flush(pad=b"\xff")
    assert last == b"\x01" * 10 + b"\xff" * 150
    f.push(b"\x01" * 3)
    assert f.flush(pad=b"\x00\x01") == b"\x01" * 3 + (b"\x00\x01" * 80)[:157]


def test_framer_clear_drops_pending() -> None:
    f = Framer(4)
    f.push(b"abcdef")
    f.clear()
    assert f.pending == 0 and f.flush(pad=b"\xff") is None
    assert f.push(b"wxyz") == [b"wxyz"]


def test_framer_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        Framer(0)


def test_framer_any_chunking_gives_same_frames() -> None:
    data = bytes(np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8))
    f = Framer(160)
    out: list[bytes] = []
    pos = 0
    sizes = [1, 159, 0, 161, 7, 1000, 3, 2000]
    while pos < len(data):
        for n in sizes:
            out += f.push(data[pos : pos + n])
            pos += n
    assert b"".join(out) == data[: len(data) // 160 * 160]
    assert f.flush() == data[len(data) // 160 * 160 :]


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_transcoder_inbound_matches_pieces(rate: int) -> None:
    ulaw = pcm16_to_ulaw(speech_pcm16("Press one for sales.", 8000))
    t = Transcoder.ulaw8k_to_pcm(rate)
    got = b"".join(t.process(ulaw[i : i + 160]) for i in range(0, len(ulaw), 160)) + t.flush()
    if rate == 8000:
        assert t.delay_ms == 0
        assert got == ulaw_to_pcm16(ulaw)
    else:
        r = StreamResampler(8000, rate)
        assert got == r.process(ulaw_to_pcm16(ulaw)) + r.flush()
        assert 0 < t.delay_ms <= 3


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100])
def test_transcoder_outbound_buffers_odd_bytes(rate: int) -> None:
    pcm = speech_pcm16("Your call is important to us.", rate)
    t = Transcoder.pcm_to_ulaw8k(rate)
    pieces = []
    pos = 0
    for n in [1, 2, 3, 961, 959, 1, 7] * 10_000:
        if pos >= len(pcm):
            break
        pieces.append(t.process(pcm[pos : pos + n]))
        pos += n
    got = b"".join(pieces) + t.flush()
    if rate == 8000:
        assert got == pcm16_to_ulaw(pcm)
    else:
        r = StreamResampler(rate, 8000)
        assert got == pcm16_to_ulaw(r.process(pcm) + r.flush())
    # 20 ms in -> 20 ms out, steady state
    t.reset()
    frame = pcm[: rate // 50 * 2]
    t.process(frame)
    assert len(t.process(frame)) == 160


def test_transcoder_rejects_unknown_rate() -> None:
    with pytest.raises(ValueError, match="8000, 16000, 22050, 24000, 44100, 48000"):
        Transcoder.ulaw8k_to_pcm(11025)
    with pytest.raises(ValueError, match="accepted rates"):
        Transcoder.pcm_to_ulaw8k(12345)
