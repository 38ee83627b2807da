"""Running the server: logging, signals, graceful drain, worker processes."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from telephony_agent.logs import configure_logging
from telephony_agent.server import STATE, create_app
from telephony_agent.settings import Settings

log = logging.getLogger(__name__)


async def _serve_async(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=settings.workers > 1)
    await site.start()
    log.info("listening on %s:%d", settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    state = app[STATE]
    state.draining = True
    log.info("draining: %d active calls, up to %.0fs", len(state.calls), settings.drain_seconds)
    deadline = loop.time() + settings.drain_seconds
    while state.calls and loop.time() < deadline:
        await asyncio.sleep(0.1)
    await runner.cleanup()
    log.info("stopped")


def serve(settings: Settings) -> int:
    configure_logging(settings.log_format.value, settings.log_level)
    asyncio.run(_serve_async(settings))
    return 0
