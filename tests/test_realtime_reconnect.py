"""The providers' shared reconnect parts: the outbound buffer, retries, the call-bound logger."""

from __future__ import annotations

import asyncio
import logging

import pytest

from telephony_agent.logs import call_logger
from telephony_agent.realtime.errors import RealtimeAuthError, RealtimeConnectionError
from telephony_agent.realtime.reconnect import OutboundBuffer, RetryPolicy, retry
from telephony_agent.realtime.session import bind_logger


def audio(n: int) -> dict[str, object]:
    return {"type": "audio", "n": n}


def test_buffer_keeps_order_and_drops_oldest_audio_first() -> None:
    buf = OutboundBuffer(max_audio_bytes=300)
    buf.add({"type": "text"})
    for n in range(5):
        buf.add(audio(n), 100)
    buf.add({"type": "commit"})
    assert buf.audio_bytes == 300 and buf.dropped_audio_bytes == 200
    assert buf.take() == [{"type": "text"}, audio(2), audio(3), audio(4), {"type": "commit"}]
    assert len(buf) == 0 and buf.audio_bytes == 0 and buf.take() == []


def test_buffer_is_bounded_in_messages_and_drop_audio_keeps_control() -> None:
    buf = OutboundBuffer(max_audio_bytes=10_000, max_messages=3)
    for n in range(5):
        buf.add({"type": "control", "n": n})
    assert [m["n"] for m in buf.take()] == [2, 3, 4]
    buf.add(audio(0), 50)
    buf.add({"type": "control"})
    buf.add(audio(1), 50)
    assert buf.drop_audio() == 100
    assert buf.take() == [{"type": "control"}]
    assert buf.dropped_audio_bytes == 0  # cleared by the caller, not lost to the bound


async def test_retry_backs_off_and_returns_the_first_success(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def attempt() -> str:
        calls.append(loop.time())
        if len(calls) < 3:
            raise RealtimeConnectionError(f"refused {len(calls)}")
        return "ok"

    log = logging.getLogger("test.retry")
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        assert await retry(attempt, RetryPolicy(3, 0.05), log=log, what="reconnect") == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.045 and calls[2] - calls[1] >= 0.095  # 0.05 then 0.1
    assert [r.getMessage() for r in caplog.records] == [
        "reconnect: attempt 1 of 3 failed: refused 1", "reconnect: attempt 2 of 3 failed: refused 2"]


async def test_retry_gives_up_with_the_last_error_and_never_retries_refused_credentials() -> None:
    count = 0

    async def down() -> None:
        nonlocal count
        count += 1
        raise RealtimeConnectionError(f"down {count}")

    with pytest.raises(RealtimeConnectionError, match="down 2"):
        await retry(down, RetryPolicy(2, 0.0), log=logging.getLogger("test"), what="x")

    async def refused() -> None:
        nonlocal count
        count += 1
        raise RealtimeAuthError("bad key")

    count = 0
    with pytest.raises(RealtimeAuthError):
        await retry(refused, RetryPolicy(5, 0.0), log=logging.getLogger("test"), what="x")
    assert count == 1


def test_bind_logger_keeps_the_provider_name_and_adds_the_call_id(caplog: pytest.LogCaptureFixture) -> None:
    own = logging.getLogger("telephony_agent.realtime.providers.example")
    plain = bind_logger(own, None)
    assert plain is own
    bound = bind_logger(own, call_logger("telephony_agent.telephony.bridge", "CA42"))
    with caplog.at_level(logging.WARNING, logger=own.name):
        bound.warning("reconnecting")
    (record,) = caplog.records
    assert record.name == own.name and getattr(record, "call_id", None) == "CA42"
