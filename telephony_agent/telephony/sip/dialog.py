"""A SIP dialog as the UAS (RFC 3261 §12): tags, CSeq, route set, in-dialog requests.

Built from the INVITE we answer: the remote target is the caller's Contact, the route set is the
INVITE's Record-Route entries in order (a UAS keeps them as received), our From is the INVITE's
To with our tag. `request()` builds BYE/REFER with the right Request-URI, Route headers and
CSeq, and says where to send it: the first loose route if there is one, else the remote target.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from telephony_agent.telephony.sip.message import (
    Headers,
    NameAddr,
    Request,
    parse_name_addr,
    parse_uri,
    split_list,
)
from telephony_agent.telephony.sip.transaction import Peer

__all__ = ["Dialog", "new_branch", "new_tag", "uri_peer"]

MAGIC = "z9hG4bK"


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return MAGIC + secrets.token_hex(8)


def uri_peer(uri: str, default_transport: str) -> Peer:
    """Where a SIP URI points: its host, port (5060 by default) and transport parameter."""
    parsed = parse_uri(uri)
    transport = parsed.transport or default_transport
    return Peer(transport if transport in ("udp", "tcp") else default_transport, parsed.host, parsed.port or 5060)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_party: NameAddr  # the INVITE's To (without tag)
    remote_party: NameAddr  # the INVITE's From (without tag)
    remote_target: str  # the caller's Contact URI
    route_set: list[str] = field(default_factory=list)  # Record-Route values, in order
    remote_cseq: int = 0
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(10_000) + 1)

    @classmethod
    def from_invite(cls, invite: Request, local_tag: str, fallback_target: str) -> Dialog:
        """The UAS side of the dialog an INVITE creates (§12.1.1)."""
        h = invite.headers
        remote = parse_name_addr(h.get("From") or "")
        local = parse_name_addr(h.get("To") or "")
        contacts = split_list(h.get("Contact") or "")
        target = fallback_target
        if contacts:
            try:
                target = parse_name_addr(contacts[0]).uri
                parse_uri(target)
            except ValueError:
                target = fallback_target
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote.params.get("tag", ""),
            local_party=NameAddr(local.display, local.uri, {k: v for k, v in local.params.items() if k != "tag"}),
            remote_party=NameAddr(remote.display, remote.uri, {k: v for k, v in remote.params.items() if k != "tag"}),
            remote_target=target,
            route_set=list(h.get_all("Record-Route")),
            remote_cseq=invite.cseq.number,
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def accepts_remote_cseq(self, number: int, method: str) -> bool:
        """In-order check for the caller's in-dialog requests (§12.2.2); ACK/CANCEL reuse theirs."""
        if method in ("ACK", "CANCEL"):
            return True
        if number < self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def request(
        self,
        method: str,
        *,
        via_host: str,
        via_port: int,
        transport: str,
        contact: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> tuple[Request, Peer, str]:
        """A new in-dialog request: (request, where to send it, its Via branch)."""
        self.local_cseq += 1
        routes = list(self.route_set)
        uri = self.remote_target
        destination_uri = uri
        if routes:
            first = parse_name_addr(routes[0])
            if "lr" in parse_uri(first.uri).params:
                destination_uri = first.uri  # loose routing: R-URI stays the remote target
            else:  # strict routing (RFC 2543 proxies): the first route becomes the R-URI
                uri = first.uri
                routes = routes[1:] + [f"<{self.remote_target}>"]
                destination_uri = uri
        branch = new_branch()
        via_hostport = f"[{via_host}]" if ":" in via_host else via_host
        h = Headers()
        h.add("Via", f"SIP/2.0/{transport.upper()} {via_hostport}:{via_port};branch={branch};rport")
        h.add("Max-Forwards", "70")
        for route in routes:
            h.add("Route", route)
        h.add("From", str(self.local_party.with_param("tag", self.local_tag)))
        h.add("To", str(self.remote_party.with_param("tag", self.remote_tag)))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{self.local_cseq} {method}")
        h.add("Contact", contact)
        for name, value in headers or ():
            h.add(name, value)
        if content_type:
            h.add("Content-Type", content_type)
        return Request(method, uri, h, body), uri_peer(destination_uri, transport), branch
