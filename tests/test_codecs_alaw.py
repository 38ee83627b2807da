"""A-law Transcoders beside the mu-law ones: same chunk-exactness, same framing, law by name."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import (
    G711_LAWS,
    StreamResampler,
    Transcoder,
    alaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_alaw_inbound_chunked_equals_whole(rate: int) -> None:
    alaw = pcm16_to_alaw(speech_pcm16("Press two for support.", 8000))
    t = Transcoder.alaw8k_to_pcm(rate)
    # Odd, uneven chunks: A-law is one byte a sample, so any split is legal.
    got, pos = [], 0
    for n in [160, 1, 79, 240, 3] * 10_000:
        if pos >= len(alaw):
            break
        got.append(t.process(alaw[pos : pos + n]))
        pos += n
    out = b"".join(got) + t.flush()
    if rate == 8000:
        assert t.delay_ms == 0
        assert out == alaw_to_pcm16(alaw)
    else:
        r = StreamResampler(8000, rate)
        assert out == r.process(alaw_to_pcm16(alaw)) + r.flush()
        assert 0 < t.delay_ms <= 3


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 44100])
def test_alaw_outbound_buffers_odd_bytes(rate: int) -> None:
    pcm = speech_pcm16("Thank you for waiting.", rate)
    t = Transcoder.pcm_to_alaw8k(rate)
    pieces, pos = [], 0
    for n in [1, 2, 3, 961, 959, 1, 7] * 10_000:
        if pos >= len(pcm):
            break
        pieces.append(t.process(pcm[pos : pos + n]))
        pos += n
    got = b"".join(pieces) + t.flush()
    if rate == 8000:
        assert got == pcm16_to_alaw(pcm)
    else:
        r = StreamResampler(rate, 8000)
        assert got == pcm16_to_alaw(r.process(pcm) + r.flush())
    t.reset()
    frame = pcm[: rate // 50 * 2]
    t.process(frame)
    assert len(t.process(frame)) == 160  # 20 ms in -> 20 ms of A-law out, steady state


def test_laws_by_name_match_the_named_constructors() -> None:
    pcm = speech_pcm16("One moment please.", 16000)
    assert set(G711_LAWS) == {"pcmu", "pcma"}
    for law, make_in, make_out in (
        ("pcmu", Transcoder.ulaw8k_to_pcm, Transcoder.pcm_to_ulaw8k),
        ("pcma", Transcoder.alaw8k_to_pcm, Transcoder.pcm_to_alaw8k),
    ):
        encoded = Transcoder.pcm_to_g711(law, 16000).process(pcm)
        assert encoded == make_out(16000).process(pcm)
        assert Transcoder.g711_to_pcm(law.upper(), 24000).process(encoded) == make_in(24000).process(encoded)
    with pytest.raises(ValueError, match="pcmu, pcma"):
        Transcoder.g711_to_pcm("g729", 8000)


def test_the_two_laws_differ_and_law_to_law_keeps_the_signal() -> None:
    pcm = speech_pcm16("Hello.", 8000)
    ulaw, alaw = pcm16_to_ulaw(pcm), pcm16_to_alaw(pcm)
    assert ulaw != alaw  # a leg in the wrong law would hear noise: the bytes really differ
    t = Transcoder.g711_to_g711("pcmu", "pcma")
    converted = b"".join(t.process(ulaw[i : i + 33]) for i in range(0, len(ulaw), 33)) + t.flush()
    assert len(converted) == len(ulaw)
    a = np.frombuffer(alaw_to_pcm16(converted), "<i2").astype(float)
    ref = np.frombuffer(pcm, "<i2").astype(float)
    # Two rounds of G.711 quantisation: still far above 30 dB SNR on speech.
    snr = 10 * np.log10(np.sum(ref**2) / max(np.sum((a - ref) ** 2), 1.0))
    assert snr > 30
    # A-law silence decodes to (near) zero, like mu-law's 0xff.
    assert max(abs(v) for v in np.frombuffer(alaw_to_pcm16(b"\xd5" * 8), "<i2")) <= 8
    assert ulaw_to_pcm16(b"\xff") == b"\x00\x00"
