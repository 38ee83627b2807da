"""The asyncio shell of the SIP trunk: UDP and TCP listeners around the sans-I/O `SipUas`.

It owns the sockets and one timer (armed at `SipUas.get_timer()`), and runs each call:

    INVITE (authorised by the core) -> CallManager.reserve (503 + Retry-After when refused)
    -> 180 Ringing -> RTP socket (`open_rtp`) -> CallManager.start_call(leg): once admitted,
    200 OK with our SDP answer and the leg attached; then the provider session opens
    -> caller BYE / our BYE / ACK timeout / RTP silence -> CallManager.call_ended

`SipCall` is the dialog's `SipCallControl` for the media leg: BYE (retransmitted by the core
until answered) and REFER (resolved by the NOTIFY that reports the transfer's outcome).
`install(app)` adds the listener to the aiohttp server when `AGENT_SIP_PORT` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from telephony_agent.telephony.loop_timer import LoopTimer
from telephony_agent.telephony.sip.auth import DigestAuthenticator
from telephony_agent.telephony.sip.dtmf import parse_info_dtmf
from telephony_agent.telephony.sip.leg_control import TransferFailed
from telephony_agent.telephony.sip.media import RtpPortPool, SipLeg, open_rtp
from telephony_agent.telephony.sip.message import (
    SipParseError,
    StreamFramer,
)
from telephony_agent.telephony.sip.sdp import build_answer
from telephony_agent.telephony.sip.transaction import T1, Peer
from telephony_agent.telephony.sip.uas import (
    CallConfirmed,
    CallEnded,
    CallState,
    Count,
    EndReason,
    IncomingCall,
    InfoReceived,
    Send,
    SipUas,
    TransferUpdate,
    UasConfig,
    parse_networks,
)

__all__ = [
    "SIP_ENDPOINT",
    "CallAdmission",
    "SipCall",
    "SipEndpoint",
    "SipEndpointConfig",
    "SipMetrics",
    "install",
    "prometheus_metrics",
]

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30
TRANSFER_TIMEOUT_S = 30.0
MAX_TCP_CONNECTIONS = 512
TCP_IDLE_TIMEOUT_S = 900.0  # trunks keep one connection up for hours; CRLF keep-alives reset this


class CallAdmission(Protocol):
    """What the endpoint needs of `telephony.calls.CallManager`."""

    def reserve(self, call_id: str, transport: str = ...) -> str | None: ...

    def release(self, call_id: str) -> None: ...

    async def start_call(self, call_id: str, leg: Any, *, transport: str | None = ...,
                         log: Any = ..., on_admitted: Callable[[], None] | None = ...) -> Any: ...

    def call_ended(self, bridge: Any) -> None: ...


@dataclass
class SipMetrics:
    """Where the endpoint counts things; the server wires these to Prometheus counters."""

    count: Callable[[str, str], None] = lambda family, label: None  # (family, label)
    call_outcome: Callable[[str], None] = lambda outcome: None
    rtp_summary: Callable[[dict[str, Any]], None] = lambda summary: None


@dataclass
class SipEndpointConfig:
    host: str
    port: int
    transports: tuple[str, ...] = ("udp", "tcp")
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    allowed_sources: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    rate_limit: float = 20.0
    rtp_address: str | None = None
    rtp_ports: str = "20000-20999"
    rtp_timeout_s: float = 30.0
    ring: bool = True
    t1: float = T1  # tests shorten it to see 64*T1 timeouts in seconds

    @classmethod
    def from_settings(cls, settings: Any) -> SipEndpointConfig:
        password = settings.sip_password.get_secret_value() if settings.sip_password is not None else None
        return cls(
            host=settings.sip_host or settings.host,
            port=settings.sip_port,
            transports=tuple(settings.sip_transports),
            codecs=tuple(settings.sip_codecs),
            allowed_sources=tuple(settings.sip_allowed_sources),
            username=settings.sip_username,
            password=password,
            digest_algorithms=tuple(settings.sip_digest_algorithms),
            rate_limit=settings.sip_rate_limit,
            rtp_address=settings.rtp_address,
            rtp_ports=settings.rtp_ports,
            rtp_timeout_s=settings.rtp_timeout_seconds,
        )


@dataclass
class SipCall:
    """One SIP call's shell state; the media leg's `SipCallControl`."""

    endpoint: SipEndpoint
    incoming: IncomingCall
    log: logging.LoggerAdapter[logging.Logger]
    leg: SipLeg | None = None
    bridge: Any = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: EndReason | None = None
    _transfer: asyncio.Future[int] | None = None
    _hangup_task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.incoming.call_id

    async def hangup(self) -> None:
        if not self.ended.is_set():
            self.endpoint._apply(self.endpoint.uas.bye(self.id, self.endpoint.now()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.ended.wait(), 64 * self.endpoint.config.t1 + 1.0)

    async def transfer(self, target: str) -> None:
        target = target.strip()
        if target.lstrip("+").replace("-", "").isdigit():
            target = f"tel:{target}"  # an allowlisted phone number (Twilio style) becomes a tel: URI
        if not target.lower().startswith(("sip:", "sips:", "tel:")):
            raise TransferFailed(f"a SIP transfer needs a sip: or tel: URI or a phone number, not {target!r}")
        if self._transfer is not None and not self._transfer.done():
            raise TransferFailed("a transfer is already in progress")
        self._transfer = asyncio.get_running_loop().create_future()
        self.endpoint._apply(self.endpoint.uas.refer(self.id, target, self.endpoint.now()))
        try:
            status = await asyncio.wait_for(asyncio.shield(self._transfer), TRANSFER_TIMEOUT_S)
        except TimeoutError:
            raise TransferFailed("no NOTIFY with the transfer's outcome in time") from None
        if not 200 <= status < 300:
            raise TransferFailed(f"transfer failed: {status}")
        self.log.info("transfer accepted by the far end; ending our leg")
        self._spawn_hangup()  # RFC 5589: the transferor ends its dialog once the transfer succeeded

    def on_media_timeout(self) -> None:
        self.log.warning("no RTP from the caller: ending the call")
        self._spawn_hangup()

    def _spawn_hangup(self) -> None:
        if self._hangup_task is None:
            self._hangup_task = asyncio.get_running_loop().create_task(self.hangup(), name=f"sip-bye-{self.id}")

    def _transfer_update(self, status: int, final: bool) -> None:
        if final and self._transfer is not None and not self._transfer.done():
            self._transfer.set_result(status)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.endpoint._receive(data, Peer("udp", addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable for a response: harmless
        log.debug("SIP UDP error: %s", exc)


class SipEndpoint:
    """SIP listeners (UDP/TCP), the UAS core, its timer, and the calls it runs."""

    def __init__(self, config: SipEndpointConfig, admission: CallAdmission, *,
                 metrics: SipMetrics | None = None, rtp_metrics: Any = None) -> None:
        self.config = config
        self.rtp_metrics = rtp_metrics  # the server's Metrics, for the RTP sessions' agent_rtp_* families
        self.admission = admission
        self.metrics = metrics or SipMetrics()
        self.pool = RtpPortPool.from_spec(config.rtp_ports)
        auth = None
        if config.username is not None and config.password is not None:
            auth = DigestAuthenticator(config.username, config.password, algorithms=config.digest_algorithms)
        wildcard = _is_wildcard(config.host)
        self.uas = SipUas(
            UasConfig(
                ports={t: config.port for t in config.transports},
                codecs=config.codecs,
                allowed_sources=parse_networks(config.allowed_sources),
                authenticator=auth,
                rate_per_s=config.rate_limit,
                rate_burst=config.rate_limit * 2,
                # Contact/Via of this instance: its public address when set, else the listen address.
                advertised_host=config.rtp_address or (None if wildcard else config.host),
                t1=config.t1,
            )
        )
        self.calls: dict[str, SipCall] = {}
        self.ports: dict[str, int] = {}  # transport -> bound port (tests bind port 0)
        self._udp: _UdpProtocol | None = None
        self._tcp_server: asyncio.base_events.Server | None = None
        self._tcp: dict[tuple[str, int], asyncio.StreamWriter] = {}
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._timer: LoopTimer | None = None  # on the loop the endpoint starts on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # Port 0 (tests): UDP picks a free port and TCP must get the same one; retry if it is taken.
        attempts = 20 if self.config.port == 0 else 1
        for attempt in range(attempts):
            try:
                await self._bind()
                break
            except OSError:
                self._close_listeners()
                if attempt == attempts - 1:
                    raise
        if self.config.port == 0:  # tests: advertise what we bound
            self.uas.config.ports.update(self.ports)
        log.info("SIP listening on %s %s", self.config.host, ", ".join(f"{t}/{p}" for t, p in self.ports.items()),
                 extra={"event": "sip_listening"})

    async def _bind(self) -> None:
        assert self._loop is not None
        host = self.config.host
        self.ports = {}
        if "udp" in self.config.transports:
            transport, protocol = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, self.config.port)
            )
            self._udp = protocol
            self.ports["udp"] = transport.get_extra_info("sockname")[1]
        if "tcp" in self.config.transports:
            port = self.ports.get("udp", self.config.port)
            self._tcp_server = await asyncio.start_server(self._on_tcp, host, port)
            self.ports["tcp"] = self._tcp_server.sockets[0].getsockname()[1]

    def _close_listeners(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        self._udp = None
        if self._tcp_server is not None:
            self._tcp_server.close()
        self._tcp_server = None

    @property
    def ready(self) -> bool:
        udp_ok = "udp" not in self.config.transports or (self._udp is not None and self._udp.transport is not None
                                                          and not self._udp.transport.is_closing())
        tcp_ok = "tcp" not in self.config.transports or (self._tcp_server is not None and self._tcp_server.is_serving())
        return udp_ok and tcp_ok and not self._closing

    async def stop(self, timeout: float = 5.0) -> None:
        """End every call with BYE (bounded), then close the listeners."""
        self._closing = True
        calls = list(self.calls.values())
        if calls:
            byes = [asyncio.ensure_future(c.hangup()) for c in calls]
            _, pending = await asyncio.wait(byes, timeout=timeout)
            for task in pending:
                task.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._timer is not None:
            self._timer.cancel()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for writer in list(self._tcp.values()):
            writer.close()
        for task in list(self._tcp_tasks):
            task.cancel()
        if self._tcp_tasks:
            await asyncio.wait(list(self._tcp_tasks), timeout=timeout)
        if self._tcp_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp_server.wait_closed(), timeout)

    # -- input ----------------------------------------------------------------------------

    def _receive(self, data: bytes, peer: Peer) -> None:
        try:
            actions = self.uas.receive(data, peer, self.now())
        except Exception:  # a bug in the core must not take the listener down with it
            log.exception("SIP core failed on a message from %s", peer.host)
            self.metrics.count("bad_input", "internal_error")
            return
        self._apply(actions)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        if addr is None or len(self._tcp) >= MAX_TCP_CONNECTIONS or self._closing:
            writer.close()
            return
        peer = Peer("tcp", addr[0], addr[1])
        self._tcp[peer.addr] = writer
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)
        framer = StreamFramer()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), TCP_IDLE_TIMEOUT_S)
                if not data:
                    break
                try:
                    messages = framer.feed(data)
                except SipParseError as exc:  # the stream cannot be resynchronised: drop the connection
                    self.metrics.count("bad_input", exc.kind.value)
                    break
                for message in messages:
                    self._receive(message, peer)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            if self._tcp.get(peer.addr) is writer:
                del self._tcp[peer.addr]
            writer.close()
            if task is not None:
                self._tcp_tasks.discard(task)

    # -- actions --------------------------------------------------------------------------

    def _apply(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif isinstance(action, Count):
                self.metrics.count(action.family, action.label)
            elif isinstance(action, IncomingCall):
                self._on_incoming(action)
            elif isinstance(action, CallEnded):
                self._on_ended(action)
            elif isinstance(action, CallConfirmed):
                call = self.calls.get(action.call_id)
                if call is not None:
                    call.log.info("call confirmed (ACK)")
            elif isinstance(action, InfoReceived):
                self._on_info(action)
            elif isinstance(action, TransferUpdate):
                call = self.calls.get(action.call_id)
                if call is not None:
                    call.log.info("transfer progress: %d%s", action.status, " (final)" if action.final else "")
                    call._transfer_update(action.status, action.final)
        self._arm_timer()

    def _send(self, action: Send) -> None:
        peer = action.peer
        if peer.transport == "udp":
            if self._udp is not None and self._udp.transport is not None and not self._udp.transport.is_closing():
                try:
                    self._udp.transport.sendto(action.data, peer.addr)
                except OSError as exc:
                    log.debug("SIP send to %s failed: %s", peer.host, exc)
            return
        writer = self._tcp.get(peer.addr)
        if writer is not None and not writer.is_closing():
            writer.write(action.data)
            return
        if action.fallback is not None:
            fallback = self._tcp.get(action.fallback.addr)
            if fallback is not None and not fallback.is_closing():
                fallback.write(action.data)
                return
        self._spawn(self._tcp_connect_and_send(action.fallback or peer, action.data))

    async def _tcp_connect_and_send(self, peer: Peer, data: bytes) -> None:
        """A request to a TCP peer we have no connection to (our BYE after theirs closed)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(peer.host, peer.port), 5.0)
        except (TimeoutError, OSError) as exc:
            log.warning("SIP TCP connect to %s:%d failed: %s", peer.host, peer.port, exc)
            return
        writer.write(data)
        local = writer.get_extra_info("peername")
        key = (local[0], local[1]) if local else peer.addr
        self._tcp[key] = writer

        async def read_loop() -> None:
            framer = StreamFramer()
            try:
                while data := await asyncio.wait_for(reader.read(65536), TCP_IDLE_TIMEOUT_S):
                    for message in framer.feed(data):
                        self._receive(message, Peer("tcp", key[0], key[1]))
            except (TimeoutError, ConnectionError, OSError, SipParseError):
                pass
            finally:
                if self._tcp.get(key) is writer:
                    del self._tcp[key]
                writer.close()

        await read_loop()

    def _arm_timer(self) -> None:
        if self._loop is None:
            return
        if self._timer is None:
            self._timer = LoopTimer(self._loop, self._on_timer)
        self._timer.arm(self.uas.get_timer())

    def _on_timer(self, now: float) -> None:
        try:
            actions = self.uas.handle_timer(now)
        except Exception:
            log.exception("SIP timer handling failed")
            actions = []
        self._apply(actions)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- calls ----------------------------------------------------------------------------

    async def _run_call_safely(self, call: SipCall) -> None:
        """`_run_call`, and whatever goes wrong in it, the dialog still ends and is counted."""
        try:
            await self._run_call(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            call.log.exception("SIP call failed")
            self.admission.release(call.id)
            self._apply(self.uas.bye(call.id, self.now()))  # BYE, or 480 if not answered yet
            if call.leg is not None:
                await call.leg.close()
            self._finish(call, "internal_error")

    def _on_incoming(self, incoming: IncomingCall) -> None:
        adapter = logging.LoggerAdapter(log, {"call_id": incoming.call_id})
        call = SipCall(self, incoming, adapter)
        self.calls[incoming.call_id] = call
        # The dialled user and the caller are logged (never used as metric labels).
        adapter.info("SIP INVITE from %s to %s via %s/%s codec=%s te_pt=%s", incoming.caller, incoming.request_user,
                     incoming.source.transport, incoming.source.host, incoming.negotiated.law.value,
                     incoming.negotiated.te_payload_type, extra={"event": "sip_invite"})
        self._spawn(self._run_call_safely(call))

    async def _run_call(self, call: SipCall) -> None:
        uas, call_id, incoming = self.uas, call.id, call.incoming
        if self._closing:
            self._apply(uas.reject(call_id, 503, self.now(), headers=[("Retry-After", str(RETRY_AFTER_S))]))
            self._finish(call, "refused_draining")
            return
        reason = self.admission.reserve(call_id, "sip")
        if reason is not None:
            call.log.warning("refusing SIP call: %s", reason)
            self._apply(uas.reject(call_id, 503, self.now(), headers=[("Retry-After", str(RETRY_AFTER_S))]))
            self._finish(call, f"refused_{reason}")
            return
        if self.config.ring:
            self._apply(uas.ring(call_id, self.now()))
        media_host = self._media_host(incoming)
        neg = incoming.negotiated
        try:
            rtp = await open_rtp(self._bind_host(media_host), self.pool, neg.format, neg.te_payload_type, neg.remote,
                                 self.config.rtp_timeout_s, call.log, metrics=self.rtp_metrics)
        except OSError as exc:
            call.log.error("no RTP port for the call: %s", exc)
            self.admission.release(call_id)
            self._apply(uas.reject(call_id, 503, self.now(), headers=[("Retry-After", str(RETRY_AFTER_S))]))
            self._finish(call, "refused_no_rtp_port")
            return
        call.leg = leg = SipLeg(rtp, call, log=call.log)
        if call.ended.is_set():  # cancelled while ringing: no provider session for it
            self.admission.release(call_id)
            await leg.close()
            self._finish(call, "cancelled")
            return
        # Answer as soon as the manager has admitted the call and built its bridge (`on_admitted`,
        # before the provider session opens), and attach the leg at once: the caller's first words
        # are buffered by the bridge while the provider connects, as with Twilio, and no provider
        # latency keeps the phone ringing. Refused calls were never answered: they get 503.
        def answer_and_attach() -> None:
            if call.bridge is None:
                call.bridge = getattr(self.admission, "calls", {}).get(call_id)
            if not call.ended.is_set() and uas.call_state(call_id) is CallState.OFFERED:
                answer = build_answer(neg, media_host, rtp.local_port, secrets.randbelow(2**31))
                self._apply(uas.answer(call_id, answer, self.now()))
            if call.bridge is not None:
                leg.attach(call.bridge)

        try:
            bridge = await self.admission.start_call(call_id, leg, transport="sip", log=call.log,
                                                     on_admitted=answer_and_attach)
        except Exception as exc:  # refused, or failed to start (logged with its traceback)
            call.log.warning("call could not start: %r", exc, exc_info=type(exc).__name__ != "CallRefused")
            self.admission.release(call_id)
            if uas.call_state(call_id) is CallState.OFFERED:
                self._apply(uas.reject(call_id, 503, self.now(), headers=[("Retry-After", str(RETRY_AFTER_S))]))
            else:
                await call.hangup()
            await leg.close()
            self._finish(call, "failed_to_start")
            return
        call.bridge = bridge
        answer_and_attach()  # a manager that does not call on_admitted: answer now (attach is idempotent)
        if call.ended.is_set():  # cancelled or hung up while the call was being set up
            leg.deliver_hangup()
        try:
            await bridge.wait_ended()
            if not call.ended.is_set():  # the bridge closed the leg without hanging up: end the dialog
                await call.hangup()
        finally:
            await leg.close()
            self.admission.call_ended(bridge)
            outcome = call.end_reason.value if call.end_reason is not None else "ended"
            bridge_outcome = getattr(getattr(bridge, "outcome", None), "value", None)
            self._finish(call, str(bridge_outcome or outcome))

    def _finish(self, call: SipCall, outcome: str) -> None:
        if self.calls.pop(call.id, None) is None:
            return
        self.metrics.call_outcome(outcome)
        if call.leg is not None:
            self.metrics.rtp_summary(call.leg.rtp.summary())
        call.log.info("SIP call over: %s", outcome, extra={"event": "sip_call_over"})

    def _on_ended(self, ended: CallEnded) -> None:
        call = self.calls.get(ended.call_id)
        if call is None:
            return
        call.end_reason = ended.reason
        call.ended.set()
        call.log.info("SIP dialog ended: %s", ended.reason.value)
        if call.leg is not None and ended.reason in (EndReason.REMOTE_BYE, EndReason.CANCELLED, EndReason.ACK_TIMEOUT):
            call.leg.deliver_hangup()  # tells the bridge (LegEvents.on_hangup) once
        if call._transfer is not None and not call._transfer.done():
            call._transfer.set_result(487)

    def _on_info(self, info: InfoReceived) -> None:
        call = self.calls.get(info.call_id)
        if call is None or call.leg is None:
            return
        digit = parse_info_dtmf(info.content_type, info.body)
        if digit is not None:
            self.metrics.count("dtmf", "info")
            call.leg.deliver_dtmf(digit)

    def _media_host(self, incoming: IncomingCall) -> str:
        """The address in our SDP: AGENT_RTP_ADDRESS, else the SIP host, else what the caller dialled."""
        if self.config.rtp_address:
            return self.config.rtp_address
        if not _is_wildcard(self.config.host):
            return self.config.host
        try:
            ipaddress.ip_address(incoming.local_host)
            return incoming.local_host
        except ValueError:
            return "127.0.0.1" if incoming.source.host.startswith("127.") else incoming.source.host

    def _bind_host(self, media_host: str) -> str:
        if not _is_wildcard(self.config.host):
            return self.config.host
        return "::" if ":" in media_host else "0.0.0.0"


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


# -- server hook ----------------------------------------------------------------------------

SIP_ENDPOINT = web.AppKey("sip_endpoint", SipEndpoint)


def prometheus_metrics(m: Any) -> SipMetrics:
    """Wire the endpoint's counts to the server's `Metrics` (its `agent_sip_*` families)."""
    families = {
        "request": m.sip_requests,
        "response": m.sip_responses,
        "bad_input": m.sip_bad_input,
        "refused": m.sip_refused,
    }

    def count(family: str, label: str) -> None:
        if family == "dtmf":
            m.sip_info_dtmf.inc()
        elif family in families:
            families[family].labels(label).inc()

    return SipMetrics(count=count, call_outcome=lambda outcome: m.sip_calls.labels(outcome).inc())


def install(app: web.Application, settings: Any, admission: CallAdmission, metrics: Any) -> SipEndpoint | None:
    """Run the SIP listener with the server when AGENT_SIP_PORT is set (started and stopped by
    the app's cleanup context); `/readyz` finds it under `SIP_ENDPOINT`."""
    if settings.sip_port is None:
        return None
    config = SipEndpointConfig.from_settings(settings)
    endpoint = SipEndpoint(config, admission, metrics=prometheus_metrics(metrics), rtp_metrics=metrics)
    app[SIP_ENDPOINT] = endpoint
    open_to_all = any(ipaddress.ip_network(s, strict=False).prefixlen == 0 for s in config.allowed_sources)
    if open_to_all and config.username is None:
        log.warning("SIP accepts INVITEs from any address without a password: set AGENT_SIP_ALLOWED_SOURCES")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await endpoint.start()
        yield
        await endpoint.stop()

    app.cleanup_ctx.append(lifecycle)
    return endpoint
