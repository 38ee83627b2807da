"""Smoke runs of the load benchmark's other bridges: the alternative (bench/alt_bridge.py, the
common public sample's approach) and the floor (bench/floor_bridge.py, the same on bare asyncio
protocols). bench/load.py starts each with the fake provider and a few simulated Twilio callers;
audio must cross it both ways (no frame lost), barge-ins must reach the caller as `clear`, and
the comparison must come out in the report. If either stopped carrying audio, the CPU figures
against it would be meaningless."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)  # 19 s alone, 34 s in `make test` in a slow hour: a bound, with room for a busier machine
@pytest.mark.parametrize(("bridge", "loop"), [
    # neither runs our code, so each runs once: the alternative where the benchmark extras
    # (FastAPI, uvicorn, websockets) are installed, which `make test` does for 3.11 only
    pytest.param("alt", "asyncio", marks=pytest.mark.once(python="3.11")),
    pytest.param("floor", "uvloop", marks=pytest.mark.once(python="3.13")),
])
def test_bridge_carries_audio_both_ways(tmp_path: Path, bridge: str, loop: str) -> None:
    if bridge == "alt":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    else:
        pytest.importorskip("uvloop")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores (server and load generators are pinned apart)")
    cores = sorted(os.sched_getaffinity(0))
    load = [sys.executable, str(REPO / "bench" / "load.py")]
    # callers that barge in by speaking decide per answer (--barge-p); most answers, so some land in 4 s
    usage = subprocess.run([*load, "--help"], cwd=REPO, capture_output=True, text=True, timeout=30).stdout
    barge = ["--barge-p", "0.8"] if "--barge-p" in usage else []
    cmd = [*load, "--series", "", "--sequential", "0", "--workers", "", *barge,
           "--bridges", bridge, "--loop", loop, "--compare-at", "5", "--steady", "4", "--settle", "0.5", "--no-plot",
           "--out", str(tmp_path), "--server-core", str(cores[0]), "--gen-core", str(cores[1])]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "load.json").read_text())
    (entry,) = report["comparison"]["bridges"]
    assert entry["bridge"] == bridge and [s["calls"] for s in entry["steps"]] == [2, 5]
    assert entry["loop"] == loop and entry["uvloop_loaded"] == (loop == "uvloop")  # AGENT_EVENT_LOOP was honoured
    for step in entry["steps"]:
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
    assert sum(s["bargeins"] for s in entry["steps"]) > 0
    assert entry["cpu_pct_per_call"] > 0 and entry["marginal_cpu_pct_per_call"] is not None
    assert f"| {bridge} |" in (tmp_path / "load.md").read_text()


def test_bridges_are_set_against_the_floor_on_their_own_loop() -> None:
    from bench.load import add_floor_ratios, compare_table

    def entry(bridge: str, loop: str, per_call: float, marginal: float | None) -> dict[str, object]:
        return {"bridge": bridge, "loop": loop, "uvloop_loaded": loop == "uvloop", "calls": 100, "cpu_pct": per_call * 100,
                "cpu_pct_per_call": per_call, "marginal_cpu_pct_per_call": marginal, "in_p99_ms": 1.0,
                "out_p99_ms": 1.0, "bargein_p99_ms": 100.0, "frames_lost": 0, "frames_late": 0,
                "other_load_on_server_core_pct": 0.0, "kept_real_time": True,
                "minstr_per_call_s": None}  # as every entry of a run without `--callgrind`

    compare = [entry("ours", "uvloop", 0.45, 0.36), entry("floor", "uvloop", 0.18, 0.12),
               entry("ours", "asyncio", 0.50, None), entry("alt", "asyncio", 0.48, 0.40)]
    add_floor_ratios(compare)
    assert compare[0]["over_floor"] == 2.5 and compare[0]["marginal_over_floor"] == 3.0
    assert "over_floor" not in compare[1]  # the floor itself
    assert "over_floor" not in compare[2] and "over_floor" not in compare[3]  # no floor on asyncio
    assert "ours/floor (uvloop): CPU per call 2.50, marginal 3.00" in compare_table(compare, [])


def test_instruction_counts_are_set_against_the_floor_when_counted() -> None:
    """`--callgrind` runs carry M instructions per call-second: each bridge's over the floor's is
    reported beside the CPU ratio; runs without them report the CPU ratio alone."""
    from bench.load import add_floor_ratios, compare_table

    def entry(bridge: str, minstr: float | None) -> dict[str, object]:
        return {"bridge": bridge, "loop": "uvloop", "uvloop_loaded": True, "calls": 6, "cpu_pct": 60.0,
                "cpu_pct_per_call": 10.0, "marginal_cpu_pct_per_call": None, "in_p99_ms": 1.0, "out_p99_ms": 1.0,
                "bargein_p99_ms": 100.0, "frames_lost": 0, "frames_late": 0, "other_load_on_server_core_pct": 0.0,
                "kept_real_time": False, "minstr_per_call_s": minstr}

    counted = [entry("ours", 10.45), entry("alt", 11.8), entry("floor", 2.52)]
    add_floor_ratios(counted)
    assert counted[0]["instructions_over_floor"] == 4.147 and counted[1]["instructions_over_floor"] == 4.683
    ratios = [{"loop": "uvloop", "calls": 6, "uvloop_loaded": {"ours": True, "alt": True}, "valid": False,
               "cpu_per_call": 1.0, "marginal_cpu_per_call": None, "instructions_per_call": 0.886}]
    table = compare_table(counted, ratios)
    assert "ours/floor (uvloop): CPU per call 1.00, marginal -, instructions per call 4.15 (callgrind)" in table
    assert "ours/alt (uvloop): CPU per call 1.00, marginal -, instructions per call 0.89 (callgrind)" in table
    plain = [entry("ours", None), entry("floor", None)]
    add_floor_ratios(plain)
    assert "instructions_over_floor" not in plain[0] and "instructions" not in compare_table(plain, [])
