"""OpenAIRealtimeSession against the fake OpenAI Realtime server over loopback."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from peers.fake_openai import FakeOpenAIServer

from telephony_agent.realtime import events as ev
from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeConnectionError,
    RealtimeError,
    SessionClosedError,
)
from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel, OpenAIRealtimeSession
from telephony_agent.realtime.types import (
    PCM16_24K,
    PCMU_8K,
    AudioChunk,
    ClientEvent,
    ContextMutationKind,
    RealtimeConfig,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
)
from telephony_agent.testing.speech import speech_pcm16

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

KEY = "sk-test-key"
CONFIG = RealtimeConfig(instructions="You are a concise phone agent.", voice="marin",
                        input_transcription="gpt-4o-mini-transcribe")


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def make_model(server: FakeOpenAIServer, http: aiohttp.ClientSession, **kw: object) -> OpenAIRealtimeModel:
    kw.setdefault("reconnect_backoff", 0.05)
    return OpenAIRealtimeModel(kw.pop("api_key", KEY), url=server.url, http=http, **kw)  # type: ignore[arg-type]


def caller_audio(text: str, fmt=PCMU_8K, silence_ms: int = 900) -> list[bytes]:
    """Real speech in `fmt`, followed by silence, in 20 ms chunks."""
    if fmt == PCMU_8K:
        pcm = speech_pcm16(text, 8000) + b"\0\0" * 8 * silence_ms
        data, step = audioop.lin2ulaw(pcm, 2), 160
    else:
        data, step = speech_pcm16(text, 24000) + b"\0\0" * 24 * silence_ms, 960
    return [data[i:i + step] for i in range(0, len(data), step)]


async def send_speech(session: OpenAIRealtimeSession, text: str) -> None:
    for chunk in caller_audio(text, session.input_format):
        await session.send_audio(AudioChunk(chunk, session.input_format))


async def collect_until(session: OpenAIRealtimeSession, stop: Callable[[ev.ServerEvent], bool],
                        timeout: float = 5.0) -> list[ev.ServerEvent]:
    out: list[ev.ServerEvent] = []

    async def run() -> None:
        while True:
            event = await session.next_event()
            if event is None:
                return
            out.append(event)
            if stop(event):
                return

    await asyncio.wait_for(run(), timeout)
    return out


def n_of(kind: type, n: int) -> Callable[[ev.ServerEvent], bool]:
    seen = [0]

    def stop(e: ev.ServerEvent) -> bool:
        seen[0] += isinstance(e, kind)
        return seen[0] >= n

    return stop


def is_(kind: type) -> Callable[[ev.ServerEvent], bool]:
    return lambda e: isinstance(e, kind)


async def test_full_turn_pcmu_with_real_speech(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    reply_pcm = speech_pcm16("Sure. For how many people?", 8000)
    server.queue_reply("Sure. For how many people?", reply_pcm)
    server.user_transcripts.append("I would like to book a table.")
    model = make_model(server, http)
    session = await model.connect(CONFIG)
    try:
        assert session.input_format == PCMU_8K and session.output_format == PCMU_8K
        assert session.session_id.startswith("sess_") and session.is_connected
        await send_speech(session, "Hello, I would like to book a table for two.")
        events = await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    kinds = [type(e) for e in events]
    assert kinds[:2] == [ev.SessionCreated, ev.SessionUpdated]
    for kind in (ev.SpeechStarted, ev.SpeechStopped, ev.AudioCommitted, ev.InputTranscriptCompleted,
                 ev.ResponseCreated, ev.AudioDelta, ev.OutputTranscriptDelta, ev.AudioDone,
                 ev.OutputTranscriptDone):
        assert kind in kinds, kind
    assert kinds.index(ev.SpeechStarted) < kinds.index(ev.SpeechStopped) < kinds.index(ev.ResponseCreated)
    started = next(e for e in events if isinstance(e, ev.SpeechStarted))
    assert 0 <= started.audio_start_ms < 300  # speech begins at once; prefix padding moves the start earlier
    audio = b"".join(e.data for e in events if isinstance(e, ev.AudioDelta))
    assert audio == audioop.lin2ulaw(reply_pcm, 2)  # the reply's real speech, passed through as mu-law
    done = events[-1]
    assert isinstance(done, ev.ResponseDone) and done.status == "completed" and done.usage.total_tokens == 150
    conn = server.current
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert not any(h.lower() == "openai-beta" for h in conn.headers)
    assert conn.request.query["model"] == "gpt-realtime"
    update = conn.received[0]
    assert update["type"] == "session.update" and update["session"]["type"] == "realtime"
    assert conn.session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert conn.session["audio"]["output"]["voice"] == "marin"
    assert {m["type"] for m in conn.received[1:]} == {"input_audio_buffer.append"}


async def test_pcm24k_variant(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    model = make_model(server, http, audio="pcm")
    assert model.input_formats[0] == PCM16_24K
    session = await model.connect(RealtimeConfig())
    try:
        assert session.input_format == PCM16_24K and session.output_format == PCM16_24K
        with pytest.raises(RealtimeError):
            await session.send_audio(AudioChunk(b"\xff" * 160, PCMU_8K))
        await send_speech(session, "What time do you open tomorrow?")
        events = await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    deltas = [e for e in events if isinstance(e, ev.AudioDelta)]
    assert deltas and all(e.format == PCM16_24K for e in deltas)
    assert any(isinstance(e, ev.SpeechStopped) for e in events)
    assert server.current.session["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


async def test_config_formats_win_over_audio_choice(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    session = await make_model(server, http).connect(RealtimeConfig(input_format=PCM16_24K,
                                                                     output_format=PCMU_8K))
    try:
        assert (session.input_format, session.output_format) == (PCM16_24K, PCMU_8K)
    finally:
        await session.close()


async def test_interrupt_truncates_at_played_position(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.chunk_interval = 0.05  # 100 ms of audio every 50 ms: still mid-response when we interrupt
    server.queue_reply("A long answer that goes on and on.", speech_pcm16("A long answer that goes on and on.", 8000))
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.create_response()  # a greeting: no caller audio first
        events = await collect_until(session, n_of(ev.AudioDelta, 4))
        assert session.response_active
        item = session.translator.current_item_id
        generated = session.translator.generated_ms(item)
        assert generated >= 400
        await session.interrupt(audio_end_ms=250)
        rest = await collect_until(session, is_(ev.ResponseDone))
        assert rest[-1].status == "cancelled" and rest[-1].reason == "client_cancelled"
        await server.wait_for(lambda: server.truncates)
    finally:
        await session.close()
    assert events  # the deltas before the interrupt
    assert [(t["item_id"], t["audio_end_ms"]) for t in server.truncates] == [(item, 250)]
    assert server.received_types().count("response.cancel") == 1
    assert session.truncates == [(item, 250)]
    assert not any(e.get("code") for e in server.errors_sent)


async def test_interrupt_after_playback_finished_skips_truncate(
    server: FakeOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.queue_reply("Short.", speech_pcm16("Short.", 8000))
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.create_response()
        await collect_until(session, is_(ev.ResponseDone))
        generated = session.translator.generated_ms()
        assert generated > 0 and not session.response_active
        await session.interrupt(audio_end_ms=int(generated) + 500)  # the caller heard it all
        await session.interrupt(audio_end_ms=100)  # no response active: no cancel; truncate still applies
        # A cancel with no active response is tolerated (benign error, not surfaced).
        await session.send_event(ClientEvent({"type": "response.cancel"}))
        await server.wait_for(lambda: any(e["code"] == "response_cancel_not_active" for e in server.errors_sent))
        await session.send_text("Are you there?")
        events = await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    types = server.received_types()
    assert "response.cancel" in types and types.count("response.cancel") == 1  # only the raw one
    assert [t["audio_end_ms"] for t in server.truncates] == [100]
    assert not any(isinstance(e, ev.ErrorEvent) for e in events)
    assert session.benign_errors == 1


async def test_interrupt_without_item_sends_nothing(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.interrupt(audio_end_ms=300)
        await session.interrupt()
        await asyncio.sleep(0.05)
    finally:
        await session.close()
    assert server.received_types() == ["session.update"]


async def test_barge_in_by_server_vad_cancels(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.chunk_interval = 0.05
    server.queue_reply("Let me tell you all about our opening hours today.")
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.create_response()
        await collect_until(session, is_(ev.AudioDelta))
        await send_speech(session, "Stop, please.")
        events = await collect_until(session, lambda e: isinstance(e, ev.ResponseDone) and e.status == "cancelled")
    finally:
        await session.close()
    assert any(isinstance(e, ev.SpeechStarted) for e in events)
    assert events[-1].reason == "turn_detected"


async def test_double_create_response_is_tolerated(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.chunk_interval = 0.03
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.create_response()
        await collect_until(session, is_(ev.ResponseCreated))
        await session.create_response()
        events = await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    assert [e["code"] for e in server.errors_sent] == ["conversation_already_has_active_response"]
    assert not any(isinstance(e, ev.ErrorEvent) for e in events)


async def test_manual_vad_commit_and_clear(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    config = RealtimeConfig(turn_detection=TurnDetection(TurnDetectionType.NONE))
    session = await make_model(server, http).connect(config)
    try:
        await session.commit_audio()  # empty buffer: a non-fatal error
        err = (await collect_until(session, is_(ev.ErrorEvent)))[-1]
        assert err.code == "input_audio_buffer_commit_empty" and not err.fatal
        await send_speech(session, "One two three.")
        await session.commit_audio()
        await collect_until(session, is_(ev.AudioCommitted))
        await session.clear_audio()
        await collect_until(session, is_(ev.AudioCleared))
        await session.create_response()
        await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    assert server.speech_starts == 0


async def test_text_tool_output_and_mutate_context(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_function_calls([("lookup", {"q": "hours"})])
    session = await make_model(server, http).connect(CONFIG)
    try:
        await session.send_text("The caller pressed 1.")
        call = (await collect_until(session, is_(ev.FunctionCallDone)))[-1]
        await collect_until(session, is_(ev.ResponseDone))
        await session.send_tool_response(ToolResponse(call.call_id, {"open": "9-17"}))
        await collect_until(session, is_(ev.ResponseDone))
        outcome = await session.mutate_context(CONFIG.with_changes(instructions="Now speak French."))
        assert outcome.kind is ContextMutationKind.APPLIED
        await collect_until(session, is_(ev.SessionUpdated))
        with pytest.raises(RealtimeConfigError):
            await session.mutate_context(CONFIG.with_changes(input_format=PCM16_24K))
    finally:
        await session.close()
    conn = server.current
    assert conn.session["instructions"] == "Now speak French."
    last_update = [m for m in conn.received if m["type"] == "session.update"][-1]
    assert "voice" not in last_update["session"]["audio"]["output"]  # unchanged voice is not re-sent
    outputs = [m["item"] for m in conn.received if m["type"] == "conversation.item.create"
               and m["item"]["type"] == "function_call_output"]
    assert outputs == [{"id": outputs[0]["id"], "type": "function_call_output", "call_id": call.call_id,
                        "output": '{"open":"9-17"}'}]
    assert not server.errors_sent


async def test_session_expiry_reconnects_with_conversation(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.queue_function_calls([("lookup", {"q": "hours"})])
    server.user_transcripts.append("When do you open?")
    session = await make_model(server, http).connect(CONFIG)
    try:
        await send_speech(session, "When do you open tomorrow?")
        call = (await collect_until(session, is_(ev.FunctionCallDone)))[-1]
        await collect_until(session, is_(ev.ResponseDone))
        await session.send_tool_response(ToolResponse(call.call_id, {"open": "9"}))
        await collect_until(session, is_(ev.ResponseDone))
        first = server.current
        await server.expire()
        after = await collect_until(session, is_(ev.Reconnected))
        # Audio sent right after the reconnect event still reaches the new connection.
        await send_speech(session, "Thank you.")
        more = await collect_until(session, is_(ev.ResponseDone))
    finally:
        await session.close()
    assert after == [ev.Reconnected("session_expired")]  # the caller sees nothing else of it
    assert not any(isinstance(e, (ev.ErrorEvent, ev.SessionCreated)) for e in more)
    assert len(server.connections) == 2
    second = server.connections[1]
    assert second is not first and second.received[0]["type"] == "session.update"
    assert second.session["instructions"] == CONFIG.instructions
    created = [m["item"] for m in second.received if m["type"] == "conversation.item.create"]
    kinds = [(i["type"], i.get("role")) for i in created]
    assert kinds == [("message", "user"), ("function_call", None), ("function_call_output", None),
                     ("message", "assistant")]
    assert created[0]["content"] == [{"type": "input_text", "text": "When do you open?"}]
    assert created[1]["call_id"] == call.call_id and created[2]["call_id"] == call.call_id
    assert not server.errors_sent or [e["code"] for e in server.errors_sent] == ["session_expired"]
    assert session.reconnects == 1 and session.session_id == first.session["id"]


async def test_audio_during_reconnect_is_buffered(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.session_created_delay = 0.0
    session = await make_model(server, http).connect(CONFIG)
    try:
        await server.drop()
        server.session_created_delay = 0.4
        await asyncio.sleep(0.15)  # the client notices the drop and starts reconnecting
        chunks = caller_audio("Hello there.")
        for chunk in chunks[:50]:
            await session.send_audio(AudioChunk(chunk, PCMU_8K))
        assert not session.is_connected
        event = (await collect_until(session, is_(ev.Reconnected)))[-1]
        assert event.reason == "connection lost"
        await server.wait_for(lambda: len(server.connections) == 2
                              and server.received_types(server.current).count("input_audio_buffer.append") == 50)
        assert session.is_connected
    finally:
        await session.close()


async def test_reconnect_failure_is_fatal(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    session = await make_model(server, http, reconnect_attempts=2).connect(CONFIG)
    server.refuse_connections = 5
    await server.drop()
    events = await collect_until(session, lambda e: False)
    assert isinstance(events[-1], ev.ErrorEvent) and events[-1].fatal and events[-1].code == "reconnect_failed"
    assert await session.next_event() is None
    assert "could not reconnect" in (session.disconnect_reason or "")
    assert server.connection_attempts == 3
    with pytest.raises(SessionClosedError):
        await session.send_text("hello?")
    await session.close()


async def test_auth_failure(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    with pytest.raises(RealtimeAuthError):
        await make_model(server, http, api_key="sk-wrong").connect(CONFIG)
    server.auth_mode = "error"
    with pytest.raises(RealtimeAuthError):
        await make_model(server, http, api_key="sk-wrong").connect(CONFIG)
    assert server.auth_failures == 2 and not server.connections


async def test_config_refused_raises_config_error(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    # extras are sent verbatim; the server refuses the unknown parameter like OpenAI does.
    with pytest.raises(RealtimeConfigError, match="Unknown parameter"):
        await make_model(server, http).connect(RealtimeConfig(extras={"temperature": 0.8}))


async def test_beta_header_is_rejected_by_the_fake(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    # Our model never sends the header; the fake rejects it the way production does.
    async with http.ws_connect(server.url + "?model=gpt-realtime",
                               headers={"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "realtime=v1"}) as ws:
        msg = await ws.receive_json(timeout=2)
        assert msg["error"]["code"] == "beta_api_shape_disabled"
        closing = await ws.receive(timeout=2)
        assert ws.close_code == 4000 or closing.data == 4000
    assert server.beta_rejections == 1


async def test_unreachable_server() -> None:
    model = OpenAIRealtimeModel(KEY, url="ws://127.0.0.1:9/v1/realtime", connect_timeout=2)
    try:
        with pytest.raises(RealtimeConnectionError):
            await model.connect(CONFIG)
    finally:
        await model.aclose()
    assert KEY not in repr(model)


async def test_bad_server_json_does_not_kill_the_session(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    server.raw_to_send = ["{not json", "[1, 2]", '{"type": "response.created", "response": 7}',
                          '{"type": "brand.new.event"}']
    session = await make_model(server, http).connect(CONFIG)
    try:
        events = await collect_until(session, lambda e: isinstance(e, ev.UnknownEvent)
                                     and e.raw.get("type") == "brand.new.event")
        assert any(isinstance(e, ev.ErrorEvent) and not e.fatal and e.code == "bad_server_message" for e in events)
        await session.create_response()
        await collect_until(session, is_(ev.ResponseDone))
        assert session.is_connected
    finally:
        await session.close()


async def test_close_is_bounded_and_leaves_no_tasks(server: FakeOpenAIServer, http: aiohttp.ClientSession) -> None:
    before = asyncio.all_tasks()
    server.chunk_interval = 0.05
    session = await make_model(server, http).connect(CONFIG)
    await session.create_response()
    await collect_until(session, is_(ev.AudioDelta))
    for chunk in caller_audio("Hello.")[:20]:
        await session.send_audio(AudioChunk(chunk, PCMU_8K))
    start = time.monotonic()
    await session.close()
    assert time.monotonic() - start < 2.0
    assert session.disconnect_reason == "closed by client" and not session.is_connected
    while await session.next_event() is not None:
        pass
    assert await session.next_event() is None
    await asyncio.sleep(0)
    leftover = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert leftover == []
    with pytest.raises(SessionClosedError):
        await session.send_audio(AudioChunk(b"\xff" * 160, PCMU_8K))
    await session.close()  # idempotent


async def test_model_owns_its_http_session(server: FakeOpenAIServer) -> None:
    model = OpenAIRealtimeModel(KEY, url=server.url)
    assert model.provider == "openai" and model.model_id == "gpt-realtime"
    session = await model.connect(CONFIG)
    await session.close()
    await model.aclose()


async def test_reconnect_lines_carry_the_call_id_at_warning(
    server: FakeOpenAIServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner hands the call's logger to the session: reconnect lines name the call, and a
    provider that stops serving the call (dropped, refused attempts, failure) is a WARNING or worse."""
    from telephony_agent.logs import call_logger
    from telephony_agent.realtime.runner import RealtimeRunner
    from telephony_agent.realtime.tools import ToolRegistry

    call_id = "CA" + "5" * 32
    caplog.set_level("DEBUG", logger="telephony_agent.realtime")
    session = await make_model(server, http, reconnect_attempts=3).connect(CONFIG)
    RealtimeRunner(session, ToolRegistry(), logger=call_logger("test.call", call_id))
    try:
        server.refuse_connections = 1  # the first attempt fails, the second succeeds
        await server.drop()
        await collect_until(session, is_(ev.Reconnected))
    finally:
        await session.close()
    lines = [r for r in caplog.records if r.name == "telephony_agent.realtime.providers.openai"]
    warnings_ = [r.getMessage() for r in lines if r.levelname == "WARNING"]
    assert any("connection ended (connection lost); reconnecting" in m for m in warnings_), warnings_
    assert any("attempt 1 of 3 failed" in m for m in warnings_), warnings_
    assert any("reconnected after" in m for m in warnings_), warnings_
    assert lines and all(getattr(r, "call_id", None) == call_id for r in lines)
