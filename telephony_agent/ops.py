"""Operations endpoints: liveness, readiness, Prometheus metrics, and the event-loop lag watcher.

- `GET /healthz`: the process is alive and its loop answers (liveness).
- `GET /readyz`: 200 when a new call would be accepted now; 503 with the reason otherwise
  (`draining`, `at_capacity`, `overloaded`, `no_provider`). The webhook refuses calls for the
  same reasons (`AppState.refusal`), so a probe and a call never disagree.
- `GET /metrics`: Prometheus text format.

The lag watcher wakes every `LAG_INTERVAL_S`; how late it wakes is the loop's lag. Admission
control compares the largest lag seen in the last `LAG_WINDOW_S` (a decaying max), so one
slow tick refuses calls for a second, not only for the instant it was measured, and a busy
loop that happens to wake the watcher on time once is not mistaken for an idle one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from telephony_agent.state import STATE, AppState

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.05
LAG_WINDOW_S = 1.0
FLUSH_INTERVAL_S = 0.25


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


async def watch_loop_lag(state: AppState) -> None:
    """Measure how late the loop wakes us, and keep live per-call metrics flowing."""
    loop = asyncio.get_running_loop()
    window = LagWindow()
    state.metrics.max_calls.set(state.settings.max_calls)
    next_flush = loop.time()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        now = loop.time()
        lag_ms = max(0.0, (now - start - LAG_INTERVAL_S) * 1000)
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
    except Exception:  # noqa: BLE001 - metrics must never break calls
        log.exception("metrics flush failed")


def record_call_start(state: AppState, call: Any) -> None:
    """A call's media stream started and its bridge is registered in `state.calls`."""
    m = state.metrics
    m.active_calls.set(len(state.calls))
    m.calls_started.labels(call.model.provider).inc()
    call.log.info("call started", extra={"event": "call_started", "provider": call.model.provider})


def record_call_end(state: AppState, call: Any) -> None:
    """A call ended and was removed from `state.calls`: final counters and a one-line summary."""
    m = state.metrics
    m.active_calls.set(len(state.calls))
    outcome = call.outcome.value if call.outcome else "unknown"
    m.calls_ended.labels(outcome).inc()
    try:
        m.observe_call(call, final=True)
    except Exception:  # noqa: BLE001
        log.exception("metrics for an ended call failed")
    s = call.stats
    call.log.info(
        "call summary: %s",
        outcome,
        extra={
            "event": "call_summary",
            "outcome": outcome,
            "provider": call.model.provider,
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
    if state.model is None:
        reason = "no_provider"
    body = {
        "ready": reason is None,
        "reason": reason,
        "active_calls": len(state.calls),
        "max_calls": state.settings.max_calls,
        "loop_lag_ms": round(state.loop_lag_ms, 1),
    }
    return web.json_response(body, status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    flush_calls(state)
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
