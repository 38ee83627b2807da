"""Command line: `telephony-agent serve | call | replay | config`."""

from __future__ import annotations

import argparse
import os
import sys

# One BLAS thread (set before numpy loads it): a process serves its calls from one event loop on
# one core, and a BLAS thread pool would only compete with it for that core, spinning while it
# waits. Silero's batched matrix products are big enough to start one otherwise.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from telephony_agent.settings import Settings, SettingsError, load_settings  # noqa: E402


def _config(settings: Settings) -> int:
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    print(f"# effective provider: {settings.effective_provider.value}")
    missing = []
    if settings.openai_api_key is None:
        missing.append("openai: OPENAI_API_KEY")
    if settings.gemini_api_key is None:
        missing.append("gemini: GEMINI_API_KEY")
    if settings.twilio_validate and settings.twilio_auth_token is None:
        missing.append("twilio: TWILIO_AUTH_TOKEN (or AGENT_TWILIO_VALIDATE=false for local development)")
    if settings.twilio_account_sid is None:
        missing.append("twilio REST (hang-up, transfer): TWILIO_ACCOUNT_SID")
    if settings.public_url is None:
        missing.append("twilio: AGENT_PUBLIC_URL (the public https URL Twilio calls)")
    for line in missing:
        print(f"# missing for {line}")
    return 0


def _twilio_identity(settings: Settings, url: str) -> tuple[str, str]:
    """(public URL, auth token) as the server will check them: AGENT_PUBLIC_URL or the https
    form of --url (what the server rebuilds from the Host header), and TWILIO_AUTH_TOKEN."""
    from urllib.parse import urlsplit

    public = settings.public_url or f"https://{urlsplit(url).netloc}"
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else "unsigned-local-dev"
    return public, token


def _call(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import time

    from telephony_agent.call_command import run_call, text_to_ulaw, wav_to_ulaw
    from telephony_agent.testing.known_lines import KnownLines

    utterances = [(text, text_to_ulaw(text)) for text in args.say]
    utterances += [(path, wav_to_ulaw(path)) for path in args.wav]
    barge = (args.barge_in_say, text_to_ulaw(args.barge_in_say)) if args.barge_in_at is not None else None
    out = args.out or time.strftime("call-%Y%m%d-%H%M%S")
    public, token = ("", "") if args.sip else _twilio_identity(settings, args.url)
    try:
        known = None if args.no_transcribe else KnownLines.from_script(args.agent_script, args.agent_voice)
        asyncio.run(
            run_call(
                args.url.rstrip("/"), public, token, utterances, out,
                barge_in_at=args.barge_in_at, barge_in_audio=barge, max_seconds=args.max_seconds,
                reply_timeout=args.reply_timeout, transcribe=not args.no_transcribe,
                known_lines=known, approximate=args.approximate,
                print_fn=lambda line: print(line, flush=True), sip_target=args.sip, turn_gap_s=args.turn_gap,
            )
        )
    except (OSError, Exception) as exc:  # noqa: BLE001 - a command line reports, it does not trace
        print(f"call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import tempfile
    from pathlib import Path

    from telephony_agent.recording import RecordingError, read_recording
    from telephony_agent.replay import in_process_server, replay, run_virtual, wait_no_calls

    try:
        rec = read_recording(args.recording)
    except (OSError, RecordingError) as exc:
        print(exc, file=sys.stderr)
        return 2

    async def external() -> object:
        public, token = _twilio_identity(settings, args.url)
        return await replay(rec, args.url.rstrip("/"), public, token, speed=args.speed)

    async def in_process() -> object:
        from telephony_agent.realtime.providers.local import LocalRealtimeModel

        with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
            model = LocalRealtimeModel(script_path=settings.local_script, voice=settings.voice)
            local = settings.model_copy(update={
                "provider": "local", "recordings_dir": tmp, "twilio_validate": False, "public_url": None,
                "host": "127.0.0.1", "twilio_account_sid": None,
                "greeting": settings.greeting or model.script.greeting,
                "max_loop_lag_ms": 60_000.0,  # caller and server share this loop
            })
            await model.warm_up()
            async with in_process_server(local, model) as (app, url):
                async def settle() -> None:
                    await wait_no_calls(app)
                    await asyncio.sleep(0.5)

                return await replay(rec, url, "https://" + url.split("//", 1)[1], "unsigned-local-dev",
                                    server_recordings=Path(tmp), before_compare=settle)

    if args.url:
        result = asyncio.run(external())
    else:
        provider = rec.header.get("provider")
        if provider not in (None, "local"):
            print(f"this recording was made with provider {provider!r}: replay it against a server with --url "
                  "(in-process replay runs the local engine)", file=sys.stderr)
            return 2
        result = run_virtual(in_process())
    r = result  # type: ignore[assignment]
    print(f"replayed {args.recording}: {r.call_seconds:.1f}s of call in {r.wall_seconds:.1f}s")  # type: ignore[attr-defined]
    for label, s in (("recorded", r.expected), ("now", r.actual)):  # type: ignore[attr-defined]
        turns = ", ".join(f"{t.heard_ms:.0f} ms{'*' if t.cleared else ''}" for t in s.turns)
        print(f"  {label:>8}: turns [{turns}] clears {len(s.clears)} truncates {s.truncates} "
              f"tools {s.tool_calls} ended by {s.ended_by}")
    if r.differences:  # type: ignore[attr-defined]
        print("differences:")
        for line in r.differences:  # type: ignore[attr-defined]
            print(f"  - {line}")
        return 1
    print("no differences")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony-agent", description="Telephony voice agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve calls (what `make run` starts)")
    sub.add_parser("config", help="print the effective settings, secrets masked, and what is missing")
    call = sub.add_parser("call", help="dial a running server the way Twilio does (a softphone)")
    call.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    call.add_argument("--sip", default=None, metavar="URI",
                      help="call over SIP instead, e.g. sip:agent@127.0.0.1:5060 (server run with AGENT_SIP_PORT)")
    call.add_argument("--say", action="append", default=[], help="text to say (synthesised locally); repeatable")
    call.add_argument("--wav", action="append", default=[], help="a 16-bit PCM WAV to say; repeatable")
    call.add_argument("--barge-in-at", type=float, default=None, metavar="SECONDS",
                      help="interrupt the agent this many seconds after connecting")
    call.add_argument("--barge-in-say", default="Sorry, wait a moment.", help="what the interruption says")
    call.add_argument("--out", default=None, help="directory for agent.wav, call.wav, call.jsonl, transcript.txt")
    call.add_argument("--max-seconds", type=float, default=90.0, help="hang up after this long")
    call.add_argument("--reply-timeout", type=float, default=20.0, help="how long to wait for each agent turn")
    call.add_argument("--turn-gap", type=float, default=0.8, metavar="SECONDS",
                      help="silence that ends the agent's turn (raise it on a busy machine or a jittery link)")
    call.add_argument("--no-transcribe", action="store_true", help="skip recognising the agent's words")
    call.add_argument("--agent-script", default=None, metavar="PATH",
                      help="the local engine's script, to write its turns word for word (default: the demo)")
    call.add_argument("--agent-voice", default=None,
                      help="the local engine's eSpeak voice if the server sets AGENT_VOICE (default: the script's)")
    call.add_argument("--approximate", action="store_true",
                      help="for turns that are not the script's lines, write the general model's guess, labelled")
    rep = sub.add_parser("replay", help="drive a server with a recorded call and report differences")
    rep.add_argument("recording", help="a recording (.jsonl or .jsonl.gz)")
    rep.add_argument("--url", default=None,
                     help="a running server to drive; default: this process, local engine, virtual clock")
    rep.add_argument("--speed", type=float, default=1.0, help="send the caller's side this much faster")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "config":
        return _config(settings)
    if args.command == "call":
        return _call(settings, args)
    if args.command == "replay":
        return _replay(settings, args)
    from telephony_agent.serve import serve

    return serve(settings)
