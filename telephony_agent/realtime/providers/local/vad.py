"""Sans-I/O energy voice activity detector with server-VAD semantics.

Feed it PCM16 mono audio in any chunk size; it returns `VadEvent`s whose positions are
milliseconds of input audio since the start of the session (like OpenAI's `audio_start_ms` /
`audio_end_ms`), so a recorded call gives the same events however it is chunked or timed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FRAME_MS = 10


@dataclass(frozen=True, slots=True)
class VadSettings:
    """`threshold` (0..1, the cloud providers' knob) maps linearly onto -60..-20 dBFS frame energy.

    `min_speech_ms`: voiced audio needed before a turn starts, so clicks and coughs don't barge in.
    `silence_ms`: unvoiced audio that ends a turn. `prefix_padding_ms`: audio kept before the onset.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_ms: int = 500
    min_speech_ms: int = 120

    @property
    def level_dbfs(self) -> float:
        t = min(max(self.threshold, 0.0), 1.0)
        return -60.0 + 40.0 * t


@dataclass(frozen=True, slots=True)
class VadEvent:
    """`kind` is "started" (position = speech onset) or "stopped" (position = end of the last voiced frame)."""

    kind: str
    position_ms: int


class EnergyVad:
    """Frame-energy VAD with an adaptive noise floor.

    A frame is voiced when its level exceeds both the configured level and the noise floor plus
    a margin (so steady line noise above the level does not read as endless speech).
    """

    NOISE_MARGIN_DB = 9.0

    def __init__(self, settings: VadSettings | None = None, sample_rate: int = 16000) -> None:
        self.settings = settings or VadSettings()
        self.sample_rate = sample_rate
        self._frame = sample_rate * FRAME_MS // 1000
        self._pending = np.zeros(0, dtype=np.int16)
        self._frames = 0  # frames consumed
        self._noise_db: float | None = None
        self.speaking = False
        self._candidate_start: int | None = None  # frame index of a possible onset
        self._candidate_voiced = 0
        self._gap = 0  # unvoiced frames in a row
        self._last_voiced_end = 0  # frame index just past the last voiced frame

    @property
    def position_ms(self) -> int:
        """How much input audio has been consumed (whole frames)."""
        return self._frames * FRAME_MS

    def reset_turn(self) -> None:
        """Forget a turn in progress (e.g. after `clear_audio`); positions keep counting."""
        self.speaking = False
        self._candidate_start = None
        self._candidate_voiced = 0
        self._gap = 0

    def _voiced(self, frame: np.ndarray) -> bool:
        energy = float(np.mean(frame.astype(np.float64) ** 2))
        db = 10.0 * math.log10(energy / (32768.0**2) + 1e-12)
        if self._noise_db is None:
            self._noise_db = db  # start from the line's own level
        voiced = db > self.settings.level_dbfs and db > self._noise_db + self.NOISE_MARGIN_DB
        # the floor follows quiet frames quickly and loud ones slowly (steady hiss, not speech)
        rate = 0.3 if db < self._noise_db else (0.003 if voiced else 0.05)
        self._noise_db += rate * (db - self._noise_db)
        return voiced

    def process(self, pcm16: bytes) -> list[VadEvent]:
        samples = np.frombuffer(pcm16, dtype="<i2")
        if self._pending.size:
            samples = np.concatenate([self._pending, samples])
        n_frames = samples.size // self._frame
        self._pending = samples[n_frames * self._frame :].copy()
        events: list[VadEvent] = []
        min_speech = max(1, self.settings.min_speech_ms // FRAME_MS)
        silence = max(1, self.settings.silence_ms // FRAME_MS)
        # gaps shorter than this inside an onset don't reset it (plosives, short pauses)
        onset_gap = max(1, min(silence, 100 // FRAME_MS))
        for i in range(n_frames):
            index = self._frames
            self._frames += 1
            voiced = self._voiced(samples[i * self._frame : (i + 1) * self._frame])
            if voiced:
                self._gap = 0
                self._last_voiced_end = index + 1
                if not self.speaking:
                    if self._candidate_start is None:
                        self._candidate_start = index
                        self._candidate_voiced = 0
                    self._candidate_voiced += 1
                    if self._candidate_voiced >= min_speech:
                        self.speaking = True
                        events.append(VadEvent("started", self._candidate_start * FRAME_MS))
                        self._candidate_start = None
                continue
            self._gap += 1
            if self.speaking:
                if self._gap >= silence:
                    self.speaking = False
                    events.append(VadEvent("stopped", self._last_voiced_end * FRAME_MS))
            elif self._candidate_start is not None and self._gap > onset_gap:
                self._candidate_start = None
                self._candidate_voiced = 0
        return events

    def flush(self) -> list[VadEvent]:
        """End of input: close a turn in progress."""
        if self.speaking:
            self.speaking = False
            return [VadEvent("stopped", self._last_voiced_end * FRAME_MS)]
        return []
