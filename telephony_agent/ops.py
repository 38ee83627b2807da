"""Operations endpoints: liveness, readiness, Prometheus metrics, and the event-loop lag watcher.

- `GET /healthz`: the process is alive and its loop answers (liveness).
- `GET /readyz`: 200 when a new call would be accepted now; 503 with the reason otherwise
  (`draining`, `at_capacity`, `overloaded`, `no_provider`). Every transport admits calls through
  the same `CallManager.refusal`, so a probe and a call never disagree.
- `GET /metrics`: Prometheus text format.

The lag watcher wakes every `LAG_INTERVAL_S`; how late it wakes is the loop's lag. Admission
reacts to sustained overload, not to one spike (`Overload`): the loop counts as overloaded when,
over the last `AGENT_OVERLOAD_WINDOW_SECONDS`, it was late by more than `AGENT_MAX_LOOP_LAG_MS`
for at least half of the time, and stops counting as overloaded only once the same figure is
under half the limit (hysteresis, so admission doesn't flap). A 350 ms stall while other
processes start on the host no longer refuses the calls arriving at that moment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from telephony_agent.state import STATE, AppState
from telephony_agent.telephony.bridge import loop_silero_batch
from telephony_agent.telephony.sip.endpoint import SIP_ENDPOINT

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.05
LAG_WINDOW_S = 1.0
FLUSH_INTERVAL_S = 1.0
"""How often live calls' counts reach the counters. A scrape flushes first, so this keeps only the
other workers' shares (multiprocess mode) current; each flush reads every live call."""


def install(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


class LagWindow:
    """The maximum of the lag samples taken in the last `window_s` seconds."""

    def __init__(self, window_s: float = LAG_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, lag_ms: float) -> float:
        samples = self._samples
        while samples and samples[-1][1] <= lag_ms:
            samples.pop()  # a monotonic deque: older, smaller samples can never be the max again
        samples.append((now, lag_ms))
        while samples[0][0] < now - self.window_s:
            samples.popleft()
        return samples[0][1]


class Overload:
    """Sustained event-loop lag, with hysteresis. Sans-I/O: fed (now, lag) samples.

    Each sample stands for the time the watcher slept plus how late it woke. The figure compared
    with the limit is the time-weighted median lag over the window: the lag the loop had for at
    least half of the last `window_s` seconds. One stall that is short against the window barely
    moves it; a loop that is late most of the time reaches it whatever its sampling rate.
    """

    def __init__(self, limit_ms: float, window_s: float = 3.0, interval_s: float = LAG_INTERVAL_S) -> None:
        self.limit_ms = limit_ms
        self.window_s = window_s
        self.interval_s = interval_s
        self.overloaded = False
        self.figure_ms = 0.0
        self._samples: deque[tuple[float, float]] = deque()  # (time, lag ms)

    def add(self, now: float, lag_ms: float) -> bool:
        """Add a sample; returns whether the loop counts as overloaded now."""
        samples = self._samples
        samples.append((now, lag_ms))
        while samples and samples[0][0] < now - self.window_s:
            samples.popleft()
        self.figure_ms = self._weighted_median()
        if self.overloaded:
            self.overloaded = self.figure_ms >= self.limit_ms / 2
        else:
            self.overloaded = self.figure_ms >= self.limit_ms
        return self.overloaded

    def _weighted_median(self) -> float:
        weighted = sorted((lag, self.interval_s + lag / 1000) for _, lag in self._samples)
        total = sum(w for _, w in weighted)
        # Time not covered by samples (the first window after start-up) counts as on time: a
        # stall while the process starts is still one stall, not half of a short history.
        seen = max(0.0, self.window_s - total)
        half = max(total, self.window_s) / 2
        if seen >= half:
            return 0.0
        for lag, weight in weighted:
            seen += weight
            if seen >= half:
                return lag
        return 0.0


class GcPauses:
    """Times every cyclic GC pass into `agent_gc_pause_ms` (a `gc.callbacks` entry).

    A pass holds the event loop, and with it every call in the process: a full one walks every
    call's objects (tens of milliseconds at a few hundred calls), which shows up as late frames
    and as loop lag with no CPU cause. This says which it was. Two clock reads a pass, about
    ten passes a second under load.
    """

    def __init__(self, histogram: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self._by_generation = [histogram.labels(str(g)) for g in range(3)]
        self._clock = clock
        self._started: float | None = None

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        elif self._started is not None:
            generation = info.get("generation", 2)
            if 0 <= generation <= 2:
                self._by_generation[generation].observe((self._clock() - self._started) * 1000)
            self._started = None

    def install(self) -> Callable[[], None]:
        """Start timing; returns what stops it."""
        gc.callbacks.append(self)

        def remove() -> None:
            if self in gc.callbacks:
                gc.callbacks.remove(self)

        return remove


async def watch_loop_lag(state: AppState) -> None:
    """Measure how late the loop wakes us, and keep live per-call metrics flowing."""
    loop = asyncio.get_running_loop()
    window = LagWindow()
    overload = Overload(state.settings.max_loop_lag_ms, state.settings.overload_window_seconds)
    state.metrics.max_calls.set(state.settings.max_calls)
    next_flush = loop.time()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        now = loop.time()
        lag_ms = max(0.0, (now - start - LAG_INTERVAL_S) * 1000)
        state.overloaded = overload.add(now, lag_ms)
        state.loop_lag_ms = window.add(now, lag_ms)
        state.metrics.loop_lag.observe(lag_ms)
        state.metrics.loop_lag_max.set(state.loop_lag_ms)
        if now >= next_flush:
            next_flush = now + FLUSH_INTERVAL_S
            flush_calls(state)


def flush_calls(state: AppState) -> None:
    """Add live calls' new frames, barge-ins, latencies and errors to the counters."""
    try:
        state.metrics.observe_calls(state.calls.values())
        batch = loop_silero_batch(asyncio.get_running_loop())
        if batch is not None:
            state.metrics.observe_vad_batch(batch)
    except Exception:
        log.exception("metrics flush failed")


class MetricsObserver:
    """The `CallObserver` of the server: counters, gauges and the per-call log lines."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def call_refused(self, reason: str, transport: str) -> None:
        self.state.metrics.calls_refused.labels(reason).inc()

    def call_started(self, bridge: Any, transport: str) -> None:
        record_call_start(self.state, bridge, transport)

    def call_ended(self, bridge: Any, transport: str) -> None:
        record_call_end(self.state, bridge, transport)


def record_call_start(state: AppState, call: Any, transport: str = "twilio") -> None:
    """A call's media started and its bridge is registered with the call manager."""
    m = state.metrics
    m.active_calls.set(len(state.calls))
    m.calls_started.labels(call.model.provider).inc()
    call.log.info(
        "call started", extra={"event": "call_started", "provider": call.model.provider, "transport": transport}
    )


def record_call_end(state: AppState, call: Any, transport: str = "twilio") -> None:
    """A call ended and left the call manager's registry: final counters and a one-line summary."""
    m = state.metrics
    m.active_calls.set(len(state.calls))
    outcome = call.outcome.value if call.outcome else "unknown"
    m.calls_ended.labels(outcome).inc()
    try:
        m.observe_call(call, final=True)
    except Exception:
        log.exception("metrics for an ended call failed")
    s = call.stats
    call.log.info(
        "call summary: %s",
        outcome,
        extra={
            "event": "call_summary",
            "outcome": outcome,
            "provider": call.model.provider,
            "transport": transport,
            "frames_in": s.frames_in,
            "frames_out": s.frames_out,
            "barge_ins": s.barge_ins,
            "first_audio_ms": None if s.first_audio_ms is None else round(s.first_audio_ms, 1),
            "provider_errors": s.provider_errors,
            "reconnects": s.reconnects,
        },
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reason = state.refusal()
    sip = request.app.get(SIP_ENDPOINT)
    if reason is None and sip is not None and not sip.ready:
        reason = "sip_listener_down"
    body: dict[str, Any] = {
        "ready": reason is None,
        "reason": reason,
        "active_calls": len(state.calls),
        "max_calls": state.settings.max_calls,
        "loop_lag_ms": round(state.loop_lag_ms, 1),
        "overloaded": state.overloaded,
    }
    if sip is not None:
        body["sip"] = {"listening": sip.ready, "calls": len(sip.calls)}
    return web.json_response(body, status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    flush_calls(state)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
