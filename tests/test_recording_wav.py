"""StereoWavWriter: audio placed by time on two channels, written to disk as the call goes.

The writer keeps what is not yet on disk per channel and interleaves it only when it goes out;
these tests hold it against a model that keeps the whole call in memory and applies the same rule
for what is final: audio more than `horizon_s` behind the latest placement goes to disk, in pieces
of at least `chunk_s`, and a placement that reaches back onto the disk is clipped there."""

from __future__ import annotations

import random
import wave
from pathlib import Path

import numpy as np

from telephony_agent.recording.wav import LEFT, RATE, RIGHT, StereoWavWriter

HORIZON_S, CHUNK_S = 0.2, 0.05  # small, so a short random call crosses them often


class Model:
    """The whole call in memory; `written` follows the writer's rule for what is on disk."""

    def __init__(self) -> None:
        self.audio = [np.zeros(0, np.int16), np.zeros(0, np.int16)]
        self.written = 0
        self.end = [0, 0]
        self.horizon, self.chunk = int(HORIZON_S * RATE), int(CHUNK_S * RATE)

    def _fit(self, channel: int, size: int) -> None:
        if self.audio[channel].size < size:
            self.audio[channel] = np.concatenate([self.audio[channel], np.zeros(size - self.audio[channel].size, np.int16)])

    def place(self, channel: int, index: int, samples: np.ndarray) -> int:
        start = max(index, self.written)
        self._fit(channel, index + samples.size)
        if start < index + samples.size:
            self.audio[channel][start : index + samples.size] = samples[start - index :]
        self.end[channel] = max(index + samples.size, self.written)
        upto = max(self.end) - self.horizon
        if upto - self.written >= self.chunk:
            self.written = upto
        return self.end[channel]

    def truncate(self, channel: int, index: int) -> None:
        cut = max(index, self.written)
        self.audio[channel][cut:] = 0
        self.end[channel] = min(self.end[channel], cut)

    def wav(self) -> np.ndarray:
        """Both channels as the file holds them at the end: up to the last sample placed and not cut."""
        last = [int(np.flatnonzero(a)[-1]) + 1 if a.any() else 0 for a in self.audio]
        n = max(self.written, *last)
        out = np.zeros((n, 2), np.int16)
        for ch in (LEFT, RIGHT):
            k = min(n, self.audio[ch].size)
            out[:k, ch] = self.audio[ch][:k]
        return out


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == RATE and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)


def test_random_placements_and_cuts_match_the_model(tmp_path: Path) -> None:
    rng = random.Random(5)
    for trial in range(40):
        path = tmp_path / f"{trial}.wav"
        writer = StereoWavWriter(path, horizon_s=HORIZON_S, chunk_s=CHUNK_S)
        model = Model()
        now = 0
        for _ in range(rng.randrange(20, 200)):
            now += rng.choice((0, 80, 160, 160, 320))
            channel = rng.choice((LEFT, RIGHT))
            if rng.random() < 0.1:
                at = now + rng.randrange(-2000, 800)
                writer.truncate(channel, at)
                model.truncate(channel, at)
                assert writer.end(channel) == model.end[channel]
                continue
            # nonzero samples (1..32767): a cut or a gap shows as zeros
            samples = np.array([rng.randrange(1, 32768) for _ in range(rng.choice((1, 160, 320, 7)))], np.int16)
            at = max(0, now + rng.randrange(-2500, 1200))  # late, early, or into what is on disk
            assert writer.place(channel, at, samples.astype("<i2").tobytes()) == model.place(channel, at, samples)
        writer.close()
        assert np.array_equal(read_wav(path), model.wav()), trial


def test_audio_goes_to_disk_as_the_call_goes_and_the_header_is_patched_at_close(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    writer = StereoWavWriter(path)  # a 2 s horizon, 0.5 s pieces
    frame = np.full(160, 1000, np.int16).tobytes()
    for i in range(500):  # 10 s of caller audio, the agent's on the other channel from 1 s
        writer.place(LEFT, 160 * i, frame)
        if i >= 50:
            writer.place(RIGHT, 160 * i, frame)
    on_disk = (path.stat().st_size - 44) // 4
    assert 7.5 * RATE <= on_disk <= 8 * RATE  # all but the last 2-2.5 s, before the call ends
    writer.close()
    x = read_wav(path)
    assert x.shape == (10 * RATE, 2)
    assert (x[:, LEFT] == 1000).all() and (x[: RATE, RIGHT] == 0).all() and (x[RATE:, RIGHT] == 1000).all()


def test_a_placement_that_reaches_onto_the_disk_is_clipped_but_ends_where_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "late.wav"
    writer = StereoWavWriter(path, horizon_s=0.1, chunk_s=0.02)
    writer.place(LEFT, 0, np.full(3200, 7, np.int16).tobytes())  # 0.4 s: all but the last 0.1 s on disk
    on_disk = (path.stat().st_size - 44) // 4
    assert on_disk == 3200 - 800
    late = writer.place(RIGHT, on_disk - 10, np.full(160, 9, np.int16).tobytes())
    assert late == on_disk + 150  # the placement's own end, though its first 10 samples were clipped
    writer.close()
    x = read_wav(path)
    assert (x[:on_disk, RIGHT] == 0).all() and (x[on_disk : on_disk + 150, RIGHT] == 9).all()
