"""`LoopTimer`: the asyncio shell of a sans-I/O deadline (`get_timer()` / `handle_timer(now)`);
`SharedTimer`: the same for an object every call on a loop shares; `CallTimer`: the one a call
(`call_core.CallCore`) arms, re-armed only when its deadline moves earlier.

Why a class for something as small as `loop.call_at`: the time handed to `handle_timer` must not
be earlier than the deadline the timer was armed for. uvloop's clock (libuv's) moves in whole
milliseconds, once per loop iteration, and it fires a timer as soon as the rounded delay has run
out, up to a millisecond before the deadline by `loop.time()`. A shell that passes `loop.time()`
finds nothing due, arms the same deadline again, and the loop spins until its clock ticks over:
about a thousand wake-ups per deadline. With a pacing deadline every 100 ms per SIP call that was
40 % of the server's CPU at 50 calls. The loop firing the timer is what says the deadline has come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

__all__ = ["CallTimer", "LoopTimer", "SharedTimer", "TimedCall", "Timed", "fired_at"]


def fired_at(now: float, due: float | None) -> float:
    """The time to act on when a timer armed for `due` fires and the clock reads `now`."""
    return now if due is None or now >= due else due


class LoopTimer:
    """One event-loop timer: `arm(deadline)` (on the loop's clock; None disarms), and
    `callback(now)` when it fires, with `now` never before that deadline."""

    __slots__ = ("_callback", "_handle", "_loop", "due")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[float], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self.due: float | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, deadline: float | None) -> None:
        """Fire at `deadline`; the armed handle is kept when the deadline did not move."""
        if deadline is not None and deadline == self.due and self._handle is not None:
            return
        self.cancel()
        if deadline is not None:
            self.due = deadline
            self._handle = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.due = None

    def _fire(self) -> None:
        due, self._handle, self.due = self.due, None, None
        self._callback(fired_at(self._loop.time(), due))


class Timed(Protocol):
    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class SharedTimer:
    """Runs `target.handle_timer` when `target.get_timer()` says, on the running loop's clock; call
    `changed()` after anything that may have moved that deadline. A deadline already past runs
    in a callback of this pass (`call_soon`), once however often `changed` is called.

    It holds no loop and no timer handle, so a per-loop registry (`per_loop.PerLoop`) can keep
    it without keeping its loop alive: it only remembers the deadline it armed. A timer that an
    earlier deadline made stale still fires, and finds nothing due, or less than it was armed for."""

    __slots__ = ("_armed", "_target")

    def __init__(self, target: Timed) -> None:
        self._target = target
        self._armed: float | None = None

    def changed(self) -> None:
        due = self._target.get_timer()
        if due is None or (self._armed is not None and self._armed <= due):
            return
        loop = asyncio.get_running_loop()
        self._armed = due
        if due <= loop.time():
            loop.call_soon(self._fire, due)
        else:
            loop.call_at(due, self._fire, due)

    def _fire(self, due: float) -> None:
        if self._armed == due:
            self._armed = None
        self._target.handle_timer(fired_at(asyncio.get_running_loop().time(), due))
        self.changed()


class TimedCall(Protocol):
    """What `CallTimer` asks of a bridge."""

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[logging.Logger]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class CallTimer:
    """The asyncio shell's one event-loop timer for a bridge: due at `bridge.get_timer()`.

    The bridge calls `update()` whenever a deadline may have moved. A later deadline leaves the
    armed timer alone (it fires, finds nothing due, and re-arms), so the per-frame path never
    cancels and re-creates timers; only an earlier one re-arms.
    """

    __slots__ = ("_bridge", "_due", "_handle", "_loop")

    def __init__(self, bridge: TimedCall) -> None:
        self._bridge = bridge
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def attach(self) -> None:
        """Arm timers on the running event loop from now on."""
        self._loop = asyncio.get_running_loop()

    def update(self) -> None:
        loop = self._loop
        if loop is None:
            return
        due = self._bridge.get_timer()
        if due is None:
            self.cancel()
            return
        handle = self._handle
        if handle is not None:
            if self._due <= due:
                return
            handle.cancel()
        self._due = due
        self._handle = loop.call_later(max(0.0, due - self._bridge.clock()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        bridge = self._bridge
        try:
            # never before the deadline it was armed for (uvloop fires up to 1 ms early by its
            # own clock, and acting on nothing would re-arm and spin: loop_timer.py)
            bridge.handle_timer(fired_at(bridge.clock(), self._due))  # re-arms through `update`
        except Exception:
            bridge.log.exception("call timer failed")
        # Arms it if handle_timer did not (and is a no-op if it did). Not `if self._handle is
        # None`: mypy keeps the attribute narrowed to None across the call above, so mypyc
        # compiles that read as a cast to None, which raises once handle_timer has re-armed.
        self.update()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
