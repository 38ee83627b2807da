"""Outbound RTP pacing on an absolute clock, sans-I/O.

Frame n of a run is due at `start + n * ptime`, never at "last send + ptime": a late wake-up is
caught up on the next one instead of drifting the whole call later. A stall longer than
`resync_after` (an overloaded event loop) is not replayed as a burst: the clock re-anchors and
the RTP timestamp skips the lost time, so the caller's jitter buffer keeps real time.

By default the pacer sends continuously, digital silence when there is nothing to say (what
G.711 phones do without VAD: the far end's media timeout and NAT bindings stay happy). With
`silence=None` it sends only while it has audio (DTX), and marks the first packet of each talk
spurt. `clear()` drops everything queued at once (barge-in). The shell calls `handle_timer(now)`
at `get_timer()` and sends what it returns.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass

__all__ = ["OutboundPacer", "PacedFrame", "PacerState", "PacerStats"]


class PacerState(str, enum.Enum):
    IDLE = "idle"  # not started, or (DTX) nothing to send
    RUNNING = "running"  # a clock is ticking: frame n at start + n * ptime
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class PacedFrame:
    """One frame to send now. `marker` starts a talk spurt; `skipped_samples` is the time since
    the previous frame's slot beyond one ptime (for the RTP timestamp)."""

    payload: bytes
    marker: bool = False
    skipped_samples: int = 0
    silence: bool = False


@dataclass(slots=True)
class PacerStats:
    frames: int = 0  # audio frames sent
    silence_frames: int = 0
    cleared: int = 0  # frames dropped by clear()
    overflow: int = 0  # frames refused because the queue was full
    resyncs: int = 0  # clock re-anchored after a stall


class OutboundPacer:
    """Queues a call's outbound frames and releases them on a 20 ms (ptime) absolute clock."""

    def __init__(
        self,
        *,
        frame_bytes: int = 160,
        ptime: float = 0.02,
        sample_rate: int = 8000,
        silence: bytes | None = b"\xff",
        max_queued: int = 3000,
        resync_after: float = 0.2,
    ) -> None:
        self._frame_bytes = frame_bytes
        self._ptime = ptime
        self._rate = sample_rate
        self._fill = (silence[:1] * frame_bytes) if silence else None
        self._pad = silence[:1] if silence else b"\xff"
        self._max_queued = max_queued
        self._resync_after = resync_after
        self._queue: collections.deque[bytes] = collections.deque()
        self._start = 0.0
        self._n = 0  # index of the next slot since _start
        self._last_slot: float | None = None  # when the previous frame was due
        self.state = PacerState.IDLE
        self.stats = PacerStats()

    @property
    def max_queued(self) -> int:
        return self._max_queued

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def continuous(self) -> bool:
        return self._fill is not None

    def start(self, now: float) -> None:
        """Start the clock (continuous mode) with the first frame due at `now`."""
        if self.state is PacerState.IDLE and self._fill is not None:
            self._anchor(now)

    def enqueue(self, frames: list[bytes], now: float) -> None:
        """Queue frames for the caller (short ones padded to a whole frame)."""
        if self.state is PacerState.STOPPED:
            return
        for f in frames:
            if len(self._queue) >= self._max_queued:
                self.stats.overflow += 1
                continue
            if len(f) < self._frame_bytes:
                f = f + self._pad * (self._frame_bytes - len(f))
            elif len(f) > self._frame_bytes:  # cut a long chunk into frames
                for i in range(0, len(f), self._frame_bytes):
                    self.enqueue([f[i : i + self._frame_bytes]], now)
                continue
            self._queue.append(f)
        if self.state is PacerState.IDLE and self._queue:
            self._anchor(now)

    def clear(self) -> int:
        """Drop every queued frame now (barge-in); the clock keeps running. Returns the count."""
        n = len(self._queue)
        self._queue.clear()
        self.stats.cleared += n
        return n

    def stop(self) -> None:
        self._queue.clear()
        self.state = PacerState.STOPPED

    def get_timer(self) -> float | None:
        """When the next frame is due, or None when nothing is to be sent."""
        if self.state is not PacerState.RUNNING:
            return None
        return self._start + self._n * self._ptime

    def handle_timer(self, now: float) -> list[PacedFrame]:
        """The frames due by `now`, in order (usually one)."""
        out: list[PacedFrame] = []
        if self.state is not PacerState.RUNNING:
            return out
        due = self._start + self._n * self._ptime
        if now - due > self._resync_after:  # stalled: skip the lost slots instead of a burst
            self.stats.resyncs += 1
            self._anchor(now, resync=True)
            due = now
        while due <= now + 1e-6:
            marker = False
            skipped = 0
            if self._last_slot is None:
                marker = True
            else:
                gap = due - self._last_slot - self._ptime
                if gap > self._ptime / 2:
                    skipped = round(gap * self._rate)
                    marker = True  # nothing went out for a while: a new talk spurt
            if self._queue:
                out.append(PacedFrame(self._queue.popleft(), marker, skipped))
                self.stats.frames += 1
            elif self._fill is not None:
                out.append(PacedFrame(self._fill, marker, skipped, silence=True))
                self.stats.silence_frames += 1
            else:  # DTX: out of audio, the talk spurt is over
                self.state = PacerState.IDLE
                return out
            self._last_slot = due
            self._n += 1
            due = self._start + self._n * self._ptime
        return out

    def _anchor(self, now: float, *, resync: bool = False) -> None:
        start = now
        if not resync and self._last_slot is not None:  # DTX restart: never earlier than the next slot
            start = max(now, self._last_slot + self._ptime)
        self._start = start
        self._n = 0
        self.state = PacerState.RUNNING
