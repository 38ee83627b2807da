"""WebSocket writes without a writer task: what a pass of the event loop sends, written together
at its end.

aiohttp's `send_str` is a coroutine because it may wait for the socket to drain. Sockets that
send 50 small messages a second per call (caller audio to the provider, agent audio to the
phone) went through a writer task for that, and the hop to it (a queue, a wake-up, a task step)
cost as much as the write. aiohttp builds and writes a frame synchronously
(`_write_websocket_frame`, masking included on the client side); `send_str` only adds the wait
for drain. So while the socket takes data, `write_now` writes at once; past `WRITE_NOW_LIMIT`
unsent bytes, or if that aiohttp method is missing, the caller queues for its writer task, which
waits for drain as before. `WriteBatch` gathers the writes of a pass into one callback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

import aiohttp

from telephony_agent.per_loop import PerLoop

log = logging.getLogger(__name__)

WRITE_NOW_LIMIT = 64 * 1024  # past this much unsent, writes go through the writer task, which waits for drain

WRITE_ERRORS = (ConnectionResetError, aiohttp.ClientError, RuntimeError)
"""What a write to a closing or reset socket raises (aiohttp's and asyncio's)."""


def write_now(ws: aiohttp.ClientWebSocketResponse | aiohttp.web.WebSocketResponse, texts: Iterable[str]) -> bool:
    """Write text frames now if the socket takes them without waiting; False (nothing written)
    if it does not, and the caller must queue them. Raises one of `WRITE_ERRORS` if the write
    fails."""
    writer = getattr(ws, "_writer", None)
    write = getattr(writer, "_write_websocket_frame", None)  # aiohttp's synchronous frame write
    transport = getattr(writer, "transport", None)
    if (
        write is None
        or transport is None
        or transport.is_closing()
        or getattr(writer, "_closing", True)
        or transport.get_write_buffer_size() > WRITE_NOW_LIMIT
    ):
        return False
    for text in texts:
        write(text.encode(), aiohttp.WSMsgType.TEXT, 0)
    return True


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
