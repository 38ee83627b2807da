"""Media Streams protocol state machine and message builders (docs/protocols.md, "Media Stream messages")."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony_agent.telephony.twilio.stream import (
    BadInput,
    BadInputKind,
    Connected,
    Dtmf,
    MarkEcho,
    Media,
    MediaFormat,
    MediaStreamProtocol,
    Start,
    Stop,
    StreamState,
    clear_message,
    mark_message,
    media_message,
    media_messages,
)

SID = "MZ" + "0123456789abcdef" * 2
CALL = "CA" + "f" * 32
ACC = "AC" + "e" * 32

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": ACC,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"tenant": "acme", "session": "s-42"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": SID,
}


def media(seq: int, chunk: int, payload: bytes = b"\xff" * 160, **over: object) -> dict:
    msg = {
        "event": "media",
        "sequenceNumber": str(seq),
        "streamSid": SID,
        "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                  "payload": base64.b64encode(payload).decode()},
    }
    msg.update(over)
    return msg


def feed(p: MediaStreamProtocol, *msgs: dict | str) -> list:
    out = []
    for m in msgs:
        out += p.receive_text(m if isinstance(m, str) else json.dumps(m))
    return out


def started() -> MediaStreamProtocol:
    p = MediaStreamProtocol()
    feed(p, CONNECTED, START)
    return p


def test_full_sequence() -> None:
    p = MediaStreamProtocol()
    ev = feed(
        p,
        CONNECTED,
        START,
        media(2, 1, b"\x01\x02\x03"),
        {"event": "dtmf", "streamSid": SID, "sequenceNumber": "3", "dtmf": {"track": "inbound_track", "digit": "7"}},
        {"event": "mark", "sequenceNumber": "4", "streamSid": SID, "mark": {"name": "resp_123:7"}},
        {"event": "stop", "sequenceNumber": "5", "streamSid": SID, "stop": {"accountSid": ACC, "callSid": CALL}},
    )
    assert ev == [
        Connected("Call", "1.0.0"),
        Start(SID, CALL, ACC, {"tenant": "acme", "session": "s-42"}, MediaFormat(), ("inbound",), 1),
        Media(b"\x01\x02\x03", 1, 0, 2, "inbound"),
        Dtmf("7", 3),
        MarkEcho("resp_123:7", 4),
        Stop(5, ACC, CALL),
    ]
    assert p.state is StreamState.STOPPED
    assert (p.stream_sid, p.call_sid, p.account_sid) == (SID, CALL, ACC)
    assert p.media_count == 1 and p.sequence_gaps == 0 and p.bad_input_total == 0


def test_start_without_connected_and_defaults() -> None:
    p = MediaStreamProtocol()
    minimal = {"event": "start", "start": {"accountSid": ACC, "streamSid": SID, "callSid": CALL}}
    (ev,) = feed(p, minimal)
    assert ev == Start(SID, CALL, ACC, {}, MediaFormat(), ("inbound",), None)


def test_sequence_gap_counted_but_delivered() -> None:
    p = started()
    ev = feed(p, media(2, 1), media(5, 2))
    assert all(isinstance(e, Media) for e in ev)
    assert p.sequence_gaps == 1


def test_twilio_compatible_sender_uuid_ids_no_account_no_counters() -> None:
    """A sender built on a framework's Twilio example: UUID ids, no accountSid, bare media frames."""
    import uuid

    stream, call = str(uuid.uuid4()), str(uuid.uuid4())
    p = MediaStreamProtocol()
    start = {"event": "start", "streamSid": stream, "start": {"streamSid": stream, "callSid": call,
                                                               "customParameters": {}}}
    (ev,) = feed(p, start)
    assert ev == Start(stream, call, None, {}, MediaFormat(), ("inbound",), None)
    frames = [{"event": "media", "streamSid": stream, "media": {"payload": base64.b64encode(b"\xff" * n).decode()}}
              for n in (160, 160, 80, 160)]
    got = feed(p, *frames)
    assert [(m.chunk, m.timestamp_ms) for m in got] == [(1, 0), (2, 20), (3, 40), (4, 50)]
    assert p.bad_input_total == 0


def test_stream_sid_only_at_top_level_is_accepted() -> None:
    p = MediaStreamProtocol()
    (ev,) = feed(p, {"event": "start", "streamSid": SID, "start": {"callSid": CALL}})
    assert isinstance(ev, Start) and ev.stream_sid == SID and ev.account_sid is None


def test_bad_input_names_its_event() -> None:
    p = MediaStreamProtocol()
    (ev,) = feed(p, {"event": "start", "start": {"streamSid": "MZ<>", "callSid": CALL}})
    assert isinstance(ev, BadInput) and ev.event == "start" and ev.kind is BadInputKind.BAD_FIELD
    (ev,) = feed(p, "{")
    assert isinstance(ev, BadInput) and ev.event == ""


def test_media_int_counters_accepted() -> None:
    p = started()
    m = media(2, 1)
    m["media"]["chunk"] = 1
    m["media"]["timestamp"] = 0
    (ev,) = feed(p, m)
    assert isinstance(ev, Media) and ev.chunk == 1


BAD_CASES: list[tuple[str, object, BadInputKind]] = [
    ("oversized", "x" * (64 * 1024 + 1), BadInputKind.OVERSIZED),
    ("oversized utf8", '{"event":"' + "é" * 40000 + '"}', BadInputKind.OVERSIZED),
    ("bad json", "{not json", BadInputKind.BAD_JSON),
    ("empty", "", BadInputKind.BAD_JSON),
    ("array", "[1,2]", BadInputKind.NOT_OBJECT),
    ("string", '"media"', BadInputKind.NOT_OBJECT),
    ("no event", {"streamSid": SID}, BadInputKind.UNKNOWN_EVENT),
    ("unknown event", {"event": "hello", "streamSid": SID}, BadInputKind.UNKNOWN_EVENT),
    ("event not string", {"event": 5}, BadInputKind.UNKNOWN_EVENT),
    ("media no sid", {k: v for k, v in media(2, 1).items() if k != "streamSid"}, BadInputKind.MISSING_FIELD),
    ("media wrong sid", media(2, 1, streamSid="MZ" + "1" * 32), BadInputKind.WRONG_STREAM_SID),
    ("media no object", {"event": "media", "streamSid": SID}, BadInputKind.MISSING_FIELD),
    ("media no payload", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "0"}}, BadInputKind.MISSING_FIELD),
    ("media payload not str", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "0", "payload": 5}}, BadInputKind.MISSING_FIELD),
    ("media chunk wrong type", {"event": "media", "streamSid": SID, "media": {"chunk": [1], "payload": "/w=="}}, BadInputKind.BAD_FIELD),
    ("media bad chunk", {"event": "media", "streamSid": SID, "media": {"chunk": "x", "timestamp": "0", "payload": "/w=="}}, BadInputKind.BAD_FIELD),
    ("media negative ts", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "-20", "payload": "/w=="}}, BadInputKind.BAD_FIELD),
    ("bad base64", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "0", "payload": "!!!!"}}, BadInputKind.BAD_BASE64),
    ("bad padding", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "0", "payload": "/w="}}, BadInputKind.BAD_BASE64),
    ("empty payload", {"event": "media", "streamSid": SID, "media": {"chunk": "1", "timestamp": "0", "payload": ""}}, BadInputKind.BAD_BASE64),
    ("bad seq", media(2, 1, sequenceNumber="two"), BadInputKind.BAD_FIELD),
    ("dtmf no digit", {"event": "dtmf", "streamSid": SID, "dtmf": {}}, BadInputKind.MISSING_FIELD),
    ("dtmf bad digit", {"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "77"}}, BadInputKind.BAD_FIELD),
    ("dtmf letter", {"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}}, BadInputKind.BAD_FIELD),
    ("mark no name", {"event": "mark", "streamSid": SID, "mark": {}}, BadInputKind.MISSING_FIELD),
    ("mark name not str", {"event": "mark", "streamSid": SID, "mark": {"name": 3}}, BadInputKind.BAD_FIELD),
    ("second start", START, BadInputKind.DUPLICATE),
    ("connected after start", CONNECTED, BadInputKind.DUPLICATE),
    ("stop wrong sid", {"event": "stop", "streamSid": "MZx"}, BadInputKind.WRONG_STREAM_SID),
]


@pytest.mark.parametrize("name,msg,kind", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_after_start(name: str, msg: object, kind: BadInputKind) -> None:
    p = started()
    ev = p.receive_text(msg if isinstance(msg, str) else json.dumps(msg))
    assert len(ev) == 1 and isinstance(ev[0], BadInput), ev
    assert ev[0].kind is kind, ev[0]
    assert p.bad_input[kind.value] == 1 and p.bad_input_total == 1
    # The stream carries on after bad input.
    assert p.state is StreamState.STREAMING
    assert isinstance(feed(p, media(50, 50))[0], Media)


BAD_START = [
    ("no start object", {"event": "start"}, BadInputKind.MISSING_FIELD),
    ("no callSid", {"event": "start", "start": {"accountSid": ACC, "streamSid": SID}}, BadInputKind.MISSING_FIELD),
    ("bad sid", {"event": "start", "start": {"accountSid": ACC, "streamSid": "MZ\"<>", "callSid": CALL}}, BadInputKind.BAD_FIELD),
    ("long sid", {"event": "start", "start": {"accountSid": ACC, "streamSid": "M" * 129, "callSid": CALL}}, BadInputKind.BAD_FIELD),
    ("sid with space", {"event": "start", "start": {"streamSid": "MZ 1", "callSid": CALL}}, BadInputKind.BAD_FIELD),
    ("sid not a string", {"event": "start", "start": {"streamSid": 7, "callSid": CALL}}, BadInputKind.BAD_FIELD),
    ("accountSid not a string", {"event": "start", "start": {"accountSid": 1, "streamSid": SID, "callSid": CALL}}, BadInputKind.BAD_FIELD),
    ("too many parameters", {"event": "start", "start": {"streamSid": SID, "callSid": CALL,
                                                         "customParameters": {str(i): "x" for i in range(65)}}}, BadInputKind.BAD_FIELD),
    ("top sid differs", {**START, "streamSid": "MZ" + "2" * 32}, BadInputKind.WRONG_STREAM_SID),
    ("params not dict", {"event": "start", "start": {**START["start"], "customParameters": ["a"]}}, BadInputKind.BAD_FIELD),
    ("param value int", {"event": "start", "start": {**START["start"], "customParameters": {"a": 1}}}, BadInputKind.BAD_FIELD),
    ("alaw", {"event": "start", "start": {**START["start"], "mediaFormat": {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1}}}, BadInputKind.BAD_FIELD),
    ("16k", {"event": "start", "start": {**START["start"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1}}}, BadInputKind.BAD_FIELD),
    ("tracks str", {"event": "start", "start": {**START["start"], "tracks": "inbound"}}, BadInputKind.BAD_FIELD),
    ("media before start", media(2, 1), BadInputKind.BEFORE_START),
    ("dtmf before start", {"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "1"}}, BadInputKind.BEFORE_START),
    ("mark before start", {"event": "mark", "streamSid": SID, "mark": {"name": "a"}}, BadInputKind.BEFORE_START),
    ("stop before start", {"event": "stop", "streamSid": SID}, BadInputKind.BEFORE_START),
]


@pytest.mark.parametrize("name,msg,kind", BAD_START, ids=[c[0] for c in BAD_START])
def test_bad_input_before_start(name: str, msg: dict, kind: BadInputKind) -> None:
    p = MediaStreamProtocol()
    feed(p, CONNECTED)
    (ev,) = feed(p, msg)
    assert isinstance(ev, BadInput) and ev.kind is kind, ev
    assert p.state is StreamState.AWAITING_START
    # A good start still works afterwards.
    assert isinstance(feed(p, START)[0], Start)


def test_binary_frame_and_after_stop_and_duplicate_connected() -> None:
    p = started()
    (ev,) = p.receive_bytes(b"\xff" * 160)
    assert ev.kind is BadInputKind.BINARY_FRAME
    feed(p, {"event": "stop", "sequenceNumber": "2", "streamSid": SID})
    for msg in (media(3, 1), START, {"event": "stop", "streamSid": SID}):
        (ev,) = feed(p, msg)
        assert ev.kind is BadInputKind.AFTER_STOP
    q = MediaStreamProtocol()
    feed(q, CONNECTED)
    assert feed(q, CONNECTED)[0].kind is BadInputKind.DUPLICATE
    assert dict(p.bad_input) == {"binary_frame": 1, "after_stop": 3}


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
            ["event", "streamSid", "media", "payload", "chunk", "timestamp", "start", "mark", "name",
             "dtmf", "digit", "sequenceNumber", "callSid", "accountSid", "customParameters", "mediaFormat"]), c, max_size=5),
        max_leaves=12,
    ).map(lambda v: json.dumps(v)),
))
def test_never_raises(text: str) -> None:
    for p in (MediaStreamProtocol(), started()):
        for ev in p.receive_text(text):
            assert isinstance(ev, (Connected, Start, Media, Dtmf, MarkEcho, Stop, BadInput))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["media", "start", "stop", "mark", "dtmf", "connected"]), st.dictionaries(
    st.sampled_from(["streamSid", "media", "start", "stop", "mark", "dtmf", "sequenceNumber"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8)), max_size=4)),
    max_size=5))
def test_never_raises_structured(event: str, body: dict) -> None:
    body["event"] = event
    for p in (MediaStreamProtocol(), started()):
        p.receive_text(json.dumps(body))


# --- builders ----------------------------------------------------------------------------------

def test_media_message_shape_and_roundtrip() -> None:
    audio = bytes(range(256))[:160]
    text = media_message(SID, audio)
    msg = orjson.loads(text)
    assert msg == {"event": "media", "streamSid": SID, "media": {"payload": base64.b64encode(audio).decode()}}
    assert len(msg["media"]["payload"]) == 216
    # A sid that would need escaping still yields valid JSON.
    assert orjson.loads(media_message('MZ"\\x', b"\x00"))["streamSid"] == 'MZ"\\x'


def test_media_messages_framing() -> None:
    frames = media_messages(SID, b"\x01" * 400)
    sizes = [len(base64.b64decode(orjson.loads(f)["media"]["payload"])) for f in frames]
    assert sizes == [160, 160, 80]
    with pytest.raises(ValueError):
        media_messages(SID, b"x", frame_bytes=0)


def test_mark_and_clear_messages() -> None:
    assert orjson.loads(mark_message(SID, 'r"1:7')) == {"event": "mark", "streamSid": SID, "mark": {"name": 'r"1:7'}}
    assert orjson.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}


def test_bound_builders_need_start() -> None:
    p = MediaStreamProtocol()
    with pytest.raises(RuntimeError):
        p.media(b"\xff")
    feed(p, START)
    assert orjson.loads(p.media(b"\xff"))["streamSid"] == SID
    assert orjson.loads(p.mark("m"))["mark"]["name"] == "m"
    assert orjson.loads(p.clear())["event"] == "clear"


def test_builders_roundtrip_through_twilio_side_echo() -> None:
    """What we build parses as Twilio's own echo would: a mark we send comes back as a MarkEcho."""
    p = started()
    sent = orjson.loads(mark_message(SID, "item:3"))
    echo = {**sent, "sequenceNumber": "2"}
    assert feed(p, echo) == [MarkEcho("item:3", 2)]
    # Our media frame, given the fields Twilio adds, parses back to the same bytes.
    audio = bytes(range(160))
    m = orjson.loads(media_message(SID, audio))
    m["sequenceNumber"] = "3"
    m["media"].update(chunk="1", timestamp="0", track="inbound")
    assert feed(p, m) == [Media(audio, 1, 0, 3, "inbound")]


def test_parse_speed_smoke() -> None:
    """Parsing 5,000 media frames (100 s of one call) stays well under a second."""
    import time

    p = started()
    frames = [json.dumps(media(i + 2, i + 1)) for i in range(5000)]
    t0 = time.perf_counter()
    for f in frames:
        p.receive_text(f)
    elapsed = time.perf_counter() - t0
    assert p.media_count == 5000
    assert elapsed < 1.0, elapsed
