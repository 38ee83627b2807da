"""Runaway tools and failed responses, against fake OpenAI and Gemini servers that misbehave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from peers.fake_gemini import FakeGemini
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime import events as ev
from telephony_agent.realtime.providers.gemini import GeminiLiveModel
from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.realtime.runner import RealtimeRunner
from telephony_agent.realtime.tools import ToolRegistry
from telephony_agent.realtime.types import RealtimeConfig


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def failing_tools() -> tuple[ToolRegistry, list[int]]:
    tools = ToolRegistry()
    runs: list[int] = []

    @tools.tool()
    async def lookup(attempt: int = 0) -> str:
        """Look something up (always fails, so a model may keep retrying)."""
        runs.append(attempt)
        raise RuntimeError("backend unavailable")

    return tools, runs


async def collect(runner: RealtimeRunner, until: type, timeout: float = 8.0) -> list[ev.ServerEvent]:
    out: list[ev.ServerEvent] = []

    async def go() -> None:
        async for event in runner.events():
            out.append(event)
            if isinstance(event, until) and (not isinstance(event, ev.ToolRoundsCapped) or event.stopped):
                return

    await asyncio.wait_for(go(), timeout)
    return out


def outputs(server: FakeOpenAIServer) -> list[dict]:
    return [json.loads(m["item"]["output"]) for m in server.received
            if m["type"] == "conversation.item.create" and m["item"]["type"] == "function_call_output"]


async def test_openai_tool_loop_is_capped_and_the_model_told_why(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(api_key="k") as server:
        server.tool_loop = "lookup"
        tools, runs = failing_tools()
        session = await OpenAIRealtimeModel("k", url=server.url, http=http).connect(
            RealtimeConfig(tools=tools.definitions))
        runner = RealtimeRunner(session, tools, max_tool_rounds=5)
        try:
            await session.send_text("Look it up.")
            events = await collect(runner, ev.ToolRoundsCapped)
            await asyncio.sleep(0.3)  # nothing more is asked of the model
        finally:
            await runner.aclose()
            await session.close()
    capped = [e for e in events if isinstance(e, ev.ToolRoundsCapped)]
    assert capped == [ev.ToolRoundsCapped(6, stopped=False), ev.ToolRoundsCapped(7, stopped=True)]
    assert len(runs) == 5  # the tool ran five rounds, no more
    sent = outputs(server)
    assert len(sent) == 6
    assert "backend unavailable" in sent[4]["error"]
    assert "5 rounds of tool calls" in sent[5]["error"] and "Do not call any tool" in sent[5]["error"]
    assert server.responses_started == 7  # the first, five after results, one after the refusal
    assert runner.rounds_capped == 2


async def test_the_budget_starts_again_when_the_caller_speaks(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(api_key="k") as server:
        tools, runs = failing_tools()
        for _ in range(4):
            server.queue_function_calls([("lookup", {})])
        session = await OpenAIRealtimeModel("k", url=server.url, http=http).connect(
            RealtimeConfig(tools=tools.definitions))
        runner = RealtimeRunner(session, tools, max_tool_rounds=2)
        try:
            await session.send_text("Look it up.")
            seen: list[ev.ServerEvent] = []

            async def go() -> None:
                async for event in runner.events():
                    seen.append(event)
                    if isinstance(event, ev.FunctionCallDone) and runner.rounds == 2:
                        runner.caller_turn()  # e.g. the caller spoke between rounds
                    if sum(isinstance(e, ev.FunctionCallDone) for e in seen) == 4:
                        return

            await asyncio.wait_for(go(), 8.0)
            await asyncio.sleep(0.2)
        finally:
            await runner.aclose()
            await session.close()
    assert not any(isinstance(e, ev.ToolRoundsCapped) for e in seen)
    assert len(runs) == 4


async def test_a_tool_call_after_the_call_ended_is_dropped(http: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(api_key="k") as server:
        tools, runs = failing_tools()
        server.queue_function_calls([("lookup", {})])
        session = await OpenAIRealtimeModel("k", url=server.url, http=http).connect(
            RealtimeConfig(tools=tools.definitions))
        runner = RealtimeRunner(session, tools)
        runner.close()  # the caller hung up
        try:
            await session.send_text("Look it up.")
            events = await collect(runner, ev.ResponseDone)
            await asyncio.sleep(0.2)
        finally:
            await runner.aclose()
            await session.close()
    assert any(isinstance(e, ev.FunctionCallDone) for e in events)
    assert runs == [] and outputs(server) == []
    assert runner.dropped_after_close == 1
    assert server.responses_started == 1


@pytest.mark.parametrize(("status", "reason"), [("failed", "server_error"), ("incomplete", "max_output_tokens")])
async def test_openai_failed_and_incomplete_responses_are_typed(
    http: aiohttp.ClientSession, status: str, reason: str
) -> None:
    async with FakeOpenAIServer(api_key="k") as server:
        server.fail_responses = 1
        server.failure_status = status
        session = await OpenAIRealtimeModel("k", url=server.url, http=http).connect(RealtimeConfig())
        runner = RealtimeRunner(session, ToolRegistry())
        try:
            await session.send_text("Hello?")
            events = await collect(runner, ev.ResponseFailed)
        finally:
            await runner.aclose()
            await session.close()
    done = [e for e in events if isinstance(e, ev.ResponseDone)]
    failed = events[-1]
    assert isinstance(failed, ev.ResponseFailed)
    assert done[-1].status == status and failed.status == status and failed.reason == reason
    assert failed.response_id == done[-1].response_id
    if status == "failed":
        assert "server had an error" in failed.message


async def test_gemini_malformed_function_call_turn_is_a_failed_response(http: aiohttp.ClientSession) -> None:
    async with FakeGemini(api_key="k") as fake:
        fake.fail_replies = 1
        session = await GeminiLiveModel("k", url=fake.url, http=http, setup_timeout=3.0).connect(RealtimeConfig())
        runner = RealtimeRunner(session, ToolRegistry())
        try:
            await session.send_text("Hello?")
            events = await collect(runner, ev.ResponseFailed)
        finally:
            await runner.aclose()
            await session.close()
    failed = events[-1]
    assert isinstance(failed, ev.ResponseFailed)
    assert failed.status == "failed" and failed.reason == "malformed_function_call"
    done = [e for e in events if isinstance(e, ev.ResponseDone)]
    assert done[-1].status == "failed"


async def test_gemini_tool_loop_is_capped(http: aiohttp.ClientSession) -> None:
    async with FakeGemini(api_key="k") as fake:
        fake.tool_loop = "lookup"
        tools, runs = failing_tools()
        session = await GeminiLiveModel("k", url=fake.url, http=http, setup_timeout=3.0).connect(
            RealtimeConfig(tools=tools.definitions))
        runner = RealtimeRunner(session, tools, max_tool_rounds=5)
        try:
            await session.send_text("Look it up.")
            events = await collect(runner, ev.ToolRoundsCapped)
            await asyncio.sleep(0.3)
        finally:
            await runner.aclose()
            await session.close()
    assert [e for e in events if isinstance(e, ev.ToolRoundsCapped)][-1] == ev.ToolRoundsCapped(7, stopped=True)
    assert len(runs) == 5
    assert fake.tool_loop_rounds == 7  # the fake got no answer to its seventh call, so it stopped
    responses = [m for _, m in fake.last.messages if "toolResponse" in m]
    assert len(responses) == 6
