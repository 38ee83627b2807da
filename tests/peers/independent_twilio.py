"""An independent Twilio Media Streams caller: a second opinion on the agent's Twilio leg.

Written from Twilio's documented protocol with nothing but aiohttp, the `twilio` library's
request validator (for signatures) and the standard library; it shares no code with the project's
own caller simulator (`telephony_agent.testing.twilio_caller`) so that a mistake mirrored in both
cannot hide. It does what a Twilio call does:

* POSTs the signed incoming-call webhook and reads `<Connect><Stream url>` and its parameters
  from the TwiML;
* opens the stream socket (signed), sends `connected` and `start`, then a 20 ms mu-law `media`
  frame on a drift-free 20 ms schedule (silence unless `speak()` queued audio), with string
  sequence numbers, chunks and timestamps;
* plays the agent's `media` at real time (8 bytes a millisecond) from a buffer, records every
  byte as heard with the time it played, and, when `echo_marks` is on, echoes each `mark` once
  the audio before it has played; on `clear` it drops the buffer (and echoes pending marks);
* `go_silent()` stops the microphone and mark echoes but keeps the socket open (a leg that went
  quiet without hanging up); `hang_up()` sends `stop` and closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from twilio.request_validator import RequestValidator

__all__ = ["IndependentTwilioCall"]

FRAME = 160  # 20 ms of mu-law at 8 kHz
SILENCE = b"\xff" * FRAME
TICK = 0.01  # the player advances every 10 ms by the clock, not by a count of ticks


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class IndependentTwilioCall:
    """One simulated Twilio call against the agent at `base_url` (its public URL is `public_url`)."""

    def __init__(self, base_url: str, public_url: str, auth_token: str, *, echo_marks: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.echo_marks = echo_marks
        self.call_sid, self.stream_sid, self.account_sid = _sid("CA"), _sid("MZ"), _sid("AC")
        self.stream_url: str | None = None
        self.parameters: dict[str, str] = {}
        self.heard = bytearray()
        self.heard_at: list[tuple[float, int]] = []  # (time the bytes finished playing, count)
        self.marks_received = 0
        self.marks_echoed = 0
        self.clears = 0
        self.heard_at_clear: list[float] = []  # ms heard when each `clear` arrived
        self.clear_wall: list[float] = []  # and when (time.time(), the clock log records carry)
        self.closed_at: float | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._buffer: deque[tuple[str, Any]] = deque()  # ("audio", bytes) | ("mark", name)
        self._mic: deque[bytes] = deque()
        self._mic_on = True
        self._played_to = 0.0
        self._seq = 0
        self._chunk = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()

    # -- webhook and socket -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)
        if self._http is not None:
            await self._http.close()

    async def place(self) -> None:
        """The incoming-call webhook, signed; parses the stream URL and parameters."""
        assert self._http is not None
        form = {"CallSid": self.call_sid, "AccountSid": self.account_sid, "From": "+15550001111",
                "To": "+15550002222", "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        path = "/twilio/voice"
        signature = self.validator.compute_signature(self.public_url + path, form)
        async with self._http.post(self.base_url + path, data=form,
                                   headers={"X-Twilio-Signature": signature}) as resp:
            body = await resp.text()
            resp.raise_for_status()
        stream = ET.fromstring(body).find("./Connect/Stream")
        if stream is None:
            raise AssertionError(f"no <Connect><Stream> in {body!r}")
        self.stream_url = stream.attrib["url"]
        self.parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}

    async def connect(self) -> None:
        """Open the stream socket, send `connected` and `start`, start the microphone and player."""
        assert self._http is not None and self.stream_url is not None
        local = "ws://" + urlsplit(self.base_url).netloc + urlsplit(self.stream_url).path
        signature = self.validator.compute_signature(self.stream_url, {})
        self._ws = await self._http.ws_connect(local, headers={"X-Twilio-Signature": signature})
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, numbered=False)
        await self._send({
            "event": "start",
            "streamSid": self.stream_sid,
            "start": {
                "accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "customParameters": self.parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })
        for job in (self._receive(), self._microphone(), self._player()):
            self._tasks.append(asyncio.create_task(job))

    async def _send(self, message: dict[str, Any], *, numbered: bool = True) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        async with self._send_lock:
            if numbered:
                self._seq += 1
                message = {"event": message["event"], "sequenceNumber": str(self._seq),
                           **{k: v for k, v in message.items() if k != "event"}}
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(message))

    # -- the caller's side ------------------------------------------------------------------

    def speak(self, ulaw: bytes) -> None:
        """Queue caller speech (mu-law 8 kHz); sent in 20 ms frames in place of silence."""
        for i in range(0, len(ulaw), FRAME):
            self._mic.append(ulaw[i : i + FRAME].ljust(FRAME, b"\xff"))

    def go_silent(self) -> None:
        """No more media and no more mark echoes; the socket stays open."""
        self._mic_on = False
        self.echo_marks = False

    async def hang_up(self) -> None:
        await self._send({"event": "stop", "streamSid": self.stream_sid,
                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
        if self._ws is not None:
            await self._ws.close()

    async def _microphone(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while self._mic_on and self._ws is not None and not self._ws.closed:
            frame = self._mic.popleft() if self._mic else SILENCE
            self._chunk += 1
            await self._send({"event": "media", "streamSid": self.stream_sid, "media": {
                "track": "inbound", "chunk": str(self._chunk), "timestamp": str((self._chunk - 1) * 20),
                "payload": base64.b64encode(frame).decode()}})
            await asyncio.sleep(max(0.0, start + self._chunk * 0.02 - loop.time()))

    # -- the agent's side -------------------------------------------------------------------

    async def _receive(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            event = data.get("event")
            if event == "media":
                self._buffer.append(("audio", base64.b64decode(data["media"]["payload"])))
            elif event == "mark":
                self.marks_received += 1
                self._buffer.append(("mark", data["mark"]["name"]))
            elif event == "clear":
                self.clears += 1
                pending = self._advance(asyncio.get_running_loop().time())  # up to this instant
                self.heard_at_clear.append(self.heard_ms)
                self.clear_wall.append(time.time())
                pending += [value for kind, value in self._buffer if kind == "mark"]
                self._buffer.clear()
                for name in pending:
                    await self._echo(name)
        self.closed_at = asyncio.get_running_loop().time()

    async def _echo(self, name: str) -> None:
        if self.echo_marks:
            self.marks_echoed += 1
            await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _player(self) -> None:
        """Play the buffer at 8 bytes a millisecond of loop time; idle time is not made up later."""
        loop = asyncio.get_running_loop()
        self._played_to = loop.time()
        while True:
            await asyncio.sleep(TICK)
            for name in self._advance(loop.time()):
                await self._echo(name)

    def _advance(self, now: float) -> list[str]:
        """Play everything due by `now`; returns the marks reached (all audio before them played)."""
        reached: list[str] = []
        if not self._buffer:
            self._played_to = now
            return reached
        while self._buffer and self._played_to < now:
            kind, value = self._buffer[0]
            if kind == "mark":
                reached.append(self._buffer.popleft()[1])
                continue
            take = min(len(value), round((now - self._played_to) * 8000))
            if take == 0:
                break
            self.heard += value[:take]
            self._played_to += take / 8000
            self.heard_at.append((self._played_to, take))
            if take == len(value):
                self._buffer.popleft()
            else:
                self._buffer[0] = ("audio", value[take:])
        while self._buffer and self._buffer[0][0] == "mark":
            reached.append(self._buffer.popleft()[1])
        return reached

    # -- results ----------------------------------------------------------------------------

    @property
    def heard_ms(self) -> float:
        return len(self.heard) / 8

    def audible_ms(self) -> float:
        """Milliseconds of heard audio that are not digital silence (0xff / 0x7f)."""
        return sum(1 for b in self.heard if b not in (0xFF, 0x7F)) / 8

    @property
    def buffered_ms(self) -> float:
        return sum(len(v) for k, v in self._buffer if k == "audio") / 8

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed or self.closed_at is not None

    async def wait(self, predicate: Any, timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_quiet(self, quiet_s: float, timeout: float) -> None:
        """Until something was heard and nothing more has played for `quiet_s`."""
        loop = asyncio.get_running_loop()
        await self.wait(lambda: bool(self.heard_at) and not self._buffer
                        and loop.time() - self.heard_at[-1][0] > quiet_s, timeout, "playback to finish")
