#!/usr/bin/env python3
"""Regenerate the regression corpus in tests/fixtures/calls/ (reproducibly).

Each scenario in tests/fixtures/calls/scenarios.py is played by a scripted caller (eSpeak NG
speech through `sox -D`) against the real server with the local engine or the fake OpenAI
server, in this process, on the virtual clock. The server's own recording of the call (the
AGENT_RECORDINGS_DIR recorder) is kept, gzipped, with agent-side audio payloads elided so each
file stays small; WAVs are not kept (a replay writes new ones).

    .venv/bin/python scripts/make_corpus.py            # all scenarios
    .venv/bin/python scripts/make_corpus.py barge_in   # some
    .venv/bin/python scripts/make_corpus.py --real-time
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "fixtures" / "calls"))

import orjson  # noqa: E402
from scenarios import BY_NAME, SCENARIOS, Scenario, environment, perform  # noqa: E402

from telephony_agent.recording.format import IN, LEG_PHONE, LEG_V1_TWILIO  # noqa: E402
from telephony_agent.replay import run_virtual  # noqa: E402


def compact(src: Path, dst: Path, scenario: Scenario) -> int:
    """Copy a recording, gzipped, eliding audio payloads other than the caller's."""
    out = bytearray()
    with open(src, "rb") as f:
        for n, line in enumerate(f):
            obj = orjson.loads(line)
            if n == 0:
                obj["scenario"] = scenario.name
                obj["description"] = scenario.description
                obj["started_at"] = "1970-01-01T00:00:00.000Z"  # reproducible files
            msg = obj.get("msg")
            if isinstance(msg, dict) and not (obj.get("leg") in (LEG_PHONE, LEG_V1_TWILIO) and obj.get("dir") == IN):
                _elide(obj, msg)
            out += orjson.dumps(obj) + b"\n"
    data = gzip.compress(bytes(out), mtime=0)
    dst.write_bytes(data)
    return len(data)


def _elide(obj: dict, msg: dict) -> None:
    import base64

    for holder, key in ((msg.get("media"), "payload"), (msg, "delta"), (msg, "audio")):
        if isinstance(holder, dict) and isinstance(holder.get(key), str) and len(holder[key]) > 64:
            if key == "delta" and msg.get("type") != "response.output_audio.delta":
                continue
            obj["elided"] = len(base64.b64decode(holder[key]))
            holder[key] = ""


async def make(scenario: Scenario) -> Path:
    async with environment(scenario) as env:
        await perform(scenario, env)
        files = sorted(env.recordings.glob("*.jsonl"))
        if len(files) != 1:
            raise RuntimeError(f"{scenario.name}: expected one recording, found {files}")
        size = compact(files[0], scenario.path, scenario)
    print(f"{scenario.name}: {scenario.path.relative_to(ROOT)} ({size / 1024:.0f} KiB)")
    return scenario.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="scenarios to make (default: all)")
    parser.add_argument("--real-time", action="store_true", help="run on the ordinary event loop")
    args = parser.parse_args()
    chosen = [BY_NAME[n] for n in args.names] if args.names else SCENARIOS
    for scenario in chosen:
        t0 = time.monotonic()
        if args.real_time:
            asyncio.run(make(scenario))
        else:
            run_virtual(make(scenario))
        print(f"  made in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
