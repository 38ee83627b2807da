"""GeminiLiveSession against the fake Gemini server over loopback (real speech, resumption, errors)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from peers.fake_gemini import FakeGemini, Reply

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeError,
    ServerError,
)
from telephony_agent.realtime.events import (
    AudioDelta,
    ErrorEvent,
    FunctionCallDone,
    Interrupted,
    Reconnected,
    ResponseCreated,
    ResponseDone,
    ResumptionHandle,
    SessionCreated,
)
from telephony_agent.realtime.providers.gemini import GeminiLiveModel, GeminiLiveSession
from telephony_agent.realtime.types import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    AudioChunk,
    ClientEvent,
    ContextMutationKind,
    RealtimeConfig,
    ToolDefinition,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
)
from telephony_agent.testing.speech import speech_pcm16

KEY = "test-key"
CHUNK = 640  # 20 ms at 16 kHz
SILENCE = bytes(CHUNK * 25)  # 500 ms


@pytest.fixture(scope="module")
def hello_16k() -> bytes:
    return speech_pcm16("Hello, I would like to check my order.", 16000)


@pytest.fixture
async def fake():
    async with FakeGemini(api_key=KEY) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as client:
        yield client


def model_for(fake: FakeGemini, http: aiohttp.ClientSession, **kwargs) -> GeminiLiveModel:
    return GeminiLiveModel(kwargs.pop("api_key", KEY), url=fake.url, http=http, setup_timeout=3.0, **kwargs)


async def stream(session: GeminiLiveSession, pcm: bytes, pace: float = 0.0) -> None:
    for i in range(0, len(pcm), CHUNK):
        await session.send_audio(AudioChunk(pcm[i : i + CHUNK], PCM16_16K))
        await asyncio.sleep(pace)


async def next_of(session: GeminiLiveSession, kind: type, timeout: float = 5.0, seen: list | None = None):
    async def find():
        while True:
            event = await session.next_event()
            if event is None:
                raise AssertionError(f"stream ended before {kind.__name__}")
            if seen is not None:
                seen.append(event)
            if isinstance(event, kind):
                return event

    return await asyncio.wait_for(find(), timeout)


async def test_full_turn_with_real_speech(fake, http, hello_16k):
    model = model_for(fake, http)
    assert model.provider == "gemini"
    assert model.input_formats == (PCM16_16K,) and model.output_formats == (PCM16_24K,)
    session = await model.connect(RealtimeConfig(instructions="Be brief.", voice="Puck"))
    try:
        created = await next_of(session, SessionCreated)
        assert created.session_id == session.session_id and session.is_connected
        conn = fake.last
        # the key travels in the header, never in the URL
        assert conn.headers["x-goog-api-key"] == KEY and "key" not in conn.query
        assert conn.setup["model"] == f"models/{model.model_id}"
        assert conn.setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Puck"
        sent = hello_16k + SILENCE
        await stream(session, sent)
        seen: list = []
        done = await next_of(session, ResponseDone, seen=seen)
        audio = [e for e in seen if isinstance(e, AudioDelta)]
        assert done.status == "completed" and done.usage is not None and done.usage.total_tokens == 120
        created_at = [i for i, e in enumerate(seen) if isinstance(e, ResponseCreated)]
        assert len(created_at) == 1 and created_at[0] < seen.index(audio[0])
        assert sum(len(a.data) for a in audio) == 48 * 600  # the whole 600 ms reply at 24 kHz
        assert all(a.format == PCM16_24K and a.item_id == done.response_id for a in audio)
        assert bytes(conn.audio) == sent  # every byte arrived, in order
        assert conn.kinds()[0] == "setup" and set(conn.kinds()[1:]) == {"realtimeInput.audio"}
        handle = await next_of(session, ResumptionHandle)
        assert handle.resumable and session.resumption_handle == handle.handle
    finally:
        await session.close()


async def test_barge_in_interrupts_and_no_stale_audio(fake, http, hello_16k):
    fake.reply_speed = 1.5  # slow enough to talk over
    fake.replies.append(Reply(duration_ms=3000))
    session = await model_for(fake, http).connect(RealtimeConfig())
    try:
        await stream(session, hello_16k + SILENCE)
        first = await next_of(session, AudioDelta)
        await stream(session, hello_16k[: CHUNK * 10])  # the caller talks over the reply
        seen: list = []
        interrupted = await next_of(session, Interrupted, seen=seen)
        assert interrupted.item_id == first.item_id
        await session.interrupt()
        done = await next_of(session, ResponseDone, seen=seen)
        assert done.status == "cancelled" and done.reason == "turn_detected"
        after = seen[seen.index(interrupted) + 1 :]
        assert not [e for e in after if isinstance(e, AudioDelta)]
        assert fake.last.barge_ins == 1
        assert not any("generationComplete" in m.get("serverContent", {}) for _, m in fake.last.sent)
        # the next turn is heard in full
        fake.reply_speed = 20.0
        await stream(session, SILENCE)
        seen2: list = []
        done2 = await next_of(session, ResponseDone, seen=seen2)
        assert done2.status == "completed"
        assert sum(len(e.data) for e in seen2 if isinstance(e, AudioDelta)) == 48 * 600
    finally:
        await session.close()


async def test_local_interrupt_discards_queued_audio_of_the_turn(fake, http, hello_16k):
    fake.reply_speed = 50.0  # the whole reply is queued before we read it
    fake.replies.append(Reply(duration_ms=2000))
    session = await model_for(fake, http).connect(RealtimeConfig())
    try:
        await stream(session, hello_16k + SILENCE)
        first = await next_of(session, AudioDelta)
        await fake.wait_for(lambda: any("turnComplete" in m.get("serverContent", {}) for _, m in fake.last.sent))
        await asyncio.sleep(0.05)
        await session.interrupt()
        seen: list = []
        done = await next_of(session, ResponseDone, seen=seen)
        assert done.response_id == first.item_id
        assert not [e for e in seen if isinstance(e, AudioDelta)]
        # audio of the next turn is not affected
        await stream(session, hello_16k[: CHUNK * 20] + SILENCE)
        seen2: list = []
        done2 = await next_of(session, ResponseDone, seen=seen2)
        assert done2.response_id != first.item_id
        assert sum(len(e.data) for e in seen2 if isinstance(e, AudioDelta)) == 48 * 600
    finally:
        await session.close()


async def test_tool_call_round_trip(fake, http, hello_16k):
    fake.replies.append(Reply(tool_calls=[{"name": "lookup_order", "args": {"order": "A-17", "verbose": True}}]))
    tools = (ToolDefinition("lookup_order", "Find an order.", {"type": "object", "properties": {"order": {"type": "string"}}}),)
    session = await model_for(fake, http).connect(RealtimeConfig(tools=tools))
    try:
        decl = fake.last.setup["tools"][0]["functionDeclarations"][0]
        assert decl["name"] == "lookup_order" and "parametersJsonSchema" in decl
        await stream(session, hello_16k + SILENCE)
        seen: list = []
        call = await next_of(session, FunctionCallDone, seen=seen)
        assert call.name == "lookup_order" and isinstance(call.arguments, str)
        assert call.arguments == '{"order":"A-17","verbose":true}'
        done = await next_of(session, ResponseDone)
        assert done.reason == "tool_calls"
        await session.send_tool_response(ToolResponse(call.call_id, {"status": "shipped"}, call.name))
        seen2: list = []
        done2 = await next_of(session, ResponseDone, seen=seen2)
        assert done2.status == "completed" and done2.response_id != done.response_id
        assert any(isinstance(e, AudioDelta) for e in seen2)
        assert fake.last.function_responses == [
            {"id": call.call_id, "name": "lookup_order", "response": {"output": {"status": "shipped"}}}
        ]
    finally:
        await session.close()


async def test_go_away_resumes_seamlessly_without_losing_audio(fake, http, hello_16k):
    session = await model_for(fake, http).connect(RealtimeConfig(instructions="v1"))
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, ResponseDone)
        handle = (await next_of(session, ResumptionHandle)).handle
        first = fake.last
        sent = bytearray(hello_16k + SILENCE)
        # the second utterance is streamed across the goAway and the switch
        half = (len(hello_16k) // 2) // CHUNK * CHUNK
        await stream(session, hello_16k[:half], pace=0.002)
        await fake.go_away(time_left=3.0, close_after=2.5)
        seen: list = []
        stream_task = asyncio.create_task(stream(session, hello_16k[half:] + SILENCE, pace=0.002))
        reconnected = await next_of(session, Reconnected, seen=seen)
        await stream_task
        sent += hello_16k + SILENCE
        assert reconnected.reason == "go_away"
        assert len(fake.connections) == 2
        second = fake.last
        assert second.setup["sessionResumption"] == {"handle": handle}
        assert second.resumed_from == handle and second.conversation.turns >= 1
        # no audio lost: what both connections received is what we sent, in order
        assert bytes(first.audio) + bytes(second.audio) == bytes(sent)
        done = await next_of(session, ResponseDone, seen=seen)
        assert done.status == "completed"
        assert not [e for e in seen if isinstance(e, ErrorEvent)]
        await fake.wait_for(lambda: first.closed_at is not None, 3.0)
        assert first.close_code is None  # we closed it, before the server's deadline
        assert session.is_connected
    finally:
        await session.close()


async def test_unexpected_close_with_handle_resumes(fake, http, hello_16k):
    session = await model_for(fake, http).connect(RealtimeConfig())
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, ResponseDone)
        await next_of(session, ResumptionHandle)
        await fake.close_connection(1011, "Deadline expired before operation could complete.")
        seen: list = []
        reconnected = await next_of(session, Reconnected, seen=seen)
        assert "1011" in reconnected.reason
        errors = [e for e in seen if isinstance(e, ErrorEvent)]
        assert errors and not errors[0].fatal and "Deadline expired" in errors[0].message
        assert fake.last.resumed_from is not None
        await stream(session, hello_16k[: CHUNK * 20] + SILENCE)
        assert (await next_of(session, ResponseDone)).status == "completed"
    finally:
        await session.close()


@pytest.mark.parametrize(
    "code,reason,fragment",
    [
        (1007, "Request contains an invalid argument.", "invalid argument"),
        (1008, "Operation is not implemented, or supported, or enabled.", "not implemented"),
        (1011, "Internal error encountered.", "Internal error"),
    ],
)
async def test_close_codes_mid_session_are_fatal_errors_naming_the_reason(fake, http, code, reason, fragment):
    fake.send_handles = False  # nothing to resume with
    session = await model_for(fake, http).connect(RealtimeConfig())
    await fake.close_connection(code, reason)
    error = await next_of(session, ErrorEvent)
    assert error.fatal and fragment in error.message and str(code) in error.message
    assert await asyncio.wait_for(session.next_event(), 2.0) is None
    assert fragment in (session.disconnect_reason or "")
    assert not session.is_connected
    await session.close()


@pytest.mark.parametrize(
    "code,reason,error_type",
    [
        (1007, "Request contains an invalid argument.", RealtimeConfigError),
        (1011, "Internal error encountered.", ServerError),
    ],
)
async def test_close_codes_during_setup(fake, http, code, reason, error_type):
    fake.fail_setups, fake.fail_setup_code, fake.fail_setup_reason = 1, code, reason
    with pytest.raises(error_type, match=reason.split()[0]):
        await model_for(fake, http).connect(RealtimeConfig())


async def test_wrong_key_and_unknown_model(fake, http):
    with pytest.raises(RealtimeAuthError, match="API key not valid"):
        await model_for(fake, http, api_key="wrong").connect(RealtimeConfig())
    with pytest.raises(RealtimeConfigError, match="not found"):
        await model_for(fake, http, model="gemini-nope").connect(RealtimeConfig())
    with pytest.raises(ValueError):
        GeminiLiveModel(KEY, url=fake.url + "?key=abc")


async def test_bad_input_is_refused_locally(fake, http):
    session = await model_for(fake, http).connect(RealtimeConfig())
    try:
        with pytest.raises(RealtimeError, match="16 kHz"):
            await session.send_audio(AudioChunk(b"\x00" * 160, PCMU_8K))
        with pytest.raises(RealtimeError):
            await session.send_audio_base64("not base64!!")
        with pytest.raises(RealtimeError):
            await session.send_event(ClientEvent({"setup": {}}))
        await session.send_text("The caller pressed 5.")
        await session.send_event(ClientEvent({"realtime_input": {"text": "raw snake_case"}}))
        await next_of(session, ResponseDone)
        assert fake.last.texts[:2] == ["The caller pressed 5.", "raw snake_case"]
    finally:
        await session.close()


async def test_manual_vad_activity_markers(fake, http, hello_16k):
    config = RealtimeConfig(turn_detection=TurnDetection(type=TurnDetectionType.NONE))
    session = await model_for(fake, http).connect(config)
    try:
        assert fake.last.manual
        await stream(session, hello_16k[: CHUNK * 30])
        await session.commit_audio()
        done = await next_of(session, ResponseDone)
        assert done.status == "completed"
        kinds = fake.last.kinds()
        assert kinds[1] == "realtimeInput.activityStart" and kinds[-1] == "realtimeInput.activityEnd"
        assert kinds.count("realtimeInput.activityStart") == 1
        # interrupt() in manual mode cuts generation with activityStart
        fake.reply_speed = 1.0
        fake.replies.append(Reply(duration_ms=3000))
        await stream(session, hello_16k[: CHUNK * 10])
        await session.commit_audio()
        await next_of(session, AudioDelta)
        await session.interrupt()
        cancelled = await next_of(session, ResponseDone)
        assert cancelled.status == "cancelled"
        assert fake.last.kinds()[-1] == "realtimeInput.activityStart"
    finally:
        await session.close()


async def test_mutate_context_requires_resumption_and_resume_with(fake, http, hello_16k):
    session = await model_for(fake, http).connect(RealtimeConfig(instructions="v1"))
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, ResponseDone)
        await next_of(session, ResumptionHandle)
        handle = session.resumption_handle
        assert handle
        new = RealtimeConfig(instructions="v2", voice="Kore", model="other-model-ignored")
        outcome = await session.mutate_context(new)
        assert outcome.kind is ContextMutationKind.REQUIRES_RESUMPTION and outcome.config == new
        await session.resume_with(new)
        assert (await next_of(session, Reconnected)).reason == "context_update"
        setup = fake.last.setup
        assert setup["systemInstruction"]["parts"][0]["text"] == "v2"
        assert setup["model"] == f"models/{GeminiLiveModel(KEY).model_id}"
        assert setup["sessionResumption"] == {"handle": handle} and fake.last.resumed_from == handle
        assert setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"] == "Kore"
        await stream(session, hello_16k[: CHUNK * 20] + SILENCE)
        assert (await next_of(session, ResponseDone)).status == "completed"
        assert session.config.instructions == "v2"
    finally:
        await session.close()


async def test_close_is_bounded_and_leaves_no_tasks(fake, http, hello_16k):
    before = set(asyncio.all_tasks())
    session = await model_for(fake, http).connect(RealtimeConfig())
    await stream(session, hello_16k + SILENCE)
    await next_of(session, AudioDelta)
    start = time.monotonic()
    await session.close()
    assert time.monotonic() - start < 2.0


    async def drain() -> int:  # events queued before close() are still delivered, then the end
        n = 0
        while await session.next_event() is not None:
            n += 1
        return n

    assert await asyncio.wait_for(drain(), 1.0) < 1000
    assert await asyncio.wait_for(session.next_event(), 1.0) is None
    assert session.disconnect_reason == "closed by client"
    await asyncio.sleep(0.05)
    leftover = [
        t for t in asyncio.all_tasks() - before
        if not t.done() and ("gemini" in t.get_name() or "ws-writer" in t.get_name())
    ]
    assert not leftover, leftover
    with pytest.raises(RealtimeError):
        await session.send_text("too late")
    await session.close()  # idempotent


async def test_model_owns_its_http_client_when_none_given(fake):
    model = GeminiLiveModel(KEY, url=fake.url)
    session = await model.connect(RealtimeConfig())
    await session.close()
    await model.aclose()
    assert "test-key" not in repr(model)


async def test_go_away_without_a_handle_ends_the_session_clearly(fake, http):
    fake.send_handles = False
    session = await model_for(fake, http).connect(RealtimeConfig())
    await fake.go_away(time_left=0.5, close_after=0.3)
    error = await next_of(session, ErrorEvent)
    assert error.fatal and "no resumption handle" in error.message and "goAway" in error.message
    assert await asyncio.wait_for(session.next_event(), 2.0) is None
    assert "no resumption handle" in (session.disconnect_reason or "")
    assert len(fake.connections) == 1
    await session.close()


async def test_audio_buffered_during_a_switch_is_bounded(fake, http, hello_16k):
    model = model_for(fake, http, max_buffered_audio_ms=200)
    session = await model.connect(RealtimeConfig())
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, ResponseDone)
        await next_of(session, ResumptionHandle)
        fake.fail_setups = 1  # the first resumption attempt fails, the second succeeds
        await fake.close_connection(1011, "Internal error encountered.")
        await stream(session, bytes(CHUNK * 50))  # 1 s while the connection is down
        await next_of(session, Reconnected)
        # at most 200 ms (10 chunks) were kept; the oldest were dropped
        assert session.dropped_audio_bytes >= CHUNK * 39 and session.dropped_audio_bytes % CHUNK == 0
        await fake.wait_for(lambda: len(fake.last.audio) >= CHUNK * 10, 2.0)
        await asyncio.sleep(0.05)
        assert len(fake.last.audio) == CHUNK * 10
        assert len(fake.connections) == 3
    finally:
        await session.close()


async def test_go_away_mid_turn_waits_for_the_turn_and_its_handle(fake, http, hello_16k):
    fake.reply_speed = 4.0
    fake.replies.append(Reply(duration_ms=1200))
    session = await model_for(fake, http).connect(RealtimeConfig())
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, AudioDelta)
        await fake.go_away(time_left=5.0)
        seen: list = []
        await next_of(session, Reconnected, seen=seen)
        done = [e for e in seen if isinstance(e, ResponseDone)]
        assert done and done[0].status == "completed"  # the reply was heard in full first
        handles = [e.handle for e in seen if isinstance(e, ResumptionHandle) and e.handle]
        assert fake.last.resumed_from == handles[-1]  # the handle that includes that turn
        assert fake.last.conversation.turns == 1
    finally:
        await session.close()


async def test_resumption_lines_carry_the_call_id_at_warning(fake, http, hello_16k, caplog):
    """Provider fault lines go through the caller's adapter: the call id is on every one, and a
    provider that stops serving the call (lost connection, failed attempt) is a WARNING."""
    from telephony_agent.logs import call_logger

    session = await model_for(fake, http).connect(RealtimeConfig())
    session.use_logger(call_logger("test.call", "CA" + "7" * 32))
    caplog.set_level("DEBUG", logger="telephony_agent.realtime")
    try:
        await stream(session, hello_16k + SILENCE)
        await next_of(session, ResponseDone)
        await next_of(session, ResumptionHandle)
        fake.fail_setups = 1  # the first resumption attempt fails, the second succeeds
        await fake.close_connection(1011, "Internal error encountered.")
        await next_of(session, Reconnected)
    finally:
        await session.close()
    lines = [r for r in caplog.records if r.name == "telephony_agent.realtime.providers.gemini"]
    messages = [r.getMessage() for r in lines if r.levelname == "WARNING"]
    assert any("connection lost" in m for m in messages), messages
    assert any("attempt 1 of 3 failed" in m for m in messages), messages
    assert any("resumed after" in m for m in messages), messages
    assert lines and all(getattr(r, "call_id", None) == "CA" + "7" * 32 for r in lines)
