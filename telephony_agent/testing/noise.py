"""Non-speech caller sounds, made with sox and cached: the noise set of the turn-taking tests and
`bench/turns.py`. `-R` seeds sox's noise generators the same every run and `-D` leaves out
dither, so every run tests the same sounds: without `-R` each fresh cache drew new noise, and one
draw of the low cough in twenty made Silero pause (a turn test failed in CI that way).

Each is PCM16 mono at 8 kHz: things a phone line carries that must not interrupt the agent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

from telephony_agent.testing.speech import scratch_path

__all__ = ["NAMES", "RECIPES", "noise_pcm16"]

_CACHE = Path(os.environ.get("TEST_SPEECH_CACHE", Path(tempfile.gettempdir()) / "telephony-agent-speech"))

# name -> sox effects after `sox -R -D -n -r 8000 -b 16 -c 1 OUT`
RECIPES: dict[str, str] = {
    # a cough: a short band-limited noise burst, sharp attack, fast decay
    "cough": "synth 0.35 pinknoise band 700 500 fade q 0.01 0.35 0.25 gain -n -6",
    "cough_low": "synth 0.5 brownnoise band 400 300 fade q 0.02 0.5 0.4 gain -n -4",
    # a 150 ms click / buzz (square wave)
    "click": "synth 0.15 square 700 fade q 0.002 0.15 0.01 gain -n -6",
    "white_burst": "synth 0.4 whitenoise gain -n -10",
    "door_slam": "synth 0.6 brownnoise lowpass 250 fade q 0.003 0.6 0.58 gain -n -3",
    # steady line noise: hiss plus mains hum, 2 s
    "line_noise": "synth 2 whitenoise synth 2 sine mix 60 gain -n -30",
    "hum": "synth 2 sine 50 gain -n -20",
}


def _sox(args: list[str]) -> None:
    """`sox -R -D ARGS`: every clip made the same way on every run (see above)."""
    sox = shutil.which("sox")
    if sox is None:
        raise RuntimeError("sox is not installed: run `make system-deps`")
    subprocess.run([sox, "-R", "-D", *args], check=True, capture_output=True, timeout=30)


def _read(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        return wav.readframes(wav.getnframes())


def noise_pcm16(name: str) -> bytes:
    """PCM16 8 kHz of one named sound (see `RECIPES`, plus `keyboard`)."""
    key = hashlib.sha1(f"{name}|{RECIPES.get(name)}|R".encode()).hexdigest()[:16]
    out = _CACHE / f"noise-{name}-{key}.wav"
    if not out.exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        tmp = scratch_path(out, "tmp")
        if name == "keyboard":
            # eight key clicks, 90-170 ms apart
            parts = [scratch_path(out, f"k{i}") for i in range(8)]
            for i, part in enumerate(parts):
                _sox(["-n", "-r", "8000", "-b", "16", "-c", "1", str(part), "synth", "0.012", "whitenoise",
                      "highpass", "1500", "fade", "q", "0.001", "0.012", "0.01", "gain", "-n", "-14",
                      "pad", "0", f"{0.09 + 0.01 * ((i * 7) % 9):.2f}"])
            _sox([*map(str, parts), str(tmp)])
            for part in parts:
                part.unlink(missing_ok=True)
        else:
            _sox(["-n", "-r", "8000", "-b", "16", "-c", "1", str(tmp), *RECIPES[name].split()])
        tmp.replace(out)
    return _read(out)


NAMES = (*RECIPES, "keyboard")
