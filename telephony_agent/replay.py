"""Replaying a recorded call against a server, and the virtual clock that makes it fast.

A recording's caller side (Twilio `connected`/`start`/`media`/`dtmf`/`stop`, with their times)
is the input. `drive_call()` sends it through the softphone at the recorded pace (divided by
`speed`), while the softphone plays out the agent's audio the way Twilio does (marks echoed when
reached, all pending marks at once on `clear`). Mark echoes are never replayed from the file:
they depend on what the agent does now. Afterwards the new call's recording is summarised and
compared with the old one (`recording.analysis`).

The virtual clock
-----------------
`VirtualClockLoop` is an asyncio event loop whose `time()` is the monotonic clock plus an
offset. When the loop would block waiting for a timer and nothing is ready (no socket has data,
no callback is queued, no executor job is running), it adds the wait to the offset instead of
sleeping: virtual time jumps to the next timer. Loopback socket I/O still works: a `send()` on
127.0.0.1 is in the peer's receive buffer when it returns, so a zero-timeout poll sees it
before any jump. Work in threads or processes (speech recognition, synthesis) is real work that
takes real time: while any `ThreadPoolExecutor`/`ProcessPoolExecutor` job submitted during the
run is pending (and for 5 ms after one finishes, so its result reaches the loop), the loop waits
in real time and virtual time runs at the real rate. Everything that reads the loop's clock (the
bridge's playout and timers, aiohttp timeouts, the local engine's pacing, the softphone's
playout) therefore sees a consistent timeline, and a call runs as fast as its CPU work allows.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import contextlib
import selectors
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from telephony_agent.recording.analysis import CallSummary, Tolerances, compare, summarize
from telephony_agent.recording.format import IN, LEG_TWILIO, Recording, read_recording
from telephony_agent.testing.twilio_caller import FRAME_BYTES, SILENCE, TwilioCaller

T = TypeVar("T")

SETTLE_S = 0.005


# -- the virtual clock ----------------------------------------------------------------------


class _Busy:
    """Executor jobs in flight (any thread), and a short settle time after each finishes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0
        self.settle_until = 0.0

    def started(self) -> None:
        with self._lock:
            self.pending += 1

    def finished(self, _future: object = None) -> None:
        with self._lock:
            self.pending -= 1
            self.settle_until = time.monotonic() + SETTLE_S

    def active(self) -> bool:
        return self.pending > 0 or time.monotonic() < self.settle_until


BUSY = _Busy()
_patch_lock = threading.Lock()
_patch_depth = 0


@contextlib.contextmanager
def track_executors() -> Iterator[_Busy]:
    """Count jobs submitted to any thread or process pool while active (the virtual clock
    must not jump while one runs)."""
    global _patch_depth
    classes = (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor)
    with _patch_lock:
        if _patch_depth == 0:
            for cls in classes:
                original = cls.submit

                def submit(self: Any, fn: Any, /, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
                    future = __original(self, fn, *args, **kwargs)
                    BUSY.started()
                    future.add_done_callback(BUSY.finished)
                    return future

                submit.__wrapped_original__ = original  # type: ignore[attr-defined]
                cls.submit = submit  # type: ignore[method-assign]
        _patch_depth += 1
    try:
        yield BUSY
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                for cls in classes:
                    cls.submit = cls.submit.__wrapped_original__  # type: ignore[attr-defined,method-assign]


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0
        self.jumped = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        events = super().select(0)
        if events:
            return events
        if BUSY.active():
            return super().select(min(timeout, 0.02))  # real work in flight: real time passes
        self.offset += timeout
        self.jumped += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop that skips idle waits (see the module docstring)."""

    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(self._vsel)

    def time(self) -> float:
        return time.monotonic() + self._vsel.offset

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Join the default executor's threads directly: the base class waits for a helper
        thread under a loop timeout, which virtual time would expire at once."""
        self._executor_shutdown_called = True
        executor = self._default_executor  # type: ignore[attr-defined]
        if executor is not None:
            executor.shutdown(wait=True)

    @property
    def skipped_seconds(self) -> float:
        return self._vsel.jumped


def run_virtual(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a `VirtualClockLoop`."""
    with track_executors(), asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main)


# -- the caller's side of a recording --------------------------------------------------------


@dataclass
class CallerScript:
    """What the caller did, relative to `start`: ("media", bytes) / ("dtmf", digit) /
    ("stop", None) / ("raw", frame)."""

    events: list[tuple[float, str, Any]] = field(default_factory=list)
    call_sid: str | None = None
    from_: str | None = None
    to: str | None = None
    hung_up: bool = False


def caller_script(rec: Recording) -> CallerScript:
    script = CallerScript(call_sid=rec.call_sid)
    start_t: float | None = None
    for e in rec.entries:
        if e.leg != LEG_TWILIO or e.dir != IN:
            continue
        kind = e.event
        if start_t is None:
            if kind == "start":
                start_t = e.t
                params = ((e.msg or {}).get("start") or {}).get("customParameters") or {}
                script.from_ = params.get("from") or None
                script.to = params.get("to") or None
            continue
        t = e.t - start_t
        if kind == "media" and e.msg is not None:
            payload = (e.msg.get("media") or {}).get("payload")
            try:
                audio = binascii.a2b_base64(payload) if isinstance(payload, str) else b""
            except (binascii.Error, ValueError):
                audio = b""
            if audio:
                script.events.append((t, "media", audio))
            else:
                script.events.append((t, "raw", _raw_text(e)))
        elif kind == "dtmf" and e.msg is not None:
            script.events.append((t, "dtmf", (e.msg.get("dtmf") or {}).get("digit", "")))
        elif kind == "stop":
            outcome = (rec.trailer or {}).get("outcome")
            if outcome is None or outcome == "caller_hangup":
                script.events.append((t, "stop", None))
                script.hung_up = True
            # else: Twilio's `stop` after the agent's REST hang-up or transfer, not a caller action
            break
        elif kind == "mark":
            continue  # echoes depend on the agent's behaviour now, not then
        else:
            script.events.append((t, "raw", _raw_text(e)))
    return script


def _raw_text(e: Any) -> str | bytes:
    if e.raw is not None:
        return e.raw
    import orjson

    return orjson.dumps(e.msg).decode()


async def drive_call(
    phone: TwilioCaller, script: CallerScript, *, speed: float = 1.0, tail_s: float = 15.0
) -> None:
    """Place the call and play the caller's side of `script`. Ends when the script's caller
    hangs up, or (when the recorded agent ended the call) when the agent ends it now; after
    `tail_s` of silence beyond the script the softphone hangs up."""
    loop = asyncio.get_running_loop()
    phone.continuous = False
    await phone.place_and_connect()
    t0 = loop.time()
    frame_gap = 0.02 / speed
    for t, kind, data in script.events:
        delay = t0 + t / speed - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if phone.closed:
            return
        if kind == "media":
            await phone._send_media_frame(data)  # noqa: SLF001 - the softphone's own framing
        elif kind == "dtmf":
            await phone.send_dtmf(data)
        elif kind == "raw":
            await phone.send_raw(data)
        elif kind == "stop":
            await phone.hangup()
            return
    # The agent ended the recorded call: keep the line open (silence) until it does so again.
    silence = SILENCE * FRAME_BYTES
    deadline = loop.time() + tail_s
    next_t = loop.time()
    while not phone.closed and loop.time() < deadline:
        await phone._send_media_frame(silence)  # noqa: SLF001
        next_t += frame_gap
        await asyncio.sleep(max(0.0, next_t - loop.time()))
    if not phone.closed:
        await phone.hangup()


# -- a replay --------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    expected: CallSummary
    actual: CallSummary
    differences: list[str]
    phone: TwilioCaller
    new_recording: Recording | None
    call_seconds: float
    wall_seconds: float

    @property
    def ok(self) -> bool:
        return not self.differences


def _newest_recording(directory: Path) -> Recording | None:
    files = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    return read_recording(files[-1]) if files else None


async def replay(
    recording: Recording | str | Path,
    base_url: str,
    public_url: str,
    auth_token: str,
    *,
    speed: float = 1.0,
    server_recordings: Path | None = None,
    tolerances: Tolerances = Tolerances(),
    on_phone: Callable[[TwilioCaller], Awaitable[None] | None] | None = None,
    on_event: Callable[[str, float, dict[str, Any]], None] | None = None,
    tail_s: float = 15.0,
    before_compare: Callable[[], Awaitable[None]] | None = None,
) -> ReplayResult:
    """Drive a server at `base_url` with a recorded call and compare what happens.

    The new call is recorded on the softphone's side (the Twilio leg); when `server_recordings`
    names the directory the server records into, its recording (both legs) is used instead.
    """
    from telephony_agent.recording.recorder import CallRecorder

    rec = recording if isinstance(recording, Recording) else read_recording(recording)
    script = caller_script(rec)
    loop = asyncio.get_running_loop()
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        recorder = CallRecorder(tmp, recorded_by="softphone", wav=False)
        phone = TwilioCaller(base_url, public_url, auth_token, continuous=False, tap=recorder, on_event=on_event)
        if script.call_sid:
            phone.call_sid = script.call_sid
        if script.from_:
            phone.from_ = script.from_
        if script.to:
            phone.to = script.to
        if on_phone is not None:
            result = on_phone(phone)
            if asyncio.iscoroutine(result):
                await result
        t0 = loop.time()
        try:
            await drive_call(phone, script, speed=speed, tail_s=tail_s)
            await phone.wait_closed(timeout=10)
        finally:
            await phone.close()
            recorder.finish()
        call_seconds = loop.time() - t0
        if before_compare is not None:
            await before_compare()
        new = None
        if server_recordings is not None:
            new = _newest_recording(server_recordings)
        if new is None and recorder.jsonl_path is not None:
            new = read_recording(recorder.jsonl_path)
    expected = summarize(rec)
    actual = summarize(new) if new is not None else CallSummary()
    if new is not None and new.header.get("recorded_by") == "softphone":
        # The softphone sees neither leg to the provider nor the bridge's account of the call.
        expected = _twilio_only(expected)
        actual = _twilio_only(actual)
    return ReplayResult(expected, actual, compare(expected, actual, tolerances), phone, new, call_seconds,
                        time.monotonic() - wall0)


def _twilio_only(s: CallSummary) -> CallSummary:
    s.truncates, s.tool_calls, s.outcome = [], [], None
    return s


@contextlib.asynccontextmanager
async def in_process_server(settings: Any, model: Any = None) -> Any:
    """The real app on 127.0.0.1 (a free port) in this event loop; yields (app, base_url)."""
    from aiohttp import web

    from telephony_agent.server import create_app

    app = create_app(settings, model=model)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await asyncio.wait_for(runner.cleanup(), 15)


async def wait_no_calls(app: Any, timeout: float = 10.0) -> None:
    from telephony_agent.state import STATE

    state = app[STATE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while state.calls or state.pending:
        if loop.time() > deadline:
            raise TimeoutError(f"calls still active: {list(state.calls)}")
        await asyncio.sleep(0.02)
