"""RTP (RFC 3550) packets, sans-I/O: parse what arrives, build what we send.

Parsing is strict about what would make the payload wrong (version, lengths, padding, header
extension) and lenient about the rest: CSRCs and extensions are skipped, RTCP sharing the port
(RFC 5761) is recognised so it can be ignored, and anything else is a `RtpError` naming why,
for the caller to count. Nothing here raises on bad input except `RtpError`.

`RtpPacketizer` numbers outbound packets: random SSRC, sequence number and timestamp origin
(RFC 3550 §5.1), sequence wrapping at 2**16, timestamp at 2**32, the marker bit on the first
packet of each talk spurt, and the timestamp jumping over silent gaps so the receiver's playout
keeps real time.
"""

from __future__ import annotations

import enum
import secrets
import struct
from dataclasses import dataclass

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpError",
    "RtpErrorKind",
    "RtpPacket",
    "RtpPacketizer",
    "build_rtp",
    "is_rtcp",
    "parse_rtp",
    "seq_delta",
]

RTP_HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


class RtpErrorKind(str, enum.Enum):
    """Why a datagram is not a usable RTP packet (closed set: a metrics label)."""

    TOO_SHORT = "too_short"
    BAD_VERSION = "bad_version"
    BAD_CSRC = "bad_csrc"
    BAD_EXTENSION = "bad_extension"
    BAD_PADDING = "bad_padding"


class RtpError(ValueError):
    """The peer sent a datagram that is not valid RTP; `kind` says how."""

    def __init__(self, kind: RtpErrorKind, detail: str = "") -> None:
        super().__init__(f"malformed RTP ({kind.value}){': ' + detail if detail else ''}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet with its header fields and its payload (CSRCs/extension/padding removed)."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()


def is_rtcp(data: bytes) -> bool:
    """True for an RTCP packet multiplexed on the RTP port (RFC 5761 §4: PT 192-223 in byte 1)."""
    return len(data) >= 2 and data[0] >> 6 == 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one datagram as RTP. Raises `RtpError` (and nothing else) when it is not."""
    n = len(data)
    if n < RTP_HEADER_SIZE:
        raise RtpError(RtpErrorKind.TOO_SHORT, f"{n} bytes")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtpError(RtpErrorKind.BAD_VERSION, f"version {b0 >> 6}")
    cc = b0 & 0x0F
    start = RTP_HEADER_SIZE + 4 * cc
    if start > n:
        raise RtpError(RtpErrorKind.BAD_CSRC, f"{cc} CSRCs in {n} bytes")
    csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE) if cc else ()
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in 32-bit words
        if start + 4 > n:
            raise RtpError(RtpErrorKind.BAD_EXTENSION, "truncated extension header")
        words = int.from_bytes(data[start + 2 : start + 4], "big")
        start += 4 + 4 * words
        if start > n:
            raise RtpError(RtpErrorKind.BAD_EXTENSION, f"extension of {words} words in {n} bytes")
    end = n
    if b0 & 0x20:  # padding: the last byte counts the padding bytes, itself included
        pad = data[-1]
        if pad == 0 or start + pad > n:
            raise RtpError(RtpErrorKind.BAD_PADDING, f"padding {pad} in {n} bytes")
        end = n - pad
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=bytes(data[start:end]),
        marker=bool(b1 & 0x80),
        csrcs=tuple(csrcs),
    )


def build_rtp(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    """Build a plain RTP packet (no CSRC, extension or padding)."""
    return (
        _HEADER.pack(
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            sequence % _SEQ_MOD,
            timestamp % _TS_MOD,
            ssrc & 0xFFFFFFFF,
        )
        + payload
    )


def seq_delta(a: int, b: int) -> int:
    """Signed distance from sequence number `b` to `a` modulo 2**16, in [-32768, 32767]."""
    d = (a - b) % _SEQ_MOD
    return d - _SEQ_MOD if d >= _SEQ_MOD // 2 else d


class RtpPacketizer:
    """Numbers the packets of one outbound stream (one SSRC, one payload type)."""

    def __init__(
        self,
        payload_type: int,
        *,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        self.payload_type = payload_type
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & 0xFFFFFFFF
        self._seq = secrets.randbits(16) if sequence is None else sequence % _SEQ_MOD
        self._ts = secrets.randbits(32) if timestamp is None else timestamp % _TS_MOD
        self._started = False
        self.packets = 0
        self.octets = 0

    @property
    def next_sequence(self) -> int:
        return self._seq

    @property
    def next_timestamp(self) -> int:
        return self._ts

    def packet(self, payload: bytes, *, marker: bool = False, skipped_samples: int = 0) -> bytes:
        """The next packet. `skipped_samples` advances the timestamp over a gap in sending (the
        time nothing was sent before this talk spurt), so the receiver plays it at the right time."""
        if skipped_samples > 0:
            self._ts = (self._ts + skipped_samples) % _TS_MOD
        data = build_rtp(self.payload_type, self._seq, self._ts, self.ssrc, payload, marker or not self._started)
        self._started = True
        self._seq = (self._seq + 1) % _SEQ_MOD
        self._ts = (self._ts + len(payload)) % _TS_MOD  # G.711: one sample a byte
        self.packets += 1
        self.octets += len(payload)
        return data
