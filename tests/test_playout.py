"""Playout accounting: pacing by mark echoes, played position, clear semantics (sans-I/O)."""

from telephony_agent.telephony.playout import FRAME_BYTES, Playout

FRAME = b"\x00" * FRAME_BYTES


def frames(n: int) -> list[bytes]:
    return [FRAME] * n


def test_keeps_at_most_lead_outstanding() -> None:
    p = Playout(lead_ms=200, frames_per_mark=2)
    p.push("a", frames(50))
    sends = p.poll(0.0)
    assert sum(len(s.frames) for s in sends) == 10  # 200 ms
    assert p.outstanding_ms == 200 and p.queued_ms == 800
    assert p.poll(0.0) == []  # nothing more until marks come back
    p.on_mark(sends[0].mark, 0.04)
    again = p.poll(0.04)
    assert sum(len(s.frames) for s in again) == 2


def test_mark_echo_confirms_everything_before_it() -> None:
    p = Playout(lead_ms=200, frames_per_mark=2)
    p.push("a", frames(6))
    sends = p.poll(0.0)
    assert p.on_mark(sends[1].mark, 0.08)  # echoes are in order; this one implies the first
    assert p.played_ms("a", 0.08) == 80


def test_played_ms_interpolates_the_chunk_now_playing() -> None:
    p = Playout(lead_ms=200, frames_per_mark=2)
    p.push("a", frames(10))
    sends = p.poll(0.0)
    p.on_mark(sends[0].mark, 0.040)
    assert p.played_ms("a", 0.050) == 50
    assert p.played_ms("a", 0.200) == 80  # capped at the head chunk: the next mark is late


def test_clear_echoes_do_not_count_as_played() -> None:
    p = Playout(lead_ms=200, frames_per_mark=2)
    p.push("a", frames(20))
    sends = p.poll(0.0)
    p.on_mark(sends[0].mark, 0.04)
    heard = p.played_ms("a", 0.05)
    assert heard == 50
    dropped = p.clear()
    assert dropped == 200  # 10 frames were still local
    for s in sends[1:]:
        assert p.on_mark(s.mark, 0.06) is False
    assert p.played_ms("a", 0.07) == 40
    assert p.idle and p.stats.marks_cleared == len(sends) - 1


def test_items_do_not_share_chunks() -> None:
    p = Playout(lead_ms=200, frames_per_mark=4)
    p.push("a", frames(1))
    p.push("b", frames(3))
    sends = p.poll(0.0)
    assert [(s.item_id, len(s.frames)) for s in sends] == [("a", 1), ("b", 3)]
    assert p.current_item == "a"


def test_unknown_mark_is_counted_not_fatal() -> None:
    p = Playout()
    assert p.on_mark("nope", 0.0) is False
    assert p.stats.unknown_marks == 1


def test_watchdog_unsticks_a_silent_phone_leg() -> None:
    p = Playout(lead_ms=40, frames_per_mark=2, watchdog_s=1.0)
    p.push("a", frames(4))
    p.poll(0.0)
    assert not p.watchdog(0.5)
    assert p.watchdog(1.1)
    assert p.poll(1.1)  # refilled
    assert p.stats.watchdog_fired == 1
