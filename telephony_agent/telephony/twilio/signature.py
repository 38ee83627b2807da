"""Twilio request signatures (`X-Twilio-Signature`) and our per-call stream tokens.

Pure functions: no clock reads (callers pass `now`), no I/O. The webhook algorithm follows
twilio-python's `RequestValidator` (docs/protocols.md, "Request signatures"), including its port quirk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, Union
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = [
    "SIGNATURE_HEADER",
    "compute_signature",
    "validate_request",
    "validate_body",
    "validate_websocket",
    "make_stream_token",
    "check_stream_token",
    "url_variants",
]

SIGNATURE_HEADER = "X-Twilio-Signature"

# A form can hold one value or several per name (dict, list-valued dict, or a multidict
# such as aiohttp's `MultiDictProxy` with `getall`).
Params = Union[Mapping[str, Any], None]


def _values(params: Any, name: str) -> list[str]:
    getall = getattr(params, "getall", None)
    if getall is not None:
        vals = getall(name)
    else:
        getlist = getattr(params, "getlist", None)
        vals = getlist(name) if getlist is not None else params[name]
    if isinstance(vals, (str, bytes)):
        vals = [vals]
    elif not isinstance(vals, Iterable):
        vals = [vals]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in vals]


def _signing_string(url: str, params: Params) -> str:
    parts = [url]
    if params:
        for name in sorted(set(params.keys())):
            for value in sorted(set(_values(params, name))):
                parts.append(name)
                parts.append(value)
    return "".join(parts)


def compute_signature(url: str, params: Params, auth_token: str) -> str:
    """Base64 HMAC-SHA1 over the URL followed by sorted unique name+value pairs."""
    mac = hmac.new(auth_token.encode("utf-8"), _signing_string(url, params).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def url_variants(url: str) -> list[str]:
    """The URL without and with its default port: Twilio's backend adds ports inconsistently.

    Mirrors twilio-python: `:443` for https, `:80` for every other scheme (even wss).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = parts.netloc[: len(parts.netloc) - len(host)]
    if port is not None:
        bare_host = host[: host.rfind(":")]
        without = urlunsplit(parts._replace(netloc=userinfo + bare_host))
        return [without, url]
    default = 443 if parts.scheme == "https" else 80
    with_port = urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))
    return [url, with_port]


def _eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def validate_request(url: str, params: Params, signature: str | None, auth_token: str) -> bool:
    """True if `signature` matches the URL (with or without default port) and form params."""
    if not signature or not auth_token:
        return False
    ok = False
    for candidate in url_variants(url):
        # No short-circuit: both comparisons run, as in the SDK.
        ok |= _eq(compute_signature(candidate, params, auth_token), signature)
    return ok


def validate_body(url: str, body: bytes, signature: str | None, auth_token: str) -> bool:
    """JSON-body variant: `bodySHA256` in the query must hash the raw body, and the URL must be signed."""
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError:
        return False
    claimed = query.get("bodySHA256")
    if not claimed:
        return False
    body_ok = _eq(hashlib.sha256(body).hexdigest(), claimed[0].lower())
    sig_ok = validate_request(url, None, signature, auth_token)
    return body_ok and sig_ok


def validate_websocket(public_base_url: str, path: str, signature: str | None, auth_token: str) -> bool:
    """Check the WebSocket upgrade's signature over `wss://host/path` or, defensively, `https://host/path`.

    `public_base_url` is the configured https base (AGENT_PUBLIC_URL); Twilio dialled the wss
    form of it from our TwiML. Params are empty: the upgrade is a GET with no body.
    """
    if not signature:
        return False
    try:
        base = urlsplit(public_base_url)
    except ValueError:
        return False
    if not base.netloc:
        return False
    prefix = base.path.rstrip("/")
    full_path = prefix + "/" + path.lstrip("/")
    ok = False
    for scheme in ("wss", "https"):
        candidate = urlunsplit((scheme, base.netloc, full_path, "", ""))
        ok |= validate_request(candidate, None, signature, auth_token)
    return ok


# --- per-call stream token -------------------------------------------------------------------

def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_mac(call_sid: str, expiry: int, secret: bytes) -> bytes:
    return hmac.new(secret, f"{call_sid}\n{expiry}".encode("utf-8"), hashlib.sha256).digest()


def make_stream_token(call_sid: str, secret: bytes, now: float, ttl: int) -> str:
    """A token binding a stream to the call whose webhook we answered, valid for `ttl` seconds.

    Format: `<expiry unix seconds>.<base64url HMAC-SHA256(call_sid, expiry)>`. It travels as a
    `<Parameter>` so the WebSocket handler can tie the stream to a signed webhook.
    """
    expiry = int(now) + int(ttl)
    return f"{expiry}.{_b64u(_token_mac(call_sid, expiry, secret))}"


def check_stream_token(token: Any, call_sid: Any, secret: bytes, now: float) -> bool:
    """True if `token` was made for `call_sid` with `secret` and has not expired. Never raises."""
    try:
        if not isinstance(token, str) or not isinstance(call_sid, str) or len(token) > 200:
            return False
        expiry_text, sep, mac_text = token.partition(".")
        if not sep or not expiry_text.isdigit() or not expiry_text.isascii() or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        given = _unb64u(mac_text)
        good = hmac.compare_digest(given, _token_mac(call_sid, expiry, secret))
        return good and now < expiry
    except (ValueError, binascii.Error, TypeError, UnicodeError):
        return False
