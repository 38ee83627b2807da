"""Which asyncio event loop the server runs on (`AGENT_EVENT_LOOP`).

`uvloop` (MIT/Apache-2.0, libuv underneath) runs the same asyncio code with less CPU per socket
operation; the standard loop stays fully supported. `auto` takes uvloop when it can be imported
(it is a dependency everywhere but Windows) and the standard loop otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from telephony_agent.settings import EventLoopKind, SettingsError

__all__ = ["EventLoopUnavailable", "loop_factory", "run"]

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class EventLoopUnavailable(SettingsError):
    """`AGENT_EVENT_LOOP=uvloop` on a machine without uvloop."""


def loop_factory(kind: EventLoopKind) -> tuple[str, LoopFactory]:
    """(the loop's name for the log, a factory for it). Raises `EventLoopUnavailable`."""
    if kind is not EventLoopKind.ASYNCIO:
        try:
            import uvloop
        except ImportError as exc:
            if kind is EventLoopKind.UVLOOP:
                raise EventLoopUnavailable(
                    f"AGENT_EVENT_LOOP=uvloop but uvloop cannot be imported ({exc}): "
                    "install it (`pip install uvloop`; not available on Windows) or set AGENT_EVENT_LOOP=auto or asyncio"
                ) from None
        else:
            return f"uvloop {uvloop.__version__}", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], factory: LoopFactory) -> T:
    """`asyncio.run(main)` on a loop from `factory` (asyncio.run's own `loop_factory` is 3.12+)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
