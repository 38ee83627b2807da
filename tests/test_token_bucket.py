"""`TokenBucket`: the burst, the refill at the rate, the cap, and when a bucket may be forgotten."""

from __future__ import annotations

from telephony_agent.telephony.token_bucket import TokenBucket


def test_a_burst_then_the_rate_never_more_than_the_burst() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(100.05) is False  # half a token
    assert bucket.take(100.1) is True  # a whole one: 0.1 s at 10 a second
    assert [bucket.take(1000.0) for _ in range(7)] == [True] * 5 + [False] * 2  # capped at the burst


def test_a_refused_take_costs_nothing() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.take(0.0) is True
    for t in (0.2, 0.4, 0.6, 0.8):
        assert bucket.take(t) is False  # asking again and again does not push the refill back
    assert bucket.take(1.0) is True


def test_full_by_says_when_a_bucket_has_refilled() -> None:
    bucket = TokenBucket(rate_per_s=20.0, burst=40)
    assert bucket.full_by(0.0)  # never taken from
    bucket.take(10.0)
    assert not bucket.full_by(11.0) and bucket.full_by(12.0)  # 40 tokens at 20 a second: 2 s


def test_amounts_are_taken_whole_or_not_at_all() -> None:
    """The bridge's audio bucket counts bytes: a frame passes whole or not at all."""
    bucket = TokenBucket(rate_per_s=8000.0, burst=400.0)  # mu-law bytes: 8,000 a second, 50 ms of burst
    assert [bucket.take(0.0, 160) for _ in range(3)] == [True, True, False]  # 80 left, not a frame
    assert bucket.take(0.01, 160) is True  # 80 + 80 refilled in 10 ms
    assert bucket.take(0.01, 1) is False
    assert bucket.take(10.0, 400) is True and bucket.take(10.0, 1) is False  # capped at the burst
