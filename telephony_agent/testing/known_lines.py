"""The local engine's exact words in what a caller heard, found by matching audio, not guessed.

The local engine says a dialogue script's fixed lines with eSpeak NG, sentence by sentence, and
the call path turns that into mu-law 8 kHz. Synthesising the same sentences here (same
synthesiser, voice and transcoder) gives audio that matches what the caller heard almost sample
for sample, so each sentence can be found in a turn by normalised cross-correlation, and the
turn's words are then known exactly. A turn is only named when its voiced audio is (nearly) all
explained by sentences found this way; anything else (another provider, another voice, a
sentence cut by barge-in) is reported as not known rather than guessed.

Measured against the general PocketSphinx model on the demo script's lines through the call
path: see `bench/transcript_wer.py` and docs/architecture.md ("Testing").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.signal import correlate

from telephony_codecs import Transcoder, ulaw_to_pcm16

__all__ = ["KnownLines", "SentenceMatch"]

_RATE = 8000
_FRAME = 160  # 20 ms at 8 kHz
_VOICED_RMS = 300.0  # about -40 dBFS: eSpeak's pauses are digital silence, mu-law's is ~0


@dataclass(frozen=True, slots=True)
class SentenceMatch:
    """`sentence` found at `start` samples into the turn for `length` samples, with `score` (NCC)."""

    sentence: str
    start: int
    length: int
    score: float


def _voiced_span(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of the frames that are not silence (0, 0 if all are)."""
    n = len(x) // _FRAME
    if n == 0:
        return 0, 0
    rms = np.sqrt(np.mean(x[: n * _FRAME].reshape(n, _FRAME) ** 2, axis=1))
    voiced = np.flatnonzero(rms > _VOICED_RMS)
    if voiced.size == 0:
        return 0, 0
    return int(voiced[0]) * _FRAME, (int(voiced[-1]) + 1) * _FRAME


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
        self._templates: list[tuple[str, np.ndarray, float]] = []
        rate = tts.sample_rate()
        sentences = dict.fromkeys(s for line in lines for s in split_sentences(line))
        for sentence in sentences:
            tx = Transcoder.pcm_to_ulaw8k(rate)
            ulaw = tx.process(tts.synthesize(sentence, voice, words_per_minute)) + tx.flush()
            x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
            a, b = _voiced_span(x)
            t = x[a:b]
            norm = float(np.linalg.norm(t))
            if t.size and norm > 0:
                self._templates.append((sentence, t, norm))

    @classmethod
    def from_script(cls, path: str | None = None, voice: str | None = None,
                    words_per_minute: int | None = None) -> KnownLines:
        """The lines of a local-engine script (None: the demo script), in its voice unless `voice`."""
        from telephony_agent.realtime.providers.local.dialogue import load_script

        script = load_script(path)
        return cls(script.lines, voice or script.voice or "en-us", words_per_minute)

    @property
    def sentences(self) -> list[str]:
        return [s for s, _, _ in self._templates]

    def find(self, ulaw: bytes) -> tuple[list[SentenceMatch], float]:
        """The sentences found in `ulaw` (in order) and the ms of voiced audio none of them explains."""
        x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
        left = x.copy()
        found: list[SentenceMatch] = []
        energy = np.concatenate(([0.0], np.cumsum(left * left)))
        for _ in range(32):  # a turn says a few sentences; bounded anyway
            # The match that explains the most of the turn's energy (score^2 x energy) wins, so
            # "Hello, thank you for calling." beats its own tail "Thank you for calling."
            best: tuple[float, SentenceMatch] | None = None
            for sentence, t, norm in self._templates:
                m = t.size
                if m > left.size:
                    continue
                corr = correlate(left, t, mode="valid", method="fft")
                window = np.maximum(energy[m:] - energy[:-m], 1e-9)
                ncc = corr / (norm * np.sqrt(window))
                gain = np.where(ncc >= self.min_score, ncc * ncc * window, 0.0)
                k = int(np.argmax(gain))
                if gain[k] > 0 and (best is None or gain[k] > best[0]):
                    best = (float(gain[k]), SentenceMatch(sentence, k, m, float(ncc[k])))
            if best is None:
                break
            match = best[1]
            found.append(match)
            left[match.start : match.start + match.length] = 0.0
            energy = np.concatenate(([0.0], np.cumsum(left * left)))
        n = left.size // _FRAME
        rms = np.sqrt(np.mean(left[: n * _FRAME].reshape(n, _FRAME) ** 2, axis=1)) if n else np.zeros(0)
        unexplained_ms = float(np.count_nonzero(rms > _VOICED_RMS)) * 20.0
        return sorted(found, key=lambda f: f.start), unexplained_ms

    def transcribe(self, ulaw: bytes) -> str | None:
        """The exact words of a turn made only of known sentences; None if any of it is not known."""
        found, unexplained_ms = self.find(ulaw)
        if not found or unexplained_ms > self.max_unexplained_ms:
            return None
        return " ".join(f.sentence for f in found)
