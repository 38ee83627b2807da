"""The browser softphone in a real headless Chromium, calling the offline local engine.

The fake microphone plays real speech (eSpeak NG through sox) on a schedule: silence while the
greeting plays, "What are your opening hours?" at 7 s, and "What is your address?" at 13 s, in
the middle of the (seven-second) answer to the first question, so it barges in. One browser
serves every test in this module; screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_server import running_agent, test_settings
from local_helpers import CALLER_VOICE
from peers.chromium import BrowserPage, missing, start_chromium

from telephony_agent.realtime.providers.local import LocalRealtimeModel
from telephony_agent.settings import Settings
from telephony_agent.telephony.bridge import CallBridge, CallOutcome
from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import pcm16_to_ulaw, ulaw_to_pcm16

_WHY = missing()
pytestmark = [
    pytest.mark.skipif(_WHY is not None, reason=_WHY or ""),
    pytest.mark.peers(python="3.13"),  # the page and Chromium; the server side is in test_softphone_routes.py
]

MIC_RATE = 48000
FIRST_QUESTION_AT = 7.0  # after the greeting, even on a slow machine
SECOND_QUESTION_AT = 13.0  # inside the answer to the first
SOFTPHONE_TOKEN = "softphone-test-token-0123456789"


def microphone_wav(path: Path) -> Path:
    """The caller's side of the call, as the fake microphone will play it."""
    track = np.zeros(int(35 * MIC_RATE), dtype=np.int16)
    for at, text in ((FIRST_QUESTION_AT, "What are your opening hours?"), (SECOND_QUESTION_AT, "What is your address?")):
        speech = np.frombuffer(speech_pcm16(text, rate=MIC_RATE, **CALLER_VOICE), dtype="<i2")
        start = int(at * MIC_RATE)
        track[start : start + len(speech)] = speech
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(track.astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    base = tmp_path_factory.mktemp("chromium")
    browser = start_chromium(base / "profile", microphone_wav(base / "microphone.wav"))
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
async def page(driver: Any) -> AsyncIterator[BrowserPage]:
    yield BrowserPage(driver)
    await BrowserPage(driver).js("window.softphone && window.softphone.hangup()")  # never leave a call up


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("softphone-screenshots")


def settings(**overrides: Any) -> Settings:
    # The machine's load is not under test: a busy event loop must not refuse these calls.
    # No account SID: a softphone call has no Twilio call to hang up over REST (and tests stay offline).
    return test_settings(max_loop_lag_ms=5000, **{"twilio_account_sid": None, **overrides})


async def warm_model() -> LocalRealtimeModel:
    """Recognition workers loaded before the call, so the greeting starts within a second or two."""
    model = LocalRealtimeModel()
    await model.warm_up()
    return model


async def until(condition: Callable[[], Any], timeout: float, what: str, detail: Callable[[], Any] = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}: {detail()}")
        await asyncio.sleep(0.05)


def lines(bridge: CallBridge, who: str) -> str:
    return " ".join(text for speaker, text in bridge.stats.transcript if speaker == who).lower()


def rms_db(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -120.0  # nothing there: as silent as it gets
    x = samples.astype(np.float64)
    return float(10 * np.log10(np.mean(x**2) / 32768**2 + 1e-12))


async def download(page: BrowserPage, url: str) -> bytes:
    """The recording the page offers, fetched from its blob: URL inside the page."""
    b64 = await page.js_async(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buf) => {
          const bytes = new Uint8Array(buf);
          let s = "";
          for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          done(btoa(s));
        }, (e) => done("error: " + e));
        """,
        url,
    )
    assert not b64.startswith("error"), b64
    return base64.b64decode(b64)


async def test_a_call_from_the_browser(page: BrowserPage, shots: Path) -> None:
    model = await warm_model()
    async with running_agent(settings(twilio_validate=False), model) as agent:
        snap = await page.open(agent.base_url + "/softphone")
        assert snap["access"] == "local" and snap["state"] == "idle"
        assert not await page.visible("#token-row")  # local development: no token asked
        await page.click("#call")
        await page.wait(lambda s: s["state"] == "in_call", 15, "the call to connect")
        bridge = await until(lambda: next(iter(agent.state.calls.values()), None), 5, "the call on the server")
        assert bridge.call_id == (await page.snapshot())["callSid"]

        # The greeting reaches the page's output (the analyser between the player and the speakers).
        snap = await page.wait(
            lambda s: s["stats"]["playedMs"] >= 2000 and s["stats"]["outputAudibleMs"] >= 1000, 15, "the greeting"
        )
        assert snap["stats"]["outputPeakDb"] > -30, snap["stats"]
        assert snap["stats"]["firstAudioMs"] > 0
        await page.screenshot(shots / "1-greeting.png")

        # The spoken question, sent as mu-law encoded in the page, is recognised and answered.
        await until(lambda: "monday to friday" in lines(bridge, "agent"), 25, "the answer about opening hours", lambda: bridge.stats.transcript)
        assert "opening" in lines(bridge, "caller"), bridge.stats.transcript

        # The second question barges in: the server clears, the page drops its queue and echoes
        # every pending mark at once.
        snap = await page.wait(
            lambda s: any(e["kind"] == "barge-in" for e in s["timeline"]), 25, "a barge-in to clear playback"
        )
        # (the server pauses the agent at the onset; the barge-in follows once the speech is
        # longer than a backchannel)
        await until(lambda: bridge.stats.barge_ins >= 1, 5, "the barge-in", lambda: bridge.turn_stats)
        assert snap["stats"]["clears"] >= 1 and snap["stats"]["marksEchoedOnClear"] >= 1, snap["stats"]
        # ... and the agent answers what it heard (the echo canceller may have clipped the start of
        # the question, so the answer may be the script's "didn't catch that").
        at_barge_in = len(bridge.stats.transcript)
        await until(
            lambda: any(who == "agent" for who, _ in bridge.stats.transcript[at_barge_in:]),
            25,
            "an answer after the barge-in",
            lambda: bridge.stats.transcript,
        )
        await page.screenshot(shots / "2-barge-in.png")

        # Marks come back only once their audio has played, so several were outstanding at once
        # (test_playout_echoes_marks_as_twilio_does times them).
        snap = await page.snapshot()
        assert snap["stats"]["maxMarksPending"] >= 2 and snap["stats"]["marksEchoed"] > 10, snap["stats"]

        await page.click('#keypad button[data-digit="5"]')
        await until(lambda: bridge.stats.dtmf == ["5"], 5, "the keypad digit at the agent")

        await page.click("#hangup")
        await agent.wait_no_calls(timeout=10)
        snap = await page.wait(lambda s: s["state"] == "ended" and s["wavUrl"], 10, "the recording")
        await page.screenshot(shots / "3-ended.png")
        kinds = {e["kind"] for e in snap["timeline"]}
        assert {"call", "agent", "caller", "barge-in", "dtmf"} <= kinds, snap["timeline"]

        # The two-channel recording: the caller on the left, the agent on the right, in step.
        with wave.open(io.BytesIO(await download(page, snap["wavUrl"]))) as wav:
            assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
        caller, heard = pcm[:, 0], pcm[:, 1]
        assert len(pcm) / 8000 > SECOND_QUESTION_AT
        # The question starts at 7 s of the microphone's file, which began playing when the page
        # asked for the microphone, a moment before the stream (and the recording) started.
        frames = caller[: len(caller) // 160 * 160].reshape(-1, 160)
        loud = [i for i, frame in enumerate(frames) if rms_db(frame) > -35]
        assert loud, "no caller speech recorded"
        assert FIRST_QUESTION_AT - 2.0 <= loud[0] * 0.02 <= FIRST_QUESTION_AT + 0.1, loud[0] * 0.02
        assert rms_db(caller[: int((FIRST_QUESTION_AT - 2.0) * 8000)]) < -50  # silence before it
        start = snap["stats"]["firstAudioMs"] * 8
        assert rms_db(heard[max(0, start - 2000) : start + 8000]) > -35  # the greeting, where it was heard
        assert rms_db(heard[: max(0, start - 2400)]) < -60


async def test_token_mode_refuses_without_the_token_and_works_with_it(page: BrowserPage, shots: Path) -> None:
    model = await warm_model()
    # Signatures checked: not local mode.
    async with running_agent(settings(softphone_token=SOFTPHONE_TOKEN, max_calls=1), model) as agent:
        snap = await page.open(agent.base_url + "/softphone")
        assert snap["access"] == "token"
        assert await page.visible("#token-row")

        await page.click("#call")  # no token: the page does not even ask the server
        snap = await page.wait(lambda s: s["state"] == "refused", 5, "a refusal")
        assert snap["error"] == "token_required" and "token" in snap["status"]

        await page.type("#token", "not-the-token-at-all")
        await page.click("#call")
        snap = await page.wait(lambda s: s["state"] == "refused" and s["error"] == "bad_token", 10, "a bad token refused")
        await page.screenshot(shots / "4-bad-token.png")
        assert not agent.state.calls and not agent.state.pending  # nothing reserved, nothing started
        refused = agent.state.metrics.webhooks_refused.labels("softphone")._value.get()
        assert refused == 1

        # The right token does not get round the call limit: with the only slot held (as by a
        # Twilio call whose webhook was answered), the page is told the server is full.
        await page.type("#token", SOFTPHONE_TOKEN)
        assert agent.state.manager.reserve("CA" + "1" * 32) is None
        await page.click("#call")
        snap = await page.wait(lambda s: s["state"] == "refused", 10, "the call limit")
        assert snap["error"] == "at_capacity" and "call limit" in snap["status"], snap
        agent.state.manager.release("CA" + "1" * 32)

        await page.click("#call")
        await page.wait(lambda s: s["state"] == "in_call", 15, "the call to connect")
        bridge = await until(lambda: next(iter(agent.state.calls.values()), None), 5, "the call on the server")
        await page.wait(lambda s: s["stats"]["outputAudibleMs"] >= 500, 15, "the greeting")
        # This time the agent's side hangs up: the page sees its socket close and ends the call.
        await bridge.end(CallOutcome.AGENT_HANGUP, hangup=True)
        snap = await page.wait(lambda s: s["state"] == "ended" and s["wavUrl"], 10, "the page to see the call end")
        await agent.wait_no_calls(timeout=10)
        assert snap["stats"]["closedByServer"], snap
        assert any("the agent ended the call" in e["text"] for e in snap["timeline"]), snap["timeline"]


async def test_codec_in_the_page_matches_the_server(page: BrowserPage) -> None:
    """The page's mu-law is bit-exact with the server's; its resamplers keep speech and stop aliases."""
    async with running_agent(settings(twilio_validate=False), LocalRealtimeModel()) as agent:
        await page.open(agent.base_url + "/softphone")
        result = await page.js_async(
            """
            const done = arguments[arguments.length - 1];
            import(new URL("softphone/static/dsp.js", document.baseURI).href).then((dsp) => {
              const enc = new Uint8Array(65536);
              for (let i = 0; i < 65536; i++) enc[i] = dsp.mulawEncode(i - 32768);
              let s = "";
              for (let i = 0; i < enc.length; i += 0x8000) s += String.fromCharCode(...enc.subarray(i, i + 0x8000));
              const tone = (hz, rate, seconds) => Float32Array.from({ length: rate * seconds }, (_, i) => 0.5 * Math.sin(2 * Math.PI * hz * i / rate));
              const rms = (x) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
              const down = (hz, rate) => {
                const r = new dsp.Resampler(rate, 8000);
                const out = [];
                const x = tone(hz, rate, 1);
                for (let i = 0; i < x.length; i += 128) out.push(...r.process(x.subarray(i, i + 128)));
                return { n: out.length, rms: rms(Float32Array.from(out).subarray(800)) };
              };
              const goertzel = (x, hz, rate) => {
                const w = 2 * Math.PI * hz / rate; let s1 = 0, s2 = 0;
                for (const v of x) { const s0 = v + 2 * Math.cos(w) * s1 - s2; s2 = s1; s1 = s0; }
                return Math.sqrt(s1 * s1 + s2 * s2 - 2 * Math.cos(w) * s1 * s2) / x.length;
              };
              const up = (rate) => {
                const r = new dsp.Resampler(8000, rate);
                const x = tone(1000, 8000, 1);
                let i = 0;
                const out = new Float32Array(rate / 2);
                r.pull(out, out.length, () => x[i++] || 0);
                const tail = out.subarray(rate / 10);
                return { tone: goertzel(tail, 1000, rate), image: goertzel(tail, 7000, rate) };
              };
              done({
                encoded: btoa(s),
                decoded: Array.from(dsp.MULAW_DECODE),
                down48k_1k: down(1000, 48000), down44k_3k: down(3000, 44100), down48k_5k: down(5000, 48000),
                down44k_6k: down(6000, 44100), up48k: up(48000), up44k: up(44100),
              });
            }, (e) => done({ error: String(e) }));
            """
        )
    assert "error" not in result, result
    ramp = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert base64.b64decode(result["encoded"]) == pcm16_to_ulaw(ramp)
    assert result["decoded"] == np.frombuffer(ulaw_to_pcm16(bytes(range(256))), dtype="<i2").tolist()
    tone_rms = 0.5 / math.sqrt(2)

    def db(x: float) -> float:
        return 20 * math.log10(x + 1e-12)

    for key in ("down48k_1k", "down44k_3k"):  # speech band: kept within 1 dB
        assert abs(result[key]["n"] - 8000) <= 40, result[key]
        assert abs(db(result[key]["rms"] / tone_rms)) < 1.0, (key, result[key])
    for key in ("down48k_5k", "down44k_6k"):  # above 4 kHz: would alias, filtered out
        assert db(result[key]["rms"] / tone_rms) < -40, (key, result[key])
    for key in ("up48k", "up44k"):  # the 8 kHz line's image at 7 kHz is filtered out
        tone, image = result[key]["tone"], result[key]["image"]
        assert db(image / tone) < -40, (key, result[key])


async def test_playout_echoes_marks_as_twilio_does(page: BrowserPage) -> None:
    """The page's player on its own: a mark comes back once the audio queued before it has played,
    at once when nothing is queued, and every pending mark comes back at once on `clear`."""
    async with running_agent(settings(twilio_validate=False), LocalRealtimeModel()) as agent:
        await page.open(agent.base_url + "/softphone")
        events = await page.js_async(
            """
            const done = arguments[arguments.length - 1];
            (async () => {
              const ctx = new AudioContext();
              await ctx.audioWorklet.addModule("softphone/static/playout-worklet.js");
              await ctx.resume();
              const node = new AudioWorkletNode(ctx, "softphone-playout", {
                numberOfInputs: 0, outputChannelCount: [1], processorOptions: { prebufferMs: 60 } });
              node.connect(ctx.destination);
              node.port.postMessage({ type: "latency", seconds: 0.1 });  // as if 100 ms to the speaker
              const events = [];
              const t0 = performance.now();
              node.port.onmessage = (e) => {
                if (e.data.type === "played" || e.data.type === "cleared" || e.data.type === "playing")
                  events.push({ ...e.data, at: performance.now() - t0 });
              };
              const tone = (ms) => Uint8Array.from({ length: ms * 8 }, (_, i) => (i % 16 < 8 ? 0x20 : 0xa0));
              node.port.postMessage({ type: "mark", name: "empty" });  // nothing queued before it
              node.port.postMessage({ type: "media", ulaw: tone(200) });
              node.port.postMessage({ type: "mark", name: "a" });
              node.port.postMessage({ type: "media", ulaw: tone(200) });
              node.port.postMessage({ type: "mark", name: "b" });
              node.port.postMessage({ type: "media", ulaw: tone(2000) });
              node.port.postMessage({ type: "mark", name: "c" });
              node.port.postMessage({ type: "media", ulaw: tone(500) });
              node.port.postMessage({ type: "mark", name: "d" });
              await new Promise((r) => setTimeout(r, 800));
              node.port.postMessage({ type: "clear" });
              node.port.postMessage({ type: "mark", name: "after" });
              await new Promise((r) => setTimeout(r, 300));
              await ctx.close();
              return events;
            })().then(done, (e) => done([{ error: String(e) }]));
            """
        )
    assert "error" not in events[0], events
    # Times on the player's own clock (8 kHz samples rendered, in seconds): exact even when a busy
    # machine makes the audio thread miss a deadline.
    played = {name: e["tick"] / 8000 for e in events if e["type"] == "played" for name in e["names"]}
    started = next(e["tick"] / 8000 for e in events if e["type"] == "playing")
    cleared = [e for e in events if e["type"] == "cleared"]
    assert list(played) == ["empty", "a", "b", "after"], events
    assert played["empty"] <= started + 0.01  # nothing before it, nothing playing: straight back
    # 200 ms of audio before "a", 400 ms before "b": each comes back when its audio has been heard,
    # i.e. rendered and then 100 ms through the output.
    assert 0.295 <= played["a"] - started < 0.35, events
    assert 0.195 <= played["b"] - played["a"] < 0.25, events
    assert len(cleared) == 1 and cleared[0]["names"] == ["c", "d"], events
    assert cleared[0]["wasPlaying"] and 1500 < cleared[0]["droppedMs"] < 2700, events
    # After the clear nothing is queued: only what was already in the output is still to be heard.
    assert 0.09 <= played["after"] - cleared[0]["tick"] / 8000 < 0.13, events
