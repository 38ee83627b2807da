"""Fake OpenAI Realtime (GA) provider for the load benchmark: one process, raw asyncio
WebSockets, one 20 ms scheduler for every connection.

Per connection: `session.created` at once; `session.updated` for `session.update`; each
`response.create` (the greeting) is answered instantly. After each response, a simulated
caller turn follows (speech_started/stopped, committed, a new response). Responses are
1-3 s of stamped mu-law frames in 40 ms deltas: the first 80 ms at once, then paced at real
time, so the bridge's playout lead never holds a frame back and every frame's delta-in ->
media-out time is bridge latency. A fraction of responses is barged in at a random point:
`input_audio_buffer.speech_started` (its send time stamped) then `response.done` cancelled.

Measures on the provider side: caller frame sent (stamp in the frame) -> append received;
missing/reordered caller frames; the provider's own time in the handshake.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import itertools
import os
import random
import time
from array import array
from typing import Any

import orjson

from bench.loadgen import ws
from bench.loadgen.common import (
    CALLER_HDR,
    CALLER_MAGIC,
    FRAME_S,
    LAST_FLAG,
    LATE_MS,
    emit,
    percentiles,
    provider_frame,
    read_commands,
)

BURST_FRAMES = 4  # 80 ms sent at once at the start of a response
DELTA_FRAMES = 2  # 40 ms per delta
_b2a = binascii.b2a_base64
_a2b = binascii.a2b_base64
_now = time.monotonic_ns


class Stats:
    def __init__(self) -> None:
        self.measuring = False
        self.in_lat = array("d")
        self.in_late = 0
        self.closed: list[dict[str, Any]] = []
        self.bad = 0


STATS = Stats()
SLOTS = 4  # connections are spread over 4 phases of the 20 ms period
CONNS: list[set[Conn]] = [set() for _ in range(SLOTS)]
_ids = itertools.count(1)


class Conn(asyncio.Protocol):
    def __init__(self, cfg: argparse.Namespace) -> None:
        self.cfg = cfg
        self.id = next(_ids)
        self.buf = bytearray()
        self.open = False
        self.t = None
        self.rng = random.Random(self.id * 7919 + cfg.seed)
        self.sess = f"sess_{self.id:08d}"
        # handshake timing (ns)
        self.t_upgrade = self.t_created = self.t_update = self.t_updated = 0
        self.t_rc = self.t_first = 0
        # caller frames
        self.caller = -1
        self.first_seq = -1
        self.last_seq = -1
        self.count = 0
        self.gaps = 0
        # responses
        self.resp_no = 0
        self.active = False
        self.resp_id = ""
        self.item_id = ""
        self.total = 0
        self.next_idx = 0
        self.t0 = 0.0
        self.barge_at: int | None = None
        self.next_turn: float | None = None
        self.after_barge = False
        self.barges: list[int] = []

    # -- socket ---------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def connection_lost(self, exc: Exception | None) -> None:
        CONNS[self.id % SLOTS].discard(self)
        self.active = False
        STATS.closed.append(
            {
                "conn": self.id,
                "caller": self.caller,
                "first_seq": self.first_seq,
                "last_seq": self.last_seq,
                "count": self.count,
                "gaps": self.gaps,
                "barges_ns": self.barges,
                "own_ms": (
                    (self.t_created - self.t_upgrade) + (self.t_updated - self.t_update) + (self.t_first - self.t_rc)
                )
                / 1e6
                if self.t_first
                else None,
                "t_upgrade_ns": self.t_upgrade,
            }
        )

    def send(self, msg: dict[str, Any] | bytes) -> None:
        if self.t is None or self.t.is_closing():
            return
        data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
        self.t.write(ws.frame(data))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            request = bytes(self.buf[: end + 4])
            del self.buf[: end + 4]
            self.t_upgrade = _now()
            answer = ws.server_handshake_response(request)
            if answer is None:
                self.t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.t.close()
                return
            self.t.write(answer)
            self.open = True
            CONNS[self.id % SLOTS].add(self)
            self.send({"type": "session.created", "event_id": "ev_c", "session": {"id": self.sess, "object": "realtime.session"}})
            self.t_created = _now()
        ws.dispatch(self.buf, self.t, self.on_text, masked=False)

    # -- protocol -------------------------------------------------------------------------
    def on_text(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        if kind == "input_audio_buffer.append":
            now = _now()
            audio = _a2b(msg["audio"])
            magic, caller, seq, t_ns = CALLER_HDR.unpack_from(audio)
            if magic != CALLER_MAGIC:
                STATS.bad += 1
                return
            if self.first_seq < 0:
                self.caller, self.first_seq = caller, seq
            elif seq != self.last_seq + 1:
                self.gaps += 1
            self.last_seq = seq
            self.count += 1
            if STATS.measuring:
                ms = (now - t_ns) / 1e6
                STATS.in_lat.append(ms)
                if ms > LATE_MS:
                    STATS.in_late += 1
        elif kind == "session.update":
            self.t_update = _now()
            self.send({"type": "session.updated", "event_id": "ev_u", "session": {"id": self.sess}})
            self.t_updated = _now()
        elif kind == "response.create":
            if not self.active:
                if not self.t_rc:
                    self.t_rc = _now()
                self.start_response(time.monotonic())
                if not self.t_first:
                    self.t_first = _now()
        elif kind == "response.cancel":
            if self.active:
                self.finish("cancelled", time.monotonic())
        elif kind == "conversation.item.truncate":
            self.send({"type": "conversation.item.truncated", "item_id": msg.get("item_id"), "content_index": 0,
                       "audio_end_ms": msg.get("audio_end_ms")})

    def start_response(self, now: float) -> None:
        self.resp_no += 1
        self.resp_id = f"resp_{self.id}_{self.resp_no}"
        self.item_id = f"item_{self.id}_{self.resp_no}"
        rng = self.rng
        self.total = 2 * rng.randint(int(self.cfg.min_reply_s * 25), int(self.cfg.max_reply_s * 25))
        self.barge_at = (
            rng.randint(15, max(16, self.total - 10)) if rng.random() < self.cfg.barge_p and self.total > 30 else None
        )
        self.next_idx = 0
        self.t0 = now
        self.active = True
        self.next_turn = None
        self.send({"type": "response.created", "event_id": "ev", "response": {"id": self.resp_id, "object": "realtime.response", "status": "in_progress", "output": []}})
        self.send({"type": "response.output_item.added", "event_id": "ev", "response_id": self.resp_id, "output_index": 0,
                   "item": {"id": self.item_id, "object": "realtime.item", "type": "message", "role": "assistant", "status": "in_progress", "content": []}})
        self.pump(now)

    def pump(self, now: float) -> None:
        """Send every delta now due; barge in or finish when the script says so."""
        due = min(self.total, BURST_FRAMES + int((now - self.t0) / FRAME_S))
        while self.active and self.next_idx < due:
            if self.barge_at is not None and self.next_idx >= self.barge_at:
                self.barges.append(_now())
                self.send({"type": "input_audio_buffer.speech_started", "event_id": "ev", "audio_start_ms": 0, "item_id": f"u_{self.id}_{self.resp_no}"})
                self.finish("cancelled", now)
                self.after_barge = True
                return
            frames = []
            for _ in range(DELTA_FRAMES):
                i = self.next_idx
                idx = i | LAST_FLAG if i == self.total - 1 else i
                frames.append(provider_frame(self.id, self.resp_no & 0xFFFF, idx, _now()))
                self.next_idx += 1
            b64 = _b2a(b"".join(frames), newline=False)
            self.send(
                b'{"type":"response.output_audio.delta","event_id":"ev","response_id":"' + self.resp_id.encode()
                + b'","item_id":"' + self.item_id.encode() + b'","output_index":0,"content_index":0,"delta":"' + b64 + b'"}'
            )
        if self.active and self.next_idx >= self.total:
            self.send({"type": "response.output_audio.done", "event_id": "ev", "response_id": self.resp_id, "item_id": self.item_id, "output_index": 0, "content_index": 0})
            self.finish("completed", now)

    def finish(self, status: str, now: float) -> None:
        self.active = False
        self.send({"type": "response.done", "event_id": "ev", "response": {"id": self.resp_id, "object": "realtime.response", "status": status, "status_details": {"type": status, "reason": "turn_detected"} if status == "cancelled" else None, "output": []}})
        # The agent's audio plays out BURST_FRAMES after the last delta; the caller then talks.
        self.next_turn = now + BURST_FRAMES * FRAME_S + self.rng.uniform(self.cfg.min_gap_s, self.cfg.max_gap_s)

    def tick(self, now: float) -> None:
        if self.active:
            self.pump(now)
        elif self.next_turn is not None and now >= self.next_turn:
            uid = f"u_{self.id}_{self.resp_no + 1}"
            if not self.after_barge:
                self.send({"type": "input_audio_buffer.speech_started", "event_id": "ev", "audio_start_ms": 0, "item_id": uid})
            self.after_barge = False
            self.send({"type": "input_audio_buffer.speech_stopped", "event_id": "ev", "audio_end_ms": 0, "item_id": uid})
            self.send({"type": "input_audio_buffer.committed", "event_id": "ev", "item_id": uid, "previous_item_id": None})
            self.start_response(now)


async def scheduler(stop: asyncio.Event) -> None:
    """One task for every connection: wakes every 5 ms and serves the connections whose phase it is."""
    sub = FRAME_S / SLOTS
    t0 = time.monotonic()
    k = 0
    while not stop.is_set():
        k += 1
        delay = t0 + k * sub - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        behind = max(0, int((now - t0) / sub) - k)
        for kk in range(k, k + min(behind, SLOTS - 1) + 1):
            for conn in list(CONNS[kk % SLOTS]):
                conn.tick(now)
        k += behind


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--min-reply-s", type=float, default=1.0)
    p.add_argument("--max-reply-s", type=float, default=3.0)
    p.add_argument("--min-gap-s", type=float, default=0.4)
    p.add_argument("--max-gap-s", type=float, default=1.2)
    p.add_argument("--barge-p", type=float, default=0.4)
    cfg = p.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(cfg), "127.0.0.1", cfg.port, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()

    def on_command(cmd: dict[str, Any]) -> None:
        c = cmd.get("cmd")
        if c == "measure":
            STATS.measuring = bool(cmd.get("on"))
            emit({"ok": "measure"})
        elif c == "report":
            emit(
                {
                    "ok": "report",
                    "in_latency_ms": percentiles(STATS.in_lat),
                    "in_late": STATS.in_late,
                    "bad_frames": STATS.bad,
                    "open": sum(map(len, CONNS)),
                    "conns": STATS.closed,
                    "cpu_s": sum(os.times()[:2]),
                }
            )
            STATS.in_lat = array("d")
            STATS.in_late = 0
            STATS.closed = []
        elif c == "exit":
            stop.set()

    read_commands(loop, on_command)
    sched = asyncio.create_task(scheduler(stop))
    emit({"ok": "ready", "port": port, "pid": os.getpid()})
    await stop.wait()
    sched.cancel()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
