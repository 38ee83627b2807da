"""The RTP endpoint and `SipLeg` over loopback UDP: a plain socket plays the caller's phone.

Caller audio is eSpeak NG speech in G.711. The peer here is deliberately dumb (it writes RTP
headers by hand, with `struct`), so it checks our parser and packetizer against the RFC rather
than against themselves. Timing checks have wide margins: the machine is shared and busy.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
import struct
import time
from typing import Any, cast

import pytest

from telephony_agent.telephony.leg import PCMA_20MS, PCMU_20MS, PhoneFormat
from telephony_agent.telephony.sip.media import (
    DEPARTURE_BUCKETS_MS,
    RtpPortPool,
    SipLeg,
    open_rtp,
    parse_port_range,
)
from telephony_agent.testing.ports import free_port_range
from telephony_agent.testing.speech import speech_ulaw
from telephony_codecs import pcm16_to_alaw, ulaw_to_pcm16

SPEECH = "Hello, I would like to check the status of my order, please."


class Events:
    """What the bridge would see (LegEvents)."""

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.digits: list[str] = []
        self.hangups = 0
        self.changed = asyncio.Event()

    async def on_caller_audio(self, payload: bytes) -> None:
        self.audio.append(payload)
        self.changed.set()

    async def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        self.changed.set()

    def on_played(self, tag: str) -> None:  # pragma: no cover - RTP legs never confirm
        raise AssertionError("a SIP leg confirms no playout")

    async def on_hangup(self) -> None:
        self.hangups += 1
        self.changed.set()

    async def wait(self, cond: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for the leg")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                pass


class Control:
    """The signalling side as the leg sees it (SipCallControl)."""

    def __init__(self) -> None:
        self.hangups = 0
        self.transfers: list[str] = []
        self.timeouts = 0

    async def hangup(self) -> None:
        self.hangups += 1

    async def transfer(self, target: str) -> None:
        self.transfers.append(target)

    def on_media_timeout(self) -> None:
        self.timeouts += 1


class Phone(asyncio.DatagramProtocol):
    """The caller's RTP socket: sends hand-built packets, records what arrives (with times)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((time.monotonic(), data))
        self.arrived.set()

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    def headers(self) -> list[tuple[int, int, int, int, int]]:
        """(marker, pt, seq, ts, ssrc) of everything received."""
        out = []
        for _, d in self.received:
            b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", d)
            assert b0 == 0x80
            out.append((b1 >> 7, b1 & 0x7F, seq, ts, ssrc))
        return out

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(self.received)} of {n} packets arrived"
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                pass


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload




async def call(fmt: PhoneFormat = PCMU_20MS, te_pt: int | None = 101, timeout_s: float = 30.0, **kw: Any) -> tuple[Phone, SipLeg, Events, Control, RtpPortPool]:
    loop = asyncio.get_running_loop()
    phone = Phone()
    await loop.create_datagram_endpoint(lambda: phone, local_addr=("127.0.0.1", 0))
    pool = RtpPortPool(*free_port_range())
    # The SDP names a port nobody listens on: symmetric RTP must answer the real source instead.
    session = await open_rtp("127.0.0.1", pool, fmt, te_pt, ("127.0.0.1", 9), timeout_s, **kw)
    events, control = Events(), Control()
    leg = SipLeg(session, control)
    leg.attach(events)
    return phone, leg, events, control, pool


async def stop(phone: Phone, leg: SipLeg) -> None:
    await leg.close()
    assert phone.transport is not None
    phone.transport.close()


def frames_of(data: bytes, n: int = 160) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data) - len(data) % n, n)]


async def test_caller_speech_reaches_the_bridge_in_order_despite_reordering() -> None:
    phone, leg, events, _, _ = await call()
    speech = frames_of(speech_ulaw(SPEECH))
    assert len(speech) > 100
    order = list(range(len(speech)))
    for i in range(5, len(order) - 1, 7):  # swap neighbours every 7 packets
        order[i], order[i + 1] = order[i + 1], order[i]
    for k, i in enumerate(order):
        phone.send(rtp(0, 60000 + i, 1000 + 160 * i, 0x1234, speech[i], marker=i == 0), leg.rtp.local_port)
        if k % 4 == 3:
            await asyncio.sleep(0.005)
    await events.wait(lambda: sum(map(len, events.audio)) >= 160 * len(speech))
    assert b"".join(events.audio) == b"".join(speech)  # wraps 65535 -> 0 on the way
    s = leg.rtp.summary()
    assert s["lost"] == 0 and s["reordered"] > 10 and s["packets_in"] == len(speech)
    await stop(phone, leg)


async def test_we_answer_where_the_rtp_comes_from_paced_at_20ms() -> None:
    phone, leg, _, _, _ = await call()
    # Before the caller's first packet we can only use the SDP address: nothing reaches the phone.
    await asyncio.sleep(0.1)
    assert phone.received == []
    phone.send(rtp(0, 1, 0, 7, b"\xff" * 160), leg.rtp.local_port)
    # The agent speaks once the caller's packet is in: on a busy machine the kernel may hand the
    # datagram over a moment after `sendto` returns, and what went out before then went to the
    # SDP's dead port (in a real call, the SDP's address still reaches the phone).
    deadline = time.monotonic() + 5.0
    while leg.rtp.remote != phone.address:
        assert time.monotonic() < deadline, "the caller's first packet never latched"
        await asyncio.sleep(0.005)
    agent = frames_of(speech_ulaw("This is the agent speaking."))[:60]
    leg.send_audio(agent, "item-1")
    await phone.wait_for(70)
    heads = phone.headers()
    payloads = [d[12:] for _, d in phone.received]
    start = payloads.index(agent[0])
    assert payloads[start : start + 60] == agent
    assert all(p == b"\xff" * 160 for p in payloads[:start])  # silence before, none lost
    seqs = [h[2] for h in heads]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
    ts = [h[3] for h in heads]
    assert all((b - a) % (1 << 32) == 160 for a, b in itertools.pairwise(ts))
    assert {h[1] for h in heads} == {0} and len({h[4] for h in heads}) == 1
    times = [t for t, _ in phone.received[start : start + 60]]
    span = times[-1] - times[0]
    assert 59 * 0.02 * 0.8 < span < 59 * 0.02 * 2.5  # real time, not a burst (a busy machine may stall it)
    await stop(phone, leg)


async def test_clear_flushes_queued_audio_at_once() -> None:
    phone, leg, _, _, _ = await call()
    phone.send(rtp(0, 1, 0, 7, b"\xff" * 160), leg.rtp.local_port)
    leg.send_audio([b"\x11" * 160] * 500, "long")  # 10 s of agent audio
    await phone.wait_for(10)
    leg.send_clear()
    n = len(phone.received)
    await phone.wait_for(n + 10)
    after = [(t, d[12:]) for t, d in phone.received[n:]]
    first_silence = next(i for i, (_, p) in enumerate(after) if p == b"\xff" * 160)
    assert first_silence <= 3  # at most a frame or two already on their way: counted, not timed
    assert all(p == b"\xff" * 160 for _, p in after[3:])
    assert leg.rtp.pacer.queued == 0 and leg.rtp.summary()["cleared_frames"] > 400
    await stop(phone, leg)


async def test_rfc4733_digits_on_another_ssrc_do_not_disturb_speech() -> None:
    phone, leg, events, _, _ = await call(te_pt=96)
    speech = frames_of(speech_ulaw(SPEECH))[:120]
    port = leg.rtp.local_port
    digits = iter("5#")
    dtmf_seq = 100
    for i, frame in enumerate(speech):
        phone.send(rtp(0, 4000 + i, 160 * i, 0xAAAA, frame), port)
        if i in (30, 80):  # a key press: 4 progress packets, 3 end packets, PT 96, own SSRC
            d = "0123456789*#".index(next(digits))
            ts = 50_000 + i * 160
            for k in range(1, 5):
                phone.send(rtp(96, dtmf_seq, ts, 0xBBBB, struct.pack("!BBH", d, 10, 160 * k), marker=k == 1), port)
                dtmf_seq += 1
            for _ in range(3):
                phone.send(rtp(96, dtmf_seq, ts, 0xBBBB, struct.pack("!BBH", d, 0x80 | 10, 800)), port)
            dtmf_seq += 1
            phone.send(rtp(97, 1, 1, 0xBBBB, b"\x00" * 4), port)  # sipp's filler PT: ignored
        if i % 4 == 3:
            await asyncio.sleep(0.005)
    await events.wait(lambda: len(events.digits) == 2 and sum(map(len, events.audio)) >= 160 * len(speech))
    assert events.digits == ["5", "#"]
    assert b"".join(events.audio) == b"".join(speech)
    s = leg.rtp.summary()
    assert s["lost"] == 0 and s["dtmf"] == 2 and s["unexpected_pt"] == 2
    await stop(phone, leg)


async def test_info_digits_and_hangup_reach_the_bridge_once() -> None:
    phone, leg, events, control, _ = await call()
    leg.deliver_dtmf("7")
    leg.deliver_hangup()
    leg.deliver_hangup()
    leg.deliver_dtmf("8")  # after the hang-up: dropped
    await events.wait(lambda: events.hangups == 1)
    await asyncio.sleep(0.05)
    assert events.digits == ["7"] and events.hangups == 1
    await leg.transfer("sip:desk@example.com")
    await leg.hangup()
    # the caller already hung up: no BYE from our side
    assert control.transfers == ["sip:desk@example.com"] and control.hangups == 0 and leg.rtp.closed
    await stop(phone, leg)


async def test_hangup_asks_the_dialog_and_returns_the_port() -> None:
    phone, leg, _, control, pool = await call()
    port = leg.rtp.local_port
    assert pool.in_use == 1
    await leg.hangup()
    assert control.hangups == 1 and pool.in_use == 0 and leg.rtp.closed
    await leg.hangup()
    assert control.hangups == 1
    # the port is really free again
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    s.close()
    await stop(phone, leg)


async def test_garbage_and_rtcp_are_counted_and_the_call_goes_on() -> None:
    phone, leg, events, _, _ = await call()
    port = leg.rtp.local_port
    rng = random.Random(3)
    speech = frames_of(speech_ulaw("One two three four five."))[:60]
    for i, frame in enumerate(speech):
        phone.send(rtp(0, i, 160 * i, 0x42, frame), port)
        for _ in range(5):
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
            if junk[:1] and junk[0] >> 6 == 2:
                junk = b"\x00" + junk[1:]  # keep the junk from being valid RTP by chance
            phone.send(junk, port)
        phone.send(struct.pack("!BBH", 0x81, 201, 7) + b"\x00" * 28, port)  # RTCP receiver report
        phone.send(b"\x80\x00", port)
        if i % 4 == 3:  # let the leg drain its socket: a busy machine must not overflow the buffer
            deadline = time.monotonic() + 5.0
            while leg.rtp.stats.rtcp < i + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
    await events.wait(lambda: sum(map(len, events.audio)) >= 160 * len(speech))
    assert b"".join(events.audio) == b"".join(speech)
    s = leg.rtp.summary()
    assert s["rtcp"] == 60 and s["malformed"] >= 60 and s["lost"] == 0
    await stop(phone, leg)


async def test_a_second_source_cannot_hijack_a_live_stream() -> None:
    phone, leg, events, _, _ = await call()
    loop = asyncio.get_running_loop()
    intruder = Phone()
    await loop.create_datagram_endpoint(lambda: intruder, local_addr=("127.0.0.1", 0))
    port = leg.rtp.local_port
    for i in range(10):
        phone.send(rtp(0, i, 160 * i, 1, b"\x01" * 160), port)
        intruder.send(rtp(0, 500 + i, 0, 2, b"\x02" * 160), port)
        await asyncio.sleep(0.01)
    await events.wait(lambda: len(events.audio) >= 10)
    await asyncio.sleep(0.1)
    assert set(b"".join(events.audio)) == {1}
    assert leg.rtp.stats.foreign_source == 10 and leg.rtp.remote == phone.address
    assert intruder.received == []
    assert intruder.transport is not None
    intruder.transport.close()
    await stop(phone, leg)


async def test_pcma_leg_takes_pt8_and_ignores_pt0() -> None:
    phone, leg, events, _, _ = await call(fmt=PCMA_20MS)
    alaw = frames_of(pcm16_to_alaw(ulaw_to_pcm16(speech_ulaw("Bonjour."))))[:30]
    for i, frame in enumerate(alaw):
        phone.send(rtp(8, i, 160 * i, 3, frame), leg.rtp.local_port)
        phone.send(rtp(0, i, 160 * i, 3, b"\xff" * 160), leg.rtp.local_port)
    await events.wait(lambda: len(events.audio) >= 30)
    assert b"".join(events.audio) == b"".join(alaw)
    await phone.wait_for(3)
    assert {h[1] for h in phone.headers()} == {8}
    assert {d[12:] for _, d in phone.received} == {b"\xd5" * 160}  # A-law silence
    await stop(phone, leg)


async def test_rtp_inactivity_ends_the_call_through_the_dialog() -> None:
    phone, leg, events, control, _ = await call(timeout_s=0.5)
    for i in range(10):
        phone.send(rtp(0, i, 160 * i, 1, b"\x01" * 160), leg.rtp.local_port)
        await asyncio.sleep(0.02)
    stopped = time.monotonic()
    await events.wait(lambda: events.hangups == 1, timeout=5)
    assert control.timeouts == 1 and time.monotonic() - stopped >= 0.45
    await stop(phone, leg)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_port_pool_skips_taken_ports_and_runs_out_cleanly(loop: str) -> None:
    """On both loops: uvloop raises its own bind error, without errno (found by `make bench-sip`,
    where a port of the range was sipp's own and the call got 503 instead of the next port)."""
    run = asyncio.run if loop == "asyncio" else pytest.importorskip("uvloop").run
    run(_skips_taken_ports())


async def _skips_taken_ports() -> None:
    first, last = free_port_range(4)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", first))  # another process holds the first even port
    pool = RtpPortPool(first, last)
    assert pool.size == 2
    try:
        a = await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, ("127.0.0.1", 9), 30.0)
        assert a.local_port == first + 2
        with pytest.raises(OSError):
            await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, ("127.0.0.1", 9), 30.0)
        a.close()
        assert pool.in_use == 0
    finally:
        blocker.close()


def test_port_range_setting() -> None:
    assert parse_port_range("20000-20999") == (20000, 20999)
    for bad in ("20000", "abc-def", "100-200", "30000-20000", "20000-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


async def test_dtx_mode_sends_only_audio_with_a_marker_per_talk_spurt() -> None:
    phone, leg, _, _, _ = await call(continuous=False)
    phone.send(rtp(0, 1, 0, 7, b"\xff" * 160), leg.rtp.local_port)
    leg.send_audio([b"\x01" * 160] * 3, "a")
    await phone.wait_for(3)
    await asyncio.sleep(0.2)
    leg.send_audio([b"\x02" * 160] * 3, "b")
    await phone.wait_for(6)
    heads = phone.headers()
    assert len(phone.received) == 6
    assert [h[0] for h in heads] == [1, 0, 0, 1, 0, 0]
    assert (heads[3][3] - heads[2][3]) % (1 << 32) > 160 * 5  # the timestamp skipped the pause
    await stop(phone, leg)



async def test_rtp_metrics_count_packets_loss_dtmf_and_departures() -> None:
    from telephony_agent.metrics import Metrics

    metrics = Metrics()
    phone, leg, events, _, _ = await call(metrics=metrics)
    port = leg.rtp.local_port
    for i in [0, 1, 2, 4, 5, 6]:  # 3 never comes
        phone.send(rtp(0, i, 160 * i, 1, b"\x01" * 160), port)
    for _ in range(3):
        phone.send(rtp(101, 50, 9999, 2, struct.pack("!BBH", 4, 0x80 | 10, 800)), port)
    phone.send(b"\x00" * 20, port)
    await events.wait(lambda: len(events.digits) == 1)
    await phone.wait_for(65)  # 1.3 s of (silence) packets out: a flush of the counters while sending, then the last
    await leg.close()
    text = metrics.render().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agent_rtp_") and not line.startswith("#")
    }
    assert values['agent_rtp_packets_total{direction="in"}'] == 9
    assert values['agent_rtp_packets_total{direction="out"}'] >= 10
    assert values["agent_rtp_lost_total"] == 1 and values["agent_rtp_dtmf_total"] == 1
    assert values['agent_rtp_malformed_total{kind="bad_version"}'] == 1
    assert values["agent_rtp_departure_deviation_ms_count"] >= 9
    # the departures, added in bulk about once a second and at the end: every bucket as counted
    counts = leg.rtp.stats.departure_ms
    assert values["agent_rtp_departure_deviation_ms_count"] == sum(counts)
    assert values["agent_rtp_departure_deviation_ms_sum"] == pytest.approx(leg.rtp.stats.departure_sum_ms)
    for i, bound in enumerate(DEPARTURE_BUCKETS_MS):
        assert values[f'agent_rtp_departure_deviation_ms_bucket{{le="{float(bound)}"}}'] == sum(counts[: i + 1])
    assert values["agent_rtp_jitter_ms_count"] == 1
    assert phone.transport is not None
    phone.transport.close()


async def test_audio_sent_before_attach_waits_for_the_answer() -> None:
    """The bridge may queue the greeting while the call still rings: none of it leaks early."""
    loop = asyncio.get_running_loop()
    phone = Phone()
    await loop.create_datagram_endpoint(lambda: phone, local_addr=("127.0.0.1", 0))
    pool = RtpPortPool(*free_port_range())
    session = await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, phone.address, 30.0)
    leg = SipLeg(session, Control())
    greeting = [bytes([i]) * 160 for i in range(1, 21)]
    leg.send_audio(greeting, "greeting")
    await asyncio.sleep(0.2)
    assert phone.received == []  # ringing: nothing sent
    leg.attach(Events())  # answered
    await phone.wait_for(20)
    assert [d[12:] for _, d in phone.received[:20]] == greeting
    await stop(phone, leg)


async def test_hangup_after_the_media_was_closed_still_says_bye() -> None:
    """The endpoint may close the leg as soon as the bridge reports the call over, before the
    bridge's own `hangup()` runs: the BYE must still go out, once."""
    phone, leg, _, control, _ = await call()
    await leg.close()
    await leg.hangup()
    await leg.hangup()
    assert control.hangups == 1
    await stop(phone, leg)


async def test_no_bye_once_the_caller_hung_up_even_after_close() -> None:
    phone, leg, events, control, _ = await call()
    leg.deliver_hangup()
    await events.wait(lambda: events.hangups == 1)
    await leg.close()
    await leg.hangup()
    assert control.hangups == 0
    await stop(phone, leg)


class SlowEvents(Events):
    """A bridge whose turn detection and provider socket take `cost_s` of CPU per frame."""

    def __init__(self, cost_s: float) -> None:
        super().__init__()
        self.cost_s = cost_s

    async def on_caller_audio(self, payload: bytes) -> None:
        end = time.perf_counter() + self.cost_s
        while time.perf_counter() < end:
            pass
        await super().on_caller_audio(payload)


async def slow_legs(events: list[SlowEvents]) -> list[tuple[Phone, SipLeg, SlowEvents]]:
    """A caller's phone and a SIP leg for each of `events`, on one RTP port pool with room for
    the sockets other tests open meanwhile."""
    loop = asyncio.get_running_loop()
    pool = RtpPortPool(*free_port_range(4 * len(events)))
    legs = []
    for bridge in events:
        phone = Phone()
        await loop.create_datagram_endpoint(lambda phone=phone: phone, local_addr=("127.0.0.1", 0))  # type: ignore[misc]
        session = await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, phone.address, 30.0)
        leg = SipLeg(session, Control())
        leg.attach(bridge)
        legs.append((phone, leg, bridge))
    return legs


async def test_a_burst_of_every_calls_packet_does_not_hold_the_timers() -> None:
    """40 callers' packets arrive in the same millisecond, every 20 ms (a media relay, sipp),
    and each costs the bridge 0.4 ms: 16 ms of work per burst. Taken in one pass of the loop it
    held every timer (the pacing tick that sends every call's RTP) that long; handed over a
    2 ms slice per pass, timers run between slices. Nothing is dropped or reordered.

    Counted, not timed (the machine may be busy): a probe timer due at once re-arms itself, so
    it runs once per pass, and the deliveries between two of its runs are one pass's."""
    loop = asyncio.get_running_loop()
    delivered = 0

    class Counted(SlowEvents):
        async def on_caller_audio(self, payload: bytes) -> None:
            nonlocal delivered
            delivered += 1
            await super().on_caller_audio(payload)

    legs = await slow_legs([Counted(0.0004) for _ in range(40)])
    per_pass: list[int] = []
    seen = 0

    def probe() -> None:
        nonlocal seen
        per_pass.append(delivered - seen)
        seen = delivered
        if running:
            loop.call_at(loop.time(), probe)

    bursts = 30
    running = True
    try:
        loop.call_at(loop.time(), probe)
        for seq in range(bursts):
            for phone, leg, _ in legs:
                phone.send(rtp(0, seq, seq * 160, 7, bytes([seq % 200 + 1]) * 160), leg.rtp.local_port)
            await asyncio.sleep(0.02)
        for _, _, events in legs:
            await events.wait(lambda events=events: len(events.audio) == bursts)  # type: ignore[misc]
    finally:
        running = False
        for phone, leg, _ in legs:
            await stop(phone, leg)
    for _, _, events in legs:  # every frame, in order
        assert [a[0] for a in events.audio] == [seq % 200 + 1 for seq in range(bursts)]
    assert max(per_pass) <= 10, f"up to {max(per_pass)} deliveries (0.4 ms each) in one pass of the loop"


async def test_legs_that_close_or_hang_up_while_waiting_for_a_slice_leave_the_others_whole() -> None:
    """Mid-burst, half the callers hang up (BYE) or have their leg closed while their audio waits
    for a later pass: no error, the hang-ups still reach their bridges, and every other caller's
    audio arrives whole and in order."""
    calls = 20
    legs = await slow_legs([SlowEvents(0.0005) for _ in range(calls)])
    bursts = 10
    try:
        for seq in range(bursts):
            for phone, leg, _ in legs:
                phone.send(rtp(0, seq, seq * 160, 7, bytes([seq + 1]) * 160), leg.rtp.local_port)
            if seq == 4:
                await asyncio.sleep(0.003)  # the burst is being handed over, a slice at a time
                for i, (_, leg, _) in enumerate(legs[calls // 2 :]):  # the later ones wait for a slice
                    if i % 2:
                        leg.deliver_hangup()
                    else:
                        await leg.close()
            await asyncio.sleep(0.02)
        for _, _, events in legs[: calls // 2]:
            await events.wait(lambda events=events: len(events.audio) == bursts)  # type: ignore[misc]
        for i, (_, _, events) in enumerate(legs[calls // 2 :]):
            if i % 2:
                await events.wait(lambda events=events: events.hangups == 1)  # type: ignore[misc]
    finally:
        for phone, leg, _ in legs:
            await stop(phone, leg)
    for _, leg, events in legs[: calls // 2]:
        assert [a[0] for a in events.audio] == list(range(1, bursts + 1))
        assert leg.bridge_errors == 0
    for _, leg, events in legs[calls // 2 :]:
        assert len(events.audio) <= 5 and leg.bridge_errors == 0  # nothing after the hang-up
