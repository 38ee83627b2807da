"""Memory trimming: glibc's malloc_trim gives a fragmented heap's free pages back, and the server's
memory pass (GC, then trim) runs only after calls ended, at most once per interval."""

from __future__ import annotations

import asyncio
import logging
import platform
import subprocess
import sys
import textwrap

import pytest

from telephony_agent import memory
from telephony_agent.memory import glibc_malloc_trim, trim_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")

FRAGMENT = textwrap.dedent(
    """
    import sys
    from telephony_agent.memory import glibc_malloc_trim

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    blocks = [bytes(2000) for _ in range(60_000)]  # ~120 MiB from malloc (over pymalloc's 512 B)
    del blocks[::64]  # nothing yet: the heap is full
    kept = blocks[::63]  # one block in 63 stays alive: the heap cannot shrink from its top
    del blocks
    before = rss()
    assert glibc_malloc_trim()() in (0, 1)
    print(before, rss(), len(kept))
    """
)


@glibc
def test_malloc_trim_returns_the_free_pages_of_a_fragmented_heap() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, timeout=60, check=True)
    before, after, _ = (float(x) for x in out.stdout.split())
    assert before > 100, before  # the freed blocks are still resident
    assert after < before - 80, (before, after)  # ~120 MiB freed, ~2 MiB still in use


def test_off_glibc_there_is_no_trim_and_interval_0_turns_the_pass_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert glibc_malloc_trim() is None
    asyncio.run(asyncio.wait_for(trim_memory(0, lambda: 1, lambda: 0), 1))  # returns at once


@glibc
async def test_the_pass_runs_after_calls_ended_when_few_are_up(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "POLL_S", 0.02)
    ended = [0]
    live = [memory.PASS_MAX_LIVE_CALLS + 1]
    caplog.set_level(logging.DEBUG, logger="telephony_agent.memory")

    def passes() -> int:
        return len([r for r in caplog.records if r.msg.startswith("memory pass")])

    task = asyncio.create_task(trim_memory(0.05, lambda: ended[0], lambda: live[0]))
    try:
        await asyncio.sleep(0.3)
        assert passes() == 0  # no call ended: no pass
        ended[0] = 3
        await asyncio.sleep(0.3)
        assert passes() == 0  # too many calls up: the GC walk would stall them
        live[0] = 0
        for _ in range(100):
            await asyncio.sleep(0.02)
            if passes():
                break
        assert passes() == 1
        await asyncio.sleep(0.3)
        assert passes() == 1  # once per change
    finally:
        task.cancel()
