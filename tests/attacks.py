"""Attacks on a running server over loopback: each reproduces one hole from issue 14 and reports figures.

The same attacks run against any tree, so they measure a fix before and after:

    python tests/attacks.py --tree /path/to/checkout [--only prestart_flood,token_reuse] [--json]

starts a fake OpenAI Realtime server here (its connection count is the number of provider
sessions: paid sessions in production) and the tree's `telephony-agent serve` as a subprocess
on a free 127.0.0.1 port, with recordings on, `AGENT_MAX_CALLS=3` and text logs to a file, then
runs the attacks and prints what each achieved: files and bytes written to the recordings
directory, peak RSS growth, provider sessions opened, connections still held, log lines and
tracebacks, HTTP statuses. `fd_exhaustion` gets its own server with a 1,024-descriptor limit.
`drain_bypass` sends the server SIGTERM and runs last. `tests/test_security_attacks.py` runs
these against this tree and asserts the fixed figures.

Against a server already running (on loopback, with its auth token and public URL):

    python tests/attacks.py --url http://127.0.0.1:8080 --public-url https://agent.example \
        --auth-token ... [--pid PID] [--recordings-dir DIR] [--log FILE] --only token_reuse

measures what it can from outside: provider sessions are then read from `/metrics`
(`agent_calls_started_total`); RSS, files and log lines only with --pid, --recordings-dir, --log.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peers.fake_openai import FakeOpenAIServer

from telephony_agent.telephony.twilio.signature import compute_signature
from telephony_agent.testing.ports import free_tcp_port

PUBLIC_URL = "https://agent.test"
AUTH_TOKEN = "attack-auth-token-0123456789"
ACCOUNT_SID = "AC" + "0" * 32
API_KEY = "sk-test-key"
SILENCE = b"\xff" * 160


@dataclass
class Target:
    base_url: str
    public_url: str = PUBLIC_URL
    auth_token: str = AUTH_TOKEN
    provider: FakeOpenAIServer | None = None
    recordings: Path | None = None
    pid: int | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.base_url).port or 80

    def sessions(self) -> int:
        """Provider sessions opened so far: the fake provider's count, else the server's own."""
        if self.provider is not None:
            return self.provider.connection_attempts
        return int(_calls_started(self.base_url))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_counts(self) -> tuple[int, int, int]:
        """(lines, bytes, tracebacks) logged so far."""
        text = self.log_text()
        return text.count("\n"), len(text.encode()), text.count("Traceback (most recent call last)")

    def files(self) -> tuple[int, int]:
        """(files, bytes) under the recordings directory."""
        if self.recordings is None or not self.recordings.exists():
            return 0, 0
        paths = [p for p in self.recordings.rglob("*") if p.is_file()]
        return len(paths), sum(p.stat().st_size for p in paths)

    def rss_mib(self) -> float:
        if self.pid is None:
            return -1.0
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return -1.0


def _calls_started(base_url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(base_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("agent_calls_started_total"))


# -- what Twilio does ---------------------------------------------------------------------------------


def sign(t: Target, url: str, params: dict[str, str] | None = None) -> str:
    return compute_signature(url, params or {}, t.auth_token)


def local_ws(t: Target, wss_url: str) -> str:
    parts = urlsplit(wss_url)
    return f"ws://{t.host}:{t.port}{parts.path}"


def call_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def webhook(http: aiohttp.ClientSession, t: Target, sid: str, **extra: str) -> tuple[int, str]:
    """A signed incoming-call webhook, as Twilio posts it."""
    params = {"CallSid": sid, "AccountSid": ACCOUNT_SID, "From": "+15005550006", "To": "+15005550001",
              "CallStatus": "ringing", "Direction": "inbound"}
    params.update(extra)
    url = t.public_url + "/twilio/voice"
    async with http.post(t.base_url + "/twilio/voice", data=params,
                         headers={"X-Twilio-Signature": sign(t, url, params)}) as r:
        return r.status, await r.text()


def stream_of(twiml: str) -> tuple[str, dict[str, str]] | None:
    """(stream URL, parameters) from `<Connect><Stream>` TwiML, or None (rejected)."""
    root = ET.fromstring(twiml)
    stream = root.find("Connect/Stream")
    if stream is None:
        return None
    return stream.get("url", ""), {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def start_frame(sid: str, stream_sid: str, params: dict[str, str]) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": ACCOUNT_SID, "streamSid": stream_sid, "callSid": sid, "tracks": ["inbound"],
                  "customParameters": params,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def media_frame(stream_sid: str, seq: int) -> str:
    return json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20),
                                 "payload": base64.b64encode(SILENCE).decode()}})


async def open_stream(
    http: aiohttp.ClientSession, t: Target, wss_url: str, *, signed: bool = True, max_msg_size: int = 1 << 22
) -> aiohttp.ClientWebSocketResponse | None:
    headers = {"X-Twilio-Signature": sign(t, wss_url)} if signed else {}
    try:
        return await http.ws_connect(local_ws(t, wss_url), headers=headers, max_msg_size=max_msg_size,
                                     timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    except aiohttp.WSServerHandshakeError:
        return None


async def stream_call(
    http: aiohttp.ClientSession, t: Target, wss_url: str, sid: str, params: dict[str, str], *,
    hold: float = 1.0, signed: bool = True, release: asyncio.Event | None = None,
) -> bool:
    """Open a stream, start it, send audio for `hold` seconds (or until `release` is set, if
    sooner), stop. True if the server kept it open."""
    ws = await open_stream(http, t, wss_url, signed=signed)
    if ws is None:
        return False
    stream_sid = "MZ" + secrets.token_hex(16)
    try:
        await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send_str(start_frame(sid, stream_sid, params))
        loop = asyncio.get_running_loop()
        end = loop.time() + hold
        seq = 2
        while loop.time() < end and not ws.closed and not (release is not None and release.is_set()):
            await ws.send_str(media_frame(stream_sid, seq))
            seq += 1
            with contextlib.suppress(asyncio.TimeoutError):
                msg = await ws.receive(timeout=0.02)
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    break
        alive = not ws.closed
        if alive:
            await ws.send_str(json.dumps({"event": "stop", "sequenceNumber": str(seq), "streamSid": stream_sid,
                                          "stop": {"accountSid": ACCOUNT_SID, "callSid": sid}}))
        return alive
    except (ConnectionError, aiohttp.ClientError):
        return False
    finally:
        await ws.close()


async def good_call(http: aiohttp.ClientSession, t: Target, hold: float = 1.0,
                    release: asyncio.Event | None = None) -> bool:
    """A real call as Twilio makes it: signed webhook, then the stream it names, held for `hold`
    seconds or until `release` is set. True if it connected and stayed up."""
    sid = call_sid()
    before = t.sessions()
    try:
        status, text = await webhook(http, t, sid)
    except (TimeoutError, aiohttp.ClientError):
        return False
    stream = stream_of(text) if status == 200 else None
    if stream is None:
        return False
    alive = await stream_call(http, t, stream[0], sid, stream[1], hold=hold, release=release)
    return alive and (t.provider is None or t.sessions() > before)


def bare_url(t: Target) -> str:
    return "wss://" + urlsplit(t.public_url).netloc + "/twilio/media"


async def settle(t: Target, seconds: float = 1.0) -> None:
    await asyncio.sleep(seconds)


# -- the attacks ---------------------------------------------------------------------------------------


async def prestart_flood(t: Target, sockets: int = 4, seconds: float = 5.0, frame_kib: int = 200) -> dict[str, Any]:
    """Unauthenticated sockets send `start`-shaped junk as fast as they can (reconnecting when closed),
    and one well-formed start for a made-up call is refused: what reaches the disk?"""
    files0, bytes0 = t.files()
    lines0 = t.log_counts()[0]
    pad = "x" * (frame_kib * 1024)
    sent = connections = 0

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal sent, connections
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            ws = await open_stream(http, t, bare_url(t))
            connections += 1
            if ws is None:
                await asyncio.sleep(0.05)
                continue
            try:
                await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
                while loop.time() < end and not ws.closed:
                    await ws.send_str(json.dumps({"event": "start", "start": {"callSid": call_sid(), "junk": pad}}))
                    sent += 1
                    await asyncio.sleep(0)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                pass
            finally:
                await ws.close()

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http) for _ in range(sockets)))
        refused = await stream_call(http, t, bare_url(t), call_sid(), {}, hold=0.5, signed=False)
    await settle(t, 1.5)
    files1, bytes1 = t.files()
    return {"frames_sent": sent, "connections": connections, "files_created": files1 - files0,
            "mib_written": round((bytes1 - bytes0) / 2**20, 1), "log_lines": t.log_counts()[0] - lines0,
            "made_up_start_kept_open": refused}


async def prestart_memory(t: Target, sockets: int = 4, frames: int = 64, frame_kib: int = 1024) -> dict[str, Any]:
    """Sockets that never send `start` each send `frames` large frames: how much does the server hold?"""
    rss0 = t.rss_mib()
    peak = rss0
    pad = "x" * (frame_kib * 1024 - 40)
    delivered = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, t.rss_mib())
            await asyncio.sleep(0.05)

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal delivered
        ws = await open_stream(http, t, bare_url(t))
        if ws is None:
            return
        try:
            await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            for _ in range(frames):
                if ws.closed:
                    break
                await ws.send_str('{"event":"mark","pad":"' + pad + '"}')
                delivered += 1
            await asyncio.sleep(1.0)  # hold them while the server has them
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass
        finally:
            await ws.close()

    sampler = asyncio.create_task(sample())
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one(http) for _ in range(sockets)))
    stop.set()
    await sampler
    return {"frames_sent": delivered, "rss_before_mib": round(rss0), "rss_peak_growth_mib": round(peak - rss0)}


async def signature_replay(t: Target, calls: int = 20, hold: float = 2.0) -> dict[str, Any]:
    """One captured upgrade signature (the bare media URL's), made-up call SIDs, no webhook, no token."""
    before = t.sessions()
    async with aiohttp.ClientSession() as http:
        kept = await asyncio.gather(*(stream_call(http, t, bare_url(t), call_sid(), {}, hold=hold)
                                      for _ in range(calls)))
    await settle(t)
    return {"attempts": calls, "kept_open": sum(kept), "provider_sessions": t.sessions() - before}


async def token_reuse(t: Target, uses: int = 3) -> dict[str, Any]:
    """One signed webhook; its stream (URL, signature, token) used again after each call ends."""
    before = t.sessions()
    async with aiohttp.ClientSession() as http:
        sid = call_sid()
        status, text = await webhook(http, t, sid)
        stream = stream_of(text)
        assert status == 200 and stream is not None, text
        for _ in range(uses):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                await stream_call(fresh, t, stream[0], sid, stream[1], hold=0.5)  # a new connection each time
            await settle(t, 0.5)
    await settle(t)
    return {"uses": uses, "provider_sessions": t.sessions() - before}


async def idle_connections(t: Target, idle: int = 1000, slow: int = 160, wait: float = 25.0) -> dict[str, Any]:
    """`idle` connections that send nothing and `slow` ones that trickle a header byte a second,
    while a real call is made: how many are still held `wait` seconds after they connected, and
    the longest any was held? Each connection is timed from its own connect: opening 1,160 at once
    overflows the listen backlog, and a connection the kernel completes seconds later (SYN
    retransmission) must not be counted as held for the time it spent waiting to connect."""
    loop = asyncio.get_running_loop()
    held_for: list[float] = []
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def hold(trickle: bool) -> None:
        nonlocal failed
        try:
            reader, writer = await asyncio.open_connection(t.host, t.port)
        except OSError:
            failed += 1
            return
        connected = loop.time()
        writers.append(writer)
        closed = False
        try:
            if trickle:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: agent.test\r\nX-Slow: ")
                while loop.time() - connected < wait and not closed:
                    closed = await _eof_within(reader, 1.0)
                    if not closed:
                        writer.write(b"a")
            else:
                closed = await _eof_within(reader, wait)
        except (ConnectionError, OSError):
            closed = True
        if closed:
            held_for.append(loop.time() - connected)

    tasks = [asyncio.create_task(hold(False)) for _ in range(idle)]
    tasks += [asyncio.create_task(hold(True)) for _ in range(slow)]
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as http:
        ok = await good_call(http, t)
    await asyncio.gather(*tasks)
    for w in writers:
        w.close()
    held = idle + slow - failed - len(held_for)
    return {"connections": idle + slow - failed, "still_held_after_s": wait, "held": held,
            "longest_held_s": round(max(held_for), 1) if held_for else None, "good_call_connected": ok}


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(4096), max(0.0, seconds))
    except TimeoutError:
        return False
    except (ConnectionError, OSError):
        return True
    if data:  # e.g. a 408/400 response: wait for the close that follows
        return await _eof_within(reader, 1.0) or reader.at_eof()
    return True


async def fd_exhaustion(t: Target, conns: int = 1100, seconds: float = 10.0) -> dict[str, Any]:
    """Against a server with a 1,024-descriptor limit: `conns` idle connections, then a real call."""
    lines0, bytes0, tb0 = t.log_counts()
    writers: list[asyncio.StreamWriter] = []
    opened = 0
    for _ in range(conns):
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), 2.0)
            writers.append(w)
            opened += 1
        except (TimeoutError, OSError):
            pass
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as http:
        ok = await good_call(http, t)
    await asyncio.sleep(max(0.0, seconds - 3))
    lines1, bytes1, tb1 = t.log_counts()
    for w in writers:
        w.close()
    return {"connections_opened": opened, "good_call_connected": ok, "log_lines": lines1 - lines0,
            "log_kib": round((bytes1 - bytes0) / 1024, 1), "tracebacks": tb1 - tb0}


async def bad_frame_flood(t: Target, frames: int = 20000) -> dict[str, Any]:
    """Bad frames before authorisation (a stranger's socket) and inside an authorised call."""
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        lines0 = t.log_counts()[0]
        ws = await open_stream(http, t, bare_url(t), signed=False)
        sent = 0
        if ws is not None:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                for _ in range(frames):
                    if ws.closed:
                        break
                    await ws.send_str('{"event":"bogus"}')
                    sent += 1
            await ws.close()
        await settle(t, 1.0)
        out["preauth_frames_sent"] = sent
        out["preauth_log_lines"] = t.log_counts()[0] - lines0

        sid = call_sid()
        _, text = await webhook(http, t, sid)
        stream = stream_of(text)
        assert stream is not None, text
        ws = await open_stream(http, t, stream[0])
        assert ws is not None
        stream_sid = "MZ" + secrets.token_hex(16)
        await ws.send_str('{"event":"connected","protocol":"Call","version":"1.0.0"}')
        await ws.send_str(start_frame(sid, stream_sid, stream[1]))
        await asyncio.sleep(0.5)
        lines0 = t.log_counts()[0]
        sent = 0
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            for i in range(frames):
                if ws.closed:
                    break
                await ws.send_str('{"event":"bogus"}' if i % 2 else "{not json")
                sent += 1
        await settle(t, 1.0)
        out["call_frames_sent"] = sent
        out["call_log_lines"] = t.log_counts()[0] - lines0
        await ws.close()
    return out


async def malformed_webhooks(t: Target) -> dict[str, Any]:
    """Unsigned webhook bodies that are not what Twilio sends: which statuses, which tracebacks?"""
    _, _, tb0 = t.log_counts()
    url = t.base_url + "/twilio/voice"
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        cases: dict[str, tuple[bytes, str]] = {
            "not_utf8": (b"CallSid=CA1&From=\xff\xfe\xfd", "application/x-www-form-urlencoded"),
            "multipart_no_boundary": (b"--x\r\n\r\n", "multipart/form-data"),
            "json": (b'{"CallSid": "CA1"}', "application/json"),
            "huge": (b"CallSid=" + b"A" * (2 << 20), "application/x-www-form-urlencoded"),
        }
        for name, (body, ctype) in cases.items():
            try:
                async with http.post(url, data=body, headers={"Content-Type": ctype}) as r:
                    out[name] = r.status
            except aiohttp.ClientError as exc:
                out[name] = type(exc).__name__
    out["aborted_mid_body"] = await _raw_request(t, b"POST /twilio/voice HTTP/1.1\r\nHost: agent.test\r\n"
                                                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                                                 b"Content-Length: 1000\r\n\r\nCallSid=CA", close_after=0.2)
    await settle(t, 0.5)
    out["tracebacks"] = t.log_counts()[2] - tb0
    return out


async def _raw_request(t: Target, data: bytes, close_after: float) -> str:
    reader, writer = await asyncio.open_connection(t.host, t.port)
    writer.write(data)
    try:
        head = await asyncio.wait_for(reader.read(64), close_after)
        status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed"
    except TimeoutError:
        status = "no answer (client aborted)"
    writer.close()
    return status


async def injection(t: Target) -> dict[str, Any]:
    """Caller-controlled values that end up in TwiML and logs: control characters in From, a newline
    in the CallSid of a call refused at capacity (the refusal is logged)."""
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        _, text = await webhook(http, t, call_sid(), From="+1555\x01\x1b\uffff")
        try:
            ET.fromstring(text)
            out["twiml_valid_xml"] = True
        except ET.ParseError:
            out["twiml_valid_xml"] = False
        for _ in range(3):  # fill AGENT_MAX_CALLS=3 with reservations
            await webhook(http, t, call_sid())
        marker = "FORGED" + secrets.token_hex(4)
        await webhook(http, t, call_sid() + f"\n2026-01-01 00:00:00,000 CRITICAL {marker} admin token leaked")
    await settle(t, 0.5)
    out["forged_log_lines"] = sum(1 for line in t.log_text().splitlines() if marker in line and line.startswith("2026-01-01"))
    return out


async def drain_bypass(t: Target) -> dict[str, Any]:
    """During a SIGTERM drain (kept going by a call in progress): the captured-signature socket for
    a made-up call, and a real webhook."""
    assert t.pid is not None
    async with aiohttp.ClientSession() as http:
        sid = call_sid()
        status, text = await webhook(http, t, sid)
        stream = stream_of(text)
        assert stream is not None, text
        done = asyncio.Event()  # the call in progress keeps the drain going until the checks are made
        ongoing = asyncio.create_task(stream_call(http, t, stream[0], sid, stream[1], hold=15.0, release=done))
        await asyncio.sleep(1.5)
        os.kill(t.pid, signal.SIGTERM)
        await asyncio.sleep(1.0)
        before = t.sessions()
        kept = await stream_call(http, t, bare_url(t), call_sid(), {}, hold=1.0)
        status, text = await webhook(http, t, call_sid())
        done.set()
        await ongoing
    return {"replayed_kept_open": kept, "provider_sessions": t.sessions() - before,
            "webhook_answer": "busy" if "Reject" in text else ("stream" if "Stream" in text else status)}


ATTACKS: dict[str, Callable[[Target], Awaitable[dict[str, Any]]]] = {
    "malformed_webhooks": malformed_webhooks,
    "prestart_flood": prestart_flood,
    "prestart_memory": prestart_memory,
    "signature_replay": signature_replay,
    "token_reuse": token_reuse,
    "bad_frame_flood": bad_frame_flood,
    "idle_connections": idle_connections,
    "injection": injection,
    "drain_bypass": drain_bypass,
}


# -- a server to attack ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def served(
    tree: Path, *, nofile: int | None = None, env: dict[str, str] | None = None, python: str = sys.executable,
    limit: float | None = None,
) -> AsyncIterator[Target]:
    """The tree's server as a subprocess (recordings on, text logs to a file), with a fake provider.

    `limit` bounds the time inside the block: past it the block gets a TimeoutError, and any
    failure prints the tail of the server's log, with every process's stacks, so a hang shows
    what the server was doing."""
    async with FakeOpenAIServer(api_key=API_KEY) as provider:
        with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
            port = free_tcp_port()
            log_path = Path(tmp) / "server.log"
            recordings = Path(tmp) / "recordings"
            recordings.mkdir()
            server_env = {
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": f"{tree}:{tree}/codecs",
                "AGENT_HOST": "127.0.0.1", "AGENT_PORT": str(port), "AGENT_PUBLIC_URL": PUBLIC_URL,
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "AGENT_PROVIDER": "openai", "OPENAI_API_KEY": API_KEY,
                "AGENT_OPENAI_URL": provider.url, "AGENT_RECORDINGS_DIR": str(recordings),
                "AGENT_MAX_CALLS": "3", "AGENT_LOG_FORMAT": "text", "AGENT_DRAIN_SECONDS": "20",
                "AGENT_STREAM_TOKEN_TTL_SECONDS": "5", "AGENT_MAX_LOOP_LAG_MS": "5000",
                "AGENT_OVERLOAD_WINDOW_SECONDS": "1",
            }
            server_env.update(env or {})

            with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - before the server starts
                # util-linux's prlimit, not a preexec_fn: Python code between fork and exec can
                # deadlock in a process with threads, as a test worker has
                capped = ["prlimit", f"--nofile={nofile}", "--"] if nofile is not None else []
                proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
                    [*capped, python, "-m", "telephony_agent", "serve"], cwd=tmp, env=server_env,
                    stdout=log_file, stderr=subprocess.STDOUT,
                )
            target = Target(f"http://127.0.0.1:{port}", provider=provider, recordings=recordings, pid=proc.pid,
                            log_path=log_path, proc=proc)
            try:
                await _wait_up(target, proc, workers=int(server_env.get("AGENT_WORKERS", "1")))
                async with asyncio.timeout(limit):
                    yield target
            except BaseException:  # a failed or timed-out test shows what the server logged
                if proc.poll() is None:  # and where each of its processes is (serve.py: SIGUSR1)
                    proc.send_signal(signal.SIGUSR1)
                    await asyncio.sleep(1.0)
                print(f"--- server log (last 12000 characters) ---\n{target.log_text()[-12000:]}", flush=True)
                raise
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        await asyncio.wait_for(asyncio.to_thread(proc.wait), 30)
                    except TimeoutError:
                        proc.kill()
                        proc.wait()


async def _wait_up(t: Target, proc: subprocess.Popen[bytes], *, workers: int = 1, timeout: float = 60.0) -> None:
    """Until /healthz answers and every worker has logged that it listens: one worker answering
    does not mean the others are up, and a connection the kernel gives a starting worker waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{t.log_text()[-3000:]}")
            try:
                async with http.get(t.base_url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200 and t.log_text().count("listening on ") >= workers:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass
            if loop.time() > deadline:
                raise RuntimeError("server did not come up")
            await asyncio.sleep(0.2)


async def run_against(t: Target, only: list[str] | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in only or [n for n in ATTACKS if n != "drain_bypass" or t.pid is not None]:
        fn = fd_exhaustion if name == "fd_exhaustion" else ATTACKS[name]
        results[name] = await fn(t)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        await asyncio.sleep(6.0 if name == "injection" else 1.0)
    return results


async def run(tree: Path, only: list[str] | None, python: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    names = only or [*ATTACKS, "fd_exhaustion"]
    async with served(tree, python=python) as t:
        for name in names:
            if name in ATTACKS:
                results[name] = await ATTACKS[name](t)
                print(f"{name}: {json.dumps(results[name])}", flush=True)
                await asyncio.sleep(6.0 if name == "injection" else 1.0)  # reservations expire (5 s TTL)
    if "fd_exhaustion" in names:
        async with served(tree, nofile=1024, python=python) as t:
            results["fd_exhaustion"] = await fd_exhaustion(t)
            print(f"fd_exhaustion: {json.dumps(results['fd_exhaustion'])}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose server to attack (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the server")
    parser.add_argument("--only", default="", help="comma-separated attack names: " + ",".join([*ATTACKS, "fd_exhaustion"]))
    parser.add_argument("--json", action="store_true", help="print all results as one JSON object at the end")
    parser.add_argument("--url", help="attack this running server instead of starting one")
    parser.add_argument("--public-url", default=PUBLIC_URL, help="with --url: its AGENT_PUBLIC_URL")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="with --url: its TWILIO_AUTH_TOKEN")
    parser.add_argument("--pid", type=int, help="with --url: its pid (RSS; drain_bypass sends it SIGTERM)")
    parser.add_argument("--recordings-dir", type=Path, help="with --url: its AGENT_RECORDINGS_DIR")
    parser.add_argument("--log", type=Path, help="with --url: the file its log goes to")
    args = parser.parse_args()
    only = [n for n in re.split(r"[,\s]+", args.only) if n] or None
    if args.url:
        target = Target(args.url.rstrip("/"), args.public_url.rstrip("/"), args.auth_token, pid=args.pid,
                        recordings=args.recordings_dir, log_path=args.log)
        results = asyncio.run(run_against(target, only))
    else:
        results = asyncio.run(run(args.tree.resolve(), only, args.python))
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
