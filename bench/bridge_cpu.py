"""Bridge CPU per call-second, in one process: the call core's own cost, without sockets.

Each simulated call runs `--seconds` of virtual time: a caller frame every 20 ms, 3 s of agent
mu-law audio every 4 s (30 deltas of 100 ms at once, as providers send), a leg that plays at real
time and confirms each chunk when it has played. The clock is virtual, so the run takes only the
CPU the bridge needs; the figure is process CPU time per simulated call-second (harness included,
the same in every revision).

It runs against the bridge before and after the PhoneLeg change (`on_media`/`on_mark` and
`on_caller_audio`/`on_played`), so two trees can be compared:

    PYTHONPATH=$TREE:$TREE/codecs python bench/bridge_cpu.py --seconds 60 --calls 60
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from typing import Any

from telephony_agent.realtime import (
    PCMU_8K,
    AudioChunk,
    AudioDelta,
    AudioDone,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    RealtimeModel,
    ResponseDone,
    ToolResponse,
)
from telephony_agent.realtime.session import QueuedSession
from telephony_agent.telephony import bridge as bridge_module

NEW_API = hasattr(bridge_module.CallBridge, "on_caller_audio")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Leg:
    """Plays chunks back to back at real time; confirms each once played (like Twilio marks)."""

    transport = "bench"
    confirms_playout = True

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queue: deque[tuple[float, str]] = deque()
        self.busy = 0.0

    @property
    def format(self) -> Any:
        from telephony_agent.telephony.leg import PCMU_20MS

        return PCMU_20MS

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        start = max(self.clock.now, self.busy)
        self.busy = start + 0.02 * len(frames)
        self.queue.append((self.busy, tag))

    send_frames = send_audio  # the API before PhoneLeg

    def send_clear(self) -> None:
        self.queue.clear()
        self.busy = 0.0

    async def hangup(self) -> None:
        pass

    async def transfer(self, target: str) -> None:
        pass

    async def close(self) -> None:
        pass


class Session(QueuedSession):
    session_id = "bench"
    is_connected = True
    input_format = PCMU_8K
    output_format = PCMU_8K

    def push(self, event: Any) -> None:
        self._emit(event)

    async def send_audio(self, chunk: AudioChunk) -> None:
        pass

    async def send_text(self, text: str) -> None:
        pass

    async def send_tool_output(self, response: ToolResponse) -> None:
        pass

    async def commit_audio(self) -> None:
        pass

    async def clear_audio(self) -> None:
        pass

    async def create_response(self) -> None:
        pass

    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        pass

    async def send_event(self, event: ClientEvent) -> None:
        pass

    async def close(self) -> None:
        self._finish("closed")

    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        return ContextMutationOutcome.applied()


class Model(RealtimeModel):
    provider = "bench"
    model_id = "bench"
    input_formats: tuple[AudioFormat, ...] = (PCMU_8K,)
    output_formats: tuple[AudioFormat, ...] = (PCMU_8K,)

    async def connect(self, config: RealtimeConfig) -> Session:
        return Session()


async def one_call(seconds: float) -> None:
    clock = Clock()
    leg = Leg(clock)
    options = bridge_module.BridgeOptions(idle_timeout_seconds=1e6)
    bridge = bridge_module.CallBridge("CA-bench", Model(), RealtimeConfig(), leg, options, clock=clock)
    await bridge.start()
    session = bridge.session
    assert isinstance(session, Session)
    frame = b"\xff" * 160
    on_audio = bridge.on_caller_audio if NEW_API else bridge.on_media  # type: ignore[attr-defined]
    on_played = bridge.on_played if NEW_API else bridge.on_mark  # type: ignore[attr-defined]
    tick, item = 0, 0
    while tick * 0.02 < seconds:
        if tick % 200 == 0:  # every 4 s the agent says 3 s
            item += 1
            for _ in range(30):
                session.push(AudioDelta(f"i{item}", b"\x7f" * 800, PCMU_8K))
            session.push(AudioDone(f"i{item}"))
            session.push(ResponseDone(f"r{item}"))
            for _ in range(5):
                await asyncio.sleep(0)
        clock.now = tick * 0.02
        while leg.queue and leg.queue[0][0] <= clock.now:
            on_played(leg.queue.popleft()[1])
        await on_audio(frame)
        tick += 1
    await bridge.end(bridge_module.CallOutcome.CALLER_HANGUP, hangup=False)


async def run(seconds: float, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await one_call(seconds)
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="virtual seconds per call")
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    cpu = asyncio.run(run(args.seconds, args.calls))
    api = "on_caller_audio/on_played" if NEW_API else "on_media/on_mark"
    print(f"bridge ({api}): {cpu / (args.seconds * args.calls) * 1e6:.1f} us CPU per call-second "
          f"({cpu:.2f} s for {args.calls} calls x {args.seconds:.0f} s)")


if __name__ == "__main__":
    main()
