"""A simulated Twilio caller: places a call at the agent the way Twilio does and plays the caller's side.

It drives `telephony-agent call`, `telephony-agent replay` and the tests' calls. It speaks the real wire protocol (docs/protocols.md, "Twilio"), with every frame built
by `telephony.twilio.stream`'s caller-side builders:

* `place()` POSTs the signed incoming-call webhook and parses the TwiML that comes back;
* `connect()` opens the signed WebSocket and sends `connected` then `start`;
* a "microphone" task streams a 20 ms mu-law frame every 20 ms (silence unless speech was
  queued with `say()`/`speak()`), as a real phone line does;
* a playout task drains what the agent sends at 8 bytes/ms, echoes marks when the audio before
  them has played, and on `clear` drops queued audio and echoes every pending mark at once;
* it records what the caller actually heard (bytes and when), marks, clears, every received
  message, protocol violations (31950 binary frame, 31924 anything else) and who closed the
  socket with which code.

All waits are bounded; `close()` (or `async with`) cancels every task.

    async with TwilioCaller(base_url, "https://agent.test", token) as call:
        await call.place()
        await call.connect()
        await call.speak(ulaw_of_hello)
        await call.wait_silence_after_audio(timeout=10)
        assert call.heard_ms > 500
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import logging
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from telephony_agent.telephony.twilio.signature import (
    SIGNATURE_HEADER,
    compute_signature,
)
from telephony_agent.telephony.twilio.stream import (
    connected_message,
    dtmf_message,
    inbound_media_message,
    mark_echo_message,
    start_message,
    stop_message,
)
from telephony_agent.wiretap import Wiretap
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

__all__ = [
    "BYTES_PER_SECOND",
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "SILENCE",
    "HandshakeRejected",
    "HeardChunk",
    "MarkRecord",
    "Received",
    "TwilioCaller",
    "TwilioCallerError",
    "Utterance",
    "Violation",
    "random_sid",
]

T = TypeVar("T")
M = TypeVar("M")
_log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of mu-law 8 kHz
FRAME_SECONDS = 0.02
BYTES_PER_SECOND = 8000
SILENCE = b"\xff"
PLAYOUT_TICK = 0.01

SignatureMode = Literal["valid", "omit", "corrupt"]


def random_sid(prefix: str) -> str:
    """A Twilio-style SID: two letters and 32 hex characters."""
    return prefix + secrets.token_hex(16)


# --- records ---------------------------------------------------------------------------------------

class TwilioCallerError(Exception):
    """The caller was used wrongly, or the agent answered with something unusable (bad TwiML)."""


class HandshakeRejected(TwilioCallerError):
    """The agent refused the WebSocket upgrade (status != 101)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"WebSocket upgrade refused with HTTP {status}")
        self.status = status


@dataclass
class Received:
    """One frame from the agent: `time` is loop.time() at receipt; `message` the parsed JSON."""

    time: float
    raw: str | bytes
    message: dict[str, Any] | None
    event: str | None


@dataclass
class Violation:
    """A Twilio debugger error the agent would have caused: 31950 (binary) or 31924 (other)."""

    code: int
    detail: str
    time: float


@dataclass
class HeardChunk:
    """`length` bytes of one media message, heard from `heard_ulaw[offset]`, starting at `start`."""

    start: float
    offset: int
    length: int = 0


@dataclass
class MarkRecord:
    name: str
    played_at: float
    """When the audio before the mark finished playing (or the clear time, if cleared)."""
    echoed_at: float | None = None
    cleared: bool = False


@dataclass
class Utterance:
    """Speech queued on the microphone; times are loop.time() when its first/last frame went out."""

    start_offset: int
    end_offset: int
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    done: asyncio.Future[float] | None = None


@dataclass
class _Entry:
    kind: Literal["audio", "mark"]
    data: bytes = b""
    name: str = ""
    pos: int = 0
    heard: HeardChunk | None = None


# --- the call ------------------------------------------------------------------------------------

@dataclass(eq=False)
class TwilioCaller:
    base_url: str
    """Where the agent listens locally, e.g. http://127.0.0.1:8080."""
    public_url: str
    """The agent's AGENT_PUBLIC_URL, e.g. https://agent.test: what Twilio signs."""
    auth_token: str
    call_sid: str = field(default_factory=lambda: random_sid("CA"))
    from_: str = "+15005550006"
    to: str = "+15005550001"
    account_sid: str = field(default_factory=lambda: random_sid("AC"))
    voice_path: str = "/twilio/voice"
    continuous: bool = True
    """Stream silence frames whenever no speech is queued, like a real phone line."""
    timeout: float = 5.0
    session: aiohttp.ClientSession | None = None
    tap: Wiretap | None = None
    """Gets every Media Stream frame, directions as the agent sees them: what we send is "in"."""
    background: bytes | None = None
    """mu-law audio looped under everything the microphone sends (line noise)."""
    link_delay_s: float = 0.0
    """One-way network delay between Twilio and the agent, both ways (a carrier tens of
    milliseconds away; ours on loopback is none): what the agent sends is handled that much
    after it arrives, and what we send reaches the socket that much later. Order is kept."""
    on_event: Callable[[str, float, dict[str, Any]], None] | None = None
    """Timeline callback: (kind, loop time, details) for "audio_start", "audio_end", "clear",
    "closed"."""

    # results of place()
    webhook_status: int | None = None
    twiml: str | None = None
    rejected: bool = False
    reject_reason: str | None = None
    stream_url: str | None = None
    stream_parameters: dict[str, str] = field(default_factory=dict)
    stream_status_callback: str | None = None
    verbs_after_connect: list[str] = field(default_factory=list)

    # stream state
    stream_sid: str = field(default_factory=lambda: random_sid("MZ"))
    handshake_status: int | None = None
    connected_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    closed_by_server: bool = False
    hung_up: bool = False
    transferred_twiml: str | None = None

    # records
    received: list[Received] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    heard_ulaw: bytearray = field(default_factory=bytearray)
    heard_chunks: list[HeardChunk] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    marks_requested: list[str] = field(default_factory=list)
    clear_times: list[float] = field(default_factory=list)
    clear_speech_sent: list[int] = field(default_factory=list)
    """Microphone speech bytes sent when each clear arrived: where in the caller's own speech the
    agent stopped, in audio time, which a busy machine's stalls do not lengthen."""
    dropped_bytes: int = 0
    last_audio_end: float | None = None
    sent_ulaw: bytearray = field(default_factory=bytearray)
    utterances: list[Utterance] = field(default_factory=list)
    media_frames_sent: int = 0

    def __post_init__(self) -> None:
        self._owns_session = self.session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._chunk = 0
        self._timestamp = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._queue: collections.deque[_Entry] = collections.deque()
        self._queued_audio = 0
        self._anchor_t = 0.0
        self._anchor_bytes = 0
        self._pending_echoes: list[MarkRecord] = []
        self._speech = bytearray()
        self._speech_queued = 0
        self._speech_sent = 0
        self._pending_utts: collections.deque[Utterance] = collections.deque()
        self._closing_by_us = False
        self._playing = False
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # the delayed link (`link_delay_s`): (due, message) each way, and the task sending ours
        self._inbox: collections.deque[tuple[float, aiohttp.WSMessage]] = collections.deque()
        self._outbox: collections.deque[tuple[float, str | bytes]] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._link_out: asyncio.Task[None] | None = None

    # ---- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
            self._owns_session = True
        return self.session

    async def close(self) -> None:
        """Cancel every task, close the socket (without `stop`) and our HTTP session. Idempotent."""
        if not self._closed.is_set():
            self._closing_by_us = True
        await self._stop_tasks()
        if await self._close_socket():
            self._mark_closed()
        if self._owns_session and self.session is not None:
            await self.session.close()
            self.session = None

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._tasks = [t for t in self._tasks if not t.done() and t is not current]

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"twilio-caller-{name}-{self.call_sid[-6:]}"))

    # ---- webhook --------------------------------------------------------------------------------

    def webhook_params(self) -> dict[str, str]:
        """The incoming-call webhook form Twilio posts."""
        return {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.from_,
            "To": self.to,
            "Caller": self.from_,
            "Called": self.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
            "FromCountry": "US",
            "ToCountry": "US",
        }

    def _signature(self, url: str, params: dict[str, str], mode: SignatureMode | str) -> str | None:
        if mode == "omit":
            return None
        sig = compute_signature(url, params, self.auth_token)
        if mode == "corrupt":
            return ("A" if sig[0] != "A" else "B") + sig[1:]
        if mode == "valid":
            return sig
        return mode  # an explicit signature string

    async def place(
        self,
        *,
        signature: SignatureMode | str = "valid",
        extra_params: dict[str, str] | None = None,
        sign_url: str | None = None,
    ) -> int:
        """POST the signed incoming-call webhook; parse the TwiML. Returns the HTTP status.

        On 2xx the TwiML is parsed into `stream_url`/`stream_parameters` or `rejected`.
        """
        params = self.webhook_params()
        params.update(extra_params or {})
        url = sign_url or self.public_url.rstrip("/") + self.voice_path
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        sig = self._signature(url, params, signature)
        if sig is not None:
            headers[SIGNATURE_HEADER] = sig
        async with self._session().post(
            self.base_url.rstrip("/") + self.voice_path,
            data=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            self.webhook_status = resp.status
            body = await resp.text()
        if 200 <= resp.status < 300:
            self.twiml = body
            self._parse_twiml(body)
        return resp.status

    def _parse_twiml(self, text: str) -> None:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise TwilioCallerError(f"webhook returned invalid XML: {exc}: {text[:200]!r}") from None
        if root.tag != "Response":
            raise TwilioCallerError(f"TwiML root is <{root.tag}>, not <Response>")
        now = self._loop.time()
        seen_connect = False
        for verb in root:
            if seen_connect:
                self.verbs_after_connect.append(verb.tag)
                continue
            if verb.tag == "Reject":
                self.rejected = True
                self.reject_reason = verb.get("reason", "rejected")
                return
            if verb.tag == "Connect":
                seen_connect = True
                stream = verb.find("Stream")
                if stream is None or not stream.get("url"):
                    raise TwilioCallerError("<Connect> without <Stream url>")
                self.stream_url = stream.get("url")
                self.stream_status_callback = stream.get("statusCallback")
                self.stream_parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
                parts = urlsplit(self.stream_url or "")
                if parts.scheme != "wss":
                    self.violations.append(Violation(31922, f"stream url scheme {parts.scheme!r}", now))
                if parts.query or "?" in (self.stream_url or ""):
                    self.violations.append(Violation(31920, "stream url has a query string", now))

    # ---- stream: connect --------------------------------------------------------------------------

    async def connect(
        self,
        *,
        signature: SignatureMode | str = "valid",
        custom_parameters: dict[str, str] | None = None,
        omit_parameters: bool = False,
        stream_url: str | None = None,
        sign_url: str | None = None,
        send_start: bool = True,
    ) -> None:
        """Open the Media Stream WebSocket as Twilio does and send `connected` + `start`.

        The TwiML's wss://public-host/path is dialled as ws://<base_url host>/path, signed over the
        wss URL with no params. Raises HandshakeRejected if the agent refuses the upgrade.
        """
        url = stream_url or self.stream_url
        if url is None:
            raise TwilioCallerError("no stream URL: place() the call first (or pass stream_url)")
        if custom_parameters is None:
            custom_parameters = {} if omit_parameters else dict(self.stream_parameters)
        path = urlsplit(url).path or "/"
        base = urlsplit(self.base_url)
        local = f"{'wss' if base.scheme == 'https' else 'ws'}://{base.netloc}{path}"
        headers = {"User-Agent": "Twilio.TmeWs/1.0"}
        sig = self._signature(sign_url or url, {}, signature)
        if sig is not None:
            headers[SIGNATURE_HEADER] = sig
        try:
            self._ws = await asyncio.wait_for(
                self._session().ws_connect(
                    local, headers=headers, autoping=True, max_msg_size=1 << 20,
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                ),
                self.timeout,
            )
        except aiohttp.WSServerHandshakeError as exc:
            self.handshake_status = exc.status
            raise HandshakeRejected(exc.status) from None
        self.handshake_status = 101
        self.connected_at = self._loop.time()
        if self.link_delay_s > 0:
            self._link_out = asyncio.create_task(self._link_sender(), name=f"twilio-caller-link-{self.call_sid[-6:]}")
            self._spawn(self._link_receiver(), "link-in")
        self._spawn(self._reader(), "reader")
        self._spawn(self._playout_loop(), "playout")
        await self._send_text(connected_message())
        if send_start:
            await self.send_start(custom_parameters)

    async def send_start(self, custom_parameters: dict[str, str] | None = None) -> None:
        """Send `start` (sequence 1) and, in continuous mode, start the microphone."""
        params = custom_parameters if custom_parameters is not None else self.stream_parameters
        async with self._send_lock:
            msg = start_message(self.stream_sid, self.call_sid, self.account_sid, dict(params),
                                sequence=self._next_seq())
            await self._raw_send(msg)
        if self.continuous:
            self._spawn(self._mic_loop(), "mic")

    async def place_and_connect(self, **connect_kwargs: Any) -> None:
        """`place()` then `connect()`; fails if the call was rejected or the webhook failed."""
        status = await self.place()
        if status != 200 or self.rejected or self.stream_url is None:
            raise TwilioCallerError(f"call not connected: HTTP {status}, rejected={self.rejected}, twiml={self.twiml!r}")
        await self.connect(**connect_kwargs)

    # ---- sending ----------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._ws.closed and not self._closed.is_set()

    async def _raw_send(self, data: str | bytes) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        if self.link_delay_s > 0 and self._link_out is not None and not self._link_out.done():
            self._outbox.append((self._loop.time() + self.link_delay_s, data))
            self._outbox_ready.set()
            return True
        return await self._send_now(data)

    async def _send_now(self, data: str | bytes) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        tap = self.tap
        if tap is not None:
            tap.record("twilio", "in", data)
        try:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        return True

    async def _send_text(self, text: str) -> bool:
        async with self._send_lock:
            return await self._raw_send(text)

    async def send_raw(self, data: str | bytes) -> bool:
        """Send any frame as is (bad-input tests). Does not touch sequence numbers."""
        return await self._send_text(data) if isinstance(data, str) else await self._send_bytes(data)

    async def _send_bytes(self, data: bytes) -> bool:
        async with self._send_lock:
            return await self._raw_send(data)

    async def _send_media_frame(self, frame: bytes) -> bool:
        async with self._send_lock:
            self._chunk += 1
            text = inbound_media_message(self.stream_sid, frame, sequence=self._next_seq(), chunk=self._chunk,
                                         timestamp_ms=self._timestamp)
            self._timestamp += len(frame) * 1000 // BYTES_PER_SECOND
            ok = await self._raw_send(text)
        if ok:
            self.media_frames_sent += 1
            self.sent_ulaw += frame
        return ok

    @staticmethod
    def _frames(ulaw: bytes) -> list[bytes]:
        frames = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
        if frames and len(frames[-1]) < FRAME_BYTES:
            frames[-1] = frames[-1] + SILENCE * (FRAME_BYTES - len(frames[-1]))
        return frames

    def say(self, ulaw: bytes) -> Utterance:
        """Queue speech on the microphone (continuous mode); returns its Utterance record."""
        if not self.continuous:
            raise TwilioCallerError("say() needs continuous=True; use send_audio()")
        utt = Utterance(self._speech_queued, self._speech_queued + len(ulaw), self._loop.time(),
                        done=self._loop.create_future())
        self._speech += ulaw
        self._speech_queued += len(ulaw)
        self.utterances.append(utt)
        self._pending_utts.append(utt)
        return utt

    def say_pcm16_8k(self, pcm: bytes) -> Utterance:
        return self.say(pcm16_to_ulaw(pcm))

    async def speak(self, ulaw: bytes, timeout: float | None = None) -> Utterance:
        """Queue speech and wait until its last frame has been sent."""
        utt = self.say(ulaw)
        limit = timeout if timeout is not None else len(ulaw) / BYTES_PER_SECOND + self.timeout
        assert utt.done is not None
        await self._wait_future(utt.done, limit, f"speech of {len(ulaw)} bytes to be sent")
        return utt

    async def send_audio(self, ulaw: bytes, realtime: bool = True) -> None:
        """Send mu-law audio as 160-byte media frames, paced every 20 ms if `realtime`.

        In continuous mode real-time audio goes through the microphone (no gap, no overlap with
        its silence); `realtime=False` sends every frame at once.
        """
        if realtime and self.continuous and self._mic_running():
            await self.speak(ulaw)
            return
        start = self._loop.time()
        for i, frame in enumerate(self._frames(ulaw)):
            if realtime:
                delay = start + i * FRAME_SECONDS - self._loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if not await self._send_media_frame(frame):
                raise ConnectionResetError("media stream socket is closed")

    async def send_pcm16_8k(self, pcm: bytes, realtime: bool = True) -> None:
        await self.send_audio(pcm16_to_ulaw(pcm), realtime=realtime)

    async def send_silence(self, seconds: float) -> None:
        await self.send_audio(SILENCE * int(seconds * BYTES_PER_SECOND))

    def _mic_running(self) -> bool:
        return any(t.get_name().startswith("twilio-caller-mic") and not t.done() for t in self._tasks)

    async def send_dtmf(self, digit: str) -> None:
        async with self._send_lock:
            if not await self._raw_send(dtmf_message(self.stream_sid, digit, sequence=self._next_seq())):
                raise ConnectionResetError("media stream socket is closed")

    async def send_stop(self) -> bool:
        async with self._send_lock:
            msg = stop_message(self.stream_sid, self.account_sid, self.call_sid, sequence=self._next_seq())
            return await self._raw_send(msg)

    async def hangup(self) -> None:
        """The caller hangs up: `stop`, then close the socket; all tasks end."""
        self.hung_up = True
        self._closing_by_us = True
        await self._stop_tasks()
        await self.send_stop()
        await self._close_socket()
        self._mark_closed()

    async def _close_socket(self) -> bool:
        """Close the media socket if it is open (bounded), after what is still on the delayed
        link. Returns whether it was open."""
        await self._stop_link(drain=True)
        if self._ws is None or self._ws.closed:
            return False
        try:
            await asyncio.wait_for(self._ws.close(), 2.0)
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            pass
        return True

    async def abort(self) -> None:
        """Drop the TCP connection with no `stop` and no close frame (network failure)."""
        self._closing_by_us = True
        await self._stop_tasks()
        await self._stop_link(drain=False)  # what was on its way is lost with the connection
        ws = self._ws
        if ws is not None:
            conn = getattr(getattr(ws, "_response", None), "connection", None)
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
            else:
                await ws.close()
        self._mark_closed()

    async def end_from_rest(self, form: dict[str, str]) -> None:
        """What Twilio does when the call is hung up or redirected over REST: `stop`, then close."""
        if "Twiml" in form:
            self.transferred_twiml = form["Twiml"]
        await self.hangup()
        self.hung_up = False

    def _mix_background(self, frame: bytes) -> bytes:
        import numpy as np

        bg = self.background or b""
        pos = getattr(self, "_bg_pos", 0)
        noise = (bg * 2)[pos : pos + len(frame)]
        self._bg_pos = (pos + len(frame)) % len(bg)
        mixed = np.frombuffer(ulaw_to_pcm16(frame), "<i2").astype(np.int32) + np.frombuffer(
            ulaw_to_pcm16(noise), "<i2"
        )
        return pcm16_to_ulaw(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())

    async def _mic_loop(self) -> None:
        """Drift-free 20 ms frames: speech when queued, silence otherwise."""
        next_t = self._loop.time()
        silence = SILENCE * FRAME_BYTES
        while True:
            if self._speech:
                take = bytes(self._speech[:FRAME_BYTES])
                del self._speech[:FRAME_BYTES]
                first = self._speech_sent
                frame = take + silence[: FRAME_BYTES - len(take)]
            else:
                take, first, frame = b"", self._speech_sent, silence
            if self.background:
                frame = self._mix_background(frame)
            if not await self._send_media_frame(frame):
                return
            now = self._loop.time()
            if take:
                self._speech_sent += len(take)
                while self._pending_utts:
                    utt = self._pending_utts[0]
                    if utt.started_at is None and utt.start_offset < first + len(take):
                        utt.started_at = now
                    if utt.end_offset <= self._speech_sent:
                        utt.finished_at = now
                        if utt.started_at is None:
                            utt.started_at = now
                        if utt.done is not None and not utt.done.done():
                            utt.done.set_result(now)
                        self._pending_utts.popleft()
                    else:
                        break
            next_t += FRAME_SECONDS
            delay = next_t - self._loop.time()
            if delay < -0.5:  # the loop stalled: do not burst half a second of frames
                next_t = self._loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))

    # ---- receiving and playout --------------------------------------------------------------------

    async def _reader(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for msg in ws:
                if self.link_delay_s > 0:
                    self._inbox.append((self._loop.time() + self.link_delay_s, msg))
                    self._inbox_ready.set()
                    continue
                await self._handle(msg)
        except (ConnectionError, aiohttp.ClientError):
            pass
        if self._inbox:  # what the agent sent before it closed arrives first (bounded)
            deadline = self._loop.time() + self.link_delay_s + 1.0
            while self._inbox and self._loop.time() < deadline:
                await asyncio.sleep(0.005)
        # Not reached when cancelled: then whoever cancelled us is closing the socket.
        if not self._closing_by_us:
            self.closed_by_server = True
        self._mark_closed()
        # The stream is over: stop the microphone and the playout (not this task).
        for task in self._tasks:
            if task is not asyncio.current_task() and not task.done():
                task.cancel()

    async def _handle(self, msg: aiohttp.WSMessage) -> None:
        now = self._loop.time()
        if self.tap is not None and msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            self.tap.record("twilio", "out", msg.data)
        if msg.type == aiohttp.WSMsgType.TEXT:
            self._on_text(msg.data, now)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            self.received.append(Received(now, msg.data, None, None))
            self.violations.append(Violation(31950, f"binary frame of {len(msg.data)} bytes", now))
        elif msg.type == aiohttp.WSMsgType.ERROR:
            exc = self._ws.exception() if self._ws is not None else None
            self.violations.append(Violation(0, f"websocket error: {exc!r}", now))
        await self._flush_echoes()
        self._notify()

    # ---- the delayed link (`link_delay_s`) --------------------------------------------------------

    async def _link_receiver(self) -> None:
        """The agent's messages, each handled `link_delay_s` after it arrived, in order."""
        await self._delayed(self._inbox, self._inbox_ready, self._handle)

    async def _link_sender(self) -> None:
        """Our messages, each written `link_delay_s` after it was sent, in order."""
        await self._delayed(self._outbox, self._outbox_ready, self._send_now)

    async def _delayed(self, box: collections.deque[tuple[float, M]], ready: asyncio.Event,
                       deliver: Callable[[M], Awaitable[object]]) -> None:
        while True:
            while not box:
                ready.clear()
                await ready.wait()
            due, item = box[0]
            await asyncio.sleep(max(0.0, due - self._loop.time()))
            box.popleft()
            await deliver(item)

    async def _stop_link(self, *, drain: bool) -> None:
        """Stop the delayed link's sender, after what it holds (bounded) if `drain`."""
        task = self._link_out
        if task is None:
            return
        if drain and not task.done():
            deadline = self._loop.time() + self.link_delay_s + 1.0
            while self._outbox and self._loop.time() < deadline:
                await asyncio.sleep(0.005)
        self._link_out = None
        self._outbox.clear()
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=2.0)

    def _mark_closed(self) -> None:
        if self._closed.is_set():
            return
        self.closed_at = self._loop.time()
        if self._ws is not None:
            self.close_code = self._ws.close_code
        self._closed.set()
        self._emit("closed", self.closed_at, {"by_server": self.closed_by_server, "code": self.close_code})
        for utt in self._pending_utts:
            if utt.done is not None and not utt.done.done():
                utt.done.set_exception(ConnectionResetError("media stream closed"))
                utt.done.exception()  # retrieved: nobody may be waiting
        self._notify()

    def _emit(self, kind: str, when: float, details: dict[str, Any]) -> None:
        callback = self.on_event
        if callback is not None:
            try:
                callback(kind, when, details)
            except Exception:  # noqa: BLE001 - a display callback must not break the call
                _log.exception("on_event callback failed for %s", kind)

    def _violation(self, detail: str, now: float) -> None:
        self.violations.append(Violation(31924, detail, now))

    def _on_text(self, text: str, now: float) -> None:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.received.append(Received(now, text, None, None))
            self._violation(f"invalid JSON: {text[:80]!r}", now)
            return
        event = msg.get("event") if isinstance(msg, dict) else None
        self.received.append(Received(now, text, msg if isinstance(msg, dict) else None, event if isinstance(event, str) else None))
        if not isinstance(msg, dict):
            self._violation("message is not a JSON object", now)
            return
        if event not in ("media", "mark", "clear"):
            self._violation(f"event {event!r} not allowed from the server", now)
            return
        sid = msg.get("streamSid")
        if sid is None:
            self._violation(f"{event} without streamSid", now)
            return
        if sid != self.stream_sid:
            self._violation(f"{event} for unknown streamSid {sid!r}", now)
            return
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                self._violation("media without payload", now)
                return
            try:
                audio = binascii.a2b_base64(payload, strict_mode=True)
            except (binascii.Error, ValueError):
                self._violation("media payload is not base64", now)
                return
            if audio:
                self._enqueue_audio(audio, now)
        elif event == "mark":
            mark = msg.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._violation("mark without name", now)
                return
            self.marks_requested.append(name)
            self._advance(now)
            self._queue.append(_Entry("mark", name=name))
            self._advance(now)
        else:
            self._clear(now)

    def _head_time(self) -> float:
        return self._anchor_t + self._anchor_bytes / BYTES_PER_SECOND

    def _enqueue_audio(self, audio: bytes, now: float) -> None:
        self._advance(now)
        if self._queued_audio == 0 and self._head_time() < now:
            # Playout was idle: this audio starts now, not in the past.
            self._anchor_t, self._anchor_bytes = now, 0
        self._queue.append(_Entry("audio", data=audio))
        self._queued_audio += len(audio)

    def _advance(self, now: float) -> None:
        """Play everything due by `now`; marks reached on the way are echoed."""
        q = self._queue
        while q:
            entry = q[0]
            if entry.kind == "mark":
                q.popleft()
                self._echo(MarkRecord(entry.name, min(self._head_time(), now)))
                continue
            due = int((now - self._anchor_t) * BYTES_PER_SECOND + 1e-6) - self._anchor_bytes
            if due <= 0:
                break
            n = min(due, len(entry.data) - entry.pos)
            if not self._playing:
                self._playing = True
                self._emit("audio_start", self._head_time(), {})
            if entry.heard is None:
                entry.heard = HeardChunk(self._head_time(), len(self.heard_ulaw))
                self.heard_chunks.append(entry.heard)
            self.heard_ulaw += entry.data[entry.pos : entry.pos + n]
            entry.heard.length += n
            entry.pos += n
            self._anchor_bytes += n
            self._queued_audio -= n
            if entry.pos < len(entry.data):
                break
            q.popleft()
            self.last_audio_end = self._head_time()
            if self._queued_audio == 0 and self._playing:
                self._playing = False
                self._emit("audio_end", self.last_audio_end, {"heard_ms": self.heard_ms})
        if not q and self._head_time() < now:
            # Idle: a mark or audio arriving later must not be played "in the past".
            self._anchor_t, self._anchor_bytes = now, 0

    def _echo(self, record: MarkRecord) -> None:
        self.marks.append(record)
        self._pending_echoes.append(record)

    def _clear(self, now: float) -> None:
        self._advance(now)
        self.clear_times.append(now)
        self.clear_speech_sent.append(self._speech_sent)
        self._emit("clear", now, {"dropped_ms": self._queued_audio / 8, "heard_ms": self.heard_ms})
        if self._playing:
            self._playing = False
            self._emit("audio_end", now, {"heard_ms": self.heard_ms, "cleared": True})
        for entry in self._queue:
            if entry.kind == "audio":
                self.dropped_bytes += len(entry.data) - entry.pos
            else:
                self._echo(MarkRecord(entry.name, now, cleared=True))
        self._queue.clear()
        self._queued_audio = 0
        self._anchor_t, self._anchor_bytes = now, 0

    async def _flush_echoes(self) -> None:
        if not self._pending_echoes:
            return
        async with self._send_lock:
            while self._pending_echoes:
                record = self._pending_echoes.pop(0)
                await self._raw_send(mark_echo_message(self.stream_sid, record.name, sequence=self._next_seq()))
                record.echoed_at = self._loop.time()

    async def _playout_loop(self) -> None:
        """Tick every 10 ms on a drift-free schedule; playout position comes from loop.time()."""
        next_t = self._loop.time()
        while True:
            next_t += PLAYOUT_TICK
            delay = next_t - self._loop.time()
            if delay < -0.5:
                next_t = self._loop.time()
            await asyncio.sleep(max(0.0, delay))
            if self._queue:
                self._advance(self._loop.time())
                await self._flush_echoes()
                self._notify()

    # ---- observations -----------------------------------------------------------------------------

    @property
    def heard_ms(self) -> float:
        return len(self.heard_ulaw) / 8

    @property
    def queued_ms(self) -> float:
        """Audio received from the agent but not yet played."""
        return self._queued_audio / 8

    @property
    def playing(self) -> bool:
        return self._queued_audio > 0

    @property
    def clears(self) -> int:
        return len(self.clear_times)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def mark_played(self) -> dict[str, float]:
        """Mark name -> when it was reached (played or cleared)."""
        return {m.name: m.played_at for m in self.marks}

    def heard_pcm16(self) -> bytes:
        return ulaw_to_pcm16(bytes(self.heard_ulaw))

    def heard_after(self, t: float) -> bytes:
        """Audio whose playback started at or after loop time `t`."""
        out = bytearray()
        for chunk in self.heard_chunks:
            if chunk.start + chunk.length / BYTES_PER_SECOND <= t:
                continue
            skip = max(0, int((t - chunk.start) * BYTES_PER_SECOND))
            out += self.heard_ulaw[chunk.offset + skip : chunk.offset + chunk.length]
        return bytes(out)

    def messages(self, event: str | None = None) -> list[dict[str, Any]]:
        """Parsed messages from the agent, optionally only one event type."""
        return [r.message for r in self.received if r.message is not None and (event is None or r.event == event)]

    # ---- waiting ----------------------------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _describe(self) -> str:
        return (
            f"heard={self.heard_ms:.0f}ms queued={self.queued_ms:.0f}ms marks={len(self.marks)} "
            f"clears={self.clears} received={len(self.received)} violations={len(self.violations)} "
            f"closed={self.closed} close_code={self.close_code}"
        )

    async def _wait_future(self, fut: asyncio.Future[Any], timeout: float, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise TimeoutError(f"Twilio caller: timed out after {timeout}s waiting for {what} ({self._describe()})") from None

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float | None = None, what: str = "condition") -> T:
        """Wait until `predicate()` is truthy (re-checked on every change and every 20 ms)."""
        limit = self.timeout if timeout is None else timeout
        deadline = self._loop.time() + limit
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError(f"Twilio caller: timed out after {limit}s waiting for {what} ({self._describe()})")
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, min(remaining, 0.02))
            except TimeoutError:
                pass

    async def wait_heard(self, ms: float, timeout: float | None = None) -> float:
        """Until the caller has heard at least `ms` of agent audio."""
        await self.wait_for(lambda: self.heard_ms >= ms, timeout, f"{ms} ms heard")
        return self.heard_ms

    async def wait_closed(self, timeout: float | None = None) -> int | None:
        """Until the socket is closed (by either side); returns the close code."""
        await self.wait_for(lambda: self.closed, timeout, "socket close")
        return self.close_code

    async def wait_mark(self, name: str, timeout: float | None = None) -> MarkRecord:
        def found() -> MarkRecord | None:
            return next((m for m in self.marks if m.name == name and m.echoed_at is not None), None)

        return await self.wait_for(found, timeout, f"mark {name!r} echoed")

    async def wait_clear(self, count: int = 1, timeout: float | None = None) -> float:
        """Until `count` clears have arrived; returns the time of the latest."""
        await self.wait_for(lambda: self.clears >= count, timeout, f"{count} clear(s)")
        return self.clear_times[-1]

    async def wait_message(self, event: str, count: int = 1, timeout: float | None = None) -> dict[str, Any]:
        """Until `count` messages of `event` have arrived; returns the latest."""
        await self.wait_for(lambda: len(self.messages(event)) >= count, timeout, f"{count} {event} message(s)")
        return self.messages(event)[-1]

    async def wait_silence_after_audio(
        self, silence_ms: float = 300, min_heard_ms: float = 1, since: float | None = None, timeout: float | None = None
    ) -> float:
        """Until some audio was heard (after `since`, if given) and playout has then been idle for
        `silence_ms`. Returns the time playback last ended."""

        def done() -> bool:
            if self._queued_audio or self.last_audio_end is None:
                return False
            heard = len(self.heard_after(since)) / 8 if since is not None else self.heard_ms
            return heard >= min_heard_ms and self._loop.time() - self.last_audio_end >= silence_ms / 1000

        await self.wait_for(done, timeout, f"{silence_ms} ms silence after audio")
        assert self.last_audio_end is not None
        return self.last_audio_end

    async def wait_playout_idle(self, timeout: float | None = None) -> None:
        """Until everything the agent sent has played."""
        await self.wait_for(lambda: not self._queue, timeout, "playout idle")
