"""The Twilio media socket's writes over a real loopback WebSocket: a pass's frames go out
together at its end, and `clear` drops what that pass had not written yet."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from loopback_app import serving

from telephony_agent.telephony.twilio.media_socket import MediaSocketHooks, TwilioMediaSocket
from telephony_agent.telephony.twilio.stream import start_message


def _unused_hooks() -> MediaSocketHooks:
    async def make_bridge(*_: Any) -> Any:
        raise AssertionError("not used")

    return MediaSocketHooks(lambda _: None, make_bridge, lambda _: None, lambda _: None)


async def test_clear_drops_the_frames_its_pass_had_not_written() -> None:
    ready: asyncio.Future[TwilioMediaSocket] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sock = TwilioMediaSocket(ws, _unused_hooks())
        sock.protocol.receive_text(start_message("MZ1", "CA1", "AC1", {}))
        ready.set_result(sock)
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get("/media", handler)
    async with serving(app) as port:
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/media") as phone:
                sock = await asyncio.wait_for(ready, 5)
                sock.send_audio([b"\x01" * 160], "a")
                await asyncio.sleep(0)  # the end of the pass: "a" is written
                sock.send_audio([b"\x02" * 160], "b")
                sock.send_clear()  # same pass: "b" was not written yet, so it never is
                sock.send_audio([b"\x03" * 160], "c")
                await asyncio.sleep(0)
                got: list[str] = []
                for _ in range(5):
                    msg = orjson.loads((await asyncio.wait_for(phone.receive(), 5)).data)
                    got.append(msg["event"] + ":" + (msg.get("mark", {}).get("name") or msg.get("media", {}).get("payload", "")[:4]))
                assert got == ["media:AQEB", "mark:a", "clear:", "media:AwMD", "mark:c"]
                done.set()
        finally:
            done.set()
