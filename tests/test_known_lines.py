"""`KnownLines` names the local engine's sentences in heard audio, allowing for eSpeak's small
run-to-run timing differences, and claims nothing it did not hear whole."""

from __future__ import annotations

import numpy as np
import pytest

from telephony_agent.realtime.providers.local import tts
from telephony_agent.testing.known_lines import KnownLines
from telephony_codecs import Transcoder, pcm16_to_ulaw, ulaw_to_pcm16

HOURS = "We are open Monday to Friday from nine in the morning to five in the evening, and on Saturday from ten to two."
VOICE = "en-us+f3"  # the demo script's


@pytest.fixture(scope="module")
def known() -> KnownLines:
    return KnownLines.from_script()


def heard(text: str, voice: str = VOICE) -> bytes:
    """`text` as the engine says it and a caller hears it: eSpeak, then the call path's transcoder."""
    tx = Transcoder.pcm_to_ulaw8k(tts.sample_rate())
    return tx.process(tts.synthesize(text, voice)) + tx.flush()


def with_pauses_longer(ulaw: bytes, at: tuple[float, ...], ms: int = 10) -> bytes:
    """`ulaw` with `ms` more silence at each fraction of its length in `at`: how the same sentence
    differs from one eSpeak synthesis to the next in one process (a pause 10 ms longer here)."""
    x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2")
    cuts = [0, *(int(f * x.size) for f in at), x.size]
    gap = np.zeros(8 * ms, dtype="<i2")
    parts = [x[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    out = parts[0]
    for part in parts[1:]:
        out = np.concatenate((out, gap, part))
    return pcm16_to_ulaw(out.astype("<i2").tobytes())


def test_a_long_line_is_named_when_its_pauses_differ_by_a_few_milliseconds(known: KnownLines) -> None:
    """Matched as one 5.7 s template, two pauses 10 ms longer took the correlation below the bar
    (the transcript test failed in CI when the process's earlier syntheses put eSpeak in a state
    that drifted like this); matched in pieces, the line is named. The match explains the line to where
    its last piece was heard: counted only to the template's length, the 20 ms of pauses plus
    eSpeak's drift left 20-60 ms of its end unexplained (60 failed this test in CI)."""
    said = with_pauses_longer(heard(HOURS), (0.33, 0.66))
    assert known.transcribe(said) == HOURS
    found, unexplained_ms = known.find(said)
    assert [f.sentence for f in found] == [HOURS] and found[0].score > 0.7 and unexplained_ms == 0


def test_a_line_said_again_after_other_syntheses_is_named(known: KnownLines) -> None:
    """eSpeak carries state between syntheses: the same line, said after others, is a few samples
    longer or shorter each time, and named each time."""
    for other in ("Where are you located?", "Goodbye.", "What is your address?", "Sorry, stop."):
        tts.synthesize(other, VOICE)
        said = heard(HOURS)
        assert known.transcribe(said) == HOURS


def test_a_line_cut_short_or_in_another_voice_is_not_claimed(known: KnownLines) -> None:
    whole = heard(HOURS)
    cut = whole[: int(len(whole) * 0.75)] + pcm16_to_ulaw(bytes(2 * 8000))  # barge-in, then silence
    assert known.transcribe(cut) is None
    assert known.transcribe(heard(HOURS, voice="en-gb")) is None


OPEN = "We are open from nine to five."
OKAY_OPEN = "Okay, we are open from nine to five."


def _then(first: bytes, second: bytes) -> bytes:
    """`first` up to the end of its pause after the first word, then `second` from its first sound."""
    a = np.frombuffer(ulaw_to_pcm16(first), "<i2")
    b = np.frombuffer(ulaw_to_pcm16(second), "<i2")
    quiet = np.abs(a.astype(np.int32)) < 50
    runs = np.flatnonzero(np.diff(quiet[1600:12000].astype(np.int8)))  # edges between 0.2 and 1.5 s
    starts, ends = runs[::2] + 1, runs[1::2] + 1  # quiet runs: [start, end) after a sound
    cut = 1600 + int(ends[np.argmax(ends - starts[: ends.size])])  # the end of the longest pause
    sound = np.flatnonzero(np.abs(b.astype(np.int32)) >= 50)
    return pcm16_to_ulaw(np.concatenate((a[:cut], b[sound[0]:])).astype("<i2").tobytes())


def test_a_sentence_is_named_whole_when_its_tail_alone_scores_higher() -> None:
    """"Okay," then the rest said as eSpeak says it on its own: the short sentence matches that
    tail better (0.95 against 0.81 for the whole), so taking the best match first named the tail
    and left "Okay," unexplained (the turn was not known; how the transcript test failed once in
    CI, with the demo's greeting and its goodbye line's first sentence). Both are tried now, and
    the one that explains the whole turn kept."""
    known = KnownLines([OKAY_OPEN, OPEN], VOICE)
    said = _then(heard(OKAY_OPEN), heard(OPEN))
    assert known.transcribe(said) == OKAY_OPEN


def test_two_sentences_a_longer_one_also_covers_are_named_as_said() -> None:
    """"Okay." then "We are open...": the longer sentence sounds alike over both, but the two
    short ones explain the turn as well and match better, so they are named, not the long one."""
    known = KnownLines([OKAY_OPEN, OPEN, "Okay."], VOICE)
    said = heard("Okay.") + heard(OPEN)
    assert known.transcribe(said) == "Okay. " + OPEN
