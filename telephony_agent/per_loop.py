"""One object per event loop: what every call on a loop shares (a pacing timer, a write batch)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One `T` per event loop, made by `factory(loop)` when first asked for.

    The loop is a weak key, so an entry goes with its loop, unless the entry holds its loop
    itself (a timer does): such an entry must be `drop`ped when its last user is done, or it
    keeps the loop alive for good."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T]) -> None:
        self._factory = factory
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get(self, loop: asyncio.AbstractEventLoop) -> T:
        value = self._by_loop.get(loop)
        if value is None:
            value = self._by_loop[loop] = self._factory(loop)
        return value

    def drop(self, loop: asyncio.AbstractEventLoop, value: T) -> None:
        """Forget `value`, if it is still `loop`'s entry."""
        if self._by_loop.get(loop) is value:
            del self._by_loop[loop]

    def __contains__(self, loop: asyncio.AbstractEventLoop) -> bool:
        return loop in self._by_loop
