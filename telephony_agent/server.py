"""App assembly: one `CallManager`, the transports' routes over it, and the operations endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from telephony_agent import ops
from telephony_agent.metrics import Metrics
from telephony_agent.realtime import RealtimeConfig, RealtimeModel, TurnDetection
from telephony_agent.settings import Provider, Settings
from telephony_agent.state import STATE, AppState
from telephony_agent.telephony.bridge import BridgeOptions
from telephony_agent.telephony.browser import routes as softphone
from telephony_agent.telephony.calls import (
    CallManager,
    CallRecorderLike,
    RecorderFactory,
)
from telephony_agent.telephony.sip import endpoint as sip_endpoint
from telephony_agent.telephony.twilio import routes as twilio_routes
from telephony_agent.telephony.twilio.routes import (
    MEDIA_PATH,
    TOKEN_PARAM,
    VOICE_PATH,
    TwilioRoutes,
)

__all__ = ["MEDIA_PATH", "TOKEN_PARAM", "VOICE_PATH", "bridge_options", "build_model", "call_config", "create_app"]

log = logging.getLogger(__name__)


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
    """The server: Twilio's routes and the operations endpoints over one `CallManager`."""
    app = web.Application(client_max_size=64 * 1024)
    metrics = Metrics()
    manager = CallManager(
        max_calls=settings.max_calls,
        call_config=lambda: call_config(settings),
        bridge_options=lambda m: bridge_options(settings, m),
        reservation_ttl=settings.stream_token_ttl_seconds,
        model=model,
    )
    manager.recorder_factory = _recorder_factory(settings, manager, metrics)
    state = AppState(settings=settings, metrics=metrics, manager=manager)
    manager.observer = ops.MetricsObserver(state)
    manager.overloaded = lambda: state.overloaded
    app[STATE] = state
    twilio_routes.install(
        app,
        TwilioRoutes(
            settings,
            manager,
            count_refused=lambda endpoint: metrics.webhooks_refused.labels(endpoint).inc(),
            count_bad_input=lambda kind: metrics.bad_input.labels(kind).inc(),
        ),
    )
    ops.install(app)
    softphone.install(app)  # GET /softphone: the browser softphone (local mode or AGENT_SOFTPHONE_TOKEN)
    app.cleanup_ctx.append(_lifecycle)
    sip_endpoint.install(app, settings, manager, metrics)  # SIP trunk when AGENT_SIP_PORT is set
    return app


def _recorder_factory(settings: Settings, manager: CallManager, metrics: Metrics) -> RecorderFactory | None:
    """With AGENT_RECORDINGS_DIR set, each admitted call gets a recorder (never before admission),
    counted when it closes: a disk that fills or a directory that cannot be written shows in
    `agent_recordings_total{outcome="failed"}`, not only in a log line."""
    directory = settings.recordings_dir
    if not directory:
        return None

    def count(failed: bool) -> None:
        metrics.recordings.labels("failed" if failed else "written").inc()

    def make(call_id: str, transport: str, phone_law: str) -> CallRecorderLike:
        from telephony_agent.recording import CallRecorder

        provider = manager.model.provider if manager.model is not None else None
        return CallRecorder(directory, transport=transport, call_id=call_id, phone_law=phone_law,
                            metadata={"provider": provider}, on_finish=count)

    return make


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    settings = state.settings
    # Every call holds one provider WebSocket from this session for its whole length: aiohttp's
    # default connector limit (100) would make call 101 wait for a slot and time out.
    state.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0))
    if state.model is None:
        state.model = build_model(settings, state.http)
    model = state.model
    app[twilio_routes.TWILIO].connect_rest(state.http)
    if not settings.twilio_validate:
        log.warning("AGENT_TWILIO_VALIDATE=false: Twilio signatures are NOT checked (local development only)")
    elif not settings.twilio_auth_token:
        log.error("TWILIO_AUTH_TOKEN is not set: every Twilio request will be refused")
    log.info("serving provider=%s model=%s max_calls=%d", model.provider, model.model_id, settings.max_calls)
    lag_task = asyncio.create_task(ops.watch_loop_lag(state), name="loop-lag")
    stop_gc_timing = ops.GcPauses(state.metrics.gc_pause).install()
    yield
    stop_gc_timing()
    lag_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await lag_task
    await state.manager.shutdown_calls(wait_seconds=10)
    await model.aclose()
    await state.http.close()


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
        leg_timeout_seconds=settings.leg_timeout_seconds,
        tool_timeout_seconds=settings.tool_timeout_seconds,
        greeting=settings.greeting,
        # The local engine's script has its own greeting: it speaks first even with no AGENT_GREETING.
        speak_first=model.provider == "local",
        transfer_allowlist=tuple(settings.transfer_allowlist),
        vad=settings.vad.value,
        min_interruption_ms=settings.min_interruption_ms,
        backchannel_ms=settings.backchannel_ms,
        vad_batch_ms=settings.vad_batch_ms,
        response_timeout_seconds=settings.response_timeout_seconds,
        max_tool_rounds=settings.max_tool_rounds,
    )
