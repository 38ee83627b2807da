"""Replaying a recorded call against a server, and the virtual clock that makes it fast.

A recording's caller side (Twilio `connected`/`start`/`media`/`dtmf`/`stop`, with their times)
is the input. `drive_call()` sends it through the softphone at the recorded pace (divided by
`speed`), while the softphone plays out the agent's audio the way Twilio does (marks echoed when
reached, all pending marks at once on `clear`). Mark echoes are never replayed from the file:
they depend on what the agent does now. Afterwards the new call's recording is summarised and
compared with the old one (`recording.analysis`).

The virtual clock
-----------------
`VirtualClockLoop` is an asyncio event loop with a clock of its own that moves only when the
loop would otherwise wait: when nothing is ready (no socket has data, no callback is queued, no
executor job is outstanding), it sets its clock to the next timer instead of sleeping. Running
code takes no virtual time, so a replay sees the same timeline on a fast machine, a slow one or
a busy one: the result of a replay does not depend on the machine's speed.

Loopback socket I/O still works: a `send()` on 127.0.0.1 is in the peer's receive buffer when it
returns, so a zero-timeout poll sees it before any jump. Work in threads or processes (speech
recognition in the local engine's worker processes, synthesis on its thread) is real work that
takes real time: while any `ThreadPoolExecutor`/`ProcessPoolExecutor` job submitted during the
run is outstanding, the loop waits for it in real time with its clock stopped. A job counts as
outstanding until every done-callback of its future has run (those callbacks are how a result
reaches the loop: `call_soon_threadsafe`), so its result is always delivered at the virtual
instant the job was submitted, never after a jump. Everything that reads the loop's clock (the
bridge's playout and timers, aiohttp timeouts, the local engine's pacing, the softphone's
playout) sees one consistent timeline, and a call runs as fast as its CPU work allows.

The same replay gives the same timeline every time: the clock starts at `VIRTUAL_ORIGIN`, not
at the machine's monotonic time. Every instant is the origin plus sums of delays, rounded to a
float, and how they round depends on the origin: two peers' events a few picoseconds apart
swapped order with it (asyncio runs timers within its clock resolution, 1 ns, in one pass), and
a barge-in was heard one 20 ms frame later in one of two replays of the same call.
"""

from __future__ import annotations

import asyncio
import binascii
import concurrent.futures
import contextlib
import os
import selectors
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from telephony_agent.recording.analysis import CallSummary, Tolerances, compare, summarize
from telephony_agent.recording.format import IN, LEG_PHONE, Recording, RecordingError, read_recording
from telephony_agent.testing.twilio_caller import FRAME_BYTES, SILENCE, TwilioCaller

__all__ = [
    "BUSY",
    "MEDIA_STREAMS_TRANSPORTS",
    "VIRTUAL_ORIGIN",
    "CallerScript",
    "ReplayResult",
    "VirtualClockLoop",
    "caller_script",
    "drive_call",
    "in_process_server",
    "loopback_in_flight",
    "replay",
    "run_virtual",
    "track_executors",
    "wait_no_calls",
]

T = TypeVar("T")

REAL_WAIT_S = 0.02  # longest real-time wait for an outstanding job before polling again
VIRTUAL_ORIGIN = 1000.0  # where every virtual clock starts (the module docstring says why it is fixed)


# -- the virtual clock ----------------------------------------------------------------------


class _Busy:
    """Executor jobs outstanding (submitted from any thread, done-callbacks not all run yet)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pending = 0

    def started(self) -> None:
        with self._lock:
            self.pending += 1

    def finished(self) -> None:
        with self._lock:
            self.pending -= 1

    def reset(self) -> None:
        with self._lock:
            self.pending = 0

    def active(self) -> bool:
        return self.pending > 0


BUSY = _Busy()
_patch_lock = threading.Lock()
_patch_depth = 0
_TRACKED = "_virtual_clock_job"


def _patch_executors() -> None:
    for cls in (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor):
        original = cls.submit

        def submit(self: Any, fn: Any, /, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            future = __original(self, fn, *args, **kwargs)
            with future._condition:
                if not future.done():
                    setattr(future, _TRACKED, True)
                    BUSY.started()
            return future

        submit.__wrapped_original__ = original  # type: ignore[attr-defined]
        cls.submit = submit  # type: ignore[method-assign]
    invoke = concurrent.futures.Future._invoke_callbacks  # type: ignore[attr-defined]

    def _invoke_callbacks(self: concurrent.futures.Future[Any], __original: Any = invoke) -> None:
        try:
            __original(self)
        finally:
            if self.__dict__.pop(_TRACKED, False):
                BUSY.finished()

    _invoke_callbacks.__wrapped_original__ = invoke  # type: ignore[attr-defined]
    concurrent.futures.Future._invoke_callbacks = _invoke_callbacks  # type: ignore[attr-defined]


def _unpatch_executors() -> None:
    for cls in (concurrent.futures.ThreadPoolExecutor, concurrent.futures.ProcessPoolExecutor):
        cls.submit = cls.submit.__wrapped_original__  # type: ignore[attr-defined,method-assign]
    future_cls: Any = concurrent.futures.Future
    future_cls._invoke_callbacks = future_cls._invoke_callbacks.__wrapped_original__


@contextlib.contextmanager
def track_executors() -> Iterator[_Busy]:
    """Count jobs submitted to any thread or process pool while active, until their results
    have been handed on (the virtual clock must not move while one is outstanding)."""
    global _patch_depth
    with _patch_lock:
        if _patch_depth == 0:
            BUSY.reset()  # a job of an earlier run that never finished must not stop this one's clock
            _patch_executors()
        _patch_depth += 1
    try:
        yield BUSY
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                _unpatch_executors()


# Linux `struct tcp_info` (linux/tcp.h): state, and the byte counts since 4.19.
_TCP_INFO_LEN = 216
_TCP_ESTABLISHED, _TCP_SYN_SENT, _TCP_SYN_RECV, _TCP_FIN_WAIT1, _TCP_CLOSE, _TCP_LISTEN = 1, 2, 3, 4, 7, 10
_LOOPBACK = ("127.", "::1", "::ffff:127.")
IN_FLIGHT_LIMIT_S = 1.0  # give up waiting for loopback data after this long (real time)


class _Known:
    """What stays true of one socket while its fd names it: whether it is a loopback TCP end,
    how to wrap it without asking the kernel again, its address, and its peer once connected.
    An unbound socket is not known yet: `connect()` or `bind()` may still give it an address."""

    __slots__ = ("bound", "family", "inode", "local", "loopback", "peer", "proto", "type")

    def __init__(self, inode: tuple[int, int], sock: socket.socket | None) -> None:
        self.inode = inode
        self.bound = True
        self.loopback = False
        self.peer: Any = None
        if sock is None or sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        self.local = sock.getsockname()[:2]
        self.bound = self.local[1] != 0
        self.loopback = str(self.local[0]).startswith(_LOOPBACK)
        self.family, self.type, self.proto = sock.family, sock.type, sock.proto


_known: dict[int, _Known] = {}  # by fd; an entry holds while the fd names the same inode


def _identify(fd: int, inode: tuple[int, int]) -> _Known:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return _Known(inode, None)
    try:
        return _Known(inode, sock)
    except OSError:
        return _Known(inode, None)
    finally:
        sock.detach()  # the fd belongs to its owner: never close it here


def _tcp_ends() -> tuple[dict[tuple[Any, Any], tuple[int, int, int]], set[Any]] | None:
    """Every loopback TCP socket of this process: (local, peer) -> (state, bytes sent, bytes
    received), and the listening addresses. None where the kernel cannot say (not Linux).

    The virtual clock asks before each jump, twice a frame: what cannot change while an fd
    names the same socket (its kind, its address, its peer) is remembered by the fd's inode,
    so a poll costs an `fstat` per fd and a `TCP_INFO` per loopback TCP end."""
    global _known
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    known: dict[int, _Known] = {}
    ends: dict[tuple[Any, Any], tuple[int, int, int]] = {}
    listening: set[Any] = set()
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed since the listing (the listing's own fd among them)
        if not stat.S_ISSOCK(st.st_mode):
            continue
        inode = (st.st_dev, st.st_ino)
        entry = _known.get(fd)
        if entry is None or entry.inode != inode or not entry.bound:
            entry = _identify(fd, inode)
        known[fd] = entry
        if not entry.loopback:
            continue
        try:
            sock = socket.socket(entry.family, entry.type, entry.proto, fileno=fd)  # no kernel query
        except OSError:
            continue
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            if len(info) < _TCP_INFO_LEN:
                return None
            state = info[0]
            if state == _TCP_LISTEN:
                listening.add(entry.local)
                continue
            if state in (_TCP_SYN_SENT, _TCP_SYN_RECV):
                ends[(entry.local, None)] = (state, 0, 0)
                continue
            if state == _TCP_CLOSE:
                continue  # reset: no peer any more (the kernel's `getpeername` says so too)
            if entry.peer is None:
                try:
                    entry.peer = sock.getpeername()[:2]
                except OSError:
                    continue
            received, sent, retransmitted = (
                struct.unpack_from("<Q", info, 128)[0], *struct.unpack_from("<QQ", info, 200),
            )
            ends[(entry.local, entry.peer)] = (state, sent - retransmitted, received)
        except OSError:
            continue
        finally:
            sock.detach()  # the fd belongs to its owner: never close it here
    _known = known  # one assignment: a loop in another thread sees the old map or this one
    return ends, listening


def loopback_in_flight() -> bool:
    """Whether a loopback TCP connection inside this process has something on its way that the
    receiving socket has not got yet: bytes, a FIN, or a handshake. A loopback `send()` normally
    lands in the peer's buffer before it returns, but on a busy machine the kernel may finish
    the delivery a little later (in ksoftirqd); a clock jump then would reorder the call."""
    found = _tcp_ends()
    if found is None:
        return False
    ends, listening = found
    for (local, peer), (state, sent, _received) in ends.items():
        if peer is None:
            return True  # a handshake in progress
        other = ends.get((peer, local))
        if other is None:
            if state == _TCP_ESTABLISHED and peer in listening:
                return True  # connected, not yet in the listener's accept queue
            continue
        if sent > other[2]:
            return True
        if state == _TCP_FIN_WAIT1 and other[0] == _TCP_ESTABLISHED:
            return True  # our FIN not yet seen by the peer
    return False


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = VIRTUAL_ORIGIN
        self.jumped = 0.0
        self.waits_in_flight = 0  # polls that found loopback data on its way (and waited for it)
        self._in_flight_since: float | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return super().select(timeout)
        # Read the job count before polling: a job that finished before this line has already
        # queued its result (and woken the loop's self-pipe), so the poll below sees it.
        busy = BUSY.active()
        events = super().select(0)
        if events:
            self._in_flight_since = None
            return events
        if busy:
            return super().select(min(timeout, REAL_WAIT_S))  # real work in flight: the clock stays
        if loopback_in_flight():
            real = time.monotonic()
            if self._in_flight_since is None:
                self._in_flight_since = real
            if real - self._in_flight_since < IN_FLIGHT_LIMIT_S:
                self.waits_in_flight += 1
                return super().select(min(timeout, 0.001))  # it arrives in real time: the clock stays
        self._in_flight_since = None
        self.now += timeout
        self.jumped += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when it is idle (see the module docstring)."""

    def __init__(self) -> None:
        self._vsel = _VirtualSelector()
        super().__init__(self._vsel)

    def time(self) -> float:
        return self._vsel.now

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

    @property
    def waits_in_flight(self) -> int:
        """How often the clock waited for loopback data the kernel had not delivered yet."""
        return self._vsel.waits_in_flight


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


MEDIA_STREAMS_TRANSPORTS = ("twilio", "browser")  # phone legs a replay can drive (the softphone speaks it)


def caller_script(rec: Recording) -> CallerScript:
    if rec.transport not in MEDIA_STREAMS_TRANSPORTS:
        raise RecordingError(f"a replay drives Media Streams calls; this call's phone leg was {rec.transport!r}")
    script = CallerScript(call_sid=rec.call_sid)
    start_t: float | None = None
    for e in rec.entries:
        if e.leg != LEG_PHONE or e.dir != IN:
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
            await phone._send_media_frame(data)
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
        await phone._send_media_frame(silence)
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
    tolerances: Tolerances = Tolerances(),  # noqa: B008 - frozen, shared safely
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
        recorder = CallRecorder(tmp, transport="twilio", recorded_by="softphone", wav=False)
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
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
