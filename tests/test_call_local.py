"""Whole calls on the offline local engine: real speech in, recognised, scripted answer spoken back."""

from __future__ import annotations

import pytest
from agent_server import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from local_helpers import CALLER_VOICE
from peers.fake_twilio_rest import FakeTwilioRest

from telephony_agent.realtime.providers.local import LocalRealtimeModel
from telephony_agent.testing.speech import speech_ulaw
from telephony_agent.testing.twilio_caller import TwilioCaller

# Whole calls with the local engine in real time (speech recognition and synthesis on the CPU): one
# pytest-xdist worker runs them all, one after the other, so no two of them compete for the cores.
pytestmark = pytest.mark.xdist_group("local_engine")

# The greeting has a pause between its sentences: only a longer silence means it is over, and
# longer than a stall in playback on a busy machine (CI runs several test workers per core).
GREETING_GAP_MS = 2000


def ulaw_speech(text: str) -> bytes:
    return speech_ulaw(text, **CALLER_VOICE)


async def test_greeting_then_a_question_answered() -> None:
    settings = test_settings()  # the local engine speaks its script's greeting first
    async with running_agent(settings, LocalRealtimeModel()) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_silence_after_audio(silence_ms=GREETING_GAP_MS, min_heard_ms=1500, timeout=15)
            greeting_ms = call.heard_ms
            await call.speak(ulaw_speech("What are your opening hours?"))
            await call.wait_for(lambda: call.heard_ms > greeting_ms + 2000, timeout=20, what="answer")
            await call.wait_silence_after_audio(silence_ms=400, min_heard_ms=1, timeout=20)
            bridge = next(iter(agent.state.calls.values()))
            caller_lines = [text for who, text in bridge.stats.transcript if who == "caller"]
            assert any("opening hours" in line for line in caller_lines), bridge.stats.transcript
            agent_lines = " ".join(text for who, text in bridge.stats.transcript if who == "agent").lower()
            assert "monday to friday" in agent_lines


async def test_transfer_intent_dials_sales() -> None:
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        settings = test_settings(
            twilio_api_url=rest.base_url, transfer_allowlist=["sales=+15551230000", "support=+15551230001"]
        )
        async with running_agent(settings, LocalRealtimeModel()) as agent:
            async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
                rest.register_call(call)
                await call.place()
                await call.connect()
                await call.wait_silence_after_audio(silence_ms=GREETING_GAP_MS, min_heard_ms=1500, timeout=15)
                greeting_ms = call.heard_ms
                bridge = agent.state.calls[call.call_sid]
                await call.speak(ulaw_speech("I want to talk to sales."))
                await rest.wait_for_request(1, timeout=25)
                assert "<Dial>+15551230000</Dial>" in rest.requests[0].form["Twiml"]
                assert call.heard_ms - greeting_ms > 1500  # "Sure, transferring you to sales now." was heard first
                bridge_lines = [text for who, text in bridge.stats.transcript if who == "agent"]
                assert bridge_lines[-1] == "Sure, transferring you to sales now."
            await agent.wait_no_calls()


async def test_dtmf_menu_choice_transfers_to_support() -> None:
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        settings = test_settings(twilio_api_url=rest.base_url, transfer_allowlist=["support=+15551230001"])
        async with running_agent(settings, LocalRealtimeModel()) as agent:
            async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
                rest.register_call(call)
                await call.place()
                await call.connect()
                await call.wait_for(lambda: agent.state.calls, timeout=5, what="bridge")
                await call.send_dtmf("2")
                await rest.wait_for_request(1, timeout=20)
                assert "<Dial>+15551230001</Dial>" in rest.requests[0].form["Twiml"]
            await agent.wait_no_calls()


@pytest.mark.parametrize("question", ["What is your address?"])
async def test_barge_in_stops_the_engine_and_the_next_question_is_answered(question: str) -> None:
    async with running_agent(test_settings(), LocalRealtimeModel()) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            # The greeting first: a question over its first second depends on when it starts (the
            # detector does not trust an onset before the line's timeline settles), which is the
            # machine's speed, not what this test is about.
            await call.wait_silence_after_audio(silence_ms=GREETING_GAP_MS, min_heard_ms=1500, timeout=15)
            greeting_ms = call.heard_ms
            await call.speak(ulaw_speech("What are your opening hours?"))
            await call.wait_heard(greeting_ms + 1200, timeout=20)  # into the answer, then over it
            await call.speak(ulaw_speech(question))
            await call.wait_clear(1, timeout=10)
            cleared_at = call.heard_ms
            await call.wait_for(lambda: call.heard_ms > cleared_at + 1500, timeout=20, what="second answer")
            await call.wait_silence_after_audio(silence_ms=400, min_heard_ms=1, timeout=20)
            bridge = next(iter(agent.state.calls.values()))
            assert bridge.stats.barge_ins >= 1
            agent_lines = " ".join(text for who, text in bridge.stats.transcript if who == "agent").lower()
            assert "high street" in agent_lines
