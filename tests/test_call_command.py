"""`run_call` (what `telephony-agent call` runs) against a served agent whose provider is scripted:
what the caller's timeline counts as one agent turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from scripted_model import ScriptedModel

from telephony_agent.call_command import run_call, text_to_ulaw
from telephony_agent.realtime import PCMU_8K

STALL_S = 0.7  # longer than a packet's jitter, shorter than the turn gap below


async def test_a_stall_inside_an_answer_does_not_split_the_turn(tmp_path: Path) -> None:
    """The provider stops sending for 0.7 s in the middle of an answer (a slow provider, a busy
    machine): the caller hears silence, then the rest. With a 2 s turn gap that is one turn, and
    the transcript gets one line for it; before, any gap over 0.35 s began a new turn, which cut
    an answer in two and left both halves unrecognisable."""
    first, rest = text_to_ulaw("Our opening hours are"), text_to_ulaw("nine to five on weekdays.")
    model = ScriptedModel((PCMU_8K,), (PCMU_8K,))
    async with running_agent(test_settings(), model) as agent:
        async def provider() -> None:
            while not model.sessions:
                await asyncio.sleep(0.01)
            session = model.sessions[0]
            session.say("answer", first, done=False)  # all at once; the server paces it out
            await asyncio.sleep(len(first) / 8000 + STALL_S)
            session.say("answer", rest)

        speaking = asyncio.create_task(provider())
        report = await run_call(agent.base_url, PUBLIC_URL, AUTH_TOKEN, [], str(tmp_path), max_seconds=30,
                                transcribe=False, print_fn=lambda _line: None, turn_gap_s=2.0)
        await speaking
    assert len(report.turns) == 1, report.turns
    heard_ms = report.turns[0][1]
    whole_ms = (len(first) + len(rest)) / 8
    assert abs(heard_ms - whole_ms) <= 40, (heard_ms, whole_ms)  # both halves, in the one turn
    assert (tmp_path / "transcript.txt").read_text().count("] agent:") == 1
