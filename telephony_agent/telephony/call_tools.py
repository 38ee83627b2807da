"""Built-in telephony tools every call offers the model: `end_call` and `transfer_call`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from telephony_agent.realtime.tools import ToolResult

if TYPE_CHECKING:
    from telephony_agent.telephony.bridge import CallBridge


def register_call_tools(bridge: "CallBridge") -> None:
    async def end_call(reason: str = "") -> ToolResult:
        """Hang up the call. Say goodbye first: the call ends once the caller has heard it."""
        bridge.log.info("model ended the call (%s)", reason or "no reason given")
        await bridge.hangup_after_playout()
        return ToolResult({"ok": True, "status": "the call will end after your goodbye"}, respond=False)

    targets = transfer_targets(bridge.options.transfer_allowlist)

    async def transfer_call(target: str) -> ToolResult | dict[str, object]:
        """Transfer the caller to another phone number or department. Tell the caller first."""
        destination = targets.get(target.strip()) or targets.get(target.strip().lower())
        if destination is None:
            return {"ok": False, "error": f"transfer target {target!r} is not allowed", "allowed_targets": list(targets)}
        bridge.log.info("model transferred the call to %s", target)
        await bridge.transfer_after_playout(destination)
        return ToolResult({"ok": True, "status": f"transferring to {target}"}, respond=False)

    if targets:
        transfer_call.__doc__ = f"{transfer_call.__doc__} Allowed targets: {', '.join(targets)}."
    bridge.tools.register(end_call)
    bridge.tools.register(transfer_call)


def transfer_targets(allowlist: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`AGENT_TRANSFER_ALLOWLIST` entries: `name=destination` (e.g. `sales=+15551230000`) or a
    bare destination. Returns name -> destination; names match case-insensitively.

    An entry is `name=...` only when the name is a plain word (letters, digits, `_`, `-`, `.`):
    `sip:desk@pbx.example.com;transport=tls` is one bare destination, not the name
    `sip:desk@pbx.example.com;transport` for the destination `tls`.
    """
    targets: dict[str, str] = {}
    for entry in allowlist:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, destination = entry.partition("=")
        if sep and _PLAIN_NAME.fullmatch(name.strip()) and destination.strip():
            targets[name.strip().lower()] = destination.strip()
        else:
            targets[entry] = entry
    return targets


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
