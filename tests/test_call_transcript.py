"""`telephony-agent call`'s transcript of the agent: exact where the words are the local engine's
known lines, "not known" otherwise, a guess only when asked for and labelled as one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings

from telephony_agent.call_command import run_call, text_to_ulaw
from telephony_agent.realtime.providers.local import LocalRealtimeModel
from telephony_agent.realtime.providers.local.asr import normalise
from telephony_agent.testing.known_lines import KnownLines

# Whole calls with the local engine in real time (speech recognition and synthesis on the CPU): one
# pytest-xdist worker runs them all, one after the other, so no two of them compete for the cores.
pytestmark = pytest.mark.xdist_group("local_engine")


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def agent_lines(path: Path) -> list[str]:
    return [line.split("] agent: ", 1)[1] for line in path.read_text().splitlines() if "] agent: " in line]


async def test_local_engine_turns_are_written_word_for_word(tmp_path: Path) -> None:
    """Every agent turn is named word for word: the words the engine spoke, no more, no fewer."""
    # Synthesis blocks for seconds: done before the server starts, whose loop it would stall.
    known = KnownLines.from_script()
    questions = [(q, text_to_ulaw(q)) for q in ("What are your opening hours?", "Where are you located?")]
    said: list[Any] = []
    async with running_agent(test_settings(), LocalRealtimeModel()) as agent:
        def grab(line: str) -> None:  # the call's bridge, while it is live
            if not said and agent.state.calls:
                said.append(next(iter(agent.state.calls.values())).stats.transcript)

        report = await run_call(
            agent.base_url, PUBLIC_URL, AUTH_TOKEN,
            questions, str(tmp_path), max_seconds=60, known_lines=known, print_fn=grab,
            # a stall in playback on a busy machine is neither the turn's end nor a new turn
            turn_gap_s=2.0,
        )
    assert len(report.turns) >= 3
    spoken = [text for who, text in said[0] if who == "agent"]  # the engine's own words
    written = agent_lines(tmp_path / "transcript.txt")
    assert len(written) == len(report.turns)
    assert " ".join(written) and wer(" ".join(spoken), " ".join(written)) == 0.0, (spoken, written)


async def test_other_voices_are_not_claimed_and_guesses_are_labelled(tmp_path: Path) -> None:
    """A server speaking in another voice (as a cloud provider would) gets no words put in its
    mouth; with approximate=True the general model's guess is written, labelled."""
    settings = test_settings(voice="en-gb")
    known = KnownLines.from_script()

    async def call(out: str, approximate: bool) -> None:
        async with running_agent(settings, LocalRealtimeModel()) as agent:  # a server each
            await run_call(agent.base_url, PUBLIC_URL, AUTH_TOKEN, [], str(tmp_path / out), max_seconds=30,
                           known_lines=known, approximate=approximate, print_fn=lambda _line: None)

    # Side by side: the wall time of one call (each transcribes after its hang-up, in this loop).
    await asyncio.gather(call("a", False), call("b", True))
    plain = (tmp_path / "a" / "transcript.txt").read_text()
    assert "words not known" in plain and "Example Dental" not in plain
    guessed = (tmp_path / "b" / "transcript.txt").read_text()
    assert "agent (approximate, general speech model): " in guessed
