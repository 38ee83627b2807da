"""Fake OpenAI Realtime (GA) provider for the load benchmark: one process, raw asyncio
WebSockets, one 20 ms scheduler for every connection.

Per connection: `session.created` at once; `session.updated` for `session.update`; each
`response.create` (the greeting) is answered instantly. Responses are 1-3 s of the agent's speech
(`speech.AgentVoice`), stamped mu-law frames in 40 ms deltas: the first 80 ms at once, then paced at real time, so the bridge's
playout lead never holds a frame back and every frame's delta-in -> media-out time is bridge
latency.

Turns come from the caller's audio, the way OpenAI's server VAD makes them: the simulated
callers (`bench/loadgen/callers.py`) speak real speech and flag those frames in their header.
`--vad-delay-ms` (200-300) into a run of speech frames the provider sends
`input_audio_buffer.speech_started` and, if a response is streaming, cancels it (`response.done`
cancelled: a barge-in); `--vad-silence-ms` (500) of quiet after it ends the caller's turn:
`speech_stopped`, `committed`, and a new response. Never a `speech_started` without speech.
`--provider-vad off` is a peer that never sends `speech_started` and never cancels on its own (the
server's caller-speech detector alone must catch a barge-in and cancel); it still answers turns.

Audio without the callers' stamp (e.g. `bench/sip_load.py`'s sipp RTP) cannot be heard this way:
such a connection gets the scripted turns instead (a caller turn 0.4-1.2 s after each response,
`--barge-p` of responses "barged into" by a `speech_started` at a random point).

Measures on the provider side: caller frame sent (stamp in the frame) -> append received;
missing/reordered caller frames; the provider's own time in the handshake; speech_started sent.
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
    CALLER_MAGIC,
    FRAME_S,
    HDR_BYTES,
    LAST_FLAG,
    LATE_MS,
    SPEECH,
    emit,
    percentiles,
    provider_frame,
    read_caller_frame,
    read_commands,
    run,
)
from bench.loadgen.speech import AgentVoice

VOICE: AgentVoice | None = None  # made in main(): eSpeak takes a moment
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
        self.t: Any = None
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
        self.speech_started: list[int] = []  # send times (ns)
        # the caller's speech, as server VAD hears it (stamped callers only)
        self.stamped: bool | None = None  # None: no caller audio yet
        self.in_speech = False
        self.started = False  # the utterance was long enough to be speech (speech_started, if sent)
        self.speech_run = 0
        self.quiet_run = 0
        self.vad_delay = 0
        self.utterances = 0
        self.vad_cancels = 0
        self.sent: list[tuple[int, int, bool]] = []  # each answer: (number in the stamps, frames sent, cancelled)

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
                "speech_started_ns": self.speech_started,
                "utterances": self.utterances,
                "vad_cancels": self.vad_cancels,
                "answers": self.sent,
                "stamped": self.stamped,
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
            request = ws.take_head(self.buf)
            if request is None:
                return
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
            magic, flags, caller, seq, t_ns = read_caller_frame(audio) if len(audio) >= HDR_BYTES else (b"", 0, 0, 0, 0)
            if self.stamped is None:  # decided once: random audio matches the magic one frame in 65,536
                self.stamped = magic == CALLER_MAGIC
                if self.stamped:
                    self.next_turn = None
                    self.barge_at = None
            if magic != CALLER_MAGIC or not self.stamped:
                STATS.bad += 1
                return
            if self.first_seq < 0:
                self.caller, self.first_seq = caller, seq
            elif seq != self.last_seq + 1:
                self.gaps += 1
            self.last_seq = seq
            self.count += 1
            self.hear(flags & SPEECH)
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

    def hear(self, speech: int) -> None:
        """One 20 ms caller frame through the provider's "server VAD" (the frame's speech flag)."""
        if speech:
            self.quiet_run = 0
            if not self.in_speech:
                self.in_speech, self.started, self.speech_run = True, False, 0
                self.vad_delay = round(self.rng.uniform(self.cfg.vad_delay_ms, self.cfg.vad_delay_max_ms) / 20)
            self.speech_run += 1
            if not self.started and self.speech_run >= self.vad_delay:
                self.started = True
                self.utterances += 1
                if self.cfg.provider_vad == "on":
                    self.speech_started.append(_now())
                    self.send({"type": "input_audio_buffer.speech_started", "event_id": "ev",
                               "audio_start_ms": max(0, (self.last_seq - self.first_seq - self.speech_run + 1) * 20),
                               "item_id": f"u_{self.id}_{self.resp_no + 1}"})
                    if self.active:
                        self.vad_cancels += 1
                        self.finish("cancelled", time.monotonic())
        elif self.in_speech:
            self.quiet_run += 1
            if self.quiet_run * 20 >= self.cfg.vad_silence_ms:
                self.in_speech = False
                if not self.started:
                    return  # too short to be speech
                uid = f"u_{self.id}_{self.resp_no + 1}"
                end_ms = max(0, (self.last_seq - self.first_seq - self.quiet_run + 1) * 20)
                self.send({"type": "input_audio_buffer.speech_stopped", "event_id": "ev", "audio_end_ms": end_ms, "item_id": uid})
                self.send({"type": "input_audio_buffer.committed", "event_id": "ev", "item_id": uid, "previous_item_id": None})
                now = time.monotonic()
                if self.active:  # nobody cancelled it (`--provider-vad off` and the server missed the barge-in)
                    self.finish("cancelled", now)
                self.start_response(now)

    def start_response(self, now: float) -> None:
        self.resp_no += 1
        self.resp_id = f"resp_{self.id}_{self.resp_no}"
        self.item_id = f"item_{self.id}_{self.resp_no}"
        rng = self.rng
        self.total = 2 * rng.randint(int(self.cfg.min_reply_s * 25), int(self.cfg.max_reply_s * 25))
        self.barge_at = (
            rng.randint(15, max(16, self.total - 10)) if rng.random() < self.cfg.barge_p and self.total > 30 else None
        )
        if self.stamped:
            self.barge_at = None  # the caller barges in by speaking
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
            if self.barge_at is not None and self.next_idx >= self.barge_at and self.stamped is False:
                self.speech_started.append(_now())
                self.send({"type": "input_audio_buffer.speech_started", "event_id": "ev", "audio_start_ms": 0, "item_id": f"u_{self.id}_{self.resp_no}"})
                self.finish("cancelled", now)
                self.after_barge = True
                return
            frames = []
            voice, start = VOICE, 97 * self.id + 389 * self.resp_no  # a different word for each answer (no draw from rng)
            assert voice is not None
            for _ in range(DELTA_FRAMES):
                i = self.next_idx
                idx = i | LAST_FLAG if i == self.total - 1 else i
                frames.append(provider_frame(self.id, self.resp_no & 0xFFFF, idx, _now(), voice.frame(start, i)))
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
        self.sent.append((self.resp_no & 0xFFFF, self.next_idx, status == "cancelled"))
        self.send({"type": "response.done", "event_id": "ev", "response": {"id": self.resp_id, "object": "realtime.response", "status": status, "status_details": {"type": status, "reason": "turn_detected"} if status == "cancelled" else None, "output": []}})
        if not self.stamped:  # scripted turns: the agent's audio plays out BURST_FRAMES after the last delta; the caller then talks
            self.next_turn = now + BURST_FRAMES * FRAME_S + self.rng.uniform(self.cfg.min_gap_s, self.cfg.max_gap_s)

    def tick(self, now: float) -> None:
        if self.active:
            self.pump(now)
        elif self.next_turn is not None and now >= self.next_turn and self.stamped is False:
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
    p.add_argument("--barge-p", type=float, default=0.4, help="scripted turns only (unstamped caller audio)")
    p.add_argument("--provider-vad", choices=["on", "off"], default="on",
                   help="off: never send speech_started nor cancel on caller speech (the server must)")
    p.add_argument("--vad-delay-ms", type=float, default=200.0, help="speech heard before speech_started (from)")
    p.add_argument("--vad-delay-max-ms", type=float, default=300.0, help="... (to)")
    p.add_argument("--vad-silence-ms", type=float, default=500.0, help="quiet that ends the caller's turn")
    cfg = p.parse_args()
    global VOICE
    VOICE = AgentVoice()
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
    run(main())
