"""Simulated Twilio callers for the load benchmark: hundreds of Media Stream calls in one
process, raw asyncio WebSockets, one 20 ms scheduler for all of them.

Each call: `connected`, `start` (stamped: time to first audio starts here), then a stamped
20 ms mu-law frame every 20 ms for the whole call (full duplex), while it plays the agent's
audio back in real time the way Twilio does: a mark is echoed when the audio before it has
played, at once when nothing is buffered, and every pending mark at once after a `clear`.

Measures on the caller side: provider delta sent (stamp in the frame) -> media received;
`clear` arrival times (barge-in); missing or reordered agent frames; playback underruns.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import os
import secrets
import time
from array import array
from collections import deque
from typing import Any

import orjson

from bench.loadgen import ws
from bench.loadgen.common import (
    FRAME_BYTES,
    FRAME_S,
    LAST_FLAG,
    LATE_MS,
    PROVIDER_HDR,
    PROVIDER_MAGIC,
    caller_frame,
    emit,
    percentiles,
    read_commands,
)

_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64
_now = time.monotonic_ns
_ids = itertools.count(1)


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.out_lat = array("d")
        self.out_first_lat = array("d")  # first frame of each response: never behind any lead
        self.out_late = 0
        self.tick_lag = array("d")
        self.done: list[dict[str, Any]] = []


STATS = Stats()
SLOTS = 4  # calls are spread over 4 phases of the 20 ms period, like real calls that start at random times
LIVE: list[set[Call]] = [set() for _ in range(SLOTS)]


class Call(asyncio.Protocol):
    def __init__(self, host: str, path: str = "/twilio/media") -> None:
        self.id = next(_ids)
        self.host = host
        self.path = path
        self.t = None
        self.buf = bytearray()
        self.open = False
        self.closed = asyncio.get_running_loop().create_future()
        self.sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.pre = '{"event":"media","sequenceNumber":"'
        self.mid = '","streamSid":"' + self.sid + '","media":{"track":"inbound","chunk":"'
        self.msg_seq = 1
        self.frames = 0
        self.stopping = False
        self.t_start = 0
        self.ttfa_ms: float | None = None
        self.conn = -1
        # playback: deque of None (one 20 ms frame) or str (a mark name)
        self.play: deque[str | None] = deque()
        self.queued = 0
        self.underruns = 0
        self.foreign = 0
        # agent frames
        self.resp = -1
        self.expect = 0
        self.resp_done = True
        self.resp_cleared = False
        self.lost = 0
        self.reordered = 0
        self.clears: list[int] = []
        self.marks_echoed = 0

    # -- socket ---------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.t = transport
        req, _ = ws.client_handshake(self.host, self.path)
        transport.write(req)

    def connection_lost(self, exc: Exception | None) -> None:
        LIVE[self.id % SLOTS].discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, text: str | bytes) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.write(ws.frame(text.encode() if isinstance(text, str) else text, masked=True))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.t.close()
                return
            self.open = True
            self.send('{"event":"connected","protocol":"Call","version":"1.0.0"}')
            self.send(orjson.dumps({
                "event": "start", "sequenceNumber": "1", "streamSid": self.sid,
                "start": {"accountSid": "AC" + "0" * 32, "streamSid": self.sid, "callSid": self.call_sid,
                          "tracks": ["inbound"], "customParameters": {},
                          "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
            }))
            self.t_start = _now()
            LIVE[self.id % SLOTS].add(self)
        ws.dispatch(self.buf, self.t, self.on_text, masked=True)

    # -- Twilio side ----------------------------------------------------------------------
    def on_text(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        event = msg.get("event")
        if event == "media":
            now = _now()
            audio = _a2b(msg["media"]["payload"])
            if len(audio) > FRAME_BYTES:  # several 20 ms frames in one message: a bridge that forwards deltas whole
                for k in range(0, len(audio), FRAME_BYTES):
                    part = _b2a(audio[k : k + FRAME_BYTES], newline=False)
                    self.on_text(b'{"event":"media","media":{"payload":"' + part + b'"}}')
                return
            magic, conn, resp, idx, t_ns = PROVIDER_HDR.unpack_from(audio)
            self.play.append(None)
            self.queued += 1
            if magic != PROVIDER_MAGIC:
                self.foreign += 1
                return
            if self.ttfa_ms is None:
                self.ttfa_ms = (now - self.t_start) / 1e6
                self.conn = conn
            last = idx & LAST_FLAG
            idx &= 0x7FFF
            if resp != self.resp:
                if not self.resp_done and not self.resp_cleared and self.resp >= 0:
                    self.lost += 1  # the previous response's tail never came
                self.resp, self.expect, self.resp_done, self.resp_cleared = resp, 0, False, False
            if idx != self.expect:
                if idx > self.expect:
                    self.lost += idx - self.expect
                else:
                    self.reordered += 1
            self.expect = idx + 1
            if last:
                self.resp_done = True
            if STATS.measuring:
                ms = (now - t_ns) / 1e6
                STATS.out_lat.append(ms)
                if idx == 0:
                    STATS.out_first_lat.append(ms)
                if ms > LATE_MS:
                    STATS.out_late += 1
        elif event == "mark":
            name = msg["mark"]["name"]
            if self.queued:
                self.play.append(name)
            else:
                self.echo(name)
        elif event == "clear":
            self.clears.append(_now())
            self.resp_cleared = True
            for entry in self.play:
                if entry is not None:
                    self.echo(entry)
            self.play.clear()
            self.queued = 0

    def echo(self, name: str) -> None:
        self.msg_seq += 1
        self.marks_echoed += 1
        self.send(orjson.dumps({"event": "mark", "sequenceNumber": str(self.msg_seq), "streamSid": self.sid, "mark": {"name": name}}))

    def tick(self) -> None:
        """One 20 ms period: send one caller frame, play one agent frame, echo marks reached."""
        if self.stopping:
            return
        self.msg_seq += 1
        self.frames += 1
        k = self.frames
        payload = _b2a(caller_frame(self.id, k - 1, _now()), newline=False).decode()
        self.send(f'{self.pre}{self.msg_seq}{self.mid}{k}","timestamp":"{(k - 1) * 20}","payload":"{payload}"}}}}')
        play = self.play
        while play and play[0] is not None:
            self.echo(play.popleft())
        if play:
            play.popleft()
            self.queued -= 1
            while play and play[0] is not None:
                self.echo(play.popleft())
        elif not self.resp_done and not self.resp_cleared and self.resp >= 0:
            self.underruns += 1

    async def hang_up(self) -> None:
        if not self.stopping and self.open:
            self.stopping = True
            await asyncio.sleep(0.3)  # let the last frames reach the provider before `stop`
            self.msg_seq += 1
            self.send(orjson.dumps({"event": "stop", "sequenceNumber": str(self.msg_seq), "streamSid": self.sid,
                                    "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}}))
        self.stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 10)
        except TimeoutError:
            if self.t is not None:
                self.t.close()
        LIVE[self.id % SLOTS].discard(self)

    def record(self) -> dict[str, Any]:
        return {
            "call": self.id, "conn": self.conn, "ttfa_ms": self.ttfa_ms, "frames_sent": self.frames,
            "last_seq": self.frames - 1, "lost": self.lost, "reordered": self.reordered, "underruns": self.underruns,
            "foreign": self.foreign, "clears_ns": self.clears, "marks_echoed": self.marks_echoed,
            "connected": self.open,
        }


async def scheduler(stop: asyncio.Event) -> None:
    """One task for every call: wakes every 5 ms and ticks the calls whose phase it is."""
    sub = FRAME_S / SLOTS
    t0 = time.monotonic()
    k = 0
    while not stop.is_set():
        k += 1
        target = t0 + k * sub
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = time.monotonic() - target
        if STATS.measuring:
            STATS.tick_lag.append(max(0.0, lag * 1000))
        behind = int(lag / sub) if lag > sub else 0  # fell behind: catch up so every call still sends 50 frames/s
        for kk in range(k, k + behind + 1):
            for call in list(LIVE[kk % SLOTS]):
                call.tick()
        k += behind


async def place(host: str, port: int) -> Call:
    loop = asyncio.get_running_loop()
    _, call = await loop.create_connection(lambda: Call(f"{host}:{port}"), host, port)
    return call


class Runner:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.calls: list[Call] = []
        self.task: asyncio.Task[Any] | None = None

    async def run(self, n: int, ramp_s: float) -> None:
        t0 = time.monotonic()
        for i in range(n):
            delay = t0 + ramp_s * i / max(1, n) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                self.calls.append(await place(self.host, self.port))
            except OSError as exc:
                emit({"warn": f"connect failed: {exc}"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(c.ttfa_ms is None for c in self.calls):
            await asyncio.sleep(0.05)
        emit({"ok": "up", "calls": len(self.calls), "with_audio": sum(c.ttfa_ms is not None for c in self.calls)})

    async def stop(self) -> None:
        await asyncio.gather(*(c.hang_up() for c in self.calls))
        report = {
            "ok": "stopped",
            "out_latency_ms": percentiles(STATS.out_lat),
            "out_first_latency_ms": percentiles(STATS.out_first_lat),
            "out_late": STATS.out_late,
            "tick_lag_ms": percentiles(STATS.tick_lag),
            "calls": [c.record() for c in self.calls],
            "cpu_s": sum(os.times()[:2]),
        }
        STATS.out_lat, STATS.out_first_lat, STATS.tick_lag, STATS.out_late = array("d"), array("d"), array("d"), 0
        self.calls = []
        emit(report)

    async def sequential(self, total: int, concurrency: int, call_s: float, every: int) -> None:
        sem = asyncio.Semaphore(concurrency)
        done = 0
        failed = 0

        async def one() -> None:
            nonlocal done, failed
            async with sem:
                try:
                    call = await place(self.host, self.port)
                except OSError:
                    failed += 1
                    return
                await asyncio.sleep(call_s)
                if call.ttfa_ms is None:
                    failed += 1
                await call.hang_up()
                done += 1
                if done % every == 0:
                    emit({"ok": "progress", "done": done, "failed": failed})

        await asyncio.gather(*(one() for _ in range(total)))
        emit({"ok": "sequential", "done": done, "failed": failed})


async def main() -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = Runner(args.host, args.port)
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_command(cmd: dict[str, Any]) -> None:
        c = cmd.get("cmd")
        if c == "run":
            spawn(runner.run(int(cmd["n"]), float(cmd.get("ramp_s", 1.0))))
        elif c == "measure":
            STATS.measuring = bool(cmd.get("on"))
            emit({"ok": "measure"})
        elif c == "stop":
            spawn(runner.stop())
        elif c == "sequential":
            spawn(runner.sequential(int(cmd["total"]), int(cmd["concurrency"]), float(cmd["call_s"]), int(cmd.get("every", 100))))
        elif c == "exit":
            stop.set()

    read_commands(loop, on_command)
    sched = asyncio.create_task(scheduler(stop))
    emit({"ok": "ready", "pid": os.getpid()})
    await stop.wait()
    sched.cancel()


if __name__ == "__main__":
    asyncio.run(main())
