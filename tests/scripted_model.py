"""A realtime session whose server events a test pushes, and the model that opens it: the
provider side of a call, scripted, for the bridge alone (tests/test_bridge.py) or a whole call
over a served agent (tests/test_call_command.py)."""

from __future__ import annotations

import asyncio

from telephony_agent.realtime import (
    AudioChunk,
    AudioDelta,
    AudioDone,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    RealtimeConnectionError,
    RealtimeModel,
    ResponseDone,
    ToolResponse,
)
from telephony_agent.realtime.session import QueuedSession


class ScriptedSession(QueuedSession):
    """A session whose server events the test pushes; records what the bridge sends."""

    def __init__(self, config: RealtimeConfig, input_format: AudioFormat, output_format: AudioFormat) -> None:
        super().__init__()
        self.config = config
        self._in = input_format
        self._out = output_format
        self.audio = bytearray()
        self.audio_formats: set[AudioFormat] = set()
        self.interrupts: list[int | None] = []
        self.texts: list[str] = []
        self.tool_outputs: list[ToolResponse] = []
        self.responses = 0
        self.requests: list[str] = []  # texts and "response.create", in the order sent
        self.closed = False
        self.takes_now = False  # True: audio is taken in send_audio_nowait, like the real providers
        self.taken_now = 0

    @property
    def session_id(self) -> str:
        return "sess-1"

    @property
    def is_connected(self) -> bool:
        return not self.closed

    @property
    def input_format(self) -> AudioFormat:
        return self._in

    @property
    def output_format(self) -> AudioFormat:
        return self._out

    def push(self, *events: object) -> None:
        for event in events:
            self._emit(event)  # type: ignore[arg-type]

    def say(self, item_id: str, pcm_or_g711: bytes, *, chunk_ms: int = 100, done: bool = True) -> None:
        """Agent audio for one item, generated faster than real time (all at once), in deltas."""
        step = int(self._out.bytes_per_ms * chunk_ms)
        for i in range(0, len(pcm_or_g711), step):
            self._emit(AudioDelta(item_id, pcm_or_g711[i : i + step], self._out))
        if done:
            self._emit(AudioDone(item_id))
            self._emit(ResponseDone(f"resp-{item_id}"))

    async def send_audio(self, chunk: AudioChunk) -> None:
        self.audio_formats.add(chunk.format)
        self.audio += chunk.data

    def send_audio_nowait(self, chunk: AudioChunk) -> bool:
        if not self.takes_now:
            return False
        self.taken_now += 1
        self.audio_formats.add(chunk.format)
        self.audio += chunk.data
        return True

    async def send_text(self, text: str) -> None:
        self.texts.append(text)
        self.requests.append(text)

    async def send_tool_output(self, response: ToolResponse) -> None:
        self.tool_outputs.append(response)

    async def commit_audio(self) -> None:
        pass

    async def clear_audio(self) -> None:
        pass

    async def create_response(self) -> None:
        self.responses += 1
        self.requests.append("response.create")

    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        self.interrupts.append(audio_end_ms)

    async def send_event(self, event: ClientEvent) -> None:
        pass

    async def close(self) -> None:
        self.closed = True
        self._finish("closed by client")

    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        return ContextMutationOutcome.applied()


class ScriptedModel(RealtimeModel):
    def __init__(self, inputs: tuple[AudioFormat, ...], outputs: tuple[AudioFormat, ...], *,
                 fail: bool = False) -> None:
        self._inputs = inputs
        self._outputs = outputs
        self.fail = fail
        self.opening: asyncio.Event | None = None  # set: connect() waits for it (a provider slow to open)
        self.sessions: list[ScriptedSession] = []

    @property
    def provider(self) -> str:
        return "scripted"

    @property
    def model_id(self) -> str:
        return "scripted-1"

    @property
    def input_formats(self) -> tuple[AudioFormat, ...]:
        return self._inputs

    @property
    def output_formats(self) -> tuple[AudioFormat, ...]:
        return self._outputs

    async def connect(self, config: RealtimeConfig) -> ScriptedSession:
        if self.opening is not None:
            await self.opening.wait()
        if self.fail:
            raise RealtimeConnectionError("no route to the provider")
        in_fmt = config.input_format if config.input_format in self._inputs else self._inputs[0]
        out_fmt = config.output_format if config.output_format in self._outputs else self._outputs[0]
        session = ScriptedSession(config, in_fmt, out_fmt)
        self.sessions.append(session)
        return session
