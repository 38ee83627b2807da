"""bench/callgrind.py (for `bench/load.py --callgrind` and `bench/instructions.py`): a process
under valgrind's callgrind counts instructions only in the windows the benchmark opens, and the
count of each window is read from the dump it leaves.

A real valgrind runs a real Python busy loop here: a window while it works counts millions of
instructions, a window of the same length while it sleeps counts far fewer, and each window's
count comes from its own dump (counting stops and the counts start again from zero)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.callgrind import callgrind_command, callgrind_totals, callgrind_window, last_callgrind_dump

# works while stdin holds a line "work", sleeps while it holds "rest", ends on EOF
PROGRAM = """
import select, sys
work = False
while True:
    if select.select([sys.stdin], [], [], 0 if work else 0.01)[0]:
        line = sys.stdin.readline()
        if not line:
            break
        work = line.strip() == "work"
        print("ok", flush=True)
    if work:
        sum(range(2000))
"""


def test_totals_come_from_the_totals_line_or_the_summary() -> None:
    assert callgrind_totals("events: Ir\nsummary: 0\nfn=(1) f\n1 5\ntotals: 12345\n") == 12345
    assert callgrind_totals("events: Ir\nsummary: 678\n") == 678
    with pytest.raises(ValueError):
        callgrind_totals("events: Ir\n")


def test_the_newest_part_is_the_highest_numbered(tmp_path: Path) -> None:
    base = tmp_path / "ours-uvloop"
    for name in ("ours-uvloop.41", "ours-uvloop.41.2", "ours-uvloop.41.10", "ours-uvloop.41.9", "ours-uvloop.42.11"):
        (tmp_path / name).write_text("totals: 1\n")
    assert last_callgrind_dump(base, 41).name == "ours-uvloop.41.10"
    with pytest.raises(FileNotFoundError):
        last_callgrind_dump(base, 43)


@pytest.mark.once(python="3.11")
@pytest.mark.timeout(120)
def test_windows_count_what_ran_in_them(tmp_path: Path) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.skip("valgrind is not installed (make system-deps installs it)")
    out = tmp_path / "busy"
    p = subprocess.Popen(callgrind_command([sys.executable, "-c", PROGRAM], out), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        def window(mode: str) -> int:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(mode + "\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "ok"
            callgrind_window(p.pid, True)
            time.sleep(0.5)
            callgrind_window(p.pid, False)
            return callgrind_totals(last_callgrind_dump(out, p.pid).read_text())

        busy, idle, busy_again = window("work"), window("rest"), window("work")
        parts = sorted(int(f.name.rsplit(".", 1)[1]) for f in tmp_path.glob(f"busy.{p.pid}.*"))
    finally:
        p.stdin.close()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert parts == [1, 2, 3]  # one dump per window
    assert busy > 1_000_000 and busy_again > 1_000_000
    assert idle * 5 < min(busy, busy_again)  # nothing counted between windows, nor carried over


def counted_side(args: list[str], lines: int) -> list[dict[str, Any]]:
    """Run bench/instructions.py's counted process (without valgrind) and give the go-ahead
    after each of its `lines` messages, checking it waits for it; the messages, in order."""
    repo = Path(__file__).resolve().parent.parent
    p = subprocess.Popen([sys.executable, str(repo / "bench" / "instructions.py"), "--child", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo)
    assert p.stdin is not None and p.stdout is not None
    seen = []
    try:
        for _ in range(lines):
            line = p.stdout.readline()
            assert line, "the counted process ended early"
            seen.append(json.loads(line))
            assert p.poll() is None  # it waits for the go-ahead
            p.stdin.write("\n")
            p.stdin.flush()
        p.stdin.close()
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return seen


@pytest.mark.once(python="3.13")
@pytest.mark.timeout(120)
def test_the_replaying_side_waits_around_each_replay_and_says_how_it_went() -> None:
    """bench/instructions.py's replaying process (without valgrind here): before and after each
    replay it says where it is and waits for the go-ahead, so counting covers the replay alone;
    the first replay is uncounted, so `--repeat 1` replays twice; each must match its recording."""
    seen = counted_side(["--calls", "hangup_mid_response", "--repeat", "1"], 4)
    assert [m["at"] for m in seen] == ["start", "end", "start", "end"]
    ends = [m for m in seen if m["at"] == "end"]
    assert all(m["same"] for m in ends)  # each replay as recorded
    assert ends[0]["call_s"] == ends[1]["call_s"] > 3.0  # the same timeline both times


@pytest.mark.once(python="3.11")
def test_the_detector_workload_is_the_leg_as_the_bridge_feeds_it() -> None:
    """`bench/instructions.py --detector`'s input: 20 ms caller frames, and the agent's audio in
    40 ms chunks every other frame, back to back, only in the states where the agent speaks; the
    caller is quiet where they do not speak and loud where they do."""
    import numpy as np

    from bench.instructions import DETECTOR_STATES, FRAME, detector_workload
    from telephony_agent.telephony.speech_scorers import dbfs as energy_dbfs
    from telephony_agent.telephony.speech_scorers import mean_square, pcm16_samples
    from telephony_agent.testing.speech import speech_pcm16
    from telephony_agent.testing.turn_sim import AGENT_TEXT, law

    def dbfs(pcm: bytes) -> float:
        return energy_dbfs(mean_square(pcm16_samples(pcm)))

    said = pcm16_samples(speech_pcm16(AGENT_TEXT))
    spoken = law(np.resize(said, 100 * FRAME)).astype("<i2").tobytes()  # the agent's answer, looped
    loudest = {}
    for state in DETECTOR_STATES:
        work = detector_workload(state, 100)
        assert len(work) == 100 and all(len(heard) == 320 for heard, _ in work)
        chunks = [chunk for _, chunk in work]
        if state in ("agent", "overlap"):
            assert all(c is not None and len(c) == 640 for c in chunks[::2]) and not any(chunks[1::2])
        else:
            assert not any(chunks)
        loudest[state] = max(dbfs(heard) for heard, _ in work)
        if chunks[0] is not None:
            agent = b"".join(c for c in chunks if c is not None)
            assert agent == spoken  # back to back, from its first sample
            assert max(dbfs(agent[i : i + 640]) for i in range(0, len(agent), 640)) > -30
    assert loudest["quiet"] < -55 and loudest["agent"] < -55  # the caller silent: the line's noise alone
    assert loudest["caller"] > -30 and loudest["overlap"] > -30


@pytest.mark.once(python="3.13")
@pytest.mark.timeout(120)
def test_the_detector_side_waits_around_each_run() -> None:
    """`--detector`'s counted process: each state's run, the first uncounted, between a `start`
    and an `end` it waits after, so counting covers the detector's frames alone."""
    seen = counted_side(["--detector", "--frames", "60", "--repeat", "1"], 16)  # 4 states, 2 runs, start and end
    assert [m["at"] for m in seen] == ["start", "end"] * 8
    assert all(m["frames"] == 60 for m in seen[1::2])
