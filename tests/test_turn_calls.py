"""Turn-taking in whole calls, in real time: the simulated Twilio caller -> the real server -> a fake
provider, over loopback. Real speech (eSpeak NG), sox noise, the caller's own echo of the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from itertools import pairwise
from typing import Any

import aiohttp
import numpy as np
import pytest
from agent_server import AUTH_TOKEN, PUBLIC_URL, running_agent, test_settings
from peers.fake_gemini import FakeGemini, Reply
from peers.fake_openai import FakeOpenAIServer, near_silent_pcm

from telephony_agent.realtime.providers.gemini import GeminiLiveModel
from telephony_agent.realtime.providers.openai import OpenAIRealtimeModel
from telephony_agent.telephony.assets import prompt_ulaw
from telephony_agent.telephony.speech_scorers import BatchedSileroScorer
from telephony_agent.testing.noise import noise_pcm16
from telephony_agent.testing.speech import speech_pcm16, speech_ulaw
from telephony_agent.testing.turn_sim import AGENT_TEXT
from telephony_agent.testing.twilio_caller import TwilioCaller, Utterance
from telephony_codecs import Transcoder, pcm16_to_ulaw, ulaw_to_pcm16

KEY = "test-key"
INTERRUPTION = "wait, stop, I have a different question"


def tone_24k(ms: int, freq: float = 440.0) -> bytes:
    t = np.arange(24 * ms) / 24000
    return (6000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def onset_s(ulaw: bytes) -> float:
    """Seconds into `ulaw` where the speech really starts (first 10 ms above -40 dBFS)."""
    x = np.frombuffer(ulaw_to_pcm16(ulaw), "<i2").astype(np.float64)
    frames = x[: len(x) // 80 * 80].reshape(-1, 80)
    loud = np.nonzero(np.mean(frames**2, axis=1) > (32768 * 0.01) ** 2)[0]
    return int(loud[0]) * 0.01 if loud.size else 0.0


def reaction_s(call: TwilioCaller, utt: Utterance, ulaw: bytes) -> float:
    """How much of the caller's speech, from its onset, went out before the latest clear arrived:
    the barge-in's reaction in audio time. A stall of the machine holds the microphone and the
    agent alike, so this does not grow with load the way the wall clock does."""
    sent = call.clear_speech_sent[-1] - utt.start_offset
    assert sent < len(ulaw), "the clear came only after the whole interruption was sent"
    return sent / 8000 - onset_s(ulaw)


def longest_silence(call: TwilioCaller, since: float, until: float) -> float:
    """Longest stretch in [since, until] with no agent audio playing, from the caller's playout."""
    spans = sorted((c.start, c.start + c.length / 8000) for c in call.heard_chunks if c.length)
    gap, t = 0.0, since
    for start, end in spans:
        if end <= t:
            continue
        if start > t:
            gap = max(gap, min(start, until) - t)
        t = max(t, end)
        if t >= until:
            break
    return max(gap, until - t) if t < until else gap


class EchoingCaller(TwilioCaller):
    """A speakerphone: what the caller hears comes back into their microphone `echo_ms` later,
    `echo_db` down, mixed under what they say. Built on the caller's own sample clocks (the
    playout's and the microphone's, both drift-free), so the echo is sample-coherent like an
    acoustic one."""

    echo_db: float = -10.0
    echo_ms: int = 150

    def __post_init__(self) -> None:
        super().__post_init__()
        self.background = b"\xff"  # routes every microphone frame through _mix_background
        self._mic_t0: float | None = None
        self._mic_frames = 0

    def _heard_at(self, t: float, n: int) -> np.ndarray:
        out = np.zeros(n)
        end = t + n / 8000
        for chunk in self.heard_chunks[-32:]:
            c_end = chunk.start + chunk.length / 8000
            if c_end <= t or chunk.start >= end:
                continue
            lo, hi = max(t, chunk.start), min(end, c_end)
            i0, j0 = round((lo - t) * 8000), round((lo - chunk.start) * 8000)
            count = min(n - i0, round((hi - lo) * 8000))
            data = bytes(self.heard_ulaw[chunk.offset + j0 : chunk.offset + j0 + count])
            out[i0 : i0 + len(data)] = np.frombuffer(ulaw_to_pcm16(data), "<i2")
        return out

    def _mix_background(self, frame: bytes) -> bytes:
        now = self._loop.time()
        t = None if self._mic_t0 is None else self._mic_t0 + self._mic_frames * 0.02
        # the microphone loop catches up after a short stall (a burst of frames) and only skips
        # ahead after one over 0.5 s: re-anchor only then, so the echo stays sample-coherent
        if t is None or abs(now - t) > 0.45:
            self._mic_t0, self._mic_frames, t = now, 0, now
        self._mic_frames += 1
        t -= 0.02  # when this frame's audio was captured
        echo = self._heard_at(t - self.echo_ms / 1000, len(frame)) * 10 ** (self.echo_db / 20)
        mixed = np.frombuffer(ulaw_to_pcm16(frame), "<i2") + echo
        return pcm16_to_ulaw(np.clip(mixed, -32768, 32767).astype("<i2").tobytes())


@asynccontextmanager
async def live_call(
    model: Any, cls: type[TwilioCaller] = TwilioCaller, hooks: tuple[Any, ...] | list[Any] = ()
) -> AsyncIterator[tuple[Any, TwilioCaller]]:
    """The real server on loopback with `model`, and one connected simulated Twilio caller."""
    async with running_agent(test_settings(), model) as agent, cls(agent.base_url, PUBLIC_URL, AUTH_TOKEN) as call:
        agent.state.call_hooks.extend(hooks)
        await call.place()
        await call.connect()
        yield agent, call


def _bridge(agent: Any) -> Any:
    return next(iter(agent.state.calls.values()))


# -- barge-in on a provider that says nothing ---------------------------------------------------


async def test_gemini_answer_generated_long_ago_is_cut_when_the_caller_interrupts() -> None:
    """Gemini sends `interrupted` only while generating: this answer (6 s) is generated in 0.5 s,
    so when the caller speaks 3 s into it, only the bridge's own detector can stop it."""
    answer = speech_pcm16(AGENT_TEXT, 24000)[: 24000 * 2 * 6]
    async with FakeGemini(api_key=KEY, reply_speed=12.0) as gemini:
        gemini.replies.append(Reply(audio=answer, transcript=AGENT_TEXT))
        gemini.replies.append(Reply(audio=tone_24k(800), transcript="Of course, go ahead."))
        async with live_call(GeminiLiveModel(KEY, url=gemini.url)) as (agent, call):
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_heard(3000, timeout=15)
            assert gemini.last.conversation.turns == 1  # generation finished long ago
            stop = speech_ulaw(INTERRUPTION)
            utt = call.say(stop)
            clear_at = await call.wait_clear(1, timeout=5)
            reaction = reaction_s(call, utt, stop)
            assert reaction <= 0.3, f"clear {reaction * 1000:.0f} ms of speech after its onset"
            heard_at_clear = len(call.heard_ulaw)
            await call.wait_for(lambda: gemini.last.conversation.turns >= 2, 10, "the next answer")
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1, since=clear_at, timeout=10)
            bridge = _bridge(agent)
            assert bridge.turn_stats.barge_ins == {"local": 1}
            after = np.frombuffer(ulaw_to_pcm16(bytes(call.heard_ulaw[heard_at_clear:])), "<i2").astype(float)
    # Everything heard after the clear is the next answer (a 440 Hz tone), none of the old one.
    frames = after[: after.size // 160 * 160].reshape(-1, 160)
    loud = frames[np.sqrt(np.mean(frames**2, axis=1)) > 300]
    assert len(loud) * 20 >= 600, "the next answer was heard"
    spectrum = np.abs(np.fft.rfft(loud, axis=1))
    assert np.all(np.abs(np.argmax(spectrum, axis=1) * 50 - 440) <= 50)
    # The model was told how much of its answer the caller heard (Gemini has no truncate).
    notes = [t for t in gemini.last.texts if t.startswith("(The caller interrupted you")]
    assert len(notes) == 1 and "they heard only" in notes[0]


# -- sounds that are not interruptions ------------------------------------------------------------


async def test_noise_over_agent_speech_leaves_the_agent_talking() -> None:
    answer = speech_pcm16(AGENT_TEXT, 24000)[: 24000 * 2 * 5]
    async with FakeGemini(api_key=KEY, reply_speed=12.0, input_transcript=None, silence_ms=700) as gemini:
        gemini.replies.append(Reply(audio=answer, transcript=AGENT_TEXT))
        async with live_call(GeminiLiveModel(KEY, url=gemini.url)) as (agent, call):
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_heard(800, timeout=15)
            for name in ("cough", "click", "white_burst"):
                call.say(pcm16_to_ulaw(noise_pcm16(name)))
                await asyncio.sleep(1.0)
            await call.wait_heard(5200, timeout=10)  # the answer, then the fake's reply to the noise
            bridge = _bridge(agent)
            assert bridge.turn_stats.barge_ins == {}, "a noise cut the agent off"
            assert bridge.stats.truncates == []
            # pauses only where the provider's own VAD took a noise for speech, each resumed
            assert bridge.turn_stats.pauses == bridge.turn_stats.false_interruptions == call.clears
            heard = bytes(call.heard_ulaw[: 8000 * 5])
    transcoder = Transcoder.pcm_to_g711("pcmu", 24000)
    assert_continuous(heard, transcoder.process(answer) + transcoder.flush(), pauses=max(1, call.clears))


@pytest.mark.parametrize(("link_delay_s", "repeat"), [(0.0, 320), (0.04, 480)], ids=["loopback", "a carrier 40 ms away"])
async def test_a_backchannel_pauses_and_the_agent_goes_on_where_it_stopped(link_delay_s: float, repeat: int) -> None:
    """Also over a link with 40 ms each way, as a carrier is: marks come back 80 ms after the
    audio played and the `clear` reaches the caller 40 ms after it was sent, so a count of what
    was heard by the marks alone runs a round trip behind the caller, and the resumed answer
    repeated that much (98 ms). The bridge learns the round trip from the mark of a chunk sent
    to an idle leg: at most 60 ms is repeated, nothing skipped."""
    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.queue_reply(AGENT_TEXT, speech_pcm16(AGENT_TEXT, 8000)[: 8000 * 2 * 4])
        openai.default_reply = type(openai.default_reply)("Yes?", speech_pcm16("Yes?", 8000))
        model = OpenAIRealtimeModel(KEY, url=openai.url)
        async with live_call(model, partial(TwilioCaller, link_delay_s=link_delay_s)) as (agent, call):
            await call.speak(speech_ulaw("What are your opening hours?"))
            await call.wait_heard(1500, timeout=15)
            await call.speak(speech_ulaw("mhm"))
            await call.wait_heard(4000 - 40, timeout=10)
            bridge = _bridge(agent)
            assert bridge.turn_stats.pauses == 1 and bridge.turn_stats.false_interruptions == 1
            assert bridge.turn_stats.barge_ins == {}
            assert openai.truncates == []
            heard_ulaw = bytes(call.heard_ulaw[: 8000 * 4])
    # The caller heard the whole answer, in order: every sounding frame is the answer's next
    # frame, a little repeated around the pause, nothing skipped.
    ref = pcm16_to_ulaw(speech_pcm16(AGENT_TEXT, 8000)[: 8000 * 2 * 4])
    assert_continuous(heard_ulaw, ref, repeat=repeat)


def assert_continuous(heard: bytes, ref: bytes, pauses: int = 1, repeat: int = 320) -> None:
    """Every sounding 20 ms heard is the answer's next 20 ms: at most `repeat` samples (two
    frames) repeated at each pause, nothing skipped, nothing out of order."""
    h = np.frombuffer(ulaw_to_pcm16(heard), "<i2").astype(float)
    r = np.frombuffer(ulaw_to_pcm16(ref), "<i2").astype(float)
    limit = 320 * pauses + 80 + 3 * (repeat - 320)  # a repeat well past the bound is found, and named
    shifts = []
    for k in range(0, h.size - 160, 160):
        w = h[k : k + 160]
        if np.sqrt(np.mean(w**2)) < 500 or k - limit < 0 or k + 160 > r.size:
            continue  # silence matches anywhere
        best, lag = max(
            (float(np.dot(w, r[k - d : k - d + 160]) / (np.linalg.norm(w) * np.linalg.norm(r[k - d : k - d + 160]) + 1e-9)), d)
            for d in range(limit + 1)
        )
        if best < 0.9:
            continue  # straddles a cut (the leg's clear stops mid-frame)
        shifts.append(lag)
    assert len(shifts) >= h.size / 160 * 0.4, "the answer was not heard"
    assert shifts[0] <= 8
    assert all(-8 <= b - a <= repeat + 8 for a, b in pairwise(shifts)), f"audio repeated, skipped or out of order: {shifts}"


# -- echo -----------------------------------------------------------------------------------------


async def test_agent_echo_is_not_a_barge_in_but_the_caller_over_it_is() -> None:
    answer = speech_pcm16(AGENT_TEXT, 24000)[: 24000 * 2 * 8]
    async with FakeGemini(api_key=KEY, reply_speed=12.0, input_transcript=None, vad_threshold=20000) as gemini:
        gemini.replies.append(Reply(audio=answer, transcript=AGENT_TEXT))
        gemini.replies.append(Reply(audio=tone_24k(300)))
        async with live_call(GeminiLiveModel(KEY, url=gemini.url), EchoingCaller) as (agent, call):
            await call.send_dtmf("1")  # the fake's VAD is deaf here: a key asks for the answer
            await call.wait_heard(4000, timeout=15)
            bridge = _bridge(agent)
            assert call.clears == 0 and bridge.turn_stats.pauses == 0, "the agent's own echo interrupted it"
            assert bridge.turns.echo.delay is not None
            stop = speech_ulaw(INTERRUPTION)
            utt = call.say(stop)
            await call.wait_clear(1, timeout=5)
            assert reaction_s(call, utt, stop) <= 0.3
            await call.wait_for(lambda: bridge.turn_stats.barge_ins, 5, "barge-in")
            scorer = bridge.turns.scorer
            assert isinstance(scorer, BatchedSileroScorer) and scorer._batch.windows_scored > 0  # scored with the loop's batch
            async with aiohttp.ClientSession() as http, http.get(agent.base_url + "/metrics") as r:
                text = await r.text()
            windows = [line for line in text.splitlines() if line.startswith("agent_vad_windows_total ")]
            assert windows and float(windows[0].split()[1]) >= 1, windows


# -- dead air -------------------------------------------------------------------------------------


async def test_a_failed_response_is_retried_and_the_answer_heard() -> None:
    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.fail_responses = 1
        openai.queue_reply("We open at nine.", speech_pcm16("We open at nine.", 8000))
        async with live_call(OpenAIRealtimeModel(KEY, url=openai.url)) as (agent, call):
            utt = await call.speak(speech_ulaw("When do you open?"))
            await call.wait_heard(len(prompt_ulaw("filler")) / 8 + 500, timeout=10)
            bridge = _bridge(agent)
            assert bridge.turn_stats.response_problems == {"response_failed": 1}
            assert bridge.turn_stats.retries == 1 and openai.failed_responses == 1
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1, timeout=10)
            assert utt.finished_at is not None
            assert longest_silence(call, utt.finished_at, call.last_audio_end or 0) < 5.0
            assert not bridge.ended


async def test_a_stalled_provider_gets_a_retry_then_the_apology_and_a_clean_end() -> None:
    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.stall_responses = 2
        async with live_call(OpenAIRealtimeModel(KEY, url=openai.url)) as (agent, call):
            utt = await call.speak(speech_ulaw("When do you open?"))
            bridge = _bridge(agent)
            filler_ms = len(prompt_ulaw("filler")) / 8
            await call.wait_heard(filler_ms + 500, timeout=15)  # the filler, then the apology starts
            assert bridge.turn_stats.response_problems == {"response_timeout": 2}
            assert bridge.turn_stats.retries == 1 and bridge.turn_stats.apologies == 1
            assert bridge.phase.value == "prompting"  # the apology plays, then the call is hung up
            assert utt.finished_at is not None
            # filler, then the apology: the caller never waited 5 s in silence
            assert longest_silence(call, utt.finished_at, call._loop.time()) < 5.0
            assert openai.stalled_responses == 2 and openai.cancellations  # the stalled one was cancelled


async def test_near_silent_output_is_no_answer() -> None:
    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.queue_reply("(silence)", near_silent_pcm(2500))
        openai.queue_reply("We open at nine.", speech_pcm16("We open at nine.", 8000))
        async with live_call(OpenAIRealtimeModel(KEY, url=openai.url)) as (agent, call):
            utt = await call.speak(speech_ulaw("When do you open?"))
            bridge = _bridge(agent)
            await call.wait_for(lambda: bridge.turn_stats.retries == 1, 8, "a retry")
            assert bridge.turn_stats.response_problems == {"near_silent": 1}
            await call.wait_for(lambda: openai.responses_started >= 2, 5, "the second response")
            await call.wait_silence_after_audio(silence_ms=300, min_heard_ms=1000, since=utt.finished_at, timeout=10)
            assert utt.finished_at is not None
            assert longest_silence(call, utt.finished_at, call.last_audio_end or 0) < 5.0


async def test_a_tool_loop_is_capped_then_apologised_for() -> None:
    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.tool_loop = "lookup_order"  # a tool the agent does not have: every call fails at once
        async with live_call(OpenAIRealtimeModel(KEY, url=openai.url)) as (agent, call):
            utt = await call.speak(speech_ulaw("Where is my order?"))
            bridge = _bridge(agent)
            await call.wait_for(lambda: bridge.turn_stats.apologies, 10, "the apology")
            await call.wait_heard(500, timeout=5)
            assert bridge.turn_stats.tool_round_caps >= 2
            assert bridge.runner.tool_calls == 6  # five rounds run, the sixth refused with the reason
            assert openai.responses_started <= 9  # bounded: no unbounded billed requests
            assert bridge.phase.value == "prompting"  # the apology plays, then the call is hung up
            assert utt.finished_at is not None
            assert longest_silence(call, utt.finished_at, call._loop.time()) < 5.0


async def test_a_slow_tool_gets_a_filler() -> None:
    def extend(bridge: Any) -> None:
        async def check_stock() -> str:
            """Slow warehouse lookup."""
            await asyncio.sleep(2.5)
            return "in stock"

        bridge.tools.register(check_stock)

    async with FakeOpenAIServer(api_key=KEY) as openai:
        openai.queue_function_calls([("check_stock", {})])
        openai.queue_reply("It is in stock.", speech_pcm16("It is in stock.", 8000))
        async with live_call(OpenAIRealtimeModel(KEY, url=openai.url), hooks=[extend]) as (agent, call):
            utt = await call.speak(speech_ulaw("Is it in stock?"))
            bridge = _bridge(agent)
            await call.wait_for(lambda: bridge.turn_stats.fillers == 1, 5, "a filler")
            await call.wait_heard(len(prompt_ulaw("filler")) / 8 + 800, timeout=10)
            assert utt.finished_at is not None
            assert longest_silence(call, utt.finished_at, call.last_audio_end or 0) < 5.0
            assert bridge.turn_stats.response_problems == {}
