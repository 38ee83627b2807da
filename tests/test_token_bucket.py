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
