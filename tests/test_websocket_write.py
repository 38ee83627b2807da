"""A server socket's frames of one pass go out in one write, byte for byte what aiohttp would
have written frame by frame, and a real client reads them in order."""

from __future__ import annotations

import asyncio
import warnings

import aiohttp
import pytest
from aiohttp import web
from aiohttp._websocket.writer import WebSocketWriter
from loopback_app import serving

from telephony_agent.websocket_write import FrameWriter, text_frame

# every header length (7-bit, 16-bit, 64-bit) and the edges between them, in UTF-8 bytes
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


class Capture:
    """A transport that keeps what is written."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", SIZES)
def test_a_text_frame_is_what_aiohttp_writes(size: int) -> None:
    text = ("é" * (size // 2)) + ("a" * (size % 2))  # two-byte characters: the length is in bytes
    assert len(text.encode()) == size
    capture = Capture()
    writer = WebSocketWriter(None, capture, use_mask=False)  # type: ignore[arg-type]
    writer._write_websocket_frame(text.encode(), aiohttp.WSMsgType.TEXT, 0)
    assert text_frame(text) == b"".join(capture.writes)


async def test_a_server_sockets_frames_of_a_pass_go_in_one_write_and_arrive_in_order() -> None:
    writes: list[int] = []
    before_close: list[int] = []
    sent: list[str] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        transport = ws._writer.transport  # type: ignore[union-attr]
        real_write = transport.write

        def counted(data: bytes) -> None:
            writes.append(len(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        frames = FrameWriter(ws, "test socket")
        frames.start()
        for round_ in range(3):
            texts = [f'{{"event":"media","n":{round_},"i":{i}}}' + "x" * (60 * i) for i in range(4)]
            texts.append("y" * 70000)  # a frame with a 64-bit length among them
            frames.send(texts[:2])
            frames.send(texts[2:])
            sent.extend(texts)
            await asyncio.sleep(0)  # the pass ends: all five in one write
        await done.wait()
        before_close.extend(writes)
        await frames.close(1.0)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    received: list[str] = []
    async with serving(app) as port:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            try:
                while len(received) < 15:
                    msg = await asyncio.wait_for(ws.receive(), 5.0)
                    assert msg.type is aiohttp.WSMsgType.TEXT
                    received.append(msg.data)
            finally:
                done.set()  # before the client's close, which waits for the server's
    assert received == sent
    assert len(before_close) == 3, before_close  # one write per pass, not one per frame


class _Stuck:
    """A socket that never drains: aiohttp's `send_str` waits, and `write_now` finds no writer, so
    every frame goes to the writer task."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def send_str(self, text: str) -> None:
        self.started.append(text)
        await asyncio.Event().wait()


async def test_a_close_cancelled_while_the_writer_waits_cancels_it_without_deprecation() -> None:
    """The close is cancelled while it waits for the writer task, as a Gemini session's teardown
    cancels a retiring connection's close. The writer is cancelled, the close returns so the
    caller's teardown goes on, and nothing passes the cancellation on with the three-argument
    `throw()` (Python 3.12+ warns; compiled coroutines did, mypyc/mypyc#1214)."""
    ws = _Stuck()
    frames = FrameWriter(ws, "stuck socket")  # type: ignore[arg-type]
    frames.start()
    frames.send(["a", "b"])
    for _ in range(5):
        await asyncio.sleep(0)
    assert ws.started == ["a"] and frames.queued == 1 and frames.unwritten
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closing = asyncio.create_task(frames.close(30.0))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert not closing.done()
        closing.cancel()
        await asyncio.wait_for(closing, 1.0)  # returned, not cancelled: the teardown goes on
        assert frames.task is not None
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(frames.task, 1.0)
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []


async def test_a_close_past_its_timeout_cancels_the_writer() -> None:
    ws = _Stuck()
    frames = FrameWriter(ws, "stuck socket")  # type: ignore[arg-type]
    frames.start()
    frames.send(["a"])
    await asyncio.sleep(0.01)
    await asyncio.wait_for(frames.close(0.05), 2.0)
    assert frames.task is not None
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(frames.task, 1.0)
    frames.send(["late"])  # nothing is written once closed
    await asyncio.sleep(0.01)
    assert ws.started == ["a"]


async def test_a_client_sockets_frames_are_masked_by_aiohttp_whose_writer_is_looked_up_once() -> None:
    """A client's frames (the provider socket's) are masked and written by aiohttp's own frame
    write, one per frame; the writer, its transport and its mask flag are looked up at the first
    write and kept for the socket's life. A real server reads every frame in order."""
    received: list[str] = []
    got_all = asyncio.Event()
    texts = [f'{{"type":"input_audio_buffer.append","n":{i}}}' + "z" * (40 * i) for i in range(12)]

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append(msg.data)
            if len(received) == len(texts):
                got_all.set()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with serving(app) as port:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
            frames = FrameWriter(ws, "test client socket")
            frames.start()
            frames.send(texts[:1])
            await asyncio.sleep(0)
            direct = frames._direct
            assert direct is not None and direct.masked and direct.transport is ws._writer.transport
            for i in range(1, len(texts), 3):
                frames.send(texts[i:i + 3])
                await asyncio.sleep(0)
            assert frames._direct is direct  # not looked up again
            assert frames.sent == len(texts) and frames.queued == 0
            await asyncio.wait_for(got_all.wait(), 5.0)
            await frames.close(1.0)
    assert received == texts
