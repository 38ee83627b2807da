"""A two-channel WAV written as the call goes: caller on the left, agent on the right.

Audio is placed by time. Memory stays bounded: anything older than `horizon_s` behind the
latest placement is final and goes to disk (in pieces of at least `chunk_s`); the RIFF sizes are
patched at `close()` (a file cut short by a crash still plays in most tools, with a zero length
in its header).
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
    `truncate(channel, sample_index)` drops what was placed from there on (a `clear`).

    What is not yet on disk waits per channel in a bytearray, written in place, and the two are
    interleaved only as they go to disk, in pieces of at least `chunk_s`: a recorded call places
    a frame 75 times a second, and growing an array or writing a few rows at each one cost more
    than the rest of recording the frame."""

    def __init__(self, path: str | Path, *, horizon_s: float = 2.0, chunk_s: float = 0.5) -> None:
        self.path = Path(path)
        self._f: BinaryIO | None = open(self.path, "wb")
        self._f.write(_header(0))
        self._written = 0  # samples per channel already on disk
        self._pending = (bytearray(), bytearray())  # PCM16 per channel, from `_written` on
        self._horizon = int(horizon_s * RATE)
        self._chunk = max(1, int(chunk_s * RATE))
        self._end = [0, 0]  # end index of the last placement per channel (absolute)

    def end(self, channel: int) -> int:
        return self._end[channel]

    def place(self, channel: int, index: int, pcm16: bytes) -> int:
        """Write at `index` (absolute samples); audio before what is already on disk is clipped.
        Returns the absolute end index."""
        size = len(pcm16) // 2
        end = index + size
        rel = index - self._written
        data = memoryview(pcm16)[: 2 * size]
        if rel < 0:
            data = data[-2 * rel :]
            rel = 0
        buf = self._pending[channel]
        at = 2 * rel
        if at > len(buf):
            buf.extend(bytes(at - len(buf)))  # silence up to the placement
        buf[at : at + len(data)] = data
        self._end[channel] = max(end, self._written)
        upto = max(self._end) - self._horizon
        if upto - self._written >= self._chunk:
            self._flush(upto)
        return self._end[channel]

    def truncate(self, channel: int, index: int) -> None:
        del self._pending[channel][2 * max(0, index - self._written) :]
        self._end[channel] = min(self._end[channel], max(index, self._written))

    def _flush(self, upto: int) -> None:
        n = upto - self._written
        if n <= 0 or self._f is None:
            return
        frame = np.zeros((n, 2), np.int16)
        for ch, buf in enumerate(self._pending):
            k = min(n, len(buf) // 2)
            head = np.frombuffer(buf, np.int16, k)
            frame[:k, ch] = head
            del head  # a bytearray cannot shrink while a view of it lives
            del buf[: 2 * k]
        self._f.write(frame.astype("<i2", copy=False).tobytes())
        self._written = upto

    def close(self) -> Path:
        if self._f is None:
            return self.path
        self._flush(self._written + max(len(buf) for buf in self._pending) // 2)
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
