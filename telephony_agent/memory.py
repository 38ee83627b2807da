"""Memory diagnostics for the server process: where Python memory grew, on demand.

Started with Python's own switch `PYTHONTRACEMALLOC=N` (N frames per allocation; it slows the
server, so for debugging only), `kill -USR2 <pid>` logs the allocation sites that grew most since
the previous signal (the first one sets the baseline). Without tracing, the signal only says so.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tracemalloc

__all__ = ["MemoryReporter"]

log = logging.getLogger(__name__)

TOP = 15


class MemoryReporter:
    """Logs tracemalloc's top growth between two SIGUSR2s."""

    def __init__(self) -> None:
        self._last: tracemalloc.Snapshot | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGUSR2, self.report)

    def report(self) -> None:
        if not tracemalloc.is_tracing():
            log.info("SIGUSR2: tracemalloc is off (start the server with PYTHONTRACEMALLOC=10 to trace)")
            return
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        current, peak = tracemalloc.get_traced_memory()
        if self._last is None:
            log.info("tracemalloc baseline: %.1f MiB traced (peak %.1f)", current / 2**20, peak / 2**20,
                     extra={"event": "tracemalloc"})
        else:
            stats = snap.compare_to(self._last, "traceback")
            lines = []
            for stat in stats[:TOP]:
                frames = " < ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback[:6])
                lines.append(f"{stat.size_diff / 1024:+.1f} KiB ({stat.count_diff:+d} blocks) {frames}")
            log.info("tracemalloc growth since the last report (%.1f MiB traced):\n  %s", current / 2**20,
                     "\n  ".join(lines), extra={"event": "tracemalloc"})
        self._last = snap
