"""`RealtimeRunner`: runs the model's tool calls and applies context changes at idle points.

The consumer (the call bridge) reads events through `runner.events()` and sees every event;
the runner acts on function calls, cancellations and turn ends as they pass.

Tool rounds are bounded: a model that keeps calling tools (a failing tool, a confused model)
gets `max_tool_rounds` rounds per caller turn; the next round is answered with an explanation
instead of running, and a round after that is not answered at all (each round is a billed model
request). Both are reported as `ToolRoundsCapped` in the event stream. Once the runner is
closed (the call ended), tool calls that still arrive are dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from telephony_agent.realtime.errors import RealtimeError
from telephony_agent.realtime.events import (
    AudioDelta,
    FunctionCallDone,
    InputTranscriptCompleted,
    ResponseDone,
    ServerEvent,
    SpeechStarted,
    ToolCallCancelled,
    ToolRoundsCapped,
)
from telephony_agent.realtime.session import RealtimeSession
from telephony_agent.realtime.tools import ToolArgumentsError, ToolRegistry, ToolResult
from telephony_agent.realtime.types import (
    ContextMutationKind,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolResponse,
)

log = logging.getLogger(__name__)

__all__ = ["TOOL_ROUNDS_MESSAGE", "RealtimeRunner"]

TOOL_ROUNDS_MESSAGE = (
    "Tool call refused: {rounds} rounds of tool calls since the caller last spoke is the limit. "
    "Do not call any tool again now. Tell the caller briefly what you found or that you could not "
    "complete it, and ask how they would like to continue."
)


class RealtimeRunner:
    def __init__(
        self,
        session: RealtimeSession,
        tools: ToolRegistry,
        *,
        max_concurrency: int = 4,
        tool_timeout: float = 10.0,
        resume_attempts: int = 3,
        resume_backoff: float = 0.2,
        max_tool_rounds: int = 5,
        on_tools_done: Callable[[], None] | None = None,
        logger: logging.LoggerAdapter[logging.Logger] | logging.Logger | None = None,
    ) -> None:
        self.session = session
        self.tools = tools
        self.tool_timeout = tool_timeout
        self.resume_attempts = resume_attempts
        self.resume_backoff = resume_backoff
        self.max_tool_rounds = max_tool_rounds
        self.on_tools_done = on_tools_done  # a batch's results went back (or could not)
        self._log = logger or log
        if logger is not None:
            session.use_logger(logger)  # the provider's fault lines carry the call id too
        self._limit = asyncio.Semaphore(max_concurrency)
        self._batch: dict[str, asyncio.Task[ToolResponse | None]] = {}
        self._batch_respond: dict[str, bool] = {}
        self._cancelled: set[str] = set()
        # Every running tool task by call id, also once its batch is finishing: a cancellation
        # can arrive after the response that closed the batch (Gemini's toolCallCancellation).
        self._running: dict[str, asyncio.Task[ToolResponse | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._pending_config: RealtimeConfig | None = None
        self._batch_finishing = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.resumptions = 0
        self.rounds = 0  # tool rounds since the caller last spoke
        self.rounds_capped = 0  # rounds refused or dropped
        self.dropped_after_close = 0
        self._closed = False
        self._round_refused = False

    # -- consuming ------------------------------------------------------------------------

    def take_audio_now(self, take: Callable[[AudioDelta], bool] | None) -> bool:
        """Agent audio offered to `take` where the session produces it, while `events()` waits
        with nothing queued (`RealtimeSession.take_now`): what it takes skips the queue, the task
        wake-up and both generators. The runner acts on no `AudioDelta`, so it misses nothing.
        False: the session cannot; every event comes through `events()`."""
        if take is None:
            return self.session.take_now(None)

        def audio_now(event: ServerEvent) -> bool:
            return type(event) is AudioDelta and take(event)

        return self.session.take_now(audio_now)

    async def events(self) -> AsyncIterator[ServerEvent]:
        async for event in self.session.events():
            extra = await self.handle(event)
            yield event
            for more in extra:
                yield more

    async def handle(self, event: ServerEvent) -> list[ServerEvent]:
        """Act on one event; returns events of the runner's own to pass on after it."""
        if isinstance(event, FunctionCallDone):
            return self._start_call(event)
        if isinstance(event, (SpeechStarted, InputTranscriptCompleted)):
            self.caller_turn()
        elif isinstance(event, ToolCallCancelled):
            self._cancel_calls(event.ids)
        elif isinstance(event, ResponseDone):
            if self._batch:
                batch, self._batch = self._batch, {}
                respond = self._batch_respond
                self._batch_respond = {}
                self._spawn(self._finish_batch(batch, respond, event.status != "cancelled"))
            elif self._batch_finishing == 0:
                await self._apply_pending_config()
        return []

    def caller_turn(self) -> None:
        """The caller spoke (or pressed a key): the tool-round budget starts again."""
        self.rounds = 0

    @property
    def busy(self) -> bool:
        """Tool calls are running or their results are being sent."""
        return bool(self._batch) or self._batch_finishing > 0

    # -- tools ----------------------------------------------------------------------------

    def _start_call(self, call: FunctionCallDone) -> list[ServerEvent]:
        if self._closed:
            self.dropped_after_close += 1
            self._log.warning("tool call %s arrived after the call ended: dropped", call.name)
            return []
        out: list[ServerEvent] = []
        if not self._batch:  # the first call of a new round
            self.rounds += 1
            self._round_refused = False
        if self.rounds > self.max_tool_rounds + 1:
            if not self._round_refused:
                self._round_refused = True
                self.rounds_capped += 1
                self._log.error("model kept calling tools after %d rounds: not answering", self.rounds - 1)
                out.append(ToolRoundsCapped(self.rounds, stopped=True))
            return out
        self.tool_calls += 1
        self._batch_respond[call.call_id] = True
        if self.rounds > self.max_tool_rounds:
            if not self._round_refused:
                self._round_refused = True
                self.rounds_capped += 1
                self._log.warning("tool round %d refused (limit %d per caller turn)", self.rounds, self.max_tool_rounds)
                out.append(ToolRoundsCapped(self.rounds))
            coro = self._refuse(call, self.rounds - 1)
        else:
            # The respond map is bound now: `handle(ResponseDone)` swaps `_batch_respond` before a quick
            # tool has even started, and the flag must land in the map its batch reads.
            coro = self._run_call(call, self._batch_respond)
        task = asyncio.create_task(coro, name=f"tool-{call.name}")
        self._batch[call.call_id] = task
        self._running[call.call_id] = task
        task.add_done_callback(functools.partial(self._forget, call.call_id))
        return out

    def _forget(self, call_id: str, _task: object) -> None:
        self._running.pop(call_id, None)

    async def _refuse(self, call: FunctionCallDone, rounds: int) -> ToolResponse | None:
        return ToolResponse(call.call_id, {"error": TOOL_ROUNDS_MESSAGE.format(rounds=rounds)}, call.name, True)

    async def _run_call(
        self, call: FunctionCallDone, respond_map: dict[str, bool] | None = None
    ) -> ToolResponse | None:
        tool = self.tools.get(call.name)
        if tool is None:
            self.tool_errors += 1
            return ToolResponse(call.call_id, {"error": f"unknown tool {call.name!r}"}, call.name, True)
        try:
            arguments = orjson.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ToolArgumentsError("arguments must be a JSON object")
        except (orjson.JSONDecodeError, ToolArgumentsError) as exc:
            self.tool_errors += 1
            return ToolResponse(call.call_id, {"error": f"invalid arguments: {exc}"}, call.name, True)
        async with self._limit:
            try:
                result = await asyncio.wait_for(tool.invoke(arguments), self.tool_timeout)
            except TimeoutError:
                self.tool_errors += 1
                self._log.warning("tool %s timed out after %.1fs", call.name, self.tool_timeout)
                return ToolResponse(call.call_id, {"error": f"timed out after {self.tool_timeout:g}s"}, call.name, True)
            except asyncio.CancelledError:
                raise
            except ToolArgumentsError as exc:
                self.tool_errors += 1
                return ToolResponse(call.call_id, {"error": f"invalid arguments: {exc}"}, call.name, True)
            except Exception as exc:  # noqa: BLE001 - a tool failure goes back to the model
                self.tool_errors += 1
                self._log.warning("tool %s failed: %s: %s", call.name, type(exc).__name__, exc)
                return ToolResponse(call.call_id, {"error": f"{type(exc).__name__}: {exc}"}, call.name, True)
        if isinstance(result, ToolResult):
            (self._batch_respond if respond_map is None else respond_map)[call.call_id] = result.respond
            return ToolResponse(call.call_id, result.output, call.name)
        return ToolResponse(call.call_id, result, call.name)

    def _cancel_calls(self, ids: tuple[str, ...]) -> None:
        for call_id in ids:
            self._cancelled.add(call_id)
            task = self._batch.pop(call_id, None) or self._running.get(call_id)
            if task is not None:
                task.cancel()

    async def _finish_batch(
        self, batch: dict[str, asyncio.Task[ToolResponse | None]], respond: dict[str, bool], may_respond: bool
    ) -> None:
        self._batch_finishing += 1
        try:
            results = await asyncio.gather(*batch.values(), return_exceptions=True)
            sent = 0
            want_response = False
            for call_id, result in zip(batch, results, strict=False):
                if call_id in self._cancelled or not isinstance(result, ToolResponse):
                    continue
                await self.session.send_tool_output(result)
                sent += 1
                want_response = want_response or respond.get(call_id, True)
            if sent and want_response and may_respond:
                await self.session.create_response()
        except RealtimeError as exc:
            self._log.warning("could not send tool results: %s", exc)
        finally:
            self._batch_finishing -= 1
            if self.on_tools_done is not None and not self.busy:
                self.on_tools_done()

    # -- context changes ------------------------------------------------------------------

    async def update_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        """Change the session's configuration now, or at the next idle point if it needs a resumption."""
        outcome = await self.session.mutate_context(config)
        if outcome.kind is ContextMutationKind.REQUIRES_RESUMPTION:
            self._pending_config = outcome.config or config  # last request wins
            if not self.busy:
                self._log.debug("context change queued for the next idle point")
        return outcome

    @property
    def pending_context(self) -> RealtimeConfig | None:
        return self._pending_config

    async def _apply_pending_config(self) -> None:
        config, self._pending_config = self._pending_config, None
        if config is None:
            return
        for attempt in range(self.resume_attempts):
            try:
                await self.session.resume_with(config)
                self.resumptions += 1
                return
            except RealtimeError as exc:
                self._log.warning("resumption attempt %d failed: %s", attempt + 1, exc)
                await asyncio.sleep(self.resume_backoff * (2**attempt))
        self._log.error("context change dropped after %d attempts", self.resume_attempts)

    # -- lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def close(self) -> None:
        """The call is over: tool calls from now on are dropped, not run."""
        self._closed = True

    async def aclose(self) -> None:
        """Cancel running tools and wait for them (bounded); later tool calls are dropped."""
        self._closed = True
        tasks = list(self._batch.values()) + list(self._background)
        self._batch.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
