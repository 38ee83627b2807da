"""A WebSocket client connection, shared by the cloud providers: what a pass of the event loop
sends is written at its end, through a writer task (which waits for drain) only while the socket
is backed up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConnectionError,
    RealtimeTimeoutError,
    SessionClosedError,
)
from telephony_agent.websocket_read import InPlaceReader, protocol_of, read_frames
from telephony_agent.websocket_write import FrameWriter
from telephony_agent.wiretap import WIRETAP, Wiretap

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


class WebSocketTransport:
    """Owns one socket: `send()` never blocks the caller. What is sent in a pass of the event loop
    is written at its end, with every other socket's (`websocket_write.FrameWriter`): at once while
    nothing is queued and the socket takes data, otherwise through the writer task, which waits
    for drain; later messages queue behind, so frames keep their order.

    `receive()` returns the next message as `str`/`bytes`, or None once the socket is closed
    (`close_code`/`close_reason` then say why); `pump(handle)` hands every message to `handle`
    until then, text where aiohttp's parser reads it.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        *,
        connect_timeout: float = 10.0,
        max_msg_size: int = 16 * 1024 * 1024,
    ) -> None:
        self._http = http
        self._url = url
        self._headers = headers
        self._connect_timeout = connect_timeout
        self._max_msg_size = max_msg_size
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._frames: FrameWriter | None = None  # from `connect`
        self._closing = False
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._tap: Wiretap | None = WIRETAP.get()
        self.reader: InPlaceReader | None = None  # the last `pump`'s

    @property
    def sent_messages(self) -> int:
        return 0 if self._frames is None else self._frames.sent

    @property
    def open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        try:
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(
                    self._url,
                    headers=self._headers,
                    max_msg_size=self._max_msg_size,
                    autoping=True,
                    heartbeat=20.0,
                ),
                self._connect_timeout,
            )
        except TimeoutError:
            raise RealtimeTimeoutError(f"connecting to {_safe_url(self._url)} timed out") from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise RealtimeAuthError(f"{_safe_url(self._url)} refused the credentials ({exc.status})") from None
            raise RealtimeConnectionError(f"{_safe_url(self._url)} refused the upgrade ({exc.status})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RealtimeConnectionError(f"cannot reach {_safe_url(self._url)}: {exc}") from None
        self._frames = FrameWriter(self._ws, "provider socket", log)
        self._frames.start()

    def send(self, message: dict[str, Any] | str) -> None:
        ws, frames = self._ws, self._frames
        if (
            ws is None
            or ws.closed
            or self._closing
            or frames is None
            or frames.failed
            or frames.task is None
            or frames.task.done()
        ):
            raise SessionClosedError("the provider connection is closed")
        text = message if isinstance(message, str) else orjson.dumps(message).decode()
        if self._tap is not None:
            self._tap.record("provider", "out", text)
        frames.send((text,))

    async def receive(self) -> str | bytes | None:
        ws = self._ws
        if ws is None:
            return None
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                if self._tap is not None:
                    self._tap.record("provider", "in", msg.data)
                data: str | bytes = msg.data
                return data
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                self.close_code = ws.close_code if ws.close_code is not None else msg.data
                self.close_reason = (msg.extra or "") if isinstance(msg.extra, str) else ""
                return None
            if msg.type is aiohttp.WSMsgType.ERROR:
                self.close_code = ws.close_code or 1006
                self.close_reason = str(msg.data)
                return None
            # PING/PONG are handled by aiohttp; loop for the next message.

    async def pump(self, handle: Callable[[str | bytes], None]) -> None:
        """Every message to `handle` until the socket is closed (`close_code`/`close_reason` then
        say why). Text and binary frames are handed on where aiohttp's parser reads them while
        this waits (`websocket_read.InPlaceReader`: no task wake-up per provider message); the
        rest, and every frame while this is busy, through `receive()`, in order. What `handle`
        raises, this raises."""
        ws = self._ws
        if ws is None:
            return
        tap = self._tap

        def now(data: str | bytes) -> None:
            if tap is not None:
                tap.record("provider", "in", data)
            handle(data)

        async def read_one() -> bool:
            data = await self.receive()
            if data is None:
                return False
            handle(data)
            return True

        self.reader = InPlaceReader.install(ws, protocol_of(ws), now, binary=True, max_size=self._max_msg_size)
        await read_frames(self.reader, read_one)

    async def drain(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Wait until everything queued has been written (bounded)."""
        frames = self._frames
        if frames is None or frames.task is None or frames.task.done():
            return
        deadline = asyncio.get_running_loop().time() + timeout
        frames.flush()
        while frames.unwritten and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)

    async def close(self, code: int = 1000, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Flush queued messages, close the socket, stop the writer; bounded by `timeout`."""
        self._closing = True
        writer = None if self._frames is None else self._frames.task
        if self._frames is not None:
            await self._frames.close(timeout)
        if self._ws is not None and not self._ws.closed:
            try:
                await asyncio.wait_for(self._ws.close(code=code), timeout)
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
        if writer is not None and not writer.done():
            writer.cancel()
            try:
                await writer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - we are tearing down
                pass
        if self._ws is not None:
            _stop_heartbeat(self._ws)


def _stop_heartbeat(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Cancel the heartbeat timers of a closed socket.

    aiohttp (seen in 3.14) cancels them in `close()`, but the peer's close frame arriving during
    the closing handshake re-arms the heartbeat (`_on_data_received`), and that timer then keeps
    the socket, its connection and buffers alive for heartbeat + pong time (~30 s) after every
    call. At 40 calls/s that is ~1,200 dead sockets held at once (found by the load benchmark's
    1,000 sequential calls, `tests/test_leaks.py`). Private API, so guarded.
    """
    cancel = getattr(ws, "_cancel_heartbeat", None)
    if callable(cancel):
        try:
            cancel()
        except Exception:  # noqa: BLE001 - best effort on a closed socket
            pass


def _safe_url(url: str) -> str:
    """The URL without its query string, which may carry a key."""
    return url.split("?", 1)[0]


def secret_value(value: Any) -> str:
    """The plain text of a key given as `str` or pydantic `SecretStr`."""
    getter = getattr(value, "get_secret_value", None)
    return getter() if callable(getter) else str(value)


class SharedHttpClient:
    """A model's aiohttp client: the one it was given (the server's, shared by every call), or
    one of its own, created on first use and closed by `close()`."""

    def __init__(self, http: aiohttp.ClientSession | None) -> None:
        self._http = http
        self._owned = http is None

    def get(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            self._owned = True
        return self._http

    async def close(self) -> None:
        if self._owned and self._http is not None and not self._http.closed:
            await self._http.close()
        if self._owned:
            self._http = None
