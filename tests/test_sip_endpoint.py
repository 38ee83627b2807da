"""The SIP endpoint (UDP/TCP listeners + UAS core + RTP legs) against sipp, a real SIP stack,
on loopback: OPTIONS, CANCEL while ringing, a retransmitted INVITE, a missing ACK, the agent's
BYE, refusals (source allowlist, digest, admission) and a flood of bad input during a call.

The call manager here is a small stand-in that admits calls and attaches a recording
`LegEvents` to the real `SipLeg` (RTP socket, jitter buffer, pacer): these tests are about
signalling. Whole calls through the real bridge and a speech engine are in test_sip_server_calls.py.
"""

from __future__ import annotations

import asyncio
import enum
import random
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sip_peers import sipp as run_sipp

from telephony_agent.telephony.sip.endpoint import (
    SipEndpoint,
    SipEndpointConfig,
    SipMetrics,
)
from telephony_agent.testing.ports import free_tcp_port, free_udp_port
from telephony_agent.testing.speech import speech_ulaw

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) is not installed")

SCENARIOS = Path(__file__).parent / "peers" / "sipp"
# sipp against the endpoint (signalling interop): once per `make test`, on 3.13. The two tests at the
# end run the listener inside the real server and stay on both Pythons, as do test_sip_server_calls.py
# and test_sip_caller.py (whole calls through our asyncio SIP shells).
peer = pytest.mark.peers(python="3.13")


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP now (SIP listens on both)."""
    for _ in range(200):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def free_rtp_range(n: int = 16) -> str:
    base = random.randrange(30000, 60000, 2)
    return f"{base}-{base + n - 1}"


class Outcome(str, enum.Enum):
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"


class StandInBridge:
    """Records what the leg delivers (LegEvents); `end_after` plays the model's `end_call`."""

    def __init__(self, call_id: str, leg: Any, transfer_on: tuple[str, str] | None = None) -> None:
        self.call_id = call_id
        self.leg = leg
        self.transfer_on = transfer_on  # (digit, target): the model's transfer_call on a key press
        self.transfer_error: Exception | None = None
        self.audio = 0
        self.digits: list[str] = []
        self.outcome: Outcome | None = None
        self._ended = asyncio.Event()

    async def on_caller_audio(self, payload: bytes) -> None:
        self.audio += len(payload)

    async def on_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        if self.transfer_on is not None and digit == self.transfer_on[0]:
            asyncio.get_running_loop().create_task(self._transfer(self.transfer_on[1]))

    async def _transfer(self, target: str) -> None:
        try:
            await self.leg.transfer(target)
        except Exception as exc:  # noqa: BLE001 - recorded for the test
            self.transfer_error = exc
            return
        if self.outcome is None:  # like CallBridge: transferred, the leg closes without hanging up
            self.outcome = Outcome.TRANSFERRED
            await self.leg.close()
        self._ended.set()

    def on_played(self, tag: str) -> None:
        pass

    async def on_hangup(self) -> None:
        if self.outcome is None:
            self.outcome = Outcome.CALLER_HANGUP
        self._ended.set()

    async def end_call(self) -> None:
        if self.outcome is None:
            self.outcome = Outcome.AGENT_HANGUP
            await self.leg.hangup()
        self._ended.set()

    async def wait_ended(self) -> Outcome | None:
        await self._ended.wait()
        return self.outcome


class StandInAdmission:
    """The CallManager's API: reserve/release/start_call/call_ended, with knobs for the tests."""

    def __init__(self, *, refuse: str | None = None, start_delay: float = 0.0, end_after: float | None = None,
                 transfer_on: tuple[str, str] | None = None) -> None:
        self.transfer_on = transfer_on
        self.refuse = refuse
        self.start_delay = start_delay
        self.end_after = end_after
        self.reserved: list[str] = []
        self.released: list[str] = []
        self.started: list[StandInBridge] = []
        self.ended: list[StandInBridge] = []
        self.calls: dict[str, StandInBridge] = {}

    def reserve(self, call_id: str, transport: str = "twilio") -> str | None:
        if self.refuse is not None:
            return self.refuse
        self.reserved.append(call_id)
        return None

    def release(self, call_id: str) -> None:
        self.released.append(call_id)

    async def start_call(self, call_id: str, leg: Any, *, transport: str | None = None, log: Any = None,
                         on_admitted: Any = None) -> StandInBridge:
        await asyncio.sleep(self.start_delay)  # admission taking a while: the caller hears ringing
        bridge = StandInBridge(call_id, leg, self.transfer_on)
        self.calls[call_id] = bridge
        self.started.append(bridge)
        if on_admitted is not None:
            on_admitted()  # as CallManager: admitted, bridge built, provider not connected yet
        if self.end_after is not None:
            async def later() -> None:
                await asyncio.sleep(self.end_after or 0)
                await bridge.end_call()

            asyncio.get_running_loop().create_task(later())
        return bridge

    def call_ended(self, bridge: Any) -> None:
        self.calls.pop(bridge.call_id, None)
        self.ended.append(bridge)

    async def wait_ended(self, n: int = 1, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.ended) < n:
            assert loop.time() < deadline, f"only {len(self.ended)} of {n} calls ended"
            await asyncio.sleep(0.02)


class Counts(SipMetrics):
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], int] = {}
        self.outcomes: list[str] = []
        self.rtp: list[dict[str, Any]] = []
        super().__init__(count=self._count, call_outcome=self.outcomes.append, rtp_summary=self.rtp.append)

    def _count(self, family: str, label: str) -> None:
        self.seen[(family, label)] = self.seen.get((family, label), 0) + 1


@asynccontextmanager
async def endpoint(admission: StandInAdmission, **kw: Any) -> AsyncIterator[tuple[SipEndpoint, Counts]]:
    counts = Counts()
    config = SipEndpointConfig(host="127.0.0.1", port=0, rtp_ports=free_rtp_range(), **kw)
    ep = SipEndpoint(config, admission, metrics=counts)
    await ep.start()
    try:
        yield ep, counts
    finally:
        await ep.stop()


async def sipp(scenario: str | Path, port: int, cwd: Path, *args: str, timeout: float = 30.0,
               transport: str = "u1") -> tuple[int, str]:
    """`sip_peers.sipp` with sipp's own flags passed through; returns (exit code, its logs)."""
    extra = ["-t", transport, *args]
    if transport.startswith("t"):
        extra += ["-p", str(free_tcp_port())]
    result = await run_sipp(str(scenario), ("127.0.0.1", port), cwd, timeout=timeout, extra=extra)
    return result.rc, result.stdout + result.stderr


def speech_file(tmp: Path, seconds_hint: str = "Hello, I would like to check the status of my order.") -> tuple[Path, int]:
    data = speech_ulaw(seconds_hint)
    path = tmp / "speech.ul"
    path.write_bytes(data)
    return path, len(data)


@peer
async def test_options_keepalive_gets_200_with_allow(tmp_path: Path) -> None:
    admission = StandInAdmission()
    async with endpoint(admission) as (ep, counts):
        rc, logs = await sipp("uac_options.xml", ep.ports["udp"], tmp_path / "udp", "-m", "3", "-r", "10")
        assert rc == 0, logs
        rc, logs = await sipp("uac_options.xml", ep.ports["tcp"], tmp_path / "tcp", "-m", "2", transport="t1")
        assert rc == 0, logs
    assert counts.seen[("response", "200")] == 5 and not admission.reserved


@peer
async def test_cancel_while_ringing_200_487_ack_and_no_call(tmp_path: Path) -> None:
    admission = StandInAdmission(start_delay=2.0)  # the provider session takes a while: we ring
    async with endpoint(admission) as (ep, counts):
        rc, logs = await sipp("uac_cancel.xml", ep.ports["udp"], tmp_path, "-m", "1")
        assert rc == 0, logs
        await admission.wait_ended(0)
        for _ in range(200):
            if not ep.calls:
                break
            await asyncio.sleep(0.02)
        assert not ep.calls
    assert counts.seen[("response", "487")] == 1
    assert counts.outcomes and counts.outcomes[0] in ("cancelled", "caller_hangup")
    assert all(b.outcome is Outcome.CALLER_HANGUP for b in admission.started)


@peer
async def test_retransmitted_invite_makes_one_call(tmp_path: Path) -> None:
    admission = StandInAdmission(start_delay=0.6)  # the copy arrives while we are still ringing
    async with endpoint(admission) as (ep, counts):
        rc, logs = await sipp("uac_invite_twice.xml", ep.ports["udp"], tmp_path, "-m", "1")
        assert rc == 0, logs
        await admission.wait_ended(1)
    assert len(admission.reserved) == 1 and len(admission.started) == 1
    # sipp answers each copy of our 180 by repeating its INVITE, so many copies arrive: all absorbed.
    assert counts.seen[("request", "INVITE")] >= 2
    assert counts.seen[("response", "200")] == 2  # the 200 to the INVITE and to the BYE, once each
    assert admission.started[0].outcome is Outcome.CALLER_HANGUP


@peer
async def test_missing_ack_2xx_retransmitted_then_bye(tmp_path: Path) -> None:
    admission = StandInAdmission()
    t1 = 0.05  # 64*T1 = 3.2 s instead of 32 s
    async with endpoint(admission, t1=t1) as (ep, counts):
        loop = asyncio.get_running_loop()
        started = loop.time()
        rc, logs = await sipp("uac_no_ack.xml", ep.ports["udp"], tmp_path, "-m", "1", timeout=20)
        assert rc == 0, logs
        await admission.wait_ended(1)
        assert 64 * t1 - 0.5 < loop.time() - started < 15
    assert counts.seen[("retransmission", "response")] >= 5  # T1 doubling up to T2 for 64*T1
    assert counts.seen[("response_timeout", "ACK")] == 1
    assert counts.seen[("request_sent", "BYE")] == 1
    assert admission.started[0].outcome is Outcome.CALLER_HANGUP  # the leg reported the end


@peer
async def test_agent_bye_after_end_call_and_caller_audio_arrives(tmp_path: Path) -> None:
    speech, n_bytes = speech_file(tmp_path)
    seconds = n_bytes / 8000
    admission = StandInAdmission(end_after=seconds + 0.5)
    async with endpoint(admission) as (ep, counts):
        rc, logs = await sipp("uac_agent_bye.xml", ep.ports["udp"], tmp_path, "-m", "1",
                              "-key", "rtp_file", f"{speech},1,0", timeout=seconds + 15)
        assert rc == 0, logs
        await admission.wait_ended(1)
    bridge = admission.started[0]
    assert bridge.outcome is Outcome.AGENT_HANGUP
    assert counts.seen[("request_sent", "BYE")] == 1
    assert bridge.audio >= n_bytes - 2 * 160, (bridge.audio, n_bytes)
    assert counts.rtp and counts.rtp[0]["lost"] == 0


@peer
async def test_agent_bye_over_tcp(tmp_path: Path) -> None:
    speech, _n_bytes = speech_file(tmp_path)
    admission = StandInAdmission(end_after=1.0)
    async with endpoint(admission) as (ep, _counts):
        rc, logs = await sipp("uac_agent_bye.xml", ep.ports["tcp"], tmp_path, "-m", "1",
                              "-key", "rtp_file", f"{speech},1,0", transport="t1", timeout=20)
        assert rc == 0, logs
        await admission.wait_ended(1)
    assert admission.started[0].outcome is Outcome.AGENT_HANGUP


@peer
async def test_info_digit_then_refer_transfer_and_bye_after_the_sipfrag_200(tmp_path: Path) -> None:
    admission = StandInAdmission(transfer_on=("5", "sip:sales@127.0.0.1"))
    async with endpoint(admission, codecs=("PCMU", "PCMA")) as (ep, counts):
        rc, logs = await sipp("uac_info_refer.xml", ep.ports["udp"], tmp_path, "-m", "1")
        assert rc == 0, logs
        await admission.wait_ended(1)
    bridge = admission.started[0]
    assert bridge.digits == ["5"] and bridge.transfer_error is None
    assert bridge.outcome is Outcome.TRANSFERRED
    assert counts.seen[("request_sent", "REFER")] == 1 and counts.seen[("request_sent", "BYE")] == 1
    assert counts.seen[("dtmf", "info")] == 1


@peer
async def test_stopping_the_endpoint_hangs_up_live_calls_with_bye(tmp_path: Path) -> None:
    speech, _ = speech_file(tmp_path)
    admission = StandInAdmission()
    async with endpoint(admission) as (ep, counts):
        run = asyncio.ensure_future(sipp("uac_agent_bye.xml", ep.ports["udp"], tmp_path, "-m", "1",
                                         "-key", "rtp_file", f"{speech},1,0", timeout=20))
        # Live: the caller's audio flows. Stopped the moment the call was admitted, our BYE goes out
        # with sipp's ACK (RFC 3261 section 15) and can reach sipp within a millisecond of it,
        # while its scenario is still on the step after the ACK (starting its RTP stream): sipp
        # counts that BYE as unexpected and fails the call (seen under CPU load, 1 run in 12-20).
        # A real caller takes a BYE right after its ACK; the sans-I/O test
        # test_our_bye_waits_for_the_ack_of_our_2xx covers that order.
        for _ in range(500):
            if admission.started and admission.started[0].audio:
                break
            await asyncio.sleep(0.02)
        assert admission.started and admission.started[0].audio, "the caller's audio never arrived"
        await ep.stop()
        rc, logs = await run
        assert rc == 0, logs  # sipp got our BYE and answered it
    assert counts.seen[("request_sent", "BYE")] == 1 and not ep.calls


@peer
async def test_source_not_allowed_gets_403_and_no_call(tmp_path: Path) -> None:
    scenario = tmp_path / "uac_403.xml"
    scenario.write_text((SCENARIOS / "uac_refused.xml").read_text().replace("STATUS", "403"))
    admission = StandInAdmission()
    async with endpoint(admission, allowed_sources=("192.0.2.0/24",)) as (ep, counts):
        rc, logs = await sipp(scenario, ep.ports["udp"], tmp_path / "run", "-m", "1")
        assert rc == 0, logs
    assert not admission.reserved and not admission.started
    assert counts.seen[("refused", "forbidden_source")] == 1


@peer
async def test_admission_refusal_gets_503_with_retry_after(tmp_path: Path) -> None:
    scenario = tmp_path / "uac_503.xml"
    scenario.write_text((SCENARIOS / "uac_refused.xml").read_text().replace("STATUS", "503"))
    admission = StandInAdmission(refuse="draining")
    async with endpoint(admission) as (ep, counts):
        rc, logs = await sipp(scenario, ep.ports["udp"], tmp_path / "run", "-m", "1")
        assert rc == 0, logs
    assert not admission.started and counts.outcomes == ["refused_draining"]


@peer
async def test_digest_401_then_authorised_invite(tmp_path: Path) -> None:
    admission = StandInAdmission()
    # sipp 3.6 answers only the first challenge and knows only MD5 (SHA-256 is tested in memory).
    async with endpoint(admission, username="trunk", password="s3cret-pw", digest_algorithms=("MD5",)) as (ep, counts):
        rc, logs = await sipp("uac_digest.xml", ep.ports["udp"], tmp_path / "ok", "-m", "1",
                              "-au", "trunk", "-ap", "s3cret-pw")
        assert rc == 0, logs
        await admission.wait_ended(1)
        assert len(admission.started) == 1
        rc, logs = await sipp("uac_digest.xml", ep.ports["udp"], tmp_path / "bad", "-m", "1",
                              "-au", "trunk", "-ap", "wrong", timeout=8)
        assert rc != 0  # the second 401 ends the scenario: no call
    assert len(admission.started) == 1
    assert counts.seen[("response", "401")] >= 2 and counts.seen[("refused", "auth_failed")] >= 1


def _mutations(rng: random.Random, template: bytes, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # byte-level mutation
            data = bytearray(template)
            for _ in range(rng.randint(1, 10)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
        elif kind == 1:  # unknown method
            out.append(template.replace(b"OPTIONS", b"FROBNICATE"))
        elif kind == 2:  # truncated
            out.append(template[: rng.randrange(1, len(template))])
        else:  # junk
            out.append(rng.randbytes(rng.randint(1, 1400)))
    return out


@peer
async def test_bad_input_flood_during_a_call_loses_no_audio(tmp_path: Path) -> None:
    speech, n_bytes = speech_file(tmp_path)
    seconds = n_bytes / 8000
    admission = StandInAdmission()
    async with endpoint(admission) as (ep, counts):
        port = ep.ports["udp"]
        run = asyncio.ensure_future(sipp("uac_talk.xml", port, tmp_path / "call", "-m", "1",
                                         "-key", "rtp_file", f"{speech},1,0",
                                         "-d", str(int(seconds * 1000) + 300), timeout=seconds + 20))
        for _ in range(200):  # wait for the call to be up before the flood
            if admission.started:
                break
            await asyncio.sleep(0.02)
        rng = random.Random(7)
        template = (
            b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKf\r\n"
            b"From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: f\r\nCSeq: 1 OPTIONS\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            flood.setblocking(False)
            for i, data in enumerate(_mutations(rng, template, 3000)):
                try:
                    flood.sendto(data, ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                if i % 100 == 0:
                    await asyncio.sleep(0.01)
        # Oversized over TCP (UDP cannot carry 64 KiB): the connection is dropped, nothing else.
        reader, writer = await asyncio.open_connection("127.0.0.1", ep.ports["tcp"])
        writer.write(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        rc, logs = await run
        assert rc == 0, logs
        await admission.wait_ended(1)
        assert ep.ready
    bridge = admission.started[0]
    assert bridge.outcome is Outcome.CALLER_HANGUP
    assert bridge.audio >= n_bytes - 2 * 160, (bridge.audio, n_bytes)
    assert counts.rtp[0]["lost"] == 0
    bad = sum(v for (family, _), v in counts.seen.items() if family in ("bad_input", "refused"))
    assert bad > 200  # counted (a loaded machine may drop some of the 3000 datagrams on loopback)
    assert counts.seen.get(("bad_input", "oversized"), 0) == 1



KAMAILIO_CFG = (Path(__file__).parent / "peers" / "kamailio.cfg")


@asynccontextmanager
async def kamailio(tmp: Path, proxy_port: int, uas_port: int) -> AsyncIterator[Path]:
    """Kamailio as a stateful record-routing proxy: 127.0.0.1:proxy_port -> 127.0.0.1:uas_port."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "kamailio.cfg"
    cfg.write_text(KAMAILIO_CFG.read_text().replace("19326", str(proxy_port)).replace("19320", str(uas_port)))
    log_path = tmp / "kamailio.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            "kamailio", "-f", str(cfg), "-P", str(tmp / "kam.pid"), "-Y", str(tmp), "-m", "32", "-M", "8",
            "-DD", "-E", stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )
        try:
            for _ in range(250):  # until it listens
                if b"in: " in log_path.read_bytes() or _udp_port_taken(proxy_port):
                    break
                await asyncio.sleep(0.02)
            yield log_path
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@peer
@pytest.mark.skipif(shutil.which("kamailio") is None, reason="kamailio is not installed")
async def test_through_record_routing_proxy_ack_and_bye_follow_the_route_set(tmp_path: Path) -> None:
    speech, n_bytes = speech_file(tmp_path)
    admission = StandInAdmission(end_after=n_bytes / 8000 + 0.3)
    async with endpoint(admission) as (ep, counts):
        proxy_port = free_udp_port()
        async with kamailio(tmp_path / "kam", proxy_port, ep.ports["udp"]) as kam_log:
            rc, logs = await sipp("uac_proxied.xml", proxy_port, tmp_path / "call", "-m", "1",
                                  "-key", "rtp_file", f"{speech},1,0", timeout=25)
            assert rc == 0, logs + kam_log.read_text(errors="replace")
            await admission.wait_ended(1)
        proxied = kam_log.read_text(errors="replace")
    assert "in: INVITE" in proxied and "in: ACK" in proxied and "in: BYE" in proxied, proxied
    assert admission.started[0].outcome is Outcome.AGENT_HANGUP
    assert ("response_timeout", "ACK") not in counts.seen  # the ACK reached us through the proxy
    assert ("retransmission", "response") not in counts.seen
    assert admission.started[0].audio >= n_bytes - 2 * 160


async def test_server_runs_the_sip_listener_readyz_and_metrics(tmp_path: Path) -> None:
    """create_app with AGENT_SIP_PORT: the listener starts with the server, /readyz covers it,
    /metrics has the SIP families, and an INVITE from a forbidden source costs no session."""
    import aiohttp
    from agent_server import running_agent, test_settings

    from telephony_agent.telephony.sip.endpoint import SIP_ENDPOINT

    port = free_udp_tcp_port()
    settings = test_settings(sip_port=port, sip_host="127.0.0.1", rtp_ports=free_rtp_range(),
                             sip_allowed_sources=["192.0.2.0/24"])
    async with running_agent(settings) as agent:
        ep = agent.app[SIP_ENDPOINT]
        assert ep.ports == {"udp": port, "tcp": port}
        async with aiohttp.ClientSession() as http:
            async with http.get(agent.base_url + "/readyz") as resp:
                body = await resp.json()
                assert resp.status == 200 and body["sip"]["listening"] is True, body
            scenario = tmp_path / "uac_403.xml"
            scenario.write_text((SCENARIOS / "uac_refused.xml").read_text().replace("STATUS", "403"))
            rc, logs = await sipp(scenario, port, tmp_path / "run", "-m", "1")
            assert rc == 0, logs
            assert not agent.state.calls and not agent.state.pending
            async with http.get(agent.base_url + "/metrics") as resp:
                text = await resp.text()
            assert 'agent_sip_requests_total{method="INVITE"} 1.0' in text
            assert 'agent_sip_responses_total{code="403"} 1.0' in text
            assert 'agent_sip_refused_total{reason="forbidden_source"} 1.0' in text
            assert "+1555" not in text  # no caller number in any label
            assert ep._udp is not None and ep._udp.transport is not None
            ep._udp.transport.close()  # the listener dies: not ready any more
            async with http.get(agent.base_url + "/readyz") as resp:
                body = await resp.json()
                assert resp.status == 503 and body["reason"] == "sip_listener_down", body


async def test_server_draining_answers_503_with_retry_after(tmp_path: Path) -> None:
    """Through the real CallManager: a draining server refuses the INVITE, opens nothing."""
    import aiohttp
    from agent_server import running_agent, test_settings

    port = free_udp_tcp_port()
    settings = test_settings(sip_port=port, sip_host="127.0.0.1", rtp_ports=free_rtp_range())
    scenario = tmp_path / "uac_503.xml"
    scenario.write_text((SCENARIOS / "uac_refused.xml").read_text().replace("STATUS", "503").replace(
        '<recv response="503"/>',
        '<recv response="503"><action><ereg regexp="[0-9]+" search_in="hdr" header="Retry-After:" '
        'check_it="true" assign_to="retry"/><log message="Retry-After [$retry]"/></action></recv>'))
    async with running_agent(settings) as agent:
        agent.state.draining = True
        rc, logs = await sipp(scenario, port, tmp_path / "run", "-m", "1")
        assert rc == 0, logs
        assert not agent.state.calls and not agent.state.pending
        async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/metrics") as resp:
            text = await resp.text()
    assert 'agent_sip_calls_total{outcome="refused_draining"} 1.0' in text
    assert 'agent_calls_refused_total{reason="draining"} 1.0' in text
