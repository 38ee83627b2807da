"""A tap on every message of a call, on both legs, for recording (and anything else that listens).

The call's task sets `WIRETAP` before it opens the provider session; tasks created after that
inherit it (contextvars), so the provider's socket reader and writer record into the same call
without any layer passing a recorder down. With no tap set, the cost is one ContextVar lookup.

The legs have neutral names: `LEG_PHONE` is the caller's leg whatever carries it (Twilio Media
Streams, SIP, the browser softphone; the tap was told the transport when it was made), and
`LEG_PROVIDER` is the realtime model's connection.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

__all__ = ["IN", "LEG_PHONE", "LEG_PROVIDER", "OUT", "WIRETAP", "Wiretap"]

LEG_PHONE = "phone"
LEG_PROVIDER = "provider"
IN = "in"  # to the agent
OUT = "out"  # from the agent


class Wiretap(Protocol):
    def record(self, leg: str, direction: str, message: str | bytes) -> None:
        """`leg`: `LEG_PHONE` or `LEG_PROVIDER`; `direction`: `IN` (to us) or `OUT` (from us);
        `message`: the frame as it went over the wire (text or binary)."""


WIRETAP: ContextVar[Wiretap | None] = ContextVar("telephony_agent_wiretap", default=None)
