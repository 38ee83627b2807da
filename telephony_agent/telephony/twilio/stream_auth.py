"""Who may open a Media Stream: per-call, single-use, expiring stream credentials. Sans-I/O.

The signed voice webhook is the only thing that creates a call. Answering it, we issue a token
bound to that call sid (HMAC, expiring in `ttl` seconds) and put it in a per-call stream URL,
`<media path>/<call sid>/<token>`. Twilio dials that URL and signs it in the upgrade's
`X-Twilio-Signature`, so a captured signature is only good for that one call too. The token is
redeemed once: a ledger of used token ids (bounded, forgotten when they expire) refuses a
replay, even after the call ended. The bare media path still accepts a token passed as the
`token` custom parameter of `start` (TwiML from before per-call URLs), never a signature alone.

Nothing here reads a clock or does I/O: callers pass `now` (wall-clock seconds, as token
expiries are) and randomness (`nonce`).
"""

from __future__ import annotations

import enum
import heapq
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from telephony_agent.telephony.twilio.signature import (
    check_stream_token,
    make_stream_token,
)

__all__ = [
    "NONCE_BYTES",
    "SHARED_LEDGER_ENV",
    "TOKEN_PARAM",
    "StreamAuthority",
    "StreamRefusal",
    "UsedTokens",
    "parse_per_call_path",
    "per_call_path",
    "redact_start",
]

TOKEN_PARAM = "token"
"""The `<Parameter>` name that carries a token on the bare media path (older TwiML)."""
NONCE_BYTES = 12
SHARED_LEDGER_ENV = "AGENT_INTERNAL_TOKEN_LEDGER_DIR"
"""Set by `serve`'s supervisor: a directory its workers share for spent token ids."""
DEFAULT_MAX_USED = 65_536
_SEGMENT = re.compile(r"[A-Za-z0-9._~%-]{1,200}")


class StreamRefusal(str, enum.Enum):
    """Why a stream was refused; the value is what the close reason or 403 body says."""

    NO_TOKEN = "no stream token"
    INVALID_TOKEN = "stream token invalid, expired or for another call"
    TOKEN_REUSED = "stream token already used"
    LEDGER_FULL = "too many streams opening; try again"
    BAD_SIGNATURE = "X-Twilio-Signature does not match"
    CALL_MISMATCH = "start callSid differs from the stream URL's call"
    DUPLICATE_STREAM = "this call already has a stream"
    NO_AUTH_TOKEN = "server has no TWILIO_AUTH_TOKEN"


@dataclass
class UsedTokens:
    """Token ids already redeemed, each kept until its token expires; at most `max_entries`.

    Full of unexpired ids (only possible with that many signed webhooks within one TTL), it
    refuses new ones rather than forget a used one: failing closed keeps replays out.
    """

    max_entries: int = DEFAULT_MAX_USED
    _ids: set[str] = field(default_factory=set)
    _by_expiry: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._ids)

    def _purge(self, now: float) -> None:
        heap = self._by_expiry
        while heap and heap[0][0] <= now:
            _, token_id = heapq.heappop(heap)
            self._ids.discard(token_id)

    def consume(self, token_id: str, expiry: int, now: float) -> StreamRefusal | None:
        """Mark `token_id` used; None if it was fresh, else why not."""
        self._purge(now)
        if token_id in self._ids:
            return StreamRefusal.TOKEN_REUSED
        if len(self._ids) >= self.max_entries:
            return StreamRefusal.LEDGER_FULL
        self._ids.add(token_id)
        heapq.heappush(self._by_expiry, (expiry, token_id))
        return None


@dataclass
class StreamAuthority:
    """Issues and redeems stream tokens for one server process."""

    secret: bytes
    ttl_seconds: int
    used: UsedTokens = field(default_factory=UsedTokens)
    shared_claim: Callable[[str, int], bool] | None = None
    """With several worker processes: claims a token id across all of them (True: first claim)."""

    def issue(self, call_sid: str, now: float, nonce: bytes) -> str:
        """A fresh token for `call_sid` (from its signed webhook); `nonce`: NONCE_BYTES random bytes."""
        return make_stream_token(call_sid, self.secret, now, self.ttl_seconds, nonce)

    def redeem(self, token: object, call_sid: str, now: float) -> StreamRefusal | None:
        """Check `token` against `call_sid` and spend it. None means authorised (exactly once)."""
        if token is None or token == "":
            return StreamRefusal.NO_TOKEN
        claim = check_stream_token(token, call_sid, self.secret, now)
        if claim is None:
            return StreamRefusal.INVALID_TOKEN
        refusal = self.used.consume(claim.token_id, claim.expiry, now)
        if refusal is None and self.shared_claim is not None and not self.shared_claim(claim.token_id, claim.expiry):
            return StreamRefusal.TOKEN_REUSED
        return refusal


def per_call_path(media_path: str, call_sid: str, token: str) -> str:
    """`<media path>/<call sid>/<token>`: the stream URL path the webhook hands Twilio."""
    return f"{media_path.rstrip('/')}/{quote(call_sid, safe='')}/{token}"


def parse_per_call_path(call_segment: str, token_segment: str) -> tuple[str, str] | None:
    """(call sid, token) from the two path segments after the media path, or None if malformed."""
    if not _SEGMENT.fullmatch(call_segment) or not _SEGMENT.fullmatch(token_segment):
        return None
    call_sid = unquote(call_segment, errors="strict") if "%" in call_segment else call_segment
    return (call_sid, token_segment) if call_sid else None


def redact_start(start_frame: dict[str, object]) -> dict[str, object]:
    """A copy of a parsed `start` frame with the token parameter blanked, for recordings."""
    start = start_frame.get("start")
    if not isinstance(start, dict):
        return start_frame
    params = start.get("customParameters")
    if not isinstance(params, dict) or TOKEN_PARAM not in params:
        return start_frame
    return {**start_frame, "start": {**start, "customParameters": {**params, TOKEN_PARAM: "[redacted]"}}}
