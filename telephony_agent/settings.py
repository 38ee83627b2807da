"""Operator configuration, read from the environment and an optional `.env` file.

Vendor secrets keep their vendor names; our own settings start with ``AGENT_``. Every field's
environment name is its ``validation_alias``; `.env.example` documents each one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Provider(str, enum.Enum):
    AUTO = "auto"
    OPENAI = "openai"
    GEMINI = "gemini"
    LOCAL = "local"


class LogFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"


class OpenAIAudio(str, enum.Enum):
    """`pcmu` passes Twilio's mu-law straight through; `pcm` is PCM16 24 kHz."""

    PCMU = "pcmu"
    PCM = "pcm"


class CallerVad(str, enum.Enum):
    """The bridge's own caller-speech detector (turn-taking): Silero VAD, energy VAD, or none."""

    SILERO = "silero"
    ENERGY = "energy"
    OFF = "off"


class EventLoopKind(str, enum.Enum):
    """The server's event loop: uvloop when importable (`auto`), or one of them by name."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


MIN_WORKER_TIMEOUT_S = 3.0
"""The least `AGENT_WORKER_TIMEOUT_SECONDS` (other than 0, off): a worker's loop beats once a second."""


def _env(name: str) -> Any:
    return AliasChoices(name)


class SettingsError(ValueError):
    """A setting has a value it does not accept; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    # Vendor secrets.
    openai_api_key: SecretStr | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    gemini_api_key: SecretStr | None = Field(None, validation_alias=_env("GEMINI_API_KEY"))
    twilio_account_sid: str | None = Field(None, validation_alias=_env("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: SecretStr | None = Field(None, validation_alias=_env("TWILIO_AUTH_TOKEN"))

    # Server.
    host: str = Field("0.0.0.0", validation_alias=_env("AGENT_HOST"))
    port: int = Field(8080, ge=1, le=65535, validation_alias=_env("AGENT_PORT"))
    public_url: str | None = Field(None, validation_alias=_env("AGENT_PUBLIC_URL"))
    workers: int = Field(1, ge=1, le=64, validation_alias=_env("AGENT_WORKERS"))
    worker_timeout_seconds: float = Field(30.0, ge=0, le=3600, validation_alias=_env("AGENT_WORKER_TIMEOUT_SECONDS"))
    log_format: LogFormat = Field(LogFormat.TEXT, validation_alias=_env("AGENT_LOG_FORMAT"))
    log_level: str = Field("INFO", validation_alias=_env("AGENT_LOG_LEVEL"))

    # Provider.
    provider: Provider = Field(Provider.AUTO, validation_alias=_env("AGENT_PROVIDER"))
    openai_url: str = Field("wss://api.openai.com/v1/realtime", validation_alias=_env("AGENT_OPENAI_URL"))
    openai_model: str = Field("gpt-realtime", validation_alias=_env("AGENT_OPENAI_MODEL"))
    openai_audio: OpenAIAudio = Field(OpenAIAudio.PCMU, validation_alias=_env("AGENT_OPENAI_AUDIO"))
    gemini_url: str = Field(
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
        validation_alias=_env("AGENT_GEMINI_URL"),
    )
    gemini_model: str = Field(
        "gemini-2.5-flash-native-audio-preview-09-2025", validation_alias=_env("AGENT_GEMINI_MODEL")
    )
    local_script: str | None = Field(None, validation_alias=_env("AGENT_LOCAL_SCRIPT"))

    # The agent.
    instructions: str = Field(
        "You are a friendly, concise phone receptionist. Keep answers short: this is a phone call.",
        validation_alias=_env("AGENT_INSTRUCTIONS"),
    )
    voice: str | None = Field(None, validation_alias=_env("AGENT_VOICE"))
    greeting: str | None = Field(None, validation_alias=_env("AGENT_GREETING"))
    input_transcription: str | None = Field(None, validation_alias=_env("AGENT_INPUT_TRANSCRIPTION"))
    tool_timeout_seconds: float = Field(10.0, gt=0, le=300, validation_alias=_env("AGENT_TOOL_TIMEOUT_SECONDS"))

    # Calls.
    max_calls: int = Field(100, ge=1, le=100_000, validation_alias=_env("AGENT_MAX_CALLS"))
    max_call_seconds: float = Field(3600.0, gt=0, validation_alias=_env("AGENT_MAX_CALL_SECONDS"))
    idle_timeout_seconds: float = Field(30.0, gt=0, validation_alias=_env("AGENT_IDLE_TIMEOUT_SECONDS"))
    playout_lead_ms: int = Field(200, ge=20, le=2000, validation_alias=_env("AGENT_PLAYOUT_LEAD_MS"))
    # Phone leg liveness: no caller audio and no playout confirmation this long ends the call.
    leg_timeout_seconds: float = Field(10.0, gt=0, le=3600, validation_alias=_env("AGENT_LEG_TIMEOUT_SECONDS"))
    transfer_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias=_env("AGENT_TRANSFER_ALLOWLIST"))
    stream_token_ttl_seconds: int = Field(
        60, ge=5, le=3600, validation_alias=_env("AGENT_STREAM_TOKEN_TTL_SECONDS")
    )

    # Turn-taking (barge-in, false interruptions, dead air).
    vad: CallerVad = Field(CallerVad.SILERO, validation_alias=_env("AGENT_VAD"))
    min_interruption_ms: int = Field(250, ge=0, le=2000, validation_alias=_env("AGENT_MIN_INTERRUPTION_MS"))
    backchannel_ms: int = Field(800, ge=0, le=3000, validation_alias=_env("AGENT_BACKCHANNEL_MS"))
    vad_batch_ms: int = Field(10, ge=0, le=50, validation_alias=_env("AGENT_VAD_BATCH_MS"))
    response_timeout_seconds: float = Field(
        4.0, gt=0, le=60, validation_alias=_env("AGENT_RESPONSE_TIMEOUT_SECONDS")
    )
    max_tool_rounds: int = Field(5, ge=1, le=100, validation_alias=_env("AGENT_MAX_TOOL_ROUNDS"))

    # Twilio.
    twilio_validate: bool = Field(True, validation_alias=_env("AGENT_TWILIO_VALIDATE"))
    twilio_api_url: str = Field("https://api.twilio.com", validation_alias=_env("AGENT_TWILIO_API_URL"))

    # Browser softphone (GET /softphone).
    softphone_token: SecretStr | None = Field(None, validation_alias=_env("AGENT_SOFTPHONE_TOKEN"))

    # Operations.
    drain_seconds: float = Field(30.0, ge=0, validation_alias=_env("AGENT_DRAIN_SECONDS"))
    max_loop_lag_ms: float = Field(100.0, gt=0, validation_alias=_env("AGENT_MAX_LOOP_LAG_MS"))
    overload_window_seconds: float = Field(
        3.0, gt=0, le=60, validation_alias=_env("AGENT_OVERLOAD_WINDOW_SECONDS")
    )
    recordings_dir: str | None = Field(None, validation_alias=_env("AGENT_RECORDINGS_DIR"))

    # Event loop and memory (docs/operations.md#event-loop-and-memory).
    event_loop: EventLoopKind = Field(EventLoopKind.AUTO, validation_alias=_env("AGENT_EVENT_LOOP"))
    # read when the package is imported (telephony_agent/native.py); here so a wrong value is an error
    native: Literal["auto", "off"] = Field("auto", validation_alias=_env("AGENT_NATIVE"))
    malloc_trim_seconds: float = Field(10.0, ge=0, le=3600, validation_alias=_env("AGENT_MALLOC_TRIM_SECONDS"))

    # Connection limits (docs/security.md): what a client that never authenticates can hold.
    http_header_timeout_seconds: float = Field(10.0, gt=0, le=300, validation_alias=_env("AGENT_HTTP_HEADER_TIMEOUT_SECONDS"))
    http_body_timeout_seconds: float = Field(10.0, gt=0, le=300, validation_alias=_env("AGENT_HTTP_BODY_TIMEOUT_SECONDS"))
    http_keepalive_timeout_seconds: float = Field(
        15.0, gt=0, le=3600, validation_alias=_env("AGENT_HTTP_KEEPALIVE_TIMEOUT_SECONDS")
    )
    ws_handshake_timeout_seconds: float = Field(5.0, gt=0, le=60, validation_alias=_env("AGENT_WS_HANDSHAKE_TIMEOUT_SECONDS"))
    max_unauthenticated_connections: int = Field(
        512, ge=1, le=1_000_000, validation_alias=_env("AGENT_MAX_UNAUTHENTICATED_CONNECTIONS")
    )
    webhook_max_bytes: int = Field(16_384, ge=1024, le=1_048_576, validation_alias=_env("AGENT_WEBHOOK_MAX_BYTES"))

    # SIP signalling (on when AGENT_SIP_PORT is set).
    sip_port: int | None = Field(None, ge=1, le=65535, validation_alias=_env("AGENT_SIP_PORT"))
    sip_host: str | None = Field(None, validation_alias=_env("AGENT_SIP_HOST"))
    sip_transports: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["udp", "tcp"], validation_alias=_env("AGENT_SIP_TRANSPORTS")
    )
    sip_codecs: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["PCMU", "PCMA"], validation_alias=_env("AGENT_SIP_CODECS")
    )
    sip_allowed_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1/32", "::1/128"], validation_alias=_env("AGENT_SIP_ALLOWED_SOURCES")
    )
    sip_username: str | None = Field(None, validation_alias=_env("AGENT_SIP_USERNAME"))
    sip_password: SecretStr | None = Field(None, validation_alias=_env("AGENT_SIP_PASSWORD"))
    sip_digest_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["SHA-256", "MD5"], validation_alias=_env("AGENT_SIP_DIGEST_ALGORITHMS")
    )
    sip_rate_limit: float = Field(20.0, gt=0, le=10_000, validation_alias=_env("AGENT_SIP_RATE_LIMIT"))
    rtp_address: str | None = Field(None, validation_alias=_env("AGENT_RTP_ADDRESS"))

    @field_validator("sip_transports", "sip_codecs", "sip_allowed_sources", "sip_digest_algorithms", mode="before")
    @classmethod
    def _split_sip_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sip_transports")
    @classmethod
    def _check_sip_transports(cls, value: list[str]) -> list[str]:
        out = [v.lower() for v in value]
        if not out or any(v not in ("udp", "tcp") for v in out):
            raise ValueError("accepts a comma-separated list of udp and tcp, e.g. udp,tcp")
        return out

    @field_validator("sip_codecs")
    @classmethod
    def _check_sip_codecs(cls, value: list[str]) -> list[str]:
        out = [v.upper() for v in value]
        if not out or any(v not in ("PCMU", "PCMA") for v in out):
            raise ValueError("accepts PCMU and/or PCMA in order of preference, e.g. PCMU,PCMA")
        return out

    @field_validator("sip_digest_algorithms")
    @classmethod
    def _check_sip_digest(cls, value: list[str]) -> list[str]:
        out = [v.upper() for v in value]
        if not out or any(v not in ("SHA-256", "MD5") for v in out):
            raise ValueError("accepts SHA-256 and/or MD5 in the order to offer them, e.g. SHA-256,MD5")
        return out

    @field_validator("sip_allowed_sources")
    @classmethod
    def _check_sip_sources(cls, value: list[str]) -> list[str]:
        import ipaddress

        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network (e.g. 203.0.113.0/24)") from None
        return value

    @model_validator(mode="after")
    def _check_sip_auth(self) -> Settings:
        if (self.sip_username is None) != (self.sip_password is None):
            raise ValueError("AGENT_SIP_USERNAME and AGENT_SIP_PASSWORD are set together or not at all")
        if self.sip_port is not None and self.workers > 1:
            # A SIP dialog lives in the process that answered it; UDP cannot be shared by workers.
            raise ValueError("AGENT_SIP_PORT needs AGENT_WORKERS=1 (run one process per host or pod)")
        if 0 < self.worker_timeout_seconds < MIN_WORKER_TIMEOUT_S:
            # a worker's loop beats once a second: less would restart a worker for a slow second
            raise ValueError(f"AGENT_WORKER_TIMEOUT_SECONDS is 0 (off) or at least {MIN_WORKER_TIMEOUT_S:.0f}")
        return self

    # SIP media (RTP).
    rtp_ports: str = Field("20000-20999", validation_alias=_env("AGENT_RTP_PORTS"))
    rtp_timeout_seconds: float = Field(30.0, gt=0, le=3600, validation_alias=_env("AGENT_RTP_TIMEOUT_SECONDS"))

    @field_validator("rtp_ports")
    @classmethod
    def _check_rtp_ports(cls, value: str) -> str:
        first, sep, last = value.strip().partition("-")
        if not (sep and first.isdigit() and last.isdigit() and 1024 <= int(first) < int(last) <= 65535):
            raise ValueError("must be FIRST-LAST within 1024-65535, e.g. 20000-20999 (one even port per call)")
        return value.strip()

    @field_validator("transfer_allowlist", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) URL such as https://agent.example.com")
        return value.rstrip("/")

    @field_validator("softphone_token", mode="before")
    @classmethod
    def _check_softphone_token(cls, value: Any) -> Any:
        """Empty means unset; a short token would be guessable by anyone who can reach the page."""
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or raw == "":
            return None
        if isinstance(raw, str) and len(raw) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("accepts DEBUG, INFO, WARNING or ERROR")
        return upper

    @model_validator(mode="after")
    def _check_provider_keys(self) -> Settings:
        if self.provider is Provider.OPENAI and self.openai_api_key is None:
            raise ValueError("AGENT_PROVIDER=openai needs OPENAI_API_KEY")
        if self.provider is Provider.GEMINI and self.gemini_api_key is None:
            raise ValueError("AGENT_PROVIDER=gemini needs GEMINI_API_KEY")
        return self

    @property
    def effective_provider(self) -> Provider:
        """`auto` picks the first provider with a key, else the offline local engine."""
        if self.provider is not Provider.AUTO:
            return self.provider
        if self.openai_api_key is not None:
            return Provider.OPENAI
        if self.gemini_api_key is not None:
            return Provider.GEMINI
        return Provider.LOCAL

    def env_names(self) -> dict[str, str]:
        """Field name -> environment variable name."""
        names = {}
        for name, info in type(self).model_fields.items():
            alias = info.validation_alias
            names[name] = str(alias.choices[0]) if isinstance(alias, AliasChoices) else name.upper()
        return names

    def masked(self) -> dict[str, str]:
        """Effective settings by environment name, secrets masked (for `telephony-agent config`)."""
        out: dict[str, str] = {}
        for name, env in self.env_names().items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[env] = MASK
            elif value is None:
                out[env] = ""
            elif isinstance(value, bool):
                out[env] = "true" if value else "false"
            elif isinstance(value, enum.Enum):
                out[env] = str(value.value)
            elif isinstance(value, list):
                out[env] = ",".join(mask_url(v) for v in value)
            else:
                out[env] = mask_url(str(value))
        return out


MASK = "********"


def mask_url(value: str) -> str:
    """`value` with any credentials a URL carries masked: user info, query values, fragment.

    Operators put keys in URLs (`wss://host/path?key=...`, `https://user:pass@host`); printing
    the setting must not print them. A value that is not an absolute URL is returned as is.
    """
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return value
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{name}={MASK}" if sep else name for name, sep, _ in (pair.partition("=") for pair in parts.query.split("&"))
    ) if parts.query else ""
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _describe(error: Mapping[str, Any]) -> str:
    names = Settings.model_construct().env_names()
    loc = error.get("loc") or ()
    field = str(loc[0]) if loc else ""
    env = names.get(field, field.upper() or "settings")
    message = error.get("msg", "invalid value")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    ctx = error.get("ctx") or {}
    if "expected" in ctx:
        message += f" (accepts {ctx['expected']})"
    return f"{env}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read settings; an invalid value raises SettingsError naming the variable and what it accepts."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None
