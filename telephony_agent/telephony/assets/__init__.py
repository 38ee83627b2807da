"""Pre-rendered prompts (mu-law 8 kHz, made by scripts/render_prompts.sh): spoken when no model can speak.

The shipped files are mu-law; an A-law leg gets them converted once (cached), so a prompt never
waits on a codec in the middle of a failing call.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from telephony_agent.telephony.leg import AudioLaw
from telephony_codecs import Transcoder

__all__ = ["prompt_audio", "prompt_ulaw"]


@cache
def prompt_ulaw(name: str) -> bytes:
    """The shipped mu-law 8 kHz prompt `name` (apology, idle, time_limit, shutdown, filler)."""
    return (resources.files(__package__) / f"{name}.ulaw").read_bytes()


@cache
def prompt_audio(name: str, law: AudioLaw) -> bytes:
    """Prompt `name` in `law` at 8 kHz, as a phone leg in that law plays it."""
    ulaw = prompt_ulaw(name)
    if law is AudioLaw.PCMU:
        return ulaw
    converter = Transcoder.g711_to_g711(AudioLaw.PCMU.value, law.value)
    return converter.process(ulaw) + converter.flush()
