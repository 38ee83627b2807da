"""CallRecorder: JSONL lines and the two-channel WAV, written as the call goes."""

from __future__ import annotations

import base64
import json
import wave
from pathlib import Path

from telephony_agent.recording import FORMAT_VERSION, CallRecorder, read_recording
from telephony_agent.recording.analysis import summarize


def _media(sid: str, payload: bytes, ts: int | None = None) -> str:
    m: dict = {"payload": base64.b64encode(payload).decode()}
    if ts is not None:
        m.update(track="inbound", chunk="1", timestamp=str(ts))
    return json.dumps({"event": "media", "streamSid": sid, "media": m})


def test_recorder_writes_jsonl_and_stereo_wav(tmp_path: Path) -> None:
    now = [100.0]
    rec = CallRecorder(tmp_path, clock=lambda: now[0], wall=lambda: 0.0)
    rec.record("twilio", "in", '{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert not list(tmp_path.iterdir())  # nothing on disk before `start` names the call
    start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
             "start": {"callSid": "CA1", "streamSid": "MZ1", "customParameters": {}}}
    rec.record("twilio", "in", json.dumps(start))
    for i in range(250):  # 5 s of caller audio (mu-law 0x00: loud), agent answers 1 s in
        now[0] = 100.0 + 0.02 * i
        rec.record("twilio", "in", _media("MZ1", b"\x00" * 160, ts=20 * i))
        if 50 <= i < 100:
            rec.record("twilio", "out", _media("MZ1", b"\x80" * 160))
        if i == 120:
            rec.record("twilio", "out", '{"event":"clear","streamSid":"MZ1"}')
    rec.record("provider", "out", '{"type":"conversation.item.truncate","audio_end_ms":640}')
    rec.record("twilio", "in", b"\x00\x01")
    rec.record("twilio", "in", "{not json")
    path = rec.finish({"outcome": "caller_hangup"})
    assert path is not None and path.name == "19700101T000000.000Z_CA1.jsonl"
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["version"] == FORMAT_VERSION
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
    rec.record("twilio", "in", json.dumps({"event": "start", "start": {"callSid": "CA2", "streamSid": "MZ2"}}))
    rec.record("twilio", "out", _media("MZ2", b"\x80" * 8000))  # 1 s queued at once
    now[0] = 0.4
    rec.record("twilio", "out", '{"event":"clear","streamSid":"MZ2"}')
    now[0] = 2.0
    rec.record("twilio", "in", _media("MZ2", b"\xff" * 160, ts=2000))
    s = summarize(read_recording(rec.finish()))
    assert s.turns[0].cleared and abs(s.turns[0].heard_ms - 400) < 1
