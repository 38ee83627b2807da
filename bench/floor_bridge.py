"""The floor for a Python bridge, for the load benchmark's CPU comparison: what parse-and-forward
costs with no framework at all.

`bench/alt_bridge.py` is the common sample's approach on its own stack (FastAPI, uvicorn,
`websockets`). This does the same per message, on bare asyncio protocols: one `Protocol` per
Twilio socket and one per provider socket, RFC 6455 frames read and written by hand
(`bench/loadgen/ws.py`, the load generator's), each frame handled in the `data_received` call
that brought it (no queue, no task wake-up, no framework), orjson, uvloop when asked. Nothing
else: no pacing, no caller-speech detection, no validation, no metrics, no logs per message.

So it is not a bridge anyone should run; it is the least CPU a Python process can spend on the
same messages through the same kernel, and so a bound on what any Python design (ours included)
can reach per call. Per message, like `alt_bridge`:

- Twilio `media`: `input_audio_buffer.append` with the base64 payload as is;
- provider `response.output_audio.delta`: Twilio `media` with the delta as is and a `mark`, in one
  write;
- provider `input_audio_buffer.speech_started` while marks are pending: `conversation.item.truncate`
  and a Twilio `clear`.

It greets at once (`AGENT_GREETING`), closes both sockets on Twilio's `stop` or either side's
close, and answers `/healthz` and `/readyz` (`active_calls`). Client frames to the provider are
masked with a random key, as a client must (`ws.frame`: aiohttp's C helper does the XOR).

Configured like the product server: `AGENT_OPENAI_URL` (ws:// only), `OPENAI_API_KEY`,
`AGENT_HOST`, `AGENT_PORT`, `AGENT_GREETING`, `AGENT_EVENT_LOOP` (auto|asyncio|uvloop). Run:
`python -m bench.floor_bridge` from the repository root.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.loadgen import ws

__all__ = ["main"]

MAX_HEAD = 16 * 1024  # an HTTP request head longer than this is refused
ACTIVE = 0  # calls in this process, for /readyz
_KEY = struct.Struct("!I").pack


class Provider(asyncio.Protocol):
    """The provider's socket of one call."""

    def __init__(self, call: TwilioCall, host: str, path: str) -> None:
        self.call = call
        self.host, self.path = host, path
        self.t: Any = None
        self.buf = bytearray()
        self.open = False
        self.pending: list[bytes] = []  # frames sent before the handshake completed

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        request, _ = ws.client_handshake(self.host, self.path)
        key = os.environ.get("OPENAI_API_KEY", "")
        transport.write(request[:-2] + f"Authorization: Bearer {key}\r\n\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.call.close()

    def send(self, message: dict[str, Any]) -> None:
        # a client masks every frame with a fresh key (RFC 6455 5.3)
        frame = ws.frame(orjson.dumps(message), masked=True, key=_KEY(random.getrandbits(32)))
        if self.open:
            self.t.write(frame)
        else:
            self.pending.append(frame)

    def close(self) -> None:
        if self.t is not None and not self.t.is_closing():
            self.t.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            head = ws.take_head(self.buf)
            if head is None:
                return
            if not ws.switched(head):
                self.t.close()
                return
            self.open = True
            if self.pending:
                self.t.write(b"".join(self.pending))
                self.pending.clear()
        ws.dispatch(self.buf, self.t, self.on_text, masked=True)

    def on_text(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        kind = msg.get("type")
        call = self.call
        if kind == "response.output_audio.delta":
            call.play(msg)
        elif kind == "input_audio_buffer.speech_started":
            call.caller_spoke()


class TwilioCall(asyncio.Protocol):
    """One Twilio Media Streams socket (or an HTTP request for /healthz, /readyz)."""

    def __init__(self, provider_url: str, greeting: str) -> None:
        self.url = urlsplit(provider_url)
        self.greeting = greeting
        self.t: Any = None
        self.buf = bytearray()
        self.open = False
        self.provider: Provider | None = None
        self.stream_sid = ""
        self.media_ts = 0
        self.item: str | None = None
        self.item_start_ts: int | None = None
        self.marks = 0
        self.counted = False
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        global ACTIVE
        if self.closing:
            return
        self.closing = True
        if self.counted:
            ACTIVE -= 1
        if self.provider is not None:
            self.provider.close()
        if self.t is not None and not self.t.is_closing():
            self.t.write(ws.frame(b"\x03\xe8", ws.OP_CLOSE))
            self.t.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            head = ws.take_head(self.buf)
            if head is None:
                if len(self.buf) > MAX_HEAD:
                    self.t.close()
                return
            self.upgrade(head)
            if not self.open:
                return
        if not ws.dispatch(self.buf, self.t, self.on_text, masked=False):
            self.close()

    def upgrade(self, head: bytes) -> None:
        global ACTIVE
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        if path in (b"/healthz", b"/readyz"):
            body = orjson.dumps({"status": "ok"} if path == b"/healthz" else {"status": "ready", "active_calls": ACTIVE})
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.t.close()
            return
        answer = ws.server_handshake_response(head) if path in (b"/twilio/media", b"/media-stream") else None
        if answer is None:
            self.t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.t.close()
            return
        self.t.write(answer)
        self.open = True
        ACTIVE += 1
        self.counted = True
        host, port = self.url.hostname or "127.0.0.1", self.url.port or 80
        path_q = self.url.path + (f"?{self.url.query}" if self.url.query else "")
        self.provider = Provider(self, f"{host}:{port}", path_q)
        asyncio.get_running_loop().create_task(self._connect(host, port))
        self.provider.send({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                      "output": {"format": {"type": "audio/pcmu"}}},
            "instructions": "You are a helpful assistant on a phone call."}})
        if self.greeting:
            self.provider.send({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": f"Greet the caller with '{self.greeting}'"}]}})
            self.provider.send({"type": "response.create"})

    async def _connect(self, host: str, port: int) -> None:
        assert self.provider is not None
        provider = self.provider
        try:
            await asyncio.get_running_loop().create_connection(lambda: provider, host, port)
        except OSError:
            self.close()

    # -- Twilio -> provider ------------------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        msg = orjson.loads(payload)
        event = msg.get("event")
        provider = self.provider
        if event == "media" and provider is not None:
            media = msg["media"]
            self.media_ts = int(media.get("timestamp", 0) or 0)
            provider.send({"type": "input_audio_buffer.append", "audio": media["payload"]})
        elif event == "mark":
            if self.marks:
                self.marks -= 1
        elif event == "start":
            self.stream_sid = msg["start"]["streamSid"]
        elif event == "stop":
            self.close()

    # -- provider -> Twilio ------------------------------------------------------------------

    def play(self, msg: dict[str, Any]) -> None:
        item = msg.get("item_id")
        if item and item != self.item:
            self.item, self.item_start_ts = item, self.media_ts
        sid = self.stream_sid
        media = orjson.dumps({"event": "media", "streamSid": sid, "media": {"payload": msg["delta"]}})
        mark = orjson.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "responsePart"}})
        if self.t is not None and not self.t.is_closing():
            self.t.write(ws.frame(media) + ws.frame(mark))
            self.marks += 1

    def caller_spoke(self) -> None:
        if self.item is None or not self.marks or self.item_start_ts is None or self.provider is None:
            return
        self.provider.send({"type": "conversation.item.truncate", "item_id": self.item, "content_index": 0,
                            "audio_end_ms": self.media_ts - self.item_start_ts})
        if self.t is not None and not self.t.is_closing():
            self.t.write(ws.frame(orjson.dumps({"event": "clear", "streamSid": self.stream_sid})))
        self.marks = 0
        self.item, self.item_start_ts = None, None


async def serve() -> None:
    url = os.environ.get("AGENT_OPENAI_URL", "ws://127.0.0.1:8765/v1/realtime")
    if not url.startswith("ws://"):
        raise SystemExit("floor_bridge speaks plain ws:// only (a benchmark against the fake provider)")
    greeting = os.environ.get("AGENT_GREETING", "")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: TwilioCall(url, greeting), os.environ.get("AGENT_HOST", "127.0.0.1"),
        int(os.environ.get("AGENT_PORT", "5050")), backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    choice = os.environ.get("AGENT_EVENT_LOOP", "auto")
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            uvloop.run(serve())
            return
    asyncio.run(serve())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
