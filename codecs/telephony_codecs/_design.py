"""Filter design for StreamResampler: one linear-phase low-pass per rate pair, built once.

Spec (docs/architecture.md, "Audio path"): passband flat to 0.85 x the lower Nyquist (3.4 kHz for 8 kHz legs)
within 0.1 dB peak to peak, at least 80 dB down from the lower Nyquist up (so nothing aliases when
downsampling and no image survives when upsampling), and at most 3 ms group delay.

Why equiripple (Parks-McClellan, `scipy.signal.remez`) rather than a Kaiser window: for the
8 kHz legs the transition band is 3.4 -> 4.0 kHz. A Kaiser-window FIR needs
(A - 7.95) / (2.285 * 2 pi * 600 Hz) = 8.4 ms of impulse response for A = 80 dB, i.e. 4.2 ms of
delay, over budget; at 3 ms it reaches only about 60 dB. The Kaiser design spends the same tiny
ripple in the passband as in the stopband; equiripple lets the passband ripple be 0.005 (0.09 dB)
while the stopband is 7e-5 (83 dB), which fits in ~2.9 ms.

For rate pairs whose polyphase "fine" rate L * in_rate is huge (e.g. 8000 <-> 44100 runs at
3.528 MHz with ~21,000 taps), remez does not converge. There we design the same equiripple
prototype at a moderate rate (16 x the lower Nyquist), turn it into a continuous-time impulse
response with a short Kaiser-windowed-sinc interpolator (100 dB, pass to the lower Nyquist, stop
from the prototype's first image), and sample that at the fine rate. The interpolator adds < 0.06 ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import ceil, floor, gcd, pi

import numpy as np
from scipy import signal

RATES: tuple[int, ...] = (8000, 16000, 22050, 24000, 44100, 48000)
MAX_DELAY_S = 0.003
PASS_FRACTION = 0.85  # passband edge / lower Nyquist: 3400 / 4000
RIPPLE_TARGET = 0.005  # |H| within 1 +- 0.005 in the passband: 0.087 dB peak to peak
STOP_TARGET = 10 ** (-83 / 20)  # 83 dB: 3 dB of margin over the 80 dB spec for int16 rounding
_DIRECT_MAX_TAPS = 1201  # beyond this remez is slow and unreliable: use the interpolated design
_INTERP_ATTEN_DB = 100.0
_FAR_WEIGHT = 10.0  # stopband beyond the first image band: 20 dB deeper


@dataclass(frozen=True)
class Plan:
    """Everything a StreamResampler needs for one (in, out) pair; shared, read-only."""

    in_rate: int
    out_rate: int
    up: int  # L
    down: int  # M
    taps: int  # N, filter length at the fine rate L * in_rate
    phase_taps: int  # K = ceil(N / L), taps per polyphase branch
    group: int  # G: superblock = G*L outputs from G*M new inputs
    span: int  # S: input samples one superblock reads
    matrix: np.ndarray  # (S, G*L) float64: outputs = window @ matrix
    fir: np.ndarray  # the low-pass at the fine rate L * in_rate, DC gain L
    delay_s: float
    pass_hz: float
    stop_hz: float


def _measure(h: np.ndarray, fs: float, fp: float, fst: float) -> tuple[float, float]:
    """Passband max/min gain ratio and worst stopband gain relative to DC, both linear."""
    f, resp = signal.freqz(h, worN=np.linspace(0, fs / 2, 16385), fs=fs)
    mag = np.abs(resp)
    band = mag[f <= fp]
    return float(band.max() / band.min()), float(np.max(mag[f >= fst]) / mag[0])


def _remez(numtaps: int, fs: float, fp: float, fst: float, far: float) -> np.ndarray:
    w = RIPPLE_TARGET / STOP_TARGET
    if far < fs / 2 - 1:  # stopband in two parts: the far part 20 dB deeper
        bands, desired, weight = [0, fp, fst, far, far + 1, fs / 2], [1, 0, 0], [1, w, _FAR_WEIGHT * w]
    else:
        bands, desired, weight = [0, fp, fst, fs / 2], [1, 0], [1, w]
    h = signal.remez(numtaps, bands, desired, weight=weight, fs=fs, maxiter=200)
    return np.asarray(h, dtype=np.float64)


@cache
def _equiripple(fs: float, fp: float, fst: float, far: float, max_taps: int) -> np.ndarray:
    """Shortest odd-length equiripple low-pass meeting the targets, or the best within max_taps.

    The search walks up from an estimate: remez does not converge when given far more taps than
    the transition band needs, so bisecting from max_taps is not an option.
    """
    pp_target = (1 + RIPPLE_TARGET) / (1 - RIPPLE_TARGET)
    estimate = 3.6 * fs / (fst - fp)  # measured: 8 kHz legs need 145 taps at 24 kHz (600 Hz band)
    n = max(5, 2 * floor(0.95 * estimate / 2) + 1)
    best: tuple[float, np.ndarray] | None = None
    while n <= max_taps:
        try:
            h = _remez(n, fs, fp, fst, far)
        except Exception:  # noqa: BLE001 - remez may fail to converge for a length; try the next
            h = None
        if h is not None and np.all(np.isfinite(h)):
            pp, stop = _measure(h, fs, fp, fst)
            if pp <= pp_target and stop <= STOP_TARGET:
                return h
            if best is None or stop < best[0]:
                best = (stop, h)
        n += 2
    if best is None:
        raise RuntimeError(f"remez failed for fs={fs}, fp={fp}, fst={fst}")
    return best[1]  # cannot meet the targets within the delay budget: best effort, tests report it


def _interpolated(fine_rate: int, fp: float, fst: float, far: float) -> np.ndarray:
    """Equiripple prototype at 16 x fst, resampled as a continuous-time response to fine_rate."""
    fs_p = 16 * fst
    width = fs_p - 2 * fst  # interpolator: pass [0, fst], stop from fs_p - fst
    beta = signal.kaiser_beta(_INTERP_ATTEN_DB)
    half = (_INTERP_ATTEN_DB - 7.95) / (2.285 * 2 * pi * width) / 2  # half the kernel support, s
    max_taps = 2 * floor((MAX_DELAY_S - half) * fs_p - 1e-9) + 1
    hp = _equiripple(fs_p, fp, fst, far, max_taps)
    centre = (len(hp) - 1) / (2 * fs_p)
    nf_half = floor((centre + half) * fine_rate)
    t = (np.arange(-nf_half, nf_half + 1) / fine_rate + centre)  # fine sample times, symmetric
    reach = ceil(half * fs_p) + 1
    n0 = np.floor(t * fs_p).astype(np.int64)
    n = n0[:, None] + np.arange(-reach, reach + 1)[None, :]
    valid = (n >= 0) & (n < len(hp))
    dt = t[:, None] - n / fs_p
    kernel = np.sinc(fs_p * dt) * np.where(
        np.abs(dt) <= half, np.i0(beta * np.sqrt(np.clip(1 - (dt / half) ** 2, 0, 1))) / np.i0(beta), 0.0)
    h = np.sum(np.where(valid, hp[np.clip(n, 0, len(hp) - 1)] * kernel, 0.0), axis=1)
    scaled: np.ndarray = h * (np.sum(hp) / np.sum(h))  # same DC gain as the prototype
    return scaled


def _choose_group(up: int, down: int, g: int) -> int:
    """Superblock size: divides 10 ms (or 20 ms) of input so framed streams never straddle one."""
    per10 = g // 100 if g % 100 == 0 else g // 50
    best = 1
    for cand in range(1, per10 + 1):
        if per10 % cand == 0 and cand * max(up, down) <= 48:
            best = cand
    return best


@cache
def plan(in_rate: int, out_rate: int) -> Plan:
    """Design (once per process) the polyphase filter bank for in_rate -> out_rate."""
    for r in (in_rate, out_rate):
        if r not in RATES:
            raise ValueError(f"unsupported sample rate {r}; accepted rates: {', '.join(map(str, RATES))}")
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    fine = up * in_rate
    fst = min(in_rate, out_rate) / 2
    fp = PASS_FRACTION * fst
    max_taps = 2 * floor(MAX_DELAY_S * fine + 1e-9) + 1
    # Where a tone's spurious copies can land: only one copy per tone falls in [fst, far], the
    # rest beyond `far` (input copies at k*in_rate +- f), so the stopband beyond is made 20 dB
    # deeper and the total spurious power per tone stays ~80 dB down, not just each spur.
    far = in_rate / 2 if out_rate < in_rate else float(in_rate)
    if max_taps <= _DIRECT_MAX_TAPS:
        h = _equiripple(float(fine), fp, fst, far, max_taps)
    else:
        h = _interpolated(fine, fp, fst, far)
    h = h / np.sum(h) * up  # DC gain L: zero-stuffing spreads each input over L fine samples
    taps = len(h)
    k = -(-taps // up)
    padded = np.zeros(k * up)
    padded[:taps] = h
    branches = padded.reshape(k, up).T  # branches[phi, j] = h[phi + j*L]
    group = _choose_group(up, down, g)
    rows = group * up
    outputs = np.arange(rows)
    newest = (outputs * down) // up  # newest input used by each output, relative to the superblock
    phase = (outputs * down) % up
    span = int(newest[-1]) + k
    mat = np.zeros((rows, span))
    for i in range(rows):
        mat[i, newest[i] : newest[i] + k] = branches[int(phase[i]), ::-1]
    return Plan(in_rate, out_rate, up, down, taps, k, group, span, np.ascontiguousarray(mat.T), h,
                (taps - 1) / (2 * fine), fp, fst)
