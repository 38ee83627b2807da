"""Telephony voice agent: phone calls bridged to realtime speech-to-speech models."""

from telephony_agent import native

__version__ = "0.1.0"

native.enable()  # the compiled hot modules, if built from this very source (see native.py)
