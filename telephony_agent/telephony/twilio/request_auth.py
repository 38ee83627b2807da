"""Authenticating what arrives at the Twilio routes: the voice webhook's body and the media upgrade.

The thin aiohttp side of `signature.py` and `stream_auth.py`. The webhook's signature header is
checked for presence before the body is read, and the body is read with a size and time bound
and parsed here (form-encoded, strict UTF-8), so a malformed or unsigned body gets 400/403,
never a 500 and a traceback. The media upgrade is authorised before the 101 when its URL is a
per-call one; the bare path leaves authorisation to the `start` frame.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict

from telephony_agent.telephony.twilio.signature import (
    SIGNATURE_HEADER,
    validate_request,
    validate_websocket,
)
from telephony_agent.telephony.twilio.stream_auth import (
    StreamAuthority,
    StreamRefusal,
    parse_per_call_path,
)

__all__ = ["MAX_FORM_FIELDS", "UpgradeGrant", "WebhookRejected", "authorize_upgrade", "read_signed_form"]

MAX_FORM_FIELDS = 200
_FORM_TYPE = "application/x-www-form-urlencoded"


class WebhookRejected(Exception):
    """The webhook request is refused; `status` and `text` are the response, `kind` the metric."""

    def __init__(self, status: int, text: str, kind: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.kind = kind

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.text)


async def read_signed_form(
    request: web.Request,
    url: str,
    auth_token: str | None,
    *,
    validate: bool,
    max_bytes: int,
    timeout: float,
) -> MultiDict[str]:
    """The webhook's form fields, once the body has been read within bounds and its signature checked.

    `url` is the public URL Twilio signed. Raises `WebhookRejected` (400/403/408/413/415).
    """
    signature = request.headers.get(SIGNATURE_HEADER)
    if validate and (not auth_token or not signature):
        raise WebhookRejected(403, "invalid signature", "unsigned")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise WebhookRejected(413, "body too large", "oversized")
    mime = request.content_type
    if request.body_exists and mime != _FORM_TYPE:
        raise WebhookRejected(415, f"expected {_FORM_TYPE}", "bad_content_type")
    try:
        async with asyncio.timeout(timeout):
            body = b""
            while request.body_exists and len(body) <= max_bytes:
                chunk = await request.content.read(max_bytes + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise WebhookRejected(408, "body not received in time", "slow_body") from None
    except (ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
        raise WebhookRejected(400, f"body unreadable: {type(exc).__name__}", "bad_body") from None
    except Exception as exc:  # noqa: BLE001 - aiohttp's payload errors (aborted, bad chunking)
        raise WebhookRejected(400, f"body unreadable: {type(exc).__name__}", "bad_body") from None
    if len(body) > max_bytes:
        raise WebhookRejected(413, "body too large", "oversized")
    try:
        text = body.decode("utf-8", "strict")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "body is not a UTF-8 form", "bad_body") from None
    form: MultiDict[str] = MultiDict(pairs)
    if validate and not validate_request(url, form, signature, auth_token or ""):
        raise WebhookRejected(403, "invalid signature", "bad_signature")
    return form


@dataclass(frozen=True)
class UpgradeGrant:
    """What the upgrade established: the call it is bound to (per-call URL), or None (bare path)."""

    call_sid: str | None


def authorize_upgrade(
    request: web.Request,
    authority: StreamAuthority,
    public_base: str,
    auth_token: str | None,
    now: float,
    *,
    validate: bool,
) -> UpgradeGrant | StreamRefusal:
    """Decide a media upgrade before the 101.

    Per-call URL (`.../<call sid>/<token>`): the token must be valid for that call, unexpired and
    unused (it is spent here), and an `X-Twilio-Signature`, when present, must sign this URL.
    Bare path: a present signature must verify; the `start` frame brings the credential.
    With validation off (local development) tokens are still spent on per-call URLs.
    """
    call_segment = request.match_info.get("call")
    token_segment = request.match_info.get("token")
    signature = request.headers.get(SIGNATURE_HEADER)
    if validate and not auth_token:
        return StreamRefusal.NO_AUTH_TOKEN
    if validate and signature is not None and not validate_websocket(
        public_base, request.rel_url.raw_path, signature, auth_token or ""
    ):
        return StreamRefusal.BAD_SIGNATURE
    if call_segment is None or token_segment is None:
        return UpgradeGrant(None)
    parsed = parse_per_call_path(call_segment, token_segment)
    if parsed is None:
        return StreamRefusal.INVALID_TOKEN
    call_sid, token = parsed
    refusal = authority.redeem(token, call_sid, now)
    return refusal if refusal is not None else UpgradeGrant(call_sid)
