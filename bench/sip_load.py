"""SIP load benchmark: concurrent SIP calls with audio through the real server (`make bench-sip`).

Processes (all on 127.0.0.1):
- the server, `python -m telephony_agent serve` with SIP on (AGENT_SIP_PORT, UDP), pinned to one
  core, answering with the fake OpenAI Realtime provider of the Twilio benchmark
  (`bench/loadgen/provider.py`: instant greeting, then 1-3 s replies, 40 % of them barged in);
- sipp placing the calls (speech streamed with `rtp_stream`, 20 ms G.711 packets), pinned with
  the provider to the other core.

For each N in a rising series: sipp places N calls (at --rate per second) that each last long
enough for all N to be up together for the measured window; then it hangs them up. Per step:
sipp's successful/failed calls, server CPU over the window (so calls per core = N / CPU share),
the outbound RTP inter-departure deviation p99 (|interval - 20 ms| of every packet the server
sent, from its `agent_rtp_departure_deviation_ms` histogram), event-loop lag p99, RTP lost.
A step passes with 0 failed calls and departure p99 < 5 ms. `--twilio` runs the Twilio
benchmark (`bench/load.py`) on the same series afterwards for comparison.
Writes bench/out/sip_load.json and sip_load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import (
    OUT,
    Proc,
    Server,
    command_line,
    core_busy_s,
    cpu_s,
    hist_quantile,
    http_get,
    lag_buckets,
    rss_mib,
    server_env,
    start_server,
)
from telephony_agent.testing.ports import SIPP_MEDIA_PORTS, free_tcp_port, free_udp_port

SCENARIO = REPO / "tests" / "peers" / "sipp" / "uac_speech.xml"
MAX_DEPARTURE_P99_MS = 5.0
SPEECH = "Hello, I would like to check the status of my order, and then talk about my bill."
QUIET_S = 6.0  # after each sentence (about 5 s): the caller talks a little under half the time

_DEPARTURE = re.compile(r'^agent_rtp_departure_deviation_ms_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.MULTILINE)
_COUNTER = re.compile(r'^(agent_rtp_[a-z_]+_total)(\{[^}]*\})? ([0-9.e+]+)$', re.MULTILINE)


def departure_buckets(metrics: str) -> list[tuple[float, float]]:
    return [(float("inf") if le == "+Inf" else float(le), float(v)) for le, v in _DEPARTURE.findall(metrics)]


def rtp_counters(metrics: str) -> dict[str, float]:
    return {name + labels: float(v) for name, labels, v in _COUNTER.findall(metrics)}


def speech_ulaw_file(directory: Path, quiet_s: float = QUIET_S) -> Path:
    """What each sipp caller plays, looped: a sentence, then `quiet_s` of a quiet line (sox hiss
    and hum about 70 dB below full scale), so callers talk in turns as people do instead of
    without a pause for the whole call."""
    import numpy as np

    from telephony_agent.testing.noise import noise_pcm16
    from telephony_agent.testing.speech import speech_ulaw
    from telephony_codecs import pcm16_to_ulaw

    hiss = np.frombuffer(noise_pcm16("line_noise"), dtype="<i2").astype(np.float64) * 10 ** (-30 / 20)
    quiet = np.resize(hiss, int(8000 * quiet_s)).astype("<i2").tobytes()
    path = directory / "speech.ul"
    path.write_bytes(speech_ulaw(SPEECH) + pcm16_to_ulaw(quiet))
    return path


class SipBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: Server | None = None
        self.provider: Proc | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-sip-"))
        self.steps = 0

    def start(self) -> None:
        a = self.args
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "codecs")]))
        self.provider = Proc([sys.executable, "-m", "bench.loadgen.provider", "--seed", str(a.seed)], a.gen_core, env)
        pport = self.provider.read("ready")["port"]
        self.port = free_tcp_port()
        self.sip_port = free_udp_port()
        senv = server_env(
            f"ws://127.0.0.1:{pport}/v1/realtime", self.port, AGENT_VAD=a.vad,
            AGENT_SIP_PORT=str(self.sip_port), AGENT_SIP_TRANSPORTS="udp", AGENT_SIP_ALLOWED_SOURCES="127.0.0.1/32",
            AGENT_SIP_RATE_LIMIT="10000", AGENT_RTP_PORTS=a.rtp_ports, AGENT_RTP_TIMEOUT_SECONDS="30",
        )
        self.server = start_server(senv, {a.server_core}, OUT / "sip_server.log")
        self.base = self.server.base
        self.speech = speech_ulaw_file(self.tmp)
        os.sched_setaffinity(0, {a.gen_core})

    def stop(self) -> None:
        if self.provider is not None:
            self.provider.stop()
        if self.server is not None:
            self.server.stop()

    def active_calls(self) -> int:
        _, body = http_get(self.base + "/readyz")
        try:
            return int(json.loads(body).get("active_calls", 0))
        except (ValueError, AttributeError):
            return -1

    def step(self, n: int) -> dict[str, Any]:
        a = self.args
        ramp_s = n / a.rate
        hold_ms = int((ramp_s + a.settle + a.steady + 2.0) * 1000)
        self.steps += 1
        cwd = self.tmp / f"sipp-{self.steps}-{n}"
        cwd.mkdir()
        argv = [
            "sipp", f"127.0.0.1:{self.sip_port}", "-sf", str(SCENARIO), "-s", "agent", "-i", "127.0.0.1",
            "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", str(free_udp_port(even=True, span=SIPP_MEDIA_PORTS)),
            "-m", str(n), "-l", str(n), "-r", str(a.rate), "-d", str(hold_ms),
            "-key", "rtp_file", f"{self.speech},-1,0",
            "-timeout", f"{int(hold_ms / 1000 + ramp_s + 60)}s", "-timeout_error", "-nostdin", "-trace_screen",
            "-trace_err", "-max_socket", str(max(1024, n * 4)),
        ]
        sipp = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE,
                                preexec_fn=lambda: os.sched_setaffinity(0, {a.gen_core}))
        pid = self.server.pid  # type: ignore[union-attr]
        time.sleep(ramp_s + a.settle)
        up = self.active_calls()
        _, metrics = http_get(self.base + "/metrics")  # one read for the three
        d0, lag0, r0 = departure_buckets(metrics), lag_buckets(metrics), rtp_counters(metrics)
        c0, k0, w0 = cpu_s(pid), core_busy_s(a.server_core), time.monotonic()
        prof = None
        if a.profile_at == n:
            prof = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(int(a.steady)),
                 "-r", "200", "-f", "raw", "-o", str(OUT / f"sip-profile-{n}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        time.sleep(a.steady)
        if prof is not None:
            prof.wait(30)
        c1, k1, w1 = cpu_s(pid), core_busy_s(a.server_core), time.monotonic()
        _, metrics = http_get(self.base + "/metrics")  # one read for the three
        d1, lag1, r1 = departure_buckets(metrics), lag_buckets(metrics), rtp_counters(metrics)
        rss = rss_mib(pid)
        try:
            _, err = sipp.communicate(timeout=hold_ms / 1000 + ramp_s + 90)
        except subprocess.TimeoutExpired:
            sipp.kill()
            _, err = sipp.communicate()
        counts = {"successful": 0, "failed": 0}
        for screen in cwd.glob("*_screen.log"):
            for line in screen.read_text(errors="replace").splitlines():
                parts = line.split()
                if line.strip().startswith("Successful call") and parts:
                    counts["successful"] = int(parts[-1])
                elif line.strip().startswith("Failed call") and parts:
                    counts["failed"] = int(parts[-1])
        deadline = time.monotonic() + 30
        while self.active_calls() > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        window = w1 - w0
        cpu_pct = (c1 - c0) / window * 100
        packets_out = r1.get('agent_rtp_packets_total{direction="out"}', 0) - r0.get('agent_rtp_packets_total{direction="out"}', 0)
        packets_in = r1.get('agent_rtp_packets_total{direction="in"}', 0) - r0.get('agent_rtp_packets_total{direction="in"}', 0)
        lost = r1.get("agent_rtp_lost_total", 0) - r0.get("agent_rtp_lost_total", 0)
        p99 = hist_quantile(d0, d1, 0.99)
        p50 = hist_quantile(d0, d1, 0.50)
        lag_p99 = hist_quantile(lag0, lag1, 0.99)
        row = {
            "calls": n,
            "calls_up": up,
            "sipp_rc": sipp.returncode,
            "successful": counts["successful"],
            "failed": counts["failed"],
            "cpu_pct": round(cpu_pct, 1),
            "calls_per_core": round(n / (cpu_pct / 100), 1) if cpu_pct > 0 else None,
            "departure_p50_ms": None if p50 is None else round(p50, 3),
            "departure_p99_ms": None if p99 is None else round(p99, 3),
            "loop_lag_p99_ms": None if lag_p99 is None else round(lag_p99, 2),
            "rtp_out_pps": round(packets_out / window),
            "rtp_in_pps": round(packets_in / window),
            "rtp_lost": int(lost),
            "rss_mib": round(rss, 1),
            "other_load_on_server_core_pct": round(((k1 - k0) - (c1 - c0)) / window * 100, 1),
            "sipp_errors": err.decode(errors="replace")[-500:] if sipp.returncode not in (0,) else "",
        }
        return row


def check(row: dict[str, Any]) -> list[str]:
    why = []
    if row["failed"] or row["successful"] < row["calls"]:
        why.append(f"{row['failed']} failed, {row['successful']} of {row['calls']} successful")
    if row["departure_p99_ms"] is None or row["departure_p99_ms"] >= MAX_DEPARTURE_P99_MS:
        why.append(f"departure p99 {row['departure_p99_ms']} ms >= {MAX_DEPARTURE_P99_MS}")
    if row["calls_up"] < row["calls"]:
        why.append(f"only {row['calls_up']} of {row['calls']} calls up together")
    return why


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| calls | up | ok / failed | server CPU % | calls per core | RTP departure p50 / p99 ms "
            "| loop lag p99 ms | RTP out/in pps | lost |")
    lines = [head, "|" + "---:|" * 9]
    for r in rows:
        lines.append(
            f"| {r['calls']} | {r['calls_up']} | {r['successful']} / {r['failed']} | {r['cpu_pct']} | "
            f"{r['calls_per_core']} | {r['departure_p50_ms']} / {r['departure_p99_ms']} | {r['loop_lag_p99_ms']} | "
            f"{r['rtp_out_pps']} / {r['rtp_in_pps']} | {r['rtp_lost']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", default="50,100,200,300")
    p.add_argument("--rate", type=float, default=50.0, help="calls placed per second")
    p.add_argument("--steady", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rtp-ports", default="40000-41999")
    p.add_argument("--vad", default="silero", choices=["silero", "energy", "off"],
                   help="AGENT_VAD for the server (off: measure the SIP media path without turn detection)")
    p.add_argument("--keep-going", action="store_true", help="run the whole series even after a failed step")
    p.add_argument("--profile-at", type=int, default=None, help="py-spy record the server during this step")
    p.add_argument("--twilio", action="store_true", help="then run the Twilio benchmark on the same series")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = SipBench(args)
    rows: list[dict[str, Any]] = []
    stopped_by = None
    try:
        bench.start()
        bench.step(5)  # warm up: imports, first provider connections
        for n in [int(x) for x in args.series.split(",") if x]:
            row = bench.step(n)
            rows.append(row)
            print(
                f"N={n:4d} up {row['calls_up']}  ok {row['successful']} failed {row['failed']}  "
                f"cpu {row['cpu_pct']}% -> {row['calls_per_core']} calls/core  departure p50/p99 "
                f"{row['departure_p50_ms']}/{row['departure_p99_ms']} ms  lag p99 {row['loop_lag_p99_ms']} ms  "
                f"rtp out {row['rtp_out_pps']} pps in {row['rtp_in_pps']} pps lost {row['rtp_lost']}  "
                f"other load {row['other_load_on_server_core_pct']}%",
                flush=True,
            )
            why = check(row)
            if why:
                row["failed_because"] = why
                stopped_by = f"N={n}: " + "; ".join(why)
                print("  step failed:", stopped_by, flush=True)
                if not args.keep_going:
                    break
    finally:
        bench.stop()
    passing = [r for r in rows if not r.get("failed_because")]
    best = max(passing, key=lambda r: r["calls"]) if passing else None
    report: dict[str, Any] = {
        "command": command_line(argv),
        "machine": {"cpus": os.cpu_count(), "server_core": args.server_core, "loadgen_core": args.gen_core,
                    "python": sys.version.split()[0]},
        "settings": {"rate": args.rate, "steady_s": args.steady, "settle_s": args.settle, "codec": "PCMU", "vad": args.vad,
                     "provider": "fake OpenAI Realtime (bench/loadgen/provider.py)"},
        "series": rows,
        "stopped_by": stopped_by,
        "best": best,
    }
    if args.twilio:
        series = ",".join(str(r["calls"]) for r in rows) or args.series
        twilio_out = out / "twilio"
        subprocess.run([sys.executable, str(REPO / "bench" / "load.py"), "--series", series, "--sequential", "0",
                        "--no-plot", "--keep-going", "--out", str(twilio_out)], check=False)
        try:
            report["twilio"] = json.loads((twilio_out / "load.json").read_text()).get("series")
        except (OSError, ValueError):
            report["twilio"] = None
    (out / "sip_load.json").write_text(json.dumps(report, indent=2))
    md = table(rows)
    if best is not None:
        md += (f"\n\nBest passing step: {best['calls']} concurrent SIP calls at {best['cpu_pct']}% of one core "
               f"= {best['calls_per_core']} calls per core; RTP departure p99 {best['departure_p99_ms']} ms.\n")
    if report.get("twilio"):
        md += "\nTwilio (same run): " + "; ".join(
            f"N={r['calls']} CPU {r['cpu_pct']}% ({round(r['calls'] / (r['cpu_pct'] / 100), 1) if r['cpu_pct'] else '-'}"
            f" calls/core), lost/late {r['frames_lost']}/{r['frames_late']}" for r in report["twilio"]) + "\n"
    (out / "sip_load.md").write_text(md + "\n")
    print(md)
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
