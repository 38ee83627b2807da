"""`RealtimeSession` and `RealtimeModel`: the provider-neutral session API (the seed trait in Python)."""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import copy
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Union

from telephony_agent.realtime.errors import RealtimeConfigError, RealtimeError
from telephony_agent.realtime.events import ServerEvent
from telephony_agent.realtime.types import (
    AudioChunk,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolResponse,
)

__all__ = ["QueuedSession", "RealtimeModel", "RealtimeSession", "SessionLogger", "bind_logger"]

SessionLogger = Union[logging.Logger, "logging.LoggerAdapter[Any]"]
"""A logger, or an adapter that adds the call's context (e.g. `call_id`) to every line."""


def bind_logger(own: logging.Logger, context: SessionLogger | None) -> SessionLogger:
    """`own` (the provider module's logger) with the extra fields of `context`, if it has any.

    Lines keep the provider's logger name (so logging config by module still works) and gain
    the call id the caller's adapter carries; providers never need to know what a call is.
    """
    if not isinstance(context, logging.LoggerAdapter):
        return own
    bound = copy.copy(context)
    bound.logger = own
    return bound


class RealtimeSession(abc.ABC):
    """One live conversation with a speech-to-speech model.

    Events are read with `next_event()` or `events()`; `None` from `next_event()` means the
    session is over (see `disconnect_reason`). Errors the session survives arrive as
    `ErrorEvent(fatal=False)`; a fatal one is followed by the end of the stream.
    """

    #: Text sent while the caller is speaking joins the caller's turn as context instead of
    #: starting a reply of its own (Gemini Live's `realtimeInput.text`). The call bridge uses it
    #: to tell a model without a truncate what the caller actually heard of an interrupted answer.
    text_joins_caller_turn: bool = False

    @property
    @abc.abstractmethod
    def session_id(self) -> str: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    @property
    @abc.abstractmethod
    def input_format(self) -> AudioFormat:
        """The format `send_audio` expects."""

    @property
    @abc.abstractmethod
    def output_format(self) -> AudioFormat:
        """The format of `AudioDelta.data`."""

    @property
    def disconnect_reason(self) -> str | None:
        """Why the session ended, once it has; None while it is open."""
        return None

    def use_logger(self, logger: SessionLogger) -> None:
        """Log this session's faults (reconnects, stalls) with `logger`'s context, e.g. the call id."""

    @abc.abstractmethod
    async def send_audio(self, chunk: AudioChunk) -> None: ...

    def send_audio_nowait(self, chunk: AudioChunk) -> bool:
        """`send_audio` without a coroutine, for a session whose send never waits; False (nothing
        sent) when this one may, and the caller awaits `send_audio` instead.

        A phone leg hands caller audio on where its socket read it, 50 frames a second a call,
        with no task to await in; a session that can take a frame there overrides this.
        """
        return False

    async def send_audio_base64(self, audio_base64: str) -> None:
        try:
            data = base64.b64decode(audio_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RealtimeError(f"invalid base64 audio: {exc}") from None
        await self.send_audio(AudioChunk(data, self.input_format))

    @abc.abstractmethod
    async def send_text(self, text: str) -> None:
        """Text from the caller's side (e.g. "The caller pressed 5."); asks for a response."""

    async def send_tool_response(self, response: ToolResponse) -> None:
        """Send one tool result and ask for a response."""
        await self.send_tool_output(response)
        await self.create_response()

    @abc.abstractmethod
    async def send_tool_output(self, response: ToolResponse) -> None:
        """Send one tool result without asking for a response (batch several, then respond once)."""

    @abc.abstractmethod
    async def commit_audio(self) -> None: ...

    @abc.abstractmethod
    async def clear_audio(self) -> None: ...

    @abc.abstractmethod
    async def create_response(self) -> None: ...

    @abc.abstractmethod
    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        """Stop the current response; the caller heard `audio_end_ms` of the current output item."""

    @abc.abstractmethod
    async def send_event(self, event: ClientEvent) -> None: ...

    @abc.abstractmethod
    async def next_event(self) -> ServerEvent | None: ...

    def take_now(self, take: Callable[[ServerEvent], bool] | None) -> bool:
        """Offer each event to `take` as the session produces it, while the consumer waits in
        `next_event()` with nothing queued (so nothing is handled out of order); an event it
        returns True for is never queued. None stops the offers. False: this session cannot
        (every event comes through `next_event()`)."""
        return False

    async def events(self) -> AsyncIterator[ServerEvent]:
        while True:
            event = await self.next_event()
            if event is None:
                return
            yield event

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome: ...

    async def resume_with(self, config: RealtimeConfig) -> None:
        """Apply a `REQUIRES_RESUMPTION` change by resuming on a new connection (the runner calls this)."""
        raise RealtimeConfigError(f"{type(self).__name__} cannot resume with a new configuration")


class QueuedSession(RealtimeSession, abc.ABC):
    """Shared plumbing: an event queue that ends with `None` once the session is over."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[ServerEvent | None] = asyncio.Queue()
        self._take: Callable[[ServerEvent], bool] | None = None
        self._waiting = False  # the consumer waits in next_event() on an empty queue
        self.handed_now = 0  # events a `take_now` taker handled as they were produced
        self._finished = False
        self._disconnect_reason: str | None = None
        self._log: SessionLogger = logging.getLogger(type(self).__module__)

    def use_logger(self, logger: SessionLogger) -> None:
        self._log = bind_logger(logging.getLogger(type(self).__module__), logger)

    @property
    def disconnect_reason(self) -> str | None:
        return self._disconnect_reason

    def take_now(self, take: Callable[[ServerEvent], bool] | None) -> bool:
        self._take = take
        return True

    def _emit(self, event: ServerEvent) -> None:
        if self._finished:
            return
        take = self._take
        if take is not None and self._waiting and self._queue.empty() and take(event):
            self.handed_now += 1
            return
        self._queue.put_nowait(event)

    def _finish(self, reason: str) -> None:
        """End the event stream once; later calls keep the first reason."""
        if not self._finished:
            self._finished = True
            self._disconnect_reason = reason
            self._queue.put_nowait(None)

    async def next_event(self) -> ServerEvent | None:
        queue = self._queue
        if queue.empty():
            if self._finished:
                return None
            self._waiting = True
            try:
                event = await queue.get()
            finally:
                self._waiting = False
        else:
            event = queue.get_nowait()
        if event is None:
            queue.put_nowait(None)  # every later call sees the end too
        return event


class RealtimeModel(abc.ABC):
    """A factory of sessions for one provider and model."""

    @property
    @abc.abstractmethod
    def provider(self) -> str: ...

    @property
    @abc.abstractmethod
    def model_id(self) -> str: ...

    @property
    @abc.abstractmethod
    def input_formats(self) -> tuple[AudioFormat, ...]:
        """Input formats the model accepts, preferred first."""

    @property
    @abc.abstractmethod
    def output_formats(self) -> tuple[AudioFormat, ...]:
        """Output formats the model can produce, preferred first."""

    @abc.abstractmethod
    async def connect(self, config: RealtimeConfig) -> RealtimeSession: ...

    async def aclose(self) -> None:
        """Release shared resources (HTTP client sessions)."""
