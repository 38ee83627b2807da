"""Playout accounting: lead limit, confirmations, played position, clear semantics (sans-I/O)."""

import pytest

from telephony_agent.telephony.playout import Playout

FRAME = b"\x00" * 160


def frames(n: int, size: int = 160) -> list[bytes]:
    return [b"\x00" * size] * n


def test_keeps_at_most_lead_outstanding() -> None:
    p = Playout(lead_ms=200, chunk_ms=40)
    p.push("a", frames(50))
    sends = p.poll(0.0)
    assert sum(len(s.frames) for s in sends) == 10  # 200 ms
    assert [s.ms for s in sends] == [40] * 5
    assert p.outstanding_ms == 200 and p.queued_ms == 800
    assert p.poll(0.0) == []  # nothing more until something is confirmed
    p.on_played(sends[0].tag, 0.04)
    again = p.poll(0.04)
    assert sum(len(s.frames) for s in again) == 2


def test_confirmation_covers_everything_before_it() -> None:
    p = Playout(lead_ms=200, chunk_ms=40)
    p.push("a", frames(6))
    sends = p.poll(0.0)
    assert p.on_played(sends[1].tag, 0.08)  # confirmations are in order; this one implies the first
    assert p.played_ms("a", 0.08) == 80
    assert p.outstanding_ms == 40


def test_played_ms_interpolates_the_chunk_now_playing() -> None:
    p = Playout(lead_ms=200, chunk_ms=40)
    p.push("a", frames(10))
    sends = p.poll(0.0)
    p.on_played(sends[0].tag, 0.040)
    assert p.played_ms("a", 0.050) == 50
    assert p.played_ms("a", 0.200) == 80  # capped at the head chunk: the next confirmation is late


def test_clear_confirmations_do_not_count_as_played() -> None:
    p = Playout(lead_ms=200, chunk_ms=40)
    p.push("a", frames(20))
    sends = p.poll(0.0)
    p.on_played(sends[0].tag, 0.04)
    assert p.played_ms("a", 0.05) == 50
    assert p.clear() == 200  # 10 frames were still local
    for s in sends[1:]:
        assert p.on_played(s.tag, 0.06) is False
    assert p.played_ms("a", 0.07) == 40
    assert p.idle and p.stats.confirmations_cleared == len(sends) - 1


def test_forget_cleared_for_legs_that_never_confirm() -> None:
    p = Playout(lead_ms=200, chunk_ms=40)
    p.push("a", frames(10))
    sends = p.poll(0.0)
    p.clear()
    p.forget_cleared()
    assert p.on_played(sends[0].tag, 0.1) is False
    assert p.stats.unknown_confirmations == 1 and p.stats.confirmations_cleared == 0


def test_items_do_not_share_chunks() -> None:
    p = Playout(lead_ms=200, chunk_ms=80)
    p.push("a", frames(1))
    p.push("b", frames(3))
    sends = p.poll(0.0)
    assert [(s.item_id, len(s.frames)) for s in sends] == [("a", 1), ("b", 3)]
    assert p.current_item == "a"


def test_unknown_confirmation_is_counted_not_fatal() -> None:
    p = Playout()
    assert p.on_played("nope", 0.0) is False
    assert p.stats.unknown_confirmations == 1


@pytest.mark.parametrize("ptime", [10, 20, 30])
def test_other_packet_times(ptime: int) -> None:
    """SIP legs negotiate 10-30 ms packets: budget and positions are in ms, not frames."""
    p = Playout(lead_ms=200, frame_ms=ptime, chunk_ms=40)
    p.push("a", frames(100, 8 * ptime))
    sends = p.poll(0.0)
    assert p.outstanding_ms == 200 // ptime * ptime
    assert all(s.ms == len(s.frames) * ptime for s in sends)
    assert max(len(s.frames) for s in sends) == max(1, 40 // ptime)
    p.on_played(sends[0].tag, sends[0].ms / 1000)
    assert p.played_ms("a", sends[0].ms / 1000 + 0.005) == sends[0].ms + 5


def test_bad_frame_time_is_refused() -> None:
    with pytest.raises(ValueError):
        Playout(frame_ms=0)


def test_pause_takes_back_the_unheard_audio_and_resume_sends_it_again() -> None:
    from telephony_agent.telephony.playout import Playout

    p = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
    frames = [bytes([i]) * 160 for i in range(20)]
    p.push("item", frames)
    sent = p.poll(0.0)
    assert sum(len(s.frames) for s in sent) == 10  # 200 ms at the leg
    assert p.on_played(sent[0].tag, 0.04)  # frames 0-1 played
    taken = p.pause(0.07)  # frame 2 played (0.04 + 0.03 s: one whole frame), frames 3.. not
    assert taken == 7 * 20
    assert p.poll(0.5) == []  # paused: nothing goes out
    assert p.played_ms("item", 0.5) == 60
    assert not p.on_played(sent[1].tag, 0.08)  # the leg confirming cleared chunks is not playback
    p.resume()
    again = p.poll(0.6)
    assert [f for s in again for f in s.frames] == frames[3:13]
    p.clear()
    assert not p.paused


def test_a_pause_of_a_chunk_sent_to_a_dry_leg_repeats_a_frame_rather_than_skip_one() -> None:
    """A leg whose queue ran dry plays a chunk when it has it and its next frame is due (Twilio,
    the load benchmark's callers): up to a frame after the send. Counted from the send, a pause 30 ms
    on took frame 2 as heard where the leg may only have begun it: the resume skipped it."""
    from telephony_agent.telephony.playout import Playout

    for pause_at, back in ((0.13, [2, 3]), (0.15, [3])):
        p = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
        frames = [bytes([i]) * 160 for i in range(4)]
        p.push("item", frames[:2])
        first = p.poll(0.0)
        assert p.on_played(first[0].tag, 0.04)  # frames 0-1 played; the leg runs dry
        p.push("item", frames[2:])
        p.poll(0.1)  # frames 2-3 sent to the dry leg at 0.1
        assert p.pause(pause_at) == 20 * len(back)
        p.resume()
        assert [f for s in p.poll(0.2) for f in s.frames] == [frames[i] for i in back]
    # a chunk that follows a confirmed one starts at the confirmation: no margin (the test above)


def test_a_leg_a_round_trip_away_is_counted_where_a_clear_sent_now_stops_it() -> None:
    """A carrier 40 ms each way: a chunk sent to a leg that had played everything comes back
    confirmed 80 ms (and up to a frame) after its audio's length, and a `clear` stops the audio
    40 ms after it is sent. So the chunk after a confirmed one has played a round trip longer
    than the confirmation says. Counted by the confirmations alone, a pause took back (and the
    resume repeated) a round trip of audio the caller had heard."""
    from telephony_agent.telephony.playout import MAX_LEG_RTT_S, Playout

    p = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
    frames = [bytes([i]) * 160 for i in range(14)]
    assert p.leg_rtt_ms is None
    p.push("greeting", frames[:2])
    (greeting,) = p.poll(0.0)  # to a leg that had played nothing
    assert p.on_played(greeting.tag, 0.04 + 0.08 + 0.005)  # 80 ms round trip, 5 ms to the leg's frame
    assert p.leg_rtt_ms == pytest.approx(65.0)  # a frame under what it showed: never more than it is
    p.push("answer", frames[2:])
    sent = p.poll(1.0)  # 200 ms ahead: chunks of frames 2-3, 4-5, 6-7, 8-9, 10-11
    assert p.on_played(sent[0].tag, 1.125)  # frames 2-3 confirmed
    # Chunk 4-5 began when 2-3 ended, 65 ms before that confirmation: 1.06. At 1.13, 70 ms on:
    # 4-5 heard, then frame 6, and 10 ms of frame 7 (which goes again: repeated, not skipped).
    assert p.played_ms("answer", 1.13) == 40 + 70
    assert p.pause(1.13) == 20 * 5  # frames 7-11 back (by the confirmations alone: 4-11)
    p.resume()
    assert [f for s in p.poll(1.2) for f in s.frames][:2] == frames[7:9]

    # A confirmation that is late may be a leg that stopped: nothing counted past where it was due.
    q = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
    q.push("greeting", frames[:2])
    (greeting,) = q.poll(0.0)
    assert q.on_played(greeting.tag, 0.14)  # rtt 80 ms
    q.push("answer", frames[2:])
    sent = q.poll(1.0)
    assert q.on_played(sent[0].tag, 1.14)
    assert q.played_ms("answer", 9.0) == 40 + 40 + 80  # the next chunk's and a round trip's worth

    # The least seen: a slow confirmation later does not lengthen it; a stall is bounded.
    assert q.leg_rtt_ms == pytest.approx(80.0)
    q.clear()
    q.push("more", frames[:2])
    (late,) = q.poll(20.0)
    assert q.on_played(late.tag, 25.0)
    assert q.leg_rtt_ms == pytest.approx(80.0)
    r = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
    r.push("a", frames[:2])
    (first,) = r.poll(0.0)
    assert r.on_played(first.tag, 10.0) and r.leg_rtt_ms == pytest.approx(MAX_LEG_RTT_S * 1000)

    # A leg confirmed on time (the pacing clock, or loopback within a frame): no round trip.
    c = Playout(lead_ms=200, frame_ms=20, chunk_ms=40)
    c.push("a", frames[:2])
    (first,) = c.poll(0.0)
    assert c.on_played(first.tag, 0.05) and c.leg_rtt_ms == 0.0
