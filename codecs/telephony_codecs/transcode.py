"""Transcoder: the two stateful conversions every call needs, G.711 plus resampling.

Inbound: the phone leg's G.711 (mu-law or A-law) 8 kHz -> PCM16 at the provider's input rate.
Outbound: provider PCM16 at its output rate -> the leg's G.711 8 kHz. Each direction keeps its own
resampler state, so one Transcoder per call and direction, never shared.

Laws are named by their RTP/OpenAI names, `"pcmu"` (mu-law) and `"pcma"` (A-law).
"""

from __future__ import annotations

from collections.abc import Callable

from .g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from .resample import StreamResampler

__all__ = ["G711_LAWS", "Transcoder"]

_G711_RATE = 8000
_DECODERS: dict[str, Callable[[bytes], bytes]] = {"pcmu": ulaw_to_pcm16, "pcma": alaw_to_pcm16}
_ENCODERS: dict[str, Callable[[bytes], bytes]] = {"pcmu": pcm16_to_ulaw, "pcma": pcm16_to_alaw}
G711_LAWS: tuple[str, ...] = tuple(_DECODERS)


def _law(law: str) -> str:
    key = str(getattr(law, "value", law)).lower()
    if key not in _DECODERS:
        raise ValueError(f"unknown G.711 law {law!r}; accepted laws: {', '.join(G711_LAWS)}")
    return key


class Transcoder:
    """A stateful byte-stream converter; build it with one of the classmethods
    (`ulaw8k_to_pcm`, `alaw8k_to_pcm`, `pcm_to_ulaw8k`, `pcm_to_alaw8k`, or the `g711_*` ones
    that take the law by name)."""

    __slots__ = ("_carry", "_decode", "_encode", "_resampler", "in_rate", "out_rate")

    def __init__(
        self,
        in_rate: int,
        out_rate: int,
        *,
        decode: Callable[[bytes], bytes] | None = None,
        encode: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._decode = decode
        self._encode = encode
        self._resampler = None if in_rate == out_rate else StreamResampler(in_rate, out_rate)
        self._carry = b""

    @classmethod
    def ulaw8k_to_pcm(cls, rate: int) -> Transcoder:
        """mu-law 8 kHz in, PCM16 little-endian at `rate` out (no resampler when rate is 8000)."""
        return cls(_G711_RATE, rate, decode=ulaw_to_pcm16)

    @classmethod
    def pcm_to_ulaw8k(cls, rate: int) -> Transcoder:
        """PCM16 little-endian at `rate` in, mu-law 8 kHz out; odd byte counts are buffered."""
        return cls(rate, _G711_RATE, encode=pcm16_to_ulaw)

    @classmethod
    def alaw8k_to_pcm(cls, rate: int) -> Transcoder:
        """A-law 8 kHz in, PCM16 little-endian at `rate` out (no resampler when rate is 8000)."""
        return cls(_G711_RATE, rate, decode=alaw_to_pcm16)

    @classmethod
    def pcm_to_alaw8k(cls, rate: int) -> Transcoder:
        """PCM16 little-endian at `rate` in, A-law 8 kHz out; odd byte counts are buffered."""
        return cls(rate, _G711_RATE, encode=pcm16_to_alaw)

    @classmethod
    def g711_to_pcm(cls, law: str, rate: int) -> Transcoder:
        """G.711 8 kHz in the named law (`"pcmu"` or `"pcma"`) in, PCM16 at `rate` out."""
        return cls(_G711_RATE, rate, decode=_DECODERS[_law(law)])

    @classmethod
    def pcm_to_g711(cls, law: str, rate: int) -> Transcoder:
        """PCM16 at `rate` in, G.711 8 kHz in the named law out."""
        return cls(rate, _G711_RATE, encode=_ENCODERS[_law(law)])

    @classmethod
    def g711_to_g711(cls, in_law: str, out_law: str) -> Transcoder:
        """One G.711 law to the other at 8 kHz (a mu-law provider on an A-law leg); stateless
        in practice, but built like the others so callers need not special-case it."""
        return cls(_G711_RATE, _G711_RATE, decode=_DECODERS[_law(in_law)], encode=_ENCODERS[_law(out_law)])

    @property
    def delay_ms(self) -> float:
        """Group delay added by resampling (0 when no resampler is needed)."""
        return 0.0 if self._resampler is None else self._resampler.delay_ms

    def process(self, data: bytes) -> bytes:
        """Convert one chunk of any size; returns what is ready now."""
        if self._decode is not None:
            data = self._decode(data)
        rs = self._resampler
        if rs is not None:
            data = rs.process(data)
        elif self._encode is not None:  # PCM16 in without a resampler: keep half samples ourselves
            if self._carry:
                data = self._carry + bytes(data)
                self._carry = b""
            if len(data) & 1:
                self._carry = bytes(data[-1:])
                data = data[:-1]
        if self._encode is not None:
            data = self._encode(data)
        return bytes(data)

    def flush(self) -> bytes:
        """End of stream: the resampler's tail, converted; state is reset for reuse."""
        self._carry = b""
        if self._resampler is None:
            return b""
        tail = self._resampler.flush()
        return self._encode(tail) if self._encode is not None else tail

    def reset(self) -> None:
        """Drop all state (e.g. after barge-in) without producing output."""
        self._carry = b""
        if self._resampler is not None:
            self._resampler.reset()
