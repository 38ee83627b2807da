"""RealtimeRunner over a Gemini Live session and the fake Gemini server: tools, cancellation, resumption."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest
from peers.fake_gemini import FakeGemini, Reply

from telephony_agent.realtime.events import (
    AudioDelta,
    FunctionCallDone,
    Reconnected,
    ResponseDone,
    ToolCallCancelled,
)
from telephony_agent.realtime.providers.gemini import GeminiLiveModel
from telephony_agent.realtime.runner import RealtimeRunner
from telephony_agent.realtime.tools import ToolRegistry
from telephony_agent.realtime.types import PCM16_16K, AudioChunk, ContextMutationKind, RealtimeConfig
from telephony_agent.testing.speech import speech_pcm16

KEY = "test-key"
CHUNK = 640
SILENCE = bytes(CHUNK * 25)


@pytest.fixture(scope="module")
def hello_16k() -> bytes:
    return speech_pcm16("Please check the weather and my order.", 16000)


@pytest.fixture
async def fake():
    async with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as client:
        yield client


class Pump:
    """Reads `runner.events()` in the background into a queue."""

    def __init__(self, runner: RealtimeRunner) -> None:
        self.runner = runner
        self.queue: asyncio.Queue = asyncio.Queue()
        self.seen: list = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.runner.events():
            self.seen.append(event)
            await self.queue.put(event)
        await self.queue.put(None)

    async def next_of(self, kind: type, timeout: float = 5.0, where=lambda e: True):
        async def find():
            while True:
                event = await self.queue.get()
                if event is None:
                    raise AssertionError(f"stream ended before {kind.__name__}")
                if isinstance(event, kind) and where(event):
                    return event

        return await asyncio.wait_for(find(), timeout)

    async def stop(self) -> None:
        await self.runner.aclose()
        await self.runner.session.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def stream(session, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK):
        await session.send_audio(AudioChunk(pcm[i : i + CHUNK], PCM16_16K))


async def start(fake, http, registry: ToolRegistry, config: RealtimeConfig | None = None, **runner_kwargs) -> Pump:
    model = GeminiLiveModel(KEY, url=fake.url, http=http, setup_timeout=3.0)
    session = await model.connect(config or RealtimeConfig(tools=registry.definitions))
    return Pump(RealtimeRunner(session, registry, **runner_kwargs))


async def test_parallel_tool_calls_get_one_tool_response_each(fake, http, hello_16k):
    registry = ToolRegistry()
    started: list[str] = []

    @registry.tool()
    async def get_weather(city: str) -> dict:
        """Weather for a city."""
        started.append("weather")
        await asyncio.sleep(0.1)
        return {"city": city, "sky": "clear"}

    @registry.tool()
    async def get_order(order: str) -> dict:
        """An order's status."""
        started.append("order")
        await asyncio.sleep(0.05)
        return {"order": order, "status": "shipped"}

    fake.replies.append(
        Reply(tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}}, {"name": "get_order", "args": {"order": "A-17"}}])
    )
    pump = await start(fake, http, registry)
    try:
        await stream(pump.runner.session, hello_16k + SILENCE)
        calls = [await pump.next_of(FunctionCallDone), await pump.next_of(FunctionCallDone)]
        done = await pump.next_of(ResponseDone, where=lambda e: e.status == "completed" and e.reason is None)
        assert sorted(started) == ["order", "weather"]
        conn = fake.last
        responses = [m for _, m in conn.messages if "toolResponse" in m]
        assert len(responses) == 2
        assert all(len(m["toolResponse"]["functionResponses"]) == 1 for m in responses)
        by_id = {r["id"]: r for r in conn.function_responses}
        assert set(by_id) == {c.call_id for c in calls}
        for call in calls:
            assert by_id[call.call_id]["name"] == call.name
        assert by_id[calls[0].call_id]["response"] == {"output": {"city": "Oslo", "sky": "clear"}}
        # create_response is a no-op on Gemini: nothing but audio and the two tool responses was sent
        assert set(conn.kinds()) == {"setup", "realtimeInput.audio", "toolResponse"}
        assert any(isinstance(e, AudioDelta) and e.item_id == done.response_id for e in pump.seen)
    finally:
        await pump.stop()


async def test_tool_call_cancellation_cancels_the_tool_and_sends_nothing(fake, http, hello_16k):
    registry = ToolRegistry()
    running = asyncio.Event()
    cancelled = asyncio.Event()

    @registry.tool()
    async def slow_lookup(query: str) -> str:
        """Takes a while."""
        running.set()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "found"

    fake.replies.append(Reply(tool_calls=[{"name": "slow_lookup", "args": {"query": "x"}}]))
    pump = await start(fake, http, registry)
    try:
        await stream(pump.runner.session, hello_16k + SILENCE)
        call = await pump.next_of(FunctionCallDone)
        await asyncio.wait_for(running.wait(), 2.0)
        await stream(pump.runner.session, hello_16k[: CHUNK * 10])  # barge-in during the tool call
        cancellation = await pump.next_of(ToolCallCancelled)
        assert cancellation.ids == (call.call_id,)
        await asyncio.wait_for(cancelled.wait(), 1.0)
        await pump.next_of(ResponseDone, where=lambda e: e.status == "cancelled")
        await asyncio.sleep(0.2)
        assert fake.last.function_responses == []
        assert not [m for _, m in fake.last.messages if "toolResponse" in m]
    finally:
        await pump.stop()


async def test_update_context_is_deferred_to_turn_end_applied_once_last_wins(fake, http, hello_16k):
    fake.reply_speed = 3.0
    fake.replies.append(Reply(duration_ms=1500))
    pump = await start(fake, http, ToolRegistry(), RealtimeConfig(instructions="v1"))
    try:
        session = pump.runner.session
        await stream(session, hello_16k + SILENCE)
        await pump.next_of(AudioDelta)
        a = await pump.runner.update_context(RealtimeConfig(instructions="v2"))
        b = await pump.runner.update_context(RealtimeConfig(instructions="v3", voice="Charon"))
        assert a.kind is b.kind is ContextMutationKind.REQUIRES_RESUMPTION
        assert pump.runner.pending_context.instructions == "v3"
        assert len(fake.connections) == 1  # not while the model is talking
        reconnected = await pump.next_of(Reconnected)
        assert reconnected.reason == "context_update"
        assert len(fake.connections) == 2
        first, second = fake.connections
        turn_complete = first.sent_times(lambda m: "turnComplete" in m.get("serverContent", {}))
        assert turn_complete and second.opened_at > turn_complete[0]
        assert second.setup["systemInstruction"]["parts"][0]["text"] == "v3"
        assert second.resumed_from is not None and second.setup["model"] == first.setup["model"]
        assert pump.runner.resumptions == 1 and pump.runner.pending_context is None
        # later idle points do not apply it again
        await stream(session, hello_16k[: CHUNK * 20] + SILENCE)
        await pump.next_of(ResponseDone, where=lambda e: e.status == "completed")
        await asyncio.sleep(0.1)
        assert len(fake.connections) == 2 and pump.runner.resumptions == 1
        assert bytes(second.audio) == hello_16k[: CHUNK * 20] + SILENCE
    finally:
        await pump.stop()


async def test_failed_resumption_is_retried_a_bounded_number_of_times(fake, http, hello_16k):
    pump = await start(fake, http, ToolRegistry(), RealtimeConfig(instructions="v1"), resume_attempts=3, resume_backoff=0.01)
    try:
        session = pump.runner.session
        fake.fail_setups = 100
        await pump.runner.update_context(RealtimeConfig(instructions="v2"))
        await stream(session, hello_16k + SILENCE)
        await pump.next_of(ResponseDone)
        await fake.wait_for(lambda: len(fake.connections) == 4, 3.0)
        await asyncio.sleep(0.2)
        assert len(fake.connections) == 4  # the original plus three attempts, no more
        assert pump.runner.resumptions == 0 and pump.runner.pending_context is None
        # the session still works on its original connection
        fake.fail_setups = 0
        await stream(session, hello_16k[: CHUNK * 20] + SILENCE)
        await pump.next_of(ResponseDone, where=lambda e: e.status == "completed")
        assert session.is_connected and len(fake.connections) == 4
    finally:
        await pump.stop()
