"""What the simulated callers and the fake provider's agent say: real speech (eSpeak NG through
sox, `sox -D`: reproducible), made once at start-up and cut into 20 ms mu-law frames ready to be
stamped.

A talk spurt is the start of one phrase, from its first loud frame, cut at a length the caller
picks (1.2-1.6 s by default): long enough for the server to confirm a barge-in (it waits
`backchannel_ms`, 800 ms, so "mhm" does not interrupt), short like a real "wait, no...".
"""

from __future__ import annotations

import numpy as np

from bench.loadgen.common import FRAME_BYTES, speech_frames

__all__ = ["AGENT_VOICE", "PHRASES", "AgentVoice", "Spurts", "trimmed"]

PHRASES = (
    "Sorry, can I ask you something?",
    "Wait, that is not what I meant.",
    "Hold on, I have a question about that.",
    "No, I need to change my booking.",
    "Actually, could you repeat that please?",
    "Excuse me, I am calling about my order.",
    "Okay, and what time do you open tomorrow?",
)
AGENT_VOICE = "en-us+f3"  # not a caller's voice
LOUD_DBFS = -40.0  # a frame louder than this is speech for trimming


def trimmed(ulaw: bytes) -> bytes:
    """`ulaw` from its first loud 20 ms frame to its last (eSpeak pads both ends with silence)."""
    from telephony_codecs import ulaw_to_pcm16

    x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
    n = x.size // FRAME_BYTES
    db = 10 * np.log10(np.mean(x[: n * FRAME_BYTES].reshape(n, FRAME_BYTES) ** 2, axis=1) / 32768.0**2 + 1e-12)
    loud = np.nonzero(db > LOUD_DBFS)[0]
    if loud.size == 0:
        raise ValueError("no speech in the phrase")
    return ulaw[int(loud[0]) * FRAME_BYTES : (int(loud[-1]) + 1) * FRAME_BYTES]


class Spurts:
    """The phrases as frames (header bits cleared); `spurt(i, seconds)`: phrase i's first `seconds`."""

    def __init__(self, phrases: tuple[str, ...] = PHRASES) -> None:
        from telephony_agent.testing.speech import speech_ulaw

        self.frames = [speech_frames(trimmed(speech_ulaw(p))) for p in phrases]

    def __len__(self) -> int:
        return len(self.frames)

    def spurt(self, i: int, seconds: float) -> list[bytes]:
        frames = self.frames[i % len(self.frames)]
        return frames[: max(1, min(len(frames), round(seconds / 0.020)))]


class AgentVoice:
    """The agent's answers: a few sentences of speech, pauses between them kept, looped; an
    answer starts where `start` says, so calls do not all say the same word at once."""

    def __init__(self) -> None:
        from telephony_agent.testing.speech import speech_ulaw
        from telephony_agent.testing.turn_sim import AGENT_TEXT

        self.frames = speech_frames(trimmed(speech_ulaw(AGENT_TEXT, voice=AGENT_VOICE)))

    def frame(self, start: int, i: int) -> bytes:
        """Frame `i` of an answer that starts at frame `start` of the speech."""
        return self.frames[(start + i) % len(self.frames)]
