"""Built-in telephony tools every call offers the model: `end_call` and `transfer_call`.

They work against `CallControl`, the two things a call can be asked to do once the caller has
heard what is queued; the bridge implements it and registers these tools. Nothing here imports
the bridge, so there is no import cycle between the two.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from telephony_agent.realtime.tools import ToolRegistry, ToolResult

__all__ = ["CallControl", "register_call_tools", "transfer_targets"]


class CallControl(Protocol):
    """What the call tools need from a live call."""

    async def hangup_after_playout(self) -> None:
        """Hang up once the caller has heard everything queued (the goodbye)."""
        ...

    async def transfer_after_playout(self, target: str) -> None:
        """Transfer to `target` once the caller has heard everything queued."""
        ...


def register_call_tools(
    tools: ToolRegistry,
    call: CallControl,
    transfer_allowlist: Sequence[str],
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """Register `end_call` and `transfer_call` (to the allowlisted targets) for one call."""

    async def end_call(reason: str = "") -> ToolResult:
        """Hang up the call. Say goodbye first: the call ends once the caller has heard it."""
        log.info("model ended the call (%s)", reason or "no reason given")
        await call.hangup_after_playout()
        return ToolResult({"ok": True, "status": "the call will end after your goodbye"}, respond=False)

    targets = transfer_targets(tuple(transfer_allowlist))

    async def transfer_call(target: str) -> ToolResult | dict[str, object]:
        """Transfer the caller to another phone number or department. Tell the caller first."""
        destination = targets.get(target.strip()) or targets.get(target.strip().lower())
        if destination is None:
            return {"ok": False, "error": f"transfer target {target!r} is not allowed", "allowed_targets": list(targets)}
        log.info("model transferred the call to %s", target)
        await call.transfer_after_playout(destination)
        return ToolResult({"ok": True, "status": f"transferring to {target}"}, respond=False)

    if targets:
        transfer_call.__doc__ = f"{transfer_call.__doc__} Allowed targets: {', '.join(targets)}."
    tools.register(end_call)
    tools.register(transfer_call)


def transfer_targets(allowlist: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`AGENT_TRANSFER_ALLOWLIST` entries: `name=destination` (e.g. `sales=+15551230000`) or a
    bare destination. Returns name -> destination; names match case-insensitively."""
    targets: dict[str, str] = {}
    for entry in allowlist:
        name, sep, destination = entry.partition("=")
        if sep:
            targets[name.strip().lower()] = destination.strip()
        else:
            targets[entry.strip()] = entry.strip()
    return targets
