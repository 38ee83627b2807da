"""Events handled where a session produces them (`QueuedSession.take_now`, the runner's
`take_audio_now`): offered only while the consumer waits with nothing queued, so an event taken
there is never handled before one that came earlier; anything not taken reaches `events()` in
order; the runner offers agent audio alone, the only event it does nothing with."""

from __future__ import annotations

import asyncio

from scripted_model import ScriptedSession

from telephony_agent.realtime import PCMU_8K, AudioDelta, AudioDone, RealtimeConfig, SpeechStarted
from telephony_agent.realtime.events import ServerEvent
from telephony_agent.realtime.runner import RealtimeRunner
from telephony_agent.realtime.tools import ToolRegistry


def delta(n: int) -> AudioDelta:
    return AudioDelta("item-1", bytes([n]) * 160, PCMU_8K)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_offered_only_while_the_consumer_waits_with_nothing_queued() -> None:
    session = ScriptedSession(RealtimeConfig(), PCMU_8K, PCMU_8K)
    offered: list[ServerEvent] = []
    taken: list[ServerEvent] = []
    got: list[ServerEvent] = []
    busy = asyncio.Event()
    busy.set()

    def take(event: ServerEvent) -> bool:
        offered.append(event)
        if isinstance(event, AudioDelta):
            taken.append(event)
            return True
        return False

    assert session.take_now(take)
    session.push(delta(1))  # nobody waits yet: queued

    async def consume() -> None:
        async for event in session.events():
            got.append(event)
            await busy.wait()  # the consumer is busy with it until the test says

    task = asyncio.create_task(consume())
    await settle()
    assert got == [delta(1)] and offered == []  # delta 1 came through the queue

    session.push(delta(2))  # the consumer waits, nothing queued: taken where produced
    assert taken == [delta(2)] and session.handed_now == 1

    session.push(AudioDone("item-1"), delta(3))  # not taken, so queued; delta 3 must wait behind it
    assert offered == [delta(2), AudioDone("item-1")]
    busy.clear()
    await settle()
    assert got == [delta(1), AudioDone("item-1")]  # busy with it now

    session.push(delta(4))  # the consumer is busy: queued, not offered
    assert offered == [delta(2), AudioDone("item-1")]
    busy.set()
    await settle()
    assert got == [delta(1), AudioDone("item-1"), delta(3), delta(4)]

    session.take_now(None)
    session.push(delta(5))
    await settle()
    assert got[-1] == delta(5) and session.handed_now == 1
    await session.close()
    await asyncio.wait_for(task, 5)


async def test_the_runner_offers_agent_audio_alone() -> None:
    session = ScriptedSession(RealtimeConfig(), PCMU_8K, PCMU_8K)
    runner = RealtimeRunner(session, ToolRegistry())
    taken: list[AudioDelta] = []
    got: list[ServerEvent] = []

    def take(event: AudioDelta) -> bool:
        taken.append(event)
        return True

    assert runner.take_audio_now(take)

    async def consume() -> None:
        async for event in runner.events():
            got.append(event)

    task = asyncio.create_task(consume())
    await settle()
    session.push(delta(1))
    await settle()
    session.push(SpeechStarted(0), AudioDone("item-1"))  # the runner acts on these: never offered
    await settle()
    session.push(delta(2))
    await settle()
    assert taken == [delta(1), delta(2)]
    assert got == [SpeechStarted(0), AudioDone("item-1")]
    assert runner.take_audio_now(None)
    session.push(delta(3))
    await settle()
    assert got[-1] == delta(3)
    await session.close()
    await asyncio.wait_for(task, 5)
