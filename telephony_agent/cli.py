"""Command line: `telephony-agent serve | config`."""

from __future__ import annotations

import argparse
import sys

from telephony_agent.settings import Settings, SettingsError, load_settings


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony-agent", description="Telephony voice agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve calls (what `make run` starts)")
    sub.add_parser("config", help="print the effective settings, secrets masked, and what is missing")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "config":
        return _config(settings)
    from telephony_agent.serve import serve

    return serve(settings)
