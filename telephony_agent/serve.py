"""Running the server: logging, signals, graceful drain, worker processes.

One worker (`AGENT_WORKERS=1`, the default) serves in this process. With more, this process
becomes a small supervisor: it starts N worker processes (fresh interpreters, no fork), each
binding the same port with SO_REUSEPORT so the kernel spreads connections across them, forwards
SIGTERM/SIGINT to them, restarts one that crashes, and exits 0 when every worker drained and
exited 0.

Drain (on SIGTERM or SIGINT), in every worker independently:

1. `draining`: the webhook answers busy TwiML and `/readyz` answers 503 `draining`. The socket
   stays open so probes, busy answers and media streams of calls accepted just before still work.
2. Wait while calls remain (and streams of just-accepted calls are still due), up to
   `AGENT_DRAIN_SECONDS`.
3. Calls still up then hear a short pre-rendered goodbye and are hung up (`CallBridge.shutdown`),
   bounded by `GOODBYE_TIMEOUT_S`.
4. Close the listener and exit 0.

A second signal during a drain is logged and ignored: the drain is already bounded.

A worker whose event loop stops running (its heartbeat file, touched every second, goes stale
for `AGENT_WORKER_TIMEOUT_SECONDS`) is hung: the supervisor has it write its stacks (SIGUSR1),
kills it and starts another, so a wedged process costs its own calls, not the port's share of
every new one.

SIGUSR1 writes every thread's Python stack to stderr (`faulthandler`: it works with the event
loop blocked, which is when it is needed); SIGUSR2 logs tracemalloc's top growth (`memory`). The
supervisor passes both on to its workers rather than die of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from aiohttp import web

from telephony_agent import native
from telephony_agent.connections import (
    ConnectionLimits,
    GuardedRunner,
    fd_budget,
    install_accept_error_handler,
)
from telephony_agent.event_loop import EventLoopUnavailable, loop_factory
from telephony_agent.event_loop import run as run_on
from telephony_agent.logs import configure_logging
from telephony_agent.memory import MemoryReporter, trim_memory
from telephony_agent.metrics import MULTIPROC_ENV
from telephony_agent.settings import Settings
from telephony_agent.state import STATE, AppState
from telephony_agent.telephony.twilio.stream_auth import SHARED_LEDGER_ENV

log = logging.getLogger(__name__)

GOODBYE_TIMEOUT_S = 20.0  # the goodbye prompt is ~5.5 s; hang-up has its own 10 s bound inside
SHUTDOWN_TIMEOUT_S = 5.0
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
WORKER_ENV = "AGENT_WORKER_INDEX"
STARTUP_GRACE_S = 5.0  # a worker that dies sooner than this after starting is a fatal error
RESTART_DELAY_S = 1.0
POLL_S = 0.1
STACKS_SIGNAL = signal.SIGUSR1
HEARTBEAT_ENV = "AGENT_INTERNAL_HEARTBEAT_FILE"  # set by the supervisor: the file a worker touches
HEARTBEAT_S = 1.0
FIRST_BEAT_S = 60.0  # a starting worker's first beat may take this long (imports, models) ...
STACKS_WAIT_S = 1.0  # ... and a hung one this long to write its stacks before it is killed
PASSED_ON = (signal.SIGUSR1, signal.SIGUSR2)  # diagnostics: the supervisor hands them to each worker


async def drain(state: AppState, drain_seconds: float) -> None:
    """Stop taking calls, let active ones finish up to `drain_seconds`, then end the rest politely."""
    loop = asyncio.get_running_loop()
    state.draining = True
    state.metrics.draining.set(1)
    log.info(
        "drain: refusing new calls; %d active, %d connecting; waiting up to %.1fs",
        len(state.calls),
        len(state.pending),
        drain_seconds,
        extra={"event": "drain_started"},
    )
    deadline = loop.time() + drain_seconds
    next_report = loop.time() + 10.0
    while state.load() > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
        if loop.time() >= next_report:
            next_report += 10.0
            log.info("drain: %d calls still active", len(state.calls), extra={"event": "drain_waiting"})
    if not state.calls:
        log.info("drain: no calls left", extra={"event": "drain_complete"})
        return
    log.info(
        "drain: deadline reached; ending %d calls politely",
        len(state.calls),
        extra={"event": "drain_deadline"},
    )
    await state.manager.shutdown_calls(wait_seconds=GOODBYE_TIMEOUT_S)
    if state.calls:
        log.warning(
            "drain: %d calls did not end within %.0fs; closing them",
            len(state.calls),
            GOODBYE_TIMEOUT_S,
            extra={"event": "drain_forced"},
        )
    else:
        log.info("drain: all calls ended", extra={"event": "drain_complete"})


def freeze_startup_heap() -> None:
    """Keep the cyclic GC off the objects made at start-up (modules, pydantic, prometheus, the SDKs).

    They live as long as the process, but every full collection walked all of them (~140k objects):
    25-50 ms stalls of the event loop a few times a minute under load, the p99 latency of every
    call in flight (load benchmark, 150 calls). Frozen, full collections only walk what calls
    allocate. Start-up garbage is collected first so none of it is frozen.
    """
    gc.collect()
    gc.freeze()


async def _serve_async(settings: Settings, *, reuse_port: bool = False) -> None:
    from telephony_agent.server import create_app

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s during drain: already stopping", sig.name)
            return
        log.info("%s received: draining", sig.name, extra={"event": "signal"})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    app = create_app(settings)
    install_accept_error_handler(loop)
    MemoryReporter().install(loop)
    runner, _ = await start_server(app, settings, reuse_port=reuse_port)
    manager = app[STATE].manager
    trimmer = asyncio.create_task(
        trim_memory(settings.malloc_trim_seconds, lambda: manager.ended_calls, lambda: len(manager.calls)),
        name="malloc-trim",
    )
    beat_path = os.environ.get(HEARTBEAT_ENV)
    beating = asyncio.create_task(heartbeat(beat_path), name="heartbeat") if beat_path else None
    try:
        freeze_startup_heap()
        log.info("listening on %s:%d", settings.host, settings.port, extra={"event": "listening"})
        await stop.wait()
        await drain(app[STATE], settings.drain_seconds)
    finally:
        trimmer.cancel()
        await runner.cleanup()
        if beating is not None:
            beating.cancel()
    log.info("stopped", extra={"event": "stopped"})


async def heartbeat(path: str, every: float = HEARTBEAT_S) -> None:
    """Touch `path` every `every` seconds for as long as the event loop runs: a worker's sign of
    life to its supervisor (a file's mtime, as gunicorn does: no pipe to fill, nothing to read)."""
    while True:
        try:
            os.utime(path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # the first beat
        except OSError:
            pass  # the supervisor sees a missed beat; a beat missed for its whole timeout restarts us
        await asyncio.sleep(every)


def connection_limits(settings: Settings) -> ConnectionLimits:
    """The HTTP server's limits from the settings, the total bounded by the descriptor limit."""
    return ConnectionLimits(
        header_timeout=settings.http_header_timeout_seconds,
        keepalive_timeout=settings.http_keepalive_timeout_seconds,
        max_unauthenticated=settings.max_unauthenticated_connections,
        fd_limit=fd_budget(settings.max_calls),
    )


async def start_server(
    app: web.Application, settings: Settings, *, host: str | None = None, port: int | None = None,
    reuse_port: bool = False, access_log: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve `app` with the connection limits (docs/security.md); returns the runner and bound port."""
    kwargs: dict[str, object] = {} if access_log else {"access_log": None}
    runner = GuardedRunner(
        app, connection_limits(settings), handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S, **kwargs
    )
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host if host is None else host, settings.port if port is None else port,
        reuse_port=reuse_port or None,
        # A burst of connections (a call spike, or a flood the limits then close) waits in the
        # kernel's accept queue: with aiohttp's 128, the excess sit half-open, unseen by the limits.
        backlog=LISTEN_BACKLOG,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.port


def _run_worker(settings: Settings, *, reuse_port: bool, worker: int | None = None) -> int:
    configure_logging(settings.log_format.value, settings.log_level, worker=worker)
    faulthandler.register(STACKS_SIGNAL, all_threads=True)  # plain text on stderr, not a log record
    try:
        loop_name, factory = loop_factory(settings.event_loop)
    except EventLoopUnavailable as exc:
        log.error("%s", exc)
        return 2
    log.info("event loop: %s (AGENT_EVENT_LOOP=%s); compiled modules: %s", loop_name, settings.event_loop.value,
             native.status(), extra={"event": "event_loop"})
    try:
        run_on(_serve_async(settings, reuse_port=reuse_port), factory)
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", settings.host, settings.port, exc)
        return 1
    return 0


def serve(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the process exit code (0 after a clean drain)."""
    try:
        loop_factory(settings.event_loop)  # a loop that cannot run stops start-up before any worker
    except EventLoopUnavailable as exc:
        print(exc, file=sys.stderr)
        return 2
    if settings.workers > 1:
        return _supervise(settings)
    return _run_worker(settings, reuse_port=False)


# -- several workers --------------------------------------------------------------------------


def worker_main() -> int:
    """Entry point of a worker process: settings arrive pickled on stdin (secrets stay off argv)."""
    settings: Settings = pickle.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    index = int(os.environ.get(WORKER_ENV, "0"))
    return _run_worker(settings, reuse_port=True, worker=index)


class _Worker:
    def __init__(self, index: int, settings_blob: bytes, env: dict[str, str], beats: str) -> None:
        self.index = index
        self.started = time.monotonic()
        self.heartbeat = os.path.join(beats, f"worker-{index}")
        self._beat: float | None = None  # the heartbeat file's mtime when last seen to change ...
        self._beat_seen = self.started  # ... and when that was, on this process's monotonic clock
        self.hung_at: float | None = None  # when the supervisor found it hung (monotonic)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.heartbeat)  # the beats of the worker it replaces do not count
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from telephony_agent.serve import worker_main; sys.exit(worker_main())"],
            stdin=subprocess.PIPE,
            env={**env, WORKER_ENV: str(index), HEARTBEAT_ENV: self.heartbeat},
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(settings_blob)
        self.proc.stdin.close()
        log.info("worker %d started (pid %d)", index, self.proc.pid, extra={"event": "worker_started"})

    def silent_for(self, now: float) -> float:
        """Seconds (monotonic) since its heartbeat file last changed; before the first beat, less
        `FIRST_BEAT_S`. Only a change of the mtime counts, never its value: a step of the wall
        clock (NTP, a resumed VM) must not make every worker look hung at once."""
        try:
            mtime: float | None = os.stat(self.heartbeat).st_mtime
        except OSError:
            mtime = None  # not made yet, or removed under it (the worker makes it again)
        if mtime is not None and mtime != self._beat:
            self._beat, self._beat_seen = mtime, now
        if self._beat is None:
            return now - self.started - FIRST_BEAT_S
        return now - self._beat_seen

    def watch(self, now: float, timeout: float) -> None:
        """For a running worker: past `timeout` without a beat, have it write its stacks, then kill
        it (its exit is then handled like a crash: it is restarted)."""
        if self.hung_at is None:
            silent = self.silent_for(now)
            if timeout > 0 and silent > timeout:
                self.hung_at = now
                log.error("worker %d (pid %d): its event loop has not run for %.0f s; writing its stacks to "
                          "stderr, then restarting it", self.index, self.proc.pid, silent,
                          extra={"event": "worker_hung"})
                self.proc.send_signal(STACKS_SIGNAL)
        elif now - self.hung_at >= STACKS_WAIT_S:
            self.proc.kill()


def _supervise(settings: Settings) -> int:
    configure_logging(settings.log_format.value, settings.log_level)
    metrics_dir = tempfile.mkdtemp(prefix="telephony-agent-metrics-")
    ledger_dir = tempfile.mkdtemp(prefix="telephony-agent-tokens-")  # stream tokens spent on any worker
    beats = tempfile.mkdtemp(prefix="telephony-agent-heartbeats-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir, SHARED_LEDGER_ENV: ledger_dir}
    blob = pickle.dumps(settings)
    stopping = False
    failed = False

    workers: dict[int, _Worker] = {}

    def stop_all(reason: str) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info("%s: stopping %d workers", reason, len(workers), extra={"event": "signal"})
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)

    def on_signal(signum: int, frame: object) -> None:
        stop_all(signal.Signals(signum).name)

    to_pass_on: list[tuple[int, _Worker]] = []

    def pass_on(signum: int, frame: object) -> None:
        # one worker a poll, not all at once: their stack dumps share stderr and would interleave
        to_pass_on.extend((signum, w) for w in workers.values())

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous.update({sig: signal.signal(sig, pass_on) for sig in PASSED_ON})
    try:
        for i in range(settings.workers):
            workers[i] = _Worker(i, blob, env, beats)
        restart_at: dict[int, float] = {}
        while workers or (restart_at and not stopping):
            time.sleep(POLL_S)
            now = time.monotonic()
            if to_pass_on:
                signum, w = to_pass_on.pop(0)
                if w.proc.poll() is None:
                    w.proc.send_signal(signum)
            for i, w in list(workers.items()):
                rc = w.proc.poll()
                if rc is None:
                    w.watch(now, settings.worker_timeout_seconds)
                    continue
                del workers[i]
                _mark_dead(w.proc.pid, metrics_dir)
                if stopping:
                    log.info("worker %d exited with %d", i, rc, extra={"event": "worker_exited"})
                    failed |= rc != 0
                elif rc != 0 and now - w.started < STARTUP_GRACE_S and w.hung_at is None:
                    log.error("worker %d failed at start-up (exit %d); stopping", i, rc)
                    failed = True
                    stop_all("worker failure")
                else:
                    log.warning("worker %d exited with %d; restarting", i, rc, extra={"event": "worker_restart"})
                    restart_at[i] = now + RESTART_DELAY_S
            for i, at in list(restart_at.items()):
                if stopping:
                    restart_at.clear()
                elif now >= at:
                    del restart_at[i]
                    workers[i] = _Worker(i, blob, env, beats)
    finally:
        for w in workers.values():  # only on an unexpected error in this loop
            if w.proc.poll() is None:
                w.proc.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(ledger_dir, ignore_errors=True)
        shutil.rmtree(beats, ignore_errors=True)
    log.info("all workers stopped", extra={"event": "stopped"})
    return 1 if failed else 0


def _mark_dead(pid: int, directory: str) -> None:
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)
    except Exception:  # noqa: BLE001 - metrics housekeeping only
        pass
