"""Memory benchmark: the server's RSS over 10,000 short sequential calls (`make bench-rss`).

Issue: RSS per call under 2 MiB, and flat over 10,000 sequential calls. The processes are those of
the load benchmark (`bench/load.py`, whose helpers this imports): the real server
(`python -m telephony_agent serve`, one worker, OpenAI provider, `audio/pcmu`) pinned to core 0,
the fake OpenAI Realtime provider and the simulated Twilio callers (`bench/loadgen/`) on core 1.

For each event loop asked for (`--loops asyncio,uvloop`, the server's `AGENT_EVENT_LOOP`), one
fresh server:

1. warm-up calls, then the idle RSS;
2. `--concurrent` (100) calls at once: RSS per concurrent call = (max RSS while they run - idle) / N;
   they hang up and the idle RSS is read again;
3. `--calls` (10,000) short calls, `--concurrency` (10) at a time, each `--call-s` long (plus the
   caller's 0.3 s hang-up): VmRSS (and its anonymous part, open descriptors) every `--every` calls;
4. idle RSS after the run.

Verdicts: *flat* when the least-squares slope of RSS over the calls after the first
`--warmup-fraction` (20 %) is below `--max-slope` MiB per 1,000 calls; *per call* when RSS per
concurrent call is below 2 MiB. Output: bench/out/rss.json, rss.md (the table) and rss.png (the
curve). The figures are from whatever else runs on the machine: read them with that in mind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import OUT, REPO, Proc, cpu_s, http_get, rss_mib, server_env, start_server
from bench.load import Server as LoadServer
from telephony_agent.testing.ports import free_tcp_port

MAX_PER_CALL_MIB = 2.0


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and its anonymous and file parts (MiB) from /proc/<pid>/status, and open descriptors."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = round(int(rest.split()[0]) / 1024, 2)
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


class Run:
    """One benchmark's server, provider and callers, started with `bench/load.py`'s helpers."""

    def __init__(self, args: argparse.Namespace, loop: str) -> None:
        self.args = args
        self.loop = loop
        self.procs: list[Proc] = []
        self.server: LoadServer | None = None
        self.stalls: list[float] = []  # when /readyz did not answer in time (s into a wait)

    def start(self) -> None:
        a = self.args
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.provider = Proc([sys.executable, "-m", "bench.loadgen.provider", "--seed", str(a.seed)], a.gen_core, env)
        self.procs.append(self.provider)
        port = self.provider.read("ready")["port"]
        self.port = free_tcp_port()
        extra = {"AGENT_LOG_LEVEL": "INFO", "AGENT_VAD": a.vad, "AGENT_EVENT_LOOP": self.loop}
        for item in a.server_env:
            key, _, value = item.partition("=")
            extra[key] = value
        self.log_path = OUT / f"{a.name}-server-{self.loop}.log"
        self.server = start_server(server_env(f"ws://127.0.0.1:{port}/v1/realtime", self.port, **extra),
                                   {a.server_core}, self.log_path, ready_timeout=a.start_timeout)
        self.base = self.server.base
        self.callers = Proc([sys.executable, "-m", "bench.loadgen.callers", "--port", str(self.port)], a.gen_core, env)
        self.procs.append(self.callers)
        self.callers.read("ready")
        os.sched_setaffinity(0, {a.gen_core})

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def stop(self) -> None:
        for p in self.procs:
            p.stop()
        if self.server is not None:
            self.server.stop()

    def wait_idle(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        active = -1
        while time.monotonic() < deadline:
            try:
                _, body = http_get(self.base + "/readyz")
            except OSError:  # a busy machine: the server's answer took over 5 s
                slow = time.monotonic()
                print("  /readyz did not answer within 5 s; asking again", file=sys.stderr, flush=True)
                self.stalls.append(round(slow - deadline + timeout, 1))
                continue
            active = json.loads(body)["active_calls"]
            if active == 0:
                return 0
            time.sleep(0.1)
        return active

    def settled_rss(self) -> float:
        """Idle RSS once no call is left and the call teardown (sockets, the GC) has run."""
        self.wait_idle()
        time.sleep(self.args.settle)
        return round(rss_mib(self.pid), 2)

    def sequential(self, total: int, concurrency: int, call_s: float, every: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self.callers.send(cmd="sequential", total=total, concurrency=concurrency, call_s=call_s, every=every)
        points: list[dict[str, Any]] = []
        partial = OUT / f"{self.args.name}-{self.loop}.partial.json"
        t0 = time.monotonic()
        c0 = cpu_s(self.pid)
        while len(points) < total // every:
            msg = self.callers.read("progress", timeout=300)
            st = proc_status(self.pid)
            points.append({"calls": msg["done"], "failed": msg["failed"], "t_s": round(time.monotonic() - t0, 1),
                           "rss_mib": st.get("VmRSS"), "anon_mib": st.get("RssAnon"), "fds": st.get("fds")})
            partial.write_text(json.dumps(points))  # what a run cut short leaves
            if len(points) <= 3 or len(points) % 10 == 0:
                print(f"  [{self.loop}] {msg['done']} calls ({msg['failed']} failed), RSS {st.get('VmRSS')} MiB "
                      f"(anon {st.get('RssAnon')}), {st.get('fds')} fds, {time.monotonic() - t0:.0f} s", flush=True)
        final = self.callers.read("sequential", timeout=300)
        return {"calls": final["done"], "failed": final["failed"], "seconds": round(time.monotonic() - t0, 1),
                "server_cpu_s": round(cpu_s(self.pid) - c0, 1)}, points

    def concurrent(self, n: int) -> tuple[float, float]:
        """Max RSS while `n` calls are up (a few samples over `--hold` seconds), and the server's CPU
        then (% of one core)."""
        self.callers.send(cmd="run", n=n, ramp_s=max(0.5, n / 100))
        up = self.callers.read("up", timeout=120)
        if up["calls"] < n:
            print(f"  only {up['calls']} of {n} calls came up", file=sys.stderr)
        time.sleep(1.0)
        peak = 0.0
        c0, t0 = cpu_s(self.pid), time.monotonic()
        end = t0 + self.args.hold
        while time.monotonic() < end:
            peak = max(peak, rss_mib(self.pid))
            time.sleep(0.25)
        cpu_pct = (cpu_s(self.pid) - c0) / (time.monotonic() - t0) * 100
        self.callers.send(cmd="stop")
        self.callers.read("stopped", timeout=120)
        return round(peak, 2), round(cpu_pct, 1)


def slope_per_1000(points: list[dict[str, Any]], key: str, skip_fraction: float) -> tuple[float | None, float | None]:
    """(least-squares slope in MiB per 1,000 calls, growth first -> last point) after the warm-up."""
    import numpy as np

    if not points:
        return None, None
    last = points[-1]["calls"]
    sel = [p for p in points if p["calls"] >= skip_fraction * last and p[key] is not None]
    if len(sel) < 2:
        return None, None
    xs = np.array([p["calls"] for p in sel], float)
    ys = np.array([p[key] for p in sel], float)
    return round(float(np.polyfit(xs, ys, 1)[0]) * 1000, 3), round(float(ys[-1] - ys[0]), 2)


def run_one(args: argparse.Namespace, loop: str) -> dict[str, Any]:
    srv = Run(args, loop)
    try:
        srv.start()
        running = [line for line in srv.log_path.read_text(errors="replace").splitlines() if "event loop" in line]
        print(f"[{loop}] server pid {srv.pid}: {running[-1] if running else '(no event loop line in the log)'}", flush=True)
        srv.sequential(args.warmup_calls, min(args.concurrency, args.warmup_calls), args.call_s, args.warmup_calls)
        idle = srv.settled_rss()
        peak, concurrent_cpu = srv.concurrent(args.concurrent)
        idle_after_concurrent = srv.settled_rss()
        print(f"[{loop}] idle {idle} MiB; {args.concurrent} calls at once {peak} MiB "
              f"({(peak - idle) / args.concurrent:.3f} MiB per call); idle again {idle_after_concurrent} MiB", flush=True)
        before = round(rss_mib(srv.pid), 2)
        seq, points = srv.sequential(args.calls, args.concurrency, args.call_s, args.every)
        left = srv.wait_idle()
        after = srv.settled_rss()
        slope, growth = slope_per_1000(points, "rss_mib", args.warmup_fraction)
        slope_anon, growth_anon = slope_per_1000(points, "anon_mib", args.warmup_fraction)
        per_call = round((peak - idle) / args.concurrent, 3)
        after_warmup = [q["rss_mib"] for q in points if q["calls"] >= args.warmup_fraction * args.calls]
        result = {
            "loop": loop, "label": args.label or loop, "server_pid": srv.pid, "server_env": args.server_env,
            "range_after_warmup_mib": [min(after_warmup), max(after_warmup)] if after_warmup else None,
            "idle_rss_mib": idle, "concurrent_calls": args.concurrent, "concurrent_peak_rss_mib": peak,
            "rss_per_concurrent_call_mib": per_call, "concurrent_cpu_pct": concurrent_cpu,
            "cpu_ms_per_sequential_call": round(seq["server_cpu_s"] * 1000 / max(1, seq["calls"]), 2), "idle_after_concurrent_mib": idle_after_concurrent,
            "sequential": seq, "rss_before_sequential_mib": before, "rss_after_sequential_idle_mib": after,
            "calls_left": left,
            "slope_mib_per_1000_calls": slope, "growth_after_warmup_mib": growth,
            "anon_slope_mib_per_1000_calls": slope_anon, "anon_growth_after_warmup_mib": growth_anon,
            "flat": slope is not None and slope < args.max_slope,
            "per_call_ok": per_call < MAX_PER_CALL_MIB,
            "points": points,
        }
        print(f"[{loop}] {seq['calls']} calls ({seq['failed']} failed) in {seq['seconds']} s: RSS {before} -> "
              f"{after} MiB idle; slope after {args.warmup_fraction:.0%} {slope} MiB/1,000 calls "
              f"(anon {slope_anon}); growth {growth} MiB", flush=True)
        return result
    finally:
        srv.stop()


COLUMNS = [
    ("run", "label"), ("calls (failed)", None), ("idle MiB", "idle_rss_mib"),
    ("RSS/concurrent call MiB", "rss_per_concurrent_call_mib"), ("RSS before -> after MiB", None),
    ("slope MiB/1,000 calls", "slope_mib_per_1000_calls"), ("RSS min-max after warm-up MiB", None),
    ("seconds", None), ("server CPU ms/call", "cpu_ms_per_sequential_call"), ("flat", "flat"), ("< 2 MiB/call", "per_call_ok"),
]


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "|".join("---:" for _ in COLUMNS) + "|"]
    for r in runs:
        s = r["sequential"]
        cells = []
        for name, key in COLUMNS:
            if name == "calls (failed)":
                cells.append(f"{s['calls']} ({s['failed']})")
            elif name == "RSS before -> after MiB":
                cells.append(f"{r['rss_before_sequential_mib']} -> {r['rss_after_sequential_idle_mib']}")
            elif name == "RSS min-max after warm-up MiB":
                rng = r.get("range_after_warmup_mib")
                cells.append("-" if not rng else f"{rng[0]:.0f}-{rng[1]:.0f}")
            elif name == "seconds":
                cells.append(str(s["seconds"]))
            elif name == "server CPU ms/call" and key not in r:  # runs saved before this column
                cells.append(f"{s['server_cpu_s'] * 1000 / max(1, s['calls']):.2f}")
            else:
                v = r.get(key or name, r["loop"] if key == "label" else None)
                cells.append(("yes" if v else "**no**") if isinstance(v, bool) else "-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in runs:
        pts = r["points"]
        xs = [p["calls"] for p in pts]
        line, = ax.plot(xs, [p["rss_mib"] for p in pts], label=f"{r.get('label', r['loop'])}: VmRSS")
        sel = [p for p in pts if p["calls"] >= args.warmup_fraction * xs[-1]] if xs else []
        if len(sel) >= 2:
            fx = np.array([p["calls"] for p in sel], float)
            k, b = np.polyfit(fx, np.array([p["rss_mib"] for p in sel], float), 1)
            ax.plot(fx, k * fx + b, color=line.get_color(), ls="--", lw=1,
                    label=f"{r.get('label', r['loop'])}: fit, {k * 1000:.2f} MiB/1,000 calls")
    ax.set_xlabel(f"sequential calls ({args.concurrency} at a time, {args.call_s} s each)")
    ax.set_ylabel("server RSS, MiB")
    ax.set_title("Server memory over sequential calls (busy shared 2-core machine)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=10_000, help="sequential calls per event loop")
    p.add_argument("--concurrency", type=int, default=10, help="sequential calls in flight at once")
    p.add_argument("--call-s", type=float, default=0.2, help="how long each call stays up before the caller hangs up")
    p.add_argument("--every", type=int, default=100, help="sample RSS every this many calls")
    p.add_argument("--concurrent", type=int, default=100, help="calls at once for RSS per concurrent call")
    p.add_argument("--hold", type=float, default=3.0, help="seconds the concurrent calls are sampled")
    p.add_argument("--warmup-calls", type=int, default=50)
    p.add_argument("--warmup-fraction", type=float, default=0.2, help="the slope is fitted after this share of calls")
    p.add_argument("--max-slope", type=float, default=1.0, help="flat: slope below this, MiB per 1,000 calls")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle before an idle RSS reading")
    p.add_argument("--loops", default="asyncio,uvloop", help="AGENT_EVENT_LOOP values to run, one server each")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra server setting, e.g. AGENT_MALLOC_TRIM_SECONDS=0 (repeatable)")
    p.add_argument("--vad", default="silero", choices=["silero", "energy", "off"], help="AGENT_VAD for the server")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--name", default="rss", help="output file stem")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--label", default=None, help="the runs' name in the table and plot (default: the loop)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="seconds the server may take to start")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="run nothing: combine the runs of earlier outputs (e.g. one per loop, run side by side)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        earlier = [json.loads(Path(f).read_text()) for f in args.merge]
        runs = [r for e in earlier for r in e["runs"]]
        report = {"machine": earlier[0]["machine"], "settings": earlier[0]["settings"], "runs": runs,
                  "merged_from": [str(f) for f in args.merge]}
        for key in ("calls", "concurrency", "call_s", "warmup_fraction", "max_slope"):
            setattr(args, key, report["settings"][key])
    else:
        runs = [run_one(args, loop) for loop in args.loops.split(",") if loop]
        load = os.getloadavg()
        report = {
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform,
                        "load_average_at_end": [round(x, 2) for x in load],
                        "note": "shared machine: other engineers' tests ran at the same time"},
            "settings": {k: v for k, v in vars(args).items() if k not in ("out", "merge")},
            "runs": runs,
        }
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    md = table(runs)
    (out / f"{args.name}.md").write_text(md + "\n")
    if not args.no_plot and runs:
        plot(runs, args, out / f"{args.name}.png")
    print(md)
    for r in runs:
        print(f"{r['loop']}: flat (slope < {args.max_slope} MiB per 1,000 calls after {args.warmup_fraction:.0%}): "
              f"{'yes' if r['flat'] else 'NO'} ({r['slope_mib_per_1000_calls']}); "
              f"RSS per concurrent call < {MAX_PER_CALL_MIB} MiB: {'yes' if r['per_call_ok'] else 'NO'} "
              f"({r['rss_per_concurrent_call_mib']})")
    return 0 if all(r["flat"] and r["per_call_ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
