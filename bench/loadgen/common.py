"""Shared by the load-generator processes: stamped audio frames and the control channel.

Every 20 ms mu-law frame carries an 18-byte header so a receiver in another process can tell
which frame it is and when it was sent (CLOCK_MONOTONIC is system-wide on Linux, so the two
processes' stamps are directly comparable; no clock skew):

- caller -> provider: magic `CA`, call id (u32), frame sequence (u32), send time (ns, i64)
- provider -> caller: magic `PV`, connection id (u32), response number (u16),
  frame index in the response (u16, bit 15 set on the last frame), send time (ns, i64)

The rest of the frame is mu-law silence (0xFF); with `audio/pcmu` the bridge passes these
bytes through untouched in both directions.
"""

from __future__ import annotations

import json
import struct
import sys
import threading
from array import array
from collections.abc import Callable
from typing import Any

FRAME_BYTES = 160
FRAME_S = 0.020
CALLER_HDR = struct.Struct("!2sIIq")
PROVIDER_HDR = struct.Struct("!2sIHHq")
CALLER_MAGIC = b"CA"
PROVIDER_MAGIC = b"PV"
LAST_FLAG = 0x8000
_PAD_C = b"\xff" * (FRAME_BYTES - CALLER_HDR.size)
_PAD_P = b"\xff" * (FRAME_BYTES - PROVIDER_HDR.size)
LATE_MS = 60.0  # a frame whose one-way trip through the bridge took longer than this is "late"


def caller_frame(call_id: int, seq: int, t_ns: int) -> bytes:
    return CALLER_HDR.pack(CALLER_MAGIC, call_id, seq, t_ns) + _PAD_C


def provider_frame(conn: int, resp: int, idx: int, t_ns: int) -> bytes:
    return PROVIDER_HDR.pack(PROVIDER_MAGIC, conn, resp, idx, t_ns) + _PAD_P


def percentiles(values: array | list, qs: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    if len(values) == 0:
        return {f"p{q:g}": None for q in qs} | {"max": None, "n": 0}
    import numpy as np

    a = np.frombuffer(values, dtype=np.float64) if isinstance(values, array) else np.asarray(values, float)
    out: dict[str, Any] = {f"p{q:g}": round(float(np.percentile(a, q)), 3) for q in qs}
    out["max"] = round(float(a.max()), 3)
    out["n"] = int(a.size)
    return out


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
