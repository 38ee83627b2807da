"""Per-process server state shared by the request handlers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from telephony_agent.metrics import Metrics
from telephony_agent.realtime import RealtimeModel
from telephony_agent.settings import Settings
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.twilio.rest import TwilioRest


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    model: RealtimeModel | None = None
    http: aiohttp.ClientSession | None = None
    rest: TwilioRest | None = None
    calls: dict[str, CallBridge] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # call sid -> webhook time, until start
    draining: bool = False
    loop_lag_ms: float = 0.0
    token_secret: bytes = b""
    # Called with each new CallBridge before it starts: register tools, DTMF hooks, ... per call.
    call_hooks: list[Callable[[CallBridge], None]] = field(default_factory=list)

    @property
    def auth_token(self) -> str | None:
        token = self.settings.twilio_auth_token
        return token.get_secret_value() if token is not None else None

    def load(self) -> int:
        now = time.monotonic()
        ttl = self.settings.stream_token_ttl_seconds
        for sid in [s for s, t in self.pending.items() if now - t > ttl]:
            del self.pending[sid]
        return len(self.calls) + len(self.pending)

    def refusal(self) -> str | None:
        """Why a new call would be refused now, or None."""
        if self.draining:
            return "draining"
        if self.load() >= self.settings.max_calls:
            return "at_capacity"
        if self.loop_lag_ms > self.settings.max_loop_lag_ms:
            return "overloaded"
        return None


STATE = web.AppKey("state", AppState)
