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

Writes bench/out/instructions.json.
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


def child(names: list[str], repeat: int) -> None:
    """Replay each call 1 + `repeat` times; before and after each replay, say so on stdout and
    wait for a line on stdin (the parent turns counting on and off meanwhile)."""
    sys.path[:0] = [str(REPO / "tests"), str(CORPUS)]
    from scenarios import AUTH_TOKEN, BY_NAME, PUBLIC_URL, environment  # type: ignore[import-not-found]

    from telephony_agent.replay import replay, run_virtual

    def handshake(what: str, **extra: Any) -> None:
        print(json.dumps({"at": what, **extra}), flush=True)
        sys.stdin.readline()

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", default=DEFAULT_CALLS, help="recorded calls from tests/fixtures/calls/, by name")
    p.add_argument("--repeat", type=int, default=2, help="counted replays of each call (after one uncounted)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.calls.split(",") if n.strip()]
    if args.child:
        child(names, args.repeat)
        return 0

    sys.path.insert(0, str(REPO))
    from bench.callgrind import callgrind_command, callgrind_totals, callgrind_window, last_callgrind_dump

    out = Path(args.out)
    dumps = out / "callgrind"
    dumps.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'codecs'}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--calls", ",".join(names),
           "--repeat", str(args.repeat)]
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
    total = sum(r["instructions"] for rs in per_call.values() for r in rs)
    seconds = sum(r["call_s"] for rs in per_call.values() for r in rs)
    row: dict[str, Any] = {"calls": 1, "minstr_per_call_s": round(total / seconds / 1e6, 4)}
    for name, rs in per_call.items():
        row[f"minstr_{name}"] = round(sum(r["instructions"] for r in rs) / len(rs) / 1e6, 3)
        row[f"spread_pct_{name}"] = round((max(r["instructions"] for r in rs) / min(r["instructions"] for r in rs) - 1)
                                          * 100, 3)
    report = {"python": sys.version.split()[0], "calls": names, "repeat": args.repeat, "series": [row],
              "replays": per_call, "as_recorded": all(r["same"] for rs in per_call.values() for r in rs)}
    (out / "instructions.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(row))
    return 0 if report["as_recorded"] else 1


if __name__ == "__main__":
    sys.exit(main())
