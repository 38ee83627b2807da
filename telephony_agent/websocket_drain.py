"""The waiting half of a socket's writes: the writer task, which sends what a backed-up socket
queued and waits for it to drain, and the bounded wait for that task when the socket closes.

They live apart from `websocket_write` because that module is compiled with mypyc and this one
must not be. A compiled coroutine hands a cancellation on to what it awaits with the three-argument
`throw()`, which Python 3.12 deprecates (mypyc/mypyc#1214, open): a Gemini session that retired a
connection and was closed while it waited for the writer warned. Nothing here is on the per-frame
path: the writer task runs only behind a socket that does not take data, and the close once.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp

WRITE_ERRORS = (ConnectionResetError, aiohttp.ClientError, RuntimeError)
"""What a write to a closing or reset socket raises (aiohttp's and asyncio's)."""


class Queued(Protocol):
    """The frames a writer queued for its task (`websocket_write.FrameWriter`)."""

    def take_queued(self) -> str | None:
        """The next queued frame, held as being written until `written`; None when none is left."""

    def written(self) -> None:
        """The frame from `take_queued` has gone to the socket."""

    def more(self) -> asyncio.Event | None:
        """A cleared event, set when more is queued; None once the writer closes (the task ends)."""

    def write_failed(self, exc: BaseException) -> None:
        """A write raised one of `WRITE_ERRORS`: the writer is done for."""


async def write_queued(ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse, frames: Queued) -> None:
    """The writer task: each queued frame through aiohttp's `send_str`, which waits for drain."""
    try:
        while True:
            text = frames.take_queued()
            while text is not None:
                await ws.send_str(text)
                frames.written()
                text = frames.take_queued()
            more = frames.more()
            if more is None:
                return
            await more.wait()
    except WRITE_ERRORS as exc:
        frames.write_failed(exc)


async def finish(task: asyncio.Task[None] | None, timeout: float) -> None:
    """Let the writer task write its queue, for at most `timeout`; then cancel it. A cancelled
    close cancels it too and returns, so the caller's teardown (closing the socket) goes on."""
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
