"""A token bucket on the caller's clock: how often a peer may ask for something, with a burst.

Sans-I/O: `take(now)` is given the time and reads no clock. The SIP UAS keeps one per source
address for new requests; the call bridge keeps one per call for the keys that reach the model,
and one for the caller's audio, in bytes (`take(now, len(frame))`), which is on every frame's
path and so compiled (`native.MODULES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TokenBucket"]


@dataclass
class TokenBucket:
    """`burst` tokens to start with, `rate_per_s` more each second, never more than `burst`."""

    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    stamp: float | None = None  # when tokens were last counted; None: never taken from

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float, amount: float = 1.0) -> bool:
        """`amount` tokens if there are as many (True), else False and nothing taken."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < amount - 1e-9:  # tokens refilled in steps of float seconds may add up to 0.999...
            return False
        self.tokens = max(0.0, self.tokens - amount)
        return True

    def full_by(self, now: float) -> bool:
        """True if it has filled up again by `now` (a bucket that could be forgotten)."""
        return self.stamp is None or now - self.stamp >= self.burst / max(self.rate_per_s, 1e-6)
