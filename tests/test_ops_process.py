"""The real server process: health, readiness, drain on SIGTERM, workers, JSON logs.

Each test starts `python -m telephony_agent serve` on 127.0.0.1 with the offline local engine and
Twilio signature checks off, holds a call open over a real media WebSocket where the drain needs
one, sends a real signal, and checks the exit code. Every process started is killed by pid in a
`finally`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from telephony_agent.testing.ports import free_tcp_port

pytestmark = pytest.mark.timeout(60)

CALL_SID = "CA" + "ab" * 16
STREAM_SID = "MZ" + "cd" * 16
ACCOUNT_SID = "AC" + "ef" * 16
CALLER = "+15551234567"
CALLED = "+15557654321"
SILENCE_FRAME = base64.b64encode(b"\xff" * 160).decode()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"server still running after {timeout}s:\n" + "\n".join(self.log_lines()[-20:]))
            await asyncio.sleep(0.05)
        return rc


def start_server(tmp_path: Path, **env: str) -> Server:
    port = free_tcp_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "OPENAI_", "GEMINI_", "TWILIO_"))}
    full_env.update(
        {
            "AGENT_HOST": "127.0.0.1",
            "AGENT_PORT": str(port),
            "AGENT_PROVIDER": "local",
            "AGENT_TWILIO_VALIDATE": "false",
            "AGENT_LOG_FORMAT": "json",
            "AGENT_DRAIN_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env)
    stderr_path = tmp_path / f"server-{port}.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "telephony_agent", "serve"],
            cwd=tmp_path,  # no stray .env
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its own process group: the workers go with it at the end
        )
    return Server(proc, port, stderr_path)


@asynccontextmanager
async def running(tmp_path: Path, **env: str) -> AsyncIterator[tuple[Server, aiohttp.ClientSession]]:
    server = start_server(tmp_path, **env)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await wait_healthy(server, http)
            yield server, http
    finally:
        # Kill the whole group: a supervisor killed alone would leave its workers running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


async def wait_healthy(server: Server, http: aiohttp.ClientSession, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise AssertionError("server exited at start-up:\n" + "\n".join(server.log_lines()[-20:]))
        try:
            async with http.get(server.base + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("server never became healthy:\n" + "\n".join(server.log_lines()[-20:]))
        await asyncio.sleep(0.05)


async def readyz(server: Server, http: aiohttp.ClientSession) -> tuple[int, dict]:
    async with http.get(server.base + "/readyz") as r:
        return r.status, await r.json()


async def metric_value(server: Server, http: aiohttp.ClientSession, name: str) -> float:
    async with http.get(server.base + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def webhook(server: Server, http: aiohttp.ClientSession, call_sid: str) -> str:
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": CALLED}
    async with http.post(server.base + "/twilio/voice", data=form) as r:
        assert r.status == 200
        return await r.text()


@dataclass
class PhoneLeg:
    """A minimal Twilio media stream: connected + start, silence frames, immediate mark echoes."""

    ws: aiohttp.ClientWebSocketResponse
    media_received: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 1

    async def send(self, msg: dict) -> None:
        msg.setdefault("sequenceNumber", str(self.seq))
        self.seq += 1
        await self.ws.send_str(json.dumps(msg))

    async def open(self) -> None:
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send(
            {
                "event": "start",
                "streamSid": STREAM_SID,
                "start": {
                    "streamSid": STREAM_SID,
                    "callSid": CALL_SID,
                    "accountSid": ACCOUNT_SID,
                    "tracks": ["inbound"],
                    "customParameters": {"callSid": CALL_SID, "from": CALLER, "to": CALLED},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    async def media(self, n: int) -> None:
        for i in range(n):
            await self.send(
                {
                    "event": "media",
                    "streamSid": STREAM_SID,
                    "media": {"track": "inbound", "chunk": str(i + 1), "timestamp": str(20 * i), "payload": SILENCE_FRAME},
                }
            )

    async def stop(self) -> None:
        await self.send({"event": "stop", "streamSid": STREAM_SID, "stop": {"callSid": CALL_SID, "accountSid": ACCOUNT_SID}})

    async def pump(self) -> None:
        """Read what the agent sends; echo every mark at once (the audio 'played' instantly)."""
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                if data.get("event") == "media":
                    self.media_received += 1
                elif data.get("event") == "mark":
                    await self.send({"event": "mark", "streamSid": STREAM_SID, "mark": data["mark"]})
        finally:
            self.closed.set()


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def logged(server: Server, n: int, match: Callable[[str], bool]) -> Callable[[], Awaitable[bool]]:
    """A `wait_for` predicate: at least `n` lines of the server's log match."""
    async def check() -> bool:
        return sum(1 for line in server.log_lines() if match(line)) >= n
    return check


def json_log(server: Server) -> list[dict]:
    lines = server.log_lines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line is not JSON: {line!r}") from None
    return records


async def test_drain_waits_for_the_active_call_then_exits_0(tmp_path: Path) -> None:
    async with running(tmp_path, AGENT_DRAIN_SECONDS="15") as (server, http):
        status, body = await readyz(server, http)
        assert (status, body["ready"]) == (200, True)
        async with live_call(server, http) as leg:
            # Per-call counters are live: frames show up while the call is still going.
            await leg.media(25)
            await wait_for(lambda: _metric_at_least(server, http, "agent_frames_in_total", 25), 20, "live frames_in")

            server.proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: _not_ready(server, http, "draining"), 15, "/readyz to say draining")
            assert "Reject" in await webhook(server, http, "CA" + "12" * 16)
            assert await metric_value(server, http, 'agent_calls_refused_total{reason="draining"}') == 1
            assert await metric_value(server, http, "agent_draining") == 1
            await asyncio.sleep(0.5)
            assert server.proc.poll() is None, "the drain must wait for the active call"

            hung_up = time.monotonic()
            await leg.stop()
            assert await server.wait_exit(8) == 0
            assert time.monotonic() - hung_up < 8  # well before AGENT_DRAIN_SECONDS=15

    records = json_log(server)
    call_events = [r for r in records if r.get("call_id") == CALL_SID]
    events = {r.get("event") for r in call_events}
    assert {"call_started", "call_summary"} <= events, events
    summary = next(r for r in call_events if r.get("event") == "call_summary")
    assert summary["outcome"] == "caller_hangup" and summary["frames_in"] == 25
    phases = [r.get("event") for r in records if r.get("logger") == "telephony_agent.serve"]
    assert phases.index("signal") < phases.index("drain_started") < phases.index("drain_complete") < phases.index("stopped")
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)


async def test_drain_deadline_says_goodbye_hangs_up_and_exits_0(tmp_path: Path) -> None:
    async with running(tmp_path, AGENT_DRAIN_SECONDS="1") as (server, http):
        async with live_call(server, http) as leg:
            before = leg.media_received
            server.proc.send_signal(signal.SIGTERM)
            # Past the deadline the caller hears the goodbye prompt, then the server hangs up.
            await asyncio.wait_for(leg.closed.wait(), 15)
            assert leg.media_received - before > 100  # ~5 s of goodbye at 50 frames/s
            assert await server.wait_exit(10) == 0
    summary = [r for r in json_log(server) if r.get("event") == "call_summary"]
    assert summary and summary[0]["outcome"] == "server_shutdown" and summary[0]["call_id"] == CALL_SID
    assert any(r.get("event") == "drain_deadline" for r in json_log(server))


async def test_two_workers_share_the_port_and_drain_on_sigterm(tmp_path: Path) -> None:
    async with running(tmp_path, AGENT_WORKERS="2") as (server, http):
        pids: set[int] = set()
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            # A new connection each time: SO_REUSEPORT spreads connections, not requests.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
                try:
                    async with fresh.get(server.base + "/healthz") as r:
                        pids.add((await r.json())["pid"])
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)  # the second worker may still be starting
        assert len(pids) == 2, f"only {pids} answered"
        assert server.proc.pid not in pids
        # Any worker's /metrics speaks for the host (multiprocess mode): both report their limit.
        assert await metric_value(server, http, "agent_max_calls") == 200
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    workers = {r.get("worker") for r in json_log(server) if r.get("event") == "stopped" and "worker" in r}
    assert workers == {0, 1}


@pytest.mark.timeout(120)  # two workers started (and one again) on a busy machine: 40 s in CI
async def test_sigusr1_dumps_every_workers_stacks_and_sigusr2_is_passed_on(tmp_path: Path) -> None:
    """SIGUSR1 to the supervisor: each worker writes its threads' stacks (faulthandler, which a
    blocked event loop cannot stop) and serves on; SIGUSR2 reaches each worker's memory report.
    Neither signal's default action (exit) takes the supervisor down."""
    async with running(tmp_path, AGENT_WORKERS="2", AGENT_LOG_FORMAT="text") as (server, http):
        await wait_for(logged(server, 2, lambda line: "listening on" in line), 30, "both workers")
        server.proc.send_signal(signal.SIGUSR1)
        await wait_for(logged(server, 2, lambda line: line.startswith("Current thread 0x")), 10,
                       "a stack dump from each worker")
        assert any("in _run_worker" in line for line in server.log_lines())  # the dump names where it ran
        server.proc.send_signal(signal.SIGUSR2)
        await wait_for(logged(server, 2, lambda line: "SIGUSR2: tracemalloc is off" in line), 10,
                       "a memory report from each worker")
        assert server.proc.poll() is None
        async with http.get(server.base + "/healthz") as r:
            assert r.status == 200
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0


@pytest.mark.timeout(120)  # two workers started (and one again) on a busy machine: 40 s in CI
async def test_a_hung_worker_is_killed_and_replaced(tmp_path: Path) -> None:
    """A worker whose event loop stops (SIGSTOP stands in for a blocked loop: it answers nothing,
    not even SIGTERM) stops beating; past AGENT_WORKER_TIMEOUT_SECONDS the supervisor logs it,
    kills it and starts another, and the server drains and exits 0 as usual."""
    async with running(tmp_path, AGENT_WORKERS="2", AGENT_LOG_FORMAT="text",
                       AGENT_WORKER_TIMEOUT_SECONDS="3") as (server, http):
        await wait_for(logged(server, 2, lambda line: "listening on" in line), 30, "both workers")
        pids = {int(m.group(1)) for line in server.log_lines() if (m := re.search(r"worker 0 started \(pid (\d+)\)", line))}
        (hung,) = pids
        os.kill(hung, signal.SIGSTOP)
        await wait_for(logged(server, 1, lambda line: f"worker 0 (pid {hung}): its event loop has not run" in line),
                       15, "the hung worker found")
        await wait_for(logged(server, 2, lambda line: "worker 0 started" in line), 10, "a new worker 0")
        await wait_for(logged(server, 3, lambda line: "listening on" in line), 30, "the new worker listening")
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)
        assert any(f"worker 0 exited with -{int(signal.SIGKILL)}; restarting" in line for line in server.log_lines())
        async with http.get(server.base + "/healthz") as r:
            assert r.status == 200
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit(10) == 0


async def test_sigterm_with_no_calls_exits_0_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, AGENT_DRAIN_SECONDS="30", AGENT_LOG_FORMAT="text") as (server, http):
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert await server.wait_exit(10) == 0
        assert time.monotonic() - sent < 8
    assert any("drain: no calls left" in line for line in server.log_lines())


async def _active(server: Server, http: aiohttp.ClientSession, n: int) -> bool:
    return await metric_value(server, http, "agent_active_calls") == n


@asynccontextmanager
async def live_call(server: Server, http: aiohttp.ClientSession, start_timeout: float = 10) -> AsyncIterator[PhoneLeg]:
    """A media stream to the served agent, its call started; the socket is closed on the way out."""
    ws = await http.ws_connect(f"ws://127.0.0.1:{server.port}/twilio/media")
    leg = PhoneLeg(ws)
    pump = asyncio.create_task(leg.pump())
    try:
        await leg.open()
        await wait_for(lambda: _active(server, http, 1), start_timeout, "the call to start")
        yield leg
    finally:
        pump.cancel()
        await ws.close()


async def _metric_at_least(server: Server, http: aiohttp.ClientSession, name: str, value: float) -> bool:
    return await metric_value(server, http, name) >= value


async def _not_ready(server: Server, http: aiohttp.ClientSession, reason: str) -> bool:
    status, body = await readyz(server, http)
    return status == 503 and body["reason"] == reason
