"""The pacing clock (sans-I/O): real-time playout timeline, and the fallback from leg to clock."""

import pytest

from telephony_agent.telephony.pacing import Confirmer, PacingClock
from telephony_agent.telephony.playout import Playout


def test_chunks_sent_back_to_back_end_at_real_time() -> None:
    p = PacingClock(leg_confirms=False)
    assert p.confirmer is Confirmer.CLOCK and p.deadline() is None
    assert p.sent("a", 40, 10.0) == pytest.approx(10.04)
    assert p.sent("b", 40, 10.0) == pytest.approx(10.08)  # queued behind the first
    assert p.deadline() == pytest.approx(10.04)
    assert p.due(10.039) == []
    assert p.due(10.05) == [("a", pytest.approx(10.04))]
    assert p.due(10.2) == [("b", pytest.approx(10.08))]
    assert p.deadline() is None and p.pending == 0


def test_a_chunk_sent_to_an_idle_leg_starts_when_sent() -> None:
    p = PacingClock(leg_confirms=False)
    p.sent("a", 40, 0.0)
    p.due(1.0)
    assert p.sent("b", 20, 5.0) == pytest.approx(5.02)  # not 0.06: the leg sat idle in between


def test_clear_restarts_the_timeline() -> None:
    p = PacingClock(leg_confirms=False)
    for i in range(5):
        p.sent(f"c{i}", 40, 0.0)
    p.clear()
    assert p.deadline() is None and p.due(9.0) == []
    assert p.sent("d", 40, 0.05) == pytest.approx(0.09)


def test_a_confirming_leg_is_only_watched() -> None:
    p = PacingClock(leg_confirms=True, fallback_s=1.0)
    p.sent("a", 40, 0.0)
    p.sent("b", 40, 0.0)
    assert p.deadline() == pytest.approx(1.04)  # the head's end plus the grace
    assert p.due(0.5) == []  # ended, but the leg has a second to say so
    p.leg_confirmed("a")
    assert p.deadline() == pytest.approx(1.08)
    p.leg_confirmed("b")
    assert p.deadline() is None and p.due(50.0) == []
    assert p.confirmer is Confirmer.LEG and p.fell_back_at is None
    p.leg_confirmed("never-sent")  # ignored


def test_a_leg_that_stops_confirming_falls_back_to_the_clock_for_good() -> None:
    p = PacingClock(leg_confirms=True, fallback_s=1.0)
    for i in range(5):
        p.sent(f"c{i}", 40, 0.0)  # 0.04 .. 0.20
    assert p.due(1.0) == []
    due = p.due(1.04)
    assert p.confirmer is Confirmer.CLOCK and p.fell_back_at == 1.04
    # Every chunk that has ended is confirmed at the time it ended, not at the fallback time.
    assert [t for _, t in due] == pytest.approx([0.04, 0.08, 0.12, 0.16, 0.20])
    assert p.sent("d", 40, 1.04) == pytest.approx(1.08)
    assert p.deadline() == pytest.approx(1.08)  # no grace any more


def test_negative_grace_is_refused() -> None:
    with pytest.raises(ValueError):
        PacingClock(leg_confirms=True, fallback_s=-1)


def _simulate(seconds: float, *, echo: bool, lead_ms: int = 200) -> tuple[float, float, list[float]]:
    """Playout + pacing against a leg that plays at real time, echoing or not; returns (ms heard,
    when the last audio ended, gaps in playback longer than one frame)."""
    playout = Playout(lead_ms=lead_ms, frame_ms=20, chunk_ms=40)
    pacing = PacingClock(leg_confirms=True, fallback_s=1.0)
    playout.push("a", [b"\xff" * 160] * int(seconds * 50))
    leg: list[tuple[str, float, float]] = []  # (tag, start, end) as the leg plays it
    busy = 0.0
    heard_ms = 0.0
    gaps: list[float] = []
    now = 0.0
    for _ in range(100_000):
        for send in playout.poll(now):
            pacing.sent(send.tag, send.ms, now)
            start = max(now, busy)
            if leg and start - leg[-1][2] > 0.021:
                gaps.append(start - leg[-1][2])
            busy = start + send.ms / 1000
            leg.append((send.tag, start, busy))
            heard_ms += send.ms
        if playout.idle:
            break
        candidates = [t for t in (pacing.deadline(),) if t is not None]
        echoes = [(end, tag) for tag, _s, end in leg if end > now] if echo else []
        if echoes:
            candidates.append(min(echoes)[0])
        assert candidates
        now = max(now, min(candidates))
        if echo:
            for tag, _s, end in leg:
                if end <= now and playout.on_played(tag, end):
                    pacing.leg_confirmed(tag)
        for tag, ended in pacing.due(now):
            playout.on_played(tag, ended)
    return heard_ms, busy, gaps


def test_a_no_echo_leg_hears_everything_at_real_time_after_one_short_gap() -> None:
    heard_echo, end_echo, gaps_echo = _simulate(13.5, echo=True)
    heard, end, gaps = _simulate(13.5, echo=False)
    assert heard_echo == pytest.approx(13_500) and gaps_echo == []
    assert heard == heard_echo  # all of it, not 4 %
    assert end == pytest.approx(end_echo + 0.84, abs=0.05)  # one fallback gap of about a second
    assert len(gaps) == 1 and 0.7 < gaps[0] < 1.0
