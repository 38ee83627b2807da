"""Whole SIP calls through the real server: sipp dials the SIP listener started by create_app, the
CallManager admits the call, the real CallBridge runs it with the offline local engine.

- the caller says "goodbye": the engine calls `end_call`, the bridge plays the goodbye, and the
  agent hangs up with BYE (retransmitted until sipp answers it);
- the caller presses 1 (SIP INFO): the engine transfers to `sales`, the agent sends REFER to the
  allowlisted `sip:` target, sipp reports success in a NOTIFY, and the agent ends its leg with BYE.
"""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from agent_server import running_agent, test_settings
from test_sip_endpoint import SCENARIOS, free_rtp_range, free_udp_tcp_port, sipp

from telephony_agent.recording import read_recording
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import pcm16_to_ulaw  # type: ignore[import-untyped]

pytestmark = [
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed"),
    # Until the call core v2 merge, main's bridge drives a Twilio-shaped transport, not a PhoneLeg.
    pytest.mark.skipif(not hasattr(CallBridge, "on_caller_audio"), reason="needs the PhoneLeg CallBridge"),
]


def caller_file(tmp: Path, text: str, lead_s: float, tail_s: float) -> tuple[Path, float]:
    """Raw mu-law: `lead_s` of silence (the greeting plays), `text`, then `tail_s` of silence."""
    pcm = b"\x00\x00" * int(8000 * lead_s) + speech_pcm16(text, 8000) + b"\x00\x00" * int(8000 * tail_s)
    path = tmp / "caller.ul"
    path.write_bytes(pcm16_to_ulaw(pcm))
    return path, len(pcm) / 16000


async def test_caller_says_goodbye_and_the_agent_hangs_up_with_bye(tmp_path: Path) -> None:
    port = free_udp_tcp_port()
    recordings = tmp_path / "recordings"
    settings = test_settings(provider="local", sip_port=port, sip_host="127.0.0.1", rtp_ports=free_rtp_range(),
                             recordings_dir=str(recordings))
    audio, seconds = caller_file(tmp_path, "goodbye", lead_s=6.0, tail_s=8.0)
    async with running_agent(settings) as agent:
        rc, logs = await sipp("uac_agent_bye.xml", port, tmp_path / "call", "-m", "1",
                              "-key", "rtp_file", f"{audio},1,0", timeout=seconds + 20)
        assert rc == 0, logs
        await agent.wait_no_calls(timeout=10)
        text = (await _metrics(agent)).splitlines()
    assert any(line.startswith('agent_sip_calls_total{outcome="agent_hangup"} 1.0') for line in text), text
    assert any(line.startswith('agent_rtp_packets_total{direction="out"}') and float(line.split()[-1]) > 100
               for line in text)
    assert 'agent_recordings_total{outcome="written"} 1.0' in text
    # The call was recorded (from admission on): a version-2 recording whose phone leg is SIP.
    [path] = recordings.glob("*.jsonl")
    recording = read_recording(path)
    assert recording.transport == "sip"
    phone = [e for e in recording.entries if e.leg == "phone"]
    assert sum(e.dir == "in" for e in phone) > 100 and sum(e.dir == "out" for e in phone) > 100
    assert recording.header["phone_audio"] == "pcmu"
    # Its WAV holds both sides, decoded from the leg's G.711: the caller's 6 s lead is silent on
    # the left, then its "goodbye"; the agent's greeting and goodbye are on the right.
    with wave.open(str(path.with_suffix(".wav"))) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2).astype(float)
    assert len(x) > 8 * 8000
    lead, after = x[: 5 * 8000], x[5 * 8000 :]
    assert np.abs(lead[:, 0]).max() < 100 and np.abs(after[:, 0]).max() > 3000
    assert np.abs(x[:, 1]).max() > 3000


@pytest.mark.parametrize(("allowlisted", "refer_to"), [
    ("sip:sales@127.0.0.1", "sip:sales@127.0.0.1"),
    ("+15551230000", r"tel:\+15551230000"),  # a Twilio-style number is referred as a tel: URI
])
async def test_caller_presses_1_and_is_transferred_with_refer(tmp_path: Path, allowlisted: str, refer_to: str) -> None:
    port = free_udp_tcp_port()
    settings = test_settings(provider="local", sip_port=port, sip_host="127.0.0.1", rtp_ports=free_rtp_range(),
                             transfer_allowlist=[f"sales={allowlisted}", "support=sip:support@127.0.0.1"])
    scenario = tmp_path / "uac_info_refer_1.xml"
    scenario.write_text((SCENARIOS / "uac_info_refer.xml").read_text()
                        .replace("Signal=5", "Signal=1").replace("sip:sales@127.0.0.1", refer_to))
    async with running_agent(settings) as agent:
        rc, logs = await sipp(scenario, port, tmp_path / "call", "-m", "1", timeout=40)
        assert rc == 0, logs
        await agent.wait_no_calls(timeout=10)
        text = await _metrics(agent)
    assert 'agent_sip_calls_total{outcome="transferred"} 1.0' in text, text


async def _metrics(agent: object) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/metrics") as resp:  # type: ignore[attr-defined]
        return await resp.text()
