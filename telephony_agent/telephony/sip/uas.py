"""The SIP user agent server core, sans-I/O: bytes, their source and `now` in; actions out.

`SipUas.receive(data, source, now)` parses one message (a datagram, or one message cut from a
TCP stream) and returns actions: `Send` (bytes to a peer), and events for the shell:
`IncomingCall` (authorised, negotiated, waiting for `answer`/`reject`), `CallConfirmed`,
`CallEnded`, `InfoReceived`, `TransferUpdate`, and `Count` (metrics). The shell arms one timer
at `get_timer()` and calls `handle_timer(now)`; commands (`ring`, `answer`, `reject`, `bye`,
`refer`) return actions the same way. Nothing here reads a clock or touches a socket.

Order of checks for a new request: parse (malformed: counted, dropped) -> per-source rate limit
(dropped) -> source allowlist (403) -> method. For an INVITE: 100 Trying at once -> digest
(401) -> Require (420) -> SDP (415/488) -> `IncomingCall`. Only then does the shell admit the
call and open a provider session, so nothing unauthorised ever costs one.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from telephony_agent.telephony.sip.auth import AuthResult, DigestAuthenticator
from telephony_agent.telephony.sip.dialog import Dialog, new_tag
from telephony_agent.telephony.sip.message import (
    REASONS,
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    split_list,
)
from telephony_agent.telephony.sip.sdp import (
    Negotiated,
    SdpError,
    negotiate,
    parse_offer,
)
from telephony_agent.telephony.sip.transaction import (
    T1,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Peer,
    TxState,
)
from telephony_agent.telephony.token_bucket import TokenBucket

__all__ = [
    "ALLOW",
    "Action",
    "CallConfirmed",
    "CallEnded",
    "CallState",
    "Count",
    "EndReason",
    "IncomingCall",
    "InfoReceived",
    "Send",
    "SipUas",
    "TransferUpdate",
    "UasConfig",
    "parse_networks",
]

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, INFO"
KNOWN_METHODS = frozenset({"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REFER", "NOTIFY", "INFO", "UPDATE", "PRACK",
                           "SUBSCRIBE", "MESSAGE", "REGISTER", "PUBLISH"})
MAX_RATE_SOURCES = 10_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Sequence[str]) -> tuple[Network, ...]:
    """CIDR list (`203.0.113.0/24`, `2001:db8::1`); raises ValueError naming a bad entry."""
    out = []
    for entry in entries:
        entry = entry.strip()
        if entry:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(f"not an IP network: {entry!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class UasConfig:
    ports: dict[str, int]  # transport -> our listening port (Via/Contact of our requests)
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    allowed_sources: tuple[Network, ...] = ()  # empty: any source
    authenticator: DigestAuthenticator | None = None
    rate_per_s: float = 20.0  # new (out-of-dialog) requests per second per source address
    rate_burst: float = 40.0
    advertised_host: str | None = None  # our address in Contact/Via; None: the address the caller dialled
    contact_user: str = "agent"
    server: str = "telephony-agent"
    t1: float = T1


# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    peer: Peer
    fallback: Peer | None = None  # TCP: where to connect when the connection to `peer` is gone


@dataclass(frozen=True, slots=True)
class IncomingCall:
    call_id: str
    source: Peer
    negotiated: Negotiated
    local_host: str  # the host the caller dialled (our address as it sees it)
    request_user: str  # the Request-URI user (the number dialled); for logs, never labels
    caller: str  # the From URI; for logs, never labels


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    call_id: str


class EndReason(str, enum.Enum):
    CANCELLED = "cancelled"  # CANCEL (or BYE) before we answered
    REMOTE_BYE = "remote_bye"
    LOCAL_BYE = "local_bye"  # our BYE was answered or timed out
    ACK_TIMEOUT = "ack_timeout"  # our 2xx was never ACKed (we sent BYE)
    REJECTED = "rejected"  # we answered with a final non-2xx


@dataclass(frozen=True, slots=True)
class CallEnded:
    call_id: str
    reason: EndReason


@dataclass(frozen=True, slots=True)
class InfoReceived:
    call_id: str
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class TransferUpdate:
    """REFER progress: the REFER's own response, then NOTIFY sipfrag statuses. `final` ends it."""

    call_id: str
    status: int
    final: bool


@dataclass(frozen=True, slots=True)
class Count:
    """A metrics increment: `family` is a closed set, `label` never carries caller data."""

    family: str  # "request", "response", "bad_input", "refused"
    label: str


Action = Send | IncomingCall | CallConfirmed | CallEnded | InfoReceived | TransferUpdate | Count


class CallState(str, enum.Enum):
    OFFERED = "offered"  # INVITE accepted by the core, waiting for the shell's answer/reject
    ANSWERED = "answered"  # 2xx sent, waiting for ACK
    CONFIRMED = "confirmed"
    ENDING = "ending"  # our BYE is out
    ENDED = "ended"


@dataclass
class _Call:
    id: str
    state: CallState
    source: Peer
    reply_to: Peer
    invite: Request
    invite_tx: InviteServerTransaction
    dialog: Dialog
    negotiated: Negotiated
    local_host: str
    answer_body: bytes | None = None
    pending_2xx: InviteServerTransaction | None = None
    bye_branch: str | None = None
    refer_branch: str | None = None
    bye_on_ack: bool = False  # hang up as soon as the 2xx is acknowledged


@dataclass
class _Client:
    tx: NonInviteClientTransaction
    call_id: str


@dataclass
class SipUas:
    config: UasConfig
    _server_tx: dict[tuple[str, ...], InviteServerTransaction | NonInviteServerTransaction] = field(default_factory=dict)
    _client_tx: dict[tuple[str, str], _Client] = field(default_factory=dict)
    _calls: dict[str, _Call] = field(default_factory=dict)
    _dialogs: dict[tuple[str, str, str], _Call] = field(default_factory=dict)
    _early: dict[tuple[str, str], _Call] = field(default_factory=dict)  # (Call-ID, From tag), whole call
    _invite_calls: dict[tuple[str, ...], _Call] = field(default_factory=dict)  # INVITE tx key -> call
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    # -- queries --------------------------------------------------------------------------

    def call_state(self, call_id: str) -> CallState | None:
        call = self._calls.get(call_id)
        return call.state if call is not None else None

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    @property
    def transactions(self) -> int:
        return len(self._server_tx) + len(self._client_tx)

    def get_timer(self) -> float | None:
        deadlines = [tx.deadline for tx in self._server_tx.values() if tx.deadline is not None]
        deadlines += [c.tx.deadline for c in self._client_tx.values() if c.tx.deadline is not None]
        return min(deadlines) if deadlines else None

    # -- input ----------------------------------------------------------------------------

    def receive(self, data: bytes, source: Peer, now: float) -> list[Action]:
        out: list[Action] = []
        try:
            message = parse_message(data, stream=source.reliable)
        except SipParseError as exc:
            out.append(Count("bad_input", exc.kind.value))
            self._take_token(source.host, now)
            return out
        if isinstance(message, Response):
            self._on_response(message, now, out)
            return out
        method = message.method
        out.append(Count("request", method if method in KNOWN_METHODS else "other"))
        try:
            self._on_request(message, source, now, out)
        except (ValueError, IndexError) as exc:  # a header we could parse but not use
            out.append(Count("bad_input", "semantic"))
            if method != "ACK":
                self._send_response(message, source, 400, now, out, reason=f"Bad Request ({type(exc).__name__})")
        return out

    def _on_request(self, req: Request, source: Peer, now: float, out: list[Action]) -> None:
        via = req.top_via
        key = _tx_key(req, via)
        if req.method == "ACK":
            self._on_ack(req, key, now, out)
            return
        existing = self._server_tx.get(key)
        if existing is not None:  # a retransmission: the last response again, nothing new
            data = existing.on_retransmission()
            if data is not None:
                out.append(Send(data, existing.peer))
            return
        to_tag = req.to_tag
        if to_tag is None:
            if not self._take_token(source.host, now):
                out.append(Count("refused", "rate_limited"))
                return
            if not self._source_allowed(source.host):
                out.append(Count("refused", "forbidden_source"))
                if req.method != "CANCEL":
                    self._send_response(req, source, 403, now, out)
                return
        method = req.method
        if method == "INVITE" and to_tag is None:
            self._on_invite(req, source, key, now, out)
        elif method == "CANCEL":
            self._on_cancel(req, source, now, out)
        elif method == "OPTIONS" and to_tag is None:
            self._send_response(req, source, 200, now, out, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
        elif method not in ("BYE", "INVITE", "INFO", "NOTIFY", "OPTIONS", "REFER"):
            self._send_response(req, source, 405, now, out, headers=[("Allow", ALLOW)])
        elif to_tag is None:
            self._send_response(req, source, 481, now, out)
        else:
            self._on_in_dialog(req, source, to_tag, now, out)

    def _on_invite(self, req: Request, source: Peer, key: tuple[str, ...], now: float, out: list[Action]) -> None:
        from_tag = req.from_tag or ""
        twin = self._early.get((req.call_id, from_tag))
        if twin is not None:
            # Same call arriving again on another branch (a forking proxy, a confused UAC).
            if twin.invite.cseq.number == req.cseq.number and twin.invite_tx.last_response is not None:
                out.append(Send(twin.invite_tx.last_response, twin.reply_to))
            else:
                self._send_response(req, source, 482, now, out)
            return
        reply_to = _reply_peer(req, source)
        tx = InviteServerTransaction(reply_to, now, t1=self.config.t1)
        self._server_tx[key] = tx
        self._respond_tx(tx, req, source, 100, now, out)

        auth = self.config.authenticator
        if auth is not None:
            result = auth.check("INVITE", req.headers.get("Authorization"), now)
            if result is not AuthResult.OK:
                if result is not AuthResult.MISSING:
                    out.append(Count("refused", f"auth_{result.value}"))
                challenges = [("WWW-Authenticate", c) for c in auth.challenges(now, stale=result is AuthResult.STALE)]
                self._respond_tx(tx, req, source, 401, now, out, to_tag=new_tag(), headers=challenges)
                return
        require = [r for value in req.headers.get_all("Require") for r in split_list(value)]
        if require:
            self._respond_tx(tx, req, source, 420, now, out, to_tag=new_tag(), headers=[("Unsupported", ", ".join(require))])
            return
        content_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/sdp" or not req.body:
            status = 488 if not req.body else 415  # no late offers: we answer, we do not offer
            extra = [("Accept", "application/sdp")] if status == 415 else []
            out.append(Count("refused", "no_offer" if not req.body else "content_type"))
            self._respond_tx(tx, req, source, status, now, out, to_tag=new_tag(), headers=extra)
            return
        try:
            negotiated = negotiate(parse_offer(req.body), self.config.codecs)
        except SdpError:
            out.append(Count("bad_input", "sdp"))
            negotiated = None
        if negotiated is None:
            out.append(Count("refused", "no_codec"))
            self._respond_tx(tx, req, source, 488, now, out, to_tag=new_tag())
            return

        call_id = "sip-" + secrets.token_hex(8)
        local_tag = new_tag()
        fallback = f"sip:{source.host}:{source.port}"
        dialog = Dialog.from_invite(req, local_tag, fallback)
        try:
            ruri = parse_uri(req.uri)
            request_user, local_host = ruri.user or "", ruri.host
        except ValueError:
            request_user, local_host = "", ""
        call = _Call(call_id, CallState.OFFERED, source, reply_to, req, tx, dialog, negotiated, local_host)
        self._calls[call_id] = call
        self._dialogs[dialog.key] = call
        self._early[(req.call_id, from_tag)] = call
        self._invite_calls[key] = call
        caller = parse_name_addr(req.headers.get("From") or "").uri
        out.append(IncomingCall(call_id, source, negotiated, local_host, request_user, caller))

    def _on_ack(self, req: Request, key: tuple[str, ...], now: float, out: list[Action]) -> None:
        tx = self._server_tx.get(key)
        if isinstance(tx, InviteServerTransaction) and tx.state in (TxState.COMPLETED, TxState.CONFIRMED):
            tx.on_ack(now)  # the ACK of a non-2xx final: absorbed by its transaction
            return
        to_tag = req.to_tag
        if to_tag is None:
            return
        call = self._dialogs.get((req.call_id, to_tag, req.from_tag or ""))
        if call is None:
            return  # stray ACK: nothing to answer (ACK has no response)
        if call.pending_2xx is not None:
            call.pending_2xx.on_2xx_ack(now)
            call.pending_2xx = None
        if call.bye_on_ack and call.state is CallState.ANSWERED:
            call.state = CallState.ENDING
            call.bye_branch = self._send_request(call, "BYE", now, out)
            return
        if call.state is CallState.ANSWERED:
            call.state = CallState.CONFIRMED
            out.append(CallConfirmed(call.id))

    def _on_cancel(self, req: Request, source: Peer, now: float, out: list[Action]) -> None:
        via = req.top_via
        invite_key = _tx_key(req, via, method="INVITE")
        cancel_key = _tx_key(req, via)
        invite_tx = self._server_tx.get(invite_key)
        if not isinstance(invite_tx, InviteServerTransaction):
            self._send_response(req, source, 481, now, out)
            return
        tx = NonInviteServerTransaction(_reply_peer(req, source), now, t1=self.config.t1)
        self._server_tx[cancel_key] = tx
        self._respond_tx(tx, req, source, 200, now, out)
        call = self._invite_calls.get(invite_key)
        if call is not None and invite_tx.state is TxState.PROCEEDING:
            self._respond_tx(invite_tx, call.invite, call.source, 487, now, out, to_tag=call.dialog.local_tag)
            self._end(call, EndReason.CANCELLED, out)

    def _on_in_dialog(self, req: Request, source: Peer, to_tag: str, now: float, out: list[Action]) -> None:
        call = self._dialogs.get((req.call_id, to_tag, req.from_tag or ""))
        if call is None or call.state is CallState.ENDED:
            if not self._take_token(source.host, now):  # guessed dialogs cost tokens like new requests
                out.append(Count("refused", "rate_limited"))
                return
            self._send_response(req, source, 481, now, out)
            return
        if not call.dialog.accepts_remote_cseq(req.cseq.number, req.method):
            self._send_response(req, source, 500, now, out, reason="Out of Order CSeq")
            return
        method = req.method
        key = _tx_key(req, req.top_via)
        if method == "INVITE":  # re-INVITE (session refresh, hold): our answer stands
            rtx = InviteServerTransaction(_reply_peer(req, source), now, t1=self.config.t1)
            self._server_tx[key] = rtx
            if call.state is not CallState.CONFIRMED or call.answer_body is None:
                self._respond_tx(rtx, req, source, 491, now, out)
                return
            self._respond_tx(rtx, req, source, 200, now, out, headers=self._contact_headers(call),
                             body=call.answer_body, content_type="application/sdp")
            call.pending_2xx = rtx
            return
        tx = NonInviteServerTransaction(_reply_peer(req, source), now, t1=self.config.t1)
        self._server_tx[key] = tx
        if method == "BYE":
            self._respond_tx(tx, req, source, 200, now, out)
            if call.state is CallState.OFFERED and call.invite_tx.state is TxState.PROCEEDING:
                self._respond_tx(call.invite_tx, call.invite, call.source, 487, now, out, to_tag=call.dialog.local_tag)
                self._end(call, EndReason.CANCELLED, out)
            else:
                self._end(call, EndReason.REMOTE_BYE, out)
        elif method == "INFO":
            self._respond_tx(tx, req, source, 200, now, out)
            content_type = (req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            out.append(InfoReceived(call.id, content_type, req.body))
        elif method == "NOTIFY":
            self._respond_tx(tx, req, source, 200, now, out)
            event = (req.headers.get("Event") or "").split(";")[0].strip().lower()
            if event == "refer" and call.refer_branch is not None:
                status = _sipfrag_status(req.body)
                state = (req.headers.get("Subscription-State") or "").split(";")[0].strip().lower()
                if status is not None:
                    final = status >= 200 or state == "terminated"
                    out.append(TransferUpdate(call.id, status, final))
                    if final:
                        call.refer_branch = None
        elif method == "OPTIONS":
            self._respond_tx(tx, req, source, 200, now, out, headers=[("Allow", ALLOW)])
        else:  # REFER from the caller: we never place calls for others
            self._respond_tx(tx, req, source, 403, now, out)

    def _on_response(self, resp: Response, now: float, out: list[Action]) -> None:
        try:
            branch = resp.top_via.branch or ""
            method = resp.cseq.method
        except (ValueError, IndexError):
            out.append(Count("bad_input", "semantic"))
            return
        client = self._client_tx.get((branch, method))
        if client is None:
            return  # a stray or late response (2xx retransmission to an old request, ...)
        if not client.tx.on_response(resp.status, now):
            return
        call = self._calls.get(client.call_id)
        if method == "BYE":
            if call is not None:
                self._end(call, EndReason.LOCAL_BYE, out)
        elif method == "REFER" and call is not None:
            final = resp.status >= 300
            out.append(TransferUpdate(call.id, resp.status, final))
            if final:
                call.refer_branch = None

    # -- commands -------------------------------------------------------------------------

    def ring(self, call_id: str, now: float) -> list[Action]:
        """180 Ringing (optional: some carriers start their post-dial timers on it)."""
        out: list[Action] = []
        call = self._calls.get(call_id)
        if call is not None and call.state is CallState.OFFERED and call.invite_tx.state is TxState.PROCEEDING:
            self._respond_tx(call.invite_tx, call.invite, call.source, 180, now, out, to_tag=call.dialog.local_tag,
                             headers=self._contact_headers(call))
        return out

    def answer(self, call_id: str, sdp: bytes, now: float) -> list[Action]:
        """200 OK with our SDP answer; retransmitted until the caller's ACK."""
        out: list[Action] = []
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.OFFERED or call.invite_tx.state is not TxState.PROCEEDING:
            return out
        call.answer_body = sdp
        self._respond_tx(call.invite_tx, call.invite, call.source, 200, now, out, to_tag=call.dialog.local_tag,
                         headers=self._contact_headers(call), body=sdp, content_type="application/sdp")
        call.pending_2xx = call.invite_tx
        call.state = CallState.ANSWERED
        return out

    def reject(self, call_id: str, status: int, now: float, *, headers: Sequence[tuple[str, str]] = ()) -> list[Action]:
        """A final non-2xx for a call not answered yet (503 busy/draining, 480, 488, ...)."""
        out: list[Action] = []
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.OFFERED or call.invite_tx.state is not TxState.PROCEEDING:
            return out
        self._respond_tx(call.invite_tx, call.invite, call.source, status, now, out, to_tag=call.dialog.local_tag,
                         headers=list(headers))
        self._end(call, EndReason.REJECTED, out)
        return out

    def bye(self, call_id: str, now: float) -> list[Action]:
        """End the call from our side: BYE (retransmitted until answered), or 480 if not answered.

        Answered but not yet acknowledged: the BYE waits for the ACK (RFC 3261 section 15: the
        callee must not send BYE before the ACK of its 2xx, or before that transaction times out,
        when it is sent anyway). A caller whose ACK crosses our BYE would otherwise get a BYE for
        a dialog it has not confirmed, and sipp, for one, fails the call."""
        out: list[Action] = []
        call = self._calls.get(call_id)
        if call is None or call.state in (CallState.ENDING, CallState.ENDED):
            return out
        if call.state is CallState.OFFERED:
            return self.reject(call_id, 480, now)
        if call.pending_2xx is not None:
            call.bye_on_ack = True
            return out
        call.state = CallState.ENDING
        call.bye_branch = self._send_request(call, "BYE", now, out)
        return out

    def refer(self, call_id: str, target: str, now: float) -> list[Action]:
        """REFER the caller to `target` (RFC 3515); progress arrives as `TransferUpdate`s."""
        out: list[Action] = []
        call = self._calls.get(call_id)
        if call is None or call.state is not CallState.CONFIRMED:
            out.append(TransferUpdate(call_id, 481, True))
            return out
        refer_to = target if target.startswith("<") else f"<{target}>"
        call.refer_branch = self._send_request(
            call, "REFER", now, out, headers=[("Refer-To", refer_to), ("Referred-By", f"<{call.dialog.local_party.uri}>")]
        )
        return out

    # -- timers ---------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        for key, tx in list(self._server_tx.items()):
            if tx.deadline is None or now < tx.deadline:
                if tx.terminated:
                    self._drop_server_tx(key)
                continue
            if isinstance(tx, InviteServerTransaction):
                data, unacked = tx.handle_timer(now)
                if data is not None:
                    out.append(Send(data, tx.peer))
                    out.append(Count("retransmission", "response"))
                if unacked:
                    self._on_ack_timeout(tx, now, out)
            else:
                tx.handle_timer(now)
            if tx.terminated:
                self._drop_server_tx(key)
        for ckey, client in list(self._client_tx.items()):
            data, timed_out = client.tx.handle_timer(now)
            if data is not None:
                out.append(Send(data, client.tx.peer))
                out.append(Count("retransmission", client.tx.method))
            if timed_out:
                out.append(Count("response_timeout", client.tx.method))
                call = self._calls.get(client.call_id)
                if call is not None and client.tx.method == "BYE":
                    self._end(call, EndReason.LOCAL_BYE, out)
                elif call is not None and client.tx.method == "REFER" and call.refer_branch is not None:
                    call.refer_branch = None
                    out.append(TransferUpdate(call.id, 408, True))
            if client.tx.terminated:
                del self._client_tx[ckey]
        if len(self._buckets) > MAX_RATE_SOURCES // 2:
            self._prune_buckets(now)
        return out

    def _on_ack_timeout(self, tx: InviteServerTransaction, now: float, out: list[Action]) -> None:
        call = next((c for c in self._calls.values() if c.pending_2xx is tx), None)
        if call is None:
            return
        call.pending_2xx = None
        out.append(Count("response_timeout", "ACK"))
        call.state = CallState.ENDING
        call.bye_branch = self._send_request(call, "BYE", now, out)
        self._end(call, EndReason.ACK_TIMEOUT, out)

    def _drop_server_tx(self, key: tuple[str, ...]) -> None:
        self._server_tx.pop(key, None)
        self._invite_calls.pop(key, None)

    # -- helpers --------------------------------------------------------------------------

    def _end(self, call: _Call, reason: EndReason, out: list[Action]) -> None:
        if call.state is CallState.ENDED:
            return
        call.state = CallState.ENDED
        self._calls.pop(call.id, None)
        self._dialogs.pop(call.dialog.key, None)
        self._early.pop((call.invite.call_id, call.invite.from_tag or ""), None)
        if call.refer_branch is not None:
            call.refer_branch = None
            out.append(TransferUpdate(call.id, 487, True))
        out.append(CallEnded(call.id, reason))

    def _local_host(self, call: _Call) -> str:
        return self.config.advertised_host or call.local_host or "127.0.0.1"

    def _contact(self, call: _Call) -> str:
        transport = call.source.transport
        host = self._local_host(call)
        host = f"[{host}]" if ":" in host else host
        port = self.config.ports.get(transport) or next(iter(self.config.ports.values()), 5060)
        suffix = ";transport=tcp" if transport == "tcp" else ""
        return f"<sip:{self.config.contact_user}@{host}:{port}{suffix}>"

    def _contact_headers(self, call: _Call) -> list[tuple[str, str]]:
        headers = [("Contact", self._contact(call)), ("Allow", ALLOW)]
        headers += [("Record-Route", rr) for rr in call.invite.headers.get_all("Record-Route")]
        return headers

    def _send_request(self, call: _Call, method: str, now: float, out: list[Action],
                      headers: list[tuple[str, str]] | None = None) -> str:
        transport = call.source.transport
        port = self.config.ports.get(transport) or next(iter(self.config.ports.values()), 5060)
        request, peer, branch = call.dialog.request(
            method, via_host=self._local_host(call), via_port=port, transport=transport,
            contact=self._contact(call), headers=headers,
        )
        fallback = None
        if peer.transport == call.source.transport and not call.dialog.route_set and peer.reliable:
            peer, fallback = call.source, peer  # TCP: the caller's connection, else a new one to its Contact
        request.headers.add("User-Agent", self.config.server)
        data = request.to_bytes()
        tx = NonInviteClientTransaction(peer, data, method, now, t1=self.config.t1)
        self._client_tx[(branch, method)] = _Client(tx, call.id)
        out.append(Send(data, peer, fallback))
        out.append(Count("request_sent", method))
        return branch

    def _respond_tx(self, tx: InviteServerTransaction | NonInviteServerTransaction, req: Request, source: Peer,
                    status: int, now: float, out: list[Action], *, to_tag: str | None = None,
                    headers: Sequence[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None) -> None:
        response = self._build_response(req, source, status, to_tag=to_tag, headers=headers, body=body,
                                        content_type=content_type)
        data = tx.respond(status, response.to_bytes(), now)
        out.append(Send(data, tx.peer))
        out.append(Count("response", str(status)))

    def _send_response(self, req: Request, source: Peer, status: int, now: float, out: list[Action], *,
                       headers: Sequence[tuple[str, str]] = (), reason: str | None = None) -> None:
        """A stateless answer (no transaction kept): refusals, 481s, OPTIONS."""
        to_tag = new_tag() if req.to_tag is None and status >= 200 else None
        response = self._build_response(req, source, status, to_tag=to_tag, headers=headers, reason=reason)
        out.append(Send(response.to_bytes(), _reply_peer(req, source)))
        out.append(Count("response", str(status)))

    def _build_response(self, req: Request, source: Peer, status: int, *, to_tag: str | None,
                        headers: Sequence[tuple[str, str]] = (), body: bytes = b"", content_type: str | None = None,
                        reason: str | None = None) -> Response:
        h = Headers()
        vias = req.headers.get_all("Via")
        top = parse_via(vias[0])
        params = dict(top.params)
        if "rport" in params:
            params["rport"] = str(source.port)
            params["received"] = source.host
        elif top.host != source.host:
            params["received"] = source.host
        h.add("Via", str(Via(top.transport, top.host, top.port, params)))
        for via in vias[1:]:
            h.add("Via", via)
        h.add("From", req.headers.get("From") or "")
        to = req.headers.get("To") or ""
        if to_tag is not None and status > 100 and req.to_tag is None:
            to = str(parse_name_addr(to).with_param("tag", to_tag))
        h.add("To", to)
        h.add("Call-ID", req.call_id)
        h.add("CSeq", req.headers.get("CSeq") or "")
        h.add("Server", self.config.server)
        for name, value in headers:
            h.add(name, value)
        if content_type:
            h.add("Content-Type", content_type)
        return Response(status, reason or REASONS.get(status, "Unknown"), h, body)

    def _source_allowed(self, host: str) -> bool:
        networks = self.config.allowed_sources
        if not networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in networks)

    def _take_token(self, host: str, now: float) -> bool:
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= MAX_RATE_SOURCES:
                self._prune_buckets(now)
                if len(self._buckets) >= MAX_RATE_SOURCES:
                    return False  # under a spoofed-source flood: refuse newcomers, keep known ones
            bucket = self._buckets[host] = TokenBucket(self.config.rate_per_s, self.config.rate_burst)
        return bucket.take(now)

    def _prune_buckets(self, now: float) -> None:
        for host in [h for h, b in self._buckets.items() if b.full_by(now)]:
            del self._buckets[host]


def _tx_key(req: Request, via: Via, *, method: str | None = None) -> tuple[str, ...]:
    """Server transaction key (RFC 3261 §17.2.3): branch + sent-by + method (ACK -> INVITE)."""
    m = method or ("INVITE" if req.method == "ACK" else req.method)
    branch = via.branch or ""
    sent_by = f"{via.host}:{via.port or 5060}"
    if branch.startswith("z9hG4bK"):
        return (branch, sent_by, m)
    # RFC 2543 peers: no unique branch; fall back on the dialog-identifying fields.
    return ("2543", req.call_id, req.from_tag or "", str(req.cseq.number), sent_by, m)


def _reply_peer(req: Request, source: Peer) -> Peer:
    """Where responses go (RFC 3261 §18.2.2, RFC 3581): TCP the connection; UDP the source IP,
    and the source port when the client asked with `rport`, else the Via's port."""
    if source.reliable:
        return source
    via = req.top_via
    if "rport" in via.params:
        return source
    return Peer(source.transport, source.host, via.port or 5060)


def _sipfrag_status(body: bytes) -> int | None:
    """`SIP/2.0 200 OK` (message/sipfrag in a REFER NOTIFY) -> 200."""
    line = body.split(b"\n", 1)[0].strip().decode("utf-8", errors="replace")
    parts = line.split(" ")
    if len(parts) >= 2 and parts[0] == "SIP/2.0" and parts[1].isdigit() and len(parts[1]) == 3:
        return int(parts[1])
    return None
