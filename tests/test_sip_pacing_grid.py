"""The shared pacing grid: in memory on a virtual clock (many calls' pacers, one pass per 20 ms,
clear, stalls, DTX), then its asyncio shell with real RTP sessions over loopback."""

from __future__ import annotations

import asyncio
import random
import time

from telephony_agent.telephony.leg import PCMU_20MS
from telephony_agent.telephony.sip.media import PACING_TICKS, PacingTick, RtpPortPool, open_rtp
from telephony_agent.telephony.sip.pacer import OutboundPacer, PacedFrame, PacerState
from telephony_agent.telephony.sip.pacing_grid import PacingGrid
from telephony_agent.testing.ports import free_port_range

P = 0.02


def frame(i: int) -> bytes:
    return bytes([i % 256]) * 160


def run(
    grid: PacingGrid[int],
    until: float,
    late: float = 0.0,
    sent: dict[int, list[tuple[float, PacedFrame]]] | None = None,
) -> dict[int, list[tuple[float, PacedFrame]]]:
    """Drive the grid like the shell: one pass per deadline, woken `late` after it."""
    sent = {} if sent is None else sent
    for _ in range(100_000):
        deadline = grid.get_timer()
        if deadline is None or deadline > until:
            return sent
        now = deadline + late
        for key, frames in grid.handle_timer(now):
            sent.setdefault(key, []).extend((now, f) for f in frames)
    raise AssertionError("the grid never ran out of deadlines")


def test_slot_at_is_the_grid_point_at_or_before_now() -> None:
    grid: PacingGrid[int] = PacingGrid(ptime=P, origin=1.0)
    assert grid.slot_at(1.0) == 1.0
    assert abs(grid.slot_at(1.039) - 1.02) < 1e-9
    assert abs(grid.slot_at(1.04 - 1e-9) - 1.04) < 1e-9  # a hair early counts as on it
    assert grid.get_timer() is None  # nobody to send for: no timer


def test_one_pass_sends_one_frame_for_every_call_started_anywhere_on_the_clock() -> None:
    rng = random.Random(7)
    grid: PacingGrid[int] = PacingGrid(ptime=P)
    pacers = {}
    t0 = 1000.0
    for key in range(200):  # calls start at random moments, anchored on the grid
        start = grid.slot_at(t0 + P + rng.uniform(0, 1))  # after the first pass
        pacer = OutboundPacer()
        pacer.start(start)
        pacer.enqueue([frame(key)] * 40, start)
        pacers[key] = pacer
        grid.add(key, pacer, t0)
    sent = run(grid, until=t0 + 3.0, late=0.004)  # every pass 4 ms late
    assert grid.passes <= int(3.0 / P) + 2  # one timer for all calls, not one per call
    for key, out in sent.items():
        times = [t for t, _ in out]
        assert all(abs((b - a) - P) < 1e-6 for a, b in zip(times, times[1:], strict=False)), key
        audio = [f for _, f in out if not f.silence]
        assert len(audio) == 40 and audio[0].payload == frame(key)
    assert len(sent) == 200


def test_clear_takes_effect_on_the_next_pass_and_the_clock_keeps_running() -> None:
    grid: PacingGrid[str] = PacingGrid(ptime=P)
    a, b = OutboundPacer(), OutboundPacer()
    for p in (a, b):
        p.start(0.0)
        p.enqueue([frame(1)] * 100, 0.0)
    grid.add("a", a, 0.0)
    grid.add("b", b, 0.0)
    sent = run(grid, until=0.1)
    assert a.clear() == 100 - len(sent["a"]) and a.queued == 0  # every frame not sent yet, at once
    sent = run(grid, until=0.2, sent={})
    assert all(f.silence for _, f in sent["a"]) and len(sent["a"]) == 5  # silence, same clock
    assert not any(f.silence for _, f in sent["b"])  # the other call is untouched


def test_a_stall_is_caught_up_when_short_and_reanchored_on_the_grid_when_long() -> None:
    grid: PacingGrid[int] = PacingGrid(ptime=P)
    pacer = OutboundPacer()
    pacer.start(0.0)
    grid.add(1, pacer, 0.0)
    run(grid, until=0.1)
    out = grid.handle_timer(0.1 + 3 * P + 0.001)  # 60 ms late: the missed slots go out now
    assert len(out[0][1]) == 3 and pacer.stats.resyncs == 0  # slots 0.12, 0.14, 0.16
    out = grid.handle_timer(0.5 + 0.007)  # ~300 ms stall: one frame, the clock re-anchored
    assert len(out[0][1]) == 1 and pacer.stats.resyncs == 1
    assert out[0][1][0].marker and out[0][1][0].skipped_samples > 0  # the timestamp skips the gap
    assert abs(pacer.get_timer() - (0.5 + P)) < 1e-9  # back on the grid  # type: ignore[operator]


def test_dtx_calls_leave_the_pass_when_silent_and_come_back_with_audio() -> None:
    grid: PacingGrid[int] = PacingGrid(ptime=P)
    talker, quiet = OutboundPacer(silence=None), OutboundPacer(silence=None)
    talker.enqueue([frame(1)] * 3, 0.0)
    grid.add(1, talker, 0.0)
    grid.add(2, quiet, 0.0)  # nothing to say: never joins
    assert 2 not in grid and len(grid) == 1
    sent = run(grid, until=1.0)
    assert len(sent[1]) == 3 and talker.state is PacerState.IDLE
    assert len(grid) == 0 and grid.get_timer() is None  # silent calls cost no pass at all
    now = 1.013
    talker.enqueue([frame(2)] * 2, grid.slot_at(now))
    grid.add(1, talker, now)
    assert grid.get_timer() is not None and abs(grid.get_timer() - 1.02) < 1e-9  # type: ignore[operator]
    out = grid.handle_timer(now)  # the shell sends a talk spurt's first frame at once
    assert [f.marker for f in out[0][1]] == [True]
    sent = run(grid, until=2.0, sent={})
    assert len(sent[1]) == 1 and len(grid) == 0


def test_discard_removes_a_call_and_the_last_one_stops_the_timer() -> None:
    grid: PacingGrid[int] = PacingGrid(ptime=P)
    pacers = [OutboundPacer() for _ in range(3)]
    for key, p in enumerate(pacers):
        p.start(0.0)
        grid.add(key, p, 0.0)
    grid.discard(1)
    pacers[1].stop()
    sent = run(grid, until=0.1)
    assert set(sent) == {0, 2}
    grid.discard(0)
    grid.discard(2)
    assert grid.get_timer() is None




class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrivals: dict[int, list[tuple[float, bytes]]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.arrivals.setdefault(addr[1], []).append((time.monotonic(), data))


async def listening_sink() -> tuple[Sink, asyncio.DatagramTransport, tuple[str, int]]:
    """A loopback UDP socket that records what arrives, and its address."""
    sink = Sink()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: sink, local_addr=("127.0.0.1", 0))
    return sink, transport, transport.get_extra_info("sockname")[:2]


async def test_many_real_sessions_share_one_timer_and_a_clear_flushes_at_once() -> None:
    loop = asyncio.get_running_loop()
    sink, transport, remote = await listening_sink()
    pool = RtpPortPool(*free_port_range(40))
    sessions = [await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, remote, 30.0) for _ in range(20)]
    tick = PacingTick.for_loop(loop)
    try:
        for s in sessions:
            s.send([b"\x01" * 160] * 500)
            s.start_sending()
        assert len(tick.grid) == 20
        passes = tick.grid.passes
        await asyncio.sleep(1.0)
        ran = tick.grid.passes - passes
        assert 10 <= ran <= 60  # ~50 passes for all 20 calls, not ~1,000 timers
        cleared = sessions[0].clear()
        assert cleared > 400 and sessions[0].pacer.queued == 0
        await asyncio.sleep(0.3)
        for s in sessions:
            got = sink.arrivals[s.local_port]
            assert len(got) >= 10
            assert got[0][1][1] & 0x80  # the first packet marks the talk spurt
        last = sink.arrivals[sessions[0].local_port][-5:]
        assert all(d[12:] == b"\xff" * 160 for _, d in last)  # after the clear: silence, same clock
        assert all(d[12:] == b"\x01" * 160 for _, d in sink.arrivals[sessions[1].local_port][-5:])
    finally:
        for s in sessions:
            s.close()
        transport.close()
    assert len(tick.grid) == 0 and tick.grid.get_timer() is None  # closed calls leave the pass


def test_the_tick_leaves_the_registry_with_its_last_session_so_the_loop_can_go() -> None:
    """The tick holds its loop, the registry's key: registered for good, it kept every event
    loop that ever carried a SIP call alive (one per test, here). It leaves when the last
    session on it closes, and comes back with the next one."""
    import gc
    import weakref

    async def calls() -> None:
        loop = asyncio.get_running_loop()
        sink, transport, remote = await listening_sink()
        pool = RtpPortPool(*free_port_range(8))
        try:
            for _ in range(2):  # the second round: a new tick for new calls
                sessions = [await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, remote, 30.0) for _ in range(2)]
                tick = PacingTick.for_loop(loop)
                for s in sessions:
                    s.send([b"\x01" * 160] * 5)
                    s.start_sending()
                await asyncio.sleep(0.1)
                assert all(s.local_port in sink.arrivals for s in sessions), "nothing was paced"
                sessions[0].close()
                assert PacingTick.for_loop(loop) is tick  # a call is still up on it
                sessions[1].close()
                assert loop not in PACING_TICKS
        finally:
            transport.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(calls())
    finally:
        loop.close()
    ref = weakref.ref(loop)
    del loop
    gc.collect()
    assert ref() is None, gc.get_referrers(ref())
