"""Playout confirmation end to end, judged by an independent Twilio caller through the real server.

The caller (`peers/independent_twilio.py`) shares no code with the agent or its own simulator.
With mark echoes off, the agent must fall back to pacing by the clock: the caller hears (nearly)
everything it hears with echoes on, at real time. A leg that goes silent with its socket open is
ended within AGENT_LEG_TIMEOUT_SECONDS + 2 s and its provider session closed.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from agent_server import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    PUBLIC_URL,
    running_agent,
    test_settings,
)
from peers.fake_openai import FakeOpenAIServer
from peers.fake_twilio_rest import FakeTwilioRest
from peers.independent_twilio import IndependentTwilioCall

from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.testing.speech import speech_pcm16, speech_ulaw

API_KEY = "sk-test-key"
GREETING = (
    "Hello and thank you for calling the Riverside library. Our opening hours are nine to six on weekdays "
    "and ten to four on Saturdays. How can I help you today?"
)


@pytest.fixture
async def openai_server():
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def twilio_rest():
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        yield rest


async def _greeting_as_heard(openai_server: FakeOpenAIServer, rest: FakeTwilioRest, *, echo_marks: bool
                             ) -> tuple[float, float, float, int]:
    """(ms heard, ms of it not silence, seconds from first to last audio, marks echoed)."""
    openai_server.queue_reply(GREETING, speech_pcm16(GREETING, 8000))
    settings = test_settings(greeting=GREETING, twilio_api_url=rest.base_url)
    model = OpenAIRealtimeModel(API_KEY, url=openai_server.url)
    async with (
        running_agent(settings, model) as agent,
        IndependentTwilioCall(agent.base_url, PUBLIC_URL, AUTH_TOKEN, echo_marks=echo_marks) as call,
    ):
        await call.place()
        await call.connect()
        await call.wait_quiet(2.0, timeout=40)
        assert call.clears == 0 and not call.closed
        start = call.heard_at[0][0] - call.heard_at[0][1] / 8000
        span = call.heard_at[-1][0] - start
        return call.heard_ms, call.audible_ms(), span, call.marks_echoed


async def test_without_mark_echoes_the_caller_still_hears_the_agent_at_real_time(
    openai_server: FakeOpenAIServer, twilio_rest: FakeTwilioRest
) -> None:
    # The two calls run side by side (each its own server and fake provider): the wall time of one.
    async with FakeOpenAIServer(api_key=API_KEY) as other_server:
        (heard_echo, audible_echo, span_echo, echoed), (heard, audible, span, none) = await asyncio.gather(
            _greeting_as_heard(openai_server, twilio_rest, echo_marks=True),
            _greeting_as_heard(other_server, twilio_rest, echo_marks=False),
        )
    expected_ms = len(speech_pcm16(GREETING, 8000)) / 16
    assert echoed > 50 and none == 0
    assert heard_echo == pytest.approx(expected_ms, abs=100)
    assert heard >= 0.9 * heard_echo and audible >= 0.9 * audible_echo
    # Real time: the greeting plays in its own length, plus at most the one fallback pause
    # (about a second) and scheduling slack on a loaded machine.
    assert span_echo <= heard_echo / 1000 + 2.0
    assert heard / 1000 - 0.1 <= span <= heard / 1000 + 2.5


async def test_a_silent_leg_is_ended_and_its_provider_session_closed(
    openai_server: FakeOpenAIServer, twilio_rest: FakeTwilioRest
) -> None:
    openai_server.queue_reply("Hello.", speech_pcm16("Hello, how can I help?", 8000))
    timeout_s = 2.0
    settings = test_settings(greeting="Hello.", leg_timeout_seconds=timeout_s, twilio_api_url=twilio_rest.base_url)
    model = OpenAIRealtimeModel(API_KEY, url=openai_server.url)
    loop = asyncio.get_running_loop()
    async with (
        running_agent(settings, model) as agent,
        IndependentTwilioCall(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call,
    ):
        await call.place()
        await call.connect()
        await call.wait_quiet(0.5, timeout=20)
        assert agent.state.calls and not call.closed
        call.go_silent()  # no media, no marks; the socket stays open
        silent_at = loop.time()
        await call.wait(lambda: call.closed, timeout_s + 2.0, "the agent to end the silent leg")
        ended_after = (call.closed_at or loop.time()) - silent_at
        assert timeout_s - 0.1 <= ended_after <= timeout_s + 2.0
        conn = openai_server.current
        await openai_server.wait_for(lambda: conn.ws.closed, timeout=1.0)
        await agent.wait_no_calls(timeout=2.0)
        hangups = twilio_rest.requests_for(call.call_sid)
        assert hangups and hangups[0].form == {"Status": "completed"}


async def test_barge_in_without_mark_echoes_truncates_at_what_was_heard(
    openai_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="telephony_agent")
    openai_server.queue_reply(GREETING, speech_pcm16(GREETING, 8000))
    model = OpenAIRealtimeModel(API_KEY, url=openai_server.url)
    async with (
        running_agent(test_settings(greeting=GREETING), model) as agent,
        IndependentTwilioCall(agent.base_url, PUBLIC_URL, AUTH_TOKEN, echo_marks=False) as call,
    ):
        await call.place()
        await call.connect()
        await call.wait(lambda: call.heard_ms > 3000, 20, "3 s of the greeting")  # well past the fallback
        call.speak(speech_ulaw("Sorry, can I ask something else?"))
        await call.wait(lambda: call.clears > 0, 10, "the agent to clear its audio")
        await openai_server.wait_for(lambda: bool(openai_server.truncates), timeout=5)
        truncate = openai_server.truncates[0]["audio_end_ms"]
        # The pacing clock's played position matches what this caller had heard when the agent
        # sent `clear` (it logs that at once): what it heard by the time `clear` came, less what
        # played while `clear` was on its way (on a busy machine, tens of milliseconds).
        sent = next(r.created for r in caplog.records
                    if r.getMessage().startswith(("caller sound", "barge-in")))
        in_transit_ms = (call.clear_wall[0] - sent) * 1000
        assert -5 <= in_transit_ms <= 1000
        heard_at_send = call.heard_at_clear[0] - in_transit_ms
        assert abs(truncate - heard_at_send) <= 40, (truncate, call.heard_at_clear, in_transit_ms)
        assert call.marks_echoed == 0
