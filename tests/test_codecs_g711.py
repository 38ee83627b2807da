"""G.711 through telephony_codecs: the docs/protocols.md G.711 vectors, plus an independent reference."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_codecs import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16


def _pcm(*samples: int) -> bytes:
    return np.array(samples, dtype="<i2").tobytes()


def _ref_ulaw(x: np.ndarray) -> np.ndarray:
    """docs/protocols.md, G.711: CPython's 14-bit encoder, vectorised."""
    seg_uend = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    v = x.astype(np.int64) >> 2
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.abs(v) + (0x84 >> 2)
    seg = np.searchsorted(seg_uend, v)  # first i with v <= seg_uend[i]
    code = (np.minimum(seg, 7) << 4) | ((v >> (np.minimum(seg, 7) + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _ref_ulaw_decode(u: np.ndarray) -> np.ndarray:
    """docs/protocols.md, G.711 decoder."""
    u = ~u.astype(np.int64) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84)


@pytest.mark.parametrize(
    ("sample", "code"), [(0, 0xFF), (-1, 0x7E), (32767, 0x80), (-32768, 0x00)]
)
def test_ulaw_encode_vectors(sample: int, code: int) -> None:
    assert pcm16_to_ulaw(_pcm(sample)) == bytes([code])


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0x00, -32124), (0x80, 32124), (0x7F, 0), (0xFF, 0), (0x7E, -8), (0xFE, 8)],
)
def test_ulaw_decode_key_values(code: int, sample: int) -> None:
    assert ulaw_to_pcm16(bytes([code])) == _pcm(sample)


def test_ulaw_encoder_matches_reference_for_every_sample() -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    assert pcm16_to_ulaw(x.astype("<i2").tobytes()) == _ref_ulaw(x).tobytes()


def test_ulaw_decoder_matches_reference_table() -> None:
    codes = np.arange(256, dtype=np.uint8)
    decoded = np.frombuffer(ulaw_to_pcm16(codes.tobytes()), dtype="<i2")
    assert np.array_equal(decoded, _ref_ulaw_decode(codes))
    assert decoded.min() == -32124 and decoded.max() == 32124


def test_ulaw_round_trip_every_code() -> None:
    codes = bytes(range(256))
    back = pcm16_to_ulaw(ulaw_to_pcm16(codes))
    expected = bytearray(codes)
    expected[0x7F] = 0xFF  # -0 comes back as +0
    assert back == bytes(expected)


def test_alaw_round_trip_every_code() -> None:
    codes = bytes(range(256))
    assert pcm16_to_alaw(alaw_to_pcm16(codes)) == codes


def test_lengths_and_empty() -> None:
    assert ulaw_to_pcm16(b"") == b"" and pcm16_to_ulaw(b"") == b""
    assert len(ulaw_to_pcm16(b"\xff" * 160)) == 320
    assert len(pcm16_to_ulaw(b"\x00" * 320)) == 160


@pytest.mark.parametrize("encode", [pcm16_to_ulaw, pcm16_to_alaw])
def test_odd_pcm_length_is_a_value_error(encode: object) -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        encode(b"\x00\x01\x02")  # type: ignore[operator]


def test_audioop_deprecation_warning_is_silenced() -> None:
    import importlib
    import warnings

    import telephony_codecs.g711 as g711

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(g711)
