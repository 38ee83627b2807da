"""`LocalRealtimeModel` / `LocalRealtimeSession`: the offline engine behind the session API.

Energy VAD (server-VAD semantics) -> PocketSphinx (worker processes) -> dialogue script ->
eSpeak NG (one worker thread) -> `AudioDelta`s, with the same event sequence the cloud providers
produce, so the call bridge and the runner cannot tell the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import uuid
from dataclasses import dataclass

from telephony_agent.realtime.errors import RealtimeConfigError, RealtimeError, SessionClosedError
from telephony_agent.realtime.events import (
    AudioCleared,
    AudioCommitted,
    AudioDelta,
    AudioDone,
    ErrorEvent,
    FunctionCallDone,
    InputTranscriptCompleted,
    Interrupted,
    OutputTranscriptDelta,
    OutputTranscriptDone,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    Usage,
)
from telephony_agent.realtime.providers.local import tts
from telephony_agent.realtime.providers.local.asr import Recognition, RecognitionService, default_service
from telephony_agent.realtime.providers.local.dialogue import Intent, Script, ToolCall, load_script, split_sentences
from telephony_agent.realtime.providers.local.vad import EnergyVad, VadSettings
from telephony_agent.realtime.session import QueuedSession, RealtimeModel, RealtimeSession
from telephony_agent.realtime.types import (
    PCM16_16K,
    PCMU_8K,
    AudioChunk,
    AudioEncoding,
    AudioFormat,
    ClientEvent,
    ContextMutationOutcome,
    RealtimeConfig,
    ToolResponse,
    TurnDetection,
)

log = logging.getLogger(__name__)

OUTPUT_FORMAT = AudioFormat.pcm16(22050)  # eSpeak NG's native rate: no resampling on our side
PCM16_8K = AudioFormat.pcm16(8000)
INPUT_FORMATS = (PCM16_16K, PCMU_8K, PCM16_8K)
MAX_TURN_MS = 30_000


def _vad_settings(td: TurnDetection) -> VadSettings:
    return VadSettings(td.threshold, td.prefix_padding_ms, td.silence_duration_ms)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one response does: say `text` (may be empty), then call `tool` for `intent`."""

    text: str
    tool: ToolCall | None = None
    intent: Intent | None = None


class LocalRealtimeModel(RealtimeModel):
    """The offline engine: no API key, no network; everything ships in PyPI wheels.

    `script_path`: a YAML/TOML dialogue script (None: the demo receptionist). `voice`: an eSpeak
    NG voice; names that aren't eSpeak voices (e.g. an OpenAI voice) fall back to the script's
    voice, then "en-us". `stream_speedup`/`stream_lead_ms`: audio is streamed at most this much
    faster than real time after an initial lead, so a barge-in has something to cut.
    """

    def __init__(
        self,
        script_path: str | None = None,
        voice: str | None = None,
        *,
        recognition: RecognitionService | None = None,
        words_per_minute: int | None = None,
        stream_speedup: float = 4.0,
        stream_lead_ms: int = 500,
        chunk_ms: int = 100,
    ) -> None:
        self.script: Script = load_script(script_path)  # a bad script fails at start-up, not mid-call
        self.voice = voice
        self.recognition = recognition or default_service()
        self.words_per_minute = words_per_minute
        self.stream_speedup = stream_speedup
        self.stream_lead_ms = stream_lead_ms
        self.chunk_ms = chunk_ms
        self._warm = False

    @property
    def provider(self) -> str:
        return "local"

    @property
    def model_id(self) -> str:
        return "pocketsphinx+espeak-ng"

    @property
    def input_formats(self) -> tuple[AudioFormat, ...]:
        return INPUT_FORMATS

    @property
    def output_formats(self) -> tuple[AudioFormat, ...]:
        return (OUTPUT_FORMAT,)

    async def warm_up(self) -> None:
        """Start the recognition workers and build the script's searches (once per model)."""
        if not self._warm:
            await self.recognition.warm_up(self.script.phrases)
            self._warm = True

    async def resolve_voice(self, requested: str | None) -> str:
        for name in (requested, self.voice, self.script.voice):
            if name and await asyncio.to_thread(tts.is_voice, name):  # type: ignore[arg-type]  # typeshed: to_thread's ParamSpec
                return name
        return tts.DEFAULT_VOICE

    async def connect(self, config: RealtimeConfig) -> RealtimeSession:
        input_format = config.input_format or PCM16_16K
        if input_format not in INPUT_FORMATS:
            raise RealtimeConfigError(f"local engine input must be one of {INPUT_FORMATS}, not {input_format}")
        if config.output_format is not None and config.output_format != OUTPUT_FORMAT:
            raise RealtimeConfigError(f"local engine output is {OUTPUT_FORMAT}, not {config.output_format}")
        await self.warm_up()
        voice = await self.resolve_voice(config.voice)
        session = LocalRealtimeSession(self, config, input_format, voice)
        session._emit(SessionCreated(session.session_id))
        return session


class LocalRealtimeSession(QueuedSession):
    """One call on the local engine. Everything runs on the event loop except recognition
    (worker processes) and synthesis (the eSpeak thread)."""

    def __init__(self, model: LocalRealtimeModel, config: RealtimeConfig, input_format: AudioFormat, voice: str) -> None:
        super().__init__()
        self._model = model
        self._script = model.script
        self._config = config
        self._voice = voice
        self._input_format = input_format
        self._rate = input_format.sample_rate
        self._id = f"sess_local_{uuid.uuid4().hex[:12]}"
        self._connected = True
        self._vad = EnergyVad(_vad_settings(config.turn_detection), self._rate)
        self._audio = bytearray()  # PCM16 at self._rate; self._audio[0] is at sample self._audio_origin
        self._audio_origin = 0
        self._samples_in = 0
        self._turn_start: int | None = None  # sample index where the current turn's audio starts
        self._turn_item: str | None = None
        self._ids = itertools.count(1)
        self._pending_inputs: list[str] = []
        self._pending_outputs: list[ToolResponse] = []
        self._awaiting_tools: dict[str, Intent] = {}
        self._greeted = False
        self._asr_lock = asyncio.Lock()  # transcripts in turn order
        self._speak_lock = asyncio.Lock()  # one response at a time
        self._recognitions: set[asyncio.Task[None]] = set()
        self._responses: set[asyncio.Task[None]] = set()
        self._current: tuple[str, str, asyncio.Task[None]] | None = None  # response id, item id, task
        self.recognitions: list[Recognition] = []  # for diagnostics and tests

    # -- properties -----------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._id

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def input_format(self) -> AudioFormat:
        return self._input_format

    @property
    def output_format(self) -> AudioFormat:
        return OUTPUT_FORMAT

    @property
    def voice(self) -> str:
        return self._voice

    @property
    def _manual(self) -> bool:
        return self._config.turn_detection.manual

    def _tool_available(self, name: str) -> bool:
        return any(t.name == name for t in self._config.tools)

    def _next(self, prefix: str) -> str:
        return f"{prefix}_local_{next(self._ids)}"

    def _check_open(self) -> None:
        if not self._connected:
            raise SessionClosedError("local session is closed")

    # -- input audio ----------------------------------------------------------------------

    def _to_pcm16(self, chunk: AudioChunk) -> bytes:
        fmt = chunk.format
        if fmt.sample_rate != self._rate or fmt.channels != 1:
            raise RealtimeError(f"expected {self._input_format} audio, got {fmt}")
        if fmt.encoding is AudioEncoding.PCM16:
            if len(chunk.data) % 2:
                raise RealtimeError("PCM16 audio must have an even number of bytes")
            return chunk.data
        if fmt.encoding is AudioEncoding.G711_ULAW:
            # Imported here, not at the top: the recogniser's worker processes import this package,
            # and `telephony_codecs` brings scipy, whose import in every worker starves the call of
            # CPU on a small machine (the greeting then streams slower than real time).
            from telephony_codecs import ulaw_to_pcm16

            return ulaw_to_pcm16(chunk.data)
        raise RealtimeError(f"unsupported input encoding {fmt.encoding}")

    def _ms(self, samples: int) -> int:
        return samples * 1000 // self._rate

    def _slice(self, start: int, end: int) -> bytes:
        a = max(start - self._audio_origin, 0) * 2
        b = max(end - self._audio_origin, 0) * 2
        return bytes(self._audio[a:b])

    def _trim(self, keep_from: int) -> None:
        drop = keep_from - self._audio_origin
        if drop > 0:
            del self._audio[: drop * 2]
            self._audio_origin = keep_from

    async def send_audio(self, chunk: AudioChunk) -> None:
        self.send_audio_nowait(chunk)

    def send_audio_nowait(self, chunk: AudioChunk) -> bool:
        """Always taken: the engine's detector runs here, recognition in a task of its own."""
        self._check_open()
        pcm = self._to_pcm16(chunk)
        if not pcm:
            return True
        self._audio += pcm
        self._samples_in += len(pcm) // 2
        if self._manual:
            self._trim(self._samples_in - MAX_TURN_MS * self._rate // 1000)
            return True
        for event in self._vad.process(pcm):
            if event.kind == "started":
                self._on_speech_started(event.position_ms)
            else:
                self._on_speech_stopped(event.position_ms)
        if self._turn_start is None:
            # idle: keep enough for the prefix padding of an onset found up to a second late
            self._trim(self._samples_in - (self._vad.settings.prefix_padding_ms + 1000) * self._rate // 1000)
        elif self._samples_in - self._turn_start > MAX_TURN_MS * self._rate // 1000:
            self._vad.reset_turn()
            self._on_speech_stopped(self._ms(self._samples_in))
        return True

    def _on_speech_started(self, start_ms: int) -> None:
        td = self._config.turn_detection
        padding = td.prefix_padding_ms * self._rate // 1000
        self._turn_start = max(start_ms * self._rate // 1000 - padding, self._audio_origin)
        self._turn_item = self._next("item")
        self._emit(SpeechStarted(start_ms, self._turn_item))
        if td.interrupt_response and self._current is not None:
            self._cancel_current("turn_detected", interrupted=True)

    def _on_speech_stopped(self, end_ms: int) -> None:
        if self._turn_start is None:
            return
        item = self._turn_item or self._next("item")
        utterance = self._slice(self._turn_start, self._samples_in)
        self._turn_start = self._turn_item = None
        self._emit(SpeechStopped(end_ms, item))
        self._emit(AudioCommitted(item))
        self._spawn_recognition(item, utterance, self._config.turn_detection.create_response)

    async def commit_audio(self) -> None:
        """Manual turn end: everything since the last commit/clear becomes one utterance."""
        self._check_open()
        if not self._manual and self._turn_start is not None:
            self._vad.reset_turn()
            self._on_speech_stopped(self._ms(self._samples_in))
            return
        if not self._manual or not self._audio:
            self._emit(ErrorEvent("input audio buffer is empty", code="input_audio_buffer_commit_empty"))
            return
        item = self._next("item")
        utterance = bytes(self._audio)
        self._trim(self._samples_in)
        self._emit(AudioCommitted(item))
        self._spawn_recognition(item, utterance, respond=False)

    async def clear_audio(self) -> None:
        self._check_open()
        self._trim(self._samples_in)
        self._turn_start = self._turn_item = None
        self._vad.reset_turn()
        self._emit(AudioCleared())

    # -- recognition ----------------------------------------------------------------------

    def _spawn_recognition(self, item: str, pcm: bytes, respond: bool) -> None:
        task = asyncio.create_task(self._recognise(item, pcm, respond), name=f"{self._id}-asr")
        self._recognitions.add(task)
        task.add_done_callback(self._recognitions.discard)

    async def _recognise(self, item: str, pcm: bytes, respond: bool) -> None:
        async with self._asr_lock:
            try:
                result = await self._model.recognition.recognise(self._script.phrases, pcm, self._rate)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed recognition must not end the call
                log.warning("local recognition failed: %s: %s", type(exc).__name__, exc)
                self._emit(ErrorEvent(f"recognition failed: {exc}", code="recognition_failed"))
                result = Recognition("", "empty", 0.0, 0.0)
            self.recognitions.append(result)
            log.debug("heard %r (%s, %.2fs for %.2fs)", result.text, result.source, result.elapsed_s, result.audio_s)
            self._emit(InputTranscriptCompleted(item, result.text))
            self._pending_inputs.append(result.text)
        if respond and self._connected:
            self._start_response()

    # -- responses ------------------------------------------------------------------------

    def _start_response(self) -> None:
        task = asyncio.create_task(self._respond(), name=f"{self._id}-response")
        self._responses.add(task)
        task.add_done_callback(self._responses.discard)

    async def create_response(self) -> None:
        self._check_open()
        self._start_response()

    async def send_text(self, text: str) -> None:
        self._check_open()
        self._pending_inputs.append(text)
        self._start_response()

    async def send_tool_output(self, response: ToolResponse) -> None:
        self._check_open()
        self._pending_outputs.append(response)

    @staticmethod
    def _failed(response: ToolResponse) -> bool:
        output = response.output
        if response.is_error:
            return True
        if isinstance(output, str):
            with contextlib.suppress(ValueError):
                output = json.loads(output)
        return isinstance(output, dict) and (output.get("ok") is False or "error" in output)

    def _plan(self) -> _Plan | None:
        if self._pending_outputs:
            outputs, self._pending_outputs = self._pending_outputs, []
            texts: list[str] = []
            for out in outputs:
                intent = self._awaiting_tools.pop(out.call_id, None)
                if self._failed(out):
                    texts.append(self._script.tool_error)
                elif intent is not None and intent.after:
                    texts.append(intent.after)
            return _Plan(" ".join(dict.fromkeys(texts)))
        if self._pending_inputs:
            heard = self._pending_inputs.pop(0)
            self._greeted = True
            match = self._script.match(heard)
            intent = match.intent
            if intent is None:
                return _Plan(self._script.fallback)
            if intent.tool is not None and not self._tool_available(intent.tool.name):
                log.info("script intent %s wants tool %s, which this session lacks", intent.name, intent.tool.name)
                return _Plan(intent.reply or self._script.tool_error)
            return _Plan(intent.reply, intent.tool, intent)
        if not self._greeted:
            self._greeted = True
            return _Plan(self._script.greeting) if self._script.greeting else None
        return _Plan(self._script.reprompt)

    async def _respond(self) -> None:
        async with self._speak_lock:
            if self._recognitions:  # manual mode: commit_audio then create_response at once
                await asyncio.gather(*list(self._recognitions), return_exceptions=True)
            if not self._connected:
                return
            plan = self._plan()
            if plan is None:
                return
            response_id, item = self._next("resp"), self._next("item")
            task = asyncio.current_task()
            assert task is not None
            self._current = (response_id, item, task)
            try:
                self._emit(ResponseCreated(response_id))
                if plan.text:
                    await self._speak(response_id, item, plan.text)
                if plan.tool is not None:
                    call_id = self._next("call")
                    if plan.intent is not None:
                        self._awaiting_tools[call_id] = plan.intent
                    self._emit(
                        FunctionCallDone(
                            call_id, plan.tool.name, json.dumps(plan.tool.arguments), self._next("item"), response_id
                        )
                    )
                self._current = None
                self._emit(ResponseDone(response_id, "completed", usage=Usage()))
            except asyncio.CancelledError:
                # _cancel_current already reported it; a close() cancels silently
                if self._current is not None and self._current[2] is task:
                    self._current = None
                raise
            except Exception as exc:  # noqa: BLE001 - synthesis failure: report, keep the call
                self._current = None
                log.warning("local response failed: %s: %s", type(exc).__name__, exc)
                self._emit(ErrorEvent(f"response failed: {exc}", code="response_failed"))
                self._emit(ResponseDone(response_id, "failed", usage=Usage()))

    async def _speak(self, response_id: str, item: str, text: str) -> None:
        """Synthesise sentence by sentence, streaming 100 ms deltas paced at `stream_speedup`× real time."""
        loop = asyncio.get_running_loop()
        model = self._model
        chunk_bytes = int(OUTPUT_FORMAT.bytes_per_ms * model.chunk_ms) // 2 * 2
        started = loop.time()
        sent_ms = 0.0
        pending = bytearray()

        async def emit(data: bytes) -> None:
            nonlocal sent_ms
            due = started + max(sent_ms - model.stream_lead_ms, 0.0) / 1000 / model.stream_speedup
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._emit(AudioDelta(item, data, OUTPUT_FORMAT, response_id=response_id))
            sent_ms += OUTPUT_FORMAT.duration_ms(len(data))

        sentences = split_sentences(text)
        for n, sentence in enumerate(sentences):
            self._emit(OutputTranscriptDelta(item, sentence + (" " if n + 1 < len(sentences) else "")))
            async with contextlib.aclosing(tts.stream(sentence, self._voice, model.words_per_minute)) as chunks:
                async for pcm in chunks:
                    pending += pcm
                    while len(pending) >= chunk_bytes:
                        data = bytes(pending[:chunk_bytes])
                        del pending[:chunk_bytes]
                        await emit(data)
        if pending:
            await emit(bytes(pending))
        self._emit(OutputTranscriptDone(item, " ".join(sentences)))
        self._emit(AudioDone(item, response_id))

    def _cancel_current(self, reason: str, *, interrupted: bool) -> None:
        """Stop the response being spoken; report it at once so no later delta of it can follow."""
        if self._current is None:
            return
        response_id, item, task = self._current
        self._current = None
        task.cancel()
        if interrupted:
            self._emit(Interrupted(item))
        self._emit(ResponseDone(response_id, "cancelled", reason=reason, usage=Usage()))

    async def interrupt(self, *, audio_end_ms: int | None = None) -> None:
        """Cancel the current response (the engine keeps no transcript to truncate)."""
        self._check_open()
        self._cancel_current("client_cancelled", interrupted=False)

    # -- the rest of the API --------------------------------------------------------------

    async def send_event(self, event: ClientEvent) -> None:
        self._check_open()
        kind = event.payload.get("type")
        if kind == "response.cancel":
            await self.interrupt()
        elif kind == "input_audio_buffer.clear":
            await self.clear_audio()
        elif kind == "input_audio_buffer.commit":
            await self.commit_audio()
        elif kind == "response.create":
            await self.create_response()
        else:
            self._emit(ErrorEvent(f"local engine does not support event {kind!r}", code="unsupported_event"))

    async def mutate_context(self, config: RealtimeConfig) -> ContextMutationOutcome:
        """Tools, voice and turn detection change in place; instructions don't apply (the script rules)."""
        self._check_open()
        if config.voice and config.voice != self._voice and await asyncio.to_thread(tts.is_voice, config.voice):
            self._voice = config.voice
        if config.turn_detection != self._config.turn_detection:
            self._vad.settings = _vad_settings(config.turn_detection)
        self._config = self._config.with_changes(tools=config.tools, turn_detection=config.turn_detection)
        self._emit(SessionUpdated())
        return ContextMutationOutcome.applied()

    async def close(self) -> None:
        if not self._connected:
            return
        self._connected = False
        current, self._current = self._current, None
        tasks = list(self._responses) + list(self._recognitions)
        if current is not None:
            tasks.append(current[2])
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._finish("closed")
