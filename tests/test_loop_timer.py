"""The timer shells never spin: a timer that fires is handled as due, on uvloop and asyncio alike.

uvloop's clock moves in whole milliseconds and fires a timer up to a millisecond before its
deadline by `loop.time()`; a shell that handed `loop.time()` to `handle_timer` found nothing due,
re-armed the same deadline and woke about a thousand times per deadline (40 % of the server's
CPU at 50 SIP calls). These drive the real shells on both loops with deadlines off the
millisecond grid and count the wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from telephony_agent.telephony.bridge import CallTimer
from telephony_agent.telephony.loop_timer import LoopTimer, fired_at

uvloop = pytest.importorskip("uvloop")

DEADLINES = 25
PERIOD = 0.0103  # 10.3 ms: most deadlines fall between the clock's milliseconds


def run_on(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main` on a fresh loop of `kind`; nothing may reach the loop's exception handler
    (a timer callback that raised still leaves a re-armed timer, so the counts alone pass)."""
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    escaped: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(lambda _loop, context: escaped.append(context))
        runner.run(asyncio.wait_for(main(), 10.0))
    assert not escaped, [c.get("exception") or c.get("message") for c in escaped]


class Deadlines:
    """A sans-I/O object with a deadline every `PERIOD`: `handle_timer` consumes the one due."""

    def __init__(self, start: float) -> None:
        self.next: float | None = start + PERIOD
        self.handled: list[tuple[float, float]] = []  # (deadline, now handed in)
        self.calls = 0
        self.done = asyncio.Event()

    def get_timer(self) -> float | None:
        return self.next

    def handle_timer(self, now: float) -> None:
        self.calls += 1
        if self.next is not None and now >= self.next:
            self.handled.append((self.next, now))
            self.next = self.next + PERIOD if len(self.handled) < DEADLINES else None
            if self.next is None:
                self.done.set()


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_loop_timer_hands_in_a_time_no_earlier_than_the_deadline(kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        obj = Deadlines(loop.time())

        def on_timer(now: float) -> None:
            obj.handle_timer(now)
            timer.arm(obj.get_timer())

        timer = LoopTimer(loop, on_timer)
        timer.arm(obj.get_timer())
        await obj.done.wait()
        assert len(obj.handled) == DEADLINES
        assert obj.calls <= DEADLINES + 2, f"{obj.calls} wake-ups for {DEADLINES} deadlines"
        assert all(now >= due for due, now in obj.handled)
        assert all(now - due < 0.5 for due, now in obj.handled)  # a loose bound: no early or lost firing
        assert not timer.armed

    run_on(kind, main)


def test_loop_timer_rearms_only_when_the_deadline_moves() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = LoopTimer(loop, fired.append)
        due = loop.time() + 0.02
        timer.arm(due)
        handle = timer._handle
        timer.arm(due)
        assert timer._handle is handle  # same deadline: the armed handle is kept
        timer.arm(due + 0.01)
        assert timer._handle is not handle and timer.due == due + 0.01
        timer.arm(None)
        assert not timer.armed and timer.due is None
        timer.arm(loop.time() + 0.005)
        await asyncio.sleep(0.05)
        assert len(fired) == 1 and not timer.armed

    run_on("uvloop", main)


def test_fired_at_never_goes_back() -> None:
    assert fired_at(10.0, 10.0004) == 10.0004
    assert fired_at(10.001, 10.0004) == 10.001
    assert fired_at(10.0, None) == 10.0


class BridgeLike:
    """What `CallTimer` asks of the bridge, with the deadlines above."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.deadlines = Deadlines(clock())
        self.log = logging.getLogger("test")
        self.timer = CallTimer(self)  # type: ignore[arg-type]

    def get_timer(self) -> float | None:
        return self.deadlines.get_timer()

    def handle_timer(self, now: float) -> None:
        """Re-arms from inside the timer's own callback, as the call core's deadlines do."""
        self.deadlines.handle_timer(now)
        self.timer.update()


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_call_timer_does_not_spin_on_a_deadline_between_milliseconds(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        bridge = BridgeLike(asyncio.get_running_loop().time)
        bridge.timer.attach()
        bridge.timer.update()
        await bridge.deadlines.done.wait()
        calls = bridge.deadlines.calls
        assert calls <= DEADLINES + 2, f"{calls} wake-ups for {DEADLINES} deadlines"
        assert all(now >= due for due, now in bridge.deadlines.handled)

    with caplog.at_level(logging.ERROR):
        run_on(kind, main)
    assert not [r for r in caplog.records if "call timer failed" in r.getMessage()]
