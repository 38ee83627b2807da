"""Shared helpers for the local-engine tests: caller speech through mu-law 8 kHz, answer audio to 16 kHz."""

from __future__ import annotations

import numpy as np

from telephony_agent.realtime.providers.local.asr import to_asr_rate
from telephony_agent.testing.speech import speech_ulaw
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

# eSpeak's "f3" variant at a calm pace is what PocketSphinx's model recognises best; the default
# male voice at 160 wpm loses "s"-heavy words (sales, support) on 8 kHz audio.
CALLER_VOICE = {"voice": "en-us+f3", "speed": 140}


def caller_ulaw(text: str, lead_ms: int = 300, tail_ms: int = 800) -> bytes:
    """`text` spoken by eSpeak NG at 8 kHz, mu-law encoded, with silence around it (0xFF is mu-law zero)."""
    speech = speech_ulaw(text, **CALLER_VOICE)
    return b"\xff" * (8 * lead_ms) + speech + b"\xff" * (8 * tail_ms)


def caller_pcm8k(text: str) -> bytes:
    """`text` as PCM16 8 kHz after a mu-law round trip."""
    return ulaw_to_pcm16(speech_ulaw(text, **CALLER_VOICE))


def rms_dbfs(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return 10 * np.log10(np.mean(x**2) / 32768**2 + 1e-12)


__all__ = ["CALLER_VOICE", "caller_pcm8k", "caller_ulaw", "pcm16_to_ulaw", "rms_dbfs", "to_asr_rate", "ulaw_to_pcm16"]
