"""`telephony-agent serve` and `telephony-agent call` as subprocesses, over 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

from telephony_agent.testing.ports import free_tcp_port

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_", "TWILIO_", "OPENAI_", "GEMINI_"))}
    env.update(extra)
    return env


def test_call_against_a_served_agent(tmp_path: Path) -> None:
    port = free_tcp_port()
    server_env = _env(AGENT_PROVIDER="local", AGENT_HOST="127.0.0.1", AGENT_PORT=str(port),
                      AGENT_TWILIO_VALIDATE="false", AGENT_GREETING="Hello", AGENT_RECORDINGS_DIR=str(tmp_path / "rec"))
    server = subprocess.Popen([sys.executable, "-m", "telephony_agent", "serve"], cwd=tmp_path, env=server_env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("server did not start") from None
                time.sleep(0.2)
        out = tmp_path / "out"
        done = subprocess.run(
            [sys.executable, "-m", "telephony_agent", "call", "--url", f"http://127.0.0.1:{port}",
             "--say", "what are your opening hours", "--out", str(out), "--no-transcribe", "--max-seconds", "40"],
            cwd=tmp_path, env=_env(AGENT_TWILIO_VALIDATE="false"), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        text = done.stdout
        assert "connected: call CA" in text
        assert "time to first agent audio" in text
        assert "caller says: 'what are your opening hours'" in text
        assert "summary:" in text and "agent turns 2" in text
        with wave.open(str(out / "call.wav")) as w:
            assert w.getnchannels() == 2 and w.getframerate() == 8000 and w.getnframes() > 8000 * 5
        with wave.open(str(out / "agent.wav")) as w:
            assert w.getnchannels() == 1 and w.getnframes() > 8000 * 5
        transcript = (out / "transcript.txt").read_text()
        assert "caller: what are your opening hours" in transcript and "agent:" in transcript
        assert (out / "call.jsonl").stat().st_size > 0
        # The server recorded the call too (AGENT_RECORDINGS_DIR): JSONL and a two-channel WAV.
        deadline = time.monotonic() + 10
        while not list((tmp_path / "rec").glob("*.wav")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list((tmp_path / "rec").glob("*_CA*.jsonl"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def test_replay_command_in_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "telephony_agent", "replay", str(ROOT / "tests/fixtures/calls/dtmf_menu.jsonl.gz")],
        env=_env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert "replayed" in done.stdout and "recorded:" in done.stdout and "now:" in done.stdout
    # Without a Twilio REST API the transfer cannot happen in this mode: the replay says so.
    assert ("no differences" in done.stdout) == (done.returncode == 0)
