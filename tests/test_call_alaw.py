"""An A-law phone leg through the bridge and the real OpenAI provider to the fake OpenAI server.

Twilio is mu-law only, so this drives `CallBridge` with a small A-law leg that plays at real time
and confirms nothing (like an RTP leg); the provider side is the real `OpenAIRealtimeModel` over
loopback. The session must be configured for `audio/pcma` both ways, and audio must pass through
untouched in both directions.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime import RealtimeConfig
from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.telephony.bridge import BridgeOptions, CallBridge, CallOutcome
from telephony_agent.telephony.leg import PCMA_20MS, PhoneFormat
from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import pcm16_to_alaw

API_KEY = "sk-test-key"


class AlawLeg:
    """An RTP-like leg: A-law 20 ms, no playout confirmations; records what it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.clears = 0
        self.closed = asyncio.Event()

    @property
    def format(self) -> PhoneFormat:
        return PCMA_20MS

    @property
    def transport(self) -> str:
        return "rtp-test"

    @property
    def confirms_playout(self) -> bool:
        return False

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        assert all(len(f) == 160 for f in frames)
        self.received += b"".join(frames)

    def send_clear(self) -> None:
        self.clears += 1

    async def hangup(self) -> None:
        self.closed.set()

    async def transfer(self, target: str) -> None:
        raise RuntimeError("no transfers here")

    async def close(self) -> None:
        self.closed.set()


async def test_a_law_leg_is_passed_through_to_openai_as_audio_pcma() -> None:
    reply = speech_pcm16("Certainly, a table for two at eight.", 8000)
    question = pcm16_to_alaw(speech_pcm16("A table for two, please.", 8000))
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        server.queue_reply("Certainly, a table for two at eight.", reply)
        model = OpenAIRealtimeModel(API_KEY, url=server.url)
        leg = AlawLeg()
        loop = asyncio.get_running_loop()
        bridge = CallBridge("CA-alaw", model, RealtimeConfig(instructions="Take bookings."), leg,
                            BridgeOptions(idle_timeout_seconds=30), clock=loop.time)
        await bridge.start()
        sent = bytearray()
        stream = b"\xd5" * 4000 + question + b"\xd5" * 16000  # 0.5 s quiet, the question, 2 s quiet
        start = loop.time()
        for i in range(0, len(stream), 160):  # one packet every 20 ms, like an RTP leg
            await bridge.on_caller_audio(stream[i : i + 160])
            sent += stream[i : i + 160]
            await asyncio.sleep(max(0.0, start + (i // 160 + 1) * 0.02 - loop.time()))
        deadline = loop.time() + 10
        while len(leg.received) < len(reply) // 2 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        update = next(m for m in server.received if m["type"] == "session.update")
        audio = update["session"]["audio"]
        assert audio["input"]["format"] == {"type": "audio/pcma"}
        assert audio["output"]["format"] == {"type": "audio/pcma"}
        appended = b"".join(base64.b64decode(m["audio"]) for m in server.received
                            if m["type"] == "input_audio_buffer.append")
        assert appended == bytes(sent)  # A-law in, untouched
        assert server.speech_starts >= 1  # and the fake's A-law decoder heard speech in it
        expected = pcm16_to_alaw(reply)
        assert bytes(leg.received[: len(expected)]) == expected  # A-law out, untouched
        await bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)
        assert leg.closed.is_set() and bridge.outcome is CallOutcome.CALLER_HANGUP


@pytest.mark.parametrize("audio", ["pcm"])
async def test_a_law_leg_with_openai_pcm_audio_is_transcoded(audio: str) -> None:
    reply = speech_pcm16("Yes.", 8000)
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        server.queue_reply("Yes.", reply)
        model = OpenAIRealtimeModel(API_KEY, url=server.url, audio=audio)
        leg = AlawLeg()
        loop = asyncio.get_running_loop()
        bridge = CallBridge("CA-alaw-pcm", model, RealtimeConfig(), leg,
                            BridgeOptions(speak_first=True), clock=loop.time)
        await bridge.start()
        deadline = loop.time() + 10
        while len(leg.received) < len(reply) // 4 and loop.time() < deadline:
            await asyncio.sleep(0.05)
            await bridge.on_caller_audio(b"\xd5" * 160)
        update = next(m for m in server.received if m["type"] == "session.update")
        assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        appended = next(base64.b64decode(m["audio"]) for m in server.received if m["type"] == "input_audio_buffer.append")
        assert len(appended) == 160 * 6  # 20 ms of A-law -> 20 ms of PCM16 at 24 kHz
        assert len(leg.received) >= len(reply) // 4
        await bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)
