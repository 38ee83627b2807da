"""Connection limits for the HTTP server: what a client that never authenticates can hold.

aiohttp's defaults keep an idle connection for an hour and wait forever for headers. Here:

- a request's line and headers must arrive within `header_timeout` of its first byte;
- an idle keep-alive connection is closed after `keepalive_timeout` (aiohttp's own timer, which
  also covers a connection that never sends a byte);
- request bodies are read by the handlers with their own time bound (the webhook's form);
- at most `max_unauthenticated` connections that do not carry an authorised call are open: at
  the limit the idlest one is closed to make room, and when none is idle the new connection
  gets a bare 503 and is closed. A media socket becomes trusted (`trust_connection`) once its
  call is authorised, and stops counting;
- the limit also keeps the process below its file-descriptor limit (`fd_budget`), and an
  accept loop that still runs out of descriptors logs one line per interval, not a traceback
  per attempt (`install_accept_error_handler`).

`GuardedRunner` is an `aiohttp.web.AppRunner` whose server applies these limits. This module
reaches into aiohttp's `RequestHandler` (its request count and upgrade state); the tests that
open real connections fail if an aiohttp release changes them.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from telephony_agent.logs import LogBudget

__all__ = [
    "ConnectionLimits",
    "GuardedRunner",
    "GuardedServer",
    "fd_budget",
    "install_accept_error_handler",
    "trust_connection",
]

log = logging.getLogger(__name__)

FDS_PER_CALL = 4  # the media socket, the provider socket, a recording's two files
FD_RESERVE = 64  # listening sockets, logs, the provider's DNS, a margin
REFUSAL_LOG_INTERVAL_S = 10.0
_REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    keepalive_timeout: float = 15.0
    max_unauthenticated: int = 512
    fd_limit: int = 1 << 30
    """The process's descriptor limit: a new connection is refused (or the idlest evicted) when
    the open connections, the descriptors their calls hold besides and a reserve would reach it."""


def fd_budget(max_calls: int, *, raise_soft_limit: bool = True) -> int:
    """This process's descriptor limit, first raised to the hard limit. Warns when `max_calls`
    calls would not fit in it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft_limit and soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    needed = FD_RESERVE + max_calls * FDS_PER_CALL
    if needed > soft:
        log.warning(
            "the descriptor limit (%d) fits about %d calls, fewer than AGENT_MAX_CALLS=%d; raise `ulimit -n`",
            soft, (soft - FD_RESERVE) // FDS_PER_CALL, max_calls,
        )
    return soft


def trust_connection(request: web.Request) -> None:
    """This request's connection carries an authorised call: it no longer counts as unauthenticated."""
    handler = request.protocol
    if isinstance(handler, _GuardedHandler):
        handler.trusted = True
        server = handler._guard
        if server is not None:
            server._trusted.add(handler)


class _GuardedHandler(RequestHandler):
    """aiohttp's handler plus a deadline for each request's line and headers."""

    __slots__ = ("_guard", "_header_timer", "_parsed", "opened", "trusted")

    def __init__(self, guard: GuardedServer, **kwargs: Any) -> None:
        super().__init__(guard, **kwargs)
        self._guard: GuardedServer | None = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._parsed = 0
        self.trusted = False
        self.opened = 0.0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._upgraded or self._payload_parser is not None or self._guard is None:
            return
        if self._request_count != self._parsed:  # a request line and headers arrived in full
            self._parsed = self._request_count
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
        elif self._header_timer is None and not self._request_in_progress and data:
            loop = self._loop
            self._header_timer = loop.call_at(loop.time() + self._guard.limits.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.idle:  # still no complete request line and headers: a slow or stalled client
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        guard = self._guard
        self._guard = None
        if guard is not None:
            guard._forget(self)
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """Between requests (or before the first): nothing in progress, no partial request."""
        return not self._request_in_progress and not self._upgraded and self._request_count == self._parsed and (
            not self._messages
        )


class _Refuser(asyncio.Protocol):
    """Answers a connection over the limit with a bare 503 and closes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's TCPTransport is no asyncio.Transport subclass
        # (the assert that stood here closed every refused connection without its 503 on uvloop)
        stream = cast(asyncio.WriteTransport, transport)
        stream.write(_REFUSAL)
        stream.close()


class GuardedServer(web.Server):
    """`web.Server` that makes `_GuardedHandler`s and enforces `ConnectionLimits`."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._live: dict[_GuardedHandler, None] = {}  # insertion order: oldest first
        self._trusted: set[_GuardedHandler] = set()
        self._budget = LogBudget(REFUSAL_LOG_INTERVAL_S)
        self.refused = 0
        self.evicted = 0

    @property
    def unauthenticated(self) -> int:
        return len(self._live) - len(self._trusted)

    @property
    def descriptors(self) -> int:
        """Descriptors in use, as budgeted: every connection, what each call holds besides, a reserve."""
        return len(self._live) + (FDS_PER_CALL - 1) * len(self._trusted) + FD_RESERVE

    def __call__(self) -> asyncio.BaseProtocol:  # type: ignore[override]
        limits = self.limits
        over_total = self.descriptors >= limits.fd_limit
        if (over_total or self.unauthenticated >= limits.max_unauthenticated) and not self._evict_idlest():
            self.refused += 1
            self._log_refusal("over_total" if over_total else "over_unauthenticated")
            return _Refuser()
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler.opened = self._loop.time()
        self._live[handler] = None
        return handler

    def _evict_idlest(self) -> bool:
        for handler in self._live:
            # Only a connection that is really open: one whose connection_made has not run yet
            # has no transport to close, and would live on, forgotten, once it did.
            if not handler.trusted and handler.idle and handler.transport is not None:
                handler.force_close()
                self._forget(handler)
                self.evicted += 1
                return True
        return False

    def _forget(self, handler: _GuardedHandler) -> None:
        self._live.pop(handler, None)
        self._trusted.discard(handler)

    def _log_refusal(self, kind: str) -> None:
        dropped = self._budget.allow(kind, self._loop.time())
        if dropped is None:
            return
        log.warning(
            "refusing new connections: %d open without an authorised call (limit %d), about %d descriptors "
            "in use (limit %d); %d more refused since the last line",
            self.unauthenticated, self.limits.max_unauthenticated, self.descriptors, self.limits.fd_limit, dropped,
            extra={"event": "connections_refused"},
        )


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` serving through a `GuardedServer` (aiohttp keep-alive set from the limits)."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.keepalive_timeout)
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            limits=self.limits,
            **plain._kwargs,
        )


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, interval: float = REFUSAL_LOG_INTERVAL_S) -> None:
    """Out of descriptors, asyncio's accept loop reports every failed accept with a traceback;
    log one line per `interval` instead. Everything else goes to the previous handler."""
    previous = loop.get_exception_handler()
    budget = LogBudget(interval)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            dropped = budget.allow("accept", loop.time())
            if dropped is not None:
                log.error(
                    "cannot accept connections: %s (%d more since the last line); new connections wait",
                    context.get("exception"), dropped, extra={"event": "accept_failed"},
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
