"""A SIP caller (UAC) for `telephony-agent call --sip`: dials the agent over UDP like a phone.

`SipUac` is the sans-I/O core: INVITE with a G.711 offer (retransmitted on T1 doubling until a
response), ACK for every 2xx (retransmitted 2xx included), BYE (ours retransmitted until
answered; theirs answered 200), REFER answered 202 plus a NOTIFY that the transfer worked, and
200 for INFO/OPTIONS. It reuses the agent's own SIP message and SDP code, and `SipCall` reuses the
agent's RTP session (paced 20 ms output, jitter buffer) for the media.

`SipCall` is the asyncio shell: one UDP socket for SIP, one for RTP, the caller's microphone as
a queue of G.711 frames (silence when nothing is queued), what the caller heard with arrival
times, RFC 4733 digits out, and a timeline of events (`on_event(kind, when, details)`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, cast

from telephony_agent.telephony.leg import AudioLaw, PhoneFormat
from telephony_agent.telephony.sip.dtmf import telephone_event_payload
from telephony_agent.telephony.sip.media import RtpSession
from telephony_agent.telephony.sip.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    parse_message,
    parse_name_addr,
    parse_uri,
)
from telephony_agent.telephony.sip.rtp import build_rtp
from telephony_agent.telephony.sip.sdp import SdpError, negotiate, parse_offer

__all__ = [
    "Answered",
    "CallerState",
    "Event",
    "HungUp",
    "Rejected",
    "Ringing",
    "Send",
    "SipCall",
    "SipCallError",
    "SipUac",
    "Transferred",
    "build_offer",
]

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
TIMEOUT = 64 * T1
TE_PT = 101


class CallerState(str, enum.Enum):
    IDLE = "idle"
    CALLING = "calling"  # INVITE sent, nothing heard yet
    PROCEEDING = "proceeding"  # a provisional response came: stop retransmitting
    CONFIRMED = "confirmed"  # 2xx received and ACKed
    ENDING = "ending"  # our BYE is out
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ringing:
    status: int


@dataclass(frozen=True, slots=True)
class Answered:
    law: AudioLaw
    te_payload_type: int | None
    remote: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class HungUp:
    by: str  # "agent" (their BYE), "caller" (ours answered), "timeout"


@dataclass(frozen=True, slots=True)
class Transferred:
    target: str


Event = Send | Ringing | Answered | Rejected | HungUp | Transferred


def build_offer(host: str, rtp_port: int, codecs: tuple[str, ...] = ("PCMU", "PCMA"), te_pt: int = TE_PT) -> bytes:
    pts = [{"PCMU": 0, "PCMA": 8}[c] for c in codecs]
    ip = "IP6" if ":" in host else "IP4"
    session = secrets.randbelow(2**31)
    lines = [
        "v=0",
        f"o=softphone {session} {session} IN {ip} {host}",
        "s=telephony-agent softphone",
        f"c=IN {ip} {host}",
        "t=0 0",
        f"m=audio {rtp_port} RTP/AVP {' '.join(map(str, pts))} {te_pt}",
        *[f"a=rtpmap:{pt} {c}/8000" for pt, c in zip(pts, codecs, strict=True)],
        f"a=rtpmap:{te_pt} telephone-event/8000",
        f"a=fmtp:{te_pt} 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(slots=True)
class _ClientTx:
    data: bytes
    method: str
    cseq: int
    interval: float
    next_at: float
    give_up_at: float


@dataclass(slots=True)
class SipUac:
    """One outgoing call's signalling, sans-I/O. Every method takes `now` and returns actions."""

    target: str
    local: tuple[str, int]
    offer: bytes
    from_user: str = "softphone"
    call_id: str = field(default_factory=lambda: secrets.token_hex(12) + "@softphone")
    state: CallerState = CallerState.IDLE
    _tag: str = field(default_factory=lambda: secrets.token_hex(6))
    _to: str = ""
    _remote_target: str = ""
    _route: list[str] = field(default_factory=list)
    _cseq: int = 0
    _tx: _ClientTx | None = None
    _invite_branch: str = ""
    _ack: bytes = b""

    def __post_init__(self) -> None:
        parse_uri(self.target)  # ValueError early for a bad target
        self._to = f"<{self.target}>"
        self._remote_target = self.target

    # -- requests

    def _via(self, branch: str) -> str:
        host, port = self.local
        return f"SIP/2.0/UDP {host}:{port};branch={branch};rport"

    def _request(self, method: str, uri: str, *, cseq: int, branch: str, body: bytes = b"", ctype: str | None = None, extra: list[tuple[str, str]] | None = None) -> Request:
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.from_user}@{self.local[0]}:{self.local[1]}>;tag={self._tag}")
        h.add("To", self._to)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in self._route:
            h.add("Route", route)
        h.add("Contact", f"<sip:{self.from_user}@{self.local[0]}:{self.local[1]}>")
        h.add("User-Agent", "telephony-agent-softphone")
        for name, value in extra or []:
            h.add(name, value)
        if ctype:
            h.add("Content-Type", ctype)
        return Request(method, uri, h, body)

    def _start_tx(self, req: Request, now: float) -> list[Event]:
        data = req.to_bytes()
        self._tx = _ClientTx(data, req.method, req.cseq.number, T1, now + T1, now + TIMEOUT)
        return [Send(data)]

    def invite(self, now: float) -> list[Event]:
        self._cseq += 1
        self._invite_branch = "z9hG4bK" + secrets.token_hex(8)
        req = self._request(
            "INVITE", self.target, cseq=self._cseq, branch=self._invite_branch, body=self.offer, ctype="application/sdp",
            extra=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, INFO")],
        )
        self.state = CallerState.CALLING
        return self._start_tx(req, now)

    def bye(self, now: float) -> list[Event]:
        """Hang up (only an answered call; a ringing one is left to time out)."""
        if self.state is not CallerState.CONFIRMED:
            return []
        self._cseq += 1
        req = self._request("BYE", self._remote_target, cseq=self._cseq, branch="z9hG4bK" + secrets.token_hex(8))
        self.state = CallerState.ENDING
        return self._start_tx(req, now)

    # -- timers

    def get_timer(self) -> float | None:
        if self._tx is None:
            return None
        return min(self._tx.next_at, self._tx.give_up_at)

    def handle_timer(self, now: float) -> list[Event]:
        tx = self._tx
        if tx is None:
            return []
        if now >= tx.give_up_at:
            self._tx = None
            self.state = CallerState.ENDED
            return [HungUp("timeout")] if tx.method == "BYE" else [Rejected(408, "Request Timeout")]
        if now >= tx.next_at:
            if tx.method == "INVITE" and self.state is not CallerState.CALLING:
                tx.next_at = tx.give_up_at  # provisional seen: wait for the final response
                return []
            tx.interval = tx.interval * 2 if tx.method == "INVITE" else min(tx.interval * 2, T2)
            tx.next_at = now + tx.interval
            return [Send(tx.data)]
        return []

    # -- incoming

    def receive(self, data: bytes, now: float) -> list[Event]:
        try:
            msg = parse_message(data)
        except SipParseError:
            return []
        if msg.call_id != self.call_id:
            return []
        if isinstance(msg, Response):
            return self._on_response(msg, now)
        return self._on_request(msg, now)

    def _on_response(self, resp: Response, now: float) -> list[Event]:
        method = resp.cseq.method
        if method == "INVITE":
            if resp.status < 200:
                if self.state is CallerState.CALLING:
                    self.state = CallerState.PROCEEDING
                return [Ringing(resp.status)] if resp.status in (180, 183) else []
            if resp.status >= 300:
                if self._tx is None or self._tx.method != "INVITE":
                    return []
                self._tx = None
                self.state = CallerState.ENDED
                return [Send(self._ack_non2xx(resp)), Rejected(resp.status, resp.reason)]
            if self.state is not CallerState.CALLING and self.state is not CallerState.PROCEEDING:
                return [Send(self._ack)] if self._ack else []  # a retransmitted 2xx: ACK again
            return self._on_answer(resp)
        if method == "BYE" and self._tx is not None and self._tx.method == "BYE" and resp.status >= 200:
            self._tx = None
            self.state = CallerState.ENDED
            return [HungUp("caller")]
        return []

    def _on_answer(self, resp: Response) -> list[Event]:
        self._tx = None
        self._to = resp.headers.get("To") or self._to
        contact = resp.headers.get("Contact")
        if contact:
            self._remote_target = parse_name_addr(contact).uri
        self._route = list(reversed(resp.headers.get_all("Record-Route")))
        self.state = CallerState.CONFIRMED
        ack = self._request("ACK", self._remote_target, cseq=resp.cseq.number, branch="z9hG4bK" + secrets.token_hex(8))
        self._ack = ack.to_bytes()
        out: list[Event] = [Send(self._ack)]
        try:
            neg = negotiate(parse_offer(resp.body), ("PCMU", "PCMA"))
        except SdpError:
            neg = None
        if neg is None:  # an answer we cannot use: hang up at once
            out.extend(self.bye(0.0))
            out.append(Rejected(488, "unusable SDP answer"))
            return out
        out.append(Answered(neg.law, neg.te_payload_type, neg.remote))
        return out

    def _ack_non2xx(self, resp: Response) -> bytes:
        h = Headers()
        h.add("Via", self._via(self._invite_branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<sip:{self.from_user}@{self.local[0]}:{self.local[1]}>;tag={self._tag}")
        h.add("To", resp.headers.get("To") or self._to)
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{resp.cseq.number} ACK")
        return Request("ACK", self.target, h).to_bytes()

    def _on_request(self, req: Request, now: float) -> list[Event]:
        out: list[Event] = [Send(self._response(req, 200 if req.method != "REFER" else 202))]
        if req.method == "BYE":
            if self.state in (CallerState.CONFIRMED, CallerState.ENDING):
                self._tx = None
                self.state = CallerState.ENDED
                out.append(HungUp("agent"))
        elif req.method == "REFER":
            target = req.headers.get("Refer-To") or ""
            try:
                target = parse_name_addr(target).uri
            except ValueError:
                pass
            self._cseq += 1
            notify = self._request(
                "NOTIFY", self._remote_target, cseq=self._cseq, branch="z9hG4bK" + secrets.token_hex(8),
                body=b"SIP/2.0 200 OK\r\n", ctype="message/sipfrag;version=2.0",
                extra=[("Event", "refer"), ("Subscription-State", "terminated;reason=noresource")],
            )
            out.append(Send(notify.to_bytes()))  # best effort: the agent ends the call on it anyway
            out.append(Transferred(target))
        return out

    def _response(self, req: Request, status: int) -> bytes:
        h = Headers()
        for via in req.headers.get_all("Via"):
            h.add("Via", via)
        h.add("From", req.headers.get("From") or "")
        to = req.headers.get("To") or ""
        h.add("To", to if "tag=" in to else f"{to};tag={self._tag}")
        h.add("Call-ID", req.call_id)
        h.add("CSeq", req.headers.get("CSeq") or "")
        reason = {200: "OK", 202: "Accepted"}[status]
        return Response(status, reason, h).to_bytes()


class SipCallError(RuntimeError):
    """The call could not be placed (rejected, timed out, unusable answer)."""


class _SipSocket(asyncio.DatagramProtocol):
    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self.on_data = on_data
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_data(data)


@dataclass
class HeardChunk:
    at: float
    audio: bytes


class SipCall:
    """Places one call and runs its media; `async with SipCall(...) as call: await call.dial()`."""

    def __init__(
        self,
        target: str,
        *,
        host: str = "127.0.0.1",
        codecs: tuple[str, ...] = ("PCMU", "PCMA"),
        on_event: Callable[[str, float, dict[str, Any]], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        uri = parse_uri(target)
        self.target = target
        self.server = (uri.host, uri.port or 5060)
        self.host = host
        self.codecs = codecs
        self.timeout_s = timeout_s
        self._on_event = on_event or (lambda kind, when, details: None)
        self._loop = asyncio.get_running_loop()
        self._sip: _SipSocket | None = None
        self._rtp: RtpSession | None = None
        self._rtp_transport: asyncio.DatagramTransport | None = None
        self.uac: SipUac | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.answered = asyncio.Event()
        self.ended = asyncio.Event()
        self.result: Answered | Rejected | None = None
        self.hung_up_by: str | None = None
        self.transferred_to: str | None = None
        self.heard: list[HeardChunk] = []
        self.heard_changed = asyncio.Event()
        self.on_audio: Callable[[bytes], None] | None = None  # each chunk heard, as it arrives
        self.format = PhoneFormat()
        self._rtp_sock: socket.socket | None = None
        self._dtmf_seq = secrets.randbits(16)
        self._dtmf_ssrc = secrets.randbits(32)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _emit(self, kind: str, **details: Any) -> None:
        self._on_event(kind, self._loop.time(), details)

    async def dial(self) -> Answered:
        """INVITE and wait for the answer; raises `SipCallError` when the call is not answered."""
        sip = _SipSocket(self._on_sip)
        await self._loop.create_datagram_endpoint(lambda: sip, local_addr=(self.host, 0))
        self._sip = sip
        assert sip.transport is not None
        local = sip.transport.get_extra_info("sockname")[:2]
        # The RTP socket is bound now (its port goes in the offer); the session starts on the answer.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._rtp_sock = socket.socket(family, socket.SOCK_DGRAM)
        self._rtp_sock.bind((self.host, 0))
        rtp_port = self._rtp_sock.getsockname()[1]
        self.uac = SipUac(self.target, (local[0], local[1]), build_offer(local[0], rtp_port, self.codecs))
        self._emit("invite", target=self.target)
        self._apply(self.uac.invite(self._loop.time()))
        await asyncio.wait_for(self.answered.wait(), TIMEOUT + 5)
        if not isinstance(self.result, Answered):
            raise SipCallError(f"call not answered: {self.result}")
        return self.result

    def _on_sip(self, data: bytes) -> None:
        if self.uac is not None:
            self._apply(self.uac.receive(data, self._loop.time()))

    def _apply(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Send):
                if self._sip is not None and self._sip.transport is not None:
                    self._sip.transport.sendto(ev.data, self.server)
            elif isinstance(ev, Ringing):
                self._emit("ringing", status=ev.status)
            elif isinstance(ev, Answered):
                self.result = ev
                self._loop.create_task(self._start_media(ev))
                self._emit("answered", law=ev.law.value, te_pt=ev.te_payload_type, remote=f"{ev.remote[0]}:{ev.remote[1]}")
            elif isinstance(ev, Rejected):
                self.result = ev
                self.answered.set()
                self.ended.set()
                self._emit("rejected", status=ev.status, reason=ev.reason)
            elif isinstance(ev, HungUp):
                self.hung_up_by = ev.by
                self._emit("hangup", by=ev.by)
                if self._rtp is not None:
                    self._rtp.close()
                self.ended.set()
            elif isinstance(ev, Transferred):
                self.transferred_to = ev.target
                self._emit("transfer", target=ev.target)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.uac.get_timer() if self.uac is not None else None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.uac is not None:
            self._apply(self.uac.handle_timer(self._loop.time()))

    async def _start_media(self, ans: Answered) -> None:
        self.format = PhoneFormat(ans.law)
        assert self._rtp_sock is not None
        rtp = RtpSession(self.format, ans.te_payload_type, ans.remote, self.timeout_s, log=log)
        rtp.on_audio = self._on_heard
        rtp.on_timeout = lambda: self._emit("rtp_timeout")
        transport, _ = await self._loop.create_datagram_endpoint(lambda: rtp, sock=self._rtp_sock)
        rtp.local_port = self._rtp_sock.getsockname()[1]
        self._rtp, self._rtp_transport = rtp, cast(asyncio.DatagramTransport, transport)
        rtp.start_sending()
        self.answered.set()

    def _on_heard(self, audio: bytes) -> None:
        self.heard.append(HeardChunk(self._loop.time(), audio))
        self.heard_changed.set()
        if self.on_audio is not None:
            self.on_audio(audio)

    # -- the caller's side of the conversation

    def say(self, audio: bytes) -> float:
        """Queue G.711 audio (the answered law) on the microphone; returns its duration (s)."""
        n = self.format.frame_bytes
        frames = [audio[i : i + n] for i in range(0, len(audio), n)]
        if self._rtp is not None:
            self._rtp.send(frames)
        return len(audio) / 8000

    async def send_dtmf(self, digit: str, duration_ms: int = 120) -> None:
        """One RFC 4733 key press: progress packets every 20 ms, then the end packet three times."""
        te = self._event_payload_type()
        ts = secrets.randbits(32)
        steps = max(1, duration_ms // 20)
        self._emit("dtmf", digit=digit)
        for k in range(1, steps + 1):
            self._send_event(te, ts, telephone_event_payload(digit, end=False, duration=160 * k), marker=k == 1)
            await asyncio.sleep(0.02)
        for _ in range(3):
            self._send_event(te, ts, telephone_event_payload(digit, end=True, duration=160 * steps), marker=False, advance=False)

        self._dtmf_seq = (self._dtmf_seq + 1) & 0xFFFF

    async def send_key_flood(self, count: int, digit: str = "5", per_ms: float = 1.0) -> None:
        """`count` keys, `per_ms` a millisecond, each a single end packet with a timestamp of its
        own: a peer flooding keys (what the agent must bound), not a phone. Sent 10 at a time, so
        the agent's socket buffer (about 250 such packets) is not what drops them."""
        te = self._event_payload_type()
        ts = secrets.randbits(32)
        for k in range(count):
            self._send_event(te, (ts + 160 * k) & 0xFFFFFFFF, telephone_event_payload(digit, end=True, duration=160),
                             marker=True)
            if k % 10 == 9:
                await asyncio.sleep(10 / per_ms / 1000)

    async def send_audio_flood(self, audio: bytes, per_ms: float = 1.0) -> int:
        """`audio` as RTP packets of one packet time each, `per_ms` packets a millisecond, with
        sequence numbers and timestamps of their own (a source of its own, beside the paced
        microphone): a peer flooding the call with audio, not a phone. Sent 10 at a time, so the
        agent's socket buffer is not what drops them. Returns the packets sent."""
        if self._rtp is None or self._rtp_transport is None:
            raise SipCallError("no media: the call was not answered")
        pt = 8 if self.format.law is AudioLaw.PCMA else 0  # the static payload types (RFC 3551)
        n = self.format.frame_bytes
        ssrc, seq, ts = secrets.randbits(32), secrets.randbits(16), secrets.randbits(32)
        frames = [audio[i : i + n] for i in range(0, len(audio) - n + 1, n)]
        for k, frame in enumerate(frames):
            packet = build_rtp(pt, (seq + k) & 0xFFFF, (ts + n * k) & 0xFFFFFFFF, ssrc, frame, marker=k == 0)
            self._rtp_transport.sendto(packet, self._rtp.remote)
            if k % 10 == 9:
                await asyncio.sleep(10 / per_ms / 1000)
        return len(frames)

    def _event_payload_type(self) -> int:
        """The telephone-event payload type the agent answered; raises if there is none (or no media)."""
        te = self.result.te_payload_type if isinstance(self.result, Answered) else None
        if self._rtp is None or te is None or self._rtp_transport is None:
            raise SipCallError("the agent did not answer telephone-event: no RFC 4733 digits")
        return te

    def _send_event(self, pt: int, ts: int, payload: bytes, *, marker: bool, advance: bool = True) -> None:
        assert self._rtp is not None and self._rtp_transport is not None
        self._rtp_transport.sendto(build_rtp(pt, self._dtmf_seq, ts, self._dtmf_ssrc, payload, marker), self._rtp.remote)
        if advance:
            self._dtmf_seq = (self._dtmf_seq + 1) & 0xFFFF

    async def hangup(self, timeout: float = 10.0) -> None:
        if self.uac is None or self.ended.is_set():
            return
        self._apply(self.uac.bye(self._loop.time()))
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rtp is not None:
            self._rtp.close()
        elif self._rtp_sock is not None:
            self._rtp_sock.close()
        if self._sip is not None and self._sip.transport is not None:
            self._sip.transport.close()

    @property
    def heard_audio(self) -> bytes:
        return b"".join(c.audio for c in self.heard)



_VOICE_LEVEL = 200  # peak PCM16 amplitude of a frame that carries the agent's voice (not line silence)
_TURN_GAP_S = 0.3  # this long without voice ends an agent turn


class SipPhone:
    """`SipCall` seen the way `telephony-agent call` drives a caller (TwilioCaller's interface).

    An RTP line carries silence between turns, so the agent's turns are found by level: a frame
    with voice starts a turn, `_TURN_GAP_S` without voice ends it. A SIP caller is never told
    about barge-in (no `clear` on RTP); a turn that stops while the caller is talking over it is
    reported as cut by barge-in.
    """

    def __init__(self, target: str, *, on_event: Callable[[str, float, dict[str, Any]], None] | None = None,
                 timeout: float = 20.0, host: str = "127.0.0.1") -> None:
        self._on_event = on_event or (lambda kind, when, details: None)
        self._loop = asyncio.get_running_loop()
        self.call = SipCall(target, host=host, on_event=self._sip_event, timeout_s=max(timeout, 30.0))
        self.timeout = timeout
        self.heard_ulaw = bytearray()
        self._heard_at: list[tuple[float, int]] = []  # (arrival, offset in heard_ulaw)
        self.sent_ulaw = bytearray()
        self.last_audio_end: float | None = None
        self._last_voice: float | None = None
        self._in_turn = False
        self._turn_started_at = 0.0
        self._turn_timer: asyncio.TimerHandle | None = None
        self._speaking_until = 0.0
        self._talk_started = 0.0
        self.clears = 0
        self.violations: list[Any] = []
        self.closed_at: float | None = None
        self.closed_by_server = False
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.call.close()

    @property
    def call_sid(self) -> str:
        return self.call.uac.call_id if self.call.uac is not None else ""

    async def place_and_connect(self) -> None:
        await self.call.dial()
        self.call.on_audio = self._on_audio

    def _sip_event(self, kind: str, when: float, details: dict[str, Any]) -> None:
        if kind == "hangup":
            self.closed_at = when
            self.closed_by_server = details.get("by") == "agent"
            self._end_turn(when)
            self._on_event("closed", when, {"by_server": self.closed_by_server, "code": f"SIP BYE from the {details.get('by')}"})
        self._changed.set()

    # -- what the caller hears

    def _on_audio(self, payload: bytes) -> None:
        from telephony_codecs import alaw_to_pcm16, pcm16_to_ulaw, ulaw_to_pcm16

        now = self._loop.time()
        pcm = alaw_to_pcm16(payload) if self.call.format.law is AudioLaw.PCMA else ulaw_to_pcm16(payload)
        ulaw = payload if self.call.format.law is AudioLaw.PCMU else pcm16_to_ulaw(pcm)
        samples = memoryview(pcm).cast("h")
        voiced = max((abs(x) for x in samples), default=0) > _VOICE_LEVEL
        if voiced:
            self._last_voice = now
            if not self._in_turn:
                self._in_turn = True
                self._turn_started_at = now
                self._emit("audio_start", now, {})
        if self._in_turn:
            self._heard_at.append((now, len(self.heard_ulaw)))
            self.heard_ulaw += ulaw
            if self._turn_timer is None:
                self._turn_timer = self._loop.call_later(_TURN_GAP_S, self._check_turn)
        self._changed.set()

    def _check_turn(self) -> None:
        self._turn_timer = None
        if not self._in_turn or self._last_voice is None:
            return
        quiet_since = self._last_voice
        if self._loop.time() - quiet_since >= _TURN_GAP_S:
            self._end_turn(quiet_since)
        else:
            self._turn_timer = self._loop.call_at(quiet_since + _TURN_GAP_S, self._check_turn)

    def _end_turn(self, when: float) -> None:
        if not self._in_turn:
            return
        self._in_turn = False
        self.last_audio_end = when
        # cut by barge-in: the caller started talking during this turn and was still talking when it stopped
        cut = self._turn_started_at < self._talk_started <= when <= self._speaking_until + _TURN_GAP_S
        details: dict[str, Any] = {"heard_ms": self.heard_ms}
        if cut:
            self.clears += 1
            details["cleared"] = True
            self._emit("clear", when, {"dropped_ms": 0})
        self._emit("audio_end", when, details)
        self._changed.set()

    def _emit(self, kind: str, when: float, details: dict[str, Any]) -> None:
        self._on_event(kind, when, details)

    @property
    def heard_ms(self) -> float:
        return len(self.heard_ulaw) / 8

    @property
    def playing(self) -> bool:
        return self._in_turn

    @property
    def closed(self) -> bool:
        return self.call.ended.is_set()

    def heard_after(self, t: float) -> bytes:
        for at, offset in self._heard_at:
            if at >= t:
                return bytes(self.heard_ulaw[offset:])
        return b""

    def heard_pcm16(self) -> bytes:
        from telephony_codecs import ulaw_to_pcm16

        return ulaw_to_pcm16(bytes(self.heard_ulaw))

    # -- what the caller says

    def say(self, ulaw: bytes) -> float:
        """Queue mu-law speech on the line (converted to A-law when that was answered)."""
        from telephony_codecs import pcm16_to_alaw, ulaw_to_pcm16

        now = self._loop.time()
        start = max(now, self._speaking_until)
        self._talk_started = start
        seconds = len(ulaw) / 8000
        self._speaking_until = start + seconds
        self.sent_ulaw += ulaw
        audio = ulaw if self.call.format.law is AudioLaw.PCMU else pcm16_to_alaw(ulaw_to_pcm16(ulaw))
        self.call.say(audio)
        return seconds

    async def speak(self, ulaw: bytes) -> None:
        """Say `ulaw` and wait until it has gone out."""
        self.say(ulaw)
        await asyncio.sleep(max(0.0, self._speaking_until - self._loop.time()))

    async def send_dtmf(self, digit: str) -> None:
        await self.call.send_dtmf(digit)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None, what: str = "condition") -> Any:
        deadline = self._loop.time() + (timeout if timeout is not None else self.timeout)
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    async def hangup(self) -> None:
        await self.call.hangup()
        if self.closed_at is None:
            self.closed_at = self._loop.time()
