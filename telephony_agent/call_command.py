"""`telephony-agent call`: dial a running agent the way Twilio does, talk to it, report what the caller heard.

A `TwilioCaller` places the call; this module scripts the caller's side (say each utterance after
the agent's turn, optionally barge in), prints a timeline and writes the call's files (recording,
what the caller heard as WAV, a transcript).

The transcript never guesses silently. The caller's lines are the text it was given. An agent
turn is written word for word only when it is made of the local engine's known lines, found in
the audio by `KnownLines` (exact, not recognised); any other turn is written as "not known" with
its length, unless `approximate=True` asks for the general speech model's guess, which is then
labelled as one (it is often badly wrong on synthetic voices).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from telephony_agent.testing.known_lines import KnownLines
from telephony_agent.testing.twilio_caller import TwilioCaller
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

__all__ = ["CallReport", "run_call", "text_to_ulaw", "wav_to_ulaw"]


def text_to_ulaw(text: str, voice: str | None = None) -> bytes:
    """Speech for `text` from the local engine's synthesiser (eSpeak NG), as mu-law 8 kHz."""
    from telephony_agent.realtime.providers.local import tts
    from telephony_codecs import Transcoder

    pcm = tts.synthesize(text, voice or "en-us+f3")
    tx = Transcoder.pcm_to_ulaw8k(tts.sample_rate())
    return tx.process(pcm) + tx.flush()


def wav_to_ulaw(path: str) -> bytes:
    """A PCM16 WAV file (any rate, mono or stereo) as mu-law 8 kHz."""
    import wave

    import numpy as np

    from telephony_codecs import Transcoder

    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        channels, rate = w.getnchannels(), w.getframerate()
    mono = frames.reshape(-1, channels).mean(axis=1).astype("<i2").tobytes()
    if rate == 8000:
        return pcm16_to_ulaw(mono)
    tx = Transcoder.pcm_to_ulaw8k(rate)
    return tx.process(mono) + tx.flush()


@dataclass
class CallReport:
    heard_ms: float
    turns: list[tuple[float, float, bool]]  # (start s, heard ms, cut by a clear)
    first_audio_s: float | None
    barge_ins: int
    ended_by: str
    duration_s: float
    files: dict[str, str]


async def run_call(
    base_url: str,
    public_url: str,
    auth_token: str,
    utterances: list[tuple[str, bytes]],
    out_dir: str,
    *,
    barge_in_at: float | None = None,
    barge_in_audio: tuple[str, bytes] | None = None,
    max_seconds: float = 90.0,
    reply_timeout: float = 20.0,
    transcribe: bool = True,
    known_lines: KnownLines | None = None,
    approximate: bool = False,
    print_fn: Callable[[str], None] = print,
    sip_target: str | None = None,
    turn_gap_s: float = 0.8,
) -> CallReport:
    """Dial the agent, say each utterance after the agent's turn, print a timeline, write files.

    The agent's turn is over after `turn_gap_s` of silence: longer than the pauses inside its
    answers. Audio after a shorter gap belongs to the same turn (a stall in playback does not
    split an answer in two); a test on a busy machine raises it.

    With `sip_target` (`sip:agent@host:5060`) the call goes over SIP/RTP instead of the Twilio
    webhook and media stream; the timeline, WAV and summary are the same (no JSONL recording)."""
    from pathlib import Path

    from telephony_agent.recording.recorder import CallRecorder
    from telephony_agent.recording.wav import write_mono

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    turns: list[list[Any]] = []  # [start, heard_ms_at_start, heard_ms, cleared]
    transcript: list[tuple[float, str, str]] = []

    def stamp(when: float) -> str:
        return f"{when - t0:8.3f}s"

    def on_event(kind: str, when: float, details: dict[str, Any]) -> None:
        if kind == "audio_start":
            if turns and not turns[-1][3] and when - turns[-1][4] < turn_gap_s:
                return  # an underrun inside one turn, not a new one
            turns.append([when, phone.heard_ms, phone.heard_ms, False, when])
            extra = f" (time to first agent audio {1000 * (when - t0):.0f} ms)" if len(turns) == 1 else ""
            print_fn(f"{stamp(when)}  agent turn {len(turns)} starts{extra}")
        elif kind == "audio_end" and turns:
            turns[-1][2] = details.get("heard_ms", phone.heard_ms)
            turns[-1][4] = when
            if details.get("cleared"):
                turns[-1][3] = True
        elif kind == "clear":
            heard = (phone.heard_ms - turns[-1][1]) if turns else 0.0
            print_fn(f"{stamp(when)}  barge-in: agent cleared after {heard:.0f} ms of its turn "
                     f"({details.get('dropped_ms', 0):.0f} ms dropped)")
        elif kind == "closed":
            who = "agent" if details.get("by_server") else "caller"
            print_fn(f"{stamp(when)}  call ended by the {who} (close code {details.get('code')})")

    recorder: CallRecorder | None = None
    phone: Any
    if sip_target is not None:
        from telephony_agent.testing.sip_caller import SipPhone

        phone = SipPhone(sip_target, on_event=on_event, timeout=reply_timeout)
    else:
        recorder = CallRecorder(out, recorded_by="softphone", name="call")
        phone = TwilioCaller(base_url, public_url, auth_token, tap=recorder, on_event=on_event, timeout=reply_timeout)
    barge_task: asyncio.Task[None] | None = None

    async def wait_turn() -> None:
        since = loop.time()
        try:
            await phone.wait_for(lambda: phone.closed or len(phone.heard_after(since)) > 0, reply_timeout, "agent")
            await phone.wait_for(
                lambda: phone.closed or (not phone.playing and phone.last_audio_end is not None
                                         and loop.time() - phone.last_audio_end > turn_gap_s),
                reply_timeout + max_seconds, "agent turn end",
            )
        except TimeoutError:
            print_fn(f"{stamp(loop.time())}  (no answer from the agent within {reply_timeout:.0f}s)")

    async def barge() -> None:
        assert barge_in_at is not None and barge_in_audio is not None
        await asyncio.sleep(max(0.0, t0 + barge_in_at - loop.time()))
        if not phone.closed:
            print_fn(f"{stamp(loop.time())}  caller barges in: {barge_in_audio[0]!r}")
            transcript.append((loop.time() - t0, "caller", barge_in_audio[0]))
            phone.say(barge_in_audio[1])

    try:
        async with phone:
            await phone.place_and_connect()
            t0 = loop.time()
            print_fn(f"{stamp(t0)}  connected: call {phone.call_sid}")
            if barge_in_at is not None and barge_in_audio is not None:
                barge_task = asyncio.create_task(barge())
            await asyncio.wait_for(_converse(phone, utterances, wait_turn, stamp, print_fn, transcript, loop, t0),
                                   max_seconds)
            if barge_task is not None and not barge_task.done():
                await barge_task
                await wait_turn()
            if not phone.closed:
                await phone.hangup()
    except TimeoutError:
        print_fn(f"{stamp(loop.time())}  call reached --max-seconds; hanging up")
    finally:
        if barge_task is not None:
            barge_task.cancel()
        if recorder is not None:
            recorder.finish()
    for turn in turns:
        turn[2] = max(turn[2], turn[1])
    files = {"agent_wav": str(write_mono(out / "agent.wav", phone.heard_pcm16()))}
    if recorder is not None and recorder.wav_path is not None:
        files["call_wav"] = str(recorder.wav_path)
    if recorder is not None and recorder.jsonl_path is not None:
        files["recording"] = str(recorder.jsonl_path)
    if sip_target is not None:
        files["caller_wav"] = str(write_mono(out / "caller.wav", ulaw_to_pcm16(bytes(phone.sent_ulaw))))
    if transcribe and known_lines is None:
        known_lines = KnownLines.from_script()
    for turn in turns:
        audio = bytes(phone.heard_ulaw[int(turn[1] * 8) : int(turn[2] * 8)])
        transcript.append((turn[0] - t0, *_agent_line(audio, known_lines if transcribe else None, approximate)))
    transcript.sort(key=lambda x: x[0])
    path = out / "transcript.txt"
    path.write_text(TRANSCRIPT_HEADER + "".join(f"[{t:7.2f}s] {who}: {text}\n" for t, who, text in transcript))
    files["transcript"] = str(path)
    report = CallReport(
        heard_ms=phone.heard_ms,
        turns=[(round(t[0] - t0, 3), round(t[2] - t[1], 1), bool(t[3])) for t in turns],
        first_audio_s=(turns[0][0] - t0) if turns else None,
        barge_ins=phone.clears,
        ended_by="agent" if phone.closed_by_server else "caller",
        duration_s=(phone.closed_at or loop.time()) - t0,
        files=files,
    )
    print_fn("summary:")
    print_fn(f"  duration {report.duration_s:.1f}s, ended by the {report.ended_by}")
    first = "-" if report.first_audio_s is None else f"{1000 * report.first_audio_s:.0f} ms"
    print_fn(f"  time to first agent audio {first}; agent turns {len(turns)}; heard {report.heard_ms:.0f} ms; "
             f"barge-ins {report.barge_ins}")
    for i, (start, ms, cleared) in enumerate(report.turns, 1):
        print_fn(f"  turn {i}: at {start:.2f}s, {ms:.0f} ms heard{' (cut by barge-in)' if cleared else ''}")
    if phone.violations:
        print_fn(f"  protocol violations: {len(phone.violations)} (first: {phone.violations[0].detail})")
    for name, value in files.items():
        print_fn(f"  {name}: {value}")
    return report


async def _converse(phone: Any, utterances: list[tuple[str, bytes]], wait_turn: Any, stamp: Any,
                    print_fn: Any, transcript: list[tuple[float, str, str]], loop: Any, t0: float) -> None:
    await wait_turn()  # the greeting, if the agent has one
    for text, audio in utterances:
        if phone.closed:
            return
        started = loop.time()
        print_fn(f"{stamp(started)}  caller says: {text!r} ({len(audio) / 8000:.1f}s)")
        transcript.append((started - t0, "caller", text))
        await phone.speak(audio)
        await wait_turn()


TRANSCRIPT_HEADER = (
    "# caller: the text the caller was given. agent: the local engine's exact words where the audio\n"
    "# is its known lines; otherwise 'not known' (or, with --approximate, a labelled guess).\n"
)


def _agent_line(ulaw: bytes, known: KnownLines | None, approximate: bool) -> tuple[str, str]:
    """(who, text) for one agent turn: its exact words, a labelled guess, or what is known of it."""
    what = f"({len(ulaw) / 8:.0f} ms of audio; words not known)"
    if known is None:
        return "agent", f"({len(ulaw) / 8:.0f} ms of audio)"
    text = known.transcribe(ulaw)
    if text:
        return "agent", text
    if approximate:
        guess = general_model_transcript(ulaw)
        if guess:
            return "agent (approximate, general speech model)", guess
    return "agent", what


def general_model_transcript(ulaw: bytes) -> str | None:
    """PocketSphinx's general English model on agent audio: a guess, often wrong; None if nothing."""
    if len(ulaw) < 1600:
        return None
    try:
        from telephony_agent.realtime.providers.local.asr import Recognizer

        return Recognizer().recognise(ulaw_to_pcm16(ulaw), 8000).text or None
    except Exception:  # noqa: BLE001 - a guess is a nicety
        return None
