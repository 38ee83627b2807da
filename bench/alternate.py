"""Two revisions of the code, benchmarked in alternation: the before/after behind every "moved"
figure in the README.

This VM's speed drifts by 10-20 % over an hour, so a series run today cannot be compared with
one from yesterday, nor even with one from an hour ago. Runs of the two trees taken turn about,
in the same minutes, can. Each revision is checked out into a temporary `git worktree`, and
its own `bench/load.py` (or `bench/sip_load.py`) runs from there, so the server runs that tree's
code. The trees take turns, `--rounds` times, the base first in odd rounds and the head first in
even ones (`round_order`): whatever favours the first or the second run of a round (a drift
within the round, what the first run leaves behind) then falls on each side in turn. Two
alternations of the same pair of trees, 3 rounds each with the new tree always second in one
and always first in the other, read +11.4 and +3.0 points of CPU at 200 calls (2026-12-03);
4 rounds, each first in turn, read +4.2 (-16.8 .. +25.2).
Use an even number of rounds. Every step of every run is printed, then the
per-step means, and head minus base paired by round (the two runs of a round are minutes apart,
so the VM's drift mostly cancels in their difference) with a 95 % interval from Student's t over
the rounds: a lever moved a figure when its interval excludes 0. With 3 rounds the interval is
wide (t = 4.3); 5-6 rounds are what a change of a few per cent needs:

    .venv/bin/python bench/alternate.py f480afc HEAD --rounds 4 -- --series 200 --bridges ours \\
        --workers '' --loop uvloop --sequential 0 --steady 8
    .venv/bin/python bench/alternate.py f480afc HEAD --bench sip -- --series 150,200 --steady 8 --keep-going
    .venv/bin/python bench/alternate.py HEAD . --bench instructions --rounds 2 -- --repeat 2

(`--bench instructions`: `bench/instructions.py`, instructions per replayed call under callgrind,
the same to 0.1 % run after run, so two rounds are enough where CPU time needs six.)

`.` names the working tree as it is, uncommitted changes included. The arguments after `--` go
to the benchmark of each tree, so both trees must know them; `--base-args` and `--head-args`
add arguments for one side only, so one tree can be run against itself with a setting changed
(what turn detection costs, the compiled modules against the source):

    .venv/bin/python bench/alternate.py . . --base-args='--vad off' --rounds 2 -- --series 200 \\
        --bridges ours --workers '' --sequential 0 --compare-at 0

Worktrees are removed at the end.

Each tree's compiled modules are built first (its own `scripts/build_native.py`, into its own
`build/`), so both servers run what `make run` would: a fresh worktree has no build, and its
server would run the Python source against the other tree's compiled code. With
`AGENT_NATIVE=off` nothing is built and both run the source.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.stats

REPO = Path(__file__).resolve().parent.parent

# per benchmark: its script, the JSON it writes, and the fields of a step worth comparing
BENCHES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "load": ("bench/load.py", "load.json",
             ("cpu_pct", "in_p99_ms", "out_p99_ms", "bargein_p50_ms", "bargein_p99_ms", "frames_lost", "frames_late",
              "bargein_missed", "false_pauses", "minstr_per_call_s")),
    "sip": ("bench/sip_load.py", "sip_load.json", ("cpu_pct", "departure_p99_ms", "failed")),
    "instructions": ("bench/instructions.py", "instructions.json",
                     ("minstr_per_call_s", "minstr_barge_in", "minstr_hangup_mid_response")),
}


@contextmanager
def checkout(rev: str, into: Path) -> Iterator[Path]:
    """The tree of `rev` (`.`: this working tree, as it is), for the duration of the block."""
    if rev == ".":
        yield REPO
        return
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(into), rev],
                   check=True, capture_output=True)
    try:
        yield into
    finally:
        # no `worktree prune`: it would drop another run's worktree that is being made right now
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(into)], check=False,
                       capture_output=True)


def build_native(tree: Path) -> str:
    """Compile `tree`'s hot modules for this interpreter (a no-op while its build is current);
    what happened, in a few words."""
    script = tree / "scripts" / "build_native.py"
    if os.environ.get("AGENT_NATIVE", "auto") == "off":
        return "AGENT_NATIVE=off: the source runs"
    if not script.exists():
        return "no compiled modules in this revision"
    done = subprocess.run([sys.executable, str(script)], cwd=tree, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no reason given"]
        return f"compiled build FAILED, its server runs the source: {reason[0]}"
    return "compiled modules built"


def steps(report: dict[str, Any], fields: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """Each step of a benchmark's report (by number of calls): the fields compared."""
    out: dict[int, dict[str, float]] = {}
    for row in report.get("series") or []:
        out[int(row["calls"])] = {f: float(row[f]) for f in fields if isinstance(row.get(f), (int, float))}
    return out


def means(runs: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Per step and field, the mean over the runs that have it."""
    out: dict[int, dict[str, float]] = {}
    for calls in sorted({c for run in runs for c in run}):
        values: dict[str, list[float]] = {}
        for run in runs:
            for field, value in run.get(calls, {}).items():
                values.setdefault(field, []).append(value)
        out[calls] = {f: statistics.fmean(v) for f, v in values.items()}
    return out


@dataclass(frozen=True)
class Paired:
    """head - base for one step and field, paired by round: the mean difference and its 95 %
    interval (None with fewer than two pairs)."""

    diffs: tuple[float, ...]
    mean: float
    low: float | None
    high: float | None


def paired(base: list[dict[int, dict[str, float]]], head: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, Paired]]:
    """Per step and field, head minus base in each round that has both (runs[i] is round i of
    each side; a round one side failed is left out)."""
    out: dict[int, dict[str, Paired]] = {}
    for calls in sorted({c for run in base + head for c in run}):
        fields: dict[str, list[float]] = {}
        for b, h in zip(base, head, strict=False):
            for field, value in h.get(calls, {}).items():
                if field in b.get(calls, {}):
                    fields.setdefault(field, []).append(value - b[calls][field])
        for field, diffs in fields.items():
            mean = statistics.fmean(diffs)
            low = high = None
            if len(diffs) >= 2:
                half = float(scipy.stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
                low, high = mean - half, mean + half
            out.setdefault(calls, {})[field] = Paired(tuple(diffs), mean, low, high)
    return out


def paired_line(calls: int, field: str, p: Paired) -> str:
    interval = "" if p.low is None or p.high is None else f" ({p.low:+.2f} .. {p.high:+.2f})"
    return f"{calls:5d} calls  {field} {p.mean:+.2f}{interval} from " + ", ".join(f"{d:+.2f}" for d in p.diffs)


def side_label(rev: str, extra: list[str]) -> str:
    """How a side is named in the output: its revision, and its own arguments if it has any."""
    return f"{rev} [{shlex.join(extra)}]" if extra else rev


def line(label: str, calls: int, values: dict[str, float]) -> str:
    return f"{label:>16} {calls:5d} calls  " + "  ".join(f"{k} {v:.2f}" for k, v in values.items())


def round_order(round_: int) -> tuple[str, str]:
    """Which side runs first in round `round_` (from 1): the base in odd rounds, the head in even."""
    return ("base", "head") if round_ % 2 else ("head", "base")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    bench_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, bench_args = argv[:at], argv[at + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the revision before (a commit, branch or tag; '.': the working tree)")
    p.add_argument("head", nargs="?", default=".", help="the revision after (default: the working tree)")
    p.add_argument("--rounds", type=int, default=4, help="runs of each tree, taken turn about (even: each side first as often)")
    p.add_argument("--bench", choices=sorted(BENCHES), default="load")
    p.add_argument("--base-args", default="", help="benchmark arguments for the base's runs only, e.g. '--vad off'")
    p.add_argument("--head-args", default="", help="benchmark arguments for the head's runs only")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    script, result, fields = BENCHES[args.bench]
    extra = {"base": shlex.split(args.base_args), "head": shlex.split(args.head_args)}
    # by role: both may name the same revision, and then only their arguments tell them apart
    labels = {role: side_label(rev, extra[role]) for role, rev in (("base", args.base), ("head", args.head))}
    runs: dict[str, list[dict[int, dict[str, float]]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="alternate-") as tmp:
        root = Path(tmp)
        with checkout(args.base, root / "base") as base_tree, checkout(args.head, root / "head") as head_tree:
            trees = {"base": base_tree, "head": head_tree}
            for role, tree in trees.items():
                print(f"{labels[role]}: {build_native(tree)}", flush=True)
            for round_ in range(1, args.rounds + 1):
                for role in round_order(round_):
                    tree = trees[role]
                    out = root / f"out-{role}-{round_}"
                    cmd = [sys.executable, str(tree / script), *bench_args, *extra[role], "--out", str(out)]
                    done = subprocess.run(cmd, cwd=tree, check=False, stdout=subprocess.DEVNULL)
                    try:
                        report = json.loads((out / result).read_text())
                    except (OSError, ValueError):
                        print(f"{labels[role]}: round {round_} wrote no {result} (exit {done.returncode})", flush=True)
                        runs[role].append({})  # keeps the rounds of the two sides paired
                        continue
                    print(f"{labels[role]} #{round_}: {report.get('command', ' '.join(cmd[1:]))}", flush=True)
                    run = steps(report, fields)
                    runs[role].append(run)
                    for calls, values in run.items():
                        print(line(f"{labels[role]} #{round_}", calls, values), flush=True)
    print("means:")
    for role, label in labels.items():
        for calls, values in means(runs[role]).items():
            print(line(label, calls, values))
    print(f"{labels['head']} - {labels['base']}, paired by round (mean, 95 % interval):")
    for calls, by_field in paired(runs["base"], runs["head"]).items():
        for field, diff in by_field.items():
            print(paired_line(calls, field, diff))
    return 0 if all(any(rs) for rs in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
