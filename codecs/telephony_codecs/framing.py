"""Cut a byte stream into fixed-size frames, keeping the remainder for the next push.

Twilio expects outbound audio in 20 ms frames (160 bytes of mu-law); model audio arrives in chunks
of any size, so the bridge needs a small accumulator between the two.
"""

from __future__ import annotations

__all__ = ["Framer"]


class Framer:
    """Accumulates bytes and hands out whole `frame_bytes`-sized frames."""

    __slots__ = ("_buf", "frame_bytes")

    def __init__(self, frame_bytes: int = 160) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back because they do not fill a frame yet."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Add `data`; return every frame now complete (possibly none), in order."""
        buf = self._buf
        size = self.frame_bytes
        if not buf and len(data) % size == 0:  # common case: whole frames in, no copy of a remainder
            return [bytes(data[i : i + size]) for i in range(0, len(data), size)]
        buf += data
        n = len(buf) - len(buf) % size
        if n == 0:
            return []
        frames = [bytes(buf[i : i + size]) for i in range(0, n, size)]
        del buf[:n]
        return frames

    def flush(self, pad: bytes | None = None) -> bytes | None:
        """Return the remainder (None if empty), padded to a full frame by repeating `pad` if given.

        For mu-law, `pad=b"\\xff"` is digital silence, so the last frame is still 20 ms long.
        """
        if not self._buf:
            return None
        out = bytes(self._buf)
        self._buf.clear()
        if pad:
            missing = self.frame_bytes - len(out)
            out += (pad * (missing // len(pad) + 1))[:missing]
        return out

    def clear(self) -> None:
        """Drop the remainder (barge-in: queued audio must not be played)."""
        self._buf.clear()
