"""Every message our providers send is checked against the official SDKs' types by the fake servers.

The fake servers call `record()` on a message that fails validation; an autouse fixture in
conftest.py fails the test that produced it, so conformance holds across the whole suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VIOLATIONS: list[Violation] = []
CHECKED: dict[str, int] = {"openai": 0, "gemini": 0}


@dataclass
class Violation:
    provider: str
    message: Any
    error: str


def record(provider: str, message: Any, error: str) -> None:
    VIOLATIONS.append(Violation(provider, message, error))


def checked(provider: str) -> None:
    CHECKED[provider] = CHECKED.get(provider, 0) + 1
