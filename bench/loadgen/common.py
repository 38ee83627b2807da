"""Shared by the load-generator processes: stamped audio frames and the control channel.

Every 20 ms mu-law frame carries a header so a receiver in another process can tell which frame
it is and when it was sent (CLOCK_MONOTONIC is system-wide on Linux, so the two processes'
stamps are directly comparable; no clock skew). With `audio/pcmu` the bridge passes these bytes
through untouched in both directions.

- caller -> provider (19 bytes): magic `CA`, flags (`SPEECH`: the frame is caller speech), call id
  (u32), frame sequence (u32), send time (ns, i64). It rides in the least significant bit of the
  first 152 mu-law bytes, so the frame stays what the caller says: near-silence (samples of 0 or
  +-8, -72 dBFS) or real speech with one mantissa step of noise (~-30 dB under it), which the
  server's caller-speech detector hears as what it is. A header in the bytes themselves would
  be full-scale clicks (a mu-law 0x00 is the loudest sample) in every frame.
- provider -> caller (18 bytes): magic `PV`, connection id (u32), response number (u16), frame
  index in the response (u16, bit 15 set on the last frame), send time (ns, i64), in the least
  significant bit of the first 144 bytes of the agent's speech (`speech.AgentVoice`), the same way.
  Until 2026-12-03 this header was the frame's first 18 bytes over mu-law silence: loud clicks,
  which no agent says. Against them a caller's speech never looked like double talk, so the
  server's echo guard searched for an echo path every 200-800 ms while a caller talked near the
  agent's audio, a cost that real agent speech does not bring (docs/bench-load.md).
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import threading
from array import array
from collections.abc import Callable, Coroutine
from typing import Any

FRAME_BYTES = 160
FRAME_S = 0.020
CALLER_HDR = struct.Struct("!2sBIIq")
PROVIDER_HDR = struct.Struct("!2sIHHq")
CALLER_MAGIC = b"CA"
PROVIDER_MAGIC = b"PV"
LAST_FLAG = 0x8000
SPEECH = 0x01  # caller header flag: this frame is caller speech
HDR_BYTES = CALLER_HDR.size * 8  # the caller header's bits, one per mu-law byte
PROVIDER_HDR_BYTES = PROVIDER_HDR.size * 8  # ... and the provider's
# header byte -> its 8 bits as 8 bytes of 0/1 (most significant first), and as quiet mu-law bytes
_BITS = [bytes((b >> (7 - i)) & 1 for i in range(8)) for b in range(256)]
_QUIET = [bytes(0xFE | bit for bit in _BITS[b]) for b in range(256)]
_PAD_C = b"\xff" * (FRAME_BYTES - HDR_BYTES)
_LSB = bytes(b & 1 for b in range(256))
_CLEAR_LSB = bytes(b & 0xFE for b in range(256))
_GATHER = struct.Struct(f">{CALLER_HDR.size}Q")
_GATHER_P = struct.Struct(f">{PROVIDER_HDR.size}Q")
_MASK = int.from_bytes(b"\xfe" * HDR_BYTES, "big")
_MASK_P = int.from_bytes(b"\xfe" * PROVIDER_HDR_BYTES, "big")
LATE_MS = 60.0  # a frame whose one-way trip through the bridge took longer than this is "late"


def _stamp(header: bytes, audio: bytes, mask: int) -> bytes:
    """`header`'s bits, most significant first, in the least significant bit of `audio`'s first
    `8 * len(header)` bytes (`mask` clears those bits)."""
    n = 8 * len(header)
    bits = int.from_bytes(b"".join([_BITS[b] for b in header]), "big")
    return ((int.from_bytes(audio[:n], "big") & mask) | bits).to_bytes(n, "big") + audio[n:]


def _read_stamp(frame: bytes, gather: struct.Struct) -> bytes:
    """The header `_stamp` put in `frame`: each byte's 8 bits gathered from 8 low bits at once."""
    words = gather.unpack_from(frame[: gather.size].translate(_LSB))
    return bytes([((w * 0x0102040810204080) >> 56) & 0xFF for w in words])


def caller_frame(call_id: int, seq: int, t_ns: int, speech: bytes | None = None) -> bytes:
    """A quiet caller frame, or `speech` (160 mu-law bytes, see `speech_frames`) stamped and flagged."""
    if speech is None:
        return b"".join([_QUIET[b] for b in CALLER_HDR.pack(CALLER_MAGIC, 0, call_id, seq, t_ns)]) + _PAD_C
    return _stamp(CALLER_HDR.pack(CALLER_MAGIC, SPEECH, call_id, seq, t_ns), speech, _MASK)


def read_caller_frame(frame: bytes) -> tuple[bytes, int, int, int, int]:
    """(magic, flags, call id, sequence, send time ns) from a caller frame's low bits."""
    return CALLER_HDR.unpack(_read_stamp(frame, _GATHER))


def speech_frames(ulaw: bytes) -> list[bytes]:
    """Mu-law audio cut into 20 ms frames with the header bits cleared (padded with silence)."""
    ulaw = ulaw.translate(_CLEAR_LSB)
    ulaw += b"\xfe" * (-len(ulaw) % FRAME_BYTES)
    return [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]


def provider_frame(conn: int, resp: int, idx: int, t_ns: int, speech: bytes) -> bytes:
    """The agent's `speech` (160 mu-law bytes, see `speech_frames`) stamped."""
    return _stamp(PROVIDER_HDR.pack(PROVIDER_MAGIC, conn, resp, idx, t_ns), speech, _MASK_P)


def read_provider_frame(frame: bytes) -> tuple[bytes, int, int, int, int]:
    """(magic, connection id, response number, frame index, send time ns) from its low bits."""
    return PROVIDER_HDR.unpack(_read_stamp(frame, _GATHER_P))


def percentiles(values: array | list, qs: tuple[float, ...] = (50, 99)) -> dict[str, Any]:
    if len(values) == 0:
        return {f"p{q:g}": None for q in qs} | {"max": None, "n": 0}
    import numpy as np

    a = np.frombuffer(values, dtype=np.float64) if isinstance(values, array) else np.asarray(values, float)
    out: dict[str, Any] = {f"p{q:g}": round(float(np.percentile(a, q)), 3) for q in qs}
    out["max"] = round(float(a.max()), 3)
    out["n"] = int(a.size)
    return out


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a load generator's `main` on uvloop where it is installed (the product's dependency):
    on the standard loop the generators spent about half their CPU in its Python selector and
    transport, and ran out of their core before the servers they load did."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for every platform
        asyncio.run(main)
    else:
        uvloop.run(main)


def emit(obj: dict[str, Any]) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read_commands(loop: Any, handler: Callable[[dict[str, Any]], None]) -> None:
    """Feed JSON-line commands from stdin to `handler` on the event loop (EOF -> {"cmd": "exit"})."""

    def reader() -> None:
        for line in sys.stdin:
            line = line.strip()
            if line:
                loop.call_soon_threadsafe(handler, json.loads(line))
        loop.call_soon_threadsafe(handler, {"cmd": "exit"})

    threading.Thread(target=reader, daemon=True).start()
