"""Telephony codecs: G.711 (mu-law and A-law) and a chunk-exact streaming resampler.

Sans-I/O building blocks for the audio path (docs/architecture.md, "Audio path"): decode/encode G.711, resample PCM16
between the phone's 8 kHz and the models' 16/24 kHz with state carried across 20 ms chunks, and
cut byte streams into fixed frames.
"""

from .framing import Framer
from .g711 import alaw_to_pcm16, pcm16_to_alaw, pcm16_to_ulaw, ulaw_to_pcm16
from .resample import RATES, StreamResampler
from .transcode import G711_LAWS, Transcoder

__all__ = [
    "G711_LAWS",
    "RATES",
    "Framer",
    "StreamResampler",
    "Transcoder",
    "alaw_to_pcm16",
    "pcm16_to_alaw",
    "pcm16_to_ulaw",
    "ulaw_to_pcm16",
]
