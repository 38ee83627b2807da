"""Speech synthesis with eSpeak NG from the `espeakng-loader` wheel (library and voice data inside).

eSpeak NG keeps its state (voice, parameters, callback) in process-wide globals and is not
re-entrant, so every call into it runs on one dedicated worker thread: syntheses from all
sessions are serialised there. ctypes releases the GIL during `espeak_Synth`, so the event loop
keeps running while it works; eSpeak is far faster than real time, so one thread serves many calls.
Samples arrive through the synth callback in small buffers and are streamed out as they come.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import cast

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000
PARAM_RATE = 1
EE_OK = 0
DEFAULT_VOICE = "en-us+f3"  # recognised best by PocketSphinx of the English voices tried
BUFFER_MS = 50

class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthesisError(RuntimeError):
    pass


class _Engine:
    """The one eSpeak NG instance of the process; every method runs on its worker thread."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="espeak-ng")
        self._lib: ctypes.CDLL | None = None
        self.sample_rate = 0
        self._sink: Callable[[bytes], bool] | None = None
        self._callback = _Callback(self._on_samples)  # kept alive as long as the engine
        self._voice: str | None = None
        self._voices: dict[str, bool] = {}
        self._language_tags: frozenset[str] | None = None

    # -- worker-thread side ---------------------------------------------------------------

    def _on_samples(self, wav: object, count: int, _events: object) -> int:
        sink = self._sink
        if sink is None:
            return 1
        if count > 0 and wav:
            if not sink(ctypes.string_at(cast(int, wav), count * 2)):
                return 1  # abort this synthesis
        return 0

    def _ensure(self) -> ctypes.CDLL:
        if self._lib is not None:
            return self._lib
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data, INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise SynthesisError(f"espeak_Initialize failed ({rate})")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib, self.sample_rate = lib, rate
        return lib

    def _set_voice(self, voice: str) -> bool:
        lib = self._ensure()
        if voice == self._voice:
            return True
        ok = bool(lib.espeak_SetVoiceByName(voice.encode()) == EE_OK)
        if not ok and voice.lower() in self._languages():  # a language tag such as "en-gb"
            spec = _Voice(None, voice.encode(), None, 0, 0, 0, 0, 0, None)
            ok = bool(lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) == EE_OK)
        self._voices[voice] = ok
        if ok:
            self._voice = voice
        return ok

    def _synth(self, text: str, voice: str, words_per_minute: int | None, sink: Callable[[bytes], bool]) -> None:
        lib = self._ensure()
        if not self._set_voice(voice) and not self._set_voice(DEFAULT_VOICE):
            raise SynthesisError(f"no eSpeak NG voice {voice!r}")
        lib.espeak_SetParameter(PARAM_RATE, words_per_minute or 175, 0)
        data = text.encode() + b"\0"
        self._sink = sink
        try:
            err = lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
        finally:
            self._sink = None
        if err != EE_OK and err != 1:  # 1: EE_INTERNAL_ERROR, also returned after an abort
            raise SynthesisError(f"espeak_Synth failed ({err})")

    def _languages(self) -> frozenset[str]:
        """Language tags of the installed voices, from the `language` lines of the voice files."""
        if self._language_tags is None:
            import espeakng_loader

            tags: set[str] = set()
            for path in Path(espeakng_loader.get_data_path(), "lang").rglob("*"):
                if path.is_file():
                    for line in path.read_text(errors="replace").splitlines():
                        parts = line.split()
                        if len(parts) >= 2 and parts[0] == "language":
                            tags.add(parts[1].lower())
            self._language_tags = frozenset(tags)
        return self._language_tags

    def _is_voice(self, voice: str) -> bool:
        if voice not in self._voices:
            previous = self._voice
            self._set_voice(voice)
            if previous is not None and previous != voice:
                self._voice = None
                self._set_voice(previous)
        return self._voices[voice]

    # -- any-thread side ------------------------------------------------------------------

    def run(self, fn: Callable[..., object], *args: object) -> concurrent.futures.Future[object]:
        return self._executor.submit(fn, *args)


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def sample_rate() -> int:
    """eSpeak NG's output rate (22050 Hz), after initialising it if needed."""
    engine = _engine()
    engine.run(engine._ensure).result()
    return engine.sample_rate


def is_voice(name: str | None) -> bool:
    """Whether `name` is an eSpeak NG voice (e.g. "en-us", "en-gb", "en-us+f3"); "alloy" is not."""
    if not name:
        return False
    engine = _engine()
    return bool(engine.run(engine._is_voice, name).result())


def synthesize(text: str, voice: str = DEFAULT_VOICE, words_per_minute: int | None = None) -> bytes:
    """All of `text` as PCM16 mono at `sample_rate()` (blocking; for tests and tools)."""
    engine = _engine()
    out = bytearray()

    def sink(chunk: bytes) -> bool:
        out.extend(chunk)
        return True

    engine.run(engine._synth, text, voice, words_per_minute, sink).result()
    return bytes(out)


async def stream(text: str, voice: str = DEFAULT_VOICE, words_per_minute: int | None = None) -> AsyncGenerator[bytes, None]:
    """PCM16 chunks of `text` as eSpeak produces them. Closing the iterator aborts the synthesis."""
    engine = _engine()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    stop = threading.Event()

    def put(item: bytes | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody is listening
            stop.set()

    def sink(chunk: bytes) -> bool:
        if stop.is_set():
            return False
        put(chunk)
        return True

    future = engine.run(engine._synth, text, voice, words_per_minute, sink)
    future.add_done_callback(lambda _f: put(None))
    try:
        while True:
            chunk = await queue.get()
            if chunk is None:
                break
            yield chunk
        error = future.exception()
        if error is not None:
            raise error
    finally:
        stop.set()
