"""Inbound speech reordering: a small jitter buffer per SSRC, sans-I/O.

UDP reorders and drops. The buffer hands the caller's audio on in sequence-number order, holding
a packet that arrived ahead of a gap for at most `max_delay` (or `max_packets` held) before giving
up on the missing ones. A lost packet becomes silence of the same duration (from the RTP
timestamps, bounded), so the bridge's voice detection and the recording keep real time. Late and
duplicate packets are counted and dropped.

A new SSRC never resets anything: each SSRC has its own sequence state (a trunk may switch
streams mid-call, and DTMF commonly arrives on another SSRC), kept for the few most recent SSRCs.
Packet time is whatever the peer sends (10-30 ms is common); G.711 is one byte a sample.
Every method takes `now` (seconds, any monotonic origin); `get_timer()` says when to call
`handle_timer(now)` next.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .rtp import RtpPacket, seq_delta

__all__ = ["JitterBuffer", "JitterStats"]

_TS_MOD = 1 << 32
_MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump larger than this is a new sequence, not a loss
_MAX_MISORDER = 100


@dataclass(slots=True)
class JitterStats:
    """Counters for metrics and the call summary."""

    packets: int = 0
    lost: int = 0
    late: int = 0
    duplicates: int = 0
    reordered: int = 0
    resyncs: int = 0
    ssrc_changes: int = 0
    concealed_bytes: int = 0
    jitter_ms: float = 0.0  # RFC 3550 A.8 interarrival jitter of the current SSRC


@dataclass(slots=True)
class _Source:
    expected: int  # next sequence number to release
    next_ts: int  # timestamp the next released packet should carry
    last_len: int
    held: dict[int, tuple[RtpPacket, float]]  # sequence -> (packet, arrival)
    transit: float | None = None


class JitterBuffer:
    """Reorders one call's speech packets; `push`/`handle_timer` return payloads to play, in order."""

    def __init__(
        self,
        *,
        silence: bytes = b"\xff",
        sample_rate: int = 8000,
        max_delay: float = 0.06,
        max_packets: int = 5,
        max_conceal_ms: int = 200,
        max_sources: int = 4,
        in_order_shortcut: bool = True,
    ) -> None:
        """`in_order_shortcut=False` holds and releases every packet, even one that arrives in
        order with nothing waiting: slower, the same output (the tests compare the two)."""
        self._silence = silence[:1] or b"\xff"
        self._shortcut = in_order_shortcut
        self._rate = sample_rate
        self._max_delay = max_delay
        self._max_packets = max_packets
        self._max_conceal = sample_rate * max_conceal_ms // 1000
        self._max_sources = max_sources
        self._sources: collections.OrderedDict[int, _Source] = collections.OrderedDict()
        self._current: int | None = None
        self.stats = JitterStats()

    def push(self, packet: RtpPacket, now: float) -> list[bytes]:
        """Take one speech packet; return the payloads now ready, in order (maybe none)."""
        src = self._arrival(packet, now)
        if packet.sequence == src.expected and not src.held and self._shortcut:  # in order, nothing waiting: most packets
            return self._emit(src, packet)
        return self._place(src, packet, now)

    def _arrival(self, packet: RtpPacket, now: float) -> _Source:
        """Count a speech packet and its jitter; its source (new, or the most recent again)."""
        self.stats.packets += 1
        src = self._sources.get(packet.ssrc)
        if packet.ssrc != self._current:
            if self._current is not None:
                self.stats.ssrc_changes += 1
            self._current = packet.ssrc
        if src is None:
            src = self._new_source(packet)
        else:
            self._sources.move_to_end(packet.ssrc)
        self._update_jitter(src, packet, now)
        return src

    def skip(self, packet: RtpPacket, now: float) -> list[bytes]:
        """A packet of the speech SSRC that carries no speech (an RFC 4733 event sharing its
        sequence numbers, as PJSIP sends them): its number is used, not lost. Packets of an SSRC
        with no speech yet (DTMF on a stream of its own) are ignored."""
        src = self._sources.get(packet.ssrc)
        if src is None:
            return []
        d = seq_delta(packet.sequence, src.expected)
        if d < 0 or d > _MAX_DROPOUT or packet.sequence in src.held:
            return []  # repeated end packets, or already given up on
        empty = RtpPacket(packet.payload_type, packet.sequence, src.next_ts, packet.ssrc, b"")
        return self._place(src, empty, now)

    def _place(self, src: _Source, packet: RtpPacket, now: float) -> list[bytes]:
        out: list[bytes] = []
        d = seq_delta(packet.sequence, src.expected)
        if -_MAX_MISORDER <= d < 0:  # already played or given up on
            if d == -1 and not src.held:
                self.stats.duplicates += 1
            else:
                self.stats.late += 1
            return out
        if d > _MAX_DROPOUT or d < 0:  # the sender restarted its numbering: follow it
            self.stats.resyncs += 1
            out.extend(self._release_all(src))
            src.expected = packet.sequence
            src.next_ts = packet.timestamp
        if packet.sequence in src.held:
            self.stats.duplicates += 1
            return out
        if src.held and any(seq_delta(s, packet.sequence) > 0 for s in src.held):
            self.stats.reordered += 1
        src.held[packet.sequence] = (packet, now)
        out.extend(self._release_ready(src))
        while src.held and (len(src.held) > self._max_packets or now - self._oldest(src) >= self._max_delay):
            out.extend(self._skip_gap(src))
        return out

    def get_timer(self) -> float | None:
        """When a held packet stops waiting for the gap before it, or None."""
        deadline: float | None = None
        for src in self._sources.values():
            if src.held:
                t = self._oldest(src) + self._max_delay
                deadline = t if deadline is None else min(deadline, t)
        return deadline

    def handle_timer(self, now: float) -> list[bytes]:
        """Give up on gaps that waited `max_delay`; return what that releases."""
        out: list[bytes] = []
        for src in self._sources.values():
            while src.held and now - self._oldest(src) >= self._max_delay:
                out.extend(self._skip_gap(src))
        return out

    def flush(self) -> list[bytes]:
        """Release everything held (end of call)."""
        out: list[bytes] = []
        for src in self._sources.values():
            out.extend(self._release_all(src))
        return out

    # -- internals

    def _new_source(self, packet: RtpPacket) -> _Source:
        src = _Source(expected=packet.sequence, next_ts=packet.timestamp, last_len=len(packet.payload), held={})
        self._sources[packet.ssrc] = src
        while len(self._sources) > self._max_sources:
            self._sources.popitem(last=False)
        return src

    def _update_jitter(self, src: _Source, packet: RtpPacket, now: float) -> None:
        transit = now * self._rate - packet.timestamp
        if src.transit is not None and packet.ssrc == self._current:
            d = abs(transit - src.transit)
            if d < self._rate:  # ignore timestamp jumps (new talk spurt after a long gap)
                self.stats.jitter_ms += (d * 1000 / self._rate - self.stats.jitter_ms) / 16
        src.transit = transit

    @staticmethod
    def _oldest(src: _Source) -> float:
        return min(arrival for _, arrival in src.held.values())

    def _emit(self, src: _Source, packet: RtpPacket, missing: int = 0) -> list[bytes]:
        """The payload of the next packet in order, after silence for `missing` lost packets."""
        out: list[bytes] = []
        if missing > 0:
            gap = (packet.timestamp - src.next_ts) % _TS_MOD
            if not 0 < gap <= self._max_conceal:  # timestamps unusable: assume the last packet size
                gap = min(missing * src.last_len, self._max_conceal)
            out.append(self._silence * gap)
            self.stats.concealed_bytes += gap
        if packet.payload:
            out.append(packet.payload)
        src.expected = (packet.sequence + 1) & 0xFFFF
        src.next_ts = (packet.timestamp + len(packet.payload)) % _TS_MOD
        src.last_len = len(packet.payload) or src.last_len
        return out

    def _release_ready(self, src: _Source) -> list[bytes]:
        out: list[bytes] = []
        while src.expected in src.held:
            packet, _ = src.held.pop(src.expected)
            out.extend(self._emit(src, packet))
        return out

    def _skip_gap(self, src: _Source) -> list[bytes]:
        """Declare the packets before the earliest held one lost, and release from there."""
        first = min(src.held, key=lambda s: seq_delta(s, src.expected))
        missing = seq_delta(first, src.expected)
        self.stats.lost += missing
        packet, _ = src.held.pop(first)
        out = self._emit(src, packet, missing)
        out.extend(self._release_ready(src))
        return out

    def _release_all(self, src: _Source) -> list[bytes]:
        out: list[bytes] = []
        while src.held:
            out.extend(self._skip_gap(src))
        return out
