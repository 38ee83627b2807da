"""Load benchmark: concurrent full-duplex calls through the real server (`make bench-load`).

Processes (all on 127.0.0.1):
- the server, `python -m telephony_agent serve` (AGENT_WORKERS=1), pinned to one core;
- a fake OpenAI Realtime provider (`bench/loadgen/provider.py`) and the simulated Twilio
  callers (`bench/loadgen/callers.py`), pinned to the other core.

For each N in a rising series: place N calls (greeting answered instantly), let them settle,
measure a steady window, hang up, and collect:
- added latency through the bridge, p50/p99, both ways (caller frame sent -> provider append
  received; provider delta sent -> Twilio media received), from send stamps carried inside
  the audio frames (CLOCK_MONOTONIC, shared by all processes: no clock skew);
- barge-in reaction: the caller's first speech frame sent -> Twilio `clear` received (callers
  barge in by speaking real speech; the server's detector and the fake provider's VAD hear it),
  barge-ins that never got a `clear`, and false pauses (clears with no barge-in behind them,
  paused answers that resumed);
- time to first agent audio: `start` sent -> first media received, and the bridge overhead
  (that minus the provider's own handling time in the handshake and first response);
- server CPU per call (/proc/<pid>/stat), RSS per call ((RSS at N - RSS idle) / N), event-loop
  lag p99 (the server's agent_event_loop_lag_ms histogram over the window), the collector's
  passes over the window (agent_gc_pause_ms: full passes, their milliseconds, all passes'), and
  the detector's workload: Silero windows scored per call-second and the mean batch (its counters);
- frames lost (caller->provider and provider->caller, by sequence; an answer's end that never
  came counts the frames the provider says it sent) and late (> 60 ms one way).
It stops when the server can no longer keep real time, then runs 1,000 short sequential
calls to check RSS growth.

In the same run, with the same load generator and fake provider:
- `--bridges ours,alt,floor`: each bridge in turn on the same server core (`alt` is
  `bench/alt_bridge.py`, the common public sample's approach: parse, forward, no pacing, on
  FastAPI and `websockets`; `floor` is `bench/floor_bridge.py`, the same per message on bare
  asyncio protocols, the least a Python process can spend on these messages), at
  `--compare-at` calls and half that: CPU per call, marginal CPU per added call, p99 both ways,
  lost/late, the ratio ours/alt, and each bridge's CPU per call over the floor's;
- `--workers 1,2`: the product server with AGENT_WORKERS=1 on one core and 2 on both cores (which
  then also run the load generator), each worker carrying `--workers-at` calls (a process's CPU
  per call falls as its calls rise, so linear scaling is the same CPU per call at the same load
  per worker; `--workers-load total` shares them instead): CPU-seconds per call-second summed
  over every server process from /proc, and calls per core (100 % of a core / CPU % per call).
  `--workers-cores server` keeps every worker on the server core instead: with two cores and a
  load generator, that is how to see what running several processes costs per call, free of the
  generator;
- `--loop uvloop,asyncio` (the default; `auto` too): AGENT_EVENT_LOOP for the servers (uvicorn's
  `loop` for `alt`), the comparison once per loop, the rest on the first; whether uvloop was
  really loaded is read from /proc/<pid>/maps and reported;
- `--native auto|off`: AGENT_NATIVE for the server (the compiled call-path modules, `make native`,
  or the Python source); whether they were loaded is read from /proc/<pid>/maps ("compiled").
- `--record`: every call recorded (AGENT_RECORDINGS_DIR under `--out`, deleted when the server
  stops), for what keeping recordings costs per call, and the disk it takes per call-second.

Writes bench/out/load.json, load.png and load.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from telephony_agent.testing.ports import free_tcp_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this tree's bench/, as rss.py and sip_load.py

from bench.callgrind import callgrind_command, callgrind_totals, callgrind_window, last_callgrind_dump

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# when the server no longer keeps real time
MAX_LAG_P99_MS = 50.0
MAX_CPU_PCT = 95.0


class Proc:
    """A child speaking JSON lines on stdin/stdout."""

    def __init__(self, args: list[str], core: int | None, env: dict[str, str] | None = None, cwd: Path = REPO) -> None:
        self.p = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if core is not None else None,
        )

    def send(self, **cmd: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def read(self, want: str, timeout: float = 120) -> dict[str, Any]:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.p.args!r} exited ({self.p.poll()})")
            msg = json.loads(line)
            if msg.get("ok") == want:
                return msg
            if "warn" in msg:
                print("  loadgen:", msg["warn"], file=sys.stderr)
        raise TimeoutError(want)

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.send(cmd="exit")
                self.p.wait(3)
            except Exception:  # noqa: BLE001
                self.p.kill()
                self.p.wait()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def core_busy_s(core: int) -> float:
    """Seconds one core ran processes (any) or was stolen, from /proc/stat; interrupts excluded."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK  # user nice system steal (not irq/softirq)
    return 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(root: int) -> list[int]:
    """`root` and every process below it (a supervisor's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes; one that has exited counts 0."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except OSError:
            pass
    return total


def tree_rss_mib(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += rss_mib(pid)
        except OSError:
            pass
    return total


def mapped(pids: list[int], needle: str) -> bool:
    """Whether a file whose path holds `needle` is mapped into any of these processes."""
    for pid in pids:
        try:
            if needle in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            pass
    return False


def uvloop_loaded(pids: list[int]) -> bool:
    """Whether uvloop's extension is mapped in (the loop really in use)."""
    return mapped(pids, "/uvloop/")


def native_loaded(pids: list[int]) -> bool:
    """Whether the compiled call-path modules (`make native`) are mapped in."""
    return mapped(pids, "telephony_agent_native__mypyc")


def listeners(port: int) -> int:
    """Listening TCP sockets on this port (each SO_REUSEPORT worker has its own), from /proc/net."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


_BUCKET = re.compile(r'^agent_event_loop_lag_ms_bucket\{le="([^"]+)"\} ([0-9.e+]+)$', re.M)


def write_perf_summary(data: Path, out: Path) -> None:
    """Where the server's CPU went, from `perf record`: by shared object (the interpreter, the kernel,
    numpy, the compiled modules, uvloop...), then the 40 busiest symbols."""
    parts = []
    for sort, limit in (("dso", 30), ("dso,sym", 40)):
        report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio",
                                 "-g", "none"], capture_output=True, text=True, timeout=120, check=False).stdout
        lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
        parts.append("\n".join(lines[:limit]))
    out.write_text("\n\n".join(parts) + "\n")


def dir_bytes(path: Path | None) -> int:
    """Bytes in the files directly under `path` (0 for none, or while it does not exist)."""
    if path is None:
        return 0
    try:
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    except FileNotFoundError:
        return 0


def metrics_text(base: str) -> str:
    """The server's `/metrics`, read once per window edge for every figure taken from it; empty
    (and said on stderr) when it did not answer in 5 s."""
    try:
        _, text = http_get(base + "/metrics")
    except OSError as exc:
        print(f"  /metrics did not answer: {exc!r}", file=sys.stderr, flush=True)
        return ""
    return text


def lag_buckets(metrics: str) -> list[tuple[float, float]]:
    """The event-loop lag histogram in a `/metrics` text; empty when it has none (alt)."""
    return [(float("inf") if le == "+Inf" else float(le), float(v)) for le, v in _BUCKET.findall(metrics)]


_GC = re.compile(r'^agent_gc_pause_ms_(count|sum)\{generation="([012])"\} ([0-9.e+]+)$', re.M)


def gc_pauses(metrics: str) -> dict[str, float]:
    """The server's GC pass counts and milliseconds by generation (`count2`, `sum2`, ...); empty
    when it has none (alt, floor)."""
    return {f"{kind}{gen}": float(v) for kind, gen, v in _GC.findall(metrics)}


_VAD = re.compile(r'^agent_vad_(windows|batches)_total ([0-9.e+]+)$', re.M)


def vad_counts(metrics: str) -> dict[str, float]:
    """The Silero counters (windows scored, batches run) in a `/metrics` text; empty when it has
    none. They are flushed every 0.25 s: over a 10 s window, good to a few per cent."""
    return {name: float(v) for name, v in _VAD.findall(metrics)}


def hist_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style histogram_quantile over the window (linear within a bucket)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=False)]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-9))
        prev_le, prev_c = le, c
    return prev_le


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(np.asarray(values), q)), 3)


BRIDGES = {
    "ours": [sys.executable, "-m", "telephony_agent", "serve"],
    "alt": [sys.executable, "-m", "bench.alt_bridge"],
    "floor": [sys.executable, "-m", "bench.floor_bridge"],
}


def command_line(argv: list[str] | None) -> str:
    """How the benchmark was run, for its report: the script's name and its arguments."""
    return " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])


def server_env(provider_url: str, port: int, **extra: str) -> dict[str, str]:
    """The benchmark's server environment: this process's, minus any AGENT_/provider/Twilio
    setting but AGENT_NATIVE (so `AGENT_NATIVE=off` runs any benchmark's server on the Python
    source), plus a fake OpenAI provider at `provider_url` (audio/pcmu passthrough), no request
    validation, no call limit, quiet logs; `extra` adds or overrides settings."""
    env = {k: v for k, v in os.environ.items()
           if k == "AGENT_NATIVE" or not k.startswith(("AGENT_", "OPENAI_", "GEMINI_", "TWILIO_"))}
    env.update(
        PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'codecs'}",  # this checkout's code, not an installed copy
        AGENT_PROVIDER="openai", OPENAI_API_KEY="dummy", AGENT_OPENAI_URL=provider_url,
        AGENT_OPENAI_AUDIO="pcmu", AGENT_TWILIO_VALIDATE="false", AGENT_MAX_CALLS="100000", AGENT_WORKERS="1",
        AGENT_LOG_LEVEL="WARNING", AGENT_GREETING="Hello, thanks for calling.", AGENT_HOST="127.0.0.1",
        AGENT_PORT=str(port), AGENT_IDLE_TIMEOUT_SECONDS="600", AGENT_MAX_LOOP_LAG_MS="100000",
        AGENT_DRAIN_SECONDS="1",
    )
    env.update(extra)
    return env


class Server:
    """A bridge server process started for a benchmark (and, with several workers, its children)."""

    def __init__(self, p: subprocess.Popen[bytes], base: str, log: Any) -> None:
        self.p = p
        self.pid = p.pid
        self.base = base
        self.log = log

    def pids(self) -> list[int]:
        return tree_pids(self.pid)

    def poll(self) -> int | None:
        return self.p.poll()

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM (the server drains), then SIGKILL to its process group after `timeout`."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        try:  # workers left behind by a killed supervisor
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def start_server(env: dict[str, str], cores: set[int], log_path: Path, *, cmd: list[str] | None = None,
                 cwd: Path = OUT, ready_timeout: float = 30.0) -> Server:
    """Start a bridge server for a benchmark and wait until `/healthz` answers 200.

    `env` is the whole environment (see `server_env`; AGENT_HOST/AGENT_PORT say where it
    listens), `cores` the CPUs it and its workers may run on, `cmd` the server command (default:
    the product's `serve`). It runs in its own process group, so `Server.stop` also ends the
    workers of a supervisor that did not stop them. Output goes to `log_path`.
    """
    cmd = cmd or BRIDGES["ours"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")  # closed by Server.stop
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )
    server = Server(p, f"http://{env.get('AGENT_HOST', '127.0.0.1')}:{env['AGENT_PORT']}", log)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            if http_get(server.base + "/healthz")[0] == 200:
                return server
        except OSError:
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            server.stop(1)
            raise RuntimeError(f"server did not start; see {log_path}")
        time.sleep(0.1)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()  # everything a run writes goes under --out
        self.procs: list[Any] = []
        self.server: Server | None = None
        self.recordings: Path | None = None
        self.callers: Proc | None = None
        self.workers = 1
        self.cores = {args.server_core}
        self.rss0 = 0.0
        self.rss_before_seq = 0.0

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        """The fake provider, shared by every server of the run."""
        a = self.args
        self.env = dict(os.environ, PYTHONPATH=str(REPO))
        vad = ["--provider-vad", a.provider_vad] if getattr(a, "provider_vad", None) else []
        self.provider = Proc([sys.executable, "-m", "bench.loadgen.provider", "--seed", str(a.seed), *vad],
                             a.gen_core, self.env)
        self.procs.append(self.provider)
        self.provider_port = self.provider.read("ready")["port"]
        os.sched_setaffinity(0, {a.gen_core})

    def use(self, bridge: str, workers: int = 1, loop: str = "auto") -> None:
        """Start `bridge` (ours, alt or floor) with this many workers and event loop, and callers aimed at it.

        One worker runs on the server core alone; more run on the server core and the load
        generator's (this machine has two), or on the server core alone with `--workers-cores
        server`."""
        a = self.args
        self.release()
        self.bridge, self.workers, self.loop = bridge, workers, loop
        spread = workers > 1 and a.workers_cores == "spread"
        self.cores = {a.server_core, a.gen_core} if spread else {a.server_core}
        self.port = free_tcp_port()
        env = server_env(f"ws://127.0.0.1:{self.provider_port}/v1/realtime", self.port, AGENT_VAD=a.vad,
                         AGENT_WORKERS=str(workers), AGENT_EVENT_LOOP=loop, AGENT_NATIVE=a.native)
        if a.record:  # every call recorded (JSONL and WAV), as an operator who keeps them would run it
            self.recordings = self.out / f"recordings-{bridge}"
            env["AGENT_RECORDINGS_DIR"] = str(self.recordings)
        cmd, ready = BRIDGES[bridge], 30.0
        if a.callgrind:
            self.callgrind_file = self.out / "callgrind" / f"{bridge}-{loop}"
            self.callgrind_file.parent.mkdir(parents=True, exist_ok=True)
            cmd, ready = callgrind_command(cmd, self.callgrind_file), 300.0
        self.server = start_server(env, self.cores, self.out / f"server-{bridge}-w{workers}-{loop}.log",
                                   cmd=cmd, ready_timeout=ready)
        self.base = self.server.base
        if workers > 1 and bridge == "ours":  # until every worker listens, the kernel gives the others all calls
            deadline = time.monotonic() + 60
            while listeners(self.port) < workers and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"  {listeners(self.port)} sockets listening on port {self.port}", flush=True)
        barge = ["--seed", str(a.seed), "--barge-p", str(a.barge_p)] if getattr(a, "barge_p", None) is not None else []
        self.callers = Proc([sys.executable, "-m", "bench.loadgen.callers", "--port", str(self.port), *barge],
                            a.gen_core, self.env)
        self.callers.read("ready")

    def release(self) -> None:
        if self.callers is not None:
            self.callers.stop()
            self.callers = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.recordings is not None:
            shutil.rmtree(self.recordings, ignore_errors=True)  # a 300-call step writes some 500 MB
            self.recordings = None

    def stop(self) -> None:
        self.release()
        for p in self.procs:
            p.stop()

    def wait_idle(self, timeout: float = 20) -> int:
        """0 once /readyz says no call is active; with several workers (each answers for itself,
        the kernel picks one per connection) only after 12 such answers in a row."""
        deadline = time.monotonic() + timeout
        active = -1
        zeros = 0
        while time.monotonic() < deadline:
            try:
                _, body = http_get(self.base + "/readyz")
            except OSError:  # a starved server: keep asking until the deadline
                continue
            active = json.loads(body)["active_calls"]
            zeros = zeros + 1 if active == 0 else 0
            if zeros >= (1 if self.workers == 1 else 12):
                return 0
            time.sleep(0.1 if active else 0.02)
        return active

    # -- one step -------------------------------------------------------------------------
    def step(self, n: int, steady_s: float, settle_s: float) -> dict[str, Any]:
        assert self.server is not None and self.callers is not None
        pid = self.server.pid
        ramp_s = max(0.5, n / self.args.ramp_rate)
        self.callers.send(cmd="run", n=n, ramp_s=ramp_s)
        up = self.callers.read("up", timeout=ramp_s + 60)
        time.sleep(settle_s)
        for p in (self.provider, self.callers):
            p.send(cmd="measure", on=True)
            p.read("measure")
        pids = self.server.pids()
        metrics = metrics_text(self.base)
        lag0, vad0, gc0 = lag_buckets(metrics), vad_counts(metrics), gc_pauses(metrics)
        if self.args.callgrind:  # counted from here to the end of the window
            callgrind_window(pid, True)
        k0 = sum(core_busy_s(c) for c in self.cores)
        rec0 = dir_bytes(self.recordings)
        c0, w0 = tree_cpu_s(pids), time.monotonic()
        per0 = [tree_cpu_s([q]) for q in pids]
        g0 = cpu_s(self.provider.p.pid) + cpu_s(self.callers.p.pid)
        prof = None
        if self.args.profile_at == n:
            prof = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-d", str(int(steady_s)),
                 "-r", "200", "-f", "raw", "-o", str(self.out / f"profile-{n}.txt"), *self.args.profile_flags.split()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        perf = None
        if self.args.perf_at == n:
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-p", str(pid), "-o",
                                     str(self.out / f"perf-{n}.data"), "--", "sleep", str(int(steady_s))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rss = []
        end = w0 + steady_s
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss.append(tree_rss_mib(pids))
        c1, w1 = tree_cpu_s(pids), time.monotonic()
        rec1 = dir_bytes(self.recordings)
        instructions = None
        if self.args.callgrind:
            callgrind_window(pid, False)
            instructions = callgrind_totals(last_callgrind_dump(self.callgrind_file, pid).read_text())
        per1 = [tree_cpu_s([q]) for q in pids]
        g1 = cpu_s(self.provider.p.pid) + cpu_s(self.callers.p.pid)
        k1 = sum(core_busy_s(c) for c in self.cores)
        gen_on_server_cores = (g1 - g0) if self.args.gen_core in self.cores else 0.0
        self.foreign_pct = ((k1 - k0) - (c1 - c0) - gen_on_server_cores) / (w1 - w0) * 100
        if prof is not None:
            prof.wait(30)
        if perf is not None:
            perf.wait(30)
            write_perf_summary(self.out / f"perf-{n}.data", self.out / f"perf-{n}.txt")
        metrics = metrics_text(self.base)
        lag1, vad1, gc1 = lag_buckets(metrics), vad_counts(metrics), gc_pauses(metrics)
        for p in (self.provider, self.callers):
            p.send(cmd="measure", on=False)
            p.read("measure")
        self.callers.send(cmd="stop")
        crep = self.callers.read("stopped", timeout=120)
        left = self.wait_idle()
        time.sleep(0.3)
        self.provider.send(cmd="report")
        prep = self.provider.read("report")
        row = self.summarise(n, up, crep, prep, (c1 - c0) / (w1 - w0) * 100, (g1 - g0) / (w1 - w0) * 100,
                             max(rss), hist_quantile(lag0, lag1, 0.99) if lag0 and lag1 else None, left)
        row["processes_cpu_pct"] = [round((b - a_) / (w1 - w0) * 100, 1) for a_, b in zip(per0, per1, strict=True)]
        row["uvloop_loaded"] = uvloop_loaded(pids)
        row["native_loaded"] = native_loaded(pids)
        if self.recordings is not None:  # what the recordings grew by over the window (JSONL and WAV)
            row["recording_kib_per_call_s"] = round((rec1 - rec0) / 1024 / (n * (w1 - w0)), 1)
        # the collector over the window: full passes (each holds every call) and the time in all passes
        if gc0 and gc1:
            row["gc_full_passes"] = int(gc1.get("count2", 0) - gc0.get("count2", 0))
            row["gc_full_ms"] = round(gc1.get("sum2", 0) - gc0.get("sum2", 0), 1)
            row["gc_ms"] = round(sum(gc1.get(f"sum{g}", 0) - gc0.get(f"sum{g}", 0) for g in range(3)), 1)
        # the detector's workload: Silero windows scored per call-second, and per batch
        windows = vad1.get("windows", 0.0) - vad0.get("windows", 0.0)
        batches = vad1.get("batches", 0.0) - vad0.get("batches", 0.0)
        row["vad_windows_per_call_s"] = round(windows / n / (w1 - w0), 2) if vad0 and vad1 else None
        row["vad_batch_mean"] = round(windows / batches, 1) if batches > 0 else None
        # instructions the server ran per call-second of the window (`--callgrind`)
        row["minstr_per_call_s"] = round(instructions / n / (w1 - w0) / 1e6, 3) if instructions is not None else None
        return row

    def summarise(self, n: int, up: dict[str, Any], crep: dict[str, Any], prep: dict[str, Any], cpu_pct: float,
                  gen_pct: float, rss: float, lag_p99: float | None, left: int) -> dict[str, Any]:
        conns = {c["conn"]: c for c in prep["conns"]}
        by_caller = {c["caller"]: c for c in prep["conns"] if c["caller"] >= 0}
        ttfa, overhead, barge = [], [], []
        lost_in = lost_out = missed_barge = reordered = underruns = foreign = 0
        lost_tails, cut_dry = tails_lost([t for call in crep["calls"] for t in call["tails"]], prep["conns"])
        lost_out += lost_tails
        unprompted = resumed = turns = idle_turns = 0
        dropped_before_connect = []
        for call in crep["calls"]:
            lost_out += call["lost"]
            reordered += call["reordered"]
            underruns += call["underruns"]
            foreign += call["foreign"]
            pc = conns.get(call["conn"])
            if call["ttfa_ms"] is not None:
                ttfa.append(call["ttfa_ms"])
                if pc is not None and pc["own_ms"] is not None:
                    overhead.append(call["ttfa_ms"] - pc["own_ms"])
            # barge-in: the caller's first speech frame sent -> the clear it got (None: never)
            for onset, clear in call["barges_ns"]:
                if clear is None:
                    missed_barge += 1
                else:
                    barge.append((clear - onset) / 1e6)
            unprompted += call["clears_unprompted"]
            resumed += call["resumed"]
            turns += call["turns"]
            idle_turns += call["idle_turns"]
            rx = by_caller.get(call["call"])
            if rx is None:
                lost_in += call["frames_sent"]
                continue
            expected = call["last_seq"] - rx["first_seq"] + 1
            lost_in += max(0, expected - rx["count"])
            reordered += rx["gaps"] if expected == rx["count"] else 0
            dropped_before_connect.append(rx["first_seq"] * 20)
        ol, il, of = crep["out_latency_ms"], prep["in_latency_ms"], crep["out_first_latency_ms"]
        row = {
            "calls": n,
            "calls_up": up["calls"],
            "in_p50_ms": il["p50"], "in_p99_ms": il["p99"], "in_max_ms": il["max"], "in_frames": il["n"],
            "out_p50_ms": ol["p50"], "out_p99_ms": ol["p99"], "out_max_ms": ol["max"], "out_frames": ol["n"],
            "out_first_p50_ms": of["p50"], "out_first_p99_ms": of["p99"],
            "bargein_p50_ms": pct(barge, 50), "bargein_p99_ms": pct(barge, 99), "bargeins": len(barge),
            "bargein_missed": missed_barge, "bargeins_at_answer_end": sum(c["barges_at_end"] for c in crep["calls"]),
            "false_pauses": unprompted + resumed,
            "clears_unprompted": unprompted, "pauses_resumed": resumed, "caller_turns": turns,
            "caller_idle_turns": idle_turns,
            "provider_speech_started": sum(len(c["speech_started_ns"]) for c in prep["conns"]),
            "ttfa_p50_ms": pct(ttfa, 50), "ttfa_p99_ms": pct(ttfa, 99),
            "ttfa_overhead_p50_ms": pct(overhead, 50), "ttfa_overhead_p99_ms": pct(overhead, 99),
            "cpu_pct": round(cpu_pct, 1), "cpu_pct_per_call": round(cpu_pct / n, 3),
            "rss_mib": round(rss, 1), "rss_per_call_mib": round((rss - self.rss0) / n, 3),
            "loop_lag_p99_ms": None if lag_p99 is None else round(lag_p99, 2),
            "frames_lost": lost_in + lost_out, "frames_lost_in": lost_in, "frames_lost_out": lost_out,
            "frames_late": prep["in_late"] + crep["out_late"], "frames_reordered": reordered, "answers_cut_dry": cut_dry,
            "playout_underruns": underruns, "foreign_frames": foreign + prep["bad_frames"],
            "ms_dropped_before_provider_p50": pct(dropped_before_connect, 50),
            "loadgen_cpu_pct": round(gen_pct, 1), "loadgen_tick_lag_p99_ms": crep["tick_lag_ms"]["p99"],
            "calls_left_after_hangup": left,
            "other_load_on_server_core_pct": round(self.foreign_pct, 1),
        }
        return row

    def sequential(self, total: int) -> dict[str, Any]:
        assert self.server is not None and self.callers is not None
        pid = self.server.pid
        self.callers.send(cmd="sequential", total=total, concurrency=20, call_s=0.5, every=100)
        points: list[dict[str, Any]] = []
        while True:
            msg = self.callers.read("progress", timeout=300) if len(points) < total // 100 else None
            if msg is None:
                break
            time.sleep(0.0)
            points.append({"calls": msg["done"], "rss_mib": round(rss_mib(pid), 1), "failed": msg["failed"]})
            print(f"  sequential: {msg['done']} calls, RSS {points[-1]['rss_mib']} MiB", flush=True)
        final = self.callers.read("sequential", timeout=120)
        left = self.wait_idle()
        time.sleep(1.0)
        after = rss_mib(pid)
        self.provider.send(cmd="report")
        self.provider.read("report")
        import numpy as np

        xs = np.array([p["calls"] for p in points], float)
        ys = np.array([p["rss_mib"] for p in points], float)
        half = xs >= xs.max() / 2 if len(xs) else xs
        slope = float(np.polyfit(xs[half], ys[half], 1)[0]) * 1000 if half.sum() >= 2 else None
        return {
            "calls": final["done"], "failed": final["failed"], "concurrency": 20, "call_s": 0.5,
            "rss_before_mib": self.rss_before_seq, "rss_after_mib": round(after, 1), "points": points,
            "slope_second_half_mib_per_1000_calls": None if slope is None else round(slope, 2),
            "calls_left": left,
        }


def tails_lost(tails: list[tuple[int, int, int]], conns: list[dict[str, Any]]) -> tuple[int, int]:
    """Answers whose end never reached a caller, with no `clear` to say why: (frames lost,
    answers cut dry).

    The provider says how many frames of each answer it sent. One it cancelled after the caller
    had got all of them (the caller spoke in a gap while the bridge fell behind) needed no
    `clear` and lost nothing; any frame sent and never received is lost (one, if unknown)."""
    sent = {(c["conn"], resp): (frames, cancelled) for c in conns for resp, frames, cancelled in c.get("answers", ())}
    lost = cut = 0
    for conn, resp, got in tails:
        frames, cancelled = sent.get((conn, resp), (got + 1, False))
        lost += max(0, frames - got)
        cut += cancelled and frames <= got
    return lost, cut


def check(row: dict[str, Any]) -> list[str]:
    why = []
    if row["loop_lag_p99_ms"] is not None and row["loop_lag_p99_ms"] > MAX_LAG_P99_MS:
        why.append(f"loop lag p99 {row['loop_lag_p99_ms']} ms > {MAX_LAG_P99_MS}")
    if row["frames_lost"] or row["frames_late"]:
        why.append(f"{row['frames_lost']} frames lost, {row['frames_late']} late")
    if row["cpu_pct"] > MAX_CPU_PCT:
        why.append(f"CPU {row['cpu_pct']}% > {MAX_CPU_PCT}%")
    if row["calls_up"] < row["calls"]:
        why.append(f"only {row['calls_up']} of {row['calls']} calls connected")
    if row.get("bargein_missed"):
        why.append(f"{row['bargein_missed']} of {row['bargein_missed'] + row['bargeins']} barge-ins got no clear")
    if row.get("false_pauses"):
        why.append(f"{row['false_pauses']} false pauses ({row['clears_unprompted']} clears with no barge-in, "
                   f"{row['pauses_resumed']} paused answers resumed)")
    return why


COLUMNS = [
    ("calls", "calls"), ("in p50/p99 ms", ("in_p50_ms", "in_p99_ms")), ("out p50/p99 ms", ("out_p50_ms", "out_p99_ms")),
    ("barge-in p50/p99 ms", ("bargein_p50_ms", "bargein_p99_ms")),
    ("first audio p50/p99 ms", ("ttfa_p50_ms", "ttfa_p99_ms")),
    ("bridge overhead p50/p99 ms", ("ttfa_overhead_p50_ms", "ttfa_overhead_p99_ms")),
    ("CPU % (per call)", ("cpu_pct", "cpu_pct_per_call")), ("RSS/call MiB", "rss_per_call_mib"),
    ("loop lag p99 ms", "loop_lag_p99_ms"), ("lost/late", ("frames_lost", "frames_late")),
]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key in COLUMNS:
            if isinstance(key, tuple):
                a, b = (_fmt(r[k]) for k in key)
                cells.append(f"{a} ({b})" if key[0] == "cpu_pct" else f"{a} / {b}")
            else:
                cells.append(_fmt(r[str(key)]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["calls"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("in_p99_ms", "caller→provider p99"), ("out_p99_ms", "provider→caller p99"),
                       ("bargein_p99_ms", "barge-in p99"), ("loop_lag_p99_ms", "loop lag p99")):
        ax.plot(n, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label=label)
    ax.set_xlabel("concurrent full-duplex calls (one server core)")
    ax.set_ylabel("milliseconds")
    ax.axhline(20, color="grey", ls=":", lw=1)
    ax2 = ax.twinx()
    ax2.plot(n, [r["cpu_pct"] for r in rows], color="black", ls="--", marker="s", label="server CPU %")
    ax2.set_ylabel("server CPU, % of one core")
    ax2.set_ylim(0, 110)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ax.set_title("Bridge latency and CPU vs concurrent calls")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_floor_ratios(compare: list[dict[str, Any]]) -> None:
    """Each bridge's CPU per call (and per added call) over the floor's on the same loop, where the
    floor was measured: how far a bridge is from the least a Python process spends on its messages."""
    floors = {e["loop"]: e for e in compare if e["bridge"] == "floor" and e["cpu_pct_per_call"]}
    for e in compare:
        floor = floors.get(e["loop"])
        if floor is None or e is floor:
            continue
        e["over_floor"] = round(e["cpu_pct_per_call"] / floor["cpu_pct_per_call"], 3)
        e["marginal_over_floor"] = (
            round(e["marginal_cpu_pct_per_call"] / floor["marginal_cpu_pct_per_call"], 3)
            if e["marginal_cpu_pct_per_call"] and floor["marginal_cpu_pct_per_call"] else None)
        if e["minstr_per_call_s"] and floor["minstr_per_call_s"]:  # `--callgrind` runs
            e["instructions_over_floor"] = round(e["minstr_per_call_s"] / floor["minstr_per_call_s"], 3)


def _instructions(ratio: float | None) -> str:
    return "" if ratio is None else f", instructions per call {_fmt(ratio)} (callgrind)"


def compare_table(entries: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> str:
    lines = ["| bridge | loop (uvloop loaded) | calls | CPU % (per call) | marginal CPU %/call | in p99 ms | out p99 ms "
             "| barge-in p99 ms | lost/late | other load on core % | kept real time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        lines.append(
            f"| {e['bridge']} | {e['loop']} ({'yes' if e['uvloop_loaded'] else 'no'}) | {e['calls']} "
            f"| {_fmt(e['cpu_pct'])} ({_fmt(e['cpu_pct_per_call'])}) | {_fmt(e['marginal_cpu_pct_per_call'])} "
            f"| {_fmt(e['in_p99_ms'])} | {_fmt(e['out_p99_ms'])} | {_fmt(e['bargein_p99_ms'])} "
            f"| {e['frames_lost']} / {e['frames_late']} | {_fmt(e['other_load_on_server_core_pct'])} "
            f"| {'yes' if e['kept_real_time'] else 'no'} |")
    for e in entries:
        if "over_floor" in e:
            lines.append(f"\n{e['bridge']}/floor ({e['loop']}): CPU per call {_fmt(e['over_floor'])}, "
                         f"marginal {_fmt(e['marginal_over_floor'])}" + _instructions(e.get("instructions_over_floor")))
    for r in ratios:
        same = r["uvloop_loaded"]["ours"] == r["uvloop_loaded"]["alt"]
        lines.append(f"\nours/alt ({r['loop']}): CPU per call {_fmt(r['cpu_per_call'])}, "
                     f"marginal {_fmt(r['marginal_cpu_per_call'])}" + _instructions(r["instructions_per_call"])
                     + ("" if same else " (NOT the same event loop: the product ignored AGENT_EVENT_LOOP)")
                     + ("" if r["valid"] else " (NOT valid: a bridge lost real time, so its CPU is what it was given)"))
    return "\n".join(lines)


def workers_table(entries: list[dict[str, Any]]) -> str:
    lines = ["| workers | cores | calls | server CPU % (per process) | CPU-s per call-second | calls per core "
             "| in/out p99 ms | lost/late | load generator CPU % (on server cores?) | kept real time |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        procs = "+".join(_fmt(x) for x in e["processes_cpu_pct"])
        lines.append(
            f"| {e['workers']} | {','.join(map(str, e['cores']))} | {e['calls']} | {_fmt(e['server_cpu_pct'])} ({procs}) "
            f"| {e['cpu_s_per_call_s']:.5f} | {_fmt(e['calls_per_core'])} | {_fmt(e['in_p99_ms'])} / {_fmt(e['out_p99_ms'])} "
            f"| {e['frames_lost']} / {e['frames_late']} | {_fmt(e['loadgen_cpu_pct'])} "
            f"({'yes' if e['loadgen_on_server_cores'] else 'no'}) | {'yes' if e['kept_real_time'] else 'no'} |")
    return "\n".join(lines)


def print_row(label: str, row: dict[str, Any]) -> None:
    windows, batch = row.get("vad_windows_per_call_s"), row.get("vad_batch_mean")
    silero = "" if windows is None else f"  silero {windows} windows/call-s (batches of {batch})"
    minstr = row.get("minstr_per_call_s")
    instr = "" if minstr is None else f"  {minstr} M instructions/call-s"
    full = row.get("gc_full_passes")
    gc_ = "" if full is None else f"  gc {row['gc_ms']} ms ({full} full, {row['gc_full_ms']} ms)"
    kib = row.get("recording_kib_per_call_s")
    rec = "" if kib is None else f"  recorded {kib} KiB/call-s"
    print(
        f"{label} N={row['calls']:4d} in {row['in_p50_ms']}/{row['in_p99_ms']} ms  out {row['out_p50_ms']}/{row['out_p99_ms']} ms  "
        f"barge {row['bargein_p50_ms']}/{row['bargein_p99_ms']} ms  ttfa {row['ttfa_p50_ms']} "
        f"(overhead {row['ttfa_overhead_p50_ms']}) ms  cpu {row['cpu_pct']}% ({row['cpu_pct_per_call']}/call)  "
        f"rss/call {row['rss_per_call_mib']} MiB  lag p99 {row['loop_lag_p99_ms']} ms  lost {row['frames_lost']} "
        f"late {row['frames_late']}  loadgen cpu {row['loadgen_cpu_pct']}%  "
        f"other load on server core {row['other_load_on_server_core_pct']}%{silero}{gc_}{rec}"
        f"{'  compiled' if row.get('native_loaded') else ''}"
        f"{instr}",
        flush=True,
    )


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", default="25,50,100,150,200,250,300,400,500",
                   help="rising call counts for the product server ('': skip)")
    p.add_argument("--steady", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--ramp-rate", type=float, default=100.0, help="calls started per second")
    p.add_argument("--sequential", type=int, default=1000, help="short sequential calls for the RSS check (0: skip)")
    p.add_argument("--bridges", default="ours,alt,floor",
                   help="bridges compared at --compare-at calls: ours (the product), alt (bench/alt_bridge.py), "
                        "floor (bench/floor_bridge.py)")
    p.add_argument("--compare-at", type=int, default=100,
                   help="calls for the bridge comparison (also measured at half, for the marginal cost; 0: skip)")
    p.add_argument("--workers", default="1,2", help="AGENT_WORKERS values for calls per core ('': skip)")
    p.add_argument("--workers-at", type=int, default=None,
                   help="calls per worker for the workers steps (default --compare-at): N workers carry N times this")
    p.add_argument("--workers-load", choices=["per-worker", "total"], default="per-worker",
                   help="per-worker: each worker carries --workers-at calls, as one did alone (linear scaling "
                        "means the same CPU per call); total: --workers-at calls shared by all of them")
    p.add_argument("--workers-cores", choices=["spread", "server"], default="spread",
                   help="several workers on the server and generator cores (spread), or all on the server core")
    p.add_argument("--loop", default="uvloop,asyncio",
                   help="AGENT_EVENT_LOOP values (auto, asyncio, uvloop): the comparison runs once for each, both "
                        "bridges on the same loop; the series, sequential calls and workers use the first (by "
                        "default uvloop, which the product runs where it is installed: AGENT_EVENT_LOOP=auto)")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--gen-core", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--profile-at", type=int, default=None, help="py-spy record the server during this step (raw stacks in profile-N.txt under --out)")
    p.add_argument("--perf-at", type=int, default=None,
                   help="perf record the server during this step (kernel included): its CPU by shared object and "
                        "symbol in perf-N.txt under --out (perf's sampling costs CPU: that step's figures run high)")
    p.add_argument("--profile-flags", default="--nonblocking", help="extra py-spy flags, e.g. '--idle --native'")
    p.add_argument("--keep-going", action="store_true", help="run the whole series even past real time")
    p.add_argument("--vad", default="silero", choices=["silero", "energy", "off"], help="AGENT_VAD for the server")
    p.add_argument("--native", default=os.environ.get("AGENT_NATIVE", "auto"), choices=["auto", "off"],
                   help="AGENT_NATIVE for the server: the compiled call-path modules (`make native`) or the source")
    p.add_argument("--record", action="store_true",
                   help="AGENT_RECORDINGS_DIR for the server: every call recorded (JSONL and two-channel WAV) under "
                        "--out, deleted when the server stops")
    p.add_argument("--provider-vad", default="on", choices=["on", "off"],
                   help="off: the fake provider never sends speech_started (the server's detector alone barges in)")
    p.add_argument("--callgrind", action="store_true",
                   help="run each server under valgrind's callgrind and count its instructions over each step's "
                        "steady window (minstr_per_call_s): runs agree to about 2.5 %% where CPU time moves by 20 "
                        "points (a server under valgrind falls behind real time, so batching still varies; "
                        "bench/instructions.py replays to 0.1 %%); the server runs ~50x slower, so a few calls only "
                        "(--series 6 --steady 30), with --workers '' --sequential 0")
    p.add_argument("--barge-p", type=float, default=0.4, help="share of answers a caller barges into (by speaking)")
    args = p.parse_args(argv)
    bridges, loops = _list(args.bridges), _list(args.loop) or ["auto"]
    workers = [int(x) for x in _list(args.workers)]
    workers_at = args.workers_at or args.compare_at
    series = [int(x) for x in _list(args.series)]
    if args.callgrind and (workers or args.sequential):
        p.error("--callgrind needs --workers '' --sequential 0 (a worker pool and 1,000 calls under valgrind take hours)")
    if args.perf_at is not None and shutil.which("perf") is None:
        p.error("--perf-at needs the perf tool (Debian: linux-perf)")
    for b in bridges:
        if b not in BRIDGES:
            p.error(f"unknown bridge {b!r} (choose from {', '.join(BRIDGES)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    compare: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []

    def measure(label: str, n: int) -> dict[str, Any]:
        """One step; measured again once if it lost real time while other processes used the core."""
        row = bench.step(n, args.steady, args.settle)
        print_row(label, row)
        if check(row) and row["other_load_on_server_core_pct"] > 10:
            print(f"  other processes used {row['other_load_on_server_core_pct']}% of the server core; "
                  "measuring this step again", flush=True)
            time.sleep(2)
            row = bench.step(n, args.steady, args.settle)
            row["retried"] = True
            print_row(label, row)
        return row

    def warm_up() -> None:
        """Imports and first connections, then the idle baseline for RSS per call."""
        assert bench.server is not None
        bench.rss0 = 0.0
        bench.step(2, 1.0, 0.5)
        time.sleep(0.5)
        bench.rss0 = tree_rss_mib(bench.server.pids())
        print(f"{bench.bridge} (workers {bench.workers}, loop {bench.loop}): server pid {bench.server.pid} "
              f"on cores {sorted(bench.cores)}; idle RSS {bench.rss0:.1f} MiB", flush=True)

    try:
        bench.start()
        stopped_by = None
        seq = None
        runs: list[tuple[str, str]] = [("ours", loops[0])] if series or args.sequential else []
        if args.compare_at > 0:
            runs += [(b, lp) for lp in loops for b in bridges if (b, lp) not in runs]
        for bridge, loop in runs:
            bench.use(bridge, 1, loop)
            warm_up()
            pid = bench.server.pid  # type: ignore[union-attr]
            if (bridge, loop) == ("ours", loops[0]):
                for n in series:
                    row = measure("ours", n)
                    rows.append(row)
                    why = check(row)
                    if why:
                        row["real_time_lost"] = why
                        stopped_by = f"N={n}: " + "; ".join(why)
                        print("  real time lost:", stopped_by, flush=True)
                        if not args.keep_going:
                            break
                if args.sequential:
                    bench.wait_idle()
                    bench.rss_before_seq = round(rss_mib(pid), 1)
                    seq = bench.sequential(args.sequential)
            if args.compare_at > 0 and bridge in bridges:
                points = sorted({max(1, args.compare_at // 2), args.compare_at})
                steps = [measure(f"{bridge}/{loop}", n) for n in points]
                top = steps[-1]
                slope = None
                if len(steps) == 2:
                    slope = round((steps[1]["cpu_pct"] - steps[0]["cpu_pct"]) / (points[1] - points[0]), 3)
                compare.append({
                    "bridge": bridge, "loop": loop, "uvloop_loaded": top["uvloop_loaded"], "calls": top["calls"],
                    "cpu_pct": top["cpu_pct"], "cpu_pct_per_call": top["cpu_pct_per_call"],
                    "marginal_cpu_pct_per_call": slope, "marginal_between": points,
                    "in_p99_ms": top["in_p99_ms"], "out_p99_ms": top["out_p99_ms"],
                    "bargein_p99_ms": top["bargein_p99_ms"], "frames_lost": top["frames_lost"],
                    "frames_late": top["frames_late"], "calls_up": top["calls_up"],
                    "other_load_on_server_core_pct": top["other_load_on_server_core_pct"],
                    "minstr_per_call_s": top["minstr_per_call_s"],
                    # a server behind real time used what it was given, not what the calls needed
                    "kept_real_time": not any(check(st) for st in steps), "steps": steps,
                })
                if loop != "auto" and top["uvloop_loaded"] != (loop == "uvloop"):
                    print(f"  note: AGENT_EVENT_LOOP={loop} but uvloop {'is' if top['uvloop_loaded'] else 'is not'} "
                          f"loaded in {bridge}: the setting was not honoured", flush=True)
            bench.release()
        by = {(e["bridge"], e["loop"]): e for e in compare}
        for lp in loops:
            o, a = by.get(("ours", lp)), by.get(("alt", lp))
            if o and a and a["cpu_pct_per_call"]:
                ratios.append({
                    "loop": lp, "calls": o["calls"], "uvloop_loaded": {"ours": o["uvloop_loaded"], "alt": a["uvloop_loaded"]},
                    "valid": o["kept_real_time"] and a["kept_real_time"],
                    "cpu_per_call": round(o["cpu_pct_per_call"] / a["cpu_pct_per_call"], 3),
                    "marginal_cpu_per_call": round(o["marginal_cpu_pct_per_call"] / a["marginal_cpu_pct_per_call"], 3)
                    if o["marginal_cpu_pct_per_call"] and a["marginal_cpu_pct_per_call"] else None,
                    "instructions_per_call": round(o["minstr_per_call_s"] / a["minstr_per_call_s"], 3)
                    if o["minstr_per_call_s"] and a["minstr_per_call_s"] else None,
                })
        add_floor_ratios(compare)
        for w in workers:
            # each measured here, one right after the other (not the comparison's step, minutes
            # earlier: the VM's speed drifts more than the difference looked for)
            calls = workers_at * w if args.workers_load == "per-worker" else workers_at
            bench.use("ours", w, loops[0])
            warm_up()
            row, cores = measure(f"ours/{loops[0]}/workers={w}", calls), sorted(bench.cores)
            bench.release()
            per_call = row["cpu_pct"] / 100 / row["calls"]
            scaling.append({
                "workers": w, "cores": cores, "calls": row["calls"], "calls_up": row["calls_up"],
                "server_cpu_pct": row["cpu_pct"], "processes_cpu_pct": row["processes_cpu_pct"],
                "cpu_s_per_call_s": round(per_call, 6), "calls_per_core": round(1 / per_call, 1) if per_call else None,
                "in_p99_ms": row["in_p99_ms"], "out_p99_ms": row["out_p99_ms"], "frames_lost": row["frames_lost"],
                "frames_late": row["frames_late"], "loadgen_cpu_pct": row["loadgen_cpu_pct"],
                "loadgen_on_server_cores": args.gen_core in cores,
                "other_load_on_server_cores_pct": row["other_load_on_server_core_pct"],
                "kept_real_time": not check(row), "step": row,
            })
        if len(scaling) >= 2 and scaling[0]["calls_per_core"] and scaling[-1]["calls_per_core"]:
            scaling[-1]["calls_per_core_vs_first"] = round(scaling[-1]["calls_per_core"] / scaling[0]["calls_per_core"], 3)
        report = {
            "machine": {"cpus": os.cpu_count(), "server_core": args.server_core, "loadgen_core": args.gen_core,
                        "python": sys.version.split()[0], "platform": sys.platform,
                        "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
            "settings": {"steady_s": args.steady, "settle_s": args.settle, "playout_lead_ms": 200,
                         "audio": "pcmu passthrough", "late_threshold_ms": 60, "vad": args.vad, "native": args.native,
                         "record": args.record},
            "command": command_line(argv),
            "idle_rss_mib": bench.rss0 if rows else None,
            "series": rows,
            "stopped_by": stopped_by,
            "sequential": seq,
            "comparison": {"calls": args.compare_at, "bridges": compare, "ratio_ours_to_alt": ratios},
            "workers": scaling,
        }
    finally:
        bench.stop()
    (out / "load.json").write_text(json.dumps(report, indent=2))
    md = [table(rows)]
    if compare:
        md.append(compare_table(compare, ratios))
    if scaling:
        md.append(workers_table(scaling))
    (out / "load.md").write_text("\n\n".join(md) + "\n")
    if not args.no_plot and rows:
        plot(rows, out / "load.png")
    print("\n\n".join(md))
    if report.get("sequential"):
        s = report["sequential"]
        print(f"sequential {s['calls']} calls: RSS {s['rss_before_mib']} -> {s['rss_after_mib']} MiB "
              f"(second-half slope {s['slope_second_half_mib_per_1000_calls']} MiB/1000 calls, {s['failed']} failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
