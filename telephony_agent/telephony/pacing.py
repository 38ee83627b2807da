"""Sans-I/O pacing clock: when each chunk sent to a phone leg has played, by the wall clock.

A phone leg plays what it is sent back to back at real time: a chunk sent while the leg is idle
starts at once, one sent while audio is still playing starts when that ends. This clock keeps
that timeline for the chunks in flight, so it can say when each one finishes.

Who confirms playout (`Confirmer`):
- `CLOCK`: the leg confirms nothing (RTP). The clock confirms each chunk when it ends.
- `LEG`: the leg confirms (Twilio mark echoes); the clock only watches. If the leg has not
  confirmed a chunk `fallback_s` after the clock says it ended, the leg has stopped confirming
  (a simulator that never echoes, a stuck proxy): the call switches to `CLOCK` for good, with the
  overdue chunks confirmed at the times they ended, so the caller keeps hearing audio at real time
  and the played position stays right.

Nothing here reads a clock or sleeps; every call passes `now` (seconds, monotonic) and
`deadline()` says when `due(now)` next has something to return.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

__all__ = ["Confirmer", "PacingClock"]

DEFAULT_FALLBACK_S = 1.0


class Confirmer(str, enum.Enum):
    """Who confirms that a chunk has played."""

    LEG = "leg"  # the phone leg reports it (Twilio marks)
    CLOCK = "clock"  # the pacing clock does, at real time


@dataclass(slots=True)
class _Chunk:
    tag: str
    ends_at: float


class PacingClock:
    """The real-time playout timeline of one phone leg, and the fallback from leg to clock."""

    __slots__ = ("_busy_until", "_chunks", "confirmer", "fallback_s", "fell_back_at")

    def __init__(self, leg_confirms: bool, *, fallback_s: float = DEFAULT_FALLBACK_S) -> None:
        if fallback_s < 0:
            raise ValueError(f"fallback_s must not be negative, got {fallback_s}")
        self.confirmer = Confirmer.LEG if leg_confirms else Confirmer.CLOCK
        self.fallback_s = fallback_s
        self.fell_back_at: float | None = None  # when a confirming leg was found to have stopped
        self._chunks: deque[_Chunk] = deque()
        self._busy_until: float | None = None  # when the last chunk sent finishes playing

    @property
    def pending(self) -> int:
        """Chunks sent and not yet confirmed (by either side)."""
        return len(self._chunks)

    def sent(self, tag: str, ms: float, now: float) -> float:
        """A chunk of `ms` went to the leg at `now`; returns when it will have played."""
        busy = self._busy_until
        start = now if busy is None or busy < now else busy
        ends = start + ms / 1000
        self._chunks.append(_Chunk(tag, ends))
        self._busy_until = ends
        return ends

    def leg_confirmed(self, tag: str) -> None:
        """The leg confirmed `tag` (and so everything before it): stop watching those chunks."""
        chunks = self._chunks
        if not any(c.tag == tag for c in chunks):
            return
        while chunks:
            if chunks.popleft().tag == tag:
                break

    def clear(self) -> None:
        """The leg dropped everything unplayed (barge-in): the next chunk starts when sent."""
        self._chunks.clear()
        self._busy_until = None

    def deadline(self) -> float | None:
        """When `due` next has work: the head chunk's end (plus the grace a confirming leg gets)."""
        if not self._chunks:
            return None
        ends = self._chunks[0].ends_at
        return ends + self.fallback_s if self.confirmer is Confirmer.LEG else ends

    def due(self, now: float) -> list[tuple[str, float]]:
        """Chunks the clock confirms at `now`, as (tag, time it finished playing), oldest first.

        Under `LEG` this is empty unless the leg is overdue, which switches to `CLOCK` first.
        """
        chunks = self._chunks
        if not chunks:
            return []
        if self.confirmer is Confirmer.LEG:
            if now < chunks[0].ends_at + self.fallback_s:
                return []
            self.confirmer = Confirmer.CLOCK
            self.fell_back_at = now
        out: list[tuple[str, float]] = []
        while chunks and chunks[0].ends_at <= now:
            chunk = chunks.popleft()
            out.append((chunk.tag, chunk.ends_at))
        return out
