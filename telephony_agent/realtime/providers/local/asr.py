"""Speech recognition with PocketSphinx (the wheel's own US English model; no downloads).

The general language model does badly on narrow-band phone audio, so each dialogue script gets
its own searches built from its phrases, tried in order:

1. a JSGF grammar of the phrases: accepted when the decoder reaches a whole phrase;
2. a small bigram language model of the phrases (written as ARPA): tolerates a phrase spoken
   slightly differently; accepted when its words are close to one phrase;
3. the general model, for everything else (its transcript still reaches the dialogue's fallback).

PocketSphinx holds the GIL while it decodes, so a thread would stall the event loop (measured:
0.4 s of loop lag for 1.7 s of decoding). Recognition therefore runs in worker *processes*
(`RecognitionService`), each keeping one decoder per phrase set; a decoder is only ever used by
its own single-threaded process, which also makes the non-thread-safe decoder safe.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.process
import difflib
import hashlib
import logging
import math
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

ASR_RATE = 16000
_WORD = re.compile(r"[a-z0-9']+")


def normalise(text: str) -> str:
    """Lower-case words only: the form phrases, grammars and transcripts are compared in."""
    return " ".join(_WORD.findall(text.lower().replace("’", "'")))


def similarity(a: str, b: str) -> float:
    """Word-sequence similarity in 0..1 (difflib ratio over words)."""
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return 0.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


@dataclass(frozen=True, slots=True)
class Recognition:
    """`source`: grammar | domain | general | empty. `elapsed_s`: decoding time in the worker."""

    text: str
    source: str
    audio_s: float
    elapsed_s: float


def build_jsgf(phrases: Sequence[str]) -> str:
    alternatives = " | ".join(f"( {p} )" for p in phrases)
    return f"#JSGF V1.0;\ngrammar script;\npublic <utterance> = {alternatives};\n"


def build_arpa(phrases: Sequence[str], discount: float = 0.5) -> str:
    """A bigram ARPA model of `phrases`: absolute discounting, backing off to add-one unigrams."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    for phrase in phrases:
        words = ["<s>", *phrase.split(), "</s>"]
        unigrams.update(words)
        bigrams.update(zip(words, words[1:], strict=False))
    vocab = sorted(unigrams)
    total = sum(c for w, c in unigrams.items() if w != "<s>")
    p1 = {w: (unigrams[w] + 1) / (total + len(vocab)) for w in vocab}
    followers: dict[str, dict[str, int]] = {}
    for (a, b), count in bigrams.items():
        followers.setdefault(a, {})[b] = count
    p2: dict[tuple[str, str], float] = {}
    backoff: dict[str, float] = {}
    for a, following in followers.items():
        n = sum(following.values())
        for b, count in following.items():
            p2[(a, b)] = (count - discount) / n
        left = discount * len(following) / n
        rest = 1.0 - sum(p1[b] for b in following)
        backoff[a] = left / rest if rest > 0 else 1.0
    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(p2)}", "", "\\1-grams:"]
    for w in vocab:
        logp = -99.0 if w == "<s>" else math.log10(p1[w])
        if w == "</s>":
            lines.append(f"{logp:.4f} {w}")
        else:
            lines.append(f"{logp:.4f} {w} {math.log10(backoff.get(w, 1.0)):.4f}")
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(p):.4f} {a} {b}" for (a, b), p in sorted(p2.items())]
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def to_asr_rate(pcm16: bytes, rate: int) -> bytes:
    """Resample a whole utterance to 16 kHz in one go (no chunk edges, so no clicks).

    Not `telephony_codecs.StreamResampler`: that one is built for the call path (streaming, 3 ms
    delay, passband to 3.4 kHz), and the recogniser does measurably worse on its output (15 of
    the default script's 21 phrases recognised from 8 kHz caller speech, against 17 with
    scipy's full-band `resample_poly`).
    """
    if rate == ASR_RATE or not pcm16:
        return pcm16
    import numpy as np
    from scipy.signal import resample_poly

    g = math.gcd(ASR_RATE, rate)
    x = np.frombuffer(pcm16, dtype="<i2").astype(np.float32)
    y = resample_poly(x, ASR_RATE // g, rate // g)
    return bytes(np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes())


class Recognizer:
    """One PocketSphinx decoder with the script's searches. Not thread-safe: one user at a time."""

    DOMAIN_MIN_SIMILARITY = 0.6

    def __init__(self, phrases: Iterable[str] = ()) -> None:
        from pocketsphinx import Decoder

        self._general = Decoder(loglevel="FATAL")
        known: list[str] = []
        self.skipped: list[str] = []
        for phrase in dict.fromkeys(normalise(p) for p in phrases):
            if not phrase:
                continue
            if all(self._general.lookup_word(w) is not None for w in phrase.split()):
                known.append(phrase)
            else:
                self.skipped.append(phrase)  # a word outside the dictionary: general model only
        self.phrases: tuple[str, ...] = tuple(known)
        self._phrase_set = frozenset(known)
        self._script: Decoder | None = None
        if known:
            # The script's searches get their own decoder with a dictionary of just their words:
            # an n-gram search over the full 130k-word dictionary takes seconds to build.
            words = {w for p in known for w in p.split()}
            with tempfile.TemporaryDirectory() as tmp:
                dict_path = os.path.join(tmp, "script.dict")
                with open(dict_path, "w") as f:
                    f.writelines(_pronunciations(words))
                arpa_path = os.path.join(tmp, "script.arpa")
                with open(arpa_path, "w") as f:
                    f.write(build_arpa(known))
                self._script = Decoder(loglevel="FATAL", dict=dict_path, lm=None)
                self._script.add_jsgf_string("grammar", build_jsgf(known))
                self._script.add_lm_file("domain", arpa_path)

    def _decode(self, search: str, pcm16: bytes) -> str | None:
        decoder = self._general if search == "_default" else self._script
        assert decoder is not None
        decoder.activate_search(search)
        decoder.start_utt()
        decoder.process_raw(pcm16, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return hyp.hypstr if hyp is not None else None

    def recognise(self, pcm16: bytes, rate: int = ASR_RATE) -> Recognition:
        started = time.perf_counter()
        audio = to_asr_rate(pcm16, rate)
        audio_s = len(audio) / (2 * ASR_RATE)

        def done(text: str, source: str) -> Recognition:
            return Recognition(text, source if text else "empty", audio_s, time.perf_counter() - started)

        if len(audio) < 2 * ASR_RATE // 10:  # under 100 ms: nothing to recognise
            return done("", "empty")
        if self.phrases:
            phrase = self._decode("grammar", audio)
            if phrase in self._phrase_set:
                return done(phrase, "grammar")
            text = normalise(self._decode("domain", audio) or "")
            if text and max(similarity(text, p) for p in self.phrases) >= self.DOMAIN_MIN_SIMILARITY:
                return done(text, "domain")
        return done(normalise(self._decode("_default", audio) or ""), "general")


def _pronunciations(words: set[str]) -> list[str]:
    """The dictionary lines (with alternatives such as `to(2)`) of `words`, from the wheel's CMUdict."""
    from pocketsphinx import get_model_path

    lines: list[str] = []
    with open(os.path.join(get_model_path(), "en-us", "cmudict-en-us.dict"), encoding="utf-8") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if head.split("(", 1)[0] in words:
                lines.append(line if line.endswith("\n") else line + "\n")
    return lines


# -- worker processes -------------------------------------------------------------------------

_RECOGNIZERS: dict[str, Recognizer] = {}


def _phrases_key(phrases: tuple[str, ...]) -> str:
    return hashlib.sha1("\n".join(phrases).encode()).hexdigest()


def _worker_recognise(phrases: tuple[str, ...], pcm16: bytes, rate: int) -> Recognition:
    """Runs in a worker process: one cached decoder per phrase set."""
    key = _phrases_key(phrases)
    recognizer = _RECOGNIZERS.get(key)
    if recognizer is None:
        if len(_RECOGNIZERS) >= 8:
            _RECOGNIZERS.pop(next(iter(_RECOGNIZERS)))
        recognizer = _RECOGNIZERS[key] = Recognizer(phrases)
    return recognizer.recognise(pcm16, rate)


def _worker_init() -> None:
    """Worker processes ignore Ctrl-C: the parent shuts them down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RecognitionService:
    """Runs recognitions on an executor: by default a small pool of worker processes.

    `executor` may be any `concurrent.futures.Executor` (a thread pool works, at the cost of
    loop lag while decoding); an injected executor is not shut down by `close()`.
    """

    def __init__(self, executor: concurrent.futures.Executor | None = None, workers: int | None = None) -> None:
        self._own = executor is None
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._executor = executor

    def _get_executor(self) -> concurrent.futures.Executor:
        if self._executor is None:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init
            )
        return self._executor

    async def recognise(self, phrases: tuple[str, ...], pcm16: bytes, rate: int) -> Recognition:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._get_executor(), _worker_recognise, phrases, pcm16, rate)
        except concurrent.futures.process.BrokenProcessPool:
            # Worker processes cannot start, e.g. a `__main__` script without the
            # `if __name__ == "__main__":` guard that spawned workers need. Degrade to one
            # thread: correct, but decoding then stalls the event loop while it runs.
            log.warning("recognition worker processes failed; recognising on a thread instead")
            if self._own and isinstance(self._executor, concurrent.futures.ProcessPoolExecutor):
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pocketsphinx")
            return await loop.run_in_executor(self._get_executor(), _worker_recognise, phrases, pcm16, rate)

    async def warm_up(self, phrases: tuple[str, ...]) -> None:
        """Load the model and build the phrase searches in every worker before the first caller speaks."""
        await asyncio.gather(*(self.recognise(phrases, b"", ASR_RATE) for _ in range(self._workers)))

    def close(self) -> None:
        if self._own and self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


_DEFAULT: RecognitionService | None = None


def default_service() -> RecognitionService:
    """The process-wide recognition pool shared by every local session."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RecognitionService()
        atexit.register(_DEFAULT.close)
    return _DEFAULT
