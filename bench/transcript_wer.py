"""Word error rate of `telephony-agent call`'s agent transcript, before and after `KnownLines`.

Each line of the local engine's demo script is synthesised the way the engine says it (eSpeak NG,
sentence by sentence, the script's voice) and carried through the call path's transcoder to
mu-law 8 kHz, as a caller hears it. Then:

- before: PocketSphinx's general English model (what `call` used to write as the transcript);
- after:  `KnownLines` (the engine's exact words where the audio is its known lines, else nothing);
- control: the same lines in another voice (as a cloud provider would speak), where `KnownLines`
  must claim nothing.

Run: `python bench/transcript_wer.py` (about a minute).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "codecs"))

from telephony_agent.call_command import general_model_transcript
from telephony_agent.realtime.providers.local import tts
from telephony_agent.realtime.providers.local.asr import normalise
from telephony_agent.realtime.providers.local.dialogue import load_script, split_sentences
from telephony_agent.testing.known_lines import KnownLines
from telephony_codecs import Transcoder


def word_errors(reference: str, hypothesis: str) -> int:
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def as_heard(line: str, voice: str) -> bytes:
    """`line` as the engine says it and the caller hears it: sentence by sentence, one transcoder."""
    tx = Transcoder.pcm_to_ulaw8k(tts.sample_rate())
    return b"".join(tx.process(tts.synthesize(s, voice)) for s in split_sentences(line)) + tx.flush()


def main() -> None:
    script = load_script()
    voice = script.voice or "en-us"
    known = KnownLines(script.lines, voice)
    words = before = after = claimed_other = 0
    for line in script.lines:
        heard = as_heard(line, voice)
        guess = general_model_transcript(heard) or ""
        exact = known.transcribe(heard) or ""
        other = known.transcribe(as_heard(line, "en-gb"))
        n = len(normalise(line).split())
        words += n
        before += word_errors(line, guess)
        after += word_errors(line, exact)
        claimed_other += other is not None
        print(f"{line[:60]!r:64} general: {word_errors(line, guess)}/{n}  known: {word_errors(line, exact)}/{n}"
              f"  other voice claimed: {other is not None}")
        print(f"    general model heard: {guess!r}")
    print(f"\n{len(script.lines)} agent lines, {words} words")
    print(f"WER before (general PocketSphinx model): {100 * before / words:.1f} %")
    print(f"WER after (KnownLines, voice {voice}):  {100 * after / words:.1f} %")
    print(f"lines in another voice (en-gb) claimed by KnownLines: {claimed_other} of {len(script.lines)}")


if __name__ == "__main__":
    main()
