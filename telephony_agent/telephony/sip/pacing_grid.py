"""One outbound pacing tick for every call of a process, sans-I/O.

A timer per call every 20 ms costs 50 event-loop wake-ups per call per second (10,000 at 200
calls), and their callbacks interleave with everything else the loop does, so the spacing of one
call's packets picks up the loop's lag. Instead every call's `OutboundPacer` is anchored on one
absolute grid (`origin + k * ptime`) and a single timer walks the grid: each pass hands every due
frame of every call to the shell at once.

The pacers keep their own semantics (absolute clock, catch-up after a late wake-up, re-anchoring
after a stall, silence or DTX); the grid only feeds them grid times: `slot_at(now)` (the latest
grid point) to anchor and to release frames, so every due time lands on the grid and each pass
releases one frame per running call. A call is in the pass only while its pacer runs: an idle
(DTX) or stopped one costs nothing until `add` puts it back.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from .pacer import OutboundPacer, PacedFrame

__all__ = ["PacingGrid"]

K = TypeVar("K", bound=Hashable)


class PacingGrid(Generic[K]):
    """The calls whose pacers run, and when the next pass over them is due."""

    def __init__(self, *, ptime: float = 0.02, origin: float = 0.0) -> None:
        self.ptime = ptime
        self.origin = origin
        self._active: dict[K, OutboundPacer] = {}
        self._next: float | None = None  # the next pass, while any pacer runs
        self.passes = 0

    def __len__(self) -> int:
        return len(self._active)

    def __contains__(self, key: object) -> bool:
        return key in self._active

    def slot_at(self, now: float) -> float:
        """The latest grid point at or before `now` (a hair early counts as on it)."""
        k = math.floor((now - self.origin) / self.ptime + 1e-6)
        return self.origin + k * self.ptime

    def add(self, key: K, pacer: OutboundPacer, now: float) -> None:
        """Put a call in the passes (its pacer was started or given audio). The pacer should have
        been anchored at a grid time (`slot_at`) so its frames fall on the grid."""
        if pacer.get_timer() is None:
            return
        self._active[key] = pacer
        if self._next is None:
            self._next = self.slot_at(now) + self.ptime

    def discard(self, key: K) -> None:
        self._active.pop(key, None)
        if not self._active:
            self._next = None

    def get_timer(self) -> float | None:
        """When the next pass is due, or None when no call has anything to send."""
        return self._next

    def handle_timer(self, now: float) -> list[tuple[K, list[PacedFrame]]]:
        """Every frame due by the grid point at `now`, per call (a late pass catches up; a stall
        longer than the pacer's `resync_after` re-anchors it on the grid)."""
        slot = self.slot_at(now)
        self.passes += 1
        out: list[tuple[K, list[PacedFrame]]] = []
        done: list[K] = []
        for key, pacer in self._active.items():
            frames = pacer.handle_timer(slot)
            if frames:
                out.append((key, frames))
            if pacer.get_timer() is None:  # DTX out of audio, or stopped
                done.append(key)
        for key in done:
            del self._active[key]
        self._next = slot + self.ptime if self._active else None
        return out
