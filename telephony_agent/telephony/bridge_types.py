"""What the bridge's two halves share (`call_core.CallCore`, compiled, and `bridge.CallBridge`,
its asyncio shell): the call's options, phases, outcomes and counters, and the limits on what a caller
may send.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

__all__ = [
    "AUDIO_BURST_S",
    "AUDIO_RATE",
    "EARLY_AUDIO_MS",
    "EARLY_DIGITS",
    "KEYS_PER_S",
    "KEY_BURST",
    "BridgeOptions",
    "CallOutcome",
    "CallPhase",
    "CallStats",
    "DtmfHook",
    "Logger",
]

EARLY_AUDIO_MS = 3000  # caller audio kept while the provider session opens
EARLY_DIGITS = 32  # keys kept while the provider session opens (a caller keying ahead, not a flood)
# Keys a call passes on (hooks, and a model request each): a person keys a few a second, a dialler
# sending a number at the fastest RFC 4733 / Q.24 timing about 12 in a burst; past that it is a
# flood, and each key would cost a response from a paid model.
KEYS_PER_S = 10.0
KEY_BURST = 20
# Caller audio a call passes on (the detector, then the provider, which bills by audio time): a
# phone sends it in real time, and a network stall delivers its backlog at once; more than that,
# sustained, is a peer flooding the call, whose audio would cost the CPU of several calls and a
# paid provider several times the call's length. A clock 5 % fast is still far inside the rate.
AUDIO_RATE = 1.05  # times real time
AUDIO_BURST_S = 5.0

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class CallOutcome(str, enum.Enum):
    CALLER_HANGUP = "caller_hangup"
    AGENT_HANGUP = "agent_hangup"
    TRANSFERRED = "transferred"
    PROVIDER_FAILED = "provider_failed"
    MAX_DURATION = "max_duration"
    IDLE_TIMEOUT = "idle_timeout"
    SERVER_SHUTDOWN = "server_shutdown"
    LEG_TIMEOUT = "leg_timeout"  # the phone leg went silent: no audio, no confirmations


class CallPhase(str, enum.Enum):
    """Where the call is in its life; what the bridge accepts follows from it."""

    CONNECTING = "connecting"  # the provider session is opening: caller audio and keys are held
    LIVE = "live"  # caller and agent talk
    FINISHING = "finishing"  # a hang-up or transfer waits for the agent's last words to play
    PROMPTING = "prompting"  # a pre-rendered prompt plays, then the call ends; the provider is not heard
    ENDED = "ended"


@dataclass(frozen=True)
class BridgeOptions:
    playout_lead_ms: int = 200
    max_call_seconds: float = 3600.0
    idle_timeout_seconds: float = 30.0
    tool_timeout_seconds: float = 10.0
    greeting: str | None = None
    speak_first: bool = False  # ask for a response at once even without a greeting text (scripted engines)
    transfer_allowlist: tuple[str, ...] = ()
    goodbye_wait_seconds: float = 15.0
    leg_timeout_seconds: float = 10.0  # no caller audio and no playout confirmation this long: end the call
    playout_fallback_seconds: float = 1.0  # a confirming leg this late is paced by the clock instead
    # Turn-taking (telephony/turns.py): the bridge's own caller-speech detector and dead-air guard.
    vad: str = "silero"  # silero | energy | off
    min_interruption_ms: int = 250
    backchannel_ms: int = 800
    response_timeout_seconds: float = 4.0
    max_tool_rounds: int = 5
    filler_after_seconds: float = 2.0
    # Silero's windows are scored with other calls' on the loop (`speech_scorers.SileroBatch`),
    # waiting up to this long for company under load (0: what one pass of the loop brings)
    vad_batch_ms: int = 10


@dataclass
class CallStats:
    frames_in: int = 0
    frames_out: int = 0
    barge_ins: int = 0
    clear_latency_ms: list[float] = field(default_factory=list)
    truncates: list[tuple[str, int]] = field(default_factory=list)
    first_audio_ms: float | None = None
    dtmf: list[str] = field(default_factory=list)
    dtmf_dropped: int = 0  # keys over the call's rate (`KEYS_PER_S`): a flood, not a person
    audio_dropped_ms: float = 0.0  # caller audio past real time (`AUDIO_RATE`, `AUDIO_BURST_S`): a flood
    tool_calls: list[str] = field(default_factory=list)
    provider_errors: int = 0
    reconnects: int = 0
    transcript: list[tuple[str, str]] = field(default_factory=list)


DtmfHook = Callable[[str], Awaitable[None] | None]
