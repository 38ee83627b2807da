"""The lightest common alternative bridge, for the load benchmark's CPU comparison.

A re-implementation of the approach of Twilio's public sample "Speech Assistant with Twilio Voice
and the OpenAI Realtime API (Python)": FastAPI on uvicorn, one `websockets` client connection to
the provider per call, and per message only parse and forward:

- Twilio `media`: JSON-parse it, send `input_audio_buffer.append` with the base64 payload as is
  (`audio/pcmu` both ways: no transcoding);
- provider `response.output_audio.delta`: send Twilio a `media` event with the delta as is, then
  a `mark` (the marks Twilio echoes tell whether agent audio is still playing);
- provider `input_audio_buffer.speech_started` while marks are pending: `conversation.item.truncate`
  at the caller's media timestamp and a Twilio `clear`.

No pacing (deltas go out as fast as they come), no caller-speech detection, no recording, no
metrics, no admission control. Where this differs from the sample, it is lighter, so the
benchmark's ratio against it is conservative: the sample decodes and re-encodes every delta's
base64 and prints every logged event; this forwards the string and logs nothing per message.
Three additions the benchmark needs: it greets at once (the sample's "AI speaks first" option,
as the product server does), it closes the call on Twilio's `stop` (real Twilio then closes the
socket itself; the load generator waits for the server to), and `/readyz` reports
`active_calls` so the benchmark can tell when every call has ended.

Configured like the product server, from the same environment: `OPENAI_API_KEY`,
`AGENT_OPENAI_URL`, `AGENT_HOST`, `AGENT_PORT`, `AGENT_GREETING`, `AGENT_LOG_LEVEL`,
`AGENT_WORKERS` (uvicorn worker processes) and `AGENT_EVENT_LOOP` (auto|asyncio|uvloop: uvicorn's
`loop`). Run: `python -m bench.alt_bridge` from the repository root. Media Streams path:
`/twilio/media` (the product's) and `/media-stream` (the sample's).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import websockets
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from fastapi.websockets import WebSocketDisconnect

__all__ = ["app", "main", "media_stream"]

log = logging.getLogger("alt_bridge")

OPENAI_URL = os.environ.get("AGENT_OPENAI_URL", "wss://api.openai.com/v1/realtime?model=gpt-realtime")
GREETING = os.environ.get("AGENT_GREETING", "")
SESSION_UPDATE = json.dumps({
    "type": "session.update",
    "session": {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
            "output": {"format": {"type": "audio/pcmu"}},
        },
        "instructions": "You are a helpful assistant on a phone call.",
    },
})

app = FastAPI()
ACTIVE = 0  # calls in this process, for /readyz


@app.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@app.get("/readyz")
async def readyz() -> JSONResponse:
    return JSONResponse({"status": "ready", "active_calls": ACTIVE})


@app.websocket("/twilio/media")
@app.websocket("/media-stream")
async def media_stream(websocket: WebSocket) -> None:
    """One call: accept Twilio's socket, open the provider's, forward both ways until either ends."""
    global ACTIVE
    await websocket.accept()
    ACTIVE += 1
    try:
        async with websockets.connect(
            OPENAI_URL, additional_headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}
        ) as provider:
            await provider.send(SESSION_UPDATE)
            if GREETING:
                await provider.send(json.dumps({
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": "user",
                             "content": [{"type": "input_text", "text": f"Greet the caller with '{GREETING}'"}]},
                }))
                await provider.send(json.dumps({"type": "response.create"}))
            await _bridge(websocket, provider)
    except (OSError, websockets.WebSocketException) as exc:
        log.warning("provider connection failed: %s", exc)
    finally:
        ACTIVE -= 1
        try:
            await websocket.close()
        except RuntimeError:
            pass  # already closed


async def _bridge(websocket: WebSocket, provider: Any) -> None:
    """The sample's two loops over one call's shared state."""
    stream_sid: str | None = None
    latest_media_ts = 0
    last_item: str | None = None
    response_start_ts: int | None = None
    marks: list[str] = []

    async def from_twilio() -> None:
        nonlocal stream_sid, latest_media_ts, last_item, response_start_ts
        try:
            async for message in websocket.iter_text():
                data = json.loads(message)
                event = data["event"]
                if event == "media" and provider.state.name == "OPEN":
                    latest_media_ts = int(data["media"]["timestamp"])
                    await provider.send(json.dumps({"type": "input_audio_buffer.append", "audio": data["media"]["payload"]}))
                elif event == "start":
                    stream_sid = data["start"]["streamSid"]
                    response_start_ts, latest_media_ts, last_item = None, 0, None
                elif event == "mark":
                    if marks:
                        marks.pop(0)
                elif event == "stop":
                    break
        except WebSocketDisconnect:
            pass
        finally:
            await provider.close()

    async def to_twilio() -> None:
        nonlocal last_item, response_start_ts
        try:
            async for raw in provider:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "response.output_audio.delta" and "delta" in msg:
                    await websocket.send_json({"event": "media", "streamSid": stream_sid, "media": {"payload": msg["delta"]}})
                    item = msg.get("item_id")
                    if item and item != last_item:
                        response_start_ts, last_item = latest_media_ts, item
                    if stream_sid:
                        await websocket.send_json({"event": "mark", "streamSid": stream_sid, "mark": {"name": "responsePart"}})
                        marks.append("responsePart")
                elif kind == "input_audio_buffer.speech_started" and last_item and marks and response_start_ts is not None:
                    await provider.send(json.dumps({
                        "type": "conversation.item.truncate", "item_id": last_item, "content_index": 0,
                        "audio_end_ms": latest_media_ts - response_start_ts,
                    }))
                    await websocket.send_json({"event": "clear", "streamSid": stream_sid})
                    marks.clear()
                    last_item, response_start_ts = None, None
        except (websockets.WebSocketException, RuntimeError, OSError) as exc:
            log.debug("provider loop ended: %s", exc)

    await asyncio.gather(from_twilio(), to_twilio())


def main() -> None:
    import uvicorn

    workers = int(os.environ.get("AGENT_WORKERS", "1"))
    uvicorn.run(
        "bench.alt_bridge:app" if workers > 1 else app,
        host=os.environ.get("AGENT_HOST", "127.0.0.1"),
        port=int(os.environ.get("AGENT_PORT", "5050")),
        loop=os.environ.get("AGENT_EVENT_LOOP", "auto"),
        workers=workers,
        log_level=os.environ.get("AGENT_LOG_LEVEL", "info").lower(),
        backlog=4096,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
