"""Instructions a recorded call costs, counted by valgrind's callgrind: a figure that is the same
run after run, however busy the machine, for changes too small for CPU time to show.

CPU time on this VM moves by 20 points between runs minutes apart, so a change worth 2-3 % of the
server cannot be seen in `bench/load.py` without many alternating rounds. Counting instructions
removes the machine's speed from the figure, but only if the work itself does not depend on the
machine's speed: under valgrind a loaded server runs 30-50 times slower, falls behind real time
and batches differently (`bench/load.py --callgrind` at 4-6 calls: +-2.5 % between runs). So
this counts calls from the regression corpus (`tests/fixtures/calls/`) replayed in process on
the virtual clock (`telephony_agent.replay`), where every call runs to the same timeline at any
speed: the server, its turn detector, the real OpenAI provider against the fake OpenAI server and
the replaying softphone, all in one process, counted from the replay's first frame to its
comparison with the recording (the environment's set-up and teardown are not counted). The
harness's share is the same in both trees, so a difference between two trees is the server's.

Each call is replayed once uncounted first (imports, caches), then `--repeat` times counted.
Compare two trees with `bench/alternate.py BASE HEAD --bench instructions --rounds 2`. Two
replays of one call differ by 0.10-0.14 %; the figure is per call, of one call at a time (no
batching across calls, Silero's batch of one), so it judges per-frame work, not calls per core.

`--detector` counts the caller-speech detector alone (`TurnDetector`, in process, no server):
instructions per 20 ms caller frame, the agent's audio to its echo reference included, in the
four states a call moves between (`DETECTOR_STATES`). The detector is deterministic and its input
fixed, so the figure is the same run after run; it judges the detector's per-block arithmetic.
It runs on the energy scorer: Silero's cost is per batch across calls in the server
(`bench/load.py` reports its windows and batches) and would hide the per-block work here.

Writes bench/out/instructions.json (`--detector`: bench/out/detector_instructions.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CORPUS = REPO / "tests" / "fixtures" / "calls"
DEFAULT_CALLS = "barge_in,hangup_mid_response"  # the corpus's calls on the fake OpenAI (audio/pcmu)


def handshake(what: str, **extra: Any) -> None:
    """Say where the counted process is (`start`, `end`) on stdout and wait for a line on stdin:
    the parent turns counting on or off meanwhile."""
    print(json.dumps({"at": what, **extra}), flush=True)
    sys.stdin.readline()


def child(names: list[str], repeat: int) -> None:
    """Replay each call 1 + `repeat` times, with a `handshake` before and after each replay."""
    sys.path[:0] = [str(REPO / "tests"), str(CORPUS)]
    from scenarios import AUTH_TOKEN, BY_NAME, PUBLIC_URL, environment  # type: ignore[import-not-found]

    from telephony_agent.replay import replay, run_virtual

    async def one(name: str) -> None:
        scenario = BY_NAME[name]
        async with environment(scenario) as env:
            gc.collect()  # every replay starts from the same heap: no collection left over from the last
            handshake("start")
            result = await replay(scenario.path, env.base_url, PUBLIC_URL, AUTH_TOKEN,
                                  server_recordings=env.recordings, on_phone=env.rest.register_call,
                                  before_compare=env.settle)
            handshake("end", call_s=result.call_seconds, same=result.ok)

    for name in names:
        for _ in range(1 + repeat):
            run_virtual(one(name))


DETECTOR_STATES = {
    "quiet": "a quiet line, the agent silent",
    "agent": "the agent speaking, the caller silent (most of a call)",
    "caller": "the caller speaking, the agent silent",
    "overlap": "the caller speaking over the agent, its echo on the line (-10 dB, 150 ms)",
}
FRAME = 160  # 20 ms of mu-law


def detector_workload(state: str, frames: int) -> list[tuple[bytes, bytes | None]]:
    """`frames` (caller PCM16 frame, agent PCM16 40 ms chunk or None) pairs: real speech
    (eSpeak NG) and a seeded line noise at -65 dBFS, through mu-law as the leg carries them."""
    import numpy as np

    from telephony_agent.telephony.speech_scorers import pcm16_samples
    from telephony_agent.testing.speech import speech_pcm16
    from telephony_agent.testing.turn_sim import AGENT_TEXT, law

    n = frames * FRAME
    line = np.random.default_rng(7).normal(0, 32768 * 10 ** (-65 / 20), n)
    agent = np.zeros(n)
    caller = np.zeros(n)
    speaks = state in ("agent", "overlap")
    if speaks:
        agent = np.resize(pcm16_samples(speech_pcm16(AGENT_TEXT)), n)  # looped
    if state in ("caller", "overlap"):
        said = pcm16_samples(speech_pcm16("sorry, can I ask about my order instead", voice="en-us+m3"))
        caller = np.resize(said, n)
    echo = np.zeros(n)
    if state == "overlap":
        echo[1200:] = agent[: n - 1200] * 10 ** (-10 / 20)
    heard = law(line + caller + echo).astype("<i2").tobytes()
    spoken = law(agent).astype("<i2").tobytes()
    out: list[tuple[bytes, bytes | None]] = []
    for i in range(frames):
        chunk = spoken[2 * FRAME * i : 2 * FRAME * (i + 2)] if speaks and i % 2 == 0 else None
        out.append((heard[2 * FRAME * i : 2 * FRAME * (i + 1)], chunk))
    return out


def detector_child(states: list[str], frames: int, repeat: int) -> None:
    """Feed each state's workload to a fresh detector 1 + `repeat` times, with a `handshake`
    before and after each run."""
    from telephony_agent.telephony.turns import TurnDetector, TurnSettings

    for state in states:
        work = detector_workload(state, frames)
        for _ in range(1 + repeat):
            detector = TurnDetector(TurnSettings(vad="energy"))
            gc.collect()
            handshake("start")
            for i, (heard, chunk) in enumerate(work):
                now = 0.02 * (i + 1)
                if chunk is not None:
                    detector.agent_audio(chunk, now + 0.06)  # 60 ms ahead, as the bridge schedules
                detector.caller_audio(heard, now)
            handshake("end", frames=frames)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default=DEFAULT_CALLS, help="recorded calls from tests/fixtures/calls/, by name")
    p.add_argument("--repeat", type=int, default=2, help="counted replays of each call (after one uncounted)")
    p.add_argument("--detector", action="store_true",
                   help="count the caller-speech detector alone, per 20 ms frame, in each of DETECTOR_STATES")
    p.add_argument("--frames", type=int, default=1500, help="--detector: caller frames per run (1,500: 30 s)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = list(DETECTOR_STATES) if args.detector else [n.strip() for n in args.calls.split(",") if n.strip()]
    if args.child:
        if args.detector:
            detector_child(names, args.frames, args.repeat)
        else:
            child(names, args.repeat)
        return 0

    sys.path.insert(0, str(REPO))
    from bench.callgrind import callgrind_command, callgrind_totals, callgrind_window, last_callgrind_dump

    out = Path(args.out)
    dumps = out / "callgrind"
    dumps.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'codecs'}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--calls", ",".join(names),
           "--repeat", str(args.repeat), "--frames", str(args.frames)] + (["--detector"] if args.detector else [])
    proc = subprocess.Popen(callgrind_command(cmd, dumps / "replay"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    per_call: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        for name in names:
            for i in range(1 + args.repeat):
                counted = i > 0
                for at in ("start", "end"):
                    line = proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"the replaying process ended during {name}")
                    msg = json.loads(line)
                    assert msg["at"] == at, msg
                    if counted:
                        callgrind_window(proc.pid, at == "start")
                    if at == "end" and counted:
                        total = callgrind_totals(last_callgrind_dump(dumps / "replay", proc.pid).read_text())
                        if args.detector:
                            per_call[name].append({"instructions": total, "frames": msg["frames"]})
                            print(f"{name}: {total / msg['frames']:,.0f} instructions per frame "
                                  f"({DETECTOR_STATES[name]})", flush=True)
                        else:
                            per_call[name].append({"instructions": total, "call_s": msg["call_s"], "same": msg["same"]})
                            print(f"{name}: {total / 1e6:.1f} M instructions for {msg['call_s']:.1f} s of call "
                                  f"({'as recorded' if msg['same'] else 'DIFFERS from the recording'})", flush=True)
                    proc.stdin.write("\n")
                    proc.stdin.flush()
        proc.stdin.close()
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if args.detector:
        return detector_report(per_call, out)
    total = sum(r["instructions"] for rs in per_call.values() for r in rs)
    seconds = sum(r["call_s"] for rs in per_call.values() for r in rs)
    row: dict[str, Any] = {"calls": 1, "minstr_per_call_s": round(total / seconds / 1e6, 4)}
    for name, rs in per_call.items():
        row[f"minstr_{name}"] = round(sum(r["instructions"] for r in rs) / len(rs) / 1e6, 3)
        row[f"spread_pct_{name}"] = spread_pct([r["instructions"] for r in rs])
    report = {"python": sys.version.split()[0], "calls": names, "repeat": args.repeat, "series": [row],
              "replays": per_call, "as_recorded": all(r["same"] for rs in per_call.values() for r in rs)}
    (out / "instructions.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(row))
    return 0 if report["as_recorded"] else 1


def spread_pct(values: list[float]) -> float:
    """How far the largest of the counted runs is above the smallest, in per cent."""
    return round((max(values) / min(values) - 1) * 100, 3)


def detector_report(per_state: dict[str, list[dict[str, Any]]], out: Path) -> int:
    """Instructions per caller frame in each state (the mean of the counted runs, and their spread)."""
    row: dict[str, Any] = {}
    for state, rs in per_state.items():
        per_frame = [r["instructions"] / r["frames"] for r in rs]
        row[f"instr_per_frame_{state}"] = round(sum(per_frame) / len(per_frame))
        row[f"spread_pct_{state}"] = spread_pct(per_frame)
    report = {"python": sys.version.split()[0], "states": DETECTOR_STATES, "series": [row], "runs": per_state}
    (out / "detector_instructions.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
