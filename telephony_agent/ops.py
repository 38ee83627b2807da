"""Operations endpoints: liveness, readiness, Prometheus metrics, and the event-loop lag watcher."""

from __future__ import annotations

import asyncio

from aiohttp import web

from telephony_agent.state import STATE, AppState

LAG_INTERVAL_S = 0.1


def install(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def watch_loop_lag(state: AppState) -> None:
    """Measure how late the loop wakes us: the honest signal that a server is overloaded."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_INTERVAL_S)
        lag_ms = max(0.0, (loop.time() - start - LAG_INTERVAL_S) * 1000)
        state.loop_lag_ms = lag_ms if lag_ms > state.loop_lag_ms else 0.8 * state.loop_lag_ms + 0.2 * lag_ms
        state.metrics.loop_lag.observe(lag_ms)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reason = state.refusal()
    if state.model is None:
        reason = "no_provider"
    body = {"ready": reason is None, "reason": reason, "active_calls": len(state.calls)}
    return web.json_response(body, status=200 if reason is None else 503)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), content_type="text/plain", charset="utf-8")
