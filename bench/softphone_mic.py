"""Where should the browser softphone's microphone become 8 kHz mu-law: in the page, or on the server?

Run with `make bench-softphone` (needs Debian's chromium + chromium-driver and selenium). Measures,
per second of call audio (= per call, since a call streams one second per second):

* in the page (headless Chromium, the page's own dsp.js): the capture path as shipped (resample
  the context rate to 8 kHz, mu-law, base64, JSON per 20 ms frame), against sending the context's
  PCM16 as it is (int16 conversion, base64, JSON per 20 ms frame);
* on the server (this Python, the server's own codec): parsing a mu-law media frame, against
  parsing a PCM frame and converting it (telephony_codecs `Transcoder.pcm_to_ulaw8k`);
* the bytes each puts on the wire.

Prints a markdown table, and writes it to docs/bench-softphone.md with `--write`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one call = one core

import argparse
import asyncio
import binascii
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "codecs")]

from telephony_agent.telephony.twilio.stream import Media, MediaStreamProtocol
from telephony_codecs import pcm16_to_ulaw
from telephony_codecs.transcode import Transcoder

SECONDS = 30
LIVE_SECONDS = 10.0
RATES = (48000, 44100)

PAGE_BENCH = """
const [rate, seconds, reps] = arguments;
const done = arguments[arguments.length - 1];
import(new URL("softphone/static/dsp.js", document.baseURI).href).then((dsp) => {
  const n = rate * seconds;
  const x = new Float32Array(n);
  let seed = 1;
  for (let i = 0; i < n; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    x[i] = 0.3 * Math.sin(2 * Math.PI * 440 * i / rate) + 0.2 * Math.sin(2 * Math.PI * 1900 * i / rate) + 0.05 * (seed / 0x7fffffff - 0.5);
  }
  const b64 = (bytes) => { let s = ""; for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]); return btoa(s); };
  const message = (payload, k) => JSON.stringify({ event: "media", sequenceNumber: String(k), streamSid: "MZ0123456789abcdef0123456789abcdef",
    media: { track: "inbound", chunk: String(k), timestamp: String(k * 20), payload } });
  let sink = 0;
  const mulaw = () => {  // as capture-worklet.js + softphone.js do it
    const r = new dsp.Resampler(rate, 8000);
    const frame = new Float32Array(160);
    let filled = 0, k = 0;
    for (let i = 0; i < n; i += 128) {
      const line = r.process(x.subarray(i, i + 128));
      for (let j = 0; j < line.length; j++) {
        frame[filled++] = line[j];
        if (filled === 160) { sink += message(b64(dsp.floatToMulaw(frame)), ++k).length; filled = 0; }
      }
    }
  };
  const pcm = () => {  // the alternative: the context's PCM16, 20 ms per message
    const per = Math.round(rate / 50);
    const out = new Int16Array(per);
    const bytes = new Uint8Array(out.buffer);
    let filled = 0, k = 0;
    for (let i = 0; i < n; i += 128) {
      const block = x.subarray(i, i + 128);
      for (let j = 0; j < block.length; j++) {
        let s = Math.round(block[j] * 32767);
        out[filled++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
        if (filled === per) { sink += message(b64(bytes), ++k).length; filled = 0; }
      }
    }
  };
  const playout = () => {  // the speaker side, the same either way: 8 kHz up to the context rate
    const r = new dsp.Resampler(8000, rate);
    const out = new Float32Array(128);
    let k = 0;
    for (let i = 0; i < n; i += 128) { r.pull(out, 128, () => x[k++ % n]); sink += out[0]; }
  };
  const time = (fn) => { let best = Infinity; for (let r = 0; r < reps; r++) { const t = performance.now(); fn(); best = Math.min(best, performance.now() - t); } return best; };
  const result = { mulaw_ms: time(mulaw), pcm_ms: time(pcm), playout_ms: time(playout) };
  sink = 0; mulaw(); result.mulaw_bytes = sink;
  sink = 0; pcm(); result.pcm_bytes = sink;
  done(result);
}, (e) => done({ error: String(e) }));
"""


def inbound(audio: bytes, per: int) -> list[str]:
    """Media frames as a caller's side sends them (as the page does, and Twilio)."""
    frames = []
    for k, i in enumerate(range(0, len(audio), per), start=1):
        payload = binascii.b2a_base64(audio[i : i + per], newline=False).decode()
        frames.append(orjson.dumps({"event": "media", "sequenceNumber": str(k + 1), "streamSid": "MZ" + "0" * 32,
            "media": {"track": "inbound", "chunk": str(k), "timestamp": str(20 * k), "payload": payload}}).decode())
    return frames


def server_costs(rate: int, seconds: int, reps: int) -> dict[str, float]:
    """CPU seconds the server spends per `seconds` of one caller's audio, each way."""
    rng = np.random.default_rng(1)
    t = np.arange(rate * seconds) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)) * 32767
    pcm16 = np.minimum(np.maximum(pcm, -32768.0), 32767.0).astype("<i2").tobytes()
    per = rate // 50 * 2
    pcm_frames = inbound(pcm16, per)
    t8 = np.arange(8000 * seconds) / 8000
    pcm8 = (0.3 * np.sin(2 * np.pi * 440 * t8) + 0.05 * rng.standard_normal(t8.size)) * 32767
    ulaw = pcm16_to_ulaw(np.minimum(np.maximum(pcm8, -32768.0), 32767.0).astype("<i2").tobytes())
    ulaw_frames = inbound(ulaw, 160)
    start = orjson.dumps({"event": "start", "start": {
        "streamSid": "MZ" + "0" * 32, "callSid": "CA" + "0" * 32, "accountSid": "AC" + "0" * 32}}).decode()

    def mulaw_path() -> None:
        proto = MediaStreamProtocol()
        proto.receive_text(start)
        for text in ulaw_frames:
            (event,) = proto.receive_text(text)
            assert isinstance(event, Media), event

    def pcm_path() -> None:
        proto = MediaStreamProtocol()
        proto.receive_text(start)
        transcoder = Transcoder.pcm_to_ulaw8k(rate)
        for text in pcm_frames:
            (event,) = proto.receive_text(text)
            assert isinstance(event, Media), event
            transcoder.process(event.payload)

    def best(fn: Any) -> float:
        times = []
        for _ in range(reps):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times)

    return {"mulaw_s": best(mulaw_path), "pcm_s": best(pcm_path),
            "mulaw_bytes": float(sum(map(len, ulaw_frames))), "pcm_bytes": float(sum(map(len, pcm_frames)))}


async def page_costs(seconds: int, reps: int) -> dict[Any, Any]:
    """Run the page's own code in headless Chromium, served by the real app in local mode."""
    from aiohttp import web
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from telephony_agent.server import create_app
    from telephony_agent.settings import Settings

    values: dict[str, Any] = {"_env_file": None, "twilio_validate": False, "provider": "local", "host": "127.0.0.1"}
    app = create_app(Settings(**values))
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="bench-softphone-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = await asyncio.to_thread(
        webdriver.Chrome, options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    )
    try:
        driver.set_script_timeout(300)
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{port}/softphone")
        out: dict[Any, Any] = {}
        for rate in RATES:
            result = await asyncio.to_thread(driver.execute_async_script, PAGE_BENCH, rate, seconds, reps)
            if "error" in result:
                raise RuntimeError(result["error"])
            out[rate] = result
        out["version"] = driver.capabilities.get("browserVersion", "?")  # type: ignore[index]
        out["live"] = await live_call_cpu(driver, LIVE_SECONDS)
        return out
    finally:
        await asyncio.to_thread(driver.quit)
        await runner.cleanup()
        shutil.rmtree(profile, ignore_errors=True)


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root`'s descendants (the browser's processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def live_call_cpu(driver: Any, seconds: float) -> dict[str, float]:
    """The whole browser (every Chromium process) with the page open, then during a call."""
    root = driver.service.process.pid

    async def measure() -> float:
        start = _tree_cpu_seconds(root)
        await asyncio.sleep(seconds)
        return (_tree_cpu_seconds(root) - start) / seconds

    idle = await measure()
    await asyncio.to_thread(driver.execute_script, "document.getElementById('call').click()")
    for _ in range(100):
        state = await asyncio.to_thread(driver.execute_script, "return window.softphone.state")
        if state == "in_call":
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError(f"the call did not connect: {state}")
    await asyncio.sleep(2)
    in_call = await measure()
    await asyncio.to_thread(driver.execute_script, "window.softphone.hangup()")
    await asyncio.sleep(1)
    return {"idle": idle, "in_call": in_call}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="also write docs/bench-softphone.md")
    args = parser.parse_args()
    page = asyncio.run(page_costs(args.seconds, args.reps))
    rows = []
    playout = []
    for rate in RATES:
        server = server_costs(rate, args.seconds, args.reps)
        p = page[rate]
        per_s = 1.0 / args.seconds
        rows.append(
            f"| {rate} | page: resample + mu-law (shipped) | {100 * p['mulaw_ms'] / 1000 * per_s:.2f} % "
            f"| server: parse | {100 * server['mulaw_s'] * per_s:.2f} % | {p['mulaw_bytes'] * per_s / 1000:.1f} kB/s |"
        )
        rows.append(
            f"| {rate} | page: PCM16 as is | {100 * p['pcm_ms'] / 1000 * per_s:.2f} % "
            f"| server: parse + resample + mu-law | {100 * server['pcm_s'] * per_s:.2f} % "
            f"| {p['pcm_bytes'] * per_s / 1000:.1f} kB/s |"
        )
        playout.append(f"{100 * p['playout_ms'] / 1000 * per_s:.2f} % at {rate} Hz")
    table = "\n".join(
        [
            (
                f"Chromium {page['version']}, Python {platform.python_version()}, {platform.machine()}; "
                f"{args.seconds} s of audio, best of {args.reps}. CPU as % of one core per call."
            ),
            "",
            "| context rate | in the page | page CPU | on the server | server CPU | on the wire |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "The page's playout (8 kHz up to the context rate, the same either way): " + ", ".join(playout) + ".",
            "",
            (
                f"The whole browser (every Chromium process, headless) during a live call to the local engine: "
                f"{100 * page['live']['in_call']:.1f} % of a core; with the page open and no call: "
                f"{100 * page['live']['idle']:.1f} %."
            ),
        ]
    )
    print(table)
    if args.write:
        doc = ROOT / "docs" / "bench-softphone.md"
        doc.write_text(
            "# Softphone microphone: mu-law in the page or on the server\n\n"
            "Measured by `make bench-softphone` (bench/softphone_mic.py).\n\n" + table + "\n"
        )
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
