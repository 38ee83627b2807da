"""Command line: `telephony-agent serve | config`."""

from __future__ import annotations

import argparse
import sys

from telephony_agent.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve calls")
    sub.add_parser("config", help="print the effective settings, secrets masked")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "config" or args.command == "serve":
        for name, value in settings.masked().items():
            print(f"{name}={value}")
        print(f"# effective provider: {settings.effective_provider.value}")
    return 0
