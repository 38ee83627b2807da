"""Per-process server state shared by the request handlers. No transport lives here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from telephony_agent.metrics import Metrics
from telephony_agent.realtime import RealtimeModel
from telephony_agent.settings import Settings
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.calls import CallManager


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    manager: CallManager
    http: aiohttp.ClientSession | None = None
    loop_lag_ms: float = 0.0  # the admission window's lag figure (see ops.LagWindow)
    overloaded: bool = False  # sustained loop lag, with hysteresis (see ops.Overload)

    @property
    def model(self) -> RealtimeModel | None:
        return self.manager.model

    @model.setter
    def model(self, model: RealtimeModel | None) -> None:
        self.manager.model = model

    # Shorthands for the manager's registry, used by handlers, the drain and tests.
    @property
    def calls(self) -> dict[str, CallBridge]:
        return self.manager.calls

    @property
    def pending(self) -> dict[str, float]:
        return self.manager.pending

    @property
    def call_hooks(self) -> list[Callable[[CallBridge], None]]:
        """Called with each new CallBridge before it starts: register tools, DTMF hooks, ... per call."""
        return self.manager.hooks

    @property
    def draining(self) -> bool:
        return self.manager.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.manager.draining = value

    def load(self) -> int:
        return self.manager.load()

    def refusal(self) -> str | None:
        """Why a new call would be refused now, or None."""
        return self.manager.refusal()


STATE = web.AppKey("state", AppState)
