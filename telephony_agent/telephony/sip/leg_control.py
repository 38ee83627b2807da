"""What the SIP media leg asks of the signalling side: hang up, transfer, and give up on silence.

`SipLeg` (the PhoneLeg for SIP, in `media.py`) owns the RTP stream; the dialog it belongs to lives
in the UAS. This protocol is the narrow seam between them, so media never imports signalling.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["SipCallControl", "TransferFailed"]


class TransferFailed(RuntimeError):
    """REFER was refused, or the NOTIFY reported that the transfer target did not answer."""


class SipCallControl(Protocol):
    """One SIP dialog's call control, as the media leg sees it."""

    async def hangup(self) -> None:
        """Send BYE (retransmitted until answered or timed out) and end the dialog. Idempotent."""
        ...

    async def transfer(self, target: str) -> None:
        """Send REFER to `target` (already allowlisted); return once a NOTIFY reports a 2xx.

        Raises `TransferFailed` when the REFER or the transfer fails or times out."""
        ...

    def on_media_timeout(self) -> None:
        """No RTP arrived for the inactivity timeout: end the call with BYE."""
        ...
