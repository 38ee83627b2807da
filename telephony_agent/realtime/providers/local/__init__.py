"""The offline local engine: PocketSphinx + a dialogue script + eSpeak NG, no key, no network.

`LocalRealtimeModel(script_path=None, voice=None)` is the embedded default provider
(`AGENT_PROVIDER=local`, or `auto` with no provider key). Everything it needs ships in PyPI
wheels: the `pocketsphinx` model, the `espeakng-loader` library and voices, and the demo script.
"""

from telephony_agent.realtime.providers.local.asr import Recognition, RecognitionService, Recognizer
from telephony_agent.realtime.providers.local.dialogue import Intent, Script, ToolCall, load_script, parse_script
from telephony_agent.realtime.providers.local.session import (
    OUTPUT_FORMAT,
    LocalRealtimeModel,
    LocalRealtimeSession,
)
from telephony_agent.realtime.providers.local.vad import EnergyVad, VadEvent, VadSettings

__all__ = [
    "OUTPUT_FORMAT",
    "EnergyVad",
    "Intent",
    "LocalRealtimeModel",
    "LocalRealtimeSession",
    "Recognition",
    "RecognitionService",
    "Recognizer",
    "Script",
    "ToolCall",
    "VadEvent",
    "VadSettings",
    "load_script",
    "parse_script",
]
