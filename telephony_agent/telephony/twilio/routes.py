"""Twilio's way in: the voice webhook and the Media Stream socket, as a thin adapter over `CallManager`.

Twilio-specific here: signature checks, stream tokens, TwiML, the REST client for hang-up and
transfer. Everything else a call needs (admission, registry, recording, metrics, drain) is the
`CallManager`'s, shared with every other transport.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from telephony_agent.settings import Settings
from telephony_agent.telephony.bridge import CallBridge
from telephony_agent.telephony.calls import CallManager, CallRefused
from telephony_agent.telephony.twilio.media_socket import (
    WS_MAX_MSG_SIZE,
    MediaSocketHooks,
    TwilioMediaSocket,
)
from telephony_agent.telephony.twilio.rest import TwilioRest
from telephony_agent.telephony.twilio.signature import (
    check_stream_token,
    make_stream_token,
    validate_request,
    validate_websocket,
)
from telephony_agent.telephony.twilio.stream import Start
from telephony_agent.telephony.twilio.twiml import busy_twiml, connect_stream_twiml

__all__ = ["MEDIA_PATH", "TOKEN_PARAM", "TWILIO", "VOICE_PATH", "TwilioRoutes", "install"]

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
TOKEN_PARAM = "token"
TRANSPORT = "twilio"


@dataclass
class TwilioRoutes:
    """The Twilio adapter's own state: settings it reads, its REST client and token key."""

    settings: Settings
    manager: CallManager
    count_refused: Callable[[str], None]  # a refused webhook or socket, by endpoint
    count_bad_input: Callable[[str], None]  # a bad Media Stream frame, by kind
    rest: TwilioRest | None = None
    token_secret: bytes = b""

    def __post_init__(self) -> None:
        token = self.auth_token
        # Tokens must verify on any worker or pod, so derive the key from the shared auth token.
        self.token_secret = (
            hmac.new(token.encode(), b"telephony-agent stream token", hashlib.sha256).digest()
            if token
            else secrets.token_bytes(32)
        )

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
        form = await request.post()
        params = {k: str(v) for k, v in form.items()}
        base = self.public_base(request)
        if settings.twilio_validate:
            token = self.auth_token
            url = base + request.path_qs
            if not token or not validate_request(url, form, request.headers.get("X-Twilio-Signature"), token):
                self.count_refused("voice")
                log.warning("refused unsigned or badly signed webhook")
                return web.Response(status=403, text="invalid signature")
        call_sid = params.get("CallSid", "")
        if not call_sid:
            return web.Response(status=400, text="missing CallSid")
        reason = self.manager.reserve(call_sid, TRANSPORT)
        if reason is not None:
            log.warning("refusing call %s: %s", call_sid, reason, extra={"call_id": call_sid})
            return web.Response(text=busy_twiml(), content_type="text/xml")
        host = urlsplit(base).netloc
        ws_url = f"wss://{host}{urlsplit(base).path.rstrip('/')}{MEDIA_PATH}"
        stream_params = {
            "callSid": call_sid,
            "from": params.get("From", ""),
            "to": params.get("To", ""),
            TOKEN_PARAM: make_stream_token(
                call_sid, self.token_secret, time.time(), settings.stream_token_ttl_seconds
            ),
        }
        return web.Response(text=connect_stream_twiml(ws_url, stream_params), content_type="text/xml")

    # -- GET /twilio/media --------------------------------------------------------------------------

    async def media_socket(self, request: web.Request) -> web.StreamResponse:
        settings = self.settings
        manager = self.manager
        signed = not settings.twilio_validate
        if settings.twilio_validate and self.auth_token:
            signed = validate_websocket(
                self.public_base(request), MEDIA_PATH, request.headers.get("X-Twilio-Signature"), self.auth_token
            )
        if settings.twilio_validate and not self.auth_token:
            self.count_refused("media")
            return web.Response(status=403, text="server has no TWILIO_AUTH_TOKEN")
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE, heartbeat=None, autoping=True)
        await ws.prepare(request)

        def authorize(start: Start) -> bool:
            if manager.is_live(start.call_sid):
                # One stream per call: a second socket (a replayed token, a confused proxy) is refused.
                self.count_refused("media")
                return False
            if signed:
                return True
            token = start.custom_parameters.get(TOKEN_PARAM)
            ok = check_stream_token(token, start.call_sid, self.token_secret, time.time())
            if not ok:
                self.count_refused("media")
            return ok

        async def make_bridge(start: Start, socket: TwilioMediaSocket) -> CallBridge:
            try:
                reserved_by = manager.reserved_by(start.call_sid)
                if reserved_by is not None and reserved_by != TRANSPORT:
                    # Placed by another way in (the browser softphone) and streamed like Twilio:
                    # there is no call at Twilio to hang up or transfer through its REST API.
                    socket.rest = None
                return await manager.start_call(
                    start.call_sid,
                    socket,
                    transport=reserved_by or TRANSPORT,
                    log=socket.log,
                    on_admitted=socket.on_admitted,
                )
            except CallRefused:
                self.count_refused("media")
                raise

        hooks = MediaSocketHooks(
            authorize=authorize,
            make_bridge=make_bridge,
            on_bad_input=self.count_bad_input,
            on_call_end=manager.call_ended,
        )
        socket = TwilioMediaSocket(ws, hooks, self.rest)
        await socket.run()
        return ws


TWILIO = web.AppKey("twilio", TwilioRoutes)


def install(app: web.Application, routes: TwilioRoutes) -> None:
    app[TWILIO] = routes
    app.router.add_post(VOICE_PATH, routes.voice_webhook)
    app.router.add_get(MEDIA_PATH, routes.media_socket)
