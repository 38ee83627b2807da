"""Keeping the server's memory flat over many calls, and finding out where it grew.

- **Trimming.** A call frees what it allocated, but glibc keeps freed heap pages mapped: a busy
  hour leaves the process at its high-water mark, and heap holes between live blocks are never
  given back. At most every `AGENT_MALLOC_TRIM_SECONDS`, once a call has ended and while at most
  `PASS_MAX_LIVE_CALLS` (20) are up, a cyclic GC pass runs (a call's objects end in reference
  cycles and reach the oldest generation before the call ends: their memory, numpy buffers
  included, is free only after a full pass, and CPython's own come every ~70,000 new objects, a
  few hundred calls), then, on glibc, `malloc_trim(0)` (in a worker thread) returns every free
  page to the kernel.
- **Diagnostics.** Started with Python's own switch `PYTHONTRACEMALLOC=N` (N frames per
  allocation; it slows the server: debugging only), `kill -USR2 <pid>` logs the allocation sites
  that grew most since the previous signal (the first one sets the baseline).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import platform
import signal
import time
import tracemalloc
from collections.abc import Callable

__all__ = ["MemoryReporter", "glibc_malloc_trim", "trim_memory"]

log = logging.getLogger(__name__)

TOP = 15
SLOW_GC_MS = 20.0
POLL_S = 1.0
# The GC pass walks every live call's objects while the event loop waits: ~1.4 ms per live call on
# the busy benchmark machine (139 ms at 96 calls). With more calls up than this, the pass waits
# for a quieter moment; memory then stays at its high-water mark, which is flat too.
PASS_MAX_LIVE_CALLS = 20


def glibc_malloc_trim() -> Callable[[], int] | None:
    """`malloc_trim(0)` of this process's glibc, or None off glibc."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (PAGE / 2**20)
    except OSError:
        return 0.0


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


async def trim_memory(interval: float, ended_calls: Callable[[], int], live_calls: Callable[[], int]) -> None:
    """Runs for the server's life: at most every `interval` s, once a call has ended since the last
    pass and no more than `PASS_MAX_LIVE_CALLS` are up, a GC pass and (glibc) `malloc_trim(0)`.
    `interval` 0: nothing, ever."""
    if interval <= 0:
        return
    trim = glibc_malloc_trim()
    loop = asyncio.get_running_loop()
    seen = ended_calls()
    last = loop.time()
    while True:
        await asyncio.sleep(min(POLL_S, interval))
        ended = ended_calls()
        live = live_calls()
        if ended == seen or loop.time() - last < interval or live > PASS_MAX_LIVE_CALLS:
            continue
        seen = ended
        before = _rss_mib()
        t0 = time.perf_counter()
        freed = gc.collect()  # ended calls' objects are in cycles: their memory is free only after this
        t1 = time.perf_counter()
        if trim is not None:
            await loop.run_in_executor(None, trim)
        last = loop.time()
        gc_ms = (t1 - t0) * 1000
        # the GC pass holds the event loop: say so at INFO when it was long enough to delay audio
        log.log(logging.INFO if gc_ms >= SLOW_GC_MS else logging.DEBUG,
                "memory pass: RSS %.1f -> %.1f MiB; gc %.1f ms (%d objects freed), malloc_trim %s, %d live calls",
                before, _rss_mib(), gc_ms, freed,
                "n/a (not glibc)" if trim is None else f"{(time.perf_counter() - t1) * 1000:.1f} ms", live,
                extra={"event": "memory_pass"})


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
