"""WebSocket writes without a writer task: what a pass of the event loop sends, written together
at its end.

aiohttp's `send_str` is a coroutine because it may wait for the socket to drain. Sockets that
send 50 small messages a second per call (caller audio to the provider, agent audio to the
phone) went through a writer task for that, and the hop to it (a queue, a wake-up, a task step)
cost as much as the write. aiohttp builds and writes a frame synchronously
(`_write_websocket_frame`, masking included on the client side); `send_str` only adds the wait
for drain. A server's frames need no mask, so `write_now` builds them itself and writes all of a
pass's frames to one socket at once (a media message and its mark: one syscall, not two). So
while the socket takes data, `write_now` writes at once; past `WRITE_NOW_LIMIT`
unsent bytes, or if that aiohttp method is missing, the caller queues for its writer task, which
waits for drain as before. `WriteBatch` gathers the writes of a pass into one callback, and
`FrameWriter` is one socket's side of it (the provider transport's and the Twilio media socket's).
This module is compiled (`native.MODULES`) and so holds no coroutine: the writer task and the wait
for it at close are in `websocket_drain`, which says why.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import aiohttp

from telephony_agent.per_loop import PerLoop
from telephony_agent.websocket_drain import WRITE_ERRORS, finish, write_queued

log = logging.getLogger(__name__)

WRITE_NOW_LIMIT = 64 * 1024  # past this much unsent, writes go through the writer task, which waits for drain


class DirectWrite:
    """What `write_now` needs of aiohttp's writer for one socket, looked up once (`direct_write`):
    the writer, its synchronous frame write, its transport, whether it masks. aiohttp sets them
    when the socket opens and never changes them; looking them up at every write was four
    attribute lookups and a bound method per frame."""

    def __init__(self, writer: Any, write: Callable[[bytes, int, int], None], transport: Any, masked: bool) -> None:
        self.writer = writer
        self.write = write
        self.transport = transport
        self.masked = masked


def direct_write(ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse) -> DirectWrite | None:
    """`ws`'s writer as `write_now` uses it; None if aiohttp keeps it elsewhere (or not yet)."""
    writer = getattr(ws, "_writer", None)
    write = getattr(writer, "_write_websocket_frame", None)  # aiohttp's synchronous frame write
    transport = getattr(writer, "transport", None)
    if write is None or transport is None or not hasattr(writer, "_closing"):
        return None
    return DirectWrite(writer, write, transport, bool(getattr(writer, "use_mask", True)))


def write_now(direct: DirectWrite, texts: Iterable[str]) -> bool:
    """Write text frames now if the socket takes them without waiting; False (nothing written)
    if it does not, and the caller must queue them. Raises one of `WRITE_ERRORS` if the write
    fails."""
    transport = direct.transport
    if transport.is_closing() or direct.writer._closing or transport.get_write_buffer_size() > WRITE_NOW_LIMIT:
        return False
    if direct.masked:  # a client's frames: aiohttp masks each
        write = direct.write
        for text in texts:
            write(text.encode(), aiohttp.WSMsgType.TEXT, 0)
    else:  # a server's: every frame of the pass in one write, one syscall (media and its mark)
        transport.write(b"".join(map(text_frame, texts)))
    return True


def text_frame(text: str) -> bytes:
    """An unmasked, uncompressed, final text frame (RFC 6455 5.2): what a server sends. Valid
    whatever extension was negotiated, as permessage-deflate leaves frames without RSV1 alone."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        return _LEN1(0x81, n) + payload
    if n < 65536:
        return _LEN2(0x81, 126, n) + payload
    return _LEN3(0x81, 127, n) + payload


_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack


class BatchedWriter(Protocol):
    def flush(self) -> None:
        """Write (or queue for the writer task) what was sent this pass."""


class WriteBatch:
    """Per event loop: the sockets that have frames to write in this pass, written one after the
    other in a callback of the next pass.

    Written where each was produced, the frames went out spread over the pass, between the turn
    detection of one call and the next, and the peer (a provider's server, a media gateway) woke
    for each. Written together, they reach it in one burst. The load benchmark showed the
    difference on both ends: writing each frame at once cost the server and the peer more CPU
    than the writer-task hop it saved."""

    def __init__(self) -> None:  # holds no loop: the loop is the weak key
        self._owners: list[BatchedWriter] = []

    @classmethod
    def for_loop(cls, loop: asyncio.AbstractEventLoop) -> WriteBatch:
        return _BATCHES.get(loop)

    def add(self, owner: BatchedWriter) -> None:
        """`owner` has frames to write: its `flush` runs once, in the next pass."""
        if not self._owners:
            asyncio.get_running_loop().call_soon(self._flush)
        self._owners.append(owner)

    def _flush(self) -> None:
        owners, self._owners = self._owners, []
        for owner in owners:
            try:
                owner.flush()
            except Exception:  # one socket's bug must not keep the others' frames
                log.exception("flushing a socket's frames failed")


_BATCHES: PerLoop[WriteBatch] = PerLoop(lambda _loop: WriteBatch())


class FrameWriter:
    """One WebSocket's outgoing text frames. What a pass sends is written at its end
    (`WriteBatch`): at once while nothing is queued and the socket takes data; else queued for the
    writer task (`start`), which waits for drain, and later frames queue behind it, so frames keep
    their order. A write that fails marks the writer `failed`; what was queued is dropped."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse,
        what: str,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.what = what  # "provider socket", "media socket": the writer task's name and log lines
        self.log = log
        self._on_write = on_write  # each frame as it is written
        self._pending: list[str] = []  # sent in this pass, written at its end
        self._batch: WriteBatch | None = None  # this loop's, from the first `send`
        self._direct: DirectWrite | None = None  # aiohttp's writer, from the first write
        self._outbox: deque[str] = deque()  # for the writer task
        self._wake = asyncio.Event()
        self._writing = False  # the writer task holds a frame while it waits for drain
        self._closing = False
        self.failed = False
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task (on the running loop)."""
        self.task = asyncio.create_task(write_queued(self.ws, self), name=f"{self.what} writer")

    @property
    def queued(self) -> int:
        """Frames waiting for the writer task."""
        return len(self._outbox)

    @property
    def unwritten(self) -> bool:
        return bool(self._pending or self._outbox or self._writing)

    def send(self, texts: Iterable[str]) -> None:
        if not self._pending:
            batch = self._batch
            if batch is None:  # the loop's, looked up once: a weak-keyed lookup per frame showed in profiles
                batch = self._batch = WriteBatch.for_loop(asyncio.get_running_loop())
            batch.add(self)
        self._pending.extend(texts)

    def drop_unsent(self) -> None:
        """Forget every frame not yet written (a frame the writer task holds still goes)."""
        self._pending.clear()
        self._outbox.clear()

    def flush(self) -> None:
        """Write what was sent this pass (`WriteBatch` calls it)."""
        texts, self._pending = self._pending, []
        if not texts or self.failed or self._closing:
            return
        if not self._outbox and not self._writing:
            direct = self._direct
            if direct is None:
                direct = self._direct = direct_write(self.ws)
            try:
                written = direct is not None and write_now(direct, texts)
            except WRITE_ERRORS as exc:
                self.write_failed(exc)
                return
            if written:
                self.sent += len(texts)
                if self._on_write is not None:
                    for text in texts:
                        self._on_write(text)
                return
        self._outbox.extend(texts)
        self._wake.set()

    def close(self, timeout: float) -> Awaitable[None]:
        """Write what was sent, then stop the writer task once it has written its queue (bounded
        by `timeout`: then it is cancelled). Await what it returns: the wait is a plain
        coroutine, `websocket_drain.finish`, not a compiled one."""
        self.flush()
        self._closing = True
        self._wake.set()
        return finish(self.task, timeout)

    # -- for the writer task (`websocket_drain.write_queued`) ---------------------------------

    def take_queued(self) -> str | None:
        if not self._outbox:
            return None
        text = self._outbox.popleft()
        if self._on_write is not None:
            self._on_write(text)
        self._writing = True  # `flush` must not write past it while it waits for drain
        return text

    def written(self) -> None:
        self._writing = False
        self.sent += 1

    def more(self) -> asyncio.Event | None:
        if self._closing:
            return None
        self._wake.clear()
        return self._wake

    def write_failed(self, exc: BaseException) -> None:
        self.log.debug("%s write failed: %s", self.what, exc)
        self.failed = True
        self._outbox.clear()
