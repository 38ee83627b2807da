"""The softphone's SIP caller against sipp acting as the far end (an independent UAS)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sip_peers import SIPP_SCENARIOS

from telephony_agent.telephony.leg import AudioLaw
from telephony_agent.testing.ports import SIPP_MEDIA_PORTS, free_udp_port
from telephony_agent.testing.sip_caller import SipCall, SipCallError
from telephony_agent.testing.speech import speech_ulaw

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed (make system-deps)")


async def start_sipp_uas(tmp_path: Path, *args: str) -> tuple[asyncio.subprocess.Process, int]:
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port), "-mp", str(free_udp_port(even=True, span=SIPP_MEDIA_PORTS)),
        "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin", "-trace_err", *args,
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.5)  # sipp binds before it reads the scenario; give it a moment
    return proc, port


async def finish(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -9


async def test_caller_speech_is_echoed_back_and_our_bye_ends_the_call(tmp_path: Path) -> None:
    proc, port = await start_sipp_uas(tmp_path, "-sn", "uas", "-rtp_echo")
    events: list[str] = []
    async with SipCall(f"sip:agent@127.0.0.1:{port}", on_event=lambda k, t, d: events.append(k)) as call:
        answer = await call.dial()
        assert answer.law is AudioLaw.PCMU and answer.te_payload_type is None
        speech = speech_ulaw("Testing the echo.")[: 160 * 50]
        call.say(speech)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while speech[1600:3200] not in call.heard_audio and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert speech[1600:3200] in call.heard_audio  # sipp echoed what our RTP carried
        await call.hangup()
        assert call.hung_up_by == "caller"
    assert await finish(proc) == 0
    assert events[:3] == ["invite", "ringing", "answered"] and events[-1] == "hangup"


async def test_pcma_answer_and_the_far_end_hangs_up(tmp_path: Path) -> None:
    proc, port = await start_sipp_uas(tmp_path, "-sf", str(SIPP_SCENARIOS / "uas_pcma_then_bye.xml"), "-rtp_echo")
    async with SipCall(f"sip:agent@127.0.0.1:{port}") as call:
        answer = await call.dial()
        assert answer.law is AudioLaw.PCMA and answer.te_payload_type == 101
        await call.send_dtmf("5")
        await asyncio.wait_for(call.ended.wait(), 10)
        assert call.hung_up_by == "agent"
        assert len(call.heard_audio) > 1600 and set(call.heard_audio) == {0xD5}  # our A-law silence, echoed
    assert await finish(proc) == 0


async def test_a_rejected_call_raises(tmp_path: Path) -> None:
    port = free_udp_port()
    uas = tmp_path / "busy.xml"
    uas.write_text("""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="UAS busy">
  <recv request="INVITE"/>
  <send>
    <![CDATA[

      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK"/>
</scenario>
""")
    proc = await asyncio.create_subprocess_exec(
        "sipp", "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port), "-sf", str(uas), "-m", "1",
        "-timeout", "20s", "-timeout_error", "-nostdin", cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)
    async with SipCall(f"sip:agent@127.0.0.1:{port}") as call:
        with pytest.raises(SipCallError, match="486"):
            await call.dial()
    assert await finish(proc) == 0
