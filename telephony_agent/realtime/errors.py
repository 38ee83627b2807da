"""Errors raised by realtime sessions."""

from __future__ import annotations


class RealtimeError(Exception):
    """Base of every error a session raises."""


class RealtimeConnectionError(RealtimeError):
    """The provider could not be reached, or the connection dropped beyond recovery."""


class RealtimeAuthError(RealtimeConnectionError):
    """The provider refused our credentials."""


class SessionClosedError(RealtimeError):
    """The session is closed; nothing more can be sent."""


class RealtimeConfigError(RealtimeError):
    """The configuration is invalid for this provider (refused by it, or unsupported)."""


class ServerError(RealtimeError):
    """The provider reported an error it did not recover from."""

    def __init__(self, message: str, code: str | int | None = None) -> None:
        super().__init__(f"{message} (code {code})" if code is not None else message)
        self.code = code
        self.message = message


class RealtimeTimeoutError(RealtimeError, TimeoutError):
    """The provider did not answer in time."""
