"""The local engine's exact words in what a caller heard, found by matching audio, not guessed.

The local engine says a dialogue script's fixed lines with eSpeak NG, sentence by sentence, and
the call path turns that into mu-law 8 kHz. Synthesising the same sentences here (same
synthesiser, voice and transcoder) gives audio that matches what the caller heard almost sample
for sample, so each sentence can be found in a turn by normalised cross-correlation, and the
turn's words are then known exactly. A turn is only named when its voiced audio is (nearly) all
explained by sentences found this way; anything else (another provider, another voice, a
sentence cut by barge-in) is reported as not known rather than guessed.

"Almost": eSpeak carries state from one synthesis to the next, so the same sentence comes out a
few milliseconds longer or shorter (a pause 10 ms longer here, a little drift there: 125,181 to
125,285 samples for the demo's 5.7 s opening-hours line, in one process). Over a whole long
sentence that misalignment took the correlation from 0.8 down to 0.5, where it stops counting,
so whether the line was named depended on what the process had synthesised before. A sentence is
therefore matched in pieces of `PIECE_S`, each free to sit up to `SLACK_S` from where the
sentence's start puts it, and every piece must be heard for the sentence to count. A match
explains the turn from where its first piece was heard to where its last piece was, so a line
a few ms longer than its template is explained to its last sound.

Measured against the general PocketSphinx model on the demo script's lines through the call
path: see `bench/transcript_wer.py` and docs/architecture.md ("Testing").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import correlate

from telephony_codecs import Transcoder, ulaw_to_pcm16

__all__ = ["KnownLines", "SentenceMatch"]

_RATE = 8000
_FRAME = 160  # 20 ms at 8 kHz
_VOICED_RMS = 300.0  # about -40 dBFS: eSpeak's pauses are digital silence, mu-law's is ~0
PIECE_S = 0.4  # a sentence is matched in pieces this long (the last up to half as long again)
SLACK_S = 0.02  # how far a piece may sit from where the sentence's start puts it
MIN_PIECE_SCORE = 0.3  # every piece must be heard: a sentence cut short is not claimed
COVER_S = 0.3  # a sentence this much longer, heard over the best match, is tried in its place
MAX_BRANCHES = 4  # how many times one turn's search may try both


@dataclass(frozen=True, slots=True)
class SentenceMatch:
    """`sentence` found at `start` samples into the turn for `length` samples, with `score` (NCC)."""

    sentence: str
    start: int
    length: int
    score: float


def _voiced_frames(x: np.ndarray) -> np.ndarray:
    """Whether each whole 20 ms frame of `x` is louder than silence."""
    n = len(x) // _FRAME
    if n == 0:
        return np.zeros(0, dtype=bool)
    rms = np.sqrt(np.mean(x[: n * _FRAME].reshape(n, _FRAME) ** 2, axis=1))
    return rms > _VOICED_RMS


def _voiced_span(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the frames that are not silence (0, 0 if all are)."""
    voiced = np.flatnonzero(_voiced_frames(x))
    if voiced.size == 0:
        return 0, 0
    return int(voiced[0]) * _FRAME, (int(voiced[-1]) + 1) * _FRAME


def _without(x: np.ndarray, match: SentenceMatch) -> np.ndarray:
    """`x` with `match`'s samples silenced: explained."""
    out = x.copy()
    out[match.start : match.start + match.length] = 0.0
    return out


def _unexplained_ms(left: np.ndarray) -> float:
    """Voiced audio in `left`, in ms (whole 20 ms frames louder than silence)."""
    return float(np.count_nonzero(_voiced_frames(left))) * 20.0


@dataclass(frozen=True, slots=True)
class _Template:
    """A sentence's voiced audio in pieces: (offset, samples, norm) each."""

    sentence: str
    length: int
    pieces: tuple[tuple[int, np.ndarray, float], ...]
    weights: np.ndarray  # each piece's share of the sentence's energy

    @classmethod
    def of(cls, sentence: str, t: np.ndarray) -> _Template | None:
        step = int(PIECE_S * _RATE)
        bounds = list(range(0, t.size, step))
        if len(bounds) > 1 and t.size - bounds[-1] < step // 2:
            bounds.pop()  # a short tail joins the piece before it
        pieces = []
        for i, start in enumerate(bounds):
            piece = t[start : bounds[i + 1] if i + 1 < len(bounds) else t.size]
            pieces.append((start, piece, float(np.linalg.norm(piece))))
        energy = np.array([norm * norm for _, _, norm in pieces])
        if not pieces or energy.sum() <= 0:
            return None
        return cls(sentence, int(t.size), tuple(pieces), energy / energy.sum())

    def scores(self, x: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every start in `x` the sentence fits at: its score (the pieces' correlations,
        weighted by their energy, each the best within the slack) and its lowest piece's.
        `energy`: the running sum of `x` squared."""
        starts = x.size - self.length + 1
        slack = int(SLACK_S * _RATE)
        total = np.zeros(starts)
        lowest = np.full(starts, np.inf)
        for (offset, piece, norm), weight in zip(self.pieces, self.weights, strict=True):
            m = piece.size
            if norm <= 0:
                continue  # a silent piece: nothing to find, no weight
            corr = correlate(x, piece, mode="valid", method="fft")
            window = np.maximum(energy[m:] - energy[:-m], 1e-9)
            ncc = maximum_filter1d(corr / (norm * np.sqrt(window)), size=2 * slack + 1, mode="constant", cval=-1.0)
            at = ncc[offset : offset + starts]
            total += weight * at
            np.minimum(lowest, at, out=lowest)
        return total, lowest

    def heard_span(self, x: np.ndarray, energy: np.ndarray, start: int) -> tuple[int, int]:
        """Where the first piece begins and the last ends in `x`, each where it fits best within
        the slack of its place for a match at `start`: the samples the match explains. A line a
        few ms longer than its template (eSpeak's drift) is then explained to its last sound.
        `energy`: the running sum of `x` squared, as for `scores`."""
        slack = int(SLACK_S * _RATE)
        ends = []
        for offset, piece, norm in (self.pieces[0], self.pieces[-1]):
            m = piece.size
            lo = max(0, start + offset - slack)
            hi = min(x.size - m, start + offset + slack)
            if norm <= 0 or hi <= lo:
                ends.append((start + offset, start + offset + m))
                continue
            corr = correlate(x[lo : hi + m], piece, mode="valid", method="fft")
            ncc = corr / np.sqrt(np.maximum(energy[lo + m : hi + m + 1] - energy[lo : hi + 1], 1e-9))
            at = lo + int(np.argmax(ncc))
            ends.append((at, at + m))
        return ends[0][0], ends[-1][1]


def _peak(template: _Template, gain: np.ndarray, score: np.ndarray, lo: int,
          hi: int) -> tuple[float, SentenceMatch] | None:
    """`template`'s heard match with the most gain starting in [lo, hi), or None if none is heard."""
    lo, hi = max(0, lo), min(gain.size, hi)
    if hi <= lo:
        return None
    k = lo + int(np.argmax(gain[lo:hi]))
    if gain[k] <= 0:
        return None
    return float(gain[k]), SentenceMatch(template.sentence, k, template.length, float(score[k]))


def _strongest(peaks: Iterable[tuple[float, SentenceMatch] | None]) -> tuple[float, SentenceMatch] | None:
    """The peak with the most gain (the first of equals), or None."""
    return max((p for p in peaks if p is not None), key=lambda p: p[0], default=None)


class KnownLines:
    """Templates of every sentence the engine can say; `transcribe()` names a turn or says None.

    `voice` and `words_per_minute` must be the server's (its script's voice unless AGENT_VOICE
    names another eSpeak voice); with others nothing matches, and nothing is claimed.
    """

    def __init__(
        self,
        lines: Iterable[str],
        voice: str = "en-us",
        words_per_minute: int | None = None,
        *,
        min_score: float = 0.5,
        max_unexplained_ms: float = 200.0,
    ) -> None:
        from telephony_agent.realtime.providers.local import tts
        from telephony_agent.realtime.providers.local.dialogue import split_sentences

        self.min_score = min_score
        self.max_unexplained_ms = max_unexplained_ms
        self._templates: list[_Template] = []
        rate = tts.sample_rate()
        sentences = dict.fromkeys(s for line in lines for s in split_sentences(line))
        for sentence in sentences:
            tx = Transcoder.pcm_to_ulaw8k(rate)
            ulaw = tx.process(tts.synthesize(sentence, voice, words_per_minute)) + tx.flush()
            x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
            a, b = _voiced_span(x)
            template = _Template.of(sentence, x[a:b]) if b > a else None
            if template is not None:
                self._templates.append(template)
        self._by_sentence = {t.sentence: t for t in self._templates}

    @classmethod
    def from_script(cls, path: str | None = None, voice: str | None = None,
                    words_per_minute: int | None = None) -> KnownLines:
        """The lines of a local-engine script (None: the demo script), in its voice unless `voice`."""
        from telephony_agent.realtime.providers.local.dialogue import load_script

        script = load_script(path)
        return cls(script.lines, voice or script.voice or "en-us", words_per_minute)

    @property
    def sentences(self) -> list[str]:
        return [t.sentence for t in self._templates]

    def find(self, ulaw: bytes) -> tuple[list[SentenceMatch], float]:
        """The sentences found in `ulaw` (in order) and the ms of voiced audio none of them explains."""
        x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
        found, left, _ = self._explain(x, [], 0.0, [MAX_BRANCHES])
        return sorted(found, key=lambda f: f.start), _unexplained_ms(left)

    def _explain(self, left: np.ndarray, found: list[SentenceMatch], gain: float,
                 branches: list[int]) -> tuple[list[SentenceMatch], np.ndarray, float]:
        """Take the best match from `left` until none is heard: (matches, what is left, their gain).

        The match that explains the most of the turn's energy (score^2 x energy) is taken first,
        so "Hello, thank you for calling." beats its own tail "Thank you for calling." when both
        sound alike. eSpeak's state can make the tail score higher (0.98 against 0.85) and win;
        then "Hello," is left unexplained and the turn is not known. So where a longer sentence is
        also heard over the best match, both are tried and the one that leaves less unexplained
        audio kept (`branches` bounds how often; `find` is then at most that many times dearer).
        """
        for _ in range(32):  # a turn says a few sentences; bounded anyway
            best, covering = self._best(left)
            if best is None:
                break
            if covering is not None and branches[0] > 0:
                branches[0] -= 1
                tries = [self._explain(_without(left, m), [*found, m], gain + g, branches)
                         for g, m in (best, covering)]
                return min(tries, key=lambda t: (_unexplained_ms(t[1]), -t[2]))
            found = [*found, best[1]]
            gain += best[0]
            left = _without(left, best[1])
        return found, left, gain

    def _best(self, left: np.ndarray) -> tuple[tuple[float, SentenceMatch] | None,
                                               tuple[float, SentenceMatch] | None]:
        """The heard match that explains the most energy, and the best heard match of a sentence
        at least `COVER_S` longer over the whole of it (None where there is none)."""
        energy = np.concatenate(([0.0], np.cumsum(left * left)))
        gains: list[tuple[_Template, np.ndarray, np.ndarray]] = []
        for template in self._templates:
            m = template.length
            if m > left.size:
                continue
            score, lowest = template.scores(left, energy)
            window = np.maximum(energy[m:] - energy[:-m], 1e-9)
            heard = (score >= self.min_score) & (lowest >= MIN_PIECE_SCORE)
            gains.append((template, np.where(heard, score * score * window, 0.0), score))
        best = _strongest(_peak(t, gain, score, 0, gain.size) for t, gain, score in gains)
        if best is None:
            return None, None
        inner = best[1]
        slack = int(SLACK_S * _RATE)
        covering = _strongest(
            _peak(t, gain, score, inner.start + inner.length - t.length - slack, inner.start + slack + 1)
            for t, gain, score in gains if t.length >= inner.length + int(COVER_S * _RATE))
        return self._heard(best, left, energy), self._heard(covering, left, energy)

    def _heard(self, peak: tuple[float, SentenceMatch] | None, x: np.ndarray,
               energy: np.ndarray) -> tuple[float, SentenceMatch] | None:
        """`peak` with its match's span where its end pieces were heard (see `heard_span`)."""
        if peak is None:
            return None
        gain, match = peak
        a, b = self._by_sentence[match.sentence].heard_span(x, energy, match.start)
        return gain, SentenceMatch(match.sentence, a, b - a, match.score)

    def transcribe(self, ulaw: bytes) -> str | None:
        """The exact words of a turn made only of known sentences; None if any of it is not known."""
        found, unexplained_ms = self.find(ulaw)
        if not found or unexplained_ms > self.max_unexplained_ms:
            return None
        return " ".join(f.sentence for f in found)
