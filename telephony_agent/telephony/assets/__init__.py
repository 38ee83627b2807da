"""Pre-rendered prompts (mu-law 8 kHz, made by scripts/render_prompts.sh): spoken when no model can speak."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=None)
def prompt_ulaw(name: str) -> bytes:
    return (resources.files(__package__) / f"{name}.ulaw").read_bytes()
