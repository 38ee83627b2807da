"""Real caller speech for tests: eSpeak NG through sox, cached per text.

`sox -D` (no dither) keeps the output byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

_CACHE = Path(os.environ.get("TEST_SPEECH_CACHE", Path(tempfile.gettempdir()) / "telephony-agent-speech"))


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: run `make system-deps`")
    return path


def scratch_path(out: Path, part: str) -> Path:
    """A file next to `out` that only this process writes: test workers (pytest-xdist, and the
    3.11 and 3.13 runs side by side) may make the same cached clip at the same time, and each
    renames its own finished file into place."""
    return out.with_name(f"{out.stem}.{os.getpid()}.{part}.wav")


def speech_wav(text: str, rate: int = 8000, voice: str = "en-us", speed: int = 160) -> Path:
    """A mono PCM16 WAV of `text` spoken by eSpeak NG, resampled by sox to `rate`."""
    key = hashlib.sha1(f"{text}|{rate}|{voice}|{speed}".encode()).hexdigest()[:16]
    out = _CACHE / f"{key}.wav"
    if out.exists():
        return out
    _CACHE.mkdir(parents=True, exist_ok=True)
    raw = scratch_path(out, "raw")
    subprocess.run(
        [_require("espeak-ng"), "-v", voice, "-s", str(speed), "-w", str(raw), text],
        check=True, capture_output=True, timeout=30,
    )
    tmp = scratch_path(out, "tmp")
    subprocess.run(
        [_require("sox"), "-D", str(raw), "-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", str(tmp)],
        check=True, capture_output=True, timeout=30,
    )
    raw.unlink(missing_ok=True)
    tmp.replace(out)
    return out


def speech_pcm16(text: str, rate: int = 8000, **kwargs: object) -> bytes:
    """PCM16 little-endian mono samples of `text` at `rate`."""
    with wave.open(str(speech_wav(text, rate, **kwargs)), "rb") as wav:  # type: ignore[arg-type]
        return wav.readframes(wav.getnframes())


def speech_ulaw(text: str, voice: str = "en-us", speed: int = 160) -> bytes:
    """`text` as Twilio carries a caller: mu-law 8 kHz."""
    from telephony_codecs import pcm16_to_ulaw

    return pcm16_to_ulaw(speech_pcm16(text, 8000, voice=voice, speed=speed))
