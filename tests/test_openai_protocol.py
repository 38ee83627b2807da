"""Sans-I/O OpenAI Realtime translation: session.update shape and server event translation."""

from __future__ import annotations

import base64

import pydantic
import pytest
from openai.types.realtime import SessionUpdateEvent
from openai.types.realtime.realtime_client_event import RealtimeClientEvent

from telephony_agent.realtime import events as ev
from telephony_agent.realtime.errors import RealtimeConfigError
from telephony_agent.realtime.providers.openai_protocol import (
    OpenAIEventTranslator,
    audio_append_message,
    format_from_object,
    format_object,
    item_create_message,
    session_update_message,
    tool_output_item,
    truncate_message,
    user_text_item,
)
from telephony_agent.realtime.types import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    RealtimeConfig,
    ToolDefinition,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
)

CLIENT_EVENT = pydantic.TypeAdapter(RealtimeClientEvent)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- session.update ---------------------------------------------------------------------------


def test_session_update_ga_shape() -> None:
    config = RealtimeConfig(
        instructions="Be brief.",
        voice="marin",
        tools=(ToolDefinition("end_call", "Hang up.", {"type": "object", "properties": {}, "required": []}),),
        input_transcription="gpt-4o-mini-transcribe",
        temperature=0.7,
        max_output_tokens=512,
        extras={"truncation": "auto", "audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
    )
    msg = session_update_message(config, input_format=PCMU_8K, output_format=PCMU_8K)
    session = msg["session"]
    assert msg["type"] == "session.update"
    assert session["type"] == "realtime"
    assert "temperature" not in session and "model" not in session
    assert session["instructions"] == "Be brief."
    assert session["output_modalities"] == ["audio"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}  # extras merged deeply
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
        "create_response": True, "interrupt_response": True,
    }
    assert session["tools"] == [{"type": "function", "name": "end_call", "description": "Hang up.",
                                 "parameters": {"type": "object", "properties": {}, "required": []}}]
    assert session["tool_choice"] == "auto"
    assert session["max_output_tokens"] == 512
    assert session["truncation"] == "auto"
    assert isinstance(CLIENT_EVENT.validate_python(msg), SessionUpdateEvent)


def test_session_update_pcm_semantic_and_manual() -> None:
    semantic = RealtimeConfig(turn_detection=TurnDetection(TurnDetectionType.SEMANTIC_VAD, eagerness="low"),
                              modalities=("text",), tool_choice="lookup")
    s = session_update_message(semantic, input_format=PCM16_24K, output_format=PCM16_24K)["session"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"] == {"type": "semantic_vad", "eagerness": "low",
                                                     "create_response": True, "interrupt_response": True}
    assert s["audio"]["input"]["transcription"] is None
    assert s["output_modalities"] == ["text"]
    assert s["tool_choice"] == {"type": "function", "name": "lookup"}
    assert "voice" not in s["audio"]["output"]
    manual = session_update_message(RealtimeConfig(turn_detection=TurnDetection(TurnDetectionType.NONE)))
    assert manual["session"]["audio"]["input"]["turn_detection"] is None
    assert manual["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}  # the default
    for m in (manual, {"type": "session.update", "session": s}):
        CLIENT_EVENT.validate_python(m)


def test_formats() -> None:
    assert format_object(PCM16_24K) == {"type": "audio/pcm", "rate": 24000}
    assert format_from_object({"type": "audio/pcmu"}) == PCMU_8K
    assert format_from_object({"type": "audio/pcm", "rate": 24000}) == PCM16_24K
    assert format_from_object("pcm16") is None
    with pytest.raises(RealtimeConfigError):
        format_object(PCM16_16K)


def test_client_items_validate() -> None:
    msgs = [
        item_create_message(user_text_item("The caller pressed 5.", "item_abc")),
        item_create_message(tool_output_item(ToolResponse("call_1", {"ok": True}), "item_def")),
        truncate_message("item_x", 1200),
    ]
    for m in msgs:
        CLIENT_EVENT.validate_python(m)
    assert msgs[1]["item"]["output"] == '{"ok":true}'


# -- translation ------------------------------------------------------------------------------


def feed(tr: OpenAIEventTranslator, *msgs: dict) -> list:
    out = []
    for m in msgs:
        out.extend(tr.translate(m))
    return out


def test_translate_every_ga_event() -> None:
    tr = OpenAIEventTranslator(PCMU_8K)
    audio = bytes(range(160)) * 2  # 40 ms of mu-law
    user_item = {"id": "item_u1", "type": "message", "role": "user", "status": "completed",
                 "content": [{"type": "input_audio", "transcript": None}]}
    asst = {"id": "item_a1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    call = {"id": "item_f1", "type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": ""}
    base = {"response_id": "resp_1", "item_id": "item_a1", "output_index": 0, "content_index": 0}
    stream = [
        {"type": "session.created", "session": {"id": "sess_1", "type": "realtime"}},
        {"type": "session.updated", "session": {"id": "sess_1"}},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 700, "item_id": "item_u1"},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2500, "item_id": "item_u1"},
        {"type": "input_audio_buffer.committed", "item_id": "item_u1", "previous_item_id": None},
        {"type": "conversation.item.added", "item": user_item, "previous_item_id": None},
        {"type": "conversation.item.done", "item": user_item, "previous_item_id": None},
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "item_u1", "delta": "Book"},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_u1",
         "content_index": 0, "transcript": "Book a table."},
        {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
        {"type": "rate_limits.updated", "rate_limits": []},
        {"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0, "item": asst},
        {"type": "conversation.item.added", "item": asst, "previous_item_id": "item_u1"},
        {"type": "response.content_part.added", **base, "part": {"type": "audio", "transcript": ""}},
        {"type": "response.output_audio.delta", **base, "delta": b64(audio)},
        {"type": "response.output_audio_transcript.delta", **base, "delta": "Sure"},
        {"type": "response.output_audio.done", **base},
        {"type": "response.output_audio_transcript.done", **base, "transcript": "Sure, for how many?"},
        {"type": "response.content_part.done", **base, "part": {"type": "audio"}},
        {"type": "response.output_item.done", "response_id": "resp_1", "output_index": 0, "item": asst},
        {"type": "response.output_item.added", "response_id": "resp_1", "output_index": 1, "item": call},
        {"type": "response.function_call_arguments.delta", "response_id": "resp_1", "item_id": "item_f1",
         "output_index": 1, "call_id": "call_1", "delta": "{\"q\""},
        {"type": "response.function_call_arguments.done", "response_id": "resp_1", "item_id": "item_f1",
         "output_index": 1, "call_id": "call_1", "name": "lookup", "arguments": "{\"q\": 1}"},
        {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "output": [],
                                               "usage": {"total_tokens": 30, "input_tokens": 10,
                                                         "output_tokens": 20}}},
        {"type": "response.output_text.delta", "item_id": "item_t", "delta": "hi"},
        {"type": "response.output_text.done", "item_id": "item_t", "text": "hi there"},
        {"type": "input_audio_buffer.cleared"},
        {"type": "conversation.item.truncated", "item_id": "item_a1", "content_index": 0, "audio_end_ms": 10},
        {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "bad"}},
        {"type": "something.new", "x": 1},
    ]
    events = feed(tr, *stream[:15])
    assert tr.response_active and tr.response_id == "resp_1" and tr.current_item_id == "item_a1"
    assert tr.generated_ms() == 40.0
    events += feed(tr, *stream[15:])
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "SessionCreated", "SessionUpdated", "SpeechStarted", "SpeechStopped", "AudioCommitted",
        "InputTranscriptDelta", "InputTranscriptCompleted", "ResponseCreated", "UnknownEvent", "AudioDelta",
        "OutputTranscriptDelta", "AudioDone", "OutputTranscriptDone", "FunctionCallDone", "ResponseDone",
        "TextDelta", "TextDone", "AudioCleared", "ErrorEvent", "UnknownEvent",
    ]
    by = {type(e): e for e in events}
    assert by[ev.SessionCreated].session_id == "sess_1"
    assert by[ev.SpeechStarted] == ev.SpeechStarted(700, "item_u1")
    assert by[ev.SpeechStopped] == ev.SpeechStopped(2500, "item_u1")
    delta = by[ev.AudioDelta]
    assert delta.data == audio and delta.format == PCMU_8K and delta.response_id == "resp_1"
    call_done = by[ev.FunctionCallDone]
    assert (call_done.call_id, call_done.name, call_done.arguments) == ("call_1", "lookup", "{\"q\": 1}")
    done = by[ev.ResponseDone]
    assert done.status == "completed" and done.usage is not None and done.usage.total_tokens == 30
    assert by[ev.ErrorEvent].code == "invalid_value" and not by[ev.ErrorEvent].fatal
    assert not tr.response_active
    # The record: user transcript, assistant transcript, the function call.
    items = tr.reinjection_items()
    assert items[0] == {"id": "item_u1", "type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "Book a table."}]}
    assert items[1]["role"] == "assistant" and items[1]["content"] == [{"type": "output_text",
                                                                         "text": "Sure, for how many?"}]
    assert items[2] == {"id": "item_f1", "type": "function_call", "call_id": "call_1", "name": "lookup",
                        "arguments": "{\"q\": 1}"}
    for item in items:
        CLIENT_EVENT.validate_python(item_create_message(item))


def test_beta_names_and_created_alias() -> None:
    tr = OpenAIEventTranslator(PCM16_24K)
    item = {"id": "item_s", "type": "message", "role": "system", "content": [{"type": "input_text", "text": "x"}]}
    events = feed(tr,
                  {"type": "conversation.item.created", "item": item},
                  {"type": "response.audio.delta", "item_id": "item_b", "delta": b64(b"\0" * 480)},
                  {"type": "response.audio_transcript.delta", "item_id": "item_b", "delta": "a"})
    assert [type(e) for e in events] == [ev.AudioDelta, ev.OutputTranscriptDelta]
    assert tr.generated_ms("item_b") == 10.0
    assert tr.reinjection_items()[0]["role"] == "system"


def test_cancelled_response_reason_and_transcript_from_output() -> None:
    tr = OpenAIEventTranslator(PCMU_8K)
    feed(tr, {"type": "response.created", "response": {"id": "resp_2"}},
         {"type": "response.output_item.added", "item": {"id": "item_a", "type": "message", "role": "assistant"}})
    (done,) = tr.translate({"type": "response.done", "response": {
        "id": "resp_2", "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"},
        "output": [{"id": "item_a", "type": "message", "role": "assistant",
                    "content": [{"type": "output_audio", "transcript": "Let me"}]}]}})
    assert done == ev.ResponseDone("resp_2", "cancelled", "turn_detected", None)
    assert tr.reinjection_items()[0]["content"][0]["text"] == "Let me"


def test_truncate_cuts_the_transcript_and_outputs_follow_their_calls() -> None:
    tr = OpenAIEventTranslator(PCMU_8K)
    feed(tr,
         {"type": "response.output_item.added", "item": {"id": "item_a", "type": "message", "role": "assistant"}},
         {"type": "response.output_audio.delta", "item_id": "item_a", "delta": b64(b"\xff" * 8000)},
         {"type": "response.output_audio_transcript.done", "item_id": "item_a",
          "transcript": "one two three four five six seven eight nine ten"})
    assert tr.generated_ms("item_a") == 1000.0
    tr.record_truncate("item_a", 500)
    assert tr.entries["item_a"].text == "one two three four five"
    assert tr.current_item_id is None
    # An output whose call fell out of the record is not re-injected.
    tr.record_item({"id": "item_o", "type": "function_call_output", "call_id": "call_gone", "output": "{}"})
    assert all(i["type"] != "function_call_output" for i in tr.reinjection_items())


def test_record_is_bounded() -> None:
    tr = OpenAIEventTranslator(PCMU_8K, max_entries=5)
    for i in range(20):
        tr.record_item(user_text_item(f"message {i}", f"item_{i}"))
    texts = [i["content"][0]["text"] for i in tr.reinjection_items()]
    assert texts == [f"message {i}" for i in range(15, 20)]


@pytest.mark.parametrize("msg", [
    None, [], "text", {"no": "type"}, {"type": 5},
    {"type": "response.output_audio.delta", "item_id": "x", "delta": "%%%not-base64"},
    {"type": "response.created", "response": "oops"},
    {"type": "error", "error": "flat string"},
    {"type": "response.done", "response": {"status_details": {"error": {"code": "x"}}}},
    {"type": "conversation.item.added", "item": ["not", "a", "dict"]},
])
def test_malformed_events_never_raise(msg: object) -> None:
    tr = OpenAIEventTranslator(PCMU_8K)
    events = tr.translate(msg)
    assert all(isinstance(e, (ev.UnknownEvent, ev.ErrorEvent, ev.ResponseDone)) for e in events)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 160, 320, 4800])
def test_the_audio_append_is_the_sdks_event_with_the_audio_as_base64(n: int) -> None:
    data = bytes((i * 37 + 11) % 256 for i in range(n))
    event = CLIENT_EVENT.validate_python(audio_append_message(data))
    assert event.type == "input_audio_buffer.append"
    assert base64.b64decode(event.audio, validate=True) == data  # type: ignore[union-attr]


@pytest.mark.parametrize("delta", ["not base64!", "AAAA AAAA", "AA", "=AAA", "AA==AA==", "AAAÄ"])
def test_an_undecodable_audio_delta_is_an_error_not_audio(delta: str) -> None:
    """Bad base64 in a delta (a character outside the alphabet, missing or misplaced padding,
    data after it, a non-ASCII character) is an error event, never audio; good base64 decodes."""
    tr = OpenAIEventTranslator(PCMU_8K)
    msg = {"type": "response.output_audio.delta", "response_id": "resp_1", "item_id": "item_a1",
           "output_index": 0, "content_index": 0, "delta": delta}
    (event,) = tr.translate(msg)
    assert isinstance(event, ev.ErrorEvent) and event.code == "bad_audio_delta"
    good = base64.b64encode(bytes(range(160))).decode()
    (event,) = tr.translate({**msg, "delta": good})
    assert isinstance(event, ev.AudioDelta) and event.data == bytes(range(160))
    assert audio_append_message(event.data)["audio"] == good  # and the append encodes it back the same
