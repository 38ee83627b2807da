"""bench/alternate.py: two trees of the code benchmarked turn about, each from its own worktree,
with the worktrees gone afterwards. It runs in a clone of this checkout, so the 3.11 and 3.13
runs of the suite, side by side, each see only their own worktrees."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def worktrees(repo: Path) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


@pytest.mark.once(python="3.13")  # checks the runner; the server on each Python is test_bench_load_smoke's
@pytest.mark.timeout(120)
def test_two_trees_take_turns_and_leave_no_worktree(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (server and load generators are pinned apart)")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True, timeout=60)
    shutil.copy(REPO / "bench" / "alternate.py", clone / "bench" / "alternate.py")  # the tool as it is here
    cores = sorted(os.sched_getaffinity(0))
    before = worktrees(clone)
    # the working tree runs with one more argument of its own, as a setting is compared with itself
    cmd = [sys.executable, str(clone / "bench" / "alternate.py"), "HEAD", ".", "--head-args=--vad off", "--rounds", "1", "--",
           "--series", "2", "--steady", "2", "--settle", "0.5", "--compare-at", "0", "--workers", "",
           "--sequential", "0", "--no-plot", "--server-core", str(cores[0]), "--gen-core", str(cores[1])]
    env = dict(os.environ, AGENT_NATIVE="off")  # no compiled build per tree (half a minute each)
    proc = subprocess.run(cmd, cwd=clone, capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs, _, summary = proc.stdout.partition("means:")
    head = ". [--vad off]"
    assert re.findall(r"^(.+?): AGENT_NATIVE=off: the source runs$", runs, re.M) == ["HEAD", head], proc.stdout
    # one run of each tree, in turn: the revision first, then the working tree with its argument
    assert re.findall(r"^\s*(.+?) #1\s+2 calls", runs, re.M) == ["HEAD", head], proc.stdout
    commands = dict(re.findall(r"^(.+?) #1: (load\.py .*)$", runs, re.M))  # as each benchmark recorded it
    assert "--vad off" in commands[head] and "--vad" not in commands["HEAD"], proc.stdout
    means, _, diffs = summary.partition("paired by round")
    for label in ("HEAD", head):
        m = re.search(rf"^\s*{re.escape(label)}\s+2 calls\s+cpu_pct ([0-9.]+) .*frames_late", means, re.M)
        assert m is not None and float(m.group(1)) > 0, proc.stdout
    # one round: the difference, and no interval
    assert re.search(r"^\s+2 calls  cpu_pct [+-][0-9.]+ from [+-][0-9.]+$", diffs, re.M), proc.stdout
    assert worktrees(clone) == before == [f"worktree {clone}"]


def _alternate() -> Any:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import alternate
    finally:
        sys.path.remove(str(REPO / "bench"))
    return alternate


def test_paired_differences_keep_rounds_together_and_give_a_t_interval() -> None:
    """head - base per round, the mean and its 95 % interval (Student's t, n - 1 degrees of
    freedom); a round that one side failed ({}) drops out without shifting the others."""
    alternate = _alternate()
    base = [{100: {"cpu_pct": 20.5}}, {}, {100: {"cpu_pct": 21.4}}, {100: {"cpu_pct": 21.6}}]
    head = [{100: {"cpu_pct": 32.5}}, {100: {"cpu_pct": 99.0}}, {100: {"cpu_pct": 27.9}}, {100: {"cpu_pct": 32.1}}]
    p = alternate.paired(base, head)[100]["cpu_pct"]
    assert p.diffs == pytest.approx((12.0, 6.5, 10.5))
    # mean 9.667, sample sd 2.843, t(0.975, 2) = 4.303: 9.667 -+ 7.063
    assert p.mean == pytest.approx(9.6667, abs=1e-4)
    assert (p.low, p.high) == (pytest.approx(2.604, abs=1e-3), pytest.approx(16.730, abs=1e-3))
    assert alternate.paired_line(100, "cpu_pct", p) == "  100 calls  cpu_pct +9.67 (+2.60 .. +16.73) from +12.00, +6.50, +10.50"
    one = alternate.paired(base[:1], head[:1])[100]["cpu_pct"]
    assert (one.mean, one.low, one.high) == (pytest.approx(12.0), None, None)


def test_each_tree_gets_its_own_compiled_build_or_says_why_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh worktree has no build: without one its server would run the source against the
    other tree's compiled code. `build_native` runs the tree's own build script there."""
    alternate = _alternate()
    monkeypatch.delenv("AGENT_NATIVE", raising=False)
    old, built, broken = tmp_path / "old", tmp_path / "built", tmp_path / "broken"
    for tree, body in ((built, "import pathlib; pathlib.Path('built').write_text('yes')"),
                       (broken, "import sys; print('native build failed: no C compiler'); sys.exit(1)")):
        (tree / "scripts").mkdir(parents=True)
        (tree / "scripts" / "build_native.py").write_text(body)
    old.mkdir()
    assert alternate.build_native(old) == "no compiled modules in this revision"
    assert alternate.build_native(built) == "compiled modules built"
    assert (built / "built").read_text() == "yes"  # ran in the tree itself
    assert alternate.build_native(broken) == (
        "compiled build FAILED, its server runs the source: native build failed: no C compiler")
    monkeypatch.setenv("AGENT_NATIVE", "off")
    (built / "built").unlink()
    assert alternate.build_native(built) == "AGENT_NATIVE=off: the source runs"
    assert not (built / "built").exists()


def test_each_side_runs_first_in_every_other_round() -> None:
    """Counterbalanced: over any two consecutive rounds each side runs first once, so a cost to
    the first or the second run of a round is not read as a difference between the trees."""
    alternate = _alternate()
    orders = [alternate.round_order(r) for r in range(1, 7)]
    assert orders[0] == ("base", "head")  # one round: the base, then the head, as before
    assert all(set(o) == {"base", "head"} for o in orders)
    assert [o[0] for o in orders] == ["base", "head"] * 3
