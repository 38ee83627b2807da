"""Text frames handled where aiohttp's parser reads them (`InPlaceReader`), against a real aiohttp
client over loopback: in order with the frames the task reads and the work frames leave, with the
task's context, and the read ends however the socket does (the peer closes or vanishes, the server
closes from another task, a handler fails, a busy task makes aiohttp pause the socket)."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hand_frames import frame
from loopback_app import serving

from telephony_agent.websocket_read import InPlaceReader, Work, read_frames

CALL = contextvars.ContextVar[str]("call", default="none")


class Server:
    """One WebSocket route that reads the way the Twilio media socket does: frames in place while
    the task waits in `next_work()`, the rest through `receive()`, each handled by `handle`."""

    def __init__(self, handle: Callable[[Server, Any], Work | None], *, binary: bool = False,
                 max_msg_size: int = 4 * 1024 * 1024) -> None:
        self.handle = handle
        self.max_msg_size = max_msg_size
        self.binary = binary
        self.log: list[str] = []
        self.reader: InPlaceReader | None = None
        self.ws: web.WebSocketResponse | None = None
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self.last: aiohttp.WSMsgType | None = None
        self.parser_restored = False
        self.split = False
        self.app = web.Application()
        self.app.router.add_get("/ws", self.route)

    async def route(self, request: web.Request) -> web.WebSocketResponse:
        ws = self.ws = web.WebSocketResponse(max_msg_size=self.max_msg_size)
        await ws.prepare(request)
        CALL.set("call-1")
        reader = self.reader = InPlaceReader.install(ws, request.protocol, lambda data: self.handle(self, data),
                                                      binary=self.binary)
        assert reader is not None, "aiohttp's parser or queue is not what InPlaceReader was written against"
        self.split = reader._splitter is not None  # frames cut by the reader itself, not aiohttp's parser

        async def read_one() -> bool:
            msg = await ws.receive()
            self.last = msg.type
            if msg.type is aiohttp.WSMsgType.TEXT:
                work = self.handle(self, msg.data)
                return work is None or not await work
            if msg.type is aiohttp.WSMsgType.BINARY:
                self.log.append(f"bin:{msg.data.decode()}")
                return True
            if msg.type is aiohttp.WSMsgType.ERROR:
                self.log.append("error")
            return False

        try:
            await read_frames(reader, read_one)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc
        finally:
            self.parser_restored = not isinstance(request.protocol._payload_parser, InPlaceReader)
            self.ended.set()
        return ws


def logging_handler(slow_every: int = 0, delay: float = 0.005) -> Callable[[Server, str], Work | None]:
    """Logs each frame where it is handled; every `slow_every`-th leaves work that waits `delay`."""

    def handle(server: Server, text: str) -> Work | None:
        server.log.append(text)
        n = int(text.split(":")[1])
        if slow_every and n % slow_every == 0:
            async def slow() -> bool:
                await asyncio.sleep(delay)
                server.log.append(f"after:{n}")
                return False
            return slow()
        return None

    return handle


@asynccontextmanager
async def client_of(server: Server) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A real aiohttp client connected to `server`, served on loopback for the block."""
    async with serving(server.app) as port, aiohttp.ClientSession() as session:
        yield await session.ws_connect(f"http://127.0.0.1:{port}/ws")


async def wait(event: asyncio.Event | Awaitable[Any], timeout: float = 10.0) -> None:
    await asyncio.wait_for(event.wait() if isinstance(event, asyncio.Event) else event, timeout)


async def test_frames_are_handled_where_read_in_order_with_work_and_the_tasks_frames() -> None:
    server = Server(logging_handler(slow_every=7))
    expected: list[str] = []
    async with client_of(server) as ws:
            for i in range(1, 301):
                await ws.send_str(f"t:{i}")
                expected.append(f"t:{i}")
                if i % 7 == 0:
                    expected.append(f"after:{i}")
                if i % 25 == 0:  # binary frames go through the task's receive(), between their neighbours
                    await ws.send_bytes(f"{i}".encode())
                    expected.append(f"bin:{i}")
                if i % 30 == 0:  # aiohttp answers pings in receive(), then waits in its own queue
                    await ws.ping(b"p")
                if i % 50 == 0:
                    await asyncio.sleep(0.02)  # some reads with one frame, some with many
            await ws.close()
            await wait(server.ended)
    assert server.error is None
    assert server.log == expected
    assert server.reader is not None
    assert 0 < server.reader.handled < 300  # in place while the task waited; the rest through receive()
    assert server.parser_restored


async def test_frames_that_come_while_the_task_waits_are_all_handled_in_place() -> None:
    server = Server(logging_handler())
    async with client_of(server) as ws:
            for i in range(1, 51):
                await ws.send_str(f"t:{i}")
                await asyncio.sleep(0.002)  # paced like a media stream, faster
            await ws.close()
            await wait(server.ended)
    assert server.log == [f"t:{i}" for i in range(1, 51)]
    assert server.reader is not None and server.reader.handled >= 49  # the first may beat the install


async def test_binary_frames_too_when_asked_in_order_with_text() -> None:
    """The provider transport's reader takes binary frames too (Gemini Live sends its JSON in them)."""

    def handle(server: Server, data: str | bytes) -> Work | None:
        server.log.append(data if isinstance(data, str) else f"b:{data.decode()}")
        return None

    server = Server(handle, binary=True)
    expected = []
    async with client_of(server) as ws:
        for i in range(1, 31):
            if i % 2:
                await ws.send_bytes(f"{i}".encode())
                expected.append(f"b:{i}")
            else:
                await ws.send_str(f"t:{i}")
                expected.append(f"t:{i}")
            await asyncio.sleep(0.002)
        await ws.close()
        await wait(server.ended)
    assert server.log == expected
    assert server.reader is not None and server.reader.handled >= 29  # the first may beat the install


async def test_the_handler_runs_in_the_reading_tasks_context_outside_any_task() -> None:
    seen: list[tuple[str, bool]] = []

    def handle(server: Server, text: str) -> Work | None:
        seen.append((CALL.get(), asyncio.current_task() is None))
        return None

    server = Server(handle)
    async with client_of(server) as ws:
            await ws.send_str("t:1")
            await asyncio.sleep(0.1)
            await ws.send_str("t:2")
            await ws.close()
            await wait(server.ended)
    assert seen and all(call == "call-1" for call, _ in seen)
    assert any(outside for _, outside in seen)  # at least one was handled in place, not in a task


async def test_a_handlers_error_is_raised_in_the_reading_task() -> None:
    def handle(server: Server, text: str) -> Work | None:
        if text == "t:3":
            raise ValueError("bad frame")
        server.log.append(text)
        return None

    server = Server(handle)
    async with client_of(server) as ws:
            for i in range(1, 6):
                await ws.send_str(f"t:{i}")
            await wait(server.ended)
    assert isinstance(server.error, ValueError)
    assert server.log == ["t:1", "t:2"]
    assert server.parser_restored


async def test_a_peer_that_vanishes_ends_the_read() -> None:
    server = Server(logging_handler())
    async with client_of(server) as ws:
            await ws.send_str("t:1")
            await asyncio.sleep(0.05)
            connection = ws._response.connection  # type: ignore[attr-defined]
            assert connection is not None and connection.transport is not None
            connection.transport.abort()  # no close frame: the TCP connection just goes
            await wait(server.ended)
    assert server.error is None
    assert server.log == ["t:1"]
    assert server.last in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)


async def test_closing_from_another_task_wakes_the_waiting_reader() -> None:
    server = Server(logging_handler())
    async with client_of(server) as ws:
            await ws.send_str("t:1")
            for _ in range(100):
                if server.log:
                    break
                await asyncio.sleep(0.01)
            assert server.ws is not None and server.reader is not None

            async def close() -> None:  # what the call does when the agent hangs up
                assert server.ws is not None and server.reader is not None
                server.reader.wake()
                await server.ws.close()

            closing = asyncio.create_task(close())
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            await ws.close()
            await wait(closing)
            await wait(server.ended)
    assert server.error is None
    assert server.last is aiohttp.WSMsgType.CLOSED


async def test_a_busy_task_lets_aiohttp_pause_the_socket_and_nothing_is_lost() -> None:
    """Large frames while the task awaits slow work: they wait in aiohttp's queue (past its limit it
    stops reading the socket), then come out in order."""
    big = "x" * 60_000

    def handle(server: Server, text: str) -> Work | None:
        n = int(text.split(":")[1])
        server.log.append(f"t:{n}")
        if n == 1:
            async def slow() -> bool:
                await asyncio.sleep(0.3)
                return False
            return slow()
        return None

    server = Server(handle)
    async with client_of(server) as ws:
            for i in range(1, 41):
                await ws.send_str(f"t:{i}:{big}")
            await ws.send_str("t:41")
            for _ in range(500):
                if len(server.log) == 41:
                    break
                await asyncio.sleep(0.01)
            await ws.close()
            await wait(server.ended)
    assert server.log == [f"t:{i}" for i in range(1, 42)]
    assert server.error is None


def test_install_leaves_a_connection_it_does_not_know_alone() -> None:
    class Protocol:
        _payload_parser = None

    assert InPlaceReader.install(web.WebSocketResponse(), Protocol(), lambda text: None) is None
    assert InPlaceReader.install(web.WebSocketResponse(), None, lambda text: None) is None


@pytest.mark.parametrize("work", ["none", "coroutine"])
async def test_work_left_untaken_is_closed_on_detach(work: str) -> None:
    """A reader detached with work pending closes the coroutine (no 'never awaited' warning)."""
    ran: list[str] = []

    async def pending() -> bool:
        ran.append("ran")
        return False

    server = Server(lambda s, text: pending() if work == "coroutine" else None)
    async with client_of(server) as ws:
            await ws.close()
            await wait(server.ended)
    assert server.reader is not None
    coro = pending()
    server.reader._work = coro
    server.reader.detach()
    assert coro.cr_frame is None  # closed
    assert ran == []


# -- a raw client over loopback: frames written by hand, cut and misbehaving as a peer may -----


@asynccontextmanager
async def raw_client(server: Server) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP client that upgrades by hand and then writes whatever bytes the test gives it."""
    async with serving(server.app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        for _ in range(100):  # the route has installed the reader
            if server.reader is not None:
                break
            await asyncio.sleep(0.01)
        try:
            yield reader, writer
        finally:
            writer.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked frame from the server: (opcode, payload)."""
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 5)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return b0 & 0x0F, await reader.readexactly(n)


async def test_frames_cut_into_single_bytes_are_all_handled_in_place_in_order() -> None:
    server = Server(logging_handler())
    data = b"".join(frame(f"t:{i}".encode()) for i in range(1, 21))
    async with raw_client(server) as (_, writer):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            if i % 7 == 0:
                await asyncio.sleep(0.001)  # separate reads
        for _ in range(200):
            if len(server.log) == 20:
                break
            await asyncio.sleep(0.01)
    assert server.log == [f"t:{i}" for i in range(1, 21)]
    assert server.split and server.reader is not None and server.reader.handled == 20


async def test_a_ping_between_frames_is_answered_and_a_fragmented_message_keeps_its_place() -> None:
    server = Server(logging_handler())
    async with raw_client(server) as (reader, writer):
        writer.write(frame(b"t:1") + frame(b"are you there", opcode=9) + frame(b"t:2"))
        assert await read_frame(reader) == (10, b"are you there")  # the pong, from aiohttp's receive()
        writer.write(frame(b"t:", fin=False) + frame(b"p", opcode=9) + frame(b"3", opcode=0) + frame(b"t:4"))
        assert await read_frame(reader) == (10, b"p")
        writer.write(frame(b"t:5"))
        for _ in range(200):
            if len(server.log) == 5:
                break
            await asyncio.sleep(0.01)
    assert server.log == ["t:1", "t:2", "t:3", "t:4", "t:5"]
    assert server.error is None


@pytest.mark.parametrize(("bad", "code"), [
    (frame(b"t:" + b"9" * 3000), 1009),  # over the socket's limit: refused
    (frame(b"t:\xff\xfe"), 1007),  # not UTF-8
    (frame(b"t:1", rsv=0x20), 1002),  # a reserved bit with no extension that uses it
    (frame(b"t:1", opcode=0), 1002),  # a continuation of nothing
], ids=["over-limit", "bad-utf8", "reserved-bit", "orphan-continuation"])  # the frames' masks are random
@pytest.mark.parametrize("split", [True, False], ids=["split", "aiohttp-only"])
async def test_frames_the_reader_does_not_take_are_refused_by_aiohttp_as_before(
        bad: bytes, code: int, split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not split:
        monkeypatch.setattr("telephony_agent.websocket_read.available", lambda: False)
    server = Server(logging_handler(), max_msg_size=1000)
    async with raw_client(server) as (reader, writer):
        writer.write(frame(b"t:1") + bad + frame(b"t:2"))
        opcode, payload = await read_frame(reader)
        await wait(server.ended)
    assert opcode == 8 and int.from_bytes(payload[:2], "big") == code
    assert server.log == ["t:1", "error"]  # nothing after the bad frame is handled
    assert server.parser_restored
    assert server.split == split


async def test_one_read_keeps_its_order_across_work_and_frames_aiohttp_reads() -> None:
    """A binary frame (the task's to read) and a frame that leaves work, with text frames after
    each, all in one read: nothing after either is handled before it."""
    server = Server(logging_handler(slow_every=7))
    async with raw_client(server) as (_, writer):
        writer.write(frame(b"t:1") + frame(b"b", opcode=2) + frame(b"t:2") + frame(b"t:7") + frame(b"t:8"))
        for _ in range(200):
            if len(server.log) == 6:
                break
            await asyncio.sleep(0.01)
    assert server.log == ["t:1", "bin:b", "t:2", "t:7", "after:7", "t:8"]
    assert server.split and server.error is None
