"""Nothing of a call outlives it: many short calls in process, then count what is left.

Found by the load benchmark's 1,000 sequential calls (RSS kept climbing): aiohttp re-arms a
client WebSocket's heartbeat timer when the peer's close frame arrives during the closing
handshake, and that timer kept every provider socket (connection, buffers, ~5 KiB) alive for
~30 s after its call ended. `WebSocketTransport.close` now cancels it.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import aiohttp
from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.telephony.bridge import CallBridge, CallTimer
from telephony_agent.telephony.pacing import PacingClock
from telephony_agent.telephony.playout import Playout
from telephony_agent.telephony.twilio.media_socket import TwilioMediaSocket
from telephony_agent.testing.twilio_caller import TwilioCaller

API_KEY = "sk-test-key"
WARM_CALLS = 5
CALLS = 40


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


async def _short_call(base_url: str) -> None:
    async with TwilioCaller(base_url, PUBLIC_URL, AUTH_TOKEN) as call:
        await call.place()
        await call.connect()
        await asyncio.sleep(0.05)
        await call.hangup()


async def test_short_calls_leave_nothing_behind() -> None:
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        model = OpenAIRealtimeModel(API_KEY, url=server.url, audio="pcmu")
        settings = test_settings(max_loop_lag_ms=100000)
        async with running_agent(settings, model) as agent:
            for _ in range(WARM_CALLS):
                await _short_call(agent.base_url)
            await agent.wait_no_calls()
            gc.collect()
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                for _ in range(CALLS):
                    await _short_call(agent.base_url)
                await agent.wait_no_calls()
                await asyncio.sleep(0.2)
                # the fake provider's own records of every connection and message
                server.received.clear()
                server.connections.clear()
                gc.collect()
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert not agent.state.calls and not agent.state.pending
            assert not agent.state.metrics._seen
            for kind in (CallBridge, CallTimer, Playout, PacingClock, TwilioMediaSocket, aiohttp.ClientWebSocketResponse):
                assert _alive(kind) == 0, f"{_alive(kind)} {kind.__name__} still alive after {CALLS} calls"
            per_call = (after - before) / CALLS
            assert per_call < 4096, f"traced memory grew {per_call:.0f} B per call"
