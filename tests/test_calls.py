"""CallManager admission, in memory: the one set of rules every transport's calls go through."""

from __future__ import annotations

from typing import Any

import pytest

from telephony_agent.realtime import RealtimeConfig
from telephony_agent.telephony.bridge import BridgeOptions
from telephony_agent.telephony.calls import CallManager, CallRefused, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Observer:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []

    def call_refused(self, reason: str, transport: str) -> None:
        self.refused.append((reason, transport))

    def call_started(self, bridge: Any, transport: str) -> None:  # pragma: no cover - not reached here
        raise AssertionError("no call starts in these tests")

    def call_ended(self, bridge: Any, transport: str) -> None:  # pragma: no cover
        raise AssertionError("no call ends in these tests")


def manager(max_calls: int = 2, **kwargs: Any) -> tuple[CallManager, Clock, Observer]:
    clock, observer = Clock(), Observer()
    m = CallManager(
        max_calls=max_calls,
        call_config=RealtimeConfig,
        bridge_options=lambda model: BridgeOptions(),
        observer=observer,
        reservation_ttl=10.0,
        clock=clock,
        model=object(),  # type: ignore[arg-type] - admission never touches the model
        **kwargs,
    )
    return m, clock, observer


def test_reservations_count_toward_the_limit_and_expire() -> None:
    m, clock, observer = manager(max_calls=2)
    assert m.reserve("CA1") is None
    assert m.reserve("CA2", "sip") is None
    assert m.load() == 2
    assert m.refusal() == Refusal.AT_CAPACITY
    assert m.reserve("CA3", "sip") == Refusal.AT_CAPACITY
    assert observer.refused == [(Refusal.AT_CAPACITY, "sip")]
    assert m.refusal("CA1") is None, "a call holding a reservation is admissible at the limit"
    m.release("CA1")
    assert m.load() == 1 and not m.holds("CA1")
    clock.now += 10.5
    assert m.load() == 0, "a reservation whose media never came expires"
    assert m.reserve("CA4") is None


def test_draining_overload_and_no_provider_refuse_every_way_in() -> None:
    overloaded = [False]
    m, _, observer = manager(overloaded=lambda: overloaded[0])
    overloaded[0] = True
    assert m.reserve("CA1", "twilio") == Refusal.OVERLOADED
    overloaded[0] = False
    m.draining = True
    assert m.reserve("CA2", "sip") == Refusal.DRAINING
    assert m.refusal("CA2") == Refusal.DRAINING
    m.draining = False
    m.model = None
    assert m.refusal() == Refusal.NO_PROVIDER
    assert [r for r, _ in observer.refused] == [Refusal.OVERLOADED, Refusal.DRAINING]


async def test_start_call_refused_without_admission_opens_nothing() -> None:
    m, _, observer = manager(max_calls=1)
    assert m.reserve("CA1") is None
    with pytest.raises(CallRefused) as refused:
        await m.start_call("CA2", leg=None, transport="twilio")  # type: ignore[arg-type] - refused before use
    assert refused.value.reason == Refusal.AT_CAPACITY
    assert m.calls == {} and m.holds("CA1")
    m.draining = True
    with pytest.raises(CallRefused) as refused:
        await m.start_call("CA1", leg=None, transport="twilio")  # type: ignore[arg-type]
    assert refused.value.reason == Refusal.DRAINING
    assert not m.holds("CA1"), "a refused start gives its reservation back"
    assert observer.refused[-1] == (Refusal.DRAINING, "twilio")


def test_reservations_remember_their_transport() -> None:
    m, clock, _ = manager()
    assert m.reserve("CA1", "softphone") is None
    assert m.reserved_by("CA1") == "softphone"
    assert m.reserved_by("CA2") is None
    clock.now += 11
    assert m.reserved_by("CA1") is None, "an expired reservation is nobody's"
