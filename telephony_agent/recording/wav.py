"""A two-channel WAV written as the call goes: caller on the left, agent on the right.

Audio is placed by time. Memory stays bounded: anything older than `horizon_s` behind the
latest placement is final and goes to disk; the RIFF sizes are patched at `close()` (a file
cut short by a crash still plays in most tools, with a zero length in its header).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

RATE = 8000
LEFT, RIGHT = 0, 1


def _header(data_bytes: int, rate: int = RATE, channels: int = 2) -> bytes:
    block = 2 * channels
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )


class StereoWavWriter:
    """PCM16 8 kHz stereo. `place(channel, sample_index, pcm16)` puts audio at a position;
    `truncate(channel, sample_index)` drops what was placed from there on (a `clear`)."""

    def __init__(self, path: str | Path, *, horizon_s: float = 2.0) -> None:
        self.path = Path(path)
        self._f: BinaryIO | None = open(self.path, "wb")
        self._f.write(_header(0))
        self._written = 0  # samples per channel already on disk
        self._chan = [np.zeros(0, np.int16), np.zeros(0, np.int16)]  # pending, from self._written
        self._horizon = int(horizon_s * RATE)
        self._end = [0, 0]  # end index of the last placement per channel (absolute)

    def end(self, channel: int) -> int:
        return self._end[channel]

    def place(self, channel: int, index: int, pcm16: bytes) -> int:
        """Write at `index` (absolute samples); audio before what is already on disk is clipped.
        Returns the absolute end index."""
        samples = np.frombuffer(pcm16[: len(pcm16) // 2 * 2], np.int16)
        rel = index - self._written
        if rel < 0:
            samples = samples[-rel:]
            rel = 0
        buf = self._chan[channel]
        need = rel + len(samples)
        if len(buf) < need:
            buf = np.concatenate([buf, np.zeros(need - len(buf), np.int16)])
        buf[rel:need] = samples
        self._chan[channel] = buf
        self._end[channel] = max(index + len(samples), self._written)
        self._flush(max(self._end) - self._horizon)
        return self._end[channel]

    def truncate(self, channel: int, index: int) -> None:
        rel = max(0, index - self._written)
        self._chan[channel] = self._chan[channel][:rel]
        self._end[channel] = min(self._end[channel], max(index, self._written))

    def _flush(self, upto: int) -> None:
        n = upto - self._written
        if n <= 0 or self._f is None:
            return
        frame = np.zeros((n, 2), np.int16)
        for ch in (LEFT, RIGHT):
            buf = self._chan[ch]
            k = min(n, len(buf))
            frame[:k, ch] = buf[:k]
            self._chan[ch] = buf[k:]
        self._f.write(frame.astype("<i2").tobytes())
        self._written = upto

    def close(self) -> Path:
        if self._f is None:
            return self.path
        self._flush(max(self._written, *(self._written + len(c) for c in self._chan)))
        data = self._written * 4
        self._f.seek(0)
        self._f.write(_header(data))
        self._f.close()
        self._f = None
        return self.path


def write_mono(path: str | Path, pcm16: bytes, rate: int = RATE) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        f.write(_header(len(pcm16), rate, 1))
        f.write(pcm16)
    return path
