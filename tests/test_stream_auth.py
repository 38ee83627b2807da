"""Stream credentials (sans-I/O): per-call, single-use, expiring; the used-token ledger is bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from telephony_agent.telephony.twilio.stream_auth import (
    StreamAuthority,
    StreamRefusal,
    UsedTokens,
    parse_per_call_path,
    per_call_path,
    redact_start,
)

CALL = "CA" + "1" * 32
SECRET = b"k" * 32


def nonce(i: int) -> bytes:
    return i.to_bytes(12, "big")


def test_a_token_opens_its_call_once() -> None:
    auth = StreamAuthority(SECRET, ttl_seconds=30)
    token = auth.issue(CALL, now=100.0, nonce=nonce(1))
    assert auth.redeem(token, "CA" + "2" * 32, now=101.0) is StreamRefusal.INVALID_TOKEN  # bound to its call
    assert auth.redeem(token, CALL, now=101.0) is None
    assert auth.redeem(token, CALL, now=102.0) is StreamRefusal.TOKEN_REUSED
    assert auth.redeem(token, CALL, now=129.0) is StreamRefusal.TOKEN_REUSED  # still remembered until it expires
    assert auth.redeem(token, CALL, now=131.0) is StreamRefusal.INVALID_TOKEN  # then it is merely expired
    assert auth.redeem(None, CALL, now=100.0) is StreamRefusal.NO_TOKEN
    assert auth.redeem("", CALL, now=100.0) is StreamRefusal.NO_TOKEN


def test_expired_token_is_refused() -> None:
    auth = StreamAuthority(SECRET, ttl_seconds=5)
    token = auth.issue(CALL, now=100.0, nonce=nonce(1))
    assert auth.redeem(token, CALL, now=105.0) is StreamRefusal.INVALID_TOKEN


def test_ledger_forgets_expired_ids_and_is_bounded() -> None:
    used = UsedTokens(max_entries=3)
    for i in range(3):
        assert used.consume(f"id{i}", expiry=110 + i, now=100.0) is None
    assert used.consume("id9", expiry=120, now=100.0) is StreamRefusal.LEDGER_FULL  # fails closed
    assert used.consume("id0", expiry=110, now=100.0) is StreamRefusal.TOKEN_REUSED
    assert used.consume("id9", expiry=120, now=110.5) is None  # id0 expired and was dropped
    assert len(used) == 3


def test_ledger_stays_bounded_under_churn() -> None:
    used = UsedTokens(max_entries=100)
    for i in range(10_000):
        assert used.consume(f"id{i}", expiry=i // 10 + 5, now=i / 10) is None
        assert len(used) <= 100


def test_per_call_path_roundtrip() -> None:
    auth = StreamAuthority(SECRET, ttl_seconds=30)
    token = auth.issue(CALL, now=0.0, nonce=nonce(7))
    path = per_call_path("/twilio/media", CALL, token)
    assert path == f"/twilio/media/{CALL}/{token}"
    _, _, _, call_seg, token_seg = path.split("/")
    assert parse_per_call_path(call_seg, token_seg) == (CALL, token)
    uuid_call = "2f1c9a4e-5b7d-4c1e-9f0a-3b2c1d0e9f8a"
    assert parse_per_call_path(*per_call_path("/m", uuid_call, token).split("/")[2:]) == (uuid_call, token)
    odd = "a b/c"
    assert parse_per_call_path(*per_call_path("/m", odd, token).split("/")[2:]) == (odd, token)
    assert parse_per_call_path("x" * 201, token) is None
    assert parse_per_call_path(CALL, "a b") is None


@given(st.text(max_size=60), st.text(max_size=60))
def test_parse_per_call_path_never_raises(a: str, b: str) -> None:
    parse_per_call_path(a, b)


def test_redact_start_blanks_only_the_token() -> None:
    frame = {"event": "start", "start": {"callSid": CALL, "customParameters": {"token": "1.a.b", "from": "+1"}}}
    red = redact_start(frame)
    assert red["start"]["customParameters"] == {"token": "[redacted]", "from": "+1"}  # type: ignore[index]
    assert frame["start"]["customParameters"]["token"] == "1.a.b"  # type: ignore[index]
    plain = {"event": "start", "start": {"callSid": CALL, "customParameters": {"from": "+1"}}}
    assert redact_start(plain) is plain
    assert redact_start({"event": "start"}) == {"event": "start"}


def test_a_token_spent_on_one_worker_is_spent_on_all(tmp_path) -> None:
    from telephony_agent.telephony.twilio.routes import SharedTokenClaims

    workers = [StreamAuthority(SECRET, ttl_seconds=30) for _ in range(2)]
    for w in workers:
        w.shared_claim = SharedTokenClaims(tmp_path).claim  # each worker its own object, one directory
    import time

    now = time.time()  # the shared ledger sweeps by the wall clock
    token = workers[0].issue(CALL, now=now, nonce=nonce(3))
    assert workers[0].redeem(token, CALL, now=now) is None
    assert workers[1].redeem(token, CALL, now=now) is StreamRefusal.TOKEN_REUSED  # its own ledger never saw it
    assert len(list(tmp_path.iterdir())) == 1
