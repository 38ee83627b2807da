"""The provider-neutral realtime session API, modelled on ADK-Rust's `RealtimeSession` trait."""

from telephony_agent.realtime.errors import (
    RealtimeAuthError,
    RealtimeConfigError,
    RealtimeConnectionError,
    RealtimeError,
    RealtimeTimeoutError,
    ServerError,
    SessionClosedError,
)
from telephony_agent.realtime.events import (
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCallDone,
    GoAway,
    InputTranscriptCompleted,
    InputTranscriptDelta,
    Interrupted,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    Reconnected,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ResumptionHandle,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextDone,
    ToolCallCancelled,
    ToolRoundsCapped,
    UnknownEvent,
    Usage,
)
from telephony_agent.realtime.runner import RealtimeRunner
from telephony_agent.realtime.session import QueuedSession, RealtimeModel, RealtimeSession
from telephony_agent.realtime.tools import Tool, ToolRegistry, ToolResult, make_tool
from telephony_agent.realtime.types import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    AudioChunk,
    AudioEncoding,
    AudioFormat,
    ClientEvent,
    ContextMutationKind,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolDefinition,
    ToolResponse,
    TurnDetection,
    TurnDetectionType,
)

__all__ = [name for name in dir() if not name.startswith("_")]
