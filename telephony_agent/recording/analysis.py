"""Behaviour read back out of a recording, and the differences between two recordings.

`summarize()` replays Media Streams playout (Twilio's, and the browser softphone's) over the
phone leg's recorded outbound frames (8 bytes per ms, in order, from arrival or when the queue
frees; `clear` drops what is queued) to find what the caller heard, turn by turn. Tool calls and truncates come from the provider leg, or from the
trailer (the bridge's own account) when the provider had no wire (the local engine).
"""

from __future__ import annotations

import binascii
from dataclasses import asdict, dataclass, field
from typing import Any

from telephony_agent.recording.format import IN, LEG_PHONE, LEG_PROVIDER, OUT, Recording

TURN_GAP_S = 0.35  # playback pauses longer than this start a new agent turn


@dataclass
class Turn:
    start: float  # seconds after the phone leg's `start`
    heard_ms: float = 0.0
    end: float = 0.0
    cleared: bool = False


@dataclass
class CallSummary:
    duration: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    truncates: list[int] = field(default_factory=list)
    tool_calls: list[str] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)
    ended_by: str | None = None  # "caller" (sent stop), "agent" (closed the stream) or None
    outcome: str | None = None
    first_audio: float | None = None
    caller_media: int = 0

    @property
    def heard_ms(self) -> float:
        return sum(t.heard_ms for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["heard_ms"] = round(self.heard_ms, 1)
        return out


def _payload_bytes(entry_msg: dict[str, Any], elided: int | None) -> int:
    if elided is not None:
        return elided
    media = entry_msg.get("media")
    payload = media.get("payload") if isinstance(media, dict) else None
    if not isinstance(payload, str):
        return 0
    try:
        return len(binascii.a2b_base64(payload))
    except (binascii.Error, ValueError):
        return 0


def summarize(rec: Recording) -> CallSummary:
    s = CallSummary()
    start = next((e.t for e in rec.entries if e.leg == LEG_PHONE and e.dir == IN and e.event == "start"), None)
    if start is None:
        start = rec.entries[0].t if rec.entries else 0.0
    end_of_call = rec.duration
    phone_last = [e.t for e in rec.entries if e.leg == LEG_PHONE]
    if phone_last:
        end_of_call = max(phone_last)
    s.duration = round(end_of_call - start, 3)
    queue_end = -1.0
    turn: Turn | None = None
    for e in rec.entries:
        if e.leg == LEG_PHONE and e.msg is not None:
            ev = e.event
            t = e.t - start
            if e.dir == OUT and ev == "media":
                n = _payload_bytes(e.msg, e.elided)
                if n == 0:
                    continue
                begin = max(t, queue_end)
                if turn is None or begin - queue_end > TURN_GAP_S:
                    turn = Turn(round(begin, 3))
                    s.turns.append(turn)
                queue_end = begin + n / 8000
                turn.heard_ms += n / 8
                turn.end = queue_end
            elif e.dir == OUT and ev == "clear":
                s.clears.append(round(t, 3))
                if turn is not None and queue_end > t:
                    turn.heard_ms -= (queue_end - t) * 1000
                    turn.end = t
                    turn.cleared = True
                    queue_end = t
                turn = None
            elif e.dir == IN and ev == "media":
                s.caller_media += 1
            elif e.dir == IN and ev == "dtmf":
                digit = (e.msg.get("dtmf") or {}).get("digit")
                if isinstance(digit, str):
                    s.dtmf.append(digit)
            elif e.dir == IN and ev == "stop":
                s.ended_by = "caller"
        elif e.leg == LEG_PROVIDER and e.msg is not None:
            kind = e.msg.get("type")
            if e.dir == OUT and kind == "conversation.item.truncate":
                end_ms = e.msg.get("audio_end_ms")
                if isinstance(end_ms, int):
                    s.truncates.append(end_ms)
            elif e.dir == IN and kind == "response.function_call_arguments.done":
                name = e.msg.get("name")
                if isinstance(name, str):
                    s.tool_calls.append(name)
            elif e.dir == IN and isinstance(e.msg.get("toolCall"), dict):
                for call in e.msg["toolCall"].get("functionCalls") or []:
                    if isinstance(call, dict) and isinstance(call.get("name"), str):
                        s.tool_calls.append(call["name"])
    end_rel = end_of_call - start
    if s.turns and queue_end > end_rel:  # the call ended with audio still queued at the phone
        last = s.turns[-1]
        last.heard_ms -= (queue_end - end_rel) * 1000
        last.end = end_rel
    for done in s.turns:
        done.heard_ms = round(max(0.0, done.heard_ms), 1)
        done.end = round(done.end, 3)
    s.turns = [done for done in s.turns if done.heard_ms > 0]
    if s.turns:
        s.first_audio = s.turns[0].start
    trailer = rec.trailer or {}
    s.outcome = trailer.get("outcome")
    stats = trailer.get("stats") or {}
    if not s.tool_calls and stats.get("tool_calls"):
        s.tool_calls = [str(x) for x in stats["tool_calls"]]
    if not s.truncates and stats.get("truncates") and not rec.leg(LEG_PROVIDER):
        s.truncates = [int(x[1]) for x in stats["truncates"]]
    if s.outcome is not None:
        # Twilio sends `stop` for a REST hang-up too: the bridge's outcome says who ended it.
        s.ended_by = "caller" if s.outcome == "caller_hangup" else "agent"
    elif s.ended_by is None and s.duration > 0:
        s.ended_by = "agent"
    return s


@dataclass(frozen=True)
class Tolerances:
    heard_ms: float = 200.0  # per turn, or `heard_fraction` of the turn if larger
    heard_fraction: float = 0.05
    timing_s: float = 0.6  # turn starts, clears, first audio
    truncate_ms: float = 200.0


def compare(expected: CallSummary, actual: CallSummary, tol: Tolerances = Tolerances()) -> list[str]:
    """Where `actual` behaves differently from `expected`, in words; empty if it matches."""
    diffs: list[str] = []
    if len(expected.turns) != len(actual.turns):
        diffs.append(
            f"agent turns: {len(actual.turns)} (recorded {len(expected.turns)}): heard "
            f"{[t.heard_ms for t in actual.turns]} ms vs {[t.heard_ms for t in expected.turns]} ms"
        )
    for i, (a, b) in enumerate(zip(expected.turns, actual.turns, strict=False), 1):
        limit = max(tol.heard_ms, tol.heard_fraction * a.heard_ms)
        if abs(a.heard_ms - b.heard_ms) > limit:
            diffs.append(f"turn {i}: caller heard {b.heard_ms:.0f} ms (recorded {a.heard_ms:.0f} ms, ±{limit:.0f})")
        if abs(a.start - b.start) > tol.timing_s:
            diffs.append(f"turn {i}: started at {b.start:.2f}s (recorded {a.start:.2f}s)")
        if a.cleared != b.cleared:
            diffs.append(f"turn {i}: {'cut by a clear' if b.cleared else 'played to the end'} (recorded otherwise)")
    if len(expected.clears) != len(actual.clears):
        diffs.append(f"clears: {len(actual.clears)} (recorded {len(expected.clears)})")
    else:
        for was, now in zip(expected.clears, actual.clears, strict=False):
            if abs(was - now) > tol.timing_s:
                diffs.append(f"clear at {now:.2f}s (recorded {was:.2f}s)")
    if len(expected.truncates) != len(actual.truncates):
        diffs.append(f"truncates: {actual.truncates} (recorded {expected.truncates})")
    else:
        for was_ms, now_ms in zip(expected.truncates, actual.truncates, strict=False):
            if abs(was_ms - now_ms) > tol.truncate_ms:
                diffs.append(f"truncate at {now_ms} ms (recorded {was_ms} ms, ±{tol.truncate_ms:.0f})")
    if expected.tool_calls != actual.tool_calls:
        diffs.append(f"tool calls: {actual.tool_calls} (recorded {expected.tool_calls})")
    if expected.dtmf != actual.dtmf:
        diffs.append(f"dtmf: {actual.dtmf} (recorded {expected.dtmf})")
    if expected.ended_by != actual.ended_by:
        diffs.append(f"call ended by the {actual.ended_by} (recorded: the {expected.ended_by})")
    if expected.outcome and actual.outcome and expected.outcome != actual.outcome:
        diffs.append(f"outcome: {actual.outcome} (recorded {expected.outcome})")
    if expected.first_audio is not None and actual.first_audio is not None:
        if abs(expected.first_audio - actual.first_audio) > tol.timing_s:
            diffs.append(f"first agent audio at {actual.first_audio:.2f}s (recorded {expected.first_audio:.2f}s)")
    return diffs
