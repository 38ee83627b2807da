"""Simulated Twilio callers for the load benchmark: hundreds of Media Stream calls in one
process, raw asyncio WebSockets, one 20 ms scheduler for all of them.

Each call: `connected`, `start` (stamped: time to first audio starts here), then a stamped
20 ms mu-law frame every 20 ms for the whole call (full duplex), while it plays the agent's
audio back in real time the way Twilio does: a mark is echoed when the audio before it has
played, at once when nothing is buffered, and every pending mark at once after a `clear`.

The caller talks like a person (`bench/loadgen/speech.py`: eSpeak NG phrases, 1.2-1.6 s talk
spurts; near-silence otherwise). When an answer has played out, it waits 0.4-1.2 s and takes its
turn; while an answer plays, it barges in with probability `--barge-p` (0.4) 0.3-1.2 s into it
(never in the call's first second), by starting to speak. The provider hears the speech only through the flag in the frames' header
(`bench/loadgen/provider.py`); the server's caller-speech detector hears the audio itself.
Everything a call decides comes from a random generator seeded with `--seed` and the call id.

Measures on the caller side: provider delta sent (stamp in the frame) -> media received;
barge-in reaction (first speech frame sent -> `clear` received) and barge-ins that never got a
`clear`; clears with no barge-in behind them, and paused answers that resumed (false
interruptions); missing or reordered agent frames; playback underruns.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import os
import random
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
    PROVIDER_HDR_BYTES,
    PROVIDER_MAGIC,
    caller_frame,
    emit,
    percentiles,
    read_commands,
    read_provider_frame,
    run,
)
from bench.loadgen.speech import Spurts

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


class Script:
    """How the callers behave (command-line options), and what they say."""

    seed = 1
    barge_p = 0.4
    barge_from, barge_to = 15, 60  # frames of the answer played before a barge-in: 0.3-1.2 s
    # No barge-in in a call's first second: the server's echo guard assumes an echo as loud as
    # -6 dB of the agent's audio until it has heard the line quiet under it (~0.6 s), and a
    # caller as loud as the agent is not heard over it before then.
    barge_not_before = 50
    gap_from, gap_to = 20, 60  # frames of quiet after an answer before the caller's turn: 0.4-1.2 s
    spurt_from, spurt_to = 1.2, 1.6  # seconds a talk spurt lasts
    idle_frames = 200  # nothing heard for 4 s after speaking: speak again ("hello?")
    spurts: Spurts | None = None


STATS = Stats()
SCRIPT = Script()
CUT_NS = 1_000_000_000  # a barge-in begun this close to the hang-up may get its clear after it: not counted
# A barge-in with no clear is missed when the caller heard this much more of the answer after it
# began talking (the agent talked over them); when the answer ended sooner, there was nothing
# left to clear (the caller cut in at its very end) and it is counted apart.
TALKED_OVER = 25  # frames: 0.5 s, longer than the provider's 200-300 ms to notice speech
SLOTS = 4  # calls are spread over 4 phases of the 20 ms period, like real calls that start at random times
LIVE: list[set[Call]] = [set() for _ in range(SLOTS)]


class Call(asyncio.Protocol):
    def __init__(self, host: str, path: str = "/twilio/media") -> None:
        self.id = next(_ids)
        self.host = host
        self.path = path
        self.t: Any = None
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
        # playback: deque of int (one 20 ms frame of that response) or str (a mark name)
        self.play: deque[int | str] = deque()
        self.queued = 0
        self.sounding = False  # a frame began playing this tick: a mark after it waits for the next
        self.underruns = 0
        self.foreign = 0
        # agent frames
        self.resp = -1
        self.resp_conn = -1
        self.expect = 0
        self.resp_done = True
        self.resp_cleared = False
        self.lost = 0  # frames missing inside an answer
        self.tails: list[tuple[int, int, int]] = []  # (provider connection, answer, frames got): no end came
        self.reordered = 0
        self.clears: list[int] = []
        self.marks_echoed = 0
        # talking (see Script)
        self.rng = random.Random(SCRIPT.seed * 1_000_003 + self.id)
        self.talk: list[bytes] = []  # the talk spurt being spoken
        self.talk_i = 0
        self.talk_barge = False
        self.playing = -1  # response whose audio played last
        self.played = 0  # its frames played
        self.barge_after: int | None = None  # barge in once this many frames of it played
        self.answered = -1  # last response the caller spoke to (barged into or answered)
        self.turn_due: int | None = None  # frame count at which to take the turn
        self.spoke_end = 0  # frame count when the last spurt ended
        self.barge_end = -1000  # ... and the last barge-in spurt
        # [first speech frame sent ns, clear received ns | None, frames of that answer heard after it
        # with no clear, the answer]
        self.barges: list[list[Any]] = []
        self.turns = 0
        self.idle_turns = 0
        self.clears_unprompted = 0
        self.cleared_resp = -1  # a clear stopped this response: any more of it is a resumed pause
        self.resumed = 0
        self.t_stop = 0  # when hanging up began

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
            head = ws.take_head(self.buf)
            if head is None:
                return
            if not ws.switched(head):
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
            magic, conn, resp, idx, t_ns = read_provider_frame(audio) if len(audio) >= PROVIDER_HDR_BYTES else (b"", 0, 0, 0, 0)
            if magic != PROVIDER_MAGIC:
                self.play.append(-1)
                self.queued += 1
                self.foreign += 1
                return
            self.play.append(resp)
            self.queued += 1
            if resp == self.cleared_resp:
                self.resumed += 1  # the answer plays on after a clear: the pause did not confirm
                self.cleared_resp = -1
                self.resp_cleared = False
            if self.ttfa_ms is None:
                self.ttfa_ms = (now - self.t_start) / 1e6
                self.conn = conn
            last = idx & LAST_FLAG
            idx &= 0x7FFF
            if resp != self.resp:
                if not self.resp_done and not self.resp_cleared and self.resp >= 0:
                    # The previous answer's end never came and no clear said why: load.py asks the
                    # provider how many frames of it were sent (it may have cancelled the answer).
                    self.tails.append((self.resp_conn, self.resp, self.expect))
                self.resp, self.expect, self.resp_done, self.resp_cleared = resp, 0, False, False
                self.resp_conn = conn
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
            if self.queued or self.sounding:  # Twilio echoes once the audio before the mark has finished
                self.play.append(name)
            else:
                self.echo(name)
        elif event == "clear":
            now = _now()
            self.clears.append(now)
            self.resp_cleared = True
            self.cleared_resp = self.resp
            last = self.barges[-1] if self.barges else None
            if last is not None and last[1] is None and (self.talk_barge or self.frames - self.barge_end < 100):
                last[1] = now
            else:
                self.clears_unprompted += 1
            for entry in self.play:
                if isinstance(entry, str):
                    self.echo(entry)
            self.play.clear()
            self.queued = 0
            self.sounding = False  # cut off mid-frame

    def echo(self, name: str) -> None:
        self.msg_seq += 1
        self.marks_echoed += 1
        self.send(orjson.dumps({"event": "mark", "sequenceNumber": str(self.msg_seq), "streamSid": self.sid, "mark": {"name": name}}))

    def tick(self) -> None:
        """One 20 ms period: send one caller frame, play one agent frame, echo marks reached,
        and decide whether to start talking."""
        if self.stopping:
            return
        self.msg_seq += 1
        self.frames += 1
        k = self.frames
        speech = None
        if self.talk:
            speech = self.talk[self.talk_i]
            self.talk_i += 1
        now = _now()
        payload = _b2a(caller_frame(self.id, k - 1, now, speech), newline=False).decode()
        self.send(f'{self.pre}{self.msg_seq}{self.mid}{k}","timestamp":"{(k - 1) * 20}","payload":"{payload}"}}}}')
        if speech is not None:
            if self.talk_i == 1 and self.talk_barge:
                self.barges.append([now, None, 0, self.playing])
            if self.talk_i == len(self.talk):
                if self.talk_barge:
                    self.barge_end = k
                self.talk, self.talk_barge, self.spoke_end = [], False, k
        play = self.play
        while play and isinstance(play[0], str):  # the frame before them has finished playing
            self.echo(play.popleft())  # type: ignore[arg-type]
        self.sounding = bool(play)
        if play:
            resp = play.popleft()  # starts playing now: marks after it go at the next tick, as Twilio's
            self.queued -= 1
            if resp != self.playing:  # a new answer starts playing: will this caller cut in?
                self.playing, self.played = resp, 0  # type: ignore[assignment]
                s = SCRIPT
                self.barge_after = self.rng.randint(s.barge_from, s.barge_to) if self.rng.random() < s.barge_p else None
            self.played += 1
            if self.barges and self.barges[-1][1] is None and self.barges[-1][3] == resp:
                self.barges[-1][2] += 1  # the caller talks (or talked) and the agent goes on
        elif not self.resp_done and not self.resp_cleared and self.resp >= 0:
            self.underruns += 1
        if not self.talk:
            self.decide(k)

    def decide(self, k: int) -> None:
        """Start a talk spurt: a barge-in while agent audio plays, or the caller's turn after it."""
        s = SCRIPT
        if self.queued:
            self.turn_due = None
            if (self.barge_after is not None and self.played >= self.barge_after and self.answered != self.playing
                    and k >= s.barge_not_before):
                self.barge_after = None
                self.answered = self.playing
                self.speak(barge=True)
            return
        if self.resp < 0 or not (self.resp_done or self.resp_cleared):
            return  # no answer yet, or one still arriving
        if self.answered != self.resp:
            if self.turn_due is None:
                self.turn_due = k + self.rng.randint(s.gap_from, s.gap_to)
            elif k >= self.turn_due:
                self.turn_due = None
                self.answered = self.resp
                self.turns += 1
                self.speak(barge=False)
        elif k - self.spoke_end >= s.idle_frames:
            self.idle_turns += 1  # spoke, and no answer came: say it again
            self.speak(barge=False)

    def speak(self, barge: bool) -> None:
        s = SCRIPT
        assert s.spurts is not None
        self.talk = s.spurts.spurt(self.rng.randrange(len(s.spurts)), self.rng.uniform(s.spurt_from, s.spurt_to))
        self.talk_i = 0
        self.talk_barge = barge

    async def hang_up(self) -> None:
        if not self.t_stop:
            self.t_stop = _now()
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
            "last_seq": self.frames - 1, "lost": self.lost, "tails": self.tails, "reordered": self.reordered, "underruns": self.underruns,
            "foreign": self.foreign, "clears_ns": self.clears, "marks_echoed": self.marks_echoed,
            "connected": self.open, "barges_ns": [b[:2] for b in self.barges if b[1] is not None or (b[2] >= TALKED_OVER and b[0] < self.t_stop - CUT_NS)],
            "barges_at_end": sum(b[1] is None and b[2] < TALKED_OVER for b in self.barges), "turns": self.turns, "idle_turns": self.idle_turns,
            "clears_unprompted": self.clears_unprompted, "resumed": self.resumed,
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
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--barge-p", type=float, default=SCRIPT.barge_p, help="share of answers the caller barges into")
    args = p.parse_args()
    SCRIPT.seed, SCRIPT.barge_p = args.seed, args.barge_p
    SCRIPT.spurts = Spurts()  # eSpeak NG once, before any call (cached on disk)
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
    run(main())
