"""Outbound RTP pacing alone: N `RtpSession`s on one event loop send 20 ms frames (2 s of queued
audio, then silence) to a sink socket on loopback; prints the process's CPU share and the
departure deviation (|interval - 20 ms|) p50 / p99 buckets. Isolates what pacing costs from the
rest of a call (`bench/sip_load.py` measures whole calls). Pin it: `taskset -c 0 python
bench/sip_pacing.py --calls 200,500`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from telephony_agent.telephony.leg import PCMU_20MS
from telephony_agent.telephony.sip.media import DEPARTURE_BUCKETS_MS, RtpPortPool, open_rtp


def quantile(counts: list[int], q: float) -> str:
    total, acc = sum(counts), 0
    for i, c in enumerate(counts):
        acc += c
        if acc >= q * total:
            return f"<= {DEPARTURE_BUCKETS_MS[i]}" if i < len(DEPARTURE_BUCKETS_MS) else "> 100"
    return "-"


async def run(n: int, seconds: float, first_port: int) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    pool = RtpPortPool(first_port, first_port + 2 * n + 10)
    sessions = [await open_rtp("127.0.0.1", pool, PCMU_20MS, 101, sink.getsockname(), 600.0) for _ in range(n)]
    for s in sessions:
        s.send([b"\x01" * 160] * 100)
        s.start_sending()

    async def drain() -> None:
        while True:
            try:
                while True:
                    sink.recv(2048)
            except BlockingIOError:
                pass
            await asyncio.sleep(0.005)

    def buckets() -> list[int]:
        return [sum(s.stats.departure_ms[i] for s in sessions) for i in range(len(DEPARTURE_BUCKETS_MS) + 1)]

    drainer = asyncio.get_running_loop().create_task(drain())
    await asyncio.sleep(1.0)
    b0, c0, w0 = buckets(), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    b1, c1, w1 = buckets(), time.process_time(), time.monotonic()
    drainer.cancel()
    counts = [y - x for x, y in zip(b0, b1, strict=True)]
    total = sum(counts)
    over5 = sum(c for c, b in zip(counts, DEPARTURE_BUCKETS_MS, strict=False) if b > 5.0) + counts[-1]
    print(
        f"N={n} cpu {100 * (c1 - c0) / (w1 - w0):.1f}% packets {total} ({total / (w1 - w0):.0f} pps) "
        f"departure p50 {quantile(counts, 0.5)} p99 {quantile(counts, 0.99)} ms, > 5 ms {100 * over5 / max(total, 1):.2f} %",
        flush=True,
    )
    for s in sessions:
        s.close()
    sink.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default="200,500")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--first-port", type=int, default=43000, help="RTP ports from here (2 per call)")
    a = p.parse_args()
    for n in [int(x) for x in a.calls.split(",") if x]:
        asyncio.run(run(n, a.seconds, a.first_port))


if __name__ == "__main__":
    main()
