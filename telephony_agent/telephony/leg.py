"""The phone leg: what the call bridge needs from any carrier (Twilio Media Streams, SIP/RTP, ...).

A transport authorises a call, asks the call manager to admit it, and hands the bridge a
`PhoneLeg`. The bridge never learns which carrier it is talking to: it sends audio in the leg's
own `PhoneFormat` (G.711 mu-law or A-law, 8 kHz, the leg's packet time), asks for `clear` on
barge-in, and hangs up or transfers through the leg. The leg calls back into the bridge through
`LegEvents` (caller audio, DTMF, playout confirmations, hang-up), with neutral names.

Playout confirmation belongs to the leg. A leg that confirms what the caller heard (Twilio echoes
a mark once the audio before it has played) says so with `confirms_playout = True` and reports
each confirmation through `LegEvents.on_played`. A leg that confirms nothing (RTP) sets it False,
and the bridge's pacing clock confirms its chunks at real time instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

__all__ = ["PCMA_20MS", "PCMU_20MS", "AudioLaw", "LegEvents", "PhoneFormat", "PhoneLeg"]


class AudioLaw(str, enum.Enum):
    """G.711 companding law of a phone leg."""

    PCMU = "pcmu"  # mu-law: North America, Japan, Twilio Media Streams
    PCMA = "pcma"  # A-law: most of the rest of the world's SIP trunks

    @property
    def silence(self) -> bytes:
        """One byte of digital silence in this law (what a short last frame is padded with)."""
        return b"\xff" if self is AudioLaw.PCMU else b"\xd5"


@dataclass(frozen=True, slots=True)
class PhoneFormat:
    """The audio a phone leg negotiated: G.711 law, sample rate, and packet time."""

    law: AudioLaw = AudioLaw.PCMU
    sample_rate: int = 8000
    ptime_ms: int = 20

    @property
    def frame_bytes(self) -> int:
        """Bytes in one packet of `ptime_ms` (G.711 is one byte a sample)."""
        return self.sample_rate * self.ptime_ms // 1000

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes * 1000 / self.sample_rate


PCMU_20MS = PhoneFormat(AudioLaw.PCMU)
PCMA_20MS = PhoneFormat(AudioLaw.PCMA)


class PhoneLeg(Protocol):
    """One caller's side of a call, as the bridge sees it. Sends never block; they queue in order."""

    @property
    def format(self) -> PhoneFormat:
        """The negotiated audio format; fixed for the life of the call."""
        ...

    @property
    def transport(self) -> str:
        """Short carrier name for logs, metrics and recordings: `twilio`, `sip`, ..."""
        ...

    @property
    def confirms_playout(self) -> bool:
        """True when the leg reports what the caller heard (`LegEvents.on_played`)."""
        ...

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        """Queue frames (each `format.frame_bytes` long) for the caller. A leg that confirms
        playout reports `tag` through `LegEvents.on_played` once these frames have played."""
        ...

    def send_clear(self) -> None:
        """Barge-in: drop every frame sent but not yet played, at once."""
        ...

    async def hangup(self) -> None:
        """End the call for the caller (REST hang-up, SIP BYE, ...)."""
        ...

    async def transfer(self, target: str) -> None:
        """Hand the caller to `target` (an allowlisted number or URI); raises when it fails."""
        ...

    async def close(self) -> None:
        """End the media leg without hanging up (the phone side is already gone or moving on)."""
        ...


class LegEvents(Protocol):
    """What a leg tells the bridge. The bridge reads its own injected clock; legs pass no times."""

    async def on_caller_audio(self, payload: bytes) -> None:
        """Caller audio in the leg's format, in arrival order (any whole number of samples)."""
        ...

    async def on_dtmf(self, digit: str) -> None:
        """A key the caller pressed: `0`-`9`, `*`, `#`, `A`-`D`."""
        ...

    def on_played(self, tag: str) -> None:
        """The leg confirmed that the frames sent with `tag` have played (or were cleared)."""
        ...

    async def on_hangup(self) -> None:
        """The caller hung up, or the leg ended the media stream."""
        ...
