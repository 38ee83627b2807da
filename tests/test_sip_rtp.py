"""RTP media cores in memory: packets, the jitter buffer, RFC 4733 and INFO DTMF, the pacer.

DTMF packets come from the pcaps Debian's sip-tester ships (an independent encoder) when they
are installed; the rest are built here byte by byte.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from telephony_agent.telephony.sip.dtmf import (
    DtmfReceiver,
    parse_info_dtmf,
    parse_telephone_event,
    telephone_event_payload,
)
from telephony_agent.telephony.sip.jitter import JitterBuffer
from telephony_agent.telephony.sip.pacer import OutboundPacer, PacerState
from telephony_agent.telephony.sip.rtp import (
    RtpError,
    RtpErrorKind,
    RtpPacket,
    RtpPacketizer,
    build_rtp,
    is_rtcp,
    parse_rtp,
    seq_delta,
)

SIPP_PCAPS = Path("/usr/share/sip-tester")


# -- RTP packets


def test_parse_plain_packet() -> None:
    data = build_rtp(0, 65535, 0xFFFFFFF0, 0xDEADBEEF, b"\x01" * 160, marker=True)
    p = parse_rtp(data)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (0, 65535, 0xFFFFFFF0, 0xDEADBEEF, True)
    assert p.payload == b"\x01" * 160 and p.csrcs == ()


def test_parse_skips_csrcs_extension_and_padding() -> None:
    payload = bytes(range(160))
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 8, 7, 1234, 42)
    csrcs = struct.pack("!II", 11, 22)
    extension = struct.pack("!HH", 0xBEDE, 2) + b"\xaa" * 8
    padding = b"\x00\x00\x00\x04"
    p = parse_rtp(header + csrcs + extension + payload + padding)
    assert p.payload == payload
    assert p.csrcs == (11, 22) and p.payload_type == 8 and not p.marker


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x80\x00", RtpErrorKind.TOO_SHORT),
        (b"\x40" + b"\x00" * 20, RtpErrorKind.BAD_VERSION),
        (b"\x8f" + b"\x00" * 20, RtpErrorKind.BAD_CSRC),
        (b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x09", RtpErrorKind.BAD_EXTENSION),
        (b"\x90" + b"\x00" * 11 + b"\xbe", RtpErrorKind.BAD_EXTENSION),
        (b"\xa0" + b"\x00" * 11 + b"\x01\x02\x00", RtpErrorKind.BAD_PADDING),
        (b"\xa0" + b"\x00" * 11 + b"\x01\x02\x09", RtpErrorKind.BAD_PADDING),
    ],
)
def test_malformed_packets_name_their_fault(data: bytes, kind: RtpErrorKind) -> None:
    with pytest.raises(RtpError) as err:
        parse_rtp(data)
    assert err.value.kind is kind


def test_random_bytes_never_raise_anything_but_rtp_error() -> None:
    rng = random.Random(7)
    good = build_rtp(0, 1, 2, 3, b"\xff" * 160)
    for _ in range(20000):
        n = rng.randrange(0, 200)
        data = bytes(rng.getrandbits(8) for _ in range(n)) if rng.random() < 0.5 else _mutate(rng, good)
        try:
            parse_rtp(data)
        except RtpError:
            pass


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data[: rng.randrange(0, len(data) + 1)])
    for _ in range(rng.randrange(1, 4)):
        if b:
            b[rng.randrange(len(b))] = rng.getrandbits(8)
    return bytes(b)


def test_rtcp_is_recognised() -> None:
    sender_report = struct.pack("!BBH", 0x80, 200, 6) + b"\x00" * 24
    receiver_report = struct.pack("!BBH", 0x81, 201, 7) + b"\x00" * 28
    assert is_rtcp(sender_report) and is_rtcp(receiver_report)
    assert not is_rtcp(build_rtp(0, 1, 2, 3, b"\xff" * 160))
    assert not is_rtcp(build_rtp(0, 1, 2, 3, b"\xff" * 160, marker=True))  # PT 0 + marker = 128
    assert not is_rtcp(b"\x80")


def test_seq_delta_wraps() -> None:
    assert seq_delta(0, 65535) == 1
    assert seq_delta(65535, 0) == -1
    assert seq_delta(100, 90) == 10


def test_packetizer_wraps_and_marks_first_packet() -> None:
    pk = RtpPacketizer(8, ssrc=5, sequence=65534, timestamp=(1 << 32) - 160)
    packets = [parse_rtp(pk.packet(b"\xd5" * 160)) for _ in range(3)]
    assert [p.sequence for p in packets] == [65534, 65535, 0]
    assert [p.timestamp for p in packets] == [(1 << 32) - 160, 0, 160]
    assert [p.marker for p in packets] == [True, False, False]
    assert {p.payload_type for p in packets} == {8} and {p.ssrc for p in packets} == {5}
    later = parse_rtp(pk.packet(b"\xd5" * 160, marker=True, skipped_samples=800))
    assert later.marker and later.timestamp == 320 + 800 and later.sequence == 1


def test_packetizer_origins_are_random() -> None:
    a, b = RtpPacketizer(0), RtpPacketizer(0)
    assert (a.ssrc, a.next_sequence, a.next_timestamp) != (b.ssrc, b.next_sequence, b.next_timestamp)


# -- jitter buffer


def _pkt(seq: int, ts: int | None = None, ssrc: int = 1, n: int = 160, fill: int | None = None) -> RtpPacket:
    ts = seq * n if ts is None else ts
    return RtpPacket(0, seq & 0xFFFF, ts % (1 << 32), ssrc, bytes([seq % 256 if fill is None else fill]) * n)


def test_in_order_packets_pass_straight_through() -> None:
    jb = JitterBuffer()
    out = [jb.push(_pkt(s), s * 0.02) for s in range(10)]
    assert all(len(o) == 1 for o in out)
    assert jb.get_timer() is None and jb.stats.lost == 0


@pytest.mark.parametrize("seed", range(5))
def test_the_in_order_shortcut_plays_what_holding_every_packet_plays(seed: int) -> None:
    """Runs in order, reordering, duplicates, losses, renumbering and a second SSRC, with timers."""
    rng = random.Random(seed)
    fast, slow = JitterBuffer(), JitterBuffer(in_order_shortcut=False)  # the second holds every packet
    seq, now, out_fast, out_slow = 0, 0.0, [], []
    for _ in range(600):
        now += 0.02
        r = rng.random()
        if r < 0.7:
            seqs = [seq]
        elif r < 0.8:
            seqs = [seq + 1, seq]  # swapped
            seq += 1
        elif r < 0.87:
            seqs = [seq, seq]  # duplicated
        elif r < 0.93:
            seqs = []  # lost
        elif r < 0.95:
            seq += rng.choice([5000, 40000])  # the sender renumbers
            seqs = [seq]
        else:
            seqs = [seq - rng.randint(1, 4)]  # late
        seq += 1
        ssrc = 7 if rng.random() < 0.97 else 8
        for s in seqs:
            packet = _pkt(s % 65536, ssrc=ssrc)
            out_fast += fast.push(packet, now)
            out_slow += slow.push(packet, now)
        out_fast += fast.handle_timer(now)
        out_slow += slow.handle_timer(now)
        assert fast.get_timer() == slow.get_timer()
    assert out_fast == out_slow
    assert fast.stats == slow.stats


def test_reordered_packets_come_out_in_order() -> None:
    jb = JitterBuffer()
    played: list[bytes] = []
    for s in [0, 1, 3, 2, 4, 6, 5, 7]:
        played += jb.push(_pkt(s), s * 0.02)
    assert played == [_pkt(s).payload for s in range(8)]
    assert jb.stats.reordered == 2 and jb.stats.lost == 0


def test_a_lost_packet_becomes_silence_of_its_length_after_the_hold() -> None:
    jb = JitterBuffer(max_delay=0.06)
    played = jb.push(_pkt(0), 0.0) + jb.push(_pkt(2), 0.04)
    assert played == [_pkt(0).payload]
    timer = jb.get_timer()
    assert timer == pytest.approx(0.10)
    assert jb.handle_timer(0.09) == []
    played += jb.handle_timer(0.10)
    assert played == [_pkt(0).payload, b"\xff" * 160, _pkt(2).payload]
    assert jb.stats.lost == 1 and jb.stats.concealed_bytes == 160
    assert jb.push(_pkt(1), 0.11) == [] and jb.stats.late == 1  # too late: already concealed


def test_too_many_held_packets_release_without_waiting() -> None:
    jb = JitterBuffer(max_packets=3, max_delay=10.0, silence=b"\xd5")
    played = jb.push(_pkt(0), 0)
    for s in range(2, 6):
        played += jb.push(_pkt(s), 0)
    assert played == [_pkt(0).payload, b"\xd5" * 160] + [_pkt(s).payload for s in range(2, 6)]


def test_sequence_wrap_is_not_loss() -> None:
    jb = JitterBuffer()
    played: list[bytes] = []
    for i, s in enumerate(range(65530, 65542)):
        played += jb.push(_pkt(s, ts=i * 160), i * 0.02)
    assert len(played) == 12 and jb.stats.lost == 0 and jb.stats.resyncs == 0


def test_duplicates_are_dropped() -> None:
    jb = JitterBuffer()
    played = jb.push(_pkt(0), 0) + jb.push(_pkt(0), 0) + jb.push(_pkt(2), 0) + jb.push(_pkt(2), 0)
    assert played == [_pkt(0).payload] and jb.stats.duplicates == 2


def test_ssrc_change_keeps_the_stream_and_releases_everything() -> None:
    """A second SSRC (a new stream, or a trunk switching sources) neither resets nor loses audio."""
    jb = JitterBuffer()
    played: list[bytes] = []
    for s in range(5):
        played += jb.push(_pkt(s, ssrc=1, fill=1), s * 0.02)
    for s in range(5):  # another SSRC, unrelated numbering
        played += jb.push(_pkt(40000 + s, ts=9999 + s * 160, ssrc=2, fill=2), 0.1 + s * 0.02)
    for s in range(5, 8):  # and back
        played += jb.push(_pkt(s, ssrc=1, fill=1), 0.2 + s * 0.02)
    assert played == [b"\x01" * 160] * 5 + [b"\x02" * 160] * 5 + [b"\x01" * 160] * 3
    assert jb.stats.ssrc_changes == 2 and jb.stats.lost == 0 and jb.stats.resyncs == 0


def test_events_numbered_with_the_speech_are_not_losses() -> None:
    """PJSIP sends RFC 4733 events on the speech SSRC, taking sequence numbers from it."""
    jb = JitterBuffer()
    played: list[bytes] = []
    for s in range(5):
        played += jb.push(_pkt(s), s * 0.02)
    for s in (5, 6, 7, 8, 8, 8):  # progress packets, then the end packet three times
        event = RtpPacket(120, s, 800, 1, b"\x05\x8a\x03\x20")
        played += jb.skip(event, 0.1 + s * 0.02)
    for s in range(9, 12):
        played += jb.push(_pkt(s), 0.3 + s * 0.02)
    played += jb.handle_timer(10.0)
    assert played == [_pkt(s).payload for s in (*range(5), *range(9, 12))]
    assert jb.stats.lost == 0 and jb.stats.concealed_bytes == 0 and jb.stats.ssrc_changes == 0
    # events on an SSRC of their own (sipp's pcaps) touch nothing
    assert jb.skip(RtpPacket(101, 77, 5, 99, b"\x01\x8a\x00\xa0"), 1.0) == []
    assert jb.stats.ssrc_changes == 0 and jb.get_timer() is None


def test_sender_restart_resyncs_without_a_flood_of_silence() -> None:
    jb = JitterBuffer()
    played = jb.push(_pkt(10), 0) + jb.push(_pkt(30000, ts=5), 0.02) + jb.push(_pkt(30001, ts=165), 0.04)
    assert played == [_pkt(10).payload, _pkt(30000).payload, _pkt(30001).payload]
    assert jb.stats.resyncs == 1


@pytest.mark.parametrize("ptime_ms", [10, 20, 30])
def test_packet_times_10_to_30_ms(ptime_ms: int) -> None:
    n = 8 * ptime_ms
    jb = JitterBuffer()
    played: list[bytes] = []
    for s in [0, 2, 1, 3, 5, 6, 7]:
        played += jb.push(_pkt(s, n=n), s * ptime_ms / 1000)
    played += jb.handle_timer(1.0)
    assert b"".join(played) == b"".join(
        [_pkt(s, n=n).payload for s in range(4)] + [b"\xff" * n] + [_pkt(s, n=n).payload for s in (5, 6, 7)]
    )


# -- RFC 4733 DTMF


def _pcap_rtp(path: Path) -> list[bytes]:
    """The UDP payloads of a classic pcap (Ethernet or Linux cooked), no parsing library."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_len = {1: 14, 113: 16, 0: 4}[linktype]
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        ip = frame[link_len:]
        ihl = (ip[0] & 0x0F) * 4
        out.append(ip[ihl + 8 :])
    return out


@pytest.mark.skipif(not SIPP_PCAPS.exists(), reason="sip-tester's DTMF pcaps not installed (make system-deps)")
@pytest.mark.parametrize(("name", "digit"), [("1", "1"), ("9", "9"), ("pound", "#"), ("star", "*")])
def test_sipp_pcaps_give_each_digit_once(name: str, digit: str) -> None:
    rx = DtmfReceiver()
    keys: list[str] = []
    packets = [parse_rtp(d) for d in _pcap_rtp(SIPP_PCAPS / f"dtmf_2833_{name}.pcap")]
    assert len(packets) > 3 and {p.payload_type for p in packets} == {101}
    for p in packets:
        keys += rx.receive(p.ssrc, p.timestamp, p.payload)
    assert keys == [digit]


def _key_press(rx: DtmfReceiver, digit: str, ts: int, *, start: bool = True, ends: int = 3, ssrc: int = 9) -> list[str]:
    keys: list[str] = []
    if start:
        for k in range(1, 6):
            keys += rx.receive(ssrc, ts, telephone_event_payload(digit, end=False, duration=160 * k))
    for _ in range(ends):
        keys += rx.receive(ssrc, ts, telephone_event_payload(digit, end=True, duration=800))
    return keys


def test_digit_reported_once_on_first_end_packet() -> None:
    rx = DtmfReceiver()
    assert _key_press(rx, "5", 1000, ends=0) == []
    assert rx.receive(9, 1000, telephone_event_payload("5", end=True, duration=800)) == ["5"]
    assert rx.receive(9, 1000, telephone_event_payload("5", end=True, duration=800)) == []


def test_same_digit_twice_is_two_keys() -> None:
    rx = DtmfReceiver()
    assert _key_press(rx, "7", 1000) + _key_press(rx, "7", 3000) == ["7", "7"]


def test_missing_start_and_missing_end_are_tolerated() -> None:
    rx = DtmfReceiver()
    assert _key_press(rx, "#", 1000, start=False) == ["#"]
    assert _key_press(rx, "*", 2000, ends=0) == []  # every end packet lost ...
    assert _key_press(rx, "0", 3000) == ["*", "0"]  # ... reported when the next key starts
    assert rx.stats.without_end == 1 and rx.stats.digits == 3


def test_keys_on_two_ssrcs_are_separate() -> None:
    rx = DtmfReceiver()
    assert _key_press(rx, "1", 500, ssrc=1) + _key_press(rx, "1", 500, ssrc=2) == ["1", "1"]


def test_bad_telephone_events_are_counted() -> None:
    rx = DtmfReceiver()
    assert rx.receive(1, 1, b"\x01") == []
    assert rx.receive(1, 2, struct.pack("!BBH", 16, 0x80, 800)) == []  # flash: not a key
    assert rx.stats.bad == 2
    assert parse_telephone_event(b"\x0b\x8a\x03\x20").digit == "#"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ctype", "body", "digit"),
    [
        ("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n", "5"),
        ("application/dtmf-relay", "signal= #\nduration=100", "#"),
        ("Application/DTMF-Relay; charset=x", b"Signal=*\r\nDuration=250", "*"),
        ("application/dtmf-relay", "Signal=10\r\n", "*"),
        ("application/dtmf-relay", "Signal=11\r\n", "#"),
        ("application/dtmf-relay", "Signal=a\r\n", "A"),
        ("application/dtmf", "9", "9"),
        ("application/dtmf-relay", "Duration=160", None),
        ("application/dtmf-relay", "Signal=55", None),
        ("application/dtmf-relay", "Signal=X", None),
        ("application/sdp", "Signal=5", None),
        ("application/dtmf-relay", b"\xff\xfe Signal=\x00", None),
    ],
)
def test_info_bodies(ctype: str, body: str | bytes, digit: str | None) -> None:
    assert parse_info_dtmf(ctype, body) == digit


# -- pacer


def _run(p: OutboundPacer, until: float, *, late: float = 0.0) -> list[tuple[float, bytes, bool, int]]:
    """Drive the pacer like the shell does, waking `late` seconds after each deadline."""
    sent = []
    while (t := p.get_timer()) is not None and t <= until:
        now = t + late
        sent += [(now, f.payload, f.marker, f.skipped_samples) for f in p.handle_timer(now)]
    return sent


def test_pacer_sends_on_an_absolute_clock_even_when_woken_late() -> None:
    p = OutboundPacer(silence=None)
    p.enqueue([bytes([i]) * 160 for i in range(50)], now=100.0)
    sent = []
    rng = random.Random(1)
    while (t := p.get_timer()) is not None:
        now = t + rng.uniform(0, 0.015)  # every wake-up up to 15 ms late
        sent += [(now, f) for f in p.handle_timer(now)]
    assert [f.payload[0] for _, f in sent] == list(range(50))
    # the deadlines never drift: frame n is due at start + n * 20 ms
    assert p.stats.frames == 50 and p.state is PacerState.IDLE
    assert sent[-1][0] - 100.0 == pytest.approx(49 * 0.02, abs=0.016)
    assert [f.marker for _, f in sent] == [True] + [False] * 49


def test_pacer_catches_up_a_short_stall_and_resyncs_a_long_one() -> None:
    p = OutboundPacer(silence=None, resync_after=0.2)
    p.enqueue([b"\x01" * 160] * 40, now=0.0)
    assert len(p.handle_timer(0.0)) == 1
    assert len(p.handle_timer(0.1)) == 5  # 80 ms late: the missed slots go out at once
    frames = p.handle_timer(0.5)  # 400 ms stall: no burst, the clock re-anchors
    assert len(frames) == 1 and frames[0].marker and frames[0].skipped_samples == round(0.38 * 8000)
    assert p.get_timer() == pytest.approx(0.52) and p.stats.resyncs == 1


def test_pacer_dtx_marks_each_talk_spurt_and_skips_the_timestamp() -> None:
    p = OutboundPacer(silence=None)
    p.enqueue([b"\x01" * 160] * 2, now=0.0)
    first = _run(p, 1.0)
    assert p.get_timer() is None
    p.enqueue([b"\x02" * 160] * 2, now=1.0)
    second = _run(p, 2.0)
    assert [m for _, _, m, _ in first + second] == [True, False, True, False]
    assert second[0][3] == round((1.0 - 0.02 - 0.02) * 8000)


def test_pacer_fills_silence_and_clear_flushes_at_once() -> None:
    p = OutboundPacer(silence=b"\xff")
    p.start(0.0)
    sent = _run(p, 0.05)
    assert [s[1] for s in sent] == [b"\xff" * 160] * 3
    p.enqueue([b"\x01" * 160] * 100, now=0.05)
    sent = _run(p, 0.11)
    assert [s[1][0] for s in sent] == [1, 1, 1]
    assert p.clear() == 97 and p.queued == 0
    sent = _run(p, 0.15)
    assert [s[1] for s in sent] == [b"\xff" * 160] * 2  # silence right after the clear, no gap
    assert not any(m for _, _, m, _ in sent) and p.stats.cleared == 97


def test_pacer_pads_short_frames_cuts_long_ones_and_bounds_the_queue() -> None:
    p = OutboundPacer(silence=b"\xd5", max_queued=4)
    p.enqueue([b"\x01" * 100, b"\x02" * 320], now=0.0)
    assert p.queued == 3
    sent = _run(p, 0.04)
    assert sent[0][1] == b"\x01" * 100 + b"\xd5" * 60
    p.enqueue([b"\x03" * 160] * 10, now=0.06)
    assert p.queued == 4 and p.stats.overflow == 6
    p.stop()
    assert p.get_timer() is None and p.handle_timer(1.0) == []
