"""Telephony voice agent: phone calls bridged to realtime speech-to-speech models."""

__version__ = "0.1.0"
