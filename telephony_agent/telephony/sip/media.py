"""The RTP endpoint of one SIP call (asyncio shell) and the `PhoneLeg` the call bridge drives.

One UDP socket per call, from a port pool. Inbound: RTCP and malformed datagrams are counted and
dropped; speech goes through the jitter buffer, telephone-events through the DTMF receiver.
Symmetric RTP: we send to where the caller's RTP comes from (the SDP address is only the first
guess: NAT). Outbound: the pacer's absolute 20 ms clock on the process's one pacing grid
(`PacingTick`: a single timer sends every call's due packets in one pass). No RTP for `timeout_s`
ends the call through the signalling side.

`SipLeg` adapts the session to the bridge: it confirms no playout (the bridge's pacing clock
does), hands caller audio and keys to `LegEvents` in arrival order from one task, and asks the
dialog (`SipCallControl`) to hang up or transfer. The cores (rtp, jitter, dtmf, pacer) hold all
the logic; this module only moves bytes and arms timers.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import errno
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from telephony_agent.per_loop import PerLoop
from telephony_agent.wiretap import IN, LEG_PHONE, OUT, WIRETAP, Wiretap

from ..leg import AudioLaw, LegEvents, PhoneFormat
from ..loop_timer import LoopTimer
from .dtmf import DtmfReceiver
from .jitter import JitterBuffer
from .leg_control import SipCallControl
from .pacer import OutboundPacer, PacedFrame
from .pacing_grid import PacingGrid
from .rtp import RtpError, RtpPacketizer, is_rtcp, parse_rtp

__all__ = [
    "DEPARTURE_BUCKETS_MS",
    "PacingTick",
    "RtpPortPool",
    "RtpSession",
    "RtpStats",
    "SipLeg",
    "open_rtp",
    "parse_port_range",
]

log = logging.getLogger(__name__)

_PT_FOR_LAW = {AudioLaw.PCMU: 0, AudioLaw.PCMA: 8}
_RELATCH_AFTER_S = 2.0  # a new source may take over once the latched one is silent this long
_MAX_DATAGRAM = 2048
DEPARTURE_BUCKETS_MS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 50.0, 100.0)
"""Upper bounds (ms) of the histogram of |inter-departure interval - ptime| of outbound packets."""


def parse_port_range(spec: str) -> tuple[int, int]:
    """`"20000-20999"` -> (20000, 20999); raises ValueError naming the problem."""
    first_s, sep, last_s = spec.strip().partition("-")
    try:
        first, last = int(first_s), int(last_s if sep else first_s)
    except ValueError:
        raise ValueError(f"RTP port range {spec!r} is not FIRST-LAST (e.g. 20000-20999)") from None
    if not 1024 <= first <= last <= 65535:
        raise ValueError(f"RTP port range {spec!r} must be within 1024-65535, first <= last")
    if last - first < 1:
        raise ValueError(f"RTP port range {spec!r} needs at least two ports (RTP uses even ones)")
    return first, last


class RtpPortPool:
    """Even ports from [first, last] (RTP convention; the odd one above is left for RTCP)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        start = first + (first % 2)
        self._free: collections.deque[int] = collections.deque(range(start, last + 1, 2))
        self._used: set[int] = set()
        self.size = len(self._free)

    @classmethod
    def from_spec(cls, spec: str) -> RtpPortPool:
        return cls(*parse_port_range(spec))

    @property
    def in_use(self) -> int:
        return len(self._used)

    def acquire(self) -> int | None:
        """A free port (least recently used first), or None when every port is taken."""
        if not self._free:
            return None
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)


@dataclass(slots=True)
class RtpStats:
    """One call's RTP counters (the cores' own stats are beside them on the session)."""

    packets_in: int = 0
    bytes_in: int = 0
    rtcp: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    unexpected_pt: int = 0
    foreign_source: int = 0
    relatches: int = 0
    packets_out: int = 0
    send_errors: int = 0
    departure_ms: list[int] = field(default_factory=lambda: [0] * (len(DEPARTURE_BUCKETS_MS) + 1))
    """Counts per `DEPARTURE_BUCKETS_MS` bucket (last: above the largest) of |interval - ptime|."""
    departure_sum_ms: float = 0.0

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())


class PacingTick:
    """The asyncio shell of the process's `PacingGrid`: one `call_at` timer for every call's
    outbound packets (one per event loop; `for_loop` finds it). It holds its loop, the registry's
    key, so it leaves the registry when the last session holding it closes: an entry that
    outlived its calls would keep the loop alive for good."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, ptime: float = 0.02) -> None:
        self._loop = loop
        self.grid: PacingGrid[RtpSession] = PacingGrid(ptime=ptime)
        self._timer = LoopTimer(loop, self._on_timer)
        self._holders = 0  # open sessions

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> PacingTick:
        return PACING_TICKS.get(loop)

    def hold(self) -> None:
        """A session opened on this tick."""
        self._holders += 1

    def release(self) -> None:
        """A session on this tick closed; the last one takes the tick out of the registry."""
        self._holders -= 1
        if self._holders <= 0:
            PACING_TICKS.drop(self._loop, self)

    def slot(self) -> float:
        """The grid point now (anchor pacers here so their frames fall on the grid)."""
        return self.grid.slot_at(self._loop.time())

    def add(self, session: RtpSession) -> None:
        self.grid.add(session, session.pacer, self._loop.time())
        self._arm()

    def discard(self, session: RtpSession) -> None:
        self.grid.discard(session)
        if self.grid.get_timer() is None:
            self._timer.cancel()

    def _arm(self) -> None:
        deadline = self.grid.get_timer()
        if deadline is not None:
            self._timer.arm(deadline)

    def _on_timer(self, now: float) -> None:
        try:
            for session, frames in self.grid.handle_timer(now):
                try:
                    session.transmit(frames, now)
                except Exception:  # one call's bug must not stop every call's audio
                    session.log.exception("RTP send failed")
        finally:
            self._arm()


class AudioSlices:
    """Per event loop: how much caller audio the SIP legs hand their bridges in one pass of the
    loop. Callers' packets come in bursts (a media relay or sipp sends every call's packet in
    the same millisecond), and each costs the bridge up to ~0.2 ms (turn detection, the provider
    socket). Taken in one pass, a burst of 150 held the pacing tick, a timer that only runs
    between passes, for 15-30 ms, and every call's outbound RTP with it. Once a pass has spent
    `slice_s`, the legs after it wait for the next pass (after the timers); queued audio is never
    dropped or reordered, only handed over a few milliseconds later."""

    def __init__(self, slice_s: float = 0.002) -> None:  # holds no loop: the loop is the weak key
        self.slice_s = slice_s
        self._spent = 0.0  # in this pass
        self._scheduled = False  # `_new_pass` runs first in the next pass

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> AudioSlices:
        return _AUDIO_SLICES.get(loop)

    @property
    def full(self) -> bool:
        """This pass has spent its slice: `turn` would wait for the next."""
        return self._spent >= self.slice_s

    async def turn(self) -> None:
        """Return once this pass has room for another leg's audio (at once, unless a burst used it)."""
        while self._spent >= self.slice_s:
            await asyncio.sleep(0)  # the next pass, after the reset `spend` scheduled

    def spend(self, seconds: float) -> None:
        """What one delivery took."""
        self._spent += seconds
        if not self._scheduled:  # a callback scheduled now runs in the next pass, after its timers
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._new_pass)

    def _new_pass(self) -> None:
        self._spent, self._scheduled = 0.0, False


PACING_TICKS: PerLoop[PacingTick] = PerLoop(PacingTick)
_AUDIO_SLICES: PerLoop[AudioSlices] = PerLoop(lambda _loop: AudioSlices())


class _SessionState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP socket: receive, reorder, detect keys, pace out, watch for silence."""

    def __init__(
        self,
        fmt: PhoneFormat,
        te_pt: int | None,
        remote: tuple[str, int],
        timeout_s: float,
        *,
        pool: RtpPortPool | None = None,
        port: int = 0,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
        continuous: bool = True,
        metrics: Any | None = None,
    ) -> None:
        self.fmt = fmt
        self.te_pt = te_pt
        self.speech_pt = _PT_FOR_LAW[fmt.law]
        self.remote = remote
        self.timeout_s = timeout_s
        self.local_port = port
        self.log = log
        self.stats = RtpStats()
        self.jitter = JitterBuffer(silence=fmt.law.silence, sample_rate=fmt.sample_rate)
        self.dtmf = DtmfReceiver()
        self.pacer = OutboundPacer(
            frame_bytes=fmt.sample_rate // 50,  # we always send 20 ms
            sample_rate=fmt.sample_rate,
            silence=fmt.law.silence if continuous else None,
        )
        self.packetizer = RtpPacketizer(self.speech_pt)
        self.on_audio: Callable[[bytes], None] = lambda _payload: None
        self.on_dtmf: Callable[[str], None] = lambda _digit: None
        self.on_timeout: Callable[[], None] = lambda: None
        self._pool = pool
        self._transport: asyncio.DatagramTransport | None = None
        self._loop = asyncio.get_running_loop()
        self._latched: tuple[str, int] | None = None
        self._latched_at = 0.0  # last packet from the latched source
        self._last_rx = self._loop.time()
        self._last_tx: float | None = None
        self._tick = PacingTick.for_loop(self._loop)
        self._start_handle: asyncio.TimerHandle | None = None  # a talk spurt's first frame
        self._jitter_timer = LoopTimer(self._loop, self._on_jitter_timer)
        self._idle_timer = LoopTimer(self._loop, self._on_idle_timer)
        self._sending = False
        self._held: list[bytes] = []  # frames sent before start_sending()
        self._metrics = metrics  # telephony_agent.metrics.Metrics (duck-typed: no upward import)
        self._reported: dict[str, int] = {}
        self._departures_reported = [0] * len(self.stats.departure_ms)
        self._departure_sum_reported = 0.0
        self._flushed_at = self._loop.time()
        self.state = _SessionState.OPEN

    # -- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # asyncio's is no subclass
        self._tick = PacingTick.for_loop(self._loop)  # the registered one (a bound socket holds it)
        self._tick.hold()
        self._arm_idle(self._loop.time() + self.timeout_s)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.state is not _SessionState.OPEN:
            return
        try:
            self._receive(data, (addr[0], addr[1]), self._loop.time())
        except Exception:  # a bug here must not end the call or the loop: count and go on
            self.stats.malformed["internal"] = self.stats.malformed.get("internal", 0) + 1
            if self.stats.malformed["internal"] == 1:  # once: packets come 50 times a second
                self.log.exception("RTP packet handling failed")

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable and the like
        self.log.debug("RTP socket error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    # -- inbound

    def _receive(self, data: bytes, source: tuple[str, int], now: float) -> None:
        if len(data) > _MAX_DATAGRAM:
            self._malformed("oversized")
            return
        if is_rtcp(data):
            self.stats.rtcp += 1
            return
        try:
            packet = parse_rtp(data)
        except RtpError as exc:
            self._malformed(exc.kind.value)
            return
        pt = packet.payload_type
        if pt != self.speech_pt and pt != self.te_pt:
            self.stats.unexpected_pt += 1  # comfort noise, a codec we did not answer, sipp's filler
            return
        if not self._accept_source(source, now):
            return
        self.stats.packets_in += 1
        self.stats.bytes_in += len(data)
        self._last_rx = now
        if pt == self.speech_pt:
            for payload in self.jitter.push(packet, now):
                self.on_audio(payload)
            self._arm_jitter()
        else:
            for payload in self.jitter.skip(packet, now):  # PJSIP numbers events with the speech
                self.on_audio(payload)
            for digit in self.dtmf.receive(packet.ssrc, packet.timestamp, packet.payload):
                self.log.debug("a key pressed (RFC 4733)")  # never which: keys may be a PIN or a card number
                self.on_dtmf(digit)

    def _accept_source(self, source: tuple[str, int], now: float) -> bool:
        """Symmetric RTP: latch on the first source, let another take over only after silence."""
        if source == self._latched:
            self._latched_at = now
            return True
        if self._latched is not None and now - self._latched_at < _RELATCH_AFTER_S:
            self.stats.foreign_source += 1
            return False
        if self._latched is not None:
            self.stats.relatches += 1
        self._latched = source
        self._latched_at = now
        if source != self.remote:
            self.log.info("RTP latched to %s:%d (SDP said %s:%d)", *source, *self.remote)
            self.remote = source
        return True

    def _malformed(self, kind: str) -> None:
        self.stats.malformed[kind] = self.stats.malformed.get(kind, 0) + 1

    def _arm_jitter(self) -> None:
        deadline = self.jitter.get_timer()
        if deadline is None or self._jitter_timer.armed:
            return
        self._jitter_timer.arm(deadline)

    def _on_jitter_timer(self, now: float) -> None:
        if self.state is not _SessionState.OPEN:
            return
        for payload in self.jitter.handle_timer(now):
            self.on_audio(payload)
        self._arm_jitter()

    def _arm_idle(self, deadline: float) -> None:
        self._idle_timer.arm(deadline)

    def _on_idle_timer(self, now: float) -> None:
        if self.state is not _SessionState.OPEN:
            return
        deadline = self._last_rx + self.timeout_s
        if now < deadline:
            self._arm_idle(deadline)
            return
        self.log.warning("no RTP for %.0fs: ending the call", self.timeout_s)
        self.on_timeout()

    # -- outbound

    def start_sending(self) -> None:
        """Start the outbound clock (continuous mode sends silence until there is audio). Until
        then `send` only queues: nothing goes out before the call is answered."""
        if self._sending or self.state is not _SessionState.OPEN:
            return
        self._sending = True
        slot = self._tick.slot()
        self.pacer.start(slot)
        held, self._held = self._held, []
        if held:
            self.pacer.enqueue(held, slot)
        self._join_tick(slot)

    def send(self, frames: list[bytes]) -> None:
        if self.state is not _SessionState.OPEN:
            return
        if not self._sending:
            room = self.pacer.max_queued - len(self._held)
            self._held.extend(frames[: max(room, 0)])
            return
        slot = self._tick.slot()
        self.pacer.enqueue(frames, slot)
        if self not in self._tick.grid:
            self._join_tick(slot)

    def clear(self) -> int:
        """Barge-in: drop every queued frame; the next packet out is silence (or nothing, DTX)."""
        held, self._held = len(self._held), []
        return self.pacer.clear() + held

    def _join_tick(self, slot: float) -> None:
        """The pacer (re)started at grid point `slot`: its first frame goes on the next loop
        iteration, not at the next pass (a talk spurt starts at once, as with a timer of its own;
        and not from inside `send`, before packets already received, e.g. the one that latches
        the caller's address, are handled), the rest with every other call's."""
        if self.pacer.get_timer() is None:
            return
        self._tick.add(self)
        if self._start_handle is None:  # a timer, not call_soon: it runs after pending I/O
            self._start_handle = self._loop.call_at(self._loop.time(), self._send_due)

    def _send_due(self) -> None:
        self._start_handle = None
        if self.state is not _SessionState.OPEN:
            return
        now = self._loop.time()
        frames = self.pacer.handle_timer(self._tick.grid.slot_at(now))
        if frames:
            self.transmit(frames, now)

    def transmit(self, frames: list[PacedFrame], now: float) -> None:
        """Send frames the pacer released (called by the pacing tick)."""
        transport = self._transport
        if self.state is not _SessionState.OPEN or transport is None:
            return
        for frame in frames:
            data = self.packetizer.packet(frame.payload, marker=frame.marker, skipped_samples=frame.skipped_samples)
            try:
                transport.sendto(data, self.remote)
            except OSError:
                self.stats.send_errors += 1
                continue
            self.stats.packets_out += 1
            self._record_departure(now)
        if self._metrics is not None and now - self._flushed_at >= 1.0:
            self._flush_metrics(now)

    def _record_departure(self, now: float) -> None:
        if self._last_tx is not None:
            dev = abs((now - self._last_tx) - 0.02) * 1000
            self.stats.departure_sum_ms += dev
            buckets = self.stats.departure_ms
            for i, bound in enumerate(DEPARTURE_BUCKETS_MS):
                if dev <= bound:
                    buckets[i] += 1
                    break
            else:
                buckets[-1] += 1
        self._last_tx = now

    def _flush_metrics(self, now: float, *, final: bool = False) -> None:
        """Add what the counters gained since the last flush (cheaper than per-packet updates)."""
        m = self._metrics
        if m is None:
            return
        self._flushed_at = now
        current = {
            "in": self.stats.packets_in,
            "out": self.stats.packets_out,
            "lost": self.jitter.stats.lost,
            "late": self.jitter.stats.late + self.jitter.stats.duplicates,
            "dtmf": self.dtmf.stats.digits,
            **{f"malformed:{k}": v for k, v in self.stats.malformed.items()},
        }
        for key, value in current.items():
            gained = value - self._reported.get(key, 0)
            if gained <= 0:
                continue
            self._reported[key] = value
            if key in ("in", "out"):
                m.rtp_packets.labels(key).inc(gained)
            elif key == "lost":
                m.rtp_lost.inc(gained)
            elif key == "late":
                m.rtp_late.inc(gained)
            elif key == "dtmf":
                m.rtp_dtmf.inc(gained)
            else:
                m.rtp_malformed.labels(key.split(":", 1)[1]).inc(gained)
        departures = self.stats.departure_ms
        if sum(departures) > sum(self._departures_reported):
            m.add_rtp_departures(
                [a - b for a, b in zip(departures, self._departures_reported, strict=True)],
                self.stats.departure_sum_ms - self._departure_sum_reported,
            )
            self._departures_reported = list(departures)
            self._departure_sum_reported = self.stats.departure_sum_ms
        if final and self.jitter.stats.packets:
            m.rtp_jitter.observe(self.jitter.stats.jitter_ms)

    # -- life cycle

    def close(self) -> None:
        """Stop everything and give the port back. Idempotent."""
        if self.state is _SessionState.CLOSED:
            return
        self.state = _SessionState.CLOSED
        self._flush_metrics(self._loop.time(), final=True)
        self.pacer.stop()
        self._tick.discard(self)
        if self._transport is not None:  # it held the tick from connection_made
            self._tick.release()
        if self._start_handle is not None:
            self._start_handle.cancel()
            self._start_handle = None
        self._jitter_timer.cancel()
        self._idle_timer.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._pool is not None and self.local_port:
            self._pool.release(self.local_port)
            self._pool = None

    @property
    def closed(self) -> bool:
        return self.state is _SessionState.CLOSED

    def summary(self) -> dict[str, Any]:
        """Counters for the call's end-of-call log line and metrics."""
        j, d, p = self.jitter.stats, self.dtmf.stats, self.pacer.stats
        return {
            "packets_in": self.stats.packets_in,
            "packets_out": self.stats.packets_out,
            "lost": j.lost,
            "late": j.late,
            "reordered": j.reordered,
            "duplicates": j.duplicates,
            "ssrc_changes": j.ssrc_changes,
            "jitter_ms": round(j.jitter_ms, 2),
            "rtcp": self.stats.rtcp,
            "malformed": self.stats.malformed_total,
            "unexpected_pt": self.stats.unexpected_pt,
            "foreign_source": self.stats.foreign_source,
            "dtmf": d.digits,
            "cleared_frames": p.cleared,
            "pacer_resyncs": p.resyncs,
        }


async def open_rtp(
    host: str,
    pool: RtpPortPool,
    fmt: PhoneFormat,
    te_pt: int | None,
    remote: tuple[str, int],
    timeout_s: float,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
    *,
    continuous: bool = True,
    metrics: Any | None = None,
) -> RtpSession:
    """Bind a UDP socket for one call on a free pool port. Raises OSError when none is free."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(pool.size):
        port = pool.acquire()
        if port is None:
            break
        session = RtpSession(
            fmt, te_pt, remote, timeout_s, pool=pool, port=port, log=log, continuous=continuous, metrics=metrics
        )

        def factory(s: RtpSession = session) -> RtpSession:
            return s

        try:
            await loop.create_datagram_endpoint(factory, local_addr=(host, port), family=family)
        except OSError as exc:  # taken by another process: try the next port
            last_error = exc
            pool.release(port)
            # uvloop raises its own OSError ("could not bind", no errno) from the socket's
            if (exc.errno or getattr(exc.__cause__, "errno", None)) not in (errno.EADDRINUSE, errno.EACCES):
                raise
            continue
        return session
    raise OSError(errno.EADDRINUSE, f"no free RTP port in {pool.first}-{pool.last}") from last_error


class _LegState(enum.Enum):
    RUNNING = "running"
    ENDED = "ended"  # the caller hung up or the media timed out; on_hangup is (being) delivered
    CLOSED = "closed"


_AUDIO, _DTMF, _HANGUP = "audio", "dtmf", "hangup"
_CLEAR_RECORD = '{"event":"clear"}'  # recorded on the phone leg where queued agent audio was dropped


class SipLeg:
    """The `PhoneLeg` of a SIP call: an `RtpSession` plus the dialog's `SipCallControl`."""

    transport = "sip"
    confirms_playout = False

    def __init__(
        self,
        rtp: RtpSession,
        control: SipCallControl,
        *,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
        max_pending_audio: int = 250,
    ) -> None:
        self.rtp = rtp
        self.control = control
        self.log = log
        self._events: LegEvents | None = None
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._pending_audio = 0
        self._max_pending_audio = max_pending_audio
        self._waiter: asyncio.Future[None] | None = None  # `_deliver` waits on it for the next event
        self._task: asyncio.Task[None] | None = None
        self.dropped_audio = 0
        self.bridge_errors = 0
        self._hangup_sent = False
        self._caller_gone = False  # BYE/CANCEL from the caller, or the media timed out (BYE sent)
        self.state = _LegState.RUNNING
        self._tap: Wiretap | None = None
        rtp.on_audio = self._on_audio
        rtp.on_dtmf = self.deliver_dtmf
        rtp.on_timeout = self._on_media_timeout

    @property
    def format(self) -> PhoneFormat:
        return self.rtp.fmt

    def attach(self, events: LegEvents) -> None:
        """Start delivering caller audio, keys and hang-up to the bridge, and start sending."""
        if self._events is not None or self.state is _LegState.CLOSED:
            return
        self._events = events
        # Attached once the call is admitted (the manager has set this task's recorder, if any):
        # from here on the leg's audio is recorded, never before.
        self._tap = WIRETAP.get()
        self._task = asyncio.get_running_loop().create_task(self._deliver(), name="sip-leg-events")
        self.rtp.start_sending()

    # -- PhoneLeg

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        tap = self._tap
        if tap is not None:
            for frame in frames:
                tap.record(LEG_PHONE, OUT, frame)
        self.rtp.send(frames)

    def send_clear(self) -> None:
        if self._tap is not None:  # no wire message says so: the recording's marker, as Twilio's `clear`
            self._tap.record(LEG_PHONE, OUT, _CLEAR_RECORD)
        self.rtp.clear()

    async def hangup(self) -> None:
        """BYE (once), then close. Closing the media first (the endpoint may do that as soon as the
        bridge reports the call over) does not cancel the BYE; a caller who hung up gets none."""
        if self._caller_gone or self._hangup_sent:
            await self.close()
            return
        self._hangup_sent = True
        try:
            await self.control.hangup()
        finally:
            await self.close()

    async def transfer(self, target: str) -> None:
        await self.control.transfer(target)

    async def close(self) -> None:
        if self.state is _LegState.CLOSED:
            return
        self.state = _LegState.CLOSED
        self.rtp.close()
        self.log.info("RTP closed", extra={"rtp": self.rtp.summary()})
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- from the signalling side and the RTP session

    def deliver_dtmf(self, digit: str) -> None:
        """A key from RFC 4733 or SIP INFO."""
        if self.state is _LegState.RUNNING:
            self._push(_DTMF, digit)

    def deliver_hangup(self) -> None:
        """The caller hung up (BYE, CANCEL) or the dialog ended: tell the bridge once."""
        self._caller_gone = True
        if self.state is not _LegState.RUNNING:
            return
        self.state = _LegState.ENDED
        self._push(_HANGUP, None)

    def _on_audio(self, payload: bytes) -> None:
        if self.state is not _LegState.RUNNING:
            return
        if self._pending_audio >= self._max_pending_audio:  # the bridge stalled: drop, don't grow
            self.dropped_audio += 1
            return
        self._pending_audio += 1
        if self._tap is not None:
            self._tap.record(LEG_PHONE, IN, payload)
        self._push(_AUDIO, payload)

    def _on_media_timeout(self) -> None:
        self.control.on_media_timeout()
        self.deliver_hangup()

    def _push(self, kind: str, value: Any) -> None:
        self._queue.append((kind, value))
        waiter = self._waiter  # a bare future, not an asyncio.Event: this runs 50 times a second per call
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _deliver(self) -> None:
        events = self._events
        assert events is not None
        loop = asyncio.get_running_loop()
        slices = AudioSlices.for_loop(loop)
        while True:
            while not self._queue:
                self._waiter = waiter = loop.create_future()
                await waiter
            if self._queue[0][0] == _AUDIO and slices.full:
                await slices.turn()
            kind, value = self._queue.popleft()
            try:
                if kind == _AUDIO:
                    self._pending_audio -= 1
                    started = time.perf_counter()
                    await events.on_caller_audio(value)
                    slices.spend(time.perf_counter() - started)
                elif kind == _DTMF:
                    await events.on_dtmf(value)
                else:
                    await events.on_hangup()
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # the bridge's failure must not stop later events (hang-up)
                self.bridge_errors += 1
                if self.bridge_errors == 1:  # once: audio arrives 50 times a second
                    self.log.exception("bridge failed to take a %s event", kind)
