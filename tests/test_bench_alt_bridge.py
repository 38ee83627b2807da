"""Smoke run of the load benchmark's alternative bridge (bench/alt_bridge.py, the common public
sample's approach): bench/load.py starts it with the fake provider and a few simulated Twilio
callers; audio must cross it both ways (no frame lost), barge-ins must reach the caller as
`clear`, and the comparison must come out in the report. If the alternative stopped carrying
audio, the CPU ratio against it would be meaningless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.once(python="3.13")  # the alternative runs none of our code
@pytest.mark.timeout(60)
def test_alt_bridge_carries_audio_both_ways(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (server and load generators are pinned apart)")
    cores = sorted(os.sched_getaffinity(0))
    load = [sys.executable, str(REPO / "bench" / "load.py")]
    # callers that barge in by speaking decide per answer (--barge-p); most answers, so some land in 4 s
    usage = subprocess.run([*load, "--help"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
    barge = ["--barge-p", "0.8"] if "--barge-p" in usage else []
    cmd = [*load, "--series", "", "--sequential", "0", "--workers", "", *barge,
           "--bridges", "alt", "--loop", "asyncio", "--compare-at", "5", "--steady", "4", "--settle", "0.5", "--no-plot",
           "--out", str(tmp_path), "--server-core", str(cores[0]), "--gen-core", str(cores[1])]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "load.json").read_text())
    (alt,) = report["comparison"]["bridges"]
    assert alt["bridge"] == "alt" and [s["calls"] for s in alt["steps"]] == [2, 5]
    assert alt["loop"] == "asyncio" and not alt["uvloop_loaded"]  # AGENT_EVENT_LOOP reached uvicorn
    for step in alt["steps"]:
        assert step["calls_up"] == step["calls"]
        assert step["frames_lost_in"] == 0 and step["frames_lost_out"] == 0, step
        # caller frames reached the provider and agent frames (several per message) reached the callers
        assert step["in_frames"] > 40 * step["calls"] and step["out_frames"] > 10 * step["calls"], step
        assert step["foreign_frames"] == 0
        assert step["ttfa_p50_ms"] is not None
        assert step["calls_left_after_hangup"] == 0
        # late (> 60 ms one way) is a benchmark figure; on a busy machine a stall can make a few late
        assert step["frames_late"] <= 0.02 * (step["in_frames"] + step["out_frames"]), step
        assert step["bargein_missed"] == 0, step  # a barge-in the provider signalled reached the caller as `clear`
    assert sum(s["bargeins"] for s in alt["steps"]) > 0
    assert alt["cpu_pct_per_call"] > 0 and alt["marginal_cpu_pct_per_call"] is not None
    assert "| alt |" in (tmp_path / "load.md").read_text()
