"""Whole calls: fake Twilio caller -> the real server -> fake OpenAI Realtime, over loopback."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
from agent_server import ACCOUNT_SID, AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_openai import FakeOpenAIServer
from peers.fake_twilio_rest import FakeTwilioRest

from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel, OpenAIRealtimeSession
from telephony_agent.realtime.types import AudioChunk
from telephony_agent.telephony.bridge import AUDIO_BURST_S, AUDIO_RATE, KEY_BURST, KEYS_PER_S
from telephony_agent.telephony.twilio.media_socket import TwilioMediaSocket
from telephony_agent.testing.speech import speech_pcm16, speech_ulaw
from telephony_agent.testing.twilio_caller import HandshakeRejected, TwilioCaller

API_KEY = "sk-test-key"


@pytest.fixture
async def openai_server():
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def twilio_rest():
    async with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as rest:
        yield rest


def model_for(server: FakeOpenAIServer, audio: str = "pcmu") -> OpenAIRealtimeModel:
    return OpenAIRealtimeModel(API_KEY, url=server.url, audio=audio)


async def test_greeting_is_heard(openai_server: FakeOpenAIServer) -> None:
    openai_server.queue_reply("Hello, thanks for calling Acme.", speech_pcm16("Hello, thanks for calling Acme.", 8000))
    settings = test_settings(greeting="Hello, thanks for calling Acme.")
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1000, timeout=10)
            assert call.heard_ms >= 1000
            update = next(m for m in openai_server.received if m["type"] == "session.update")
            assert "Hello, thanks for calling Acme." in update["session"]["instructions"]
            assert not call.violations


@pytest.mark.parametrize("audio", ["pcmu", "pcm"])
async def test_question_gets_an_answer(openai_server: FakeOpenAIServer, audio: str) -> None:
    answer = speech_pcm16("We are open from nine to five.", 8000)
    openai_server.queue_reply("We are open from nine to five.", answer)
    async with running_agent(test_settings(), model_for(openai_server, audio)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("What are your opening hours?"))
            expected_ms = len(answer) / 16  # PCM16 8 kHz: 16 bytes per ms
            # all but the margin first: a playback stall on a busy machine is not the answer's end
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=expected_ms - 80, timeout=15)
            assert call.heard_ms == pytest.approx(expected_ms, abs=80)
            assert openai_server.speech_starts >= 1
            assert not call.violations


@pytest.mark.parametrize("link_delay_s", [0.0, 0.04], ids=["loopback", "a carrier 40 ms away"])
async def test_barge_in_clears_and_truncates_at_what_was_heard(openai_server: FakeOpenAIServer, link_delay_s: float) -> None:
    """The truncate says how much the caller heard before the `clear` reached them. A carrier's
    marks come back a round trip late; by them alone, the model was told about 90 ms too little."""
    long_answer = speech_pcm16(
        "Our opening hours are nine to five on weekdays, ten to four on Saturdays, and we are closed on Sundays "
        "and on public holidays, except in December when we open late.",
        8000,
    )
    openai_server.queue_reply("long answer", long_answer)
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN, link_delay_s=link_delay_s) as call:
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_heard(1500, timeout=15)
            call.say(speech_ulaw("Sorry, stop, I have another question."))
            await call.wait_clear(1, timeout=10)
            heard_at_clear = call.heard_ms
            await openai_server.wait_for(lambda: bool(openai_server.truncates), timeout=5)
            truncate = openai_server.truncates[0]
            # the round trip is taken a frame short (never longer than it is): 20 ms more may be missing
            assert abs(truncate["audio_end_ms"] - heard_at_clear) <= (60 if link_delay_s else 40), (truncate, heard_at_clear)
            assert heard_at_clear < len(long_answer) / 16 - 1000  # it really was cut short
            bridge = next(iter(agent.state.calls.values()))
            assert bridge.stats.barge_ins == 1
            assert bridge.stats.clear_latency_ms[0] < 50
            # the caller's frames and mark echoes were handled where the socket read them
            assert isinstance(bridge.leg, TwilioMediaSocket) and bridge.leg.reader is not None
            assert bridge.leg.reader.handled > 100
            assert bridge.leg.reader.split > 100  # cut from the bytes read, not aiohttp's messages
            # and most agent audio where the provider's socket read it, not through the event task
            assert isinstance(bridge.core.session, OpenAIRealtimeSession) and bridge.core.session.handed_now > 20


def appended_audio(server: FakeOpenAIServer) -> bytes:
    return b"".join(base64.b64decode(m["audio"]) for m in server.received if m["type"] == "input_audio_buffer.append")


async def test_caller_audio_a_session_cannot_take_at_once_reaches_it_whole_and_in_order(
    openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session whose send waits (no `send_audio_nowait`): every frame the socket reads becomes work
    its task awaits before the next, so the speech reaches the provider as the caller spoke it."""
    take = OpenAIRealtimeSession.send_audio_nowait
    sends: list[int] = []
    calls = 0

    async def send_audio(self: OpenAIRealtimeSession, chunk: AudioChunk) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05 if calls % 10 == 0 else 0)  # some frames wait longer than a frame lasts
        sends.append(len(chunk.data))
        take(self, chunk)

    monkeypatch.setattr(OpenAIRealtimeSession, "send_audio_nowait", lambda self, chunk: False)
    monkeypatch.setattr(OpenAIRealtimeSession, "send_audio", send_audio)
    speech = speech_ulaw("What are your opening hours?")
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_for(lambda: agent.state.calls, timeout=5, what="bridge")
            await call.speak(speech)
            await call.send_silence(0.2)
            await openai_server.wait_for(lambda: speech in appended_audio(openai_server), timeout=10)
            assert len(sends) > len(speech) // 160


async def test_dtmf_reaches_the_model(openai_server: FakeOpenAIServer) -> None:
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_for(lambda: agent.state.calls, timeout=5, what="bridge")
            await call.send_dtmf("5")
            await openai_server.wait_for(lambda: "The caller pressed 5." in openai_server.user_texts(), timeout=5)
            bridge = next(iter(agent.state.calls.values()))
            assert bridge.stats.dtmf == ["5"]


async def test_a_media_stream_flooding_keys_reaches_the_model_only_at_the_keys_rate(
    openai_server: FakeOpenAIServer,
) -> None:
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            bridge = await call.wait_for(lambda: next(iter(agent.state.calls.values()), None), timeout=5, what="bridge")
            await openai_server.wait_for(lambda: "session.update" in openai_server.received_types())
            started = asyncio.get_running_loop().time()
            for i in range(200):  # `dtmf` messages as fast as the socket takes them
                await call.send_dtmf(str(i % 10))
            await call.wait_for(lambda: len(bridge.stats.dtmf) + bridge.stats.dtmf_dropped == 200, timeout=10,
                                what="every key at the bridge")
            elapsed = asyncio.get_running_loop().time() - started
            passed = len(bridge.stats.dtmf)
            assert KEY_BURST <= passed <= KEY_BURST + KEYS_PER_S * elapsed + 1, (passed, elapsed)
            await openai_server.wait_for(lambda: len(openai_server.user_texts()) == passed, timeout=5)
            assert not call.closed and bridge.stats.dtmf_dropped == 200 - passed
        await agent.wait_no_calls()
    assert agent.state.metrics.keys_dropped._value.get() == 200 - passed  # the call's last flush


async def test_a_media_stream_flooding_audio_reaches_the_model_only_at_real_time(
    openai_server: FakeOpenAIServer,
) -> None:
    """A stream that sends 20 s of speech as fast as the socket takes it: the provider, which bills
    by audio time, gets the burst a network stall may deliver and real time after it, the rest is
    dropped before the detector and counted, and the call goes on."""
    speech = speech_ulaw("I am calling about the order I placed last week, it has not arrived yet.")
    flood = (speech * (20 * 8000 // len(speech) + 1))[: 20 * 8000]
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN, continuous=False) as call:  # the flood only
            await call.place()
            await call.connect()
            bridge = await call.wait_for(lambda: next(iter(agent.state.calls.values()), None), timeout=5, what="bridge")
            await openai_server.wait_for(lambda: "session.update" in openai_server.received_types())
            started = asyncio.get_running_loop().time()
            await call.send_audio(flood, realtime=False)
            frames = len(flood) // 160
            await call.wait_for(lambda: bridge.stats.frames_in + bridge.stats.audio_dropped_ms / 20 >= frames,
                                timeout=15, what="every frame at the bridge")
            elapsed = asyncio.get_running_loop().time() - started
            passed = bridge.stats.frames_in * 0.02
            assert AUDIO_BURST_S - 0.02 <= passed <= AUDIO_BURST_S + AUDIO_RATE * elapsed + 0.02, (passed, elapsed)
            assert bridge.stats.audio_dropped_ms == pytest.approx((20 - passed) * 1000, abs=1)
            await openai_server.wait_for(lambda: len(appended_audio(openai_server)) == bridge.stats.frames_in * 160,
                                         timeout=5)
            burst = int(AUDIO_BURST_S * 8000) - 160
            assert appended_audio(openai_server)[:burst] == flood[:burst]  # the burst: the flood's first seconds, in order
            assert not call.closed
            dropped = bridge.stats.audio_dropped_ms
        await agent.wait_no_calls()
    assert agent.state.metrics.audio_dropped._value.get() == pytest.approx(int(dropped) / 1000)  # the last flush


async def test_end_call_hangs_up_after_the_goodbye_is_heard(
    openai_server: FakeOpenAIServer, twilio_rest: FakeTwilioRest
) -> None:
    goodbye = speech_pcm16("Thanks for calling, goodbye!", 8000)
    openai_server.queue_reply("Thanks for calling, goodbye!", goodbye, then_calls=[("end_call", {"reason": "done"})])
    settings = test_settings(twilio_api_url=twilio_rest.base_url)
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            twilio_rest.register_call(call)
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("That's all, thank you, bye."))
            await twilio_rest.wait_for_request(1, timeout=15)
            hangup = twilio_rest.requests[0]
            assert hangup.form == {"Status": "completed"}
            assert call.heard_ms == pytest.approx(len(goodbye) / 16, abs=80)  # the whole goodbye
            assert hangup.time >= call.last_audio_end - 0.05
            await call.wait_closed(timeout=5)
        await agent.wait_no_calls()


async def test_transfer_dials_the_allowed_target(openai_server: FakeOpenAIServer, twilio_rest: FakeTwilioRest) -> None:
    openai_server.queue_reply(
        "Transferring you to sales.",
        speech_pcm16("Transferring you to sales.", 8000),
        then_calls=[("transfer_call", {"target": "sales"})],
    )
    settings = test_settings(twilio_api_url=twilio_rest.base_url, transfer_allowlist=["sales=+15551230000"])
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            twilio_rest.register_call(call)
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("Can I talk to sales please?"))
            await twilio_rest.wait_for_request(1, timeout=15)
            twiml = twilio_rest.requests[0].form["Twiml"]
            assert "<Dial>+15551230000</Dial>" in twiml
            await call.wait_closed(timeout=5)
        await agent.wait_no_calls()
        assert not [r for r in twilio_rest.requests if r.form.get("Status") == "completed"]


async def test_caller_hangup_mid_response_leaves_nothing_running(openai_server: FakeOpenAIServer) -> None:
    openai_server.queue_reply("long", speech_pcm16("This is a long answer that the caller will not wait for. " * 3, 8000))
    before = set(asyncio.all_tasks())
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.speak(speech_ulaw("Tell me everything."))
            await call.wait_heard(500, timeout=15)
            await call.hangup()
        await agent.wait_no_calls()
        await openai_server.wait_for(lambda: all(c.closed for c in openai_server.connections), timeout=5)
        await asyncio.sleep(0.1)
        leftover = [t for t in asyncio.all_tasks() - before if not t.done() and "call" in t.get_name()]
        assert not leftover
        bridge_tasks = [t for t in asyncio.all_tasks() - before if "ws-writer" in t.get_name() or "tool-" in t.get_name()]
        assert not bridge_tasks, bridge_tasks


async def test_bad_frames_are_survived_and_counted(openai_server: FakeOpenAIServer) -> None:
    openai_server.queue_reply("We are open from nine to five.", speech_pcm16("We are open from nine to five.", 8000))
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.send_raw(b"\x00\x01binary")
            await call.send_raw("{not json")
            await call.send_raw(
                '{"event":"media","streamSid":"' + call.stream_sid + '","sequenceNumber":"99999",'
                '"media":{"track":"inbound","chunk":"99999","timestamp":"99999","payload":"!!!"}}'
            )
            await call.send_raw('{"event":"whatever"}')
            await call.send_raw('{"event":"media","pad":"' + "x" * 70_000 + '"}')
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1000, timeout=15)
            metrics = agent.state.metrics.render().decode()
            for kind in ("binary_frame", "bad_json", "bad_base64", "unknown_event", "oversized"):
                assert f'agent_bad_input_total{{kind="{kind}"}} 1.0' in metrics, kind


async def test_unsigned_requests_are_refused_before_any_provider_session(openai_server: FakeOpenAIServer) -> None:
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            assert await call.place(signature="omit") == 403
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            assert await call.place(signature="corrupt") == 403
        bare = "wss://agent.test/twilio/media"  # not the per-call URL our TwiML gave
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect(stream_url=bare, signature="omit", omit_parameters=True)
            assert await call.wait_closed(timeout=5) == 1008
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect(stream_url=bare, omit_parameters=True)  # signed, but a signature alone is no credential
            assert await call.wait_closed(timeout=5) == 1008
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            with pytest.raises(HandshakeRejected):  # the per-call URL, but a forged signature
                await call.connect(signature="corrupt")
        assert openai_server.connection_attempts == 0


async def test_stream_token_alone_admits_the_call(openai_server: FakeOpenAIServer) -> None:
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect(signature="omit")  # the <Parameter> token from our TwiML still admits it
            await call.wait_for(lambda: agent.state.calls, timeout=10, what="bridge")
            # The bridge is registered before its provider session opens: wait for the connection.
            await call.wait_for(lambda: openai_server.connection_attempts, timeout=10, what="provider session")
            assert openai_server.connection_attempts == 1


async def test_provider_unreachable_caller_hears_apology(twilio_rest: FakeTwilioRest) -> None:
    model = OpenAIRealtimeModel(API_KEY, url="ws://127.0.0.1:9/v1/realtime", reconnect_attempts=1)
    settings = test_settings(twilio_api_url=twilio_rest.base_url)
    async with running_agent(settings, model) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            twilio_rest.register_call(call)
            await call.place()
            await call.connect()
            await call.wait_closed(timeout=20)
            assert call.heard_ms > 3000  # the pre-rendered apology, all of it
            assert twilio_rest.requests and twilio_rest.requests[0].form == {"Status": "completed"}
        await agent.wait_no_calls()


async def test_silent_caller_is_ended_politely_after_the_idle_timeout(
    openai_server: FakeOpenAIServer, twilio_rest: FakeTwilioRest
) -> None:
    from telephony_agent.telephony.assets import prompt_ulaw

    openai_server.queue_reply("Hello?", speech_pcm16("Hello, how can I help?", 8000))
    settings = test_settings(greeting="Hello", idle_timeout_seconds=1.0, twilio_api_url=twilio_rest.base_url)
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            twilio_rest.register_call(call)
            await call.place()
            await call.connect()
            await call.wait_closed(timeout=20)
            greeting_ms = len(speech_pcm16("Hello, how can I help?", 8000)) / 16
            idle_ms = len(prompt_ulaw("idle")) / 8
            assert call.heard_ms == pytest.approx(greeting_ms + idle_ms, abs=100)
            assert twilio_rest.requests[0].form == {"Status": "completed"}
        await agent.wait_no_calls()
    assert agent.state.metrics.calls_ended.labels("idle_timeout")._value.get() == 1


async def test_overlong_call_is_ended_politely(openai_server: FakeOpenAIServer) -> None:
    from telephony_agent.telephony.assets import prompt_ulaw

    settings = test_settings(max_call_seconds=1.0)
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_closed(timeout=20)
            assert call.heard_ms == pytest.approx(len(prompt_ulaw("time_limit")) / 8, abs=100)
        await agent.wait_no_calls()
    assert agent.state.metrics.calls_ended.labels("max_duration")._value.get() == 1


async def test_caller_audio_while_the_provider_connects_is_not_lost(openai_server: FakeOpenAIServer) -> None:
    import base64

    openai_server.session_created_delay = 0.8
    openai_server.queue_reply("We are open from nine to five.", speech_pcm16("We are open from nine to five.", 8000))
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            question = speech_ulaw("What are your opening hours?")
            await call.speak(question)  # starts at once: the provider is still connecting
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1000, timeout=15)
            appended = sum(
                len(base64.b64decode(m["audio"])) for m in openai_server.received if m["type"] == "input_audio_buffer.append"
            )
            assert appended >= len(question)  # every caller frame reached the model
            assert openai_server.speech_starts >= 1


async def test_a_second_stream_for_the_same_call_is_refused(openai_server: FakeOpenAIServer) -> None:
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_for(lambda: agent.state.calls, timeout=5, what="bridge")
            async with TwilioCaller(
                agent.base_url, PUBLIC_URL, AUTH_TOKEN, call_sid=call.call_sid
            ) as replayed:  # the same call sid and token, a second socket
                replayed.twiml, replayed.stream_url = call.twiml, call.stream_url
                replayed.stream_parameters = dict(call.stream_parameters)
                with pytest.raises(HandshakeRejected):  # its per-call URL was spent by the first socket
                    await replayed.connect()
                assert replayed.handshake_status == 403
            assert openai_server.connection_attempts == 1
            assert not call.closed


async def test_input_transcription_setting_reaches_the_session(openai_server: FakeOpenAIServer) -> None:
    settings = test_settings(input_transcription="gpt-4o-mini-transcribe")
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await openai_server.wait_for(lambda: any(m["type"] == "session.update" for m in openai_server.received))
            update = next(m for m in openai_server.received if m["type"] == "session.update")
            assert update["session"]["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}


async def test_call_hooks_add_tools_and_dtmf_handlers(openai_server: FakeOpenAIServer) -> None:
    """Applications extend each call: their own tools (run by the same runner) and DTMF hooks."""
    looked_up: list[str] = []
    digits: list[str] = []

    def extend(bridge) -> None:
        async def lookup_order(order_id: str) -> dict[str, str]:
            """Look up an order's status."""
            looked_up.append(order_id)
            return {"order_id": order_id, "status": "shipped"}

        bridge.tools.register(lookup_order)
        bridge.dtmf_hooks.append(digits.append)

    openai_server.queue_function_calls([("lookup_order", {"order_id": "A-17"})])
    async with running_agent(test_settings(), model_for(openai_server)) as agent:
        agent.state.call_hooks.append(extend)
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_for(lambda: agent.state.calls, timeout=5, what="bridge")
            await call.send_dtmf("7")
            await call.wait_for(lambda: digits == ["7"], timeout=5, what="dtmf hook")
            await call.speak(speech_ulaw("Where is my order?"))
            await openai_server.wait_for(lambda: looked_up == ["A-17"], timeout=10)
            update = next(m for m in openai_server.received if m["type"] == "session.update")
            assert "lookup_order" in {t["name"] for t in update["session"]["tools"]}

            def outputs() -> list[str]:
                return [
                    m["item"]["output"]
                    for m in openai_server.received
                    if m["type"] == "conversation.item.create" and m["item"]["type"] == "function_call_output"
                ]

            await openai_server.wait_for(lambda: bool(outputs()), timeout=5)
            assert "shipped" in outputs()[0]


async def test_a_recording_that_cannot_be_written_leaves_the_call_alone_and_is_counted(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """AGENT_RECORDINGS_DIR where no directory can be made (a file is in the way; a full disk
    fails a write the same way): the caller hears the call as ever, and the failure is counted
    in `/metrics` when the call ends, not only logged."""
    import aiohttp

    (tmp_path / "taken").write_text("a file, not a directory")
    openai_server.queue_reply("Hello, thanks for calling Acme.", speech_pcm16("Hello, thanks for calling Acme.", 8000))
    settings = test_settings(greeting="Hello, thanks for calling Acme.", recordings_dir=str(tmp_path / "taken" / "rec"))
    async with running_agent(settings, model_for(openai_server)) as agent:
        async with TwilioCaller(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
            await call.place()
            await call.connect()
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1000, timeout=10)
            assert call.heard_ms >= 1000 and not call.violations
        await agent.wait_no_calls()
        async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/metrics") as resp:
            text = (await resp.text()).splitlines()
    assert 'agent_recordings_total{outcome="failed"} 1.0' in text
    assert not any(line.startswith('agent_recordings_total{outcome="written"}') for line in text)
    assert not (tmp_path / "taken").is_dir()
