"""Whole SIP calls: real callers (pjsua2, baresip, sipp, our own softphone) dial the real server
(SIP endpoint, CallManager, CallBridge) and the offline local engine answers with speech.

What the caller heard is checked by recognising it (the local engine's recogniser on the WAV the
caller recorded), not only by the server's own transcript.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from agent_server import running_agent, test_settings
from local_helpers import CALLER_VOICE
from sip_peers import (
    Baresip,
    free_udp_port,
    have,
    have_pjsua2,
    pjsua2_call,
    read_wav_pcm16,
    sipp,
    speech_files,
)

from telephony_agent.realtime.providers.local import LocalRealtimeModel

QUESTION = "What are your opening hours?"


def sip_settings(**overrides: Any) -> Any:
    base = random.randrange(30000, 60000, 2)
    values: dict[str, Any] = {
        "sip_port": free_udp_port(),
        "sip_host": "127.0.0.1",
        "sip_transports": ["udp"],
        "sip_allowed_sources": ["127.0.0.1/32"],
        "rtp_ports": f"{base}-{base + 15}",
    }
    values.update(overrides)
    return test_settings(**values)


def recognise(pcm: bytes, rate: int) -> str:
    from telephony_agent.realtime.providers.local.asr import Recognizer

    return (Recognizer().recognise(pcm, rate).text or "").lower()


class BridgeWatch:
    """Keeps the bridge of the (single) live call, so its stats outlive the call."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.bridge: Any = None
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            calls = self.agent.state.calls
            if calls and self.bridge is None:
                self.bridge = next(iter(calls.values()))
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._task.cancel()

    def lines(self, who: str) -> str:
        assert self.bridge is not None, "no call reached the bridge"
        return " ".join(text for w, text in self.bridge.stats.transcript if w == who).lower()


@pytest.mark.skipif(not have_pjsua2(), reason="pjsua2-python (cp311 wheel) is not installed")
async def test_pjsua2_asks_hears_the_answer_then_presses_9_and_the_agent_hangs_up(tmp_path: Path) -> None:
    # greeting (~5 s) while the caller is silent, then the question, then time for the answer
    files = speech_files(tmp_path, [QUESTION], tail_s=9.0, voice=CALLER_VOICE)
    lead_in = 6.0
    pcm, _ = read_wav_pcm16(files.wav8k)
    import wave

    with wave.open(str(files.wav8k), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * int(8000 * lead_in) + pcm)
    rec = tmp_path / "heard.wav"
    settings = sip_settings()
    async with running_agent(settings, LocalRealtimeModel()) as agent:
        watch = BridgeWatch(agent)
        try:
            result, info = await pjsua2_call(f"sip:agent@127.0.0.1:{settings.sip_port}", files.wav8k, rec,
                                             digits="9", talk_s=lead_in + files.seconds, timeout=70)
        finally:
            watch.stop()
        await agent.wait_no_calls(10)
    assert info.get("media"), result.stdout + result.stderr
    assert info.get("remote_bye"), (info, result.stderr[-2000:])  # "9" is goodbye: the agent sent BYE
    assert "opening hours" in watch.lines("caller"), watch.bridge.stats.transcript
    assert "monday to friday" in watch.lines("agent")
    assert watch.bridge.stats.dtmf == ["9"]
    heard_pcm, rate = read_wav_pcm16(rec)
    heard = recognise(heard_pcm, rate)
    assert "monday" in heard and "friday" in heard, heard  # the caller heard the answer
    assert "goodbye" in heard, heard


@pytest.mark.skipif(not have("baresip"), reason="baresip (Debian baresip-core) is not installed")
async def test_baresip_barges_in_and_the_next_question_is_answered(tmp_path: Path) -> None:
    # the question, then the interruption 2.5 s later (while the answer plays), then time for its answer
    files = speech_files(tmp_path, ["What are your opening hours?", "What is your address?"], gap_s=2.5,
                         tail_s=10.0, voice=CALLER_VOICE)
    settings = sip_settings()
    phone = Baresip(tmp_path / "baresip", files.wav8k)
    async with running_agent(settings, LocalRealtimeModel()) as agent:
        watch = BridgeWatch(agent)
        try:
            await phone.dial(f"sip:agent@127.0.0.1:{settings.sip_port}", max_seconds=60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + files.seconds + 20
            while loop.time() < deadline:
                if watch.bridge is not None and "high street" in watch.lines("agent"):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)
            await phone.command("hangup")
            await agent.wait_no_calls(10)
        finally:
            watch.stop()
            await phone.stop()
    bridge = watch.bridge
    assert bridge is not None, phone.output()[-2000:]
    assert bridge.stats.barge_ins >= 1, bridge.stats.transcript
    assert "high street" in watch.lines("agent"), bridge.stats.transcript
    heard_wav = phone.heard()
    assert heard_wav is not None
    heard = recognise(*read_wav_pcm16(heard_wav))
    assert "street" in heard, heard


@pytest.mark.parametrize(("law", "codecs"), [("ulaw", ["PCMU", "PCMA"]), ("alaw", ["PCMA", "PCMU"])])
async def test_sipp_speech_is_understood_and_answered(tmp_path: Path, law: str, codecs: list[str]) -> None:
    files = speech_files(tmp_path, [QUESTION], tail_s=8.0, voice=CALLER_VOICE)
    settings = sip_settings(sip_codecs=codecs)
    raw, pt = (files.ulaw, 0) if law == "ulaw" else (files.alaw, 8)
    async with running_agent(settings, LocalRealtimeModel()) as agent:
        watch = BridgeWatch(agent)
        try:
            result = await sipp("uac_speech.xml", ("127.0.0.1", settings.sip_port), tmp_path / "sipp",
                                keys={"rtp_file": f"{raw},1,{pt}"}, duration_ms=int(files.seconds * 1000), timeout=60)
        finally:
            watch.stop()
        await agent.wait_no_calls(10)
    assert result.rc == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert watch.bridge.leg.format.law.value == ("pcmu" if law == "ulaw" else "pcma")
    assert "opening hours" in watch.lines("caller"), watch.bridge.stats.transcript
    assert "monday to friday" in watch.lines("agent")


async def test_softphone_call_over_sip(tmp_path: Path) -> None:
    from telephony_agent.call_command import run_call
    from telephony_agent.testing.speech import speech_ulaw

    settings = sip_settings()
    lines: list[str] = []
    async with running_agent(settings, LocalRealtimeModel()) as agent:
        report = await run_call(
            "", "", "", [(QUESTION, speech_ulaw(QUESTION, **CALLER_VOICE))], str(tmp_path / "out"),
            max_seconds=60, reply_timeout=20, print_fn=lines.append,
            sip_target=f"sip:agent@127.0.0.1:{settings.sip_port}",
        )
        await agent.wait_no_calls(10)
    timeline = "\n".join(lines)
    assert len(report.turns) >= 2, timeline  # the greeting, then the answer
    assert report.ended_by == "caller" and report.first_audio_s is not None and report.first_audio_s < 5
    transcript = (tmp_path / "out" / "transcript.txt").read_text().lower()
    assert "monday" in transcript, transcript  # the answer, recognised from what the softphone heard
    assert Path(report.files["agent_wav"]).stat().st_size > 8000 * 2 * 3
