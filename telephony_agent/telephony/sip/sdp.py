"""SDP offer/answer for one G.711 audio stream (RFC 4566, RFC 3264), sans-I/O.

The caller offers; we answer exactly one codec (PCMU or PCMA, in the operator's order of
preference) plus telephone-event with the payload type the offer used (96, 101, 120 all occur),
our media address and the call's RTP port, `a=ptime:20`, and the direction that mirrors the
offer's. `negotiate` returns None when nothing matches: the INVITE gets 488.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from telephony_agent.telephony.leg import AudioLaw, PhoneFormat

__all__ = ["SEND_PTIME_MS", "Negotiated", "SdpError", "SdpOffer", "build_answer", "negotiate", "parse_offer"]

SEND_PTIME_MS = 20
MIN_PTIME_MS = 10
MAX_PTIME_MS = 30
_STATIC = {0: ("PCMU", 8000), 8: ("PCMA", 8000)}
_LAWS = {"PCMU": AudioLaw.PCMU, "PCMA": AudioLaw.PCMA}
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


class SdpError(ValueError):
    """The offer is not SDP we can read (the caller's fault): answer 400/488."""


@dataclass(slots=True)
class SdpOffer:
    address: str
    port: int
    proto: str
    payload_types: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    ptime_ms: int | None = None
    direction: str = "sendrecv"

    def codec(self, pt: int) -> tuple[str, int] | None:
        return self.rtpmap.get(pt) or _STATIC.get(pt)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What we answer: the codec and its payload type, DTMF's payload type, where to send."""

    law: AudioLaw
    payload_type: int
    te_payload_type: int | None
    remote: tuple[str, int]
    direction: str
    inbound_ptime_ms: int

    @property
    def format(self) -> PhoneFormat:
        return PhoneFormat(self.law, 8000, SEND_PTIME_MS)


def parse_offer(body: bytes) -> SdpOffer:
    """The first usable `m=audio` of an offer. Raises `SdpError` on anything unreadable."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    session_address: str | None = None
    media: SdpOffer | None = None
    media_address: str | None = None
    in_audio = False
    done = False
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            if media is not None:
                done = True  # only the first usable audio stream matters
            if done:
                in_audio = False
                continue
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                in_audio = False
                continue
            try:
                port = int(parts[1].split("/")[0])
                pts = [int(p) for p in parts[3:]]
            except ValueError:
                raise SdpError(f"bad m= line {value[:60]!r}") from None
            if port == 0 or not 0 < port < 65536 or any(not 0 <= p <= 127 for p in pts):
                in_audio = False
                continue
            media = SdpOffer("", port, parts[2], pts)
            in_audio = True
        elif kind == "c":
            address = _connection_address(value)
            if media is None and not done:
                session_address = address
            elif in_audio:
                media_address = address
        elif kind == "a" and in_audio and media is not None:
            name, _, rest = value.partition(":")
            if name == "rtpmap":
                pt_text, _, encoding = rest.partition(" ")
                enc_parts = encoding.split("/")
                try:
                    media.rtpmap[int(pt_text)] = (enc_parts[0].upper(), int(enc_parts[1]) if len(enc_parts) > 1 else 8000)
                except (ValueError, IndexError):
                    raise SdpError(f"bad rtpmap {value[:60]!r}") from None
            elif name == "ptime":
                try:
                    media.ptime_ms = int(float(rest))
                except ValueError:
                    raise SdpError(f"bad ptime {rest[:20]!r}") from None
            elif name in _DIRECTIONS:
                media.direction = name
    if media is None:
        raise SdpError("no audio stream in the offer")
    found = media_address or session_address
    if not found:
        raise SdpError("no connection address")
    media.address = found
    return media


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) < 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line {value[:60]!r}")
    address = parts[2].split("/")[0]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"c= is not an IP address: {address[:60]!r}") from None
    return address


def negotiate(offer: SdpOffer, codecs: Sequence[str]) -> Negotiated | None:
    """Pick the first codec of `codecs` (e.g. ["PCMU", "PCMA"]) the offer has; None: 488."""
    if offer.proto.upper() not in ("RTP/AVP", "RTP/AVPF"):
        return None  # SRTP (RTP/SAVP) and others: not offered by this agent
    te_pt = next(
        (pt for pt in offer.payload_types if (offer.codec(pt) or ("", 0)) == ("TELEPHONE-EVENT", 8000)), None
    )
    for name in codecs:
        wanted = name.strip().upper()
        for pt in offer.payload_types:
            codec = offer.codec(pt)
            if codec is not None and codec == (wanted, 8000) and wanted in _LAWS:
                ptime = offer.ptime_ms or SEND_PTIME_MS
                if not MIN_PTIME_MS <= ptime <= MAX_PTIME_MS:
                    ptime = SEND_PTIME_MS  # a preference, not a promise: the jitter buffer copes
                return Negotiated(
                    _LAWS[wanted], pt, te_pt, (offer.address, offer.port), _MIRROR[offer.direction], ptime
                )
    return None


def build_answer(neg: Negotiated, address: str, port: int, session_id: int) -> bytes:
    """Our answer: one codec, telephone-event on the offer's payload type, ptime 20."""
    family = "IP6" if ":" in address else "IP4"
    pts = [neg.payload_type] + ([neg.te_payload_type] if neg.te_payload_type is not None else [])
    name = "PCMU" if neg.law is AudioLaw.PCMU else "PCMA"
    lines = [
        "v=0",
        f"o=telephony-agent {session_id} {session_id} IN {family} {address}",
        "s=telephony-agent",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(p) for p in pts)}",
        f"a=rtpmap:{neg.payload_type} {name}/8000",
    ]
    if neg.te_payload_type is not None:
        lines.append(f"a=rtpmap:{neg.te_payload_type} telephone-event/8000")
        lines.append(f"a=fmtp:{neg.te_payload_type} 0-16")
    lines.append(f"a=ptime:{SEND_PTIME_MS}")
    lines.append(f"a={neg.direction}")
    return ("\r\n".join(lines) + "\r\n").encode()
