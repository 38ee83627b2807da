"""SIP messages (RFC 3261 §7, §20, §25): parse and build, sans-I/O.

`parse_message` turns one datagram (or one message cut from a TCP stream by `StreamFramer`)
into a `Request` or `Response`; anything it cannot accept raises `SipParseError` with a
closed `BadInputKind` for the metrics, never another exception. Header names are stored in
their canonical long form (compact forms such as `v`, `f`, `i` are expanded on input), folded
lines are unfolded, and comma-joined values of list headers (Via, Route, Record-Route, ...)
are split with quotes and angle brackets respected. Messages over `MAX_MESSAGE_SIZE` are
refused before any parsing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASONS",
    "BadInputKind",
    "CSeq",
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "Via",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_params",
    "parse_uri",
    "parse_via",
    "split_list",
]

MAX_MESSAGE_SIZE = 64 * 1024
"""Largest SIP message accepted (bytes), headers and body together."""

MAX_HEADERS = 200
SIP_VERSION = "SIP/2.0"

COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "x": "Session-Expires",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Allow",
        "Supported",
        "Require",
        "Unsupported",
        "User-Agent",
        "Server",
        "Event",
        "Subscription-State",
        "Refer-To",
        "Referred-By",
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Retry-After",
        "Accept",
        "Subject",
        "Content-Encoding",
        "Allow-Events",
        "Session-Expires",
        "Reason",
    )
}
_CANONICAL["call-id"] = "Call-ID"
_CANONICAL["cseq"] = "CSeq"
_CANONICAL["www-authenticate"] = "WWW-Authenticate"

LIST_HEADERS = frozenset({"Via", "Route", "Record-Route"})
"""Headers whose comma-joined values are kept as separate entries, because each entry matters on
its own (responses, routing). Contact, Allow, Require, ... stay as written; `split_list` them."""

REASONS = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    420: "Bad Extension",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    603: "Decline",
}

_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_STATUS_LINE = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)$")


class BadInputKind(str, enum.Enum):
    """Why a message was refused; a closed set for metrics labels."""

    OVERSIZED = "oversized"
    EMPTY = "empty"
    START_LINE = "start_line"
    HEADER = "header"
    MISSING_HEADER = "missing_header"
    CSEQ = "cseq"
    VIA = "via"
    CONTENT_LENGTH = "content_length"
    TRUNCATED = "truncated"


class SipParseError(ValueError):
    """The peer sent something that is not an acceptable SIP message (their fault, not ours)."""

    def __init__(self, kind: BadInputKind, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


def canonical_name(name: str) -> str:
    low = name.strip().lower()
    if len(low) == 1 and low in COMPACT:
        return COMPACT[low]
    return _CANONICAL.get(low) or "-".join(part.capitalize() for part in low.split("-"))


class Headers:
    """Ordered multi-valued headers with canonical names; list headers are split per entry."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        for name, value in items or ():
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        name = canonical_name(name)
        if name in LIST_HEADERS:
            self._items.extend((name, part) for part in split_list(value))
        else:
            self._items.append((name, value.strip()))

    def get(self, name: str, default: str | None = None) -> str | None:
        name = canonical_name(name)
        for key, value in self._items:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = canonical_name(name)
        return [value for key, value in self._items if key == name]

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._items = [(k, v) for k, v in self._items if k != name]

    def set(self, name: str, value: str) -> None:
        """Replace every value of `name` with one, keeping the first one's position."""
        name = canonical_name(name)
        out: list[tuple[str, str]] = []
        placed = False
        for key, old in self._items:
            if key == name:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((key, old))
        if not placed:
            out.append((name, value))
        self._items = out

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def copy(self) -> Headers:
        clone = Headers()
        clone._items = list(self._items)
        return clone


class _Accessors:
    """The mandatory headers every request and response has (parse_message checked them)."""

    __slots__ = ()
    headers: Headers

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def top_via(self) -> Via:
        return parse_via(self.headers.get_all("Via")[0])

    @property
    def from_tag(self) -> str | None:
        return parse_name_addr(self.headers.get("From") or "").params.get("tag")

    @property
    def to_tag(self) -> str | None:
        return parse_name_addr(self.headers.get("To") or "").params.get("tag")


@dataclass(slots=True)
class Request(_Accessors):
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return _serialise(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)


@dataclass(slots=True)
class Response(_Accessors):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def to_bytes(self) -> bytes:
        return _serialise(f"{SIP_VERSION} {self.status} {self.reason}", self.headers, self.body)


Message = Request | Response


def _serialise(start: str, headers: Headers, body: bytes) -> bytes:
    lines = [start]
    for name, value in headers.items():
        if name != "Content-Length":
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


# -- parsing ------------------------------------------------------------------------------


def parse_message(data: bytes, *, stream: bool = False) -> Message:
    """One SIP message from `data`. `stream=True` (TCP): Content-Length is authoritative.

    UDP: leading CRLF keep-alives are skipped; a Content-Length shorter than the body trims it,
    a longer one means the datagram was cut (RFC 3261 §18.3: discard).
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(BadInputKind.OVERSIZED, f"{len(data)} bytes")
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError(BadInputKind.EMPTY, "no message")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")  # bare-LF peers exist; accept them
        if not sep:
            raise SipParseError(BadInputKind.TRUNCATED, "no blank line after the headers")
    text = head.decode("utf-8", errors="replace")
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].strip()
    headers = Headers()
    current: list[str] | None = None
    raw: list[list[str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":  # folded continuation (RFC 3261 §7.3.1)
            if current is None:
                raise SipParseError(BadInputKind.HEADER, "continuation before any header")
            current[1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name.strip()):
            raise SipParseError(BadInputKind.HEADER, f"bad header line {line[:40]!r}")
        current = [name.strip(), value.strip()]
        raw.append(current)
        if len(raw) > MAX_HEADERS:
            raise SipParseError(BadInputKind.HEADER, "too many headers")
    for name, value in raw:
        headers.add(name, value)

    length_text = headers.get("Content-Length")
    if length_text is not None:
        if not length_text.isdigit():
            raise SipParseError(BadInputKind.CONTENT_LENGTH, f"{length_text[:20]!r}")
        length = int(length_text)
        if length > len(body):
            raise SipParseError(BadInputKind.TRUNCATED, f"Content-Length {length} > body {len(body)}")
        body = body[:length]
    elif stream:
        body = b""

    message: Message
    if start.startswith("SIP/"):
        match = _STATUS_LINE.match(start)
        if match is None:
            raise SipParseError(BadInputKind.START_LINE, f"bad status line {start[:40]!r}")
        message = Response(int(match.group(1)), match.group(2), headers, body)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != SIP_VERSION or not _TOKEN.match(parts[0]) or not parts[1]:
            raise SipParseError(BadInputKind.START_LINE, f"bad request line {start[:40]!r}")
        message = Request(parts[0].upper(), parts[1], headers, body)
        if ":" not in parts[1]:
            raise SipParseError(BadInputKind.START_LINE, "Request-URI has no scheme")
    _check_mandatory(message)
    return message


def _check_mandatory(message: Message) -> None:
    h = message.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not h.get(name):
            raise SipParseError(BadInputKind.MISSING_HEADER, name)
    try:
        cseq = parse_cseq(h.get("CSeq") or "")
    except ValueError as exc:
        raise SipParseError(BadInputKind.CSEQ, str(exc)) from None
    if isinstance(message, Request) and message.method != cseq.method:
        raise SipParseError(BadInputKind.CSEQ, "CSeq method differs from the request's")
    try:
        parse_via(h.get_all("Via")[0])
        parse_name_addr(h.get("From") or "")
        parse_name_addr(h.get("To") or "")
    except ValueError as exc:
        raise SipParseError(BadInputKind.HEADER, str(exc)) from None
    if isinstance(message, Request):
        try:
            parse_uri(message.uri) if message.uri.lower().startswith(("sip:", "sips:")) else None
        except ValueError as exc:
            raise SipParseError(BadInputKind.START_LINE, str(exc)) from None


class StreamFramer:
    """Cuts SIP messages out of a TCP byte stream by Content-Length (RFC 3261 §18.3).

    `feed` returns whole messages (bytes) in order; a message that would exceed
    `MAX_MESSAGE_SIZE` or has no usable Content-Length raises `SipParseError`, after which the
    connection should be closed (the stream cannot be resynchronised).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        while True:
            # Keep-alive CRLFs (RFC 5626 "double CRLF ping") between messages.
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_MESSAGE_SIZE:
                    raise SipParseError(BadInputKind.OVERSIZED, "headers over the limit")
                return out
            head = bytes(self._buffer[:end])
            length = _stream_content_length(head)
            total = end + 4 + length
            if total > MAX_MESSAGE_SIZE:
                raise SipParseError(BadInputKind.OVERSIZED, f"{total} bytes")
            if len(self._buffer) < total:
                return out
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]

    @property
    def buffered(self) -> int:
        return len(self._buffer)


_CL_LINE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\S*)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def _stream_content_length(head: bytes) -> int:
    match = _CL_LINE.search(head.replace(b"\r\n", b"\n"))
    if match is None:
        return 0  # RFC 3261 §18.3 requires it on streams; absent means no body
    value = match.group(1)
    if not value.isdigit() or len(value) > 6:
        raise SipParseError(BadInputKind.CONTENT_LENGTH, repr(value[:20]))
    return int(value)


# -- header values --------------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """Split a comma-joined header value, respecting "quoted strings" and <URIs>."""
    out: list[str] = []
    depth_angle = False
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth_angle = True
        elif ch == ">":
            depth_angle = False
        elif ch == "," and not depth_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def parse_params(text: str) -> dict[str, str]:
    """`;a=1;lr;b="x"` -> {"a": "1", "lr": "", "b": "x"} (names lower-cased)."""
    params: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        params[name.strip().lower()] = value
    return params


def _format_params(params: dict[str, str]) -> str:
    return "".join(f";{k}={v}" if v != "" else f";{k}" for k, v in params.items())


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str
    user: str | None
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}:{user}{host}{port}{_format_params(self.params)}"


def parse_uri(text: str) -> SipUri:
    """A `sip:`/`sips:` URI; raises ValueError when it is not one."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("sip", "sips"):
        raise ValueError(f"not a SIP URI: {text[:60]!r}")
    rest = rest.split("?", 1)[0]
    hostport, _, param_text = rest.partition(";")
    user: str | None = None
    if "@" in hostport:
        user, hostport = hostport.rsplit("@", 1)
    port: int | None = None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError("unclosed IPv6 reference")
        host = hostport[1:end]
        tail = hostport[end + 1 :]
        if tail.startswith(":"):
            port = _port(tail[1:])
    else:
        host, sep, port_text = hostport.partition(":")
        if sep:
            port = _port(port_text)
    if not host:
        raise ValueError(f"SIP URI without a host: {text[:60]!r}")
    return SipUri(scheme, user, host, port, parse_params(param_text))


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port {text[:10]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """`"Display" <uri>;params` (From, To, Contact, Route, Record-Route, Refer-To)."""

    display: str
    uri: str
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        display = f"{self.display} " if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"

    def with_param(self, name: str, value: str) -> NameAddr:
        return NameAddr(self.display, self.uri, {**self.params, name: value})


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    lt = _find_unquoted(text, "<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise ValueError("unclosed <")
        return NameAddr(text[:lt].strip(), text[lt + 1 : gt].strip(), parse_params(text[gt + 1 :]))
    # addr-spec form: the URI ends at the first ';' (what follows are header parameters).
    uri, _, params = text.partition(";")
    if ":" not in uri:
        raise ValueError(f"no URI in {text[:60]!r}")
    return NameAddr("", uri.strip(), parse_params(params))


def _find_unquoted(text: str, ch: str) -> int:
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == ch and not quoted:
            return i
    return -1


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"SIP/2.0/{self.transport} {host}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    protocol, _, rest = text.strip().partition(" ")
    parts = protocol.split("/")
    if len(parts) != 3 or parts[0].upper() != "SIP":
        raise ValueError(f"bad Via {text[:60]!r}")
    rest = rest.strip()
    sent_by, _, param_text = rest.partition(";")
    sent_by = sent_by.strip()
    port: int | None = None
    if sent_by.startswith("["):
        end = sent_by.find("]")
        if end < 0:
            raise ValueError("bad Via host")
        host = sent_by[1:end]
        if sent_by[end + 1 :].startswith(":"):
            port = _port(sent_by[end + 2 :].strip())
    else:
        host, sep, port_text = sent_by.partition(":")
        if sep:
            port = _port(port_text.strip())
    if not host:
        raise ValueError("Via without a host")
    return Via(parts[2].strip().upper(), host.strip(), port, parse_params(param_text))


@dataclass(frozen=True, slots=True)
class CSeq:
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    number, _, method = text.strip().partition(" ")
    method = method.strip()
    if not number.isdigit() or len(number) > 10 or int(number) >= 2**31 or not method:
        raise ValueError(f"bad CSeq {text[:40]!r}")
    return CSeq(int(number), method.upper())
