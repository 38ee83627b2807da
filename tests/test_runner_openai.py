"""RealtimeRunner driving tool calls on an OpenAI session against the fake server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from peers import conformance
from peers.fake_openai import FakeOpenAIServer, validate_client_event

from telephony_agent.realtime import events as ev
from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.realtime.runner import RealtimeRunner
from telephony_agent.realtime.tools import ToolRegistry, ToolResult
from telephony_agent.realtime.types import RealtimeConfig

KEY = "sk-test-key"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def registry() -> ToolRegistry:
    tools = ToolRegistry()

    @tools.tool()
    async def get_weather(city: str) -> dict:
        """The weather in a city."""
        await asyncio.sleep(0.05)
        return {"city": city, "weather": "sunny"}

    @tools.tool()
    async def get_time(zone: str = "UTC") -> str:
        """The time in a zone."""
        await asyncio.sleep(0.02)
        return f"12:00 {zone}"

    @tools.tool()
    async def slow_lookup(q: str) -> str:
        """Never finishes in time."""
        await asyncio.sleep(30)
        return q

    @tools.tool()
    async def broken(q: str) -> str:
        """Always fails."""
        raise ValueError("database unavailable")

    @tools.tool()
    async def end_call(reason: str = "") -> ToolResult:
        """Hang up."""
        return ToolResult({"ok": True}, respond=False)

    return tools


async def run_until(runner: RealtimeRunner, n_done: int, timeout: float = 5.0) -> list[ev.ServerEvent]:
    """Events through the runner until the `n_done`-th ResponseDone."""
    out: list[ev.ServerEvent] = []

    async def go() -> None:
        done = 0
        async for event in runner.events():
            out.append(event)
            if isinstance(event, ev.ResponseDone):
                done += 1
                if done >= n_done:
                    return

    await asyncio.wait_for(go(), timeout)
    return out


async def start(server: FakeOpenAIServer, http: aiohttp.ClientSession, **runner_kw: object):
    tools = registry()
    session = await OpenAIRealtimeModel(KEY, url=server.url, http=http).connect(
        RealtimeConfig(instructions="Use tools.", tools=tools.definitions))
    return session, RealtimeRunner(session, tools, **runner_kw)  # type: ignore[arg-type]


def tool_outputs(server: FakeOpenAIServer) -> dict[str, dict]:
    return {m["item"]["call_id"]: json.loads(m["item"]["output"]) if m["item"]["output"].startswith("{")
            else m["item"]["output"]
            for m in server.received if m["type"] == "conversation.item.create"
            and m["item"]["type"] == "function_call_output"}


def calls_by_name(server: FakeOpenAIServer) -> dict[str, str]:
    return {m["name"]: m["call_id"] for conn in server.connections for m in conn.sent
            if m["type"] == "response.function_call_arguments.done"}


async def test_parallel_calls_answered_then_one_response(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_function_calls([("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})])
    server.queue_reply("It is sunny in Paris and noon.")
    checked = conformance.CHECKED["openai"]
    session, runner = await start(server, http)
    try:
        await session.send_text("Weather and time in Paris?")
        events = await run_until(runner, 2)
    finally:
        await runner.aclose()
        await session.close()
    assert sum(isinstance(e, ev.FunctionCallDone) for e in events) == 2
    calls = calls_by_name(server)
    assert tool_outputs(server) == {calls["get_weather"]: {"city": "Paris", "weather": "sunny"},
                                    calls["get_time"]: "12:00 CET"}
    types = server.received_types()
    # text item + response.create, then both outputs, then exactly one response.create.
    assert types[1:] == ["conversation.item.create", "response.create", "conversation.item.create",
                         "conversation.item.create", "response.create"]
    assert not server.errors_sent
    assert isinstance(events[-1], ev.ResponseDone) and events[-1].status == "completed"
    assert any(isinstance(e, ev.AudioDelta) for e in events[events.index(next(
        e for e in events if isinstance(e, ev.ResponseDone))):])
    assert conformance.CHECKED["openai"] >= checked + 6  # every message was validated against the SDK


async def test_timeout_and_exception_become_error_outputs(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_function_calls([("slow_lookup", {"q": "x"}), ("broken", {"q": "y"}), ("nonexistent", {})])
    session, runner = await start(server, http, tool_timeout=0.2)
    try:
        await session.send_text("Look it up.")
        await run_until(runner, 2)
    finally:
        await runner.aclose()
        await session.close()
    calls = calls_by_name(server)
    outputs = tool_outputs(server)
    assert outputs[calls["slow_lookup"]] == {"error": "timed out after 0.2s"}
    assert outputs[calls["broken"]] == {"error": "ValueError: database unavailable"}
    assert "unknown tool" in outputs[calls["nonexistent"]]["error"]
    assert server.received_types().count("response.create") == 2
    assert runner.tool_errors == 3


async def test_respond_false_sends_no_response_create(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_function_calls([("end_call", {"reason": "done"})])
    session, runner = await start(server, http)
    try:
        await session.send_text("Goodbye.")
        await run_until(runner, 1)
        await server.wait_for(lambda: tool_outputs(server))
        await asyncio.sleep(0.1)
        assert not runner.busy
    finally:
        await runner.aclose()
        await session.close()
    assert server.received_types().count("response.create") == 1  # only the one after the text
    assert list(tool_outputs(server).values()) == [{"ok": True}]


async def test_tool_outputs_survive_a_reconnect(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    """The session expires while a tool runs: its output goes to the new connection, after the call item."""
    server.queue_function_calls([("get_weather", {"city": "Oslo"})])
    tools = registry()

    @tools.tool()
    async def get_weather(city: str) -> dict:
        await asyncio.sleep(0.3)
        return {"city": city, "weather": "snow"}

    session = await OpenAIRealtimeModel(KEY, url=server.url, http=http, reconnect_backoff=0.05).connect(
        RealtimeConfig(tools=tools.definitions))
    runner = RealtimeRunner(session, tools)
    try:
        await session.send_text("Weather in Oslo?")
        events = await run_until(runner, 1)
        await server.expire()
        events += await run_until(runner, 1)
    finally:
        await runner.aclose()
        await session.close()
    assert ev.Reconnected("session_expired") in events
    second = server.connections[1]
    created = [m["item"] for m in second.received if m["type"] == "conversation.item.create"]
    assert [i["type"] for i in created] == ["message", "function_call", "function_call_output"]
    assert json.loads(created[-1]["output"]) == {"city": "Oslo", "weather": "snow"}
    assert [m["type"] for m in second.received][-1] == "response.create"
    assert [e["code"] for e in server.errors_sent] == ["session_expired"]


def test_fake_server_conformance_check_catches_beta_shapes() -> None:
    assert validate_client_event({"type": "session.update", "session": {"type": "realtime",
                                  "audio": {"input": {"format": "pcm16"}}}}) is not None
    assert validate_client_event({"type": "session.update", "session": {"audio": {}}}) is not None
    assert validate_client_event({"type": "input_audio_buffer.append"}) is not None
    assert validate_client_event({"type": "response.create"}) is None


async def test_goodbye_then_end_call_in_one_response(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_reply("Thanks for calling, goodbye!", then_calls=[("end_call", {"reason": "done"})])
    session, runner = await start(server, http)
    try:
        await session.send_text("Bye.")
        events = await run_until(runner, 1)
        await server.wait_for(lambda: tool_outputs(server))
        await asyncio.sleep(0.05)
    finally:
        await runner.aclose()
        await session.close()
    kinds = [type(e) for e in events]
    assert kinds.index(ev.AudioDone) < kinds.index(ev.FunctionCallDone) < kinds.index(ev.ResponseDone)
    assert server.received_types().count("response.create") == 1
