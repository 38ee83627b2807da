"""Fake Twilio for the tests: the package's softphone (`telephony_agent.softphone`) under the
names the tests use. See that module for what it does and records."""

from telephony_agent.softphone import (  # noqa: F401
    BYTES_PER_SECOND,
    FRAME_BYTES,
    FRAME_SECONDS,
    PLAYOUT_TICK,
    SILENCE,
    FakeTwilioCall,
    FakeTwilioError,
    HandshakeRejected,
    HeardChunk,
    MarkRecord,
    Received,
    Softphone,
    Utterance,
    Violation,
    pcm16_to_ulaw,
    random_sid,
    ulaw_to_pcm16,
)

__all__ = [
    "FakeTwilioCall",
    "FakeTwilioError",
    "HandshakeRejected",
    "HeardChunk",
    "MarkRecord",
    "Received",
    "Softphone",
    "Utterance",
    "Violation",
    "random_sid",
    "ulaw_to_pcm16",
    "pcm16_to_ulaw",
    "SILENCE",
]
