"""The aiohttp application: Twilio webhook and media socket, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from telephony_agent import ops
from telephony_agent.connections import trust_connection
from telephony_agent.metrics import Metrics
from telephony_agent.realtime import RealtimeConfig, RealtimeModel, TurnDetection
from telephony_agent.settings import Provider, Settings
from telephony_agent.state import STATE, AppState
from telephony_agent.telephony.bridge import BridgeOptions, CallBridge
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
    TOKEN_PARAM,
    StreamAuthority,
    StreamRefusal,
    per_call_path,
)
from telephony_agent.telephony.twilio.twiml import busy_twiml, connect_stream_twiml
from telephony_agent.wiretap import WIRETAP

log = logging.getLogger(__name__)

VOICE_PATH = "/twilio/voice"
MEDIA_PATH = "/twilio/media"
STREAM_AUTHORITY = web.AppKey("stream_authority", StreamAuthority)


def build_model(settings: Settings, http: aiohttp.ClientSession) -> RealtimeModel:
    """The configured provider's model; `auto` means the first with a key, else the local engine."""
    provider = settings.effective_provider
    if provider is Provider.OPENAI:
        from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel

        assert settings.openai_api_key is not None
        return OpenAIRealtimeModel(
            settings.openai_api_key.get_secret_value(),
            url=settings.openai_url,
            model=settings.openai_model,
            audio=settings.openai_audio.value,
            http=http,
        )
    if provider is Provider.GEMINI:
        from telephony_agent.realtime.providers.gemini import GeminiLiveModel

        assert settings.gemini_api_key is not None
        return GeminiLiveModel(
            settings.gemini_api_key.get_secret_value(), url=settings.gemini_url, model=settings.gemini_model, http=http
        )
    from telephony_agent.realtime.providers.local import LocalRealtimeModel

    return LocalRealtimeModel(script_path=settings.local_script, voice=settings.voice)




def create_app(settings: Settings, *, model: RealtimeModel | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    state = AppState(settings=settings, metrics=Metrics(), model=model)
    token = state.auth_token
    # Tokens must verify on any worker or pod, so derive the key from the shared auth token.
    state.token_secret = (
        hmac.new(token.encode(), b"telephony-agent stream token", hashlib.sha256).digest()
        if token
        else secrets.token_bytes(32)
    )
    app[STATE] = state
    app[STREAM_AUTHORITY] = StreamAuthority(state.token_secret, settings.stream_token_ttl_seconds)
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_get(MEDIA_PATH, media_socket)
    app.router.add_get(MEDIA_PATH + "/{call}/{token}", media_socket)  # the per-call stream URL
    ops.install(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def _lifecycle(app: web.Application) -> object:
    state = app[STATE]
    settings = state.settings
    # Every call holds one provider WebSocket from this session for its whole length: aiohttp's
    # default connector limit (100) would make call 101 wait for a slot and time out.
    state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0))
    if state.model is None:
        state.model = build_model(settings, state.http)
    if settings.twilio_account_sid and state.auth_token:
        state.rest = TwilioRest(settings.twilio_account_sid, state.auth_token, settings.twilio_api_url, state.http)
    if not settings.twilio_validate:
        log.warning("AGENT_TWILIO_VALIDATE=false: Twilio signatures are NOT checked (local development only)")
    elif not state.auth_token:
        log.error("TWILIO_AUTH_TOKEN is not set: every Twilio request will be refused")
    log.info(
        "serving provider=%s model=%s max_calls=%d",
        state.model.provider,
        state.model.model_id,
        settings.max_calls,
    )
    lag_task = asyncio.create_task(ops.watch_loop_lag(state), name="loop-lag")
    yield
    lag_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag_task
    for bridge in list(state.calls.values()):
        await bridge.shutdown()
    deadline = time.monotonic() + 10
    while state.calls and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await state.model.aclose()
    await state.http.close()


def _public_base(request: web.Request, settings: Settings) -> str:
    """The https base URL Twilio used; configured, or (development) rebuilt from the request."""
    if settings.public_url:
        return settings.public_url
    return f"https://{request.host}"


async def voice_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE]
    settings = state.settings
    base = _public_base(request, settings)
    try:
        form = await read_signed_form(
            request, base + request.path_qs, state.auth_token, validate=settings.twilio_validate,
            max_bytes=settings.webhook_max_bytes, timeout=settings.http_body_timeout_seconds,
        )
    except WebhookRejected as exc:
        state.metrics.webhooks_refused.labels("voice").inc()
        return exc.response()  # counted, not logged: anyone can send these
    params = {k: str(v) for k, v in form.items()}
    call_sid = params.get("CallSid", "")
    if not call_sid:
        return web.Response(status=400, text="missing CallSid")
    reason = state.refusal()
    if reason is not None:
        state.metrics.calls_refused.labels(reason).inc()
        log.warning("refusing call %s: %s", call_sid, reason, extra={"call_id": call_sid})
        return web.Response(text=busy_twiml(), content_type="text/xml")
    state.pending[call_sid] = time.monotonic()
    host = urlsplit(base).netloc
    token = request.app[STREAM_AUTHORITY].issue(call_sid, time.time(), secrets.token_bytes(NONCE_BYTES))
    ws_url = f"wss://{host}{urlsplit(base).path.rstrip('/')}{per_call_path(MEDIA_PATH, call_sid, token)}"
    stream_params = {"callSid": call_sid, "from": params.get("From", ""), "to": params.get("To", "")}
    return web.Response(text=connect_stream_twiml(ws_url, stream_params), content_type="text/xml")


async def media_socket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    settings = state.settings
    authority = request.app[STREAM_AUTHORITY]
    grant = authorize_upgrade(
        request, authority, _public_base(request, settings), state.auth_token, time.time(),
        validate=settings.twilio_validate,
    )
    if isinstance(grant, StreamRefusal):
        state.metrics.webhooks_refused.labels("media").inc()
        return web.Response(status=403, text=grant.value)
    bound_call = grant.call_sid
    if bound_call is not None:
        trust_connection(request)  # its per-call token was just spent: no longer a stranger
    ws = web.WebSocketResponse(
        max_msg_size=WS_MAX_MSG_SIZE if bound_call else WS_MAX_MSG_SIZE_UNAUTHENTICATED, heartbeat=None, autoping=True
    )
    await ws.prepare(request)

    def authorize(start: Start) -> str | None:
        refusal = _authorize_start(state, authority, bound_call, start)
        if refusal is not None:
            state.metrics.webhooks_refused.labels("media").inc()
        return refusal

    recording: list[object] = []

    async def make_bridge(start: Start, socket: TwilioMediaSocket) -> CallBridge:
        state.pending.pop(start.call_sid, None)
        trust_connection(request)
        assert state.model is not None
        if settings.recordings_dir:  # only now, authorised: a refused socket leaves no file
            from telephony_agent.recording import CallRecorder

            recorder = CallRecorder(settings.recordings_dir, metadata={"provider": state.model.provider})
            recording.append(recorder)
            WIRETAP.set(recorder)  # this call's task (and what it starts) only
        bridge = CallBridge(
            start.call_sid,
            state.model,
            call_config(settings),
            socket,
            bridge_options(settings, state.model),
            clock=asyncio.get_running_loop().time,  # the loop's clock: a replay may run it virtually
            logger=socket.log,
        )
        state.calls[start.call_sid] = bridge
        ops.record_call_start(state, bridge)
        for hook in state.call_hooks:
            hook(bridge)
        await bridge.start()
        return bridge

    def on_call_end(bridge: CallBridge) -> None:
        state.calls.pop(bridge.call_id, None)
        ops.record_call_end(state, bridge)  # final per-call deltas; live ones flush from ops

    hooks = MediaSocketHooks(
        authorize=authorize,
        make_bridge=make_bridge,
        on_bad_input=lambda kind: state.metrics.bad_input.labels(kind).inc(),
        on_call_end=on_call_end,
        start_timeout=settings.ws_handshake_timeout_seconds,
    )
    socket = TwilioMediaSocket(ws, hooks, state.rest)
    try:
        await socket.run()
    finally:
        if socket.bridge is None and bound_call is not None:
            state.pending.pop(bound_call, None)  # its token is spent: this call cannot stream now
        for recorder in recording:
            recorder.finish_bridge(socket.bridge)  # type: ignore[attr-defined]
    return ws


def _authorize_start(
    state: AppState, authority: StreamAuthority, bound_call: str | None, start: Start
) -> str | None:
    """None to admit this `start`, else why not. Admission applies to every way in."""
    settings = state.settings
    if bound_call is not None:
        if start.call_sid != bound_call:
            return StreamRefusal.CALL_MISMATCH.value
    elif settings.twilio_validate:
        refusal = authority.redeem(start.custom_parameters.get(TOKEN_PARAM), start.call_sid, time.time())
        if refusal is not None:
            return refusal.value
    if start.call_sid in state.calls:
        return StreamRefusal.DUPLICATE_STREAM.value  # one stream per call
    if start.call_sid not in state.pending:  # not reserved by this process's webhook
        reason = state.refusal()
        if reason is not None:
            state.metrics.calls_refused.labels(reason).inc()
            return reason
    return None


def call_config(settings: Settings) -> RealtimeConfig:
    return RealtimeConfig(
        instructions=settings.instructions,
        voice=settings.voice,
        turn_detection=TurnDetection(),
        input_transcription=settings.input_transcription,
    )


def bridge_options(settings: Settings, model: RealtimeModel) -> BridgeOptions:
    return BridgeOptions(
        playout_lead_ms=settings.playout_lead_ms,
        max_call_seconds=settings.max_call_seconds,
        idle_timeout_seconds=settings.idle_timeout_seconds,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        greeting=settings.greeting,
        # The local engine's script has its own greeting: it speaks first even with no AGENT_GREETING.
        speak_first=model.provider == "local",
        transfer_allowlist=tuple(settings.transfer_allowlist),
    )
