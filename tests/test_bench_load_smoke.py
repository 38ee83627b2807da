"""Smoke run of the load benchmark machinery (bench/load.py): the real server process, the fake
provider and two simulated callers for a few seconds; the report must come out with no frame
lost (and almost none late)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_bench_load_smoke(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (server and load generators are pinned apart)")
    cores = sorted(os.sched_getaffinity(0))
    cmd = [sys.executable, str(REPO / "bench" / "load.py"), "--series", "2", "--steady", "3", "--settle", "0.5",
           "--sequential", "20", "--no-plot", "--out", str(tmp_path),
           "--server-core", str(cores[0]), "--gen-core", str(cores[1]),
           "--compare-at", "0", "--workers", "",  # the product alone (tests/test_bench_alt_bridge.py: the alternative)
           # The load generator's provider sends speech_started with no caller speech behind it:
           # with the caller-speech detector on, the bridge pauses the agent and resumes it 300 ms
           # later, and the resumed frames count as late. The bridge's own latency is measured
           # without it (turn-taking has its own tests and `make bench-turns`).
           "--vad", "off"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "load.json").read_text())
    (row,) = report["series"]
    assert row["calls_up"] == 2
    assert row["frames_lost"] == 0
    # Lateness (> 60 ms one way) is a benchmark figure: on a machine whose cores run other work
    # (CI runs two suites side by side) a stall can make a frame or two late. Losing one is a bug.
    assert row["frames_late"] <= 0.01 * (row["in_frames"] + row["out_frames"]), row
    assert row["in_frames"] > 200 and row["out_frames"] > 0
    assert row["ttfa_p50_ms"] is not None
    assert row["calls_left_after_hangup"] == 0
    seq = report["sequential"]
    assert seq["calls"] == 20 and seq["failed"] == 0 and seq["calls_left"] == 0
    assert (tmp_path / "load.md").read_text().startswith("| calls |")
