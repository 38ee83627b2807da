"""WebSocket text frames handled where aiohttp's parser reads them, with no task wake-up per frame.

A task reading an aiohttp WebSocket waits in `receive()`. Each frame the parser finds goes into
the socket's queue and wakes the task: a future, a pass of the event loop, a task step, then
`receive()`'s checks. A Twilio media socket brings 75 frames a call-second (50 media, 25 mark
echoes), and most of them need a few microseconds of synchronous work, less than that hop.

`InPlaceReader` stands in for the connection's parser (aiohttp's server `RequestHandler` and
client `ResponseHandler` call its `feed_data` for every read of an upgraded connection). It cuts
each read into frames (`websocket_frames.FrameSplitter`, sans-I/O and compiled) and hands each
whole text frame (binary too, if asked) to a handler, in the reading task's context, while that
task waits in `next_work()` with nothing queued: no message object, no queue. Every other
frame, and every frame while the task is busy or the queue holds one, goes on as the bytes it
came as to aiohttp's own parser and queue, which decide everything else (pings, closes,
fragments, compression, limits, errors) as they always have. Without the splitter (an aiohttp
whose unmasking it cannot find), aiohttp's parser reads everything and the text frames are taken
out of its queue, through the queue's own `read()`, so its size accounting and flow control stay
aiohttp's. What a handler cannot finish there comes back as a coroutine, which the task awaits
before anything that came after it. The Twilio media socket uses it for caller audio and
mark echoes, the provider transport (`realtime/transport.py`) for every provider message. Every other frame (close, ping, binary), the end of
the stream and a protocol error stay in the queue for `receive()`, which handles them as aiohttp
always has. Order is kept: nothing is handled in place while the task has work or the queue
holds a frame for it. `read_frames` is that task's loop, for every user of the reader.

This reaches into aiohttp (the protocol's `_payload_parser`, the queue's `_buffer`, and for the
splitter its C unmasking, `aiohttp._websocket.helpers.websocket_mask`), as
`websocket_write` does for writes. `install` returns None when they are not as expected, and the
caller reads with `receive()` alone; `tests/test_websocket_read.py` fails if an aiohttp release
changes them.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType, web

from telephony_agent.websocket_frames import NEED_DATA, RAW, TEXT, FrameSplitter, available

__all__ = ["InPlaceReader", "Work", "protocol_of", "read_frames"]

Work = Coroutine[Any, Any, bool]
"""What a frame left for the reading task to await; True when the stream is over."""


def protocol_of(ws: ClientWebSocketResponse) -> Any:
    """The protocol object of a client WebSocket's connection (None if aiohttp keeps it elsewhere)."""
    return getattr(getattr(ws, "_conn", None), "protocol", None)


async def read_frames(reader: InPlaceReader | None, read_one: Callable[[], Awaitable[bool]],
                      going: Callable[[], bool] = lambda: True) -> None:
    """The reading task's loop, while `going()`: the work frames leave (`reader.next_work()`),
    awaited in order, and every other frame through `read_one` (one `receive()`, handled; False
    once the stream is over). A work's True also ends it. Without a reader (`install` declined),
    every frame goes through `read_one`. The reader is detached at the end."""
    try:
        while going():
            if reader is not None:
                work = await reader.next_work()
                if work is not None:
                    if await work:
                        return
                    continue
            if not await read_one():
                return
    finally:
        if reader is not None:
            reader.detach()


_MORE = (False, b"")
"""What aiohttp's parser returns for a read that did not end the stream."""


def _read_now(read: Coroutine[Any, Any, Any]) -> Any:
    """The queue's `read()` run to its end at once: it returns without waiting when its buffer
    holds a frame, which the caller has checked."""
    try:
        read.send(None)
    except StopIteration as done:
        return done.value
    read.close()
    raise RuntimeError("the WebSocket queue's read() waited with a frame in its buffer")


class InPlaceReader:
    """One upgraded connection's parser, wrapped: text frames (and binary ones, if asked) go to
    `handle` as they are read."""

    __slots__ = ("_binary", "_buffer", "_context", "_error", "_handle", "_loop", "_parser", "_protocol",
                 "_queue", "_splitter", "_wake", "_work", "_ws", "handled", "split")

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse, protocol: Any, parser: Any,
                 queue: Any, handle: Callable[[Any], Work | None], binary: bool = False,
                 splitter: FrameSplitter | None = None) -> None:
        self._ws = ws
        self._splitter = splitter  # None: every read through aiohttp's parser
        self._protocol = protocol
        self._parser = parser
        self._queue = queue
        self._buffer: deque[tuple[Any, int]] = queue._buffer
        self._handle = handle
        self._binary = binary  # binary frames too (Gemini Live sends its JSON in them)
        self._context = contextvars.copy_context()  # the task's: what a frame starts inherits the call's
        self._loop = asyncio.get_running_loop()
        self._wake: asyncio.Future[None] | None = None  # set while the task waits in next_work()
        self._work: Work | None = None
        self._error: BaseException | None = None
        self.handled = 0
        """Frames handled where they were read."""
        self.split = 0
        """Of those, frames cut from the bytes here, never made aiohttp's message (the rest came
        out of aiohttp's queue)."""

    @classmethod
    def install(cls, ws: web.WebSocketResponse | ClientWebSocketResponse, protocol: Any,
                handle: Callable[[Any], Work | None], *, binary: bool = False,
                max_size: int | None = None) -> InPlaceReader | None:
        """Wrap the parser of `ws`'s connection (`protocol`: aiohttp's protocol object for it,
        `request.protocol` on a server, `protocol_of(ws)` on a client); None (nothing changed)
        when aiohttp's internals are not the ones this was written against. Call it from the
        task that will read: `handle` runs in a copy of its context, with each text frame's
        `str` (and, with `binary`, each binary frame's `bytes`). `max_size`: the limit `ws` was
        made with (a server's own is read from it); frames over it go to aiohttp, which refuses
        them."""
        parser = getattr(protocol, "_payload_parser", None)
        queue = getattr(ws, "_reader", None)
        if (
            parser is None
            or isinstance(parser, InPlaceReader)
            or not isinstance(getattr(queue, "_buffer", None), deque)
            or not all(callable(getattr(parser, name, None)) for name in ("feed_data", "feed_eof"))
            or not all(callable(getattr(queue, name, None)) for name in ("read", "is_eof", "exception"))
        ):
            return None
        if max_size is None:
            max_size = getattr(ws, "_max_msg_size", None)
        splitter = None
        if isinstance(max_size, int) and available():
            splitter = FrameSplitter(masked=isinstance(ws, web.WebSocketResponse), binary=binary, max_size=max_size)
        reader = cls(ws, protocol, parser, queue, handle, binary, splitter)
        protocol._payload_parser = reader
        return reader

    # -- what aiohttp's protocol calls, as it would its parser --------------------------------

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        splitter = self._splitter
        result: tuple[bool, bytes] | None
        if splitter is None:
            result = self._parser.feed_data(data)
        else:
            result = None  # until aiohttp's parser is given something
            splitter.feed(data)
            while True:
                kind = splitter.next()
                if kind == NEED_DATA:
                    break
                if kind != RAW and self._in_place():
                    self.split += 1
                    if self._hand_on(splitter.text if kind == TEXT else splitter.data):
                        self.wake()
                    continue
                result = self._parser.feed_data(splitter.raw())
                if result[0]:  # aiohttp's parser failed (it has told the queue): it gets the rest as it comes
                    self._retire_splitter()
                    break
            if result is None:  # all handled here (or a partial frame): nothing new in the queue
                return _MORE
        if self._wake is not None:
            self._drain()
        return result

    def feed_eof(self) -> None:
        self._parser.feed_eof()
        self.wake()

    # -- the reading task's side ----------------------------------------------------------------

    async def next_work(self) -> Work | None:
        """Wait until the task has something to do: a coroutine a frame left (await it, then call
        again), or None: read the next frame with `receive()` (a frame that is not text, the end
        of the stream, an error, a closed socket). Raises what a handler raised."""
        while True:
            error = self._error
            if error is not None:
                self._error = None
                raise error
            work = self._work
            if work is not None:
                self._work = None
                return work
            queue = self._queue
            if self._buffer or self._ws.closed or queue.is_eof() or queue.exception() is not None:
                return None
            self._wake = wake = self._loop.create_future()
            try:
                await wake
            finally:
                self._wake = None

    def wake(self) -> None:
        """Let a waiting `next_work()` look again (the socket is closing)."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def detach(self) -> None:
        """Give the connection its own parser back (with any partial frame read); work not
        taken is dropped."""
        if getattr(self._protocol, "_payload_parser", None) is self:
            self._protocol._payload_parser = self._parser
            self._retire_splitter()
        work, self._work = self._work, None
        if work is not None:
            work.close()
        self.wake()

    def _in_place(self) -> bool:
        """A frame read now can be handled now: the task waits (so it has no work and no error:
        either wakes it), nothing is queued before the frame, the socket is open."""
        return self._wake is not None and not self._buffer and not self._ws.closed

    def _retire_splitter(self) -> None:
        """From now on aiohttp's parser reads everything, starting with a partial frame the
        splitter holds."""
        splitter, self._splitter = self._splitter, None
        rest = b"" if splitter is None else splitter.take_rest()
        if rest:
            self._parser.feed_data(rest)

    def _hand_on(self, data: str | bytes) -> bool:
        """One frame to the handler, in the task's context; True when the task has something to
        do now (the work the frame left, or the handler's error to raise)."""
        self.handled += 1
        try:
            work = self._context.run(self._handle, data)
        except Exception as exc:  # noqa: BLE001 -- the task raises it, as it would have from its own read
            self._error = exc
            return True
        if work is None:
            return False
        self._work = work
        return True

    def _drain(self) -> None:
        """Hand on the text frames at the head of the queue while the task waits and the socket
        is open; wake the task for anything else."""
        buffer = self._buffer
        queue = self._queue
        while buffer:
            kind = buffer[0][0].type
            if (kind is not WSMsgType.TEXT and (kind is not WSMsgType.BINARY or not self._binary)) or self._ws.closed:
                break
            try:
                data = _read_now(queue.read()).data
            except Exception as exc:  # noqa: BLE001 -- the task raises it, as it would have from its own read
                self._error = exc
                break
            if self._hand_on(data):
                break
        else:  # all handled: the task sleeps on unless the stream ended under the frames
            if not queue.is_eof() and queue.exception() is None:
                return
        self.wake()
