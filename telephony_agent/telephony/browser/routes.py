"""HTTP routes of the browser softphone: the page, its scripts, and placing a call.

`POST /softphone/call` is the page's voice webhook: it goes through admission exactly as Twilio's
webhook does (draining, call limit, overload), reserves the call, and answers with what the
webhook's TwiML would carry: the call SID, the media stream path and the per-call stream token
for the `start` message's `customParameters`. The page then speaks the Twilio Media Streams
protocol on `/twilio/media`, where the token is checked like any Twilio stream's.

Who may use it:

* local development (`AGENT_TWILIO_VALIDATE=false`): the page and its calls need no token;
* `AGENT_SOFTPHONE_TOKEN` set: the page is served, and placing a call needs
  `Authorization: Bearer <token>`; each call then gets only a short-lived stream token, so the
  operator can share the softphone without exposing the media socket;
* otherwise everything under `/softphone` is 404: the feature does not exist.
"""

from __future__ import annotations

import enum
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from telephony_agent.settings import Settings
from telephony_agent.telephony.twilio.routes import MEDIA_PATH, TOKEN_PARAM, TWILIO
from telephony_agent.telephony.twilio.stream_auth import NONCE_BYTES

__all__ = ["CALL_PATH", "PAGE_PATH", "STATIC_PATH", "Access", "SoftphoneRoutes", "access_mode", "install"]

log = logging.getLogger(__name__)

PAGE_PATH = "/softphone"
CALL_PATH = "/softphone/call"
STATIC_PATH = "/softphone/static/{name}"

# The account SID the page puts in `start`: the stream needs one, and a browser has none.
ACCOUNT_SID = "AC" + "0" * 32
CALLER_ID = "softphone"
TRANSPORT = "softphone"  # admission's label for refusals; the stream itself is a Twilio one

# Files the page may load, with their types: nothing else under static/ is served.
_STATIC_TYPES = {
    "softphone.css": "text/css",
    "softphone.js": "text/javascript",
    "dsp.js": "text/javascript",
    "capture-worklet.js": "text/javascript",
    "playout-worklet.js": "text/javascript",
}

# Everything the page needs is served by us: no inline script, no other origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' blob:; img-src 'self' data:; "
    "media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Access(str, enum.Enum):
    LOCAL = "local"  # AGENT_TWILIO_VALIDATE=false: development, no token
    TOKEN = "token"  # AGENT_SOFTPHONE_TOKEN is set: each call needs it
    OFF = "off"  # neither: the softphone does not exist


def access_mode(settings: Settings) -> Access:
    if not settings.twilio_validate:
        return Access.LOCAL
    token = settings.softphone_token
    if token is not None and token.get_secret_value():
        return Access.TOKEN
    return Access.OFF


def _static_files() -> dict[str, bytes]:
    base = resources.files(__package__).joinpath("static")
    return {name: base.joinpath(name).read_bytes() for name in [*_STATIC_TYPES, "softphone.html"]}


@dataclass
class SoftphoneRoutes:
    settings: Settings
    files: dict[str, bytes]

    @property
    def access(self) -> Access:
        return access_mode(self.settings)

    async def page(self, request: web.Request) -> web.StreamResponse:
        if self.access is Access.OFF:
            raise web.HTTPNotFound()
        html = self.files["softphone.html"].replace(b"__ACCESS__", self.access.value.encode())
        return web.Response(body=html, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def page_slash(self, request: web.Request) -> web.StreamResponse:
        """`/softphone/` would resolve the page's relative URLs one level too deep."""
        if self.access is Access.OFF:
            raise web.HTTPNotFound()
        raise web.HTTPFound("../softphone")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        kind = _STATIC_TYPES.get(name)
        if kind is None or self.access is Access.OFF:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type=kind, charset="utf-8", headers=_HEADERS)

    async def place_call(self, request: web.Request) -> web.StreamResponse:
        """The page's voice webhook: authorise, admit, and hand back the stream's parameters."""
        access = self.access
        if access is Access.OFF:
            raise web.HTTPNotFound()
        if not _same_origin(request):
            _count_refused(request.app)
            log.warning("softphone: refused a call placed from another origin (%s)", request.headers.get("Origin"))
            return _json({"error": "cross_origin"}, 403)
        given = _bearer(request.headers.get("Authorization"))
        if access is Access.TOKEN or given is not None:
            refusal = self._check_token(given)
            if refusal is not None:
                _count_refused(request.app)
                log.warning("softphone: refused a call (%s)", refusal)
                return _json({"error": refusal}, 401, {"WWW-Authenticate": 'Bearer realm="softphone"'})
            if not _media_accepts_tokens(request.app):
                return _json({"error": "no_twilio_auth_token"}, 503)
        call_sid = "CA" + secrets.token_hex(16)
        reason = _reserve(request.app, call_sid)
        if reason is not None:
            log.warning("softphone: refusing call %s: %s", call_sid, reason, extra={"call_id": call_sid})
            return _json({"error": "refused", "reason": reason}, 503, {"Retry-After": "5"})
        log.info("softphone: call %s placed", call_sid, extra={"call_id": call_sid})
        return _json(
            {
                "callSid": call_sid,
                "accountSid": ACCOUNT_SID,
                # Relative to the page, so a reverse proxy's path prefix keeps working.
                "streamPath": MEDIA_PATH.lstrip("/"),
                "customParameters": {
                    "callSid": call_sid,
                    "from": CALLER_ID,
                    "to": "",
                    TOKEN_PARAM: _stream_token(request.app, call_sid),
                },
            },
            200,
        )

    def _check_token(self, given: str | None) -> str | None:
        """None when the bearer token is the configured one; else why not."""
        if given is None:
            return "token_required"
        configured = self.settings.softphone_token
        expected = configured.get_secret_value() if configured is not None else ""
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            return "bad_token"
        return None


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 512:
        return ""  # present but unusable: refused as a bad token
    return value


def _same_origin(request: web.Request) -> bool:
    """A browser always sends Origin on a POST: another site's page must not place calls here."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser (curl, a test client): the token, if required, still applies
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    hosts = {request.host.lower(), request.headers.get("X-Forwarded-Host", "").lower()}
    return bool(netloc) and netloc in hosts


def _json(body: dict[str, object], status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store", **(headers or {})})


# --- The one place that talks to admission (through the Twilio adapter's CallManager) and to that adapter --------------------------------


def _reserve(app: web.Application, call_sid: str) -> str | None:
    """Admit a call exactly as the voice webhook does: the reservation counts toward the call limit
    until the page's stream starts (or the stream token's lifetime passes). Refusals are counted
    by the manager."""
    return app[TWILIO].manager.reserve(call_sid, TRANSPORT)


def _stream_token(app: web.Application, call_sid: str) -> str:
    """A stream token as the voice webhook issues them (bound to the call, single-use, expiring)."""
    authority = app[TWILIO].authority
    assert authority is not None
    return authority.issue(call_sid, time.time(), secrets.token_bytes(NONCE_BYTES))


def _media_accepts_tokens(app: web.Application) -> bool:
    """With signature checks on, the media socket needs TWILIO_AUTH_TOKEN before it looks at tokens."""
    return not app[TWILIO].settings.twilio_validate or bool(app[TWILIO].auth_token)


def _count_refused(app: web.Application) -> None:
    app[TWILIO].count_refused("softphone")


def install(app: web.Application) -> None:
    """Add the softphone's routes (they answer 404 unless local mode or a softphone token is set).

    Install after the Twilio routes: calls placed here are streamed through them."""
    routes = SoftphoneRoutes(app[TWILIO].settings, _static_files())
    app.router.add_get(PAGE_PATH, routes.page)
    app.router.add_get(PAGE_PATH + "/", routes.page_slash)
    app.router.add_get(STATIC_PATH, routes.static)
    app.router.add_post(CALL_PATH, routes.place_call)
