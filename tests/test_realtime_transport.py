"""The provider WebSocket transport over a real loopback socket: a pass's messages written
together at its end, a writer task behind a socket that backs up, frames in order either way,
failures reported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from loopback_app import serving

from telephony_agent.realtime.errors import SessionClosedError
from telephony_agent.realtime.transport import WebSocketTransport
from telephony_agent.websocket_write import WriteBatch


class Peer:
    """A WebSocket server that reads only when told to (so our socket backs up meanwhile)."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.received: list[str] = []
        self.ws: web.WebSocketResponse | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        self.ws = ws
        await self.reading.wait()
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.received.append(msg.data)
        return ws


def queued(transport: WebSocketTransport) -> int:
    """Messages waiting for the transport's writer task (its socket backed up)."""
    assert transport._frames is not None
    return transport._frames.queued


@asynccontextmanager
async def peer_and_transport() -> AsyncIterator[tuple[Peer, WebSocketTransport]]:
    peer = Peer()
    app = web.Application()
    app.router.add_get("/ws", peer.handler)
    async with serving(app) as port, aiohttp.ClientSession() as http:
        transport = WebSocketTransport(http, f"http://127.0.0.1:{port}/ws", {})
        await transport.connect()
        try:
            yield peer, transport
        finally:
            peer.reading.set()
            await transport.close()


async def test_a_passes_messages_are_written_together_when_it_ends() -> None:
    async with peer_and_transport() as (peer, transport):
        peer.reading.set()
        for round_ in range(5):
            for i in range(10):
                transport.send({"type": "n", "i": 10 * round_ + i})
            assert transport.sent_messages == 10 * round_  # not yet: at the end of the pass
            await asyncio.sleep(0)
            # all written in one callback, none through the writer task
            assert transport.sent_messages == 10 * round_ + 10
            assert queued(transport) == 0
        for _ in range(200):
            if len(peer.received) == 50:
                break
            await asyncio.sleep(0.01)
        assert peer.received == [f'{{"type":"n","i":{i}}}' for i in range(50)]


async def test_frames_keep_their_order_while_the_socket_backs_up_and_drains() -> None:
    """The peer does not read at first, so the kernel buffers fill and our transport buffers
    past its limit: later messages queue for the writer task. Messages go on being sent while
    it drains, so a write in the sender's turn that jumped the queue would show as disorder."""
    filler = "x" * 4000
    async with peer_and_transport() as (peer, transport):
        sent = 0
        queued_at_most = 0
        for _ in range(200):  # bounded: 16 MB is past any loopback socket's buffers
            for _ in range(20):
                transport.send(f"{sent} {filler}")
                sent += 1
            await asyncio.sleep(0)
            queued_at_most = max(queued_at_most, queued(transport))
            if queued_at_most >= 20:
                break
        assert queued_at_most >= 20, "the socket never backed up: the test proves nothing"
        peer.reading.set()
        for _ in range(400):  # keep sending while it drains, a few messages per loop pass
            for _ in range(3):
                transport.send(f"{sent} {filler}")
                sent += 1
            await asyncio.sleep(0)
        await transport.drain(timeout=10.0)
        for _ in range(500):
            if len(peer.received) == sent:
                break
            await asyncio.sleep(0.01)
        numbers = [int(m.split(" ", 1)[0]) for m in peer.received]
        assert numbers == list(range(sent))
        assert transport.sent_messages == sent


async def test_a_socket_that_is_gone_raises_session_closed() -> None:
    async with peer_and_transport() as (peer, transport):
        peer.reading.set()
        transport.send("hello")
        assert peer.ws is not None
        for _ in range(200):
            if peer.received:
                break
            await asyncio.sleep(0.01)
        await peer.ws.close()
        with pytest.raises(SessionClosedError):
            for _ in range(200):  # the close reaches us within a few loop passes
                transport.send("after the peer left")
                await asyncio.sleep(0.01)
        assert peer.received == ["hello"]


async def test_one_sockets_failure_does_not_keep_the_others_frames() -> None:
    class Owner:
        def __init__(self, fail: bool) -> None:
            self.fail = fail
            self.flushed = 0

        def flush(self) -> None:
            self.flushed += 1
            if self.fail:
                raise ValueError("a bug in one socket's flush")

    batch = WriteBatch.for_loop(asyncio.get_running_loop())
    owners = [Owner(False), Owner(True), Owner(False)]
    for owner in owners:
        batch.add(owner)
    await asyncio.sleep(0)
    assert [o.flushed for o in owners] == [1, 1, 1]
    await asyncio.sleep(0)  # flushed once per pass they were added in, not again
    assert [o.flushed for o in owners] == [1, 1, 1]


async def test_pump_hands_every_message_on_in_order_most_where_they_are_read() -> None:
    """The provider's messages, paced and in a burst, text and binary, then its close: `pump` gives
    each to the handler once, in order, text mostly where aiohttp read it, and returns with the
    close code."""
    sent: list[str | bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for i in range(40):
            if i % 10 == 9:
                sent.append(f"bin{i}".encode())
                await ws.send_bytes(sent[-1])  # type: ignore[arg-type]
            else:
                sent.append(f'{{"i": {i}}}')
                await ws.send_str(sent[-1])  # type: ignore[arg-type]
            if i < 30:
                await asyncio.sleep(0.003)  # paced; the last ten in one burst
        await ws.close(code=4000, message=b"done")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    got: list[str | bytes] = []
    async with serving(app) as port, aiohttp.ClientSession() as http:
        transport = WebSocketTransport(http, f"http://127.0.0.1:{port}/ws", {})
        await transport.connect()
        await asyncio.wait_for(transport.pump(got.append), 10)
        await transport.close()
    assert got == sent
    assert transport.close_code == 4000
    assert transport.reader is not None
    assert transport.reader.handled >= 20  # the paced text frames, where they were read
    assert transport.reader.split >= 20  # cut from the bytes read (a client: unmasked frames)


async def test_what_the_handler_raises_pump_raises() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for i in range(5):
            await ws.send_str(str(i))
            await asyncio.sleep(0.01)
        async for _ in ws:  # until the client closes
            pass
        return ws

    def handle(data: str | bytes) -> None:
        if data == "2":
            raise ValueError("a translator bug")

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with serving(app) as port, aiohttp.ClientSession() as http:
        transport = WebSocketTransport(http, f"http://127.0.0.1:{port}/ws", {})
        await transport.connect()
        with pytest.raises(ValueError, match="translator bug"):
            await asyncio.wait_for(transport.pump(handle), 5)
        await transport.close()
