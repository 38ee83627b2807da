"""Call recording: every message of both legs as JSON Lines, plus a two-channel WAV.

See `format` for the file format (versioned), `recorder.CallRecorder` for writing,
`analysis.summarize` / `analysis.compare` for reading behaviour back out of a recording.
"""

from telephony_agent.recording.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Entry,
    Recording,
    RecordingError,
    read_recording,
)
from telephony_agent.recording.recorder import CallRecorder

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CallRecorder",
    "Entry",
    "Recording",
    "RecordingError",
    "read_recording",
]
