"""StreamResampler: chunk-exact polyphase FIR sample-rate conversion for PCM16 streams.

Resampling each 20 ms chunk on its own clicks at every chunk edge (docs/architecture.md, "Audio path"), so the
filter history and the output phase live in the object and carry across calls: any chunking of
a stream gives the same bytes as one call with the whole stream (to within 1 LSB of float
rounding in BLAS).

How it runs: for out/in = L/M, output m is the dot product of polyphase branch (m*M mod L) with
the K newest inputs up to floor(m*M/L). A "superblock" of G*L consecutive outputs reads one window
of S inputs, and consecutive superblocks' windows start G*M inputs apart, so one call is one
strided view of the input buffer times one precomputed (S, G*L) matrix: a single BLAS matmul, no
Python loop over samples. G is chosen so 10/20 ms chunks hold whole superblocks; for ragged
chunks the last, partial superblock is computed over a zero-padded window and computed again,
completely, on the next call.
"""

from __future__ import annotations

import numpy as np

from ._design import RATES, Plan, plan

__all__ = ["RATES", "StreamResampler"]

_F8 = 8  # bytes per float64


def _clip_ufunc() -> np.ufunc:
    """numpy's clip ufunc without np.clip's Python wrapper (3x faster on 20 ms frames)."""
    for mod in ("_core", "core"):
        umath = getattr(getattr(np, mod, None), "umath", None)
        fn = getattr(umath, "clip", None)
        if isinstance(fn, np.ufunc):
            return fn
    return np.clip  # type: ignore[return-value]


_clip = _clip_ufunc()
_EMPTY = np.zeros(0)


def _to_pcm16(y: np.ndarray) -> bytes:
    """Round and clip filter outputs (modified in place) to PCM16 bytes."""
    np.rint(y, out=y)
    _clip(y, -32768.0, 32767.0, out=y)
    out: bytes = y.astype("<i2").tobytes()
    return out


class StreamResampler:
    """Resample a PCM16 little-endian mono stream from `in_rate` to `out_rate`, keeping state.

    One per call and direction; not thread-safe. Filters are designed once per rate pair and
    shared, so constructing one is cheap.
    """

    __slots__ = ("_buf", "_carry", "_fill", "_k", "_m_out", "_n_in", "_plan", "_start", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for r in (in_rate, out_rate):
            if r not in RATES:
                raise ValueError(f"unsupported sample rate {r!r}; accepted rates: {', '.join(map(str, RATES))}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._plan: Plan | None = None if in_rate == out_rate else plan(in_rate, out_rate)
        p = self._plan
        if p is not None:  # the constants _run needs, unpacked once
            self._k = (p.up, p.down, p.group * p.up, p.group * p.down, p.span, p.matrix)
        self._buf = np.zeros(0)
        self.reset()

    @property
    def delay_ms(self) -> float:
        """Group delay in milliseconds (the filter is linear-phase, so the same at every frequency)."""
        return 0.0 if self._plan is None else self._plan.delay_s * 1000.0

    @property
    def passthrough(self) -> bool:
        """True when in_rate == out_rate: bytes are returned unchanged."""
        return self._plan is None

    def reset(self) -> None:
        """Forget all history, as if newly created (start of a new stream)."""
        self._carry = b""
        self._n_in = 0
        self._m_out = 0
        p = self._plan
        if p is None:
            return
        cap = max(4096, 4 * p.span + 2 * p.group * p.down)
        if len(self._buf) != cap:
            self._buf = np.zeros(cap)
        else:
            self._buf[: p.phase_taps - 1] = 0.0
        # Buffer index 0 is absolute input index -(K-1): the zero history before the stream.
        self._start = 0
        self._fill = p.phase_taps - 1

    def process(self, pcm16: bytes) -> bytes:
        """Feed PCM16 bytes (any length, even odd); return all output samples they complete."""
        if self._carry:
            pcm16 = self._carry + bytes(pcm16)
            self._carry = b""
        if len(pcm16) & 1:
            self._carry = bytes(pcm16[-1:])
            pcm16 = pcm16[:-1]
        if self._plan is None:
            return bytes(pcm16)
        return _to_pcm16(self._run(np.frombuffer(pcm16, dtype="<i2"), None))

    def process_samples(self, x: np.ndarray) -> np.ndarray:
        """Feed samples as numbers (PCM16 scale); return the outputs they complete, float64,
        neither rounded nor clipped. For a consumer that computes in floats (a speech model):
        the same stream as `process` without the round trip through 16-bit integers. Do not mix
        the two on one stream."""
        if self._plan is None:
            return np.asarray(x, dtype=np.float64)
        return self._run(x, None)

    def flush(self) -> bytes:
        """End of stream: return the rest of the output, then reset.

        The output is the input delayed by `delay_ms`, so a stream of n input samples ends with
        output round(n * out/in) + floor(delay_ms * out_rate / 1000) samples in all (whatever
        the chunking): every input sample's output instant is covered, and the filter's
        ringing beyond the last input is not (it would be `delay_ms` more of near-silence).
        A dangling odd byte (half a sample) is dropped.
        """
        p = self._plan
        if p is None:
            self.reset()
            return b""
        n_in = self._n_in
        if n_in == 0:
            self.reset()
            return b""
        m_final = (2 * n_in * p.up + p.down) // (2 * p.down) + self._delay_out
        out = _to_pcm16(self._run(np.zeros(p.phase_taps, dtype=np.int16), m_final)) if m_final > self._m_out else b""
        self.reset()
        return out

    @property
    def _delay_out(self) -> int:
        """The group delay in whole output samples (rounded down)."""
        p = self._plan
        assert p is not None
        return int(p.delay_s * p.out_rate + 1e-9)

    def _run(self, x: np.ndarray, stop: int | None) -> np.ndarray:
        up, down, rows, step, span, mat = self._k
        n = len(x)
        fill = self._fill
        buf = self._buf
        if fill + n + span > len(buf):
            self._make_room(n)
            fill = self._fill
            buf = self._buf
        buf[fill : fill + n] = x
        self._fill = fill = fill + n
        self._n_in = n_in = self._n_in + n
        m_out = self._m_out
        m_end = -(-n_in * up // down)  # outputs whose newest input has arrived
        if stop is not None and stop < m_end:
            m_end = stop
        if m_end <= m_out:
            return _EMPTY
        b0 = m_out // rows
        nb = (m_end - 1) // rows - b0 + 1
        start = self._start
        need = start + (nb - 1) * step + span
        if need > fill:  # partial last superblock: zero its not-yet-arrived inputs
            buf[fill:need] = 0.0
        window = np.ndarray((nb, span), np.float64, buf, start * _F8, (step * _F8, _F8))
        y: np.ndarray = (window @ mat).reshape(-1)
        skip = m_out - b0 * rows
        if skip or m_end != (b0 + nb) * rows:
            y = y[skip : m_end - b0 * rows]
        self._m_out = m_end
        self._start = start + (m_end // rows - b0) * step
        return y

    def _make_room(self, n: int) -> None:
        """Move the live part of the buffer to the front, growing it if a big chunk needs more."""
        p = self._plan
        assert p is not None
        live = self._fill - self._start
        need = live + n + p.span
        buf = self._buf
        if need > len(buf):
            new = np.zeros(max(2 * len(buf), need + need // 2))
            new[:live] = buf[self._start : self._fill]
            self._buf = new
        else:
            buf[:live] = buf[self._start : self._fill]
        self._fill = live
        self._start = 0
