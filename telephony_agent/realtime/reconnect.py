"""What a reconnecting provider session needs, shared by the OpenAI and Gemini sessions.

Both cloud providers end connections on their own terms (OpenAI's session limit, Gemini's
`goAway`) and both can drop; a session then opens a new connection and carries the conversation
over. The parts that do not depend on the provider live here:

- `open_connection()`: connect a `WebSocketTransport` and run the provider's handshake on it
  under one deadline, closing the socket if the handshake fails (`receive_before()` reads the
  handshake's frames);
- `retry()`: a bounded number of attempts with exponential backoff; credentials that were
  refused are never retried;
- `OutboundBuffer`: what the caller's side sends while there is no usable socket, bounded in
  audio (oldest audio dropped first) and in messages, flushed to the new connection in order;
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from telephony_agent.realtime.errors import RealtimeAuthError, RealtimeError, RealtimeTimeoutError
from telephony_agent.realtime.session import SessionLogger
from telephony_agent.realtime.transport import WebSocketTransport

__all__ = [
    "OutboundBuffer",
    "RetryPolicy",
    "open_connection",
    "receive_before",
    "retry",
]

T = TypeVar("T")

async def open_connection(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    handshake: Callable[[WebSocketTransport], Awaitable[T]],
    *,
    connect_timeout: float,
    close_timeout: float = 0.3,
) -> tuple[WebSocketTransport, T]:
    """A connected socket on which `handshake` has succeeded, and the handshake's result.

    Whatever `handshake` raises (a timeout, a refusal, cancellation) closes the socket first.
    """
    transport = WebSocketTransport(http, url, headers, connect_timeout=connect_timeout)
    await transport.connect()
    try:
        return transport, await handshake(transport)
    except BaseException:
        await transport.close(timeout=close_timeout)
        raise


async def receive_before(transport: WebSocketTransport, deadline: float, timeout_message: str) -> str | bytes | None:
    """The next frame, or None if the socket closed; `RealtimeTimeoutError(timeout_message)` at
    the loop-time `deadline`."""
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise RealtimeTimeoutError(timeout_message)
    try:
        return await asyncio.wait_for(transport.receive(), remaining)
    except TimeoutError:
        raise RealtimeTimeoutError(timeout_message) from None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`attempts` tries; the n-th retry waits `backoff * 2**(n-1)` seconds."""

    attempts: int = 3
    backoff: float = 0.25

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (0-based; the first does not wait)."""
        return 0.0 if attempt <= 0 else self.backoff * (2 ** (attempt - 1))


async def retry(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    log: SessionLogger,
    what: str,
) -> T:
    """`attempt()` until it succeeds, up to `policy.attempts` times; the last error if none did.

    `RealtimeAuthError` is raised at once: refused credentials will not be accepted on retry.
    Each failure is logged at WARNING (the caller hears nothing while this goes on).
    """
    attempts = max(1, policy.attempts)
    last: RealtimeError | None = None
    for n in range(attempts):
        if n:
            await asyncio.sleep(policy.delay(n))
        try:
            return await attempt()
        except RealtimeAuthError:
            raise
        except RealtimeError as exc:
            last = exc
            log.warning("%s: attempt %d of %d failed: %s", what, n + 1, attempts, exc)
    assert last is not None
    raise last


class OutboundBuffer:
    """Messages sent while a session has no usable connection, in order, for the next one.

    Bounded: audio beyond `max_audio_bytes` drops the oldest audio message first (the caller's
    latest words matter most), and beyond `max_messages` the oldest message goes. Each entry
    remembers how many audio bytes it carries (0 for control messages).
    """

    def __init__(self, max_audio_bytes: int, max_messages: int = 4096) -> None:
        self.max_audio_bytes = max_audio_bytes
        self.max_messages = max_messages
        self._entries: deque[tuple[dict[str, Any], int]] = deque()
        self.audio_bytes = 0
        self.dropped_audio_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, message: dict[str, Any], audio_bytes: int = 0) -> None:
        self._entries.append((message, audio_bytes))
        self.audio_bytes += audio_bytes
        while self.audio_bytes > self.max_audio_bytes:
            for i, (_, n) in enumerate(self._entries):
                if n:
                    del self._entries[i]
                    self.audio_bytes -= n
                    self.dropped_audio_bytes += n
                    break
            else:
                self.audio_bytes = 0
        while len(self._entries) > self.max_messages:
            _, n = self._entries.popleft()
            self.audio_bytes -= n
            self.dropped_audio_bytes += n

    def drop_audio(self) -> int:
        """Forget the buffered audio (the caller's side cleared its input); returns the bytes."""
        dropped = self.audio_bytes
        self._entries = deque(e for e in self._entries if not e[1])
        self.audio_bytes = 0
        return dropped

    def take(self) -> list[dict[str, Any]]:
        """Everything buffered, oldest first; the buffer is empty afterwards."""
        messages = [m for m, _ in self._entries]
        self._entries.clear()
        self.audio_bytes = 0
        return messages
