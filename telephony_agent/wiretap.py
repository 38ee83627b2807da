"""A tap on every message of a call, on both legs, for recording (and anything else that listens).

The call's task sets `WIRETAP` before it opens the provider session; tasks created after that
inherit it (contextvars), so the provider's socket reader and writer record into the same call
without any layer passing a recorder down. With no tap set, the cost is one ContextVar lookup.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class Wiretap(Protocol):
    def record(self, leg: str, direction: str, message: str | bytes) -> None:
        """`leg`: "twilio" or "provider"; `direction`: "in" (to us) or "out" (from us)."""


WIRETAP: ContextVar[Wiretap | None] = ContextVar("telephony_agent_wiretap", default=None)
