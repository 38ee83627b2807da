"""CallRecorder: JSONL lines and the two-channel WAV, written as the call goes; format v2 (the
phone leg by its neutral name, the transport in the header) and reading version 1 files."""

from __future__ import annotations

import base64
import gzip
import json
import wave
from pathlib import Path

import pytest

from telephony_agent.recording import FORMAT_VERSION, CallRecorder, RecordingError, read_recording
from telephony_agent.recording.analysis import summarize
from telephony_agent.replay import caller_script
from telephony_agent.wiretap import IN, LEG_PHONE, LEG_PROVIDER, OUT

CORPUS = Path(__file__).parent / "fixtures" / "calls"


def _media(sid: str, payload: bytes, ts: int | None = None) -> str:
    m: dict = {"payload": base64.b64encode(payload).decode()}
    if ts is not None:
        m.update(track="inbound", chunk="1", timestamp=str(ts))
    return json.dumps({"event": "media", "streamSid": sid, "media": m})


def test_recorder_writes_jsonl_and_stereo_wav(tmp_path: Path) -> None:
    now = [100.0]
    rec = CallRecorder(tmp_path, transport="twilio", clock=lambda: now[0], wall=lambda: 0.0)
    rec.record("phone", "in", '{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert not list(tmp_path.iterdir())  # nothing on disk before `start` names the call
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
             "start": {"callSid": "CA1", "streamSid": "MZ1", "customParameters": {}}}
    rec.record("phone", "in", json.dumps(start))
    for i in range(250):  # 5 s of caller audio (mu-law 0x00: loud), agent answers 1 s in
        now[0] = 100.0 + 0.02 * i
        rec.record("phone", "in", _media("MZ1", b"\x00" * 160, ts=20 * i))
        if 50 <= i < 100:
            rec.record("phone", "out", _media("MZ1", b"\x80" * 160))
        if i == 120:
            rec.record("phone", "out", '{"event":"clear","streamSid":"MZ1"}')
    rec.record("provider", "out", '{"type":"conversation.item.truncate","audio_end_ms":640}')
    rec.record("phone", "in", b"\x00\x01")
    rec.record("phone", "in", "{not json")
    path = rec.finish({"outcome": "caller_hangup"})
    assert path is not None and path.name == "19700101T000000.000Z_CA1.jsonl"
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["version"] == FORMAT_VERSION == 2 and head["transport"] == "twilio"
    assert {json.loads(line).get("leg") for line in lines[1:-1]} == {LEG_PHONE, LEG_PROVIDER}
    r = read_recording(path)
    assert r.call_sid == "CA1" and r.trailer["outcome"] == "caller_hangup"
    assert r.entries[-1].raw == "{not json" and r.entries[-2].raw == b"\x00\x01"
    s = summarize(r)
    assert len(s.turns) == 1 and s.turns[0].heard_ms == 1000.0  # 50 frames queued, all played
    assert s.truncates == [640] and s.ended_by == "caller"
    with wave.open(str(rec.wav_path)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert abs(w.getnframes() - 5 * 8000) <= 320
        import numpy as np

        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert np.abs(x[:, 0]).mean() > 10000  # the caller, all along the left
    right = np.abs(x[:, 1]) > 0
    assert not right[: 7800].any() and right[8200:15800].all() and not right[16400:].any()


def test_clear_cuts_queued_agent_audio(tmp_path: Path) -> None:
    now = [0.0]
    rec = CallRecorder(tmp_path, clock=lambda: now[0])
    rec.record("phone", "in", json.dumps({"event": "start", "start": {"callSid": "CA2", "streamSid": "MZ2"}}))
    rec.record("phone", "out", _media("MZ2", b"\x80" * 8000))  # 1 s queued at once
    now[0] = 0.4
    rec.record("phone", "out", '{"event":"clear","streamSid":"MZ2"}')
    now[0] = 2.0
    rec.record("phone", "in", _media("MZ2", b"\xff" * 160, ts=2000))
    s = summarize(read_recording(rec.finish()))
    assert s.turns[0].cleared and abs(s.turns[0].heard_ms - 400) < 1


def test_version_1_files_read_as_version_2(tmp_path: Path) -> None:
    """A version 1 recording (leg "twilio", no transport) reads as version 2: every reader sees
    the phone leg and a transport; the corpus (recorded as version 1) is such a file."""
    lines = [
        {"type": "header", "format": "telephony-agent-call", "version": 1, "call_sid": "CA9", "stream_sid": "MZ9"},
        {"t": 0.0, "leg": "twilio", "dir": "in", "msg": {"event": "start", "start": {"callSid": "CA9"}}},
        {"t": 0.1, "leg": "provider", "dir": "in", "msg": {"type": "session.created"}},
        {"t": 0.5, "leg": "twilio", "dir": "out", "msg": {"event": "media", "media": {"payload": ""}}, "elided": 4000},
        {"t": 2.0, "leg": "twilio", "dir": "in", "msg": {"event": "stop"}},
        {"type": "trailer", "t": 2.0, "outcome": "caller_hangup"},
    ]
    path = tmp_path / "v1.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    rec = read_recording(path)
    assert rec.header["version"] == 2 and rec.header["read_from_version"] == 1 and rec.transport == "twilio"
    assert [e.leg for e in rec.entries] == [LEG_PHONE, LEG_PROVIDER, LEG_PHONE, LEG_PHONE]
    assert [e.event for e in rec.entries] == ["start", "session.created", "media", "stop"]
    s = summarize(rec)
    assert len(s.turns) == 1 and s.turns[0].heard_ms == 500.0 and s.ended_by == "caller"
    corpus = read_recording(CORPUS / "barge_in.jsonl.gz")
    assert corpus.header["read_from_version"] == 1
    assert corpus.leg(LEG_PHONE, IN) and corpus.leg(LEG_PROVIDER, OUT) and not corpus.leg("twilio")
    assert len(caller_script(corpus).events) > 100


def test_recorder_accepts_the_version_1_leg_name_and_metadata_transport(tmp_path: Path) -> None:
    """Callers not yet moved to the neutral name (`record("twilio", ...)`) still record the phone
    leg; a transport passed in `metadata` (as the call manager does) goes to the header once."""
    now = [0.0]
    rec = CallRecorder(tmp_path, metadata={"provider": "local", "transport": "browser"}, clock=lambda: now[0], wav=False)
    rec.record("twilio", "in", json.dumps({"event": "start", "start": {"callSid": "CA3", "streamSid": "MZ3"}}))
    rec.record_phone("out", _media("MZ3", b"\x80" * 800))
    now[0] = 1.0
    rec.record_phone("in", _media("MZ3", b"\xff" * 160, ts=1000))
    path = rec.finish()
    assert path is not None
    head = json.loads(path.read_text().splitlines()[0])
    assert head["transport"] == "browser" and head["provider"] == "local" and head["call_sid"] == "CA3"
    r = read_recording(path)
    assert [e.leg for e in r.entries] == [LEG_PHONE] * 3 and r.transport == "browser"
    assert summarize(r).heard_ms == 100.0


def test_a_sip_phone_leg_is_recorded_verbatim_from_its_first_frame(tmp_path: Path) -> None:
    """A transport without a Media Streams `start` (SIP) names the call up front: the file opens
    at the first frame, and text and binary frames are kept as they were."""
    now = [5.0]
    rec = CallRecorder(tmp_path, transport="sip", call_id="a84b4c76e66710@pc33", clock=lambda: now[0], wav=False)
    invite = "INVITE sip:agent@127.0.0.1 SIP/2.0\r\nCall-ID: a84b4c76e66710@pc33\r\n\r\n"
    rec.record_phone(IN, invite)
    now[0] = 5.2
    rtp = bytes([0x80, 0x00, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4]) + b"\xff" * 160
    rec.record(LEG_PHONE, IN, rtp)
    rec.record(LEG_PROVIDER, OUT, '{"type":"session.update"}')
    path = rec.finish({"outcome": "caller_hangup"})
    assert path is not None and path.name.endswith("_a84b4c76e66710pc33.jsonl")
    r = read_recording(path)
    assert r.transport == "sip" and r.call_sid == "a84b4c76e66710@pc33" and r.header["stream_sid"] is None
    assert [(e.leg, e.dir, e.t) for e in r.entries] == [(LEG_PHONE, IN, 0.0), (LEG_PHONE, IN, 0.2), (LEG_PROVIDER, OUT, 0.2)]
    assert r.entries[0].raw == invite and r.entries[1].raw == rtp
    with pytest.raises(RecordingError, match="'sip'"):
        caller_script(r)  # the softphone speaks Media Streams: a SIP call cannot be replayed by it


def test_a_sip_legs_g711_frames_go_to_the_wav_and_a_clear_cuts_the_agents_queue(tmp_path: Path) -> None:
    """A SIP leg hands the recorder its G.711 payloads as binary frames, in its own law: the
    caller's in order on the left, the agent's on the right as the RTP pacer plays them (queued
    audio after what is playing), cut where the leg recorded a `clear`."""
    import numpy as np

    from telephony_codecs import pcm16_to_alaw

    now = [0.0]
    rec = CallRecorder(tmp_path, transport="sip", call_id="b1@pc33", clock=lambda: now[0], phone_law="pcma")
    caller = pcm16_to_alaw(np.full(160, 8000, "<i2").tobytes())
    agent = pcm16_to_alaw(np.full(160, -4000, "<i2").tobytes())
    for i in range(150):  # 3 s of caller frames
        now[0] = 0.02 * i
        rec.record(LEG_PHONE, IN, caller)
        if i == 25:  # 0.5 s in, the agent's 2 s answer is handed to the leg at once
            for _ in range(100):
                rec.record(LEG_PHONE, OUT, agent)
        if i == 75:  # 1.5 s in, a barge-in drops what is still queued
            rec.record(LEG_PHONE, OUT, '{"event":"clear"}')
    path = rec.finish({"outcome": "caller_hangup"})
    assert path is not None and rec.wav_path is not None
    r = read_recording(path)
    assert r.header["phone_audio"] == "pcma" and r.entries[0].raw == caller
    with wave.open(str(rec.wav_path)) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert abs(len(x) - 3 * 8000) <= 160
    assert (np.abs(x[:, 0] - 8000) < 200).all()  # A-law, decoded: the caller all along the left
    right = x[:, 1]
    assert not right[:4000].any() and (np.abs(right[4000:12000] + 4000) < 100).all() and not right[12000:].any()


def test_a_recording_that_cannot_be_written_fails_quietly_and_says_so_once_at_the_end(tmp_path: Path) -> None:
    """A directory that cannot be made (here a file is in the way; a full disk fails the same
    way, in a write) stops the recording, never the call: `record` does not raise, and the
    recorder's `on_finish` hears once, when the call ends, that it failed."""
    (tmp_path / "taken").write_text("a file, not a directory")
    outcomes: list[bool] = []
    rec = CallRecorder(tmp_path / "taken" / "recordings", transport="sip", call_id="c9@pc33", on_finish=outcomes.append)
    rec.record(LEG_PHONE, IN, b"\xff" * 160)
    rec.record(LEG_PHONE, OUT, b"\xff" * 160)
    assert rec.failed and outcomes == []
    assert rec.finish() is None and rec.finish() is None
    assert outcomes == [True]
    ok: list[bool] = []
    good = CallRecorder(tmp_path / "recordings", transport="sip", call_id="c10@pc33", on_finish=ok.append)
    good.record(LEG_PHONE, IN, b"\xff" * 160)
    assert good.finish() is not None and ok == [False] and not good.failed


def test_unknown_versions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "v3.jsonl"
    path.write_text(json.dumps({"type": "header", "format": "telephony-agent-call", "version": 3}) + "\n")
    with pytest.raises(RecordingError, match="version 3"):
        read_recording(path)
