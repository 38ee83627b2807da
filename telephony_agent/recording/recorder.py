"""`CallRecorder`: a wiretap that streams one call to disk as JSON Lines plus a two-channel WAV.

The call manager makes one per admitted call (when AGENT_RECORDINGS_DIR is set), naming the
phone leg's transport, and sets it as the call's `WIRETAP`. The files are
`<UTC time>_<call id>.jsonl` and `.wav`: they are opened at the first message when the call id
was given, else at the Media Streams `start` (which names the call sid); the few frames before
that wait in memory. The phone leg's audio is also placed in the WAV: in Media Streams frames
(Twilio, the browser softphone), or as binary G.711 frames in the leg's law (SIP), with a
`{"event":"clear"}` text frame where the agent's queued audio was dropped. Lines are flushed to
disk every `flush_interval` seconds; audio more than two seconds old goes to the WAV in
half-second pieces. Nothing here may raise into the call: a failure is logged once, recording
stops, and `on_finish` hears of it when the call ends.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from telephony_agent.recording.format import IN, LEG_PHONE, LEG_V1_TWILIO, OUT, TRANSPORT_V1, encode_entry, header
from telephony_agent.recording.wav import LEFT, RATE, RIGHT, StereoWavWriter
from telephony_codecs import alaw_to_pcm16, ulaw_to_pcm16

__all__ = ["CallRecorder"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_MAX_EARLY_LINES = 64


def _default_clock() -> Callable[[], float]:
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return time.monotonic


class CallRecorder:
    """Implements `telephony_agent.wiretap.Wiretap`.

    `transport` names what carries the phone leg ("twilio", "sip", "browser", ...; a
    `metadata["transport"]` is taken when the argument is not given); `call_id`, when known up
    front, names the files without waiting for a Media Streams `start`; `phone_law` (`pcmu`,
    `pcma`) is the phone leg's G.711 law, in the header as `phone_audio`, by which its binary
    frames are decoded for the WAV; `on_finish` is told, once, whether the recording failed.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        transport: str | None = None,
        call_id: str | None = None,
        clock: Callable[[], float] | None = None,
        wall: Callable[[], float] = time.time,
        recorded_by: str = "agent",
        metadata: dict[str, Any] | None = None,
        flush_interval: float = 0.5,
        wav: bool = True,
        name: str | None = None,
        phone_law: str | None = None,
        on_finish: Callable[[bool], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.clock = clock or _default_clock()
        self._t0 = self.clock()
        self._started_wall = wall()
        self.recorded_by = recorded_by
        self.metadata = dict(metadata or {})
        meta_transport = self.metadata.pop("transport", None)
        self.transport: str = transport or (meta_transport if isinstance(meta_transport, str) else TRANSPORT_V1)
        self._decode: Callable[[bytes], bytes] | None = None  # the phone leg's binary frames to PCM16
        if phone_law is not None:
            self.metadata["phone_audio"] = phone_law
            self._decode = {"pcmu": ulaw_to_pcm16, "pcma": alaw_to_pcm16}.get(phone_law)
        self._call_id = call_id
        self.flush_interval = flush_interval
        self._want_wav = wav
        self._name = name
        self.call_sid: str | None = None
        self.stream_sid: str | None = None
        self.jsonl_path: Path | None = None
        self.wav_path: Path | None = None
        self._f: BinaryIO | None = None
        self._wav: StereoWavWriter | None = None
        self._early: list[bytes] = []
        self._last_flush = self._t0
        self._failed = False
        self._finished = False
        self._on_finish = on_finish
        self._caller_anchor: int | None = None  # WAV index of Twilio media timestamp 0
        self._agent_end = 0.0  # when the agent audio queued at the leg finishes playing (rel. seconds)
        self.lines = 0

    # -- Wiretap ----------------------------------------------------------------------------

    def record(self, leg: str, direction: str, message: str | bytes) -> None:
        """Record one frame. `leg` is `LEG_PHONE` or `LEG_PROVIDER` ("twilio", the phone leg's
        name in version 1, is still accepted for the phone leg)."""
        if self._failed or self._finished:
            return
        try:
            self._record(leg, direction, message)
        except Exception:
            self._failed = True
            log.exception("call recording failed; this call is no longer recorded")

    def record_phone(self, direction: str, message: str | bytes) -> None:
        """Record a frame of the phone leg."""
        self.record(LEG_PHONE, direction, message)

    def _record(self, leg: str, direction: str, message: str | bytes) -> None:
        t = self.clock() - self._t0
        if leg == LEG_V1_TWILIO:
            leg = LEG_PHONE
        parsed: Any = None
        if leg == LEG_PHONE and isinstance(message, str):
            try:
                parsed = orjson.loads(message)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                self._media_stream(t, direction, parsed)
        if self._f is None and self._call_id is not None:
            self._open(self._call_id, None)
        if leg == LEG_PHONE and self._wav is not None and self._decode is not None and not isinstance(message, str):
            self._place_in_order(t, direction, self._decode(bytes(message)))
        line = encode_entry(t, leg, direction, message, parsed)
        if self._f is None:
            if len(self._early) < _MAX_EARLY_LINES:
                self._early.append(line)
            return
        self._f.write(line)
        self.lines += 1
        if t - (self._last_flush - self._t0) >= self.flush_interval:
            self._f.flush()
            self._last_flush = self._t0 + t

    # -- audio --------------------------------------------------------------------------------

    def _media_stream(self, t: float, direction: str, msg: dict[str, Any]) -> None:
        """A phone-leg frame of the Media Streams protocol: `start` names the call, `media` and
        `clear` go to the WAV."""
        event = msg.get("event")
        if event == "start" and direction == IN and self._f is None:
            start = msg.get("start")
            if isinstance(start, dict):
                self._open(self._call_id or str(start.get("callSid") or "unknown"), start.get("streamSid"))
            return
        if self._wav is None:
            return
        if event == "media":
            media = msg.get("media")
            if not isinstance(media, dict):
                return
            payload = media.get("payload")
            if not isinstance(payload, str):
                return
            try:
                pcm = ulaw_to_pcm16(binascii.a2b_base64(payload))
            except (binascii.Error, ValueError):
                return
            now_idx = round(t * RATE)
            if direction == IN:
                ts = media.get("timestamp")
                ts_ms: int | None = None
                if isinstance(ts, (str, int)):
                    try:
                        ts_ms = int(ts)
                    except ValueError:
                        ts_ms = None
                if ts_ms is None:
                    self._place_in_order(t, direction, pcm)
                    return
                idx = (self._caller_anchor or 0) + ts_ms * RATE // 1000
                if self._caller_anchor is None or abs(idx - now_idx) > RATE:
                    self._caller_anchor = now_idx - ts_ms * RATE // 1000
                    idx = now_idx
                self._wav.place(LEFT, idx, pcm)
            else:
                self._place_in_order(t, direction, pcm)
        elif event == "clear" and direction == OUT:
            if self._agent_end > t:
                self._wav.truncate(RIGHT, round(t * RATE))
                self._agent_end = t

    def _place_in_order(self, t: float, direction: str, pcm: bytes) -> None:
        """Audio without a media timestamp: the caller's where the last left off, or now if that
        is past (a gap); the agent's as the leg plays it, in order, from when it arrives or the
        queue frees (Twilio's buffer, SIP's RTP pacer)."""
        assert self._wav is not None
        if direction == IN:
            self._wav.place(LEFT, max(round(t * RATE), self._wav.end(LEFT)), pcm)
            return
        start_t = max(t, self._agent_end)
        self._wav.place(RIGHT, round(start_t * RATE), pcm)
        self._agent_end = start_t + len(pcm) / 2 / RATE

    # -- files --------------------------------------------------------------------------------

    def _open(self, call_sid: str, stream_sid: Any) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid if isinstance(stream_sid, str) else None
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(self._started_wall, UTC)
        base = self._name or f"{stamp.strftime('%Y%m%dT%H%M%S')}.{stamp.microsecond // 1000:03d}Z_{_SAFE.sub('', call_sid)}"
        self.jsonl_path = self.directory / f"{base}.jsonl"
        self._f = open(self.jsonl_path, "wb")
        head = header(
            call_sid,
            self.transport,
            stream_sid=self.stream_sid,
            started_at=stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            clock="monotonic",
            recorded_by=self.recorded_by,
            **self.metadata,
        )
        self._f.write(orjson.dumps(head) + b"\n")
        for line in self._early:
            self._f.write(line)
            self.lines += 1
        self._early.clear()
        if self._want_wav:
            self.wav_path = self.directory / f"{base}.wav"
            self._wav = StereoWavWriter(self.wav_path)

    def finish(self, trailer: dict[str, Any] | None = None) -> Path | None:
        """Write the trailer, patch the WAV header, close. Returns the JSONL path (None if the
        call never started). Idempotent."""
        if self._finished:
            return self.jsonl_path
        self._finished = True
        try:
            if self._f is not None:
                t = self.clock() - self._t0
                self._f.write(orjson.dumps({"type": "trailer", "t": round(t, 4), **(trailer or {})}, default=str) + b"\n")
                self._f.close()
            if self._wav is not None:
                self._wav.close()
        except Exception:
            self._failed = True
            log.exception("closing the call recording failed")
        if self._on_finish is not None:
            try:
                self._on_finish(self._failed)
            except Exception:
                log.exception("counting the call recording failed")
        return self.jsonl_path

    @property
    def failed(self) -> bool:
        """Whether a write failed (the call went on unrecorded from there)."""
        return self._failed

    def finish_bridge(self, bridge: Any) -> Path | None:
        """Finish with a trailer summarising the bridge's view of the call (tool calls, barge-ins,
        truncates, outcome): the local engine has no wire, so this is where its tool calls show."""
        trailer: dict[str, Any] = {}
        if bridge is not None:
            stats = bridge.stats
            outcome = bridge.outcome
            trailer = {
                "outcome": outcome.value if outcome is not None else None,
                "provider": getattr(bridge.model, "provider", None),
                "stats": {
                    "frames_in": stats.frames_in,
                    "frames_out": stats.frames_out,
                    "barge_ins": stats.barge_ins,
                    "truncates": [[item, ms] for item, ms in stats.truncates],
                    "first_audio_ms": None if stats.first_audio_ms is None else round(stats.first_audio_ms, 1),
                    "dtmf": list(stats.dtmf),
                    "tool_calls": list(stats.tool_calls),
                    "provider_errors": stats.provider_errors,
                    "reconnects": stats.reconnects,
                    "transcript": [list(x) for x in stats.transcript],
                },
            }
        return self.finish(trailer)
