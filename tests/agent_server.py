"""Runs the real aiohttp app on 127.0.0.1 for end-to-end call tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from telephony_agent.realtime import RealtimeModel
from telephony_agent.server import create_app
from telephony_agent.settings import Settings
from telephony_agent.state import STATE, AppState

PUBLIC_URL = "https://agent.test"
AUTH_TOKEN = "test-auth-token-0123456789"
ACCOUNT_SID = "AC" + "0" * 32


@dataclass
class RunningAgent:
    app: web.Application
    base_url: str
    settings: Settings

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    async def wait_no_calls(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state.calls:
            if loop.time() > deadline:
                raise AssertionError(f"calls still active: {list(self.state.calls)}")
            await asyncio.sleep(0.01)


def test_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "public_url": PUBLIC_URL,
        "twilio_auth_token": AUTH_TOKEN,
        "twilio_account_sid": ACCOUNT_SID,
        "provider": "local",
        "idle_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


test_settings.__test__ = False  # type: ignore[attr-defined]


@asynccontextmanager
async def running_agent(settings: Settings, model: RealtimeModel | None = None) -> AsyncIterator[RunningAgent]:
    app = create_app(settings, model=model)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningAgent(app, f"http://127.0.0.1:{port}", settings)
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)
