"""A server socket's frames of one pass go out in one write, byte for byte what aiohttp would
have written frame by frame, and a real client reads them in order."""

from __future__ import annotations

import asyncio

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
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                while len(received) < 15:
                    msg = await asyncio.wait_for(ws.receive(), 5.0)
                    assert msg.type is aiohttp.WSMsgType.TEXT
                    received.append(msg.data)
        finally:
            done.set()
    assert received == sent
    assert len(before_close) == 3, before_close  # one write per pass, not one per frame
