"""Independent SIP callers for the tests, each a real program in its own process on loopback:
sipp (scripted flows, speech from `rtp_stream`, RFC 4733 from pcaps or `play_dtmf`), pjsua2
(PJSIP) and baresip. Every run gets its own free ports and its own temporary directory; every
wait is bounded and each child is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import wave
from dataclasses import dataclass
from pathlib import Path

from telephony_agent.testing.ports import SIPP_MEDIA_PORTS, free_sip_port_pair, free_tcp_port, free_udp_port
from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import pcm16_to_alaw, pcm16_to_ulaw

PEERS = Path(__file__).parent / "peers"
SIPP_SCENARIOS = PEERS / "sipp"
SIPP_PCAPS = Path("/usr/share/sip-tester")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
PY311 = Path(sys.executable)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def have_pjsua2() -> bool:
    try:
        import pjsua2  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class SpeechFiles:
    ulaw: Path  # raw mu-law, no header (sipp rtp_stream)
    alaw: Path  # raw A-law
    wav8k: Path  # PCM16 8 kHz WAV (pjsua2, baresip)
    seconds: float


def speech_files(directory: Path, texts: list[str], *, gap_s: float = 0.0, tail_s: float = 1.0, lead_s: float = 0.0,
                 voice: dict[str, object] | None = None) -> SpeechFiles:
    """`lead_s` of silence, `texts` spoken one after another (`gap_s` of silence between), then `tail_s` of silence."""
    pcm = b"\x00\x00" * int(8000 * lead_s)
    for i, text in enumerate(texts):
        if i:
            pcm += b"\x00\x00" * int(8000 * gap_s)
        pcm += speech_pcm16(text, 8000, **(voice or {}))  # type: ignore[arg-type]
    pcm += b"\x00\x00" * int(8000 * tail_s)
    directory.mkdir(parents=True, exist_ok=True)
    files = SpeechFiles(directory / "speech.ul", directory / "speech.al", directory / "speech8k.wav", len(pcm) / 16000)
    files.ulaw.write_bytes(pcm16_to_ulaw(pcm))
    files.alaw.write_bytes(pcm16_to_alaw(pcm))
    with wave.open(str(files.wav8k), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    return files


def read_wav_pcm16(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, (w.getsampwidth(), w.getnchannels())
        return w.readframes(w.getnframes()), w.getframerate()


def active_windows(pcm: bytes, rate: int = 8000, threshold: float = 500.0) -> int:
    """How many 20 ms windows of PCM16 carry speech-level energy."""
    import array
    import math

    samples = array.array("h", pcm[: len(pcm) - len(pcm) % 2])
    n = rate // 50
    count = 0
    for i in range(0, len(samples) - n + 1, n):
        window = samples[i : i + n]
        if math.sqrt(sum(x * x for x in window) / n) > threshold:
            count += 1
    return count


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    directory: Path


async def run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run a child to completion (killed by its pid at `timeout`)."""
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return Run(-9, out.decode(errors="replace"), err.decode(errors="replace") + "\n(killed: timeout)", cwd)
    return Run(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"), cwd)


async def sipp(
    scenario: str,
    target: tuple[str, int],
    cwd: Path,
    *,
    keys: dict[str, str] | None = None,
    duration_ms: int | None = None,
    calls: int = 1,
    rate: float = 1,
    limit: int = 1,
    timeout: float = 60,
    extra: list[str] | None = None,
) -> Run:
    """Run one sipp scenario from tests/peers/sipp against `target` (always -i/-mi 127.0.0.1).

    A port found free may be taken by another process before sipp binds it ("Unable to bind
    audio RTP socket", seen once in a CI run with both Pythons' suites side by side): sipp then
    exits at start, having sent nothing, and runs again on fresh ports (at most 3 starts)."""
    cwd.mkdir(parents=True, exist_ok=True)
    for start in range(3):
        before = set(cwd.iterdir())
        args = [
            "sipp", f"{target[0]}:{target[1]}", "-sf", str(SIPP_SCENARIOS / scenario), "-s", "agent",
            "-i", "127.0.0.1", "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-mp", str(free_udp_port(even=True, span=SIPP_MEDIA_PORTS)),
            "-m", str(calls), "-r", str(rate), "-l", str(limit), "-timeout", f"{int(timeout - 5)}s", "-timeout_error",
            "-nostdin", "-trace_err", "-trace_screen",
        ]
        if duration_ms is not None:
            args += ["-d", str(duration_ms)]
        for k, v in (keys or {}).items():
            args += ["-key", k, v]
        args += extra or []
        result = await run(args, cwd, timeout)
        screens = sorted(cwd.glob("*_screen.log"))
        if screens:
            result.stdout += screens[-1].read_text(errors="replace")
        errors = sorted(cwd.glob("*_errors.log"))
        if errors:
            result.stderr += errors[-1].read_text(errors="replace")
        if result.rc == 0 or "Unable to bind" not in result.stderr or start == 2:
            break
        for path in set(cwd.iterdir()) - before:  # the failed start's own logs
            path.unlink()
    return result


def sipp_counts(screen: str) -> dict[str, int]:
    """Successful and failed call counts from sipp's final screen."""
    out = {}
    for line in screen.splitlines():
        parts = line.split()
        if line.strip().startswith("Successful call") and parts:
            out["successful"] = int(parts[-1])
        elif line.strip().startswith("Failed call") and parts:
            out["failed"] = int(parts[-1])
    return out


async def pjsua2_call(target: str, wav: Path, rec: Path, *, digits: str = "", talk_s: float = 7.0, codec: str = "PCMU",
                      linger_s: float = 0.5, timeout: float = 60) -> tuple[Run, dict[str, object]]:
    """Place a call with pjsua2 (in a child process: PJSIP owns its threads and may abort)."""
    args = [
        str(PY311), str(PEERS / "pjsua2_caller.py"), "--to", target, "--wav", str(wav), "--rec", str(rec),
        "--sip-port", str(free_udp_port()), "--rtp-port", str(free_udp_port(even=True, span=2)),
        "--codec", codec, "--talk", str(talk_s), "--digits", digits, "--max-seconds", str(timeout - 10),
        "--linger", str(linger_s),
    ]
    result = await run(args, rec.parent, timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result, (json.loads(lines[-1]) if lines else {})


BARESIP_CONFIG = """\
poll_method\t\tepoll
sip_listen\t\t127.0.0.1:{sip_port}
audio_path\t\t/usr/share/baresip
audio_player\t\taufile,/dev/null
audio_source\t\taufile,{wav}
audio_alert\t\taufile,/dev/null
ausrc_srate\t\t8000
auplay_srate\t\t8000
ausrc_channels\t\t1
auplay_channels\t\t1
rtp_ports\t\t{rtp_first}-{rtp_last}
rtp_timeout\t\t0
module_path\t\t/usr/lib/baresip/modules
module\t\t\tg711.so
module\t\t\taufile.so
module\t\t\tsndfile.so
module_app\t\taccount.so
module_app\t\tmenu.so
module_app\t\tctrl_tcp.so
ctrl_tcp_listen\t\t127.0.0.1:{ctrl_port}
snd_path\t\t{out_dir}
"""


class Baresip:
    """A baresip caller driven over its TCP control socket (netstring JSON)."""

    def __init__(self, directory: Path, wav: Path, codec: str = "PCMU") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.wav = wav
        (self.dir / "accounts").write_text(f"<sip:caller@127.0.0.1>;regint=0;audio_codecs={codec}\n")
        self.proc: asyncio.subprocess.Process | None = None
        self.log = self.dir / "baresip.log"
        self._configure()

    def _configure(self) -> None:
        # baresip binds SIP-TLS on the SIP port + 1: reserve a pair
        self.sip_port = free_sip_port_pair()
        rtp = free_udp_port(even=True, span=2)
        self.ctrl_port = free_tcp_port()
        (self.dir / "config").write_text(BARESIP_CONFIG.format(
            sip_port=self.sip_port, wav=self.wav, rtp_first=rtp, rtp_last=rtp + 1, ctrl_port=self.ctrl_port,
            out_dir=self.dir,
        ))

    async def dial(self, target: str, max_seconds: int = 40) -> None:
        """Start baresip dialling `target`. A port taken between choosing it and baresip binding it
        (other suites run beside this one) is retried with fresh ports, a bounded number of times."""
        for attempt in range(3):
            self.proc = await asyncio.create_subprocess_exec(
                "baresip", "-f", str(self.dir), "-t", str(max_seconds), "-e", f"/dial {target}",
                stdin=asyncio.subprocess.DEVNULL, stdout=self.log.open("wb"), stderr=asyncio.subprocess.STDOUT,
            )
            try:
                await asyncio.wait_for(self.proc.wait(), 1.0)
            except TimeoutError:
                return  # running
            if attempt == 2 or "Address already in use" not in self.log.read_text(errors="replace"):
                return  # exited for another reason: the test reports it
            self._configure()

    async def command(self, cmd: str, params: str = "") -> str:
        """One ctrl_tcp command; returns the reply (bounded)."""
        for _ in range(50):
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.ctrl_port), 2)
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError("baresip control socket never opened")
        body = json.dumps({"command": cmd, "params": params, "token": cmd}).encode()
        writer.write(str(len(body)).encode() + b":" + body + b",")
        await writer.drain()
        try:
            reply = await asyncio.wait_for(reader.read(4096), 3)
        except TimeoutError:
            reply = b""
        writer.close()
        return reply.decode(errors="replace")

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                await self.command("quit")
            except (OSError, RuntimeError):
                pass
            await self.wait(5)

    def heard(self) -> Path | None:
        """What baresip decoded from the agent (sndfile writes `*-dec.wav`; `*-enc.wav` is its microphone)."""
        found = sorted(self.dir.glob("dump-*-dec.wav"))
        return found[-1] if found else None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
