"""Twilio's way in: the voice webhook and the Media Stream socket, as a thin adapter over `CallManager`.

Twilio-specific here: signature checks, stream tokens, TwiML, the REST client for hang-up and
transfer. Everything else a call needs (admission, registry, recording, metrics, drain) is the
`CallManager`'s, shared with every other transport.

Authorisation (docs/security.md): the signed webhook reserves the call and answers with a
per-call stream URL, `/twilio/media/<call sid>/<token>`, whose token is bound to the call sid,
expires in `AGENT_STREAM_TOKEN_TTL_SECONDS` and is spent on first use (`stream_auth.py`). The
bare `/twilio/media` still takes a token as the `token` custom parameter, never a signature alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from telephony_agent.connections import trust_connection
from telephony_agent.logs import LogBudget
from telephony_agent.settings import Settings
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.calls import CallManager, CallRefused
from telephony_agent.telephony.twilio.media_socket import (
    WS_MAX_MSG_SIZE,
    WS_MAX_MSG_SIZE_UNAUTHENTICATED,
    MediaSocketHooks,
    TwilioMediaSocket,
)
from telephony_agent.telephony.twilio.request_auth import (
    WebhookRejected,
    authorize_upgrade,
    read_signed_form,
)
from telephony_agent.telephony.twilio.rest import TwilioRest
from telephony_agent.telephony.twilio.stream import Start
from telephony_agent.telephony.twilio.stream_auth import (
    NONCE_BYTES,
    SHARED_LEDGER_ENV,
    TOKEN_PARAM,
    StreamAuthority,
    StreamRefusal,
    per_call_path,
)
from telephony_agent.telephony.twilio.twiml import busy_twiml, connect_stream_twiml

__all__ = ["MEDIA_PATH", "TOKEN_PARAM", "TWILIO", "VOICE_PATH", "TwilioRoutes", "install"]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
TRANSPORT = "twilio"
REFUSAL_LOG_INTERVAL_S = 60.0


@dataclass
class TwilioRoutes:
    """The Twilio adapter's own state: settings it reads, its REST client and token key."""

    settings: Settings
    manager: CallManager
    count_refused: Callable[[str], None]  # a refused webhook or socket, by endpoint
    count_bad_input: Callable[[str], None]  # a bad Media Stream frame, by kind
    rest: TwilioRest | None = None
    token_secret: bytes = b""
    authority: StreamAuthority | None = None
    _refusals: LogBudget = field(default_factory=lambda: LogBudget(REFUSAL_LOG_INTERVAL_S))

    def __post_init__(self) -> None:
        token = self.auth_token
        # Tokens must verify on any worker or pod, so derive the key from the shared auth token.
        self.token_secret = (
            hmac.new(token.encode(), b"telephony-agent stream token", hashlib.sha256).digest()
            if token
            else secrets.token_bytes(32)
        )
        self.authority = StreamAuthority(self.token_secret, self.settings.stream_token_ttl_seconds)
        ledger_dir = os.environ.get(SHARED_LEDGER_ENV)
        if ledger_dir:  # several workers: a token spent on one is spent on all
            self.authority.shared_claim = SharedTokenClaims(Path(ledger_dir)).claim

    @property
    def auth_token(self) -> str | None:
        token = self.settings.twilio_auth_token
        return token.get_secret_value() if token is not None else None

    def connect_rest(self, http: aiohttp.ClientSession) -> None:
        """Hang-up and transfer through Twilio's REST API, when the account is configured."""
        settings = self.settings
        if settings.twilio_account_sid and self.auth_token:
            self.rest = TwilioRest(settings.twilio_account_sid, self.auth_token, settings.twilio_api_url, http)

    def public_base(self, request: web.Request) -> str:
        """The https base URL Twilio used; configured, or (development) rebuilt from the request."""
        if self.settings.public_url:
            return self.settings.public_url
        return f"https://{request.host}"

    # -- POST /twilio/voice -----------------------------------------------------------------------

    async def voice_webhook(self, request: web.Request) -> web.Response:
        settings = self.settings
        base = self.public_base(request)
        try:
            form = await read_signed_form(
                request, base + request.path_qs, self.auth_token, validate=settings.twilio_validate,
                max_bytes=settings.webhook_max_bytes, timeout=settings.http_body_timeout_seconds,
            )
        except WebhookRejected as exc:
            self.count_refused("voice")
            self._log_refusal("webhook", exc.kind, exc.text)  # anyone can send these: rate-limited
            return exc.response()
        params = {k: str(v) for k, v in form.items()}
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="missing CallSid")
        reason = self.manager.reserve(call_sid, TRANSPORT)
        if reason is not None:
            log.warning("refusing call %s: %s", call_sid, reason, extra={"call_id": call_sid})
            return web.Response(text=busy_twiml(), content_type="text/xml")
        assert self.authority is not None
        token = self.authority.issue(call_sid, time.time(), secrets.token_bytes(NONCE_BYTES))
        host = urlsplit(base).netloc
        ws_url = f"wss://{host}{urlsplit(base).path.rstrip('/')}{per_call_path(MEDIA_PATH, call_sid, token)}"
        stream_params = {"callSid": call_sid, "from": params.get("From", ""), "to": params.get("To", "")}
        return web.Response(text=connect_stream_twiml(ws_url, stream_params), content_type="text/xml")

    # -- GET /twilio/media[/<call sid>/<token>] -------------------------------------------------------

    async def media_socket(self, request: web.Request) -> web.StreamResponse:
        settings = self.settings
        manager = self.manager
        authority = self.authority
        assert authority is not None
        grant = authorize_upgrade(
            request, authority, self.public_base(request), self.auth_token, time.time(),
            validate=settings.twilio_validate,
        )
        if isinstance(grant, StreamRefusal):
            self.count_refused("media")
            self._log_refusal("media stream", grant.name.lower(), grant.value)
            return web.Response(status=403, text=grant.value)
        bound_call = grant.call_sid
        if bound_call is not None:
            trust_connection(request)  # its per-call token was just spent: no longer a stranger
        ws = web.WebSocketResponse(
            max_msg_size=WS_MAX_MSG_SIZE if bound_call else WS_MAX_MSG_SIZE_UNAUTHENTICATED,
            heartbeat=None,
            autoping=True,
        )
        await ws.prepare(request)

        def authorize(start: Start) -> str | None:
            refusal = self._authorize_start(bound_call, start)
            if refusal is not None:
                self.count_refused("media")
            return refusal

        async def make_bridge(start: Start, socket: TwilioMediaSocket) -> CallBridge:
            try:
                reserved_by = manager.reserved_by(start.call_sid)
                if reserved_by is not None and reserved_by != TRANSPORT:
                    # Placed by another way in (the browser softphone) and streamed like Twilio:
                    # there is no call at Twilio to hang up or transfer through its REST API.
                    socket.rest = None
                bridge = await manager.start_call(
                    start.call_sid,
                    socket,
                    transport=reserved_by or TRANSPORT,
                    log=socket.log,
                    on_admitted=socket.on_admitted,
                )
            except CallRefused:
                self.count_refused("media")
                raise
            trust_connection(request)
            return bridge

        hooks = MediaSocketHooks(
            authorize=authorize,
            make_bridge=make_bridge,
            on_bad_input=self.count_bad_input,
            on_call_end=manager.call_ended,
            start_timeout=settings.ws_handshake_timeout_seconds,
        )
        socket = TwilioMediaSocket(ws, hooks, self.rest, request)
        try:
            await socket.run()
        finally:
            if socket.bridge is None and bound_call is not None:
                manager.release(bound_call)  # its token is spent: this call cannot stream now
        return ws

    def _log_refusal(self, what: str, kind: str, text: str) -> None:
        """One line per kind a minute: a wrong AGENT_PUBLIC_URL or token shows up in the log, a flood does not."""
        dropped = self._refusals.allow(f"{what}:{kind}", time.monotonic())
        if dropped is not None:
            log.warning("refused %s: %s (%d more like it not logged)", what, text, dropped,
                        extra={"event": "request_refused", "kind": kind})

    def _authorize_start(self, bound_call: str | None, start: Start) -> str | None:
        """None to admit this `start` to `CallManager.start_call` (which applies admission), else why not."""
        if self.manager.is_live(start.call_sid):
            return StreamRefusal.DUPLICATE_STREAM.value  # one stream per call
        if bound_call is not None:
            return None if start.call_sid == bound_call else StreamRefusal.CALL_MISMATCH.value
        if not self.settings.twilio_validate:
            return None  # local development: admission still applies in start_call
        assert self.authority is not None
        refusal = self.authority.redeem(start.custom_parameters.get(TOKEN_PARAM), start.call_sid, time.time())
        return None if refusal is None else refusal.value


class SharedTokenClaims:
    """Used stream-token ids shared by the worker processes of one server: a file per id, created
    with O_EXCL (atomic across processes), its mtime the token's expiry; expired ones are swept."""

    SWEEP_INTERVAL_S = 10.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._next_sweep = 0.0

    def claim(self, token_id: str, expiry: int) -> bool:
        now = time.time()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_INTERVAL_S
            self._sweep(now)
        path = self.directory / token_id  # base64url: a safe file name
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            log.error("shared stream-token ledger unavailable (%s); refusing the stream", exc)
            return False
        os.close(fd)
        os.utime(path, (expiry, expiry))
        return True

    def _sweep(self, now: float) -> None:
        try:
            for entry in os.scandir(self.directory):
                if entry.stat().st_mtime < now:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        except OSError:
            pass


TWILIO = web.AppKey("twilio", TwilioRoutes)


def install(app: web.Application, routes: TwilioRoutes) -> None:
    app[TWILIO] = routes
    app.router.add_post(VOICE_PATH, routes.voice_webhook)
    app.router.add_get(MEDIA_PATH, routes.media_socket)
    app.router.add_get(MEDIA_PATH + "/{call}/{token}", routes.media_socket)  # the per-call stream URL
