"""Transcoder: the two stateful conversions every call needs, G.711 plus resampling.

Inbound: Twilio mu-law 8 kHz -> PCM16 at the provider's input rate. Outbound: provider PCM16 at
its output rate -> mu-law 8 kHz. Each direction keeps its own resampler state, so one Transcoder
per call and direction, never shared.
"""

from __future__ import annotations

from collections.abc import Callable

from .g711 import pcm16_to_ulaw, ulaw_to_pcm16
from .resample import StreamResampler

__all__ = ["Transcoder"]

_G711_RATE = 8000


class Transcoder:
    """A stateful byte-stream converter; build it with `ulaw8k_to_pcm` or `pcm_to_ulaw8k`."""

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
