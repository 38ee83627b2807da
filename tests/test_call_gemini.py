"""Whole calls through Gemini Live: fake Twilio caller -> the real server -> fake Gemini, over loopback.

Gemini is the transcoding path: mu-law 8 kHz -> PCM16 16 kHz in, PCM16 24 kHz -> mu-law 8 kHz out.
"""

from __future__ import annotations

import numpy as np
import pytest
from agent_server import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_gemini import FakeGemini, Reply
from peers.fake_twilio_rest import FakeTwilioRest

from telephony_agent.realtime.providers.gemini import GeminiLiveModel
from telephony_agent.testing.speech import speech_pcm16, speech_ulaw
from telephony_agent.testing.twilio_caller import TwilioCaller
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

API_KEY = "test-key"



@pytest.fixture
async def gemini():
    async with FakeGemini(api_key=API_KEY) as server:
        yield server


def model_for(server: FakeGemini) -> GeminiLiveModel:
    return GeminiLiveModel(API_KEY, url=server.url)


def correlation(a: bytes, b: bytes) -> float:
    x = np.frombuffer(a, "<i2").astype(np.float64)
    y = np.frombuffer(b, "<i2").astype(np.float64)
    n = min(len(x), len(y))
    x, y = x[:n] - x[:n].mean(), y[:n] - y[:n].mean()
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


async def test_question_gets_an_answer_through_both_resamplers(gemini: FakeGemini) -> None:
    answer_8k = speech_pcm16("We are open from nine to five.", 8000)
    answer_24k = speech_pcm16("We are open from nine to five.", 24000)
    gemini.replies.append(Reply(audio=answer_24k, transcript="We are open from nine to five."))
    async with running_agent(test_settings(), model_for(gemini)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            question = speech_pcm16("What are your opening hours?", 8000)
            await call.speak(pcm16_to_ulaw(question))
            # all but the margin first: a playback stall on a busy machine is not the answer's end
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=len(answer_24k) / 48 - 80, timeout=15)
            assert call.heard_ms == pytest.approx(len(answer_24k) / 48, abs=80)
            # What the caller heard is the model's speech, not noise: it matches the 8 kHz rendering.
            heard = ulaw_to_pcm16(bytes(call.heard_ulaw))
            offset = int(np.argmax(np.abs(np.frombuffer(heard, "<i2")) > 500)) * 2
            ref_offset = int(np.argmax(np.abs(np.frombuffer(answer_8k, "<i2")) > 500)) * 2
            assert correlation(heard[offset:], answer_8k[ref_offset:]) > 0.8
            # And the model got the caller at 16 kHz, declared in the MIME type.
            conn = gemini.last
            assert len(conn.audio) >= len(question) * 2 * 0.9
            mimes = {m["realtimeInput"]["audio"]["mimeType"] for _, m in conn.messages if "audio" in m.get("realtimeInput", {})}
            assert mimes == {"audio/pcm;rate=16000"}


async def test_barge_in_on_interrupted_clears_twilio(gemini: FakeGemini) -> None:
    gemini.replies.append(Reply(audio=speech_pcm16("Let me tell you all about our opening hours and more. " * 3, 24000)))
    async with running_agent(test_settings(), model_for(gemini)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_heard(1000, timeout=15)
            call.say(speech_ulaw("Stop, wait a moment."))
            await call.wait_clear(1, timeout=10)  # the agent pauses at the onset...
            bridge = next(iter(agent.state.calls.values()))
            # ...and the caller's speech, once long enough not to be a backchannel, is a barge-in
            await call.wait_for(lambda: bridge.stats.barge_ins == 1, timeout=5, what="barge-in")
            heard_at_clear = call.heard_ms
            await call.wait_silence_after_audio(silence_ms=200, min_heard_ms=1, timeout=10)
            # Nothing of the interrupted turn is played after the clear.
            assert call.heard_ms - heard_at_clear < 60 or gemini.last.conversation.turns >= 1
            # Gemini's messages (binary frames) were translated where the provider socket read them
            conn = bridge.session._conn  # type: ignore[union-attr, attr-defined]
            assert conn is not None and conn.transport.reader is not None
            assert conn.transport.reader.handled > 20
            assert conn.transport.reader.split > 20  # binary frames too, cut from the bytes read


async def test_go_away_resumes_without_the_caller_noticing(gemini: FakeGemini) -> None:
    gemini.replies.append(Reply(audio=speech_pcm16("Hello there.", 24000)))
    gemini.replies.append(Reply(audio=speech_pcm16("Still here.", 24000)))
    async with running_agent(test_settings(), model_for(gemini)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("Hello?"))
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=500, timeout=15)
            first = call.heard_ms
            await gemini.go_away(time_left=1.0, close_after=1.0)
            await gemini.wait_for(
                lambda: len(gemini.connections) >= 2 and gemini.connections[1].setup is not None, timeout=10
            )
            assert gemini.connections[1].setup["sessionResumption"].get("handle")
            await call.speak(speech_ulaw("Are you still there?"))
            await call.wait_for(lambda: call.heard_ms > first + 500, timeout=15, what="second answer")
            bridge = next(iter(agent.state.calls.values()))
            assert bridge.stats.reconnects == 1
            assert not call.closed


async def test_end_call_tool_hangs_up(gemini: FakeGemini) -> None:
    gemini.replies.append(Reply(tool_calls=[{"name": "end_call", "args": {"reason": "done"}}]))
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        settings = test_settings(twilio_api_url=rest.base_url)
        async with running_agent(settings, model_for(gemini)) as agent:
            async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
                rest.register_call(call)
                await call.place()
                await call.connect()
                call.say(speech_ulaw("Goodbye."))  # the agent may hang up before the trailing silence is sent
                await rest.wait_for_request(1, timeout=15)
                assert rest.requests[0].form == {"Status": "completed"}
                responses = gemini.last.function_responses
                assert responses and responses[0]["name"] == "end_call" and responses[0].get("id")
                await call.wait_closed(timeout=5)
            await agent.wait_no_calls()


async def test_greeting_is_heard(gemini: FakeGemini) -> None:
    greeting = speech_pcm16("Hello, thanks for calling.", 24000)
    gemini.replies.append(Reply(audio=greeting, transcript="Hello, thanks for calling."))
    settings = test_settings(greeting="Hello, thanks for calling.")
    async with running_agent(settings, model_for(gemini)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=len(greeting) / 48 - 80, timeout=10)
            assert call.heard_ms == pytest.approx(len(greeting) / 48, abs=80)
            setup = gemini.last.setup
            assert "Hello, thanks for calling." in setup["systemInstruction"]["parts"][0]["text"]
            assert gemini.last.texts  # the nudge that lets the agent speak first
