"""Exact energy arithmetic on PCM16 audio for the turn detector's per-block work.

Every caller block and agent chunk passes through these: the block's mean square and its copy
into the echo guard's ring of recent caller samples, the agent chunk's copy into the reference
and its mean square, the reference's energy per cell, and the loudest run of cells. On 256
samples numpy's fixed cost per call (argument parsing, a new array, a cast) is most of the
work, so `make native` builds `energy.c`, the same functions in C over the same buffers, and
`telephony_agent.native` loads it in place of this module while it matches this source and
that one (`AGENT_NATIVE=off` runs this one).

The two agree bit for bit: the samples are PCM16 integers, so each square is exact in float64
and every sum of them (under 2^53) is too, in any order; a mean square is that sum divided by
the count, once. `tests/test_energy.py` checks both against each other.
"""

from __future__ import annotations

import numpy as np

from .speech_scorers import mean_square

__all__ = ["cell_energies", "loudest_sum", "place", "ring_write"]

_PCM16 = np.dtype("<i2")
_FLOAT64 = np.dtype(np.float64)


def _samples(pcm16: bytes | bytearray, n: int) -> np.ndarray:
    """As `speech_scorers.pcm16_samples`, but of any buffer, as the C twin takes (the compiled
    `pcm16_samples` refuses a memoryview), and only of samples that are there."""
    if not 0 <= n <= len(pcm16) // 2:
        raise ValueError(f"{n} samples asked of {len(pcm16)} bytes")
    return np.frombuffer(pcm16, _PCM16, n).astype(_FLOAT64)


def ring_write(pcm16: bytes | bytearray, n: int, ring: np.ndarray, at: int) -> float:
    """The mean square of the first `n` PCM16 samples of `pcm16`, written into the float64
    `ring` from slot `at` on, wrapping (with more than the ring holds, the last ones stay)."""
    w = ring.size
    if not 0 <= at < w:
        raise ValueError(f"slot {at} outside a ring of {w}")
    x = _samples(pcm16, n)
    if n >= w:
        ring[:] = np.roll(x[-w:], at + n)  # slot k holds sample index = k (mod w)
    else:
        first = min(n, w - at)
        ring[at : at + first] = x[:first]
        if first < n:
            ring[: n - first] = x[first:]
    return mean_square(x)


def place(pcm16: bytes | bytearray, n: int, skip: int, ref: np.ndarray, a: int, b: int) -> float:
    """The mean square of the first `n` PCM16 samples of `pcm16`; samples `skip` on go into
    the float32 `ref[a:b]` (`b - a == n - skip`)."""
    if not (0 <= skip <= n and 0 <= a <= b <= ref.size and b - a == n - skip):
        raise ValueError(f"samples {skip}..{n} do not fit ref[{a}:{b}] of {ref.size}")
    x = _samples(pcm16, n)
    ref[a:b] = x[skip:]
    return mean_square(x)


def cell_energies(ref: np.ndarray, out: np.ndarray, i0: int, i1: int, cell: int) -> None:
    """`out[i]` = the sum of squares of the float32 `ref[i * cell : (i + 1) * cell]`, for i in [i0, i1)."""
    if not (cell > 0 and 0 <= i0 <= i1 <= out.size and i1 * cell <= ref.size):
        raise ValueError(f"cells {i0}..{i1} of {cell} outside {out.size} cells of {ref.size} samples")
    squares = ref[i0 * cell : i1 * cell].astype(_FLOAT64)
    squares *= squares
    out[i0:i1] = squares.reshape(-1, cell) @ np.ones(cell)  # half the time of .sum(axis=1) on 400 cells


def loudest_sum(e: np.ndarray, lo: int, hi: int, k: int) -> float:
    """The largest sum of `k` consecutive values of the float64 `e[lo:hi]` (all of them when
    there are no more than `k`; 0.0 for none)."""
    if not (k > 0 and 0 <= lo <= hi <= e.size):
        raise ValueError(f"values {lo}..{hi} of {e.size}, runs of {k}")
    x = e[lo:hi]
    if x.size <= k:
        return float(x.sum())
    c = np.cumsum(x)
    return max(float(c[k - 1]), float((c[k:] - c[:-k]).max()))
