"""Twilio-compatible senders end to end: lenient on ID shapes and optional fields, strict on
authorisation, and every refusal's close reason says what was wrong."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import aiohttp
import pytest
from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.telephony.twilio.signature import compute_signature
from telephony_agent.testing.speech import speech_ulaw

pytestmark = pytest.mark.timeout(60)
API_KEY = "sk-test-key"


@pytest.fixture
async def openai_server():
    async with FakeOpenAIServer(api_key=API_KEY) as server:
        yield server


async def place(http: aiohttp.ClientSession, base_url: str, call_sid: str) -> str:
    """A signed webhook from a carrier that sends no AccountSid; returns the stream URL."""
    params = {"CallSid": call_sid, "From": "+15005550006", "To": "+15005550001"}
    sig = compute_signature(PUBLIC_URL + "/twilio/voice", params, AUTH_TOKEN)
    async with http.post(base_url + "/twilio/voice", data=params, headers={"X-Twilio-Signature": sig}) as r:
        assert r.status == 200
        stream = ET.fromstring(await r.text()).find("Connect/Stream")
    assert stream is not None
    return stream.get("url", "")


async def connect(http: aiohttp.ClientSession, base_url: str, wss_url: str) -> aiohttp.ClientWebSocketResponse:
    local = f"ws://{urlsplit(base_url).netloc}{urlsplit(wss_url).path}"
    return await http.ws_connect(local, headers={"X-Twilio-Signature": compute_signature(wss_url, {}, AUTH_TOKEN)})


async def closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> tuple[int | None, str, float]:
    """(close code, reason, seconds until the server closed)."""
    t0 = time.monotonic()
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return ws.close_code, str(msg.extra or ""), time.monotonic() - t0


async def test_uuid_ids_no_account_sid_and_bare_media_frames_are_heard(openai_server: FakeOpenAIServer) -> None:
    model = OpenAIRealtimeModel(API_KEY, url=openai_server.url)
    async with running_agent(test_settings(), model) as agent, aiohttp.ClientSession() as http:
        call, stream = str(uuid.uuid4()), str(uuid.uuid4())
        ws = await connect(http, agent.base_url, await place(http, agent.base_url, call))
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send_str(json.dumps({"event": "start", "streamSid": stream,
                                      "start": {"streamSid": stream, "callSid": call, "customParameters": {}}}))
        question = speech_ulaw("What are your opening hours?")
        for i in range(0, len(question), 160):  # no chunk, no timestamp, no sequenceNumber
            await ws.send_str(json.dumps({"event": "media", "streamSid": stream,
                                          "media": {"payload": base64.b64encode(question[i:i + 160]).decode()}}))
            await asyncio.sleep(0.005)

        def appended() -> int:
            return sum(len(base64.b64decode(m["audio"])) for m in openai_server.received
                       if m["type"] == "input_audio_buffer.append")

        await openai_server.wait_for(lambda: appended() >= len(question), timeout=15)
        assert call in agent.state.manager.calls
        assert sum(agent.state.metrics.bad_input.labels(k)._value.get()
                   for k in ("missing_field", "bad_field", "before_start")) == 0
        await ws.close()


async def test_every_refusal_closes_at_once_and_says_why(openai_server: FakeOpenAIServer) -> None:
    model = OpenAIRealtimeModel(API_KEY, url=openai_server.url)
    async with running_agent(test_settings(), model) as agent, aiohttp.ClientSession() as http:
        call = str(uuid.uuid4())
        ws = await connect(http, agent.base_url, await place(http, agent.base_url, call))
        await ws.send_str(json.dumps({"event": "start", "start": {"streamSid": "MZ with spaces", "callSid": call}}))
        code, reason, took = await closed(ws)
        assert code == 1008 and reason.startswith("bad start: start: streamSid") and took < 2.0  # not "no start" 5 s later

        # Its token was spent by that socket: the same URL is refused before the upgrade, saying why.
        wss = await place(http, agent.base_url, call2 := str(uuid.uuid4()))
        ws = await connect(http, agent.base_url, wss)
        await ws.send_str(json.dumps({"event": "start", "start": {"streamSid": "MZ1", "callSid": str(uuid.uuid4())}}))
        code, reason, _ = await closed(ws)
        assert (code, reason) == (1008, "refused: start callSid differs from the stream URL's call")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(http, agent.base_url, wss)
        assert refused.value.status == 403
        assert call2 not in agent.state.manager.calls

        bare = "wss://agent.test/twilio/media"
        ws = await connect(http, agent.base_url, bare)
        await ws.send_str(json.dumps({"event": "start", "start": {"streamSid": "MZ2", "callSid": "CA2"}}))
        assert (await closed(ws))[:2] == (1008, "refused: no stream token")
        ws = await connect(http, agent.base_url, bare)
        await ws.send_str(json.dumps({"event": "connected"}))
        code, reason, took = await closed(ws)
        assert (code, reason) == (1008, "no start within 5s") and took >= 4.0
        assert openai_server.connection_attempts == 0
