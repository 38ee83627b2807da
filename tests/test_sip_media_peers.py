"""SIP media against independent, real callers (sipp, pjsua2, baresip) through the real SIP
endpoint, on loopback: speech in (bytes compared), RFC 4733 digits on the payload type each peer
uses (sipp pcaps 101 on their own SSRC, sipp play_dtmf 96, pjsua2 120, baresip 101), A-law,
RTP inactivity ending the call with BYE, and our paced audio recorded by the caller.

The call manager is a stand-in whose "bridge" echoes the caller's audio back through the leg:
these tests are about media interop. Whole calls through the real bridge and the local speech
engine are in test_sip_calls.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sip_peers import (
    IS_ROOT,
    SIPP_PCAPS,
    Baresip,
    active_windows,
    have,
    have_pjsua2,
    pjsua2_call,
    read_wav_pcm16,
    sipp,
    speech_files,
)

from telephony_agent.telephony.sip.endpoint import (
    SipEndpoint,
    SipEndpointConfig,
    SipMetrics,
)

pytestmark = pytest.mark.skipif(not have("sipp"), reason="sipp (Debian sip-tester) is not installed")

SPEECH = ["Hello, I would like to check the status of my order."]
needs_root = pytest.mark.skipif(not IS_ROOT, reason="sipp plays pcaps and play_dtmf through a raw socket: root only")


class EchoBridge:
    """LegEvents that keep what arrives and, when asked, send the caller's audio straight back."""

    def __init__(self, call_id: str, leg: Any, echo: bool) -> None:
        self.call_id = call_id
        self.leg = leg
        self.echo = echo
        self.audio = bytearray()
        self.digits: list[str] = []
        self.outcome: str | None = None
        self._pending = b""
        self._ended = asyncio.Event()

    async def on_caller_audio(self, payload: bytes) -> None:
        self.audio += payload
        if self.echo:
            self._pending += payload
            n = self.leg.format.frame_bytes
            cut = len(self._pending) - len(self._pending) % n
            frames = [self._pending[i : i + n] for i in range(0, cut, n)]
            self._pending = self._pending[cut:]
            if frames:
                self.leg.send_audio(frames, "echo")

    async def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)

    def on_played(self, tag: str) -> None:  # pragma: no cover - SIP legs confirm nothing
        raise AssertionError("SipLeg must not confirm playout")

    async def on_hangup(self) -> None:
        self.outcome = self.outcome or "caller_hangup"
        self._ended.set()

    async def wait_ended(self) -> str | None:
        await self._ended.wait()
        return self.outcome


class Admission:
    """The CallManager's API as the SIP endpoint uses it: admits everything, keeps the bridges."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.bridges: list[EchoBridge] = []
        self.ended: list[EchoBridge] = []

    def reserve(self, call_id: str, transport: str = "sip") -> str | None:
        return None

    def release(self, call_id: str) -> None:
        pass

    async def start_call(self, call_id: str, leg: Any, **_: Any) -> EchoBridge:
        bridge = EchoBridge(call_id, leg, self.echo)
        self.bridges.append(bridge)
        return bridge

    def call_ended(self, bridge: Any) -> None:
        self.ended.append(bridge)

    async def wait_ended(self, n: int = 1, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.ended) < n:
            assert loop.time() < deadline, f"{len(self.ended)} of {n} calls ended"
            await asyncio.sleep(0.05)


class Summaries(SipMetrics):
    def __init__(self) -> None:
        self.rtp: list[dict[str, Any]] = []
        self.outcomes: list[str] = []
        super().__init__(count=lambda family, label: None, call_outcome=self.outcomes.append, rtp_summary=self.rtp.append)


@asynccontextmanager
async def sip_endpoint(admission: Admission, **kw: Any) -> AsyncIterator[tuple[SipEndpoint, Summaries]]:
    base = random.randrange(30000, 60000, 2)
    summaries = Summaries()
    config = SipEndpointConfig(host="127.0.0.1", port=0, transports=("udp",), rtp_ports=f"{base}-{base + 15}", **kw)
    ep = SipEndpoint(config, admission, metrics=summaries)
    await ep.start()
    try:
        yield ep, summaries
    finally:
        await ep.stop()


# -- sipp


@pytest.mark.peers(python="3.13")
async def test_sipp_speech_arrives_byte_for_byte(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=0.2)
    admission = Admission(echo=False)
    async with sip_endpoint(admission) as (ep, summaries):
        result = await sipp("uac_speech.xml", ("127.0.0.1", ep.ports["udp"]), tmp_path / "sipp",
                            keys={"rtp_file": f"{files.ulaw},1,0"}, duration_ms=int(files.seconds * 1000) + 500)
        assert result.rc == 0, result.stdout + result.stderr
        await admission.wait_ended()
    sent = files.ulaw.read_bytes()
    got = bytes(admission.bridges[0].audio)
    assert got[: len(sent) - len(sent) % 160] == sent[: len(sent) - len(sent) % 160]
    assert summaries.rtp[0]["lost"] == 0 and summaries.rtp[0]["malformed"] == 0


@pytest.mark.peers(python="3.13")
async def test_sipp_pcma_by_preference(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=0.2)
    admission = Admission(echo=False)
    async with sip_endpoint(admission, codecs=("PCMA", "PCMU")) as (ep, _):
        result = await sipp("uac_speech.xml", ("127.0.0.1", ep.ports["udp"]), tmp_path / "sipp",
                            keys={"rtp_file": f"{files.alaw},1,8"}, duration_ms=int(files.seconds * 1000) + 500)
        assert result.rc == 0, result.stdout + result.stderr
        await admission.wait_ended()
    bridge = admission.bridges[0]
    assert bridge.leg.format.law.value == "pcma"
    sent = files.alaw.read_bytes()
    assert bytes(bridge.audio)[: len(sent) - len(sent) % 160] == sent[: len(sent) - len(sent) % 160]


@pytest.mark.peers(python="3.13")
async def test_sipp_goes_quiet_and_the_agent_hangs_up(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=0.0)
    admission = Admission(echo=False)
    async with sip_endpoint(admission, rtp_timeout_s=1.5) as (ep, summaries):
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await sipp("uac_rtp_stops.xml", ("127.0.0.1", ep.ports["udp"]), tmp_path / "sipp",
                            keys={"rtp_file": f"{files.ulaw},-1,0"}, timeout=40)
        assert result.rc == 0, result.stdout + result.stderr  # sipp got our BYE and answered it
        elapsed = loop.time() - started
        await admission.wait_ended()
    assert 1.5 + 1.5 <= elapsed < 20  # 1.5 s of speech, then the 1.5 s timeout
    assert admission.bridges[0].outcome == "caller_hangup"  # the bridge heard the leg end
    assert len(admission.bridges[0].audio) >= 8000  # the speech before it stopped
    assert summaries.outcomes and summaries.outcomes[0] != "failed_to_start"


@needs_root
@pytest.mark.peers(python="3.13")
@pytest.mark.skipif(not SIPP_PCAPS.exists(), reason="sip-tester's DTMF pcaps are not installed")
async def test_sipp_rfc4733_pcaps_on_another_ssrc(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=0.2)
    admission = Admission(echo=False)
    async with sip_endpoint(admission) as (ep, summaries):
        result = await sipp(
            "uac_speech_dtmf_pcap.xml", ("127.0.0.1", ep.ports["udp"]), tmp_path / "sipp",
            keys={"rtp_file": f"{files.ulaw},1,0", "dtmf1": str(SIPP_PCAPS / "dtmf_2833_1.pcap"),
                  "dtmf2": str(SIPP_PCAPS / "dtmf_2833_2.pcap"), "dtmf3": str(SIPP_PCAPS / "dtmf_2833_pound.pcap")},
            duration_ms=int(files.seconds * 1000) + 300,
        )
        assert result.rc == 0, result.stdout + result.stderr
        await admission.wait_ended()
    bridge = admission.bridges[0]
    assert bridge.digits == ["1", "2", "#"]
    sent = files.ulaw.read_bytes()
    assert bytes(bridge.audio)[: len(sent) - len(sent) % 160] == sent[: len(sent) - len(sent) % 160]
    assert summaries.rtp[0]["lost"] == 0 and summaries.rtp[0]["ssrc_changes"] == 0  # DTMF SSRC is not speech


@needs_root
@pytest.mark.peers(python="3.13")
async def test_sipp_play_dtmf_on_pt_96(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=0.2)
    admission = Admission(echo=False)
    async with sip_endpoint(admission) as (ep, _):
        result = await sipp(
            "uac_speech_play_dtmf.xml", ("127.0.0.1", ep.ports["udp"]), tmp_path / "sipp",
            keys={"rtp_file": f"{files.ulaw},1,0", "dtmf": "12#"}, duration_ms=int(files.seconds * 1000) + 300,
        )
        assert result.rc == 0, result.stdout + result.stderr
        await admission.wait_ended()
    bridge = admission.bridges[0]
    assert bridge.leg.rtp.te_pt == 96
    assert bridge.digits == ["1", "2", "#"]


# -- pjsua2 (PJSIP)


@pytest.mark.peers
@pytest.mark.skipif(not have_pjsua2(), reason="pjsua2-python (cp311 wheel) is not installed")
@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_pjsua2_hears_its_speech_echoed_and_its_digits_arrive(tmp_path: Path, codec: str) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=1.5)
    rec = tmp_path / "heard.wav"
    admission = Admission(echo=True)
    async with sip_endpoint(admission) as (ep, summaries):
        result, info = await pjsua2_call(f"sip:agent@127.0.0.1:{ep.ports['udp']}", files.wav8k, rec,
                                         digits="12#", talk_s=files.seconds, codec=codec)
        assert info.get("media"), result.stdout + result.stderr
        await admission.wait_ended()
    bridge = admission.bridges[0]
    assert bridge.leg.format.law.value == codec.lower()
    assert bridge.leg.rtp.te_pt == 120  # pjsua2's telephone-event payload type, mirrored
    assert bridge.digits == ["1", "2", "#"]
    sent_pcm, _ = read_wav_pcm16(files.wav8k)
    heard_pcm, rate = read_wav_pcm16(rec)
    spoken = active_windows(sent_pcm)
    assert spoken > 50
    # What pjsua2's own jitter buffer played out of our paced RTP: the same amount of speech.
    assert active_windows(heard_pcm, rate) >= 0.8 * spoken, (active_windows(heard_pcm, rate), spoken)
    assert summaries.rtp[0]["lost"] == 0


# -- baresip


@pytest.mark.peers
@pytest.mark.skipif(not have("baresip"), reason="baresip (Debian baresip-core) is not installed")
async def test_baresip_hears_its_speech_echoed_and_its_digit_arrives(tmp_path: Path) -> None:
    files = speech_files(tmp_path, SPEECH, tail_s=3.0)  # baresip hangs up when its WAV ends
    admission = Admission(echo=True)
    phone = Baresip(tmp_path / "baresip", files.wav8k)
    async with sip_endpoint(admission) as (ep, _):
        await phone.dial(f"sip:agent@127.0.0.1:{ep.ports['udp']}")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while not admission.bridges and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert admission.bridges, phone.output()
            await asyncio.sleep(files.seconds - 2.0)
            await phone.command("sndcode", "5")
            await asyncio.sleep(1.0)
            await phone.command("hangup")
            await admission.wait_ended()
        finally:
            await phone.stop()
    bridge = admission.bridges[0]
    assert bridge.leg.rtp.te_pt == 101
    assert bridge.digits == ["5"], phone.output()[-2000:]
    sent_pcm, _ = read_wav_pcm16(files.wav8k)
    spoken = active_windows(sent_pcm)
    heard_wav = phone.heard()
    assert heard_wav is not None, phone.output()[-2000:]
    heard = active_windows(*read_wav_pcm16(heard_wav))
    assert heard >= 0.8 * spoken, (heard, spoken)
