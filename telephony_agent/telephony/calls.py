"""`CallManager`: the one way in for every transport (Twilio Media Streams, SIP, the browser page).

A transport authorises a call its own way (a signed webhook and stream token, a SIP source
allowlist and digest, ...), then asks the manager. The manager owns everything that is the same
for every carrier, written once:

- admission: the call limit (live calls plus reservations), draining, and overload;
- reservations: a call admitted at webhook or INVITE time counts toward the limit until its media
  starts, so a burst of webhooks cannot overbook the process;
- the registry of live calls, per-call hooks (applications add tools and DTMF handlers),
  the recorder and wiretap (set up only here: after authorisation, never before), and
  the start and end of the call for metrics and logs (through a `CallObserver`);
- drain and polite shutdown.

It imports no transport: a transport hands it a `PhoneLeg` and gets a started `CallBridge` back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from telephony_agent.realtime import RealtimeConfig, RealtimeModel
from telephony_agent.telephony.bridge import BridgeOptions, CallBridge
from telephony_agent.telephony.leg import PhoneLeg
from telephony_agent.wiretap import WIRETAP, Wiretap

__all__ = [
    "CallHook",
    "CallManager",
    "CallObserver",
    "CallRecorderLike",
    "CallRefused",
    "RecorderFactory",
    "Refusal",
]

log = logging.getLogger(__name__)


class Refusal:
    """Why a call is refused (also the `reason` label of `agent_calls_refused_total`)."""

    DRAINING = "draining"
    AT_CAPACITY = "at_capacity"
    OVERLOADED = "overloaded"
    NO_PROVIDER = "no_provider"
    DUPLICATE = "duplicate"  # a second media stream for a live call (a replayed credential)


class CallRefused(Exception):
    """Admission said no; `reason` is one of `Refusal`'s values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallRecorderLike(Wiretap, Protocol):
    """What the manager needs of a call recorder: a wiretap that is told when the call is over."""

    def finish_bridge(self, bridge: CallBridge | None) -> object: ...


class CallObserver(Protocol):
    """Metrics and logs for the call lifecycle (the server's ops layer implements it)."""

    def call_refused(self, reason: str, transport: str) -> None: ...

    def call_started(self, bridge: CallBridge, transport: str) -> None: ...

    def call_ended(self, bridge: CallBridge, transport: str) -> None: ...


CallHook = Callable[[CallBridge], None]
RecorderFactory = Callable[[str, str, str], "CallRecorderLike | None"]  # (call id, transport, G.711 law) -> recorder


@dataclass
class _Live:
    bridge: CallBridge
    transport: str
    recorder: CallRecorderLike | None


@dataclass
class CallManager:
    """Admission, registry and lifecycle of this process's calls. One per server process."""

    max_calls: int
    call_config: Callable[[], RealtimeConfig]
    bridge_options: Callable[[RealtimeModel], BridgeOptions]
    observer: CallObserver | None = None
    recorder_factory: RecorderFactory | None = None
    overloaded: Callable[[], bool] = lambda: False
    reservation_ttl: float = 60.0
    clock: Callable[[], float] = time.monotonic  # reservations only; bridges run on the loop's clock
    model: RealtimeModel | None = None
    hooks: list[CallHook] = field(default_factory=list)
    draining: bool = False

    def __post_init__(self) -> None:
        self._live: dict[str, _Live] = {}
        self._reserved: dict[str, float] = {}  # call id -> when reserved
        self._reserved_by: dict[str, str] = {}  # call id -> the transport that reserved it
        self.ended_calls = 0  # calls that ended in this process (the server's memory trimming reads it)

    # -- admission --------------------------------------------------------------------------

    @property
    def calls(self) -> dict[str, CallBridge]:
        """Live calls by call id (a snapshot: safe to iterate while calls end)."""
        return {call_id: live.bridge for call_id, live in self._live.items()}

    @property
    def pending(self) -> dict[str, float]:
        """Reservations not yet started: call id -> when reserved."""
        self._expire()
        return dict(self._reserved)

    def load(self) -> int:
        """Live calls plus unexpired reservations: what counts toward `max_calls`."""
        self._expire()
        return len(self._live) + len(self._reserved)

    def refusal(self, call_id: str | None = None) -> str | None:
        """Why a new call (or `call_id`, if it holds a reservation) would be refused now, or None."""
        if self.draining:
            return Refusal.DRAINING
        if self.model is None:
            return Refusal.NO_PROVIDER
        held = call_id is not None and call_id in self._reserved
        if not held and self.load() >= self.max_calls:
            return Refusal.AT_CAPACITY
        if not held and self.overloaded():
            return Refusal.OVERLOADED
        return None

    def reserve(self, call_id: str, transport: str = "twilio") -> str | None:
        """Admit `call_id` ahead of its media (webhook, INVITE). Returns the refusal reason, or None
        when admitted: the reservation then counts toward the limit until the call starts or
        `reservation_ttl` passes."""
        reason = self.refusal()
        if reason is not None:
            self._refused(reason, transport)
            return reason
        self._reserved[call_id] = self.clock()
        self._reserved_by[call_id] = transport
        return None

    def release(self, call_id: str) -> None:
        """Give a reservation back (the caller cancelled, or the stream was refused)."""
        self._reserved.pop(call_id, None)
        self._reserved_by.pop(call_id, None)

    def reserved_by(self, call_id: str) -> str | None:
        """The transport that reserved `call_id` (e.g. `softphone` for a browser call that then
        streams over the Twilio media socket), or None without a live reservation."""
        return self._reserved_by.get(call_id) if self.holds(call_id) else None

    def holds(self, call_id: str) -> bool:
        """True while `call_id` has an unexpired reservation."""
        self._expire()
        return call_id in self._reserved

    def is_live(self, call_id: str) -> bool:
        return call_id in self._live

    def _expire(self) -> None:
        if not self._reserved:
            return
        oldest = self.clock() - self.reservation_ttl
        for call_id in [c for c, t in self._reserved.items() if t < oldest]:
            del self._reserved[call_id]
            self._reserved_by.pop(call_id, None)

    def _refused(self, reason: str, transport: str) -> None:
        if self.observer is not None:
            self.observer.call_refused(reason, transport)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start_call(
        self,
        call_id: str,
        leg: PhoneLeg,
        *,
        transport: str | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        on_admitted: Callable[[], None] | None = None,
    ) -> CallBridge:
        """Admit `call_id` (its reservation, or a fresh admission), build its bridge, register it,
        start recording it and open its provider session. Raises `CallRefused`.

        Must be awaited in the call's own task: the recorder becomes that task's `WIRETAP`, so the
        provider connection opened here (and its tasks) are recorded with the call. `on_admitted`
        runs once the call is admitted and its recorder set, before any audio flows: the leg picks
        up the wiretap there and records what it held back until authorisation (its start message).
        """
        kind = transport or leg.transport
        if call_id in self._live:
            self._refused(Refusal.DUPLICATE, kind)
            raise CallRefused(Refusal.DUPLICATE)  # one media stream per call
        reason = self.refusal(call_id)
        if reason is not None:
            self.release(call_id)
            self._refused(reason, kind)
            raise CallRefused(reason)
        self.release(call_id)
        model = self.model
        assert model is not None  # refusal() checked
        recorder = None
        if self.recorder_factory is not None:
            recorder = self.recorder_factory(call_id, kind, leg.format.law.value)
        if recorder is not None:
            WIRETAP.set(recorder)  # this task and every task it creates from here on
        bridge = CallBridge(
            call_id,
            model,
            self.call_config(),
            leg,
            self.bridge_options(model),
            clock=asyncio.get_running_loop().time,  # the loop's clock: a replay may run it virtually
            logger=log,
        )
        self._live[call_id] = _Live(bridge, kind, recorder)
        if self.observer is not None:
            self.observer.call_started(bridge, kind)
        for hook in self.hooks:
            hook(bridge)
        if on_admitted is not None:
            on_admitted()
        await bridge.start()
        return bridge

    def call_ended(self, bridge: CallBridge) -> None:
        """The transport is done with `bridge`'s call: forget it, count it, close its recording."""
        live = self._live.pop(bridge.call_id, None)
        if live is None or live.bridge is not bridge:
            if live is not None:
                self._live[bridge.call_id] = live  # a different call with the same id: keep it
            return
        self.ended_calls += 1
        if self.observer is not None:
            self.observer.call_ended(bridge, live.transport)
        if live.recorder is not None:
            try:
                live.recorder.finish_bridge(bridge)
            except Exception:
                bridge.log.exception("finishing the call recording failed")

    # -- drain --------------------------------------------------------------------------------

    async def shutdown_calls(self, wait_seconds: float = 10.0) -> int:
        """End every live call politely (a spoken goodbye, then hang-up) and wait up to
        `wait_seconds` for them to end. Returns how many were still live at the deadline."""
        for bridge in list(self.calls.values()):
            try:
                await bridge.shutdown()
            except Exception:
                bridge.log.exception("polite shutdown failed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while self._live and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return len(self._live)
