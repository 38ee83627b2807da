"""Nothing of a call outlives it: many short calls in process, then count what is left.

Found by the load benchmark's 1,000 sequential calls (RSS kept climbing): aiohttp re-arms a
client WebSocket's heartbeat timer when the peer's close frame arrives during the closing
handshake, and that timer kept every provider socket (connection, buffers, ~5 KiB) alive for
~30 s after its call ended. `WebSocketTransport.close` now cancels it.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
import urllib.parse

import aiohttp
from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.telephony.bridge import CallBridge, CallTimer
from telephony_agent.telephony.call_core import CallCore
from telephony_agent.telephony.pacing import PacingClock
from telephony_agent.telephony.playout import Playout
from telephony_agent.telephony.twilio.media_socket import TwilioMediaSocket
from telephony_agent.testing.twilio_caller import TwilioCaller

API_KEY = "sk-test-key"
WARM_CALLS = 5
CALLS = 40


def _clear_url_caches() -> None:
    """Empty the bounded LRU caches of URL parsing (urllib, yarl, aiohttp). Every call's stream URL
    is unique (it carries the call's token), so until these caches are full each call adds an
    entry: bounded, not a leak, and not what this test looks for."""
    urllib.parse.clear_cache()
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("yarl", "aiohttp", "multidict"):
            for obj in list(vars(module).values()):
                clear = getattr(obj, "cache_clear", None)
                if callable(clear):
                    clear()


KINDS = (CallBridge, CallCore, CallTimer, Playout, PacingClock, TwilioMediaSocket, aiohttp.ClientWebSocketResponse)


def _alive() -> dict[int, object]:
    """Every live object of `KINDS`, by id (held, so no id is reused while we compare)."""
    return {id(o): o for o in gc.get_objects() if isinstance(o, KINDS)}


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
            _clear_url_caches()
            gc.collect()
            # what other tests in this process left (a pytest-xdist worker runs many files) is
            # theirs to answer for: only what these calls leave counts
            earlier = _alive()
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
                _clear_url_caches()
                gc.collect()
                after, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert not agent.state.calls and not agent.state.pending
            assert not agent.state.metrics._seen
            left = [o for i, o in _alive().items() if i not in earlier]
            for kind in KINDS:
                n = sum(isinstance(o, kind) for o in left)
                assert n == 0, f"{n} {kind.__name__} still alive after {CALLS} calls"
            per_call = (after - before) / CALLS
            assert per_call < 4096, f"traced memory grew {per_call:.0f} B per call"
