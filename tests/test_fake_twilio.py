"""The fake Twilio peer against a tiny agent written here: signatures, TwiML, the stream's
sequence/chunk/timestamp rules, real-time playout with mark echoes, clear, violations, close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web
from peers.fake_twilio_rest import FakeTwilioRest

from telephony_agent.telephony.twilio.rest import TwilioRest
from telephony_agent.telephony.twilio.signature import SIGNATURE_HEADER, validate_request, validate_websocket
from telephony_agent.telephony.twilio.stream import (
    Dtmf,
    MarkEcho,
    Media,
    MediaStreamProtocol,
    Start,
    Stop,
    clear_message,
    mark_message,
    media_message,
)
from telephony_agent.telephony.twilio.twiml import busy_twiml, connect_stream_twiml
from telephony_agent.testing.speech import speech_pcm16
from telephony_agent.testing.twilio_caller import HandshakeRejected, TwilioCaller
from telephony_codecs import pcm16_to_ulaw

PUBLIC = "https://agent.test"
TOKEN = "tok-" + "9" * 28

Script = Callable[["TinyAgent", web.WebSocketResponse, MediaStreamProtocol], Awaitable[None]]


class TinyAgent:
    """A minimal agent: checks signatures, answers with TwiML, runs `script` once the stream starts."""

    def __init__(self, script: Script | None = None, busy: bool = False) -> None:
        self.script = script
        self.busy = busy
        self.events: list[Any] = []
        self.protocol: MediaStreamProtocol | None = None
        self.inbound = bytearray()
        self.started = asyncio.Event()
        self.ended = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def __aenter__(self) -> TinyAgent:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not validate_request(PUBLIC + "/twilio/voice", form, request.headers.get(SIGNATURE_HEADER), TOKEN):
            return web.Response(status=403)
        if self.busy:
            return web.Response(text=busy_twiml(), content_type="text/xml")
        twiml = connect_stream_twiml("wss://agent.test/twilio/media", {"call": str(form["CallSid"]), "x": "a&b"})
        return web.Response(text=twiml, content_type="text/xml")

    async def media(self, request: web.Request) -> web.StreamResponse:
        if not validate_websocket(PUBLIC, request.path, request.headers.get(SIGNATURE_HEADER), TOKEN):
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.protocol = proto = MediaStreamProtocol()
        script_task: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                evs = proto.receive_text(msg.data) if msg.type == WSMsgType.TEXT else proto.receive_bytes(msg.data)
                for ev in evs:
                    self.events.append((asyncio.get_running_loop().time(), ev))
                    if isinstance(ev, Media):
                        self.inbound += ev.payload
                    if isinstance(ev, Start):
                        self.started.set()
                        if self.script is not None:
                            script_task = asyncio.create_task(self.script(self, ws, proto))
        finally:
            if script_task is not None:
                script_task.cancel()
            self.ended.set()
        return ws

    def of(self, kind: type) -> list[Any]:
        return [e for _, e in self.events if isinstance(e, kind)]


def tone(ms: int, byte: int = 0x55) -> bytes:
    return bytes([byte]) * (ms * 8)


def first_media_at(call: TwilioCaller) -> float:
    """When the caller received the agent's first `media` message (its playout starts there)."""
    return next(r.time for r in call.received if r.event == "media")


async def test_place_connect_and_microphone_frames() -> None:
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        assert await call.place() == 200
        assert call.stream_url == "wss://agent.test/twilio/media"
        assert call.stream_parameters == {"call": call.call_sid, "x": "a&b"}
        assert not call.rejected and call.violations == []
        await call.connect()
        await asyncio.wait_for(agent.started.wait(), 2)
        (start,) = agent.of(Start)
        assert start.call_sid == call.call_sid and start.stream_sid == call.stream_sid
        assert start.custom_parameters == call.stream_parameters
        assert start.sequence == 1 and start.tracks == ("inbound",)
        assert len(call.stream_sid) == 34 and call.stream_sid.startswith("MZ")
        await asyncio.sleep(0.5)
        media = agent.of(Media)
        # ~25 frames in 0.5 s: real time, not a burst.
        assert 20 <= len(media) <= 28, len(media)
        assert [m.chunk for m in media] == list(range(1, len(media) + 1))
        assert [m.timestamp_ms for m in media] == [20 * i for i in range(len(media))]
        assert [m.sequence for m in media] == list(range(2, len(media) + 2))
        assert all(m.payload == b"\xff" * 160 for m in media)
        assert agent.protocol is not None and agent.protocol.bad_input_total == 0
        assert agent.protocol.sequence_gaps == 0


async def test_busy_rejection_and_bad_signatures() -> None:
    async with TinyAgent(busy=True) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        assert await call.place() == 200
        assert call.rejected and call.reject_reason == "busy" and call.stream_url is None
    async with TinyAgent() as agent:
        for mode in ("omit", "corrupt"):
            async with TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
                assert await call.place(signature=mode) == 403
        async with TwilioCaller(agent.base_url, PUBLIC, "other-token") as call:
            assert await call.place() == 403
        async with TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
            assert await call.place() == 200
            for mode in ("omit", "corrupt"):
                with pytest.raises(HandshakeRejected) as info:
                    await call.connect(signature=mode)
                assert info.value.status == 403 and call.handshake_status == 403
            # The https form of the URL is accepted too.
            await call.connect(sign_url="https://agent.test/twilio/media")
            await asyncio.wait_for(agent.started.wait(), 2)


async def test_playout_marks_echo_in_real_time() -> None:
    sent = tone(400, 0x11) + tone(200, 0x22)

    async def script(agent: TinyAgent, ws: web.WebSocketResponse, proto: MediaStreamProtocol) -> None:
        agent.first_audio_at = asyncio.get_running_loop().time()  # type: ignore[attr-defined]
        for i in range(0, 400 * 8, 160):
            await ws.send_str(proto.media(sent[i : i + 160]))
        await ws.send_str(proto.mark("a"))
        await ws.send_str(proto.media(sent[400 * 8 :]))  # one big 200 ms message
        await ws.send_str(proto.mark("b"))

    async with TinyAgent(script) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        b = await call.wait_mark("b", timeout=3)
        a = next(m for m in call.marks if m.name == "a")
        first = first_media_at(call)
        assert first >= agent.first_audio_at  # type: ignore[attr-defined]
        # Played at 8 bytes/ms from the first audio's arrival; each mark echoed once reached,
        # not with the next one. (By the playout model and by order, not by time bounds: on a
        # loaded machine the loop itself may stall for tens of milliseconds.)
        assert a.played_at - first == pytest.approx(0.4, abs=1e-6)
        assert b.played_at - a.played_at == pytest.approx(0.2, abs=1e-6)
        assert a.echoed_at is not None and a.played_at <= a.echoed_at < b.played_at
        assert not a.cleared and not b.cleared
        assert bytes(call.heard_ulaw) == sent
        assert call.marks_requested == ["a", "b"]
        assert len(call.heard_chunks) == 21 and call.heard_chunks[-1].length == 1600
        # Echoes arrive at the agent with sequence numbers continuing the media sequence.
        await call.wait_for(lambda: len(agent.of(MarkEcho)) == 2, 2)
        assert agent.protocol is not None and agent.protocol.sequence_gaps == 0
        assert agent.protocol.bad_input_total == 0
        await call.wait_silence_after_audio(silence_ms=100, timeout=2)
        assert call.heard_ms == 600 and not call.playing


async def test_clear_echoes_pending_marks_at_once() -> None:
    sent = tone(1000, 0x33)

    async def script(agent: TinyAgent, ws: web.WebSocketResponse, proto: MediaStreamProtocol) -> None:
        loop = asyncio.get_running_loop()
        agent.first_audio_at = loop.time()  # type: ignore[attr-defined]
        await ws.send_str(proto.media(sent[:4000]))
        await ws.send_str(proto.mark("m1"))
        await ws.send_str(proto.media(sent[4000:]))
        await ws.send_str(proto.mark("m2"))
        await asyncio.sleep(0.3)
        agent.clear_sent_at = loop.time()  # type: ignore[attr-defined]
        await ws.send_str(proto.clear())

    async with TinyAgent(script) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        await call.wait_clear(timeout=3)
        m2 = await call.wait_mark("m2", timeout=1)
        m1 = next(m for m in call.marks if m.name == "m1")
        assert m1.cleared and m2.cleared
        clear_at = call.clear_times[0]
        first = first_media_at(call)
        assert clear_at - agent.first_audio_at >= 0.3  # type: ignore[attr-defined]
        # Both echoed on the clear, before m1's audio would have played out (0.5 s in); echoes
        # held until then would come 0.2 s after the clear at the least.
        assert m1.echoed_at is not None and m2.echoed_at is not None
        assert clear_at <= m1.echoed_at < first + 0.5 and clear_at <= m2.echoed_at < first + 0.5
        # What was heard is what played from the first audio's arrival to the clear, no more.
        assert call.heard_ms == pytest.approx((clear_at - first) * 1000, abs=0.5)
        assert bytes(call.heard_ulaw) == sent[: len(call.heard_ulaw)]
        assert call.dropped_bytes == len(sent) - len(call.heard_ulaw)
        heard = call.heard_ms
        await asyncio.sleep(0.1)
        assert call.heard_ms == heard and not call.playing and call.clears == 1


async def test_mark_on_idle_queue_echoes_right_away_and_audio_after_idle() -> None:
    async def script(agent: TinyAgent, ws: web.WebSocketResponse, proto: MediaStreamProtocol) -> None:
        await ws.send_str(proto.mark("idle"))
        await asyncio.sleep(0.3)
        agent.late_at = asyncio.get_running_loop().time()  # type: ignore[attr-defined]
        await ws.send_str(proto.media(tone(100)))
        await ws.send_str(proto.mark("after"))

    async with TinyAgent(script) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        idle = await call.wait_mark("idle", timeout=2)
        after = await call.wait_mark("after", timeout=2)
        media_at = first_media_at(call)
        # Echoed when it came, before the caller read anything more: not at a playout tick, which
        # had nothing to play until the audio 0.3 s later. (Compared by order, not by a time
        # bound: on a loaded machine the loop itself may stall that long.)
        assert idle.echoed_at is not None and idle.played_at <= idle.echoed_at <= media_at
        # Audio that arrives after an idle gap plays from its arrival, not "in the past".
        assert call.heard_chunks[0].start == media_at >= agent.late_at  # type: ignore[attr-defined]
        assert after.played_at - media_at == pytest.approx(0.1, abs=1e-6)
        assert len(call.heard_after(agent.late_at)) == 800  # type: ignore[attr-defined]


async def test_protocol_violations_recorded() -> None:
    async def script(agent: TinyAgent, ws: web.WebSocketResponse, proto: MediaStreamProtocol) -> None:
        await ws.send_bytes(b"\xff" * 160)
        await ws.send_str('{"event":"start","streamSid":"' + str(proto.stream_sid) + '"}')
        await ws.send_str(orjson.dumps({"event": "media", "media": {"payload": "/w=="}}).decode())
        await ws.send_str(media_message("MZ" + "0" * 32, b"\xff"))
        await ws.send_str("{nope")
        await ws.send_str(orjson.dumps({"event": "media", "streamSid": proto.stream_sid, "media": {"payload": "***"}}).decode())
        await ws.send_str(clear_message(proto.stream_sid or ""))
        await ws.send_str(mark_message(proto.stream_sid or "", "ok"))

    async with TinyAgent(script) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        await call.wait_mark("ok", timeout=2)
        assert [v.code for v in call.violations] == [31950, 31924, 31924, 31924, 31924, 31924]
        assert call.clears == 1 and call.heard_ms == 0
        assert [m["event"] for m in call.messages()] == ["start", "media", "media", "media", "clear", "mark"]


async def test_server_close_detected_and_tasks_stop() -> None:
    async def script(agent: TinyAgent, ws: web.WebSocketResponse, proto: MediaStreamProtocol) -> None:
        await asyncio.sleep(0.1)
        await ws.close(code=4000, message=b"bye")

    async with TinyAgent(script) as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        assert await call.wait_closed(timeout=2) == 4000
        assert call.closed_by_server and not call.is_open
        frames = call.media_frames_sent
        await asyncio.sleep(0.1)
        assert call.media_frames_sent == frames  # the microphone stopped
        assert all(t.done() for t in call._tasks)


async def test_hangup_sends_stop_then_closes() -> None:
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        await call.send_dtmf("5")
        await call.send_dtmf("#")
        await asyncio.sleep(0.05)
        await call.hangup()
        await asyncio.wait_for(agent.ended.wait(), 2)
        assert [d.digit for d in agent.of(Dtmf)] == ["5", "#"]
        stops = agent.of(Stop)
        assert len(stops) == 1 and stops[0].call_sid == call.call_sid
        assert agent.protocol is not None and agent.protocol.sequence_gaps == 0
        assert call.closed and not call.closed_by_server and call.hung_up


async def test_speech_goes_out_in_the_stream() -> None:
    ulaw = pcm16_to_ulaw(speech_pcm16("hello", 8000))
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        await asyncio.sleep(0.1)
        utt = await call.speak(ulaw)
        assert utt.started_at is not None and utt.finished_at is not None
        duration = utt.finished_at - utt.started_at
        assert abs(duration - len(ulaw) / 8000) < 0.2, duration  # paced (a burst takes ~0), with a busy machine's slack
        await asyncio.sleep(0.1)
        inbound = bytes(agent.inbound)
        assert ulaw in inbound
        # Silence before and after: the line never went quiet.
        idx = inbound.index(ulaw)
        assert idx >= 160 and inbound[:idx] == b"\xff" * idx
        assert inbound == bytes(call.sent_ulaw[: len(inbound)])
        assert agent.protocol is not None and agent.protocol.sequence_gaps == 0


async def test_non_continuous_send_audio_and_raw_bad_input() -> None:
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN, continuous=False) as call:
        await call.place_and_connect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await call.send_audio(tone(200, 0x44))
        assert 0.17 <= loop.time() - t0 <= 1.0  # paced: 200 ms of audio takes its own length, or more on a busy machine
        await call.send_audio(tone(100, 0x45), realtime=False)
        await call.send_raw(b"\x00\x01")
        await call.send_raw("{bad")
        await call.wait_for(lambda: agent.protocol is not None and agent.protocol.bad_input_total == 2, 2)
        assert bytes(agent.inbound) == tone(200, 0x44) + tone(100, 0x45)
        assert dict(agent.protocol.bad_input) == {"binary_frame": 1, "bad_json": 1}  # type: ignore[union-attr]


async def test_rest_hangup_ends_linked_stream() -> None:
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        async with FakeTwilioRest(call.account_sid, TOKEN) as api:
            api.register_call(call)
            async with TwilioRest(call.account_sid, TOKEN, base_url=api.base_url) as rest:
                await rest.transfer(call.call_sid, "+15551234567")
            await call.wait_closed(timeout=2)
            await asyncio.wait_for(agent.ended.wait(), 2)
            assert len(agent.of(Stop)) == 1
            assert call.transferred_twiml == "<Response><Dial>+15551234567</Dial></Response>"


async def test_wait_timeout_message() -> None:
    async with TinyAgent() as agent, TwilioCaller(agent.base_url, PUBLIC, TOKEN) as call:
        await call.place_and_connect()
        with pytest.raises(TimeoutError, match="heard=0ms"):
            await call.wait_heard(100, timeout=0.1)


def test_caller_side_builders_parse_back_as_twilio_sends_them() -> None:
    """The caller simulator's frames (stream.py's caller-side builders) go through our own parser
    as the events Twilio's would, with Twilio's string counters."""
    from telephony_agent.telephony.twilio.stream import (
        Connected,
        connected_message,
        dtmf_message,
        inbound_media_message,
        mark_echo_message,
        start_message,
        stop_message,
    )

    sid, call, account = "MZ" + "a" * 32, "CA" + "b" * 32, "AC" + "c" * 32
    proto = MediaStreamProtocol()
    frames = [
        connected_message(),
        start_message(sid, call, account, {"token": "t"}, sequence=1),
        inbound_media_message(sid, b"\xff" * 160, sequence=2, chunk=1, timestamp_ms=0),
        dtmf_message(sid, "5", sequence=3),
        mark_echo_message(sid, "m1", sequence=4),
        stop_message(sid, account, call, sequence=5),
    ]
    events = [e for f in frames for e in proto.receive_text(f)]
    assert [type(e) for e in events] == [Connected, Start, Media, Dtmf, MarkEcho, Stop]
    start, media = events[1], events[2]
    assert isinstance(start, Start) and (start.stream_sid, start.call_sid, start.account_sid) == (sid, call, account)
    assert start.custom_parameters == {"token": "t"} and start.sequence == 1
    assert isinstance(media, Media) and media.payload == b"\xff" * 160 and (media.chunk, media.timestamp_ms) == (1, 0)
    assert proto.bad_input_total == 0 and proto.sequence_gaps == 0
    assert orjson.loads(frames[2])["media"]["chunk"] == "1"  # counters are strings, as Twilio sends them
