"""Gemini Live sans-I/O: setup and client message shapes, server message translation (C.3-C.5)."""

from __future__ import annotations

import base64

import orjson
import pytest
from peers.fake_gemini import validate_client_message

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeConnectionError,
    ServerError,
)
from telephony_agent.realtime.events import (
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCallDone,
    GoAway,
    InputTranscriptCompleted,
    InputTranscriptDelta,
    Interrupted,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    ResumptionHandle,
    SessionCreated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    ToolCallCancelled,
    UnknownEvent,
    Usage,
)
from telephony_agent.realtime.providers.gemini_protocol import (
    GeminiEventTranslator,
    activity_end_message,
    activity_start_message,
    audio_message,
    audio_stream_end_message,
    close_error,
    parse_duration,
    setup_message,
    text_message,
    tool_response_message,
)
from telephony_agent.realtime.types import (
    PCM16_24K,
    PCMU_8K,
    RealtimeConfig,
    ToolDefinition,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
)

MODEL = "gemini-2.5-flash-native-audio-preview-09-2025"


def frame(message: dict, binary: bool = True) -> bytes | str:
    data = orjson.dumps(message)
    return data if binary else data.decode()


def audio_msg(pcm: bytes) -> dict:
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(pcm).decode()}}
    return {"serverContent": {"modelTurn": {"parts": [part]}}}


# -- client messages --------------------------------------------------------------------------


def full_config(**changes) -> RealtimeConfig:
    config = RealtimeConfig(
        instructions="You are a concise phone agent.",
        voice="Kore",
        temperature=0.7,
        max_output_tokens=1024,
        tools=(
            ToolDefinition(
                "end_call",
                "Hang up the call.",
                {"type": "object", "properties": {"reason": {"type": "string"}}, "required": ["reason"]},
            ),
        ),
        turn_detection=TurnDetection(prefix_padding_ms=20, silence_duration_ms=500),
        extras={"proactivity": {"proactiveAudio": True}, "generationConfig": {"topP": 0.9}},
    )
    return config.with_changes(**changes)


def test_setup_message_shape():
    msg = setup_message(full_config(), MODEL, None)
    setup = msg["setup"]
    assert list(msg) == ["setup"]
    assert setup["model"] == f"models/{MODEL}"
    gen = setup["generationConfig"]
    assert gen["responseModalities"] == ["AUDIO"]
    assert gen["speechConfig"] == {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}}
    assert gen["temperature"] == 0.7 and gen["maxOutputTokens"] == 1024
    assert gen["topP"] == 0.9  # extras merged deeply
    assert setup["systemInstruction"] == {"parts": [{"text": "You are a concise phone agent."}]}
    decl = setup["tools"][0]["functionDeclarations"][0]
    assert decl["name"] == "end_call"
    assert decl["parametersJsonSchema"]["properties"] == {"reason": {"type": "string"}}
    assert "parameters" not in decl
    ric = setup["realtimeInputConfig"]
    assert ric["automaticActivityDetection"] == {"disabled": False, "prefixPaddingMs": 20, "silenceDurationMs": 500}
    assert ric["activityHandling"] == "START_OF_ACTIVITY_INTERRUPTS"
    assert setup["inputAudioTranscription"] == {} and setup["outputAudioTranscription"] == {}
    assert setup["sessionResumption"] == {}
    assert "slidingWindow" in setup["contextWindowCompression"]
    assert setup["proactivity"] == {"proactiveAudio": True}
    assert validate_client_message(msg) is None


def test_setup_message_resumption_manual_vad_and_no_interruption():
    config = full_config(
        turn_detection=TurnDetection(type=TurnDetectionType.NONE, interrupt_response=False), extras={}
    )
    setup = setup_message(config, "models/" + MODEL, "CiQhandle")["setup"]
    assert setup["model"] == f"models/{MODEL}"
    assert setup["sessionResumption"] == {"handle": "CiQhandle"}
    assert setup["realtimeInputConfig"]["automaticActivityDetection"] == {"disabled": True}
    assert setup["realtimeInputConfig"]["activityHandling"] == "NO_INTERRUPTION"
    assert validate_client_message({"setup": setup}) is None


def test_setup_refuses_unsupported_formats_and_bad_tool_names():
    with pytest.raises(RealtimeConfigError, match="16 kHz"):
        setup_message(RealtimeConfig(input_format=PCMU_8K), MODEL)
    with pytest.raises(RealtimeConfigError, match="24 kHz"):
        setup_message(RealtimeConfig(output_format=PCMU_8K), MODEL)
    with pytest.raises(RealtimeConfigError, match="function name"):
        setup_message(RealtimeConfig(tools=(ToolDefinition("bad name!", "x"),)), MODEL)
    # extras cannot change the model
    setup = setup_message(RealtimeConfig(extras={"model": "models/other"}), MODEL)["setup"]
    assert setup["model"] == f"models/{MODEL}"


def test_realtime_input_and_tool_response_messages():
    pcm = b"\x01\x00" * 320
    msg = audio_message(pcm)
    assert msg == {"realtimeInput": {"audio": {"mimeType": "audio/pcm;rate=16000", "data": base64.b64encode(pcm).decode()}}}
    for m in (msg, text_message("The caller pressed 1."), activity_start_message(), activity_end_message(),
              audio_stream_end_message()):
        assert validate_client_message(m) is None, m
        assert len(m["realtimeInput"]) == 1
    ok = tool_response_message(ToolResponse("fc_1", {"ok": True}, "end_call"))
    assert ok == {"toolResponse": {"functionResponses": [{"id": "fc_1", "name": "end_call", "response": {"output": {"ok": True}}}]}}
    err = tool_response_message(ToolResponse("fc_2", {"error": "boom"}, "lookup", is_error=True))
    assert err["toolResponse"]["functionResponses"][0]["response"] == {"error": {"error": "boom"}}
    text = tool_response_message(ToolResponse("fc_3", '{"a": 1}', "x"))
    assert text["toolResponse"]["functionResponses"][0]["response"] == {"output": {"a": 1}}
    plain = tool_response_message(ToolResponse("fc_4", "done", "x"))
    assert plain["toolResponse"]["functionResponses"][0]["response"] == {"output": "done"}
    for m in (ok, err, text, plain):
        assert validate_client_message(m) is None


def test_conformance_rejects_bad_messages():
    assert validate_client_message({"realtimeInput": {"audio": {"mimeType": "x", "data": "AA=="}, "text": "hi"}})
    assert validate_client_message({"setup": {"model": "m", "bogusField": 1}})
    assert validate_client_message({"nope": {}})
    assert validate_client_message({"setup": {"model": "m", "realtimeInputConfig": {"bogus": 1}}})


# -- server messages --------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_audio_turn_translation(binary):
    tr = GeminiEventTranslator("sess")
    assert tr.feed(frame({"setupComplete": {}}, binary)) == [SessionCreated("sess", raw={"setupComplete": {}})]
    pcm = b"\x10\x00" * 480
    events = tr.feed(frame(audio_msg(pcm), binary))
    assert events[0] == ResponseCreated("turn-1")
    assert isinstance(events[1], AudioDelta)
    assert events[1].item_id == "turn-1" and events[1].data == pcm and events[1].format == PCM16_24K
    assert tr.feed(frame({"serverContent": {"outputTranscription": {"text": "Hello "}}}, binary)) == [
        OutputTranscriptDelta("turn-1", "Hello ")
    ]
    tr.feed(frame({"serverContent": {"outputTranscription": {"text": "there"}}}, binary))
    assert tr.feed(frame({"serverContent": {"generationComplete": True}}, binary)) == [AudioDone("turn-1", "turn-1")]
    usage_meta = {"promptTokenCount": 147, "responseTokenCount": 36, "totalTokenCount": 183}
    done = tr.feed(frame({"serverContent": {"turnComplete": True}, "usageMetadata": usage_meta}, binary))
    usage = Usage(147, 36, 183, raw=usage_meta)
    assert done == [
        usage,
        OutputTranscriptDone("turn-1", "Hello there"),
        ResponseDone("turn-1", "completed", None, usage),
    ]
    # the next turn gets a new id
    assert tr.feed(frame(audio_msg(pcm), binary))[0] == ResponseCreated("turn-2")


def test_text_parts_skip_thoughts_and_content_with_turn_complete():
    tr = GeminiEventTranslator()
    msg = {
        "serverContent": {
            "modelTurn": {"parts": [{"text": "thinking...", "thought": True}, {"text": "Hi!"}]},
            "turnComplete": True,
        }
    }
    assert tr.translate(msg) == [
        ResponseCreated("turn-1"),
        TextDelta("turn-1", "Hi!"),
        TextDone("turn-1", "Hi!"),
        ResponseDone("turn-1", "completed"),
    ]


def test_input_transcription():
    tr = GeminiEventTranslator()
    assert tr.translate({"serverContent": {"inputTranscription": {"text": "hi ", "finished": False}}}) == [
        InputTranscriptDelta("input-1", "hi ")
    ]
    assert tr.translate({"serverContent": {"inputTranscription": {"text": "there", "finished": True}}}) == [
        InputTranscriptDelta("input-1", "there"),
        InputTranscriptCompleted("input-1", "hi there"),
    ]
    # an unfinished transcript is completed at turnComplete
    tr.translate({"serverContent": {"inputTranscription": {"text": "again"}}})
    events = tr.translate({"serverContent": {"turnComplete": True}})
    assert InputTranscriptCompleted("input-2", "again") in events


def test_interrupted_then_turn_complete_cancels_and_drops_stragglers():
    tr = GeminiEventTranslator()
    pcm = b"\x00\x01" * 100
    tr.translate(audio_msg(pcm))
    assert tr.translate({"serverContent": {"interrupted": True}}) == [Interrupted("turn-1")]
    assert tr.translate(audio_msg(pcm)) == []  # late audio of the cut turn
    assert tr.translate({"serverContent": {"generationComplete": True}}) == []
    assert tr.translate({"serverContent": {"turnComplete": True}}) == [
        ResponseDone("turn-1", "cancelled", "turn_detected")
    ]
    assert tr.idle
    assert tr.translate(audio_msg(pcm))[0] == ResponseCreated("turn-2")


def test_discard_drops_the_rest_of_a_turn():
    tr = GeminiEventTranslator()
    pcm = b"\x00\x01" * 100
    tr.translate(audio_msg(pcm))
    tr.discard("turn-1")
    assert tr.translate(audio_msg(pcm)) == []
    assert tr.translate({"serverContent": {"turnComplete": True}}) == [ResponseDone("turn-1", "completed")]
    assert [type(e) for e in tr.translate(audio_msg(pcm))] == [ResponseCreated, AudioDelta]


def test_tool_call_and_cancellation():
    tr = GeminiEventTranslator()
    msg = {
        "toolCall": {
            "functionCalls": [
                {"id": "fc_1", "name": "lookup", "args": {"q": "weather", "n": 2}},
                {"id": "fc_2", "name": "end_call"},
            ]
        }
    }
    events = tr.translate(msg)
    assert events[0] == ResponseCreated("turn-1")
    calls = [e for e in events if isinstance(e, FunctionCallDone)]
    assert [c.call_id for c in calls] == ["fc_1", "fc_2"]
    assert orjson.loads(calls[0].arguments) == {"q": "weather", "n": 2}
    assert isinstance(calls[0].arguments, str) and calls[1].arguments == "{}"
    assert events[-1] == ResponseDone("turn-1", "completed", "tool_calls")
    assert not tr.idle and tr.pending_tool_ids == {"fc_1", "fc_2"}
    assert tr.translate({"toolCallCancellation": {"ids": ["fc_1"]}}) == [ToolCallCancelled(("fc_1",))]
    tr.tool_answered("fc_2")
    assert tr.idle
    # a bare turnComplete right after a toolCall does not close a second response
    assert tr.translate({"serverContent": {"turnComplete": True}}) == []


def test_barge_in_during_tool_call_cancels_the_parked_response():
    tr = GeminiEventTranslator()
    tr.translate({"toolCall": {"functionCalls": [{"id": "fc_1", "name": "slow", "args": {}}]}})
    assert tr.translate({"toolCallCancellation": {"ids": ["fc_1"]}}) == [ToolCallCancelled(("fc_1",))]
    assert tr.translate({"serverContent": {"interrupted": True}}) == [Interrupted(None)]
    assert tr.translate({"serverContent": {"turnComplete": True}}) == [
        ResponseDone("turn-1", "cancelled", "turn_detected")
    ]


def test_lifecycle_messages():
    tr = GeminiEventTranslator()
    assert tr.translate({"goAway": {"timeLeft": "50s"}}) == [GoAway(50.0)]
    assert tr.translate({"goAway": {"timeLeft": "9.5s"}}) == [GoAway(9.5)]
    assert tr.translate({"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}}) == [
        ResumptionHandle("h1", True)
    ]
    assert tr.translate({"sessionResumptionUpdate": {"newHandle": "", "resumable": False}}) == [
        ResumptionHandle("", False)
    ]
    assert tr.translate({"sessionResumptionUpdate": {}}) == [ResumptionHandle("", False)]
    assert tr.latest_handle == "h1"  # the latest NON-EMPTY one
    assert tr.translate({"voiceActivity": {"voiceActivityType": "ACTIVITY_START"}}) == [SpeechStarted(0)]
    assert tr.translate({"voiceActivity": {"voiceActivityType": "ACTIVITY_END", "audioOffset": "1.5s"}}) == [
        SpeechStopped(1500)
    ]
    usage_only = tr.translate({"usageMetadata": {"totalTokenCount": 5}})
    assert usage_only == [Usage(0, 0, 5, raw={"totalTokenCount": 5})]


def test_unknown_and_bad_frames():
    tr = GeminiEventTranslator()
    assert tr.translate({"somethingNew": {"x": 1}}) == [UnknownEvent({"somethingNew": {"x": 1}})]
    assert isinstance(tr.translate({"serverContent": {"groundingMetadata": {}}})[0], UnknownEvent)
    assert tr.translate({"serverContent": {"turnCompleteReason": "NEED_MORE_INPUT"}}) == []
    bad = tr.feed(b"\xff not json")
    assert isinstance(bad[0], ErrorEvent) and not bad[0].fatal
    assert isinstance(tr.feed("[1, 2]")[0], ErrorEvent)
    broken = tr.translate(
        {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "@@@"}}]}}}
    )
    assert isinstance(broken[0], ErrorEvent)


def test_parse_duration():
    assert parse_duration("50s") == 50.0
    assert parse_duration("9.5s") == 9.5
    assert parse_duration({"seconds": 3, "nanos": 500_000_000}) == 3.5
    assert parse_duration("garbage") == 0.0


def test_close_codes_name_the_reason():
    e1007 = close_error(1007, "Request contains an invalid argument.")
    assert isinstance(e1007, RealtimeConfigError) and "invalid argument" in str(e1007) and "1007" in str(e1007)
    expired = close_error(1007, "API key expired. Please renew the API key.")
    assert isinstance(expired, RealtimeAuthError) and "API key expired" in str(expired)
    e1008 = close_error(1008, "Operation is not implemented, or supported, or enabled.")
    assert isinstance(e1008, RealtimeConfigError) and "not implemented" in str(e1008)
    e1011 = close_error(1011, "Deadline expired before operation could complete.")
    assert isinstance(e1011, ServerError) and "Deadline expired" in str(e1011)
    other = close_error(1006, "")
    assert isinstance(other, RealtimeConnectionError) and "1006" in str(other)


@pytest.mark.parametrize("data", ["not base64!", "AAAA AAAA", "AA", "=AAA", "AA==AA==", "AAAÄ", 12])
def test_undecodable_audio_is_an_error_not_audio(data: object) -> None:
    """Bad base64 in a model turn's audio (outside the alphabet, missing or misplaced padding,
    data after it, a non-ASCII character, not a string) is an error event, never audio; good
    base64 decodes, and the client's audio message encodes it back the same."""
    tr = GeminiEventTranslator()
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
    (event,) = tr.feed(frame({"serverContent": {"modelTurn": {"parts": [part]}}}))
    assert isinstance(event, ErrorEvent) and event.code == "invalid_audio"
    pcm = b"\x10\x00" * 480
    good = base64.b64encode(pcm).decode()
    events = GeminiEventTranslator().feed(frame(audio_msg(pcm)))
    assert isinstance(events[1], AudioDelta) and events[1].data == pcm
    assert audio_message(pcm)["realtimeInput"]["audio"]["data"] == good
