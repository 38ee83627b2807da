"""DTMF in: RFC 4733 telephone-events over RTP, and SIP INFO bodies, sans-I/O.

An RFC 4733 key press is a run of packets sharing one RTP timestamp: progress packets, then an
end packet sent three times. `DtmfReceiver` reports each key once per (SSRC, timestamp), on the
first end packet, and does not need the start (it may be lost). A key whose end packets are all
lost is still reported when the next key (a new timestamp) starts on the same SSRC.

SIP INFO is the fallback some PBXs use: `application/dtmf-relay` (`Signal=5`, `Duration=160`)
or `application/dtmf` (the bare key). `parse_info_dtmf` turns either body into a key or None.
"""

from __future__ import annotations

import collections
import enum
import struct
from dataclasses import dataclass

__all__ = [
    "DTMF_EVENTS",
    "DtmfReceiver",
    "DtmfStats",
    "TelephoneEvent",
    "parse_info_dtmf",
    "parse_telephone_event",
    "telephone_event_payload",
]

DTMF_EVENTS = "0123456789*#ABCD"
"""RFC 4733 §3.2 event codes 0-15, in order."""

_EVENT = struct.Struct("!BBH")
_REMEMBERED = 32  # (SSRC, timestamp) keys remembered, so late end repeats are not new keys


class _KeyState(enum.Enum):
    PRESSED = "pressed"  # progress packets seen, not reported yet
    REPORTED = "reported"


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 payload: event code, end bit, volume (-dBm0), duration (timestamp units)."""

    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DTMF_EVENTS[self.event] if self.event < len(DTMF_EVENTS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent | None:
    """Parse the first 4-byte event of a payload; None when it is too short."""
    if len(payload) < _EVENT.size:
        return None
    event, flags, duration = _EVENT.unpack_from(payload)
    return TelephoneEvent(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


def telephone_event_payload(digit: str, *, end: bool, duration: int, volume: int = 10) -> bytes:
    """Build a payload for `digit` (used by the SIP caller and by tests)."""
    return _EVENT.pack(DTMF_EVENTS.index(digit.upper()), (0x80 if end else 0) | (volume & 0x3F), duration & 0xFFFF)


@dataclass(slots=True)
class DtmfStats:
    packets: int = 0
    digits: int = 0
    bad: int = 0  # too short, or an event that is not a key (flash, tones)
    without_end: int = 0  # keys reported because the next key started, their end packets lost


class DtmfReceiver:
    """Turns telephone-event packets of one call into keys, each reported once."""

    def __init__(self) -> None:
        self._keys: collections.OrderedDict[tuple[int, int], _KeyState] = collections.OrderedDict()
        self._pressed: dict[int, tuple[int, str]] = {}  # ssrc -> (timestamp, digit) not yet reported
        self.stats = DtmfStats()

    def receive(self, ssrc: int, timestamp: int, payload: bytes) -> list[str]:
        """Take one telephone-event packet; return the keys it completes (zero, one or two)."""
        self.stats.packets += 1
        ev = parse_telephone_event(payload)
        digit = ev.digit if ev is not None else None
        if ev is None or digit is None:
            self.stats.bad += 1
            return []
        key = (ssrc, timestamp)
        out: list[str] = []
        pending = self._pressed.get(ssrc)
        if pending is not None and pending[0] != timestamp:  # a new key began; the last never ended
            del self._pressed[ssrc]
            if self._keys.get((ssrc, pending[0])) is _KeyState.PRESSED:
                self._keys[(ssrc, pending[0])] = _KeyState.REPORTED
                self.stats.without_end += 1
                out.append(self._report(pending[1]))
        state = self._keys.get(key)
        if state is _KeyState.REPORTED:
            return out
        if ev.end:
            self._remember(key, _KeyState.REPORTED)
            self._pressed.pop(ssrc, None)
            out.append(self._report(digit))
        elif state is None:
            self._remember(key, _KeyState.PRESSED)
            self._pressed[ssrc] = (timestamp, digit)
        return out

    def _report(self, digit: str) -> str:
        self.stats.digits += 1
        return digit

    def _remember(self, key: tuple[int, int], state: _KeyState) -> None:
        self._keys[key] = state
        self._keys.move_to_end(key)
        while len(self._keys) > _REMEMBERED:
            self._keys.popitem(last=False)


def parse_info_dtmf(content_type: str, body: bytes | str) -> str | None:
    """The key in a SIP INFO body (`application/dtmf-relay` or `application/dtmf`), or None."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if len(text) > 1024:
        return None
    value: str | None = None
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            name, sep, rest = line.partition("=")
            if sep and name.strip().lower() == "signal":
                value = rest.strip()
                break
    elif ctype == "application/dtmf":
        value = text.strip()
    if not value:
        return None
    if value.isdigit() and len(value) <= 2 and int(value) < len(DTMF_EVENTS):
        return DTMF_EVENTS[int(value)]  # "10" is *, "11" is #
    value = value.upper()
    return value if len(value) == 1 and value in DTMF_EVENTS else None
