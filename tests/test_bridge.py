"""`CallBridge` alone: a simulated phone leg and a scripted realtime session on a virtual clock.

No sockets and no event-loop timers: the bridge reads the test's clock, and the harness advances
it from one event to the next (the leg finishing a chunk, caller audio every packet, the bridge's
own `get_timer()` deadline), calling `handle_timer(now)` the way the asyncio shell would.

The simulated leg plays what it is sent back to back at real time and records what the caller
heard; it echoes playout confirmations (like Twilio marks), or not (like a simulator with echoes
off), or is a leg that confirms nothing at all (like RTP).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest
from scripted_model import ScriptedModel, ScriptedSession

from telephony_agent.realtime import (
    PCM16_16K,
    PCM16_24K,
    PCMU_8K,
    AudioDelta,
    AudioDone,
    AudioEncoding,
    AudioFormat,
    FunctionCallDone,
    RealtimeConfig,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
)
from telephony_agent.telephony.assets import prompt_audio
from telephony_agent.telephony.bridge import (
    AUDIO_BURST_S,
    AUDIO_RATE,
    EARLY_DIGITS,
    KEY_BURST,
    KEYS_PER_S,
    BridgeOptions,
    CallBridge,
    CallOutcome,
    CallPhase,
)
from telephony_agent.telephony.leg import PCMA_20MS, PCMU_20MS, AudioLaw, PhoneFormat
from telephony_agent.telephony.speech_scorers import BatchedSileroScorer
from telephony_agent.testing.speech import speech_pcm16
from telephony_codecs import (
    StreamResampler,
    alaw_to_pcm16,
    pcm16_to_alaw,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
)

PCMA_8K = AudioFormat.alaw8k()


class VirtualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# -- the phone leg ------------------------------------------------------------------------------


@dataclass
class _Scheduled:
    tag: str
    audio: bytes
    start: float
    end: float


class SimLeg:
    """A `PhoneLeg` that plays at real time. `echoes`: confirm each chunk once played (Twilio
    marks); `confirms=False`: a leg that never confirms (RTP)."""

    def __init__(self, clock: VirtualClock, fmt: PhoneFormat = PCMU_20MS, *, confirms: bool = True,
                 echoes: bool = True) -> None:
        self.clock = clock
        self._format = fmt
        self._confirms = confirms
        self.echoes = echoes and confirms
        self.queue: deque[_Scheduled] = deque()
        self.busy_until: float | None = None
        self.heard = bytearray()
        self.heard_spans: list[tuple[float, float]] = []
        self.pending_echoes: list[str] = []
        self.clears: list[float] = []
        self.hangups: list[float] = []
        self.closes: list[float] = []
        self.transfers: list[str] = []
        self.frames_sent = 0

    @property
    def format(self) -> PhoneFormat:
        return self._format

    @property
    def transport(self) -> str:
        return "sim"

    @property
    def confirms_playout(self) -> bool:
        return self._confirms

    def send_audio(self, frames: list[bytes], tag: str) -> None:
        assert frames and all(len(f) == self._format.frame_bytes for f in frames)
        self.frames_sent += len(frames)
        now = self.clock()
        audio = b"".join(frames)
        busy = self.busy_until
        start = now if busy is None or busy < now else busy
        end = start + self._format.duration_ms(len(audio)) / 1000
        self.busy_until = end
        self.queue.append(_Scheduled(tag, audio, start, end))

    def send_clear(self) -> None:
        now = self.clock()
        self.clears.append(now)
        self.play_until(now)
        if self.queue and self.queue[0].start < now:  # the chunk playing now is cut off mid-way
            head = self.queue[0]
            played = int((now - head.start) * self._format.sample_rate)
            self._hear(head.audio[:played], head.start, now)
        if self.echoes:  # like Twilio: every pending mark is echoed at once
            self.pending_echoes.extend(c.tag for c in self.queue)
        self.queue.clear()
        self.busy_until = None

    def _hear(self, audio: bytes, start: float, end: float) -> None:
        self.heard += audio
        self.heard_spans.append((start, end))

    def next_time(self) -> float | None:
        return self.queue[0].end if self.queue else None

    def play_until(self, now: float) -> list[str]:
        done = []
        while self.queue and self.queue[0].end <= now + 1e-9:
            chunk = self.queue.popleft()
            self._hear(chunk.audio, chunk.start, chunk.end)
            done.append(chunk.tag)
        return done

    @property
    def heard_ms(self) -> float:
        return self._format.duration_ms(len(self.heard))

    async def hangup(self) -> None:
        self.hangups.append(self.clock())

    async def transfer(self, target: str) -> None:
        self.transfers.append(target)

    async def close(self) -> None:
        self.closes.append(self.clock())


# -- the realtime session (tests/scripted_model.py) -----------------------------------------------


#: Like OpenAI with G.711 passthrough; like Gemini (PCM16 in and out at different rates).
def g711_model() -> ScriptedModel:
    return ScriptedModel((PCMU_8K, PCMA_8K, PCM16_24K), (PCMU_8K, PCMA_8K, PCM16_24K))


def pcm_model() -> ScriptedModel:
    return ScriptedModel((PCM16_16K,), (PCM16_24K,))


# -- the harness ---------------------------------------------------------------------------------


@dataclass
class Call:
    clock: VirtualClock
    leg: SimLeg
    model: ScriptedModel
    bridge: CallBridge
    caller_audio: bool = True  # the leg sends a packet of caller audio every ptime
    caller_payload: bytes = b""
    _next_packet: float = 0.0
    log: list[str] = field(default_factory=list)

    @property
    def session(self) -> ScriptedSession:
        return self.model.sessions[-1]

    async def settle(self) -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def run(self, seconds: float) -> None:
        """Advance the virtual clock by `seconds`, event by event."""
        end = self.clock.now + seconds
        ptime = self.leg.format.ptime_ms / 1000
        for _ in range(1_000_000):
            await self.settle()
            candidates = [end]
            leg_t = self.leg.next_time()
            if leg_t is not None:
                candidates.append(leg_t)
            timer = self.bridge.get_timer()
            if timer is not None:
                candidates.append(timer)
            if self.caller_audio and not self.bridge.ended:
                candidates.append(self._next_packet)
            now = max(self.clock.now, min(candidates))
            self.clock.now = now
            played = self.leg.play_until(now)
            if self.leg.echoes:
                for tag in [*self.leg.pending_echoes, *played]:
                    self.bridge.on_played(tag)
                self.leg.pending_echoes.clear()
            if self.caller_audio and not self.bridge.ended and now >= self._next_packet:
                payload = self.caller_payload[: self.leg.format.frame_bytes]
                self.caller_payload = self.caller_payload[self.leg.format.frame_bytes :]
                if len(payload) < self.leg.format.frame_bytes:
                    payload += self.leg.format.law.silence * (self.leg.format.frame_bytes - len(payload))
                await self.bridge.on_caller_audio(payload)
                self._next_packet = now + ptime
            timer = self.bridge.get_timer()
            if timer is not None and timer <= now:
                self.bridge.handle_timer(now)
            if now >= end:
                await self.settle()
                return
        raise AssertionError("virtual time did not advance")


async def make_call(
    *,
    fmt: PhoneFormat = PCMU_20MS,
    confirms: bool = True,
    echoes: bool = True,
    model: ScriptedModel | None = None,
    **options: object,
) -> Call:
    clock = VirtualClock()
    leg = SimLeg(clock, fmt, confirms=confirms, echoes=echoes)
    model = model or pcm_model()
    # vad="off": barge-in on the provider's signal alone, as these tests drive it (the bridge's own
    # caller-speech detector is tested in test_turns.py and test_turn_calls.py)
    defaults = {"leg_timeout_seconds": 10.0, "idle_timeout_seconds": 60.0, "vad": "off"}
    opts = BridgeOptions(**{**defaults, **options})  # type: ignore[arg-type]
    bridge = CallBridge("CA-test", model, RealtimeConfig(instructions="Be brief."), leg, opts, clock=clock,
                        run_timer=False)
    call = Call(clock, leg, model, bridge, _next_packet=clock.now)
    await bridge.start()
    await call.settle()
    return call


def speech_ulaw(text: str) -> bytes:
    return pcm16_to_ulaw(speech_pcm16(text, 8000))


def gaps(spans: list[tuple[float, float]], over: float = 0.001) -> list[tuple[float, float]]:
    """(end of what played before, length) of each silence in playback longer than `over`."""
    return [(a[1], b[0] - a[1]) for a, b in itertools.pairwise(spans) if b[0] - a[1] > over]


def snr_db(ref: bytes, got: bytes) -> float:
    a = np.frombuffer(ref, "<i2").astype(float)
    b = np.frombuffer(got, "<i2").astype(float)[: len(a)]
    return float(10 * np.log10(np.sum(a**2) / max(np.sum((a - b) ** 2), 1.0)))


# -- tests ---------------------------------------------------------------------------------------


async def test_agent_audio_is_heard_in_full_at_real_time() -> None:
    call = await make_call()
    answer = speech_pcm16("We are open from nine to five.", 24000)
    call.session.say("item-1", answer)
    t0 = call.clock.now
    await call.run(6.0)
    expected_ms = len(answer) / 48
    # The last frame is padded with silence and the resampler's tail (its delay) is flushed.
    assert expected_ms <= call.leg.heard_ms <= expected_ms + 30
    first, last = call.leg.heard_spans[0], call.leg.heard_spans[-1]
    assert first[0] == pytest.approx(t0) and last[1] - first[0] == pytest.approx(call.leg.heard_ms / 1000, abs=0.001)
    assert call.bridge.playout.played_ms("item-1", call.clock.now) == pytest.approx(call.leg.heard_ms, abs=1)
    # What the caller heard is the provider's audio, resampled to 8 kHz and mu-law encoded.
    r = StreamResampler(24000, 8000)
    reference = r.process(answer) + r.flush()
    assert snr_db(reference, ulaw_to_pcm16(bytes(call.leg.heard))) > 30
    assert call.bridge.phase is CallPhase.LIVE
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_never_more_than_the_lead_is_outstanding_at_the_leg() -> None:
    call = await make_call(playout_lead_ms=200)
    call.session.say("item-1", speech_pcm16("Please hold while I check that for you.", 24000))
    worst = 0.0
    for _ in range(100):
        await call.run(0.05)
        if call.leg.busy_until is not None:
            worst = max(worst, call.leg.busy_until - call.clock.now)
    assert 0.15 <= worst <= 0.2 + 1e-6
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


@pytest.mark.parametrize(("confirms", "echoes"), [(True, True), (True, False), (False, False)])
async def test_barge_in_clears_and_truncates_at_the_played_position(confirms: bool, echoes: bool) -> None:
    call = await make_call(confirms=confirms, echoes=echoes)
    call.session.say("item-1", speech_pcm16(
        "Our opening hours are nine to five on weekdays and ten to four on Saturdays.", 24000))
    await call.run(2.5)  # past a fallback, if there is one
    call.session.push(SpeechStarted(audio_start_ms=0))
    await call.run(0.5)
    assert len(call.leg.clears) == 1
    heard_before_clear = call.leg.format.duration_ms(len(call.leg.heard))
    assert call.session.interrupts and call.session.interrupts[0] is not None
    # The truncate point is what this caller really heard, to within one 40 ms chunk.
    assert call.session.interrupts[0] == pytest.approx(heard_before_clear, abs=40)
    assert heard_before_clear > 1000
    assert call.bridge.stats.barge_ins == 1 and call.bridge.stats.truncates[0][0] == "item-1"
    # Nothing of the interrupted item is sent after the clear.
    call.session.push(AudioDelta("item-1", b"\x00" * 4800, PCM16_24K))
    sent = call.leg.frames_sent
    await call.run(1.0)
    assert call.leg.frames_sent == sent
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_end_call_hangs_up_only_after_the_goodbye_is_heard() -> None:
    call = await make_call()
    goodbye = speech_pcm16("Thanks for calling, goodbye.", 24000)
    goodbye_ms = len(goodbye) / 48
    t0 = call.clock.now
    call.session.say("bye", goodbye, done=False)
    call.session.push(FunctionCallDone("call-1", "end_call", '{"reason": "caller is done"}'), AudioDone("bye"),
                      ResponseDone("resp-bye"))
    await call.run(0.5)
    assert not call.leg.hangups and call.bridge.phase is CallPhase.FINISHING
    # A new answer started after end_call is not spoken.
    call.session.say("after", speech_pcm16("One more thing.", 24000))
    await call.run(goodbye_ms / 1000 + 1.0)
    assert call.bridge.outcome is CallOutcome.AGENT_HANGUP
    assert len(call.leg.hangups) == 1
    assert call.leg.hangups[0] >= t0 + goodbye_ms / 1000 - 0.001
    assert call.leg.heard_ms == pytest.approx(goodbye_ms, abs=20)
    assert call.session.closed
    assert call.session.tool_outputs and call.session.tool_outputs[0].name == "end_call"


async def test_goodbye_is_bounded_when_playout_never_finishes() -> None:
    # A leg that stops playing (and echoing) entirely, but keeps sending caller audio.
    call = await make_call(goodbye_wait_seconds=3.0, playout_fallback_seconds=100.0)
    call.leg.echoes = False
    call.session.say("bye", speech_pcm16("Goodbye.", 24000))
    await call.run(0.2)
    await call.bridge.hangup_after_playout()
    t0 = call.clock.now
    await call.run(5.0)
    assert call.bridge.outcome is CallOutcome.AGENT_HANGUP
    assert call.leg.hangups[0] == pytest.approx(t0 + 3.0, abs=0.05)


async def test_idle_caller_hears_the_idle_prompt_then_the_call_ends() -> None:
    call = await make_call(idle_timeout_seconds=5.0)
    t0 = call.clock.now
    await call.run(4.9)
    assert call.bridge.phase is CallPhase.LIVE and not call.leg.heard
    await call.run(10.0)
    assert call.bridge.outcome is CallOutcome.IDLE_TIMEOUT
    prompt = prompt_audio("idle", AudioLaw.PCMU)
    assert bytes(call.leg.heard[: len(prompt)]) == prompt
    assert call.leg.heard_spans[0][0] == pytest.approx(t0 + 5.0, abs=0.001)
    assert call.leg.hangups and call.leg.hangups[0] == pytest.approx(call.leg.heard_spans[-1][1], abs=0.001)
    assert call.session.closed


async def test_agent_speech_postpones_the_idle_timeout() -> None:
    call = await make_call(idle_timeout_seconds=2.0)
    call.session.say("long", speech_pcm16("Let me read you the whole list of our branch opening hours, one by one.",
                                          24000))
    await call.run(4.0)
    assert call.bridge.phase is CallPhase.LIVE  # two seconds of silence only start once the agent is done
    await call.run(20.0)
    assert call.bridge.outcome is CallOutcome.IDLE_TIMEOUT
    (agent_end, silence), *_ = gaps(call.leg.heard_spans, over=0.5)
    assert agent_end > call.leg.heard_spans[0][0] + 4.0
    assert silence == pytest.approx(2.0, abs=0.001)


async def test_a_leg_that_stops_echoing_falls_back_to_real_time_within_a_second() -> None:
    text = "Here is a longer answer, so that the caller keeps listening for quite a few seconds."
    ref = await make_call(echoes=True)
    ref.session.say("a", speech_pcm16(text, 24000))
    await ref.run(12.0)
    call = await make_call(echoes=False)
    call.session.say("a", speech_pcm16(text, 24000))
    await call.run(12.0)
    assert ref.leg.heard_ms > 4000
    assert call.leg.heard == ref.leg.heard  # every byte, not 4 % of it
    assert call.bridge.pacing.fell_back_at is not None
    # One gap in playback, about a second, where the leg's silence was noticed; real time otherwise.
    ((_, gap),) = gaps(call.leg.heard_spans)
    assert 0.5 < gap <= 1.05
    span = call.leg.heard_spans[-1][1] - call.leg.heard_spans[0][0]
    assert span == pytest.approx(call.leg.heard_ms / 1000 + gap, abs=0.001)


async def test_a_leg_that_confirms_nothing_is_paced_by_the_clock_without_gaps() -> None:
    call = await make_call(confirms=False)
    call.session.say("a", speech_pcm16("Paced by the clock from the first frame.", 24000))
    await call.run(6.0)
    assert gaps(call.leg.heard_spans) == [] and call.leg.heard_ms > 1000
    assert call.bridge.pacing.fell_back_at is None  # nothing to fall back from


async def test_a_silent_leg_is_ended_and_its_provider_session_closed() -> None:
    call = await make_call(leg_timeout_seconds=10.0)
    call.session.say("a", speech_pcm16("Are you still there?", 24000))
    await call.run(1.0)
    call.caller_audio = False
    call.leg.echoes = False  # no media, no marks: the socket stays open but nothing comes
    went_silent = call.clock.now
    await call.run(15.0)
    assert call.bridge.outcome is CallOutcome.LEG_TIMEOUT
    assert call.session.closed
    assert call.leg.hangups and went_silent + 9.0 < call.leg.hangups[0] <= went_silent + 10.1
    assert call.bridge.get_timer() is None


async def test_caller_audio_keeps_a_quiet_call_alive() -> None:
    call = await make_call(leg_timeout_seconds=2.0, idle_timeout_seconds=60.0)
    await call.run(20.0)
    assert call.bridge.phase is CallPhase.LIVE


async def test_a_law_leg_with_a_g711_model_is_passthrough_both_ways() -> None:
    call = await make_call(fmt=PCMA_20MS, model=g711_model())
    assert call.session.config.input_format == PCMA_8K and call.session.config.output_format == PCMA_8K
    caller = pcm16_to_alaw(speech_pcm16("I would like to book a table.", 8000))
    call.caller_payload = caller
    agent = pcm16_to_alaw(speech_pcm16("Certainly, for how many people?", 8000))
    call.session.say("a", agent)
    await call.run(len(caller) / 8000 + 1.0)
    assert call.session.audio_formats == {PCMA_8K}
    assert bytes(call.session.audio[: len(caller)]) == caller
    assert bytes(call.leg.heard[: len(agent)]) == agent
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_law_leg_with_a_pcm_model_is_decoded_and_encoded_as_a_law() -> None:
    call = await make_call(fmt=PCMA_20MS, model=pcm_model())
    assert call.session.input_format == PCM16_16K
    speech = speech_pcm16("I would like to book a table.", 8000)
    call.caller_payload = pcm16_to_alaw(speech)
    agent = speech_pcm16("Certainly, for how many people?", 24000)
    call.session.say("a", agent)
    await call.run(len(speech) / 16000 + 1.0)
    # In: A-law decoded (not read as mu-law) and resampled to 16 kHz.
    up = StreamResampler(8000, 16000)
    reference_in = up.process(speech) + up.flush()
    assert snr_db(reference_in, bytes(call.session.audio)) > 25
    # Out: the caller's leg gets A-law; read as mu-law it would be noise.
    down = StreamResampler(24000, 8000)
    reference_out = down.process(agent) + down.flush()
    assert snr_db(reference_out, alaw_to_pcm16(bytes(call.leg.heard))) > 25
    assert snr_db(reference_out, ulaw_to_pcm16(bytes(call.leg.heard))) < 5
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


@pytest.mark.parametrize("takes_now", [True, False])
async def test_caller_frames_handed_on_without_a_coroutine_are_transcoded_once_each(takes_now: bool) -> None:
    """`caller_audio_now`, as a leg calls it where its socket read a frame: a session that takes
    audio at once leaves nothing to await; one that does not gets the frame through the coroutine
    returned. Either way each frame is transcoded once, in order (the resampler keeps state)."""
    call = await make_call(fmt=PCMA_20MS, model=pcm_model())
    call.session.takes_now = takes_now
    speech = speech_pcm16("I would like to book a table.", 8000)
    payload = pcm16_to_alaw(speech)
    frame = PCMA_20MS.frame_bytes
    left = 0
    for i in range(0, len(payload) - frame + 1, frame):
        rest = call.bridge.caller_audio_now(payload[i : i + frame])
        if rest is not None:
            left += 1
            await rest
    frames = len(payload) // frame
    if takes_now:
        assert left == 0 and call.session.taken_now == frames
    else:
        assert left == frames and call.session.taken_now == 0
    up = StreamResampler(8000, 16000)
    reference = up.process(speech[: frames * frame * 2])
    assert len(call.session.audio) == len(reference)
    assert snr_db(reference, bytes(call.session.audio)) > 25
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def hand_on(bridge: CallBridge, payload: bytes) -> None:
    """A frame as a leg hands it on where its socket read it."""
    rest = bridge.caller_audio_now(payload)
    if rest is not None:
        await rest


async def test_caller_audio_faster_than_real_time_is_dropped_past_the_burst_and_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    """A peer flooding a call with audio (30 s of it in one instant, then 5 s more in each
    second): what reaches the provider (which bills by audio time) is the burst and then the
    rate, never the flood; the rest is counted, with one warning line per 10 s."""
    call = await make_call(model=g711_model())  # mu-law passthrough: the session gets the leg's bytes
    frame = PCMU_20MS.frame_bytes
    noise = np.random.default_rng(3).integers(0, 256, 160 * 50 * 30, dtype=np.uint8).tobytes()  # 30 s
    start = call.clock.now
    with caplog.at_level("WARNING", logger="telephony_agent.telephony.bridge"):
        for i in range(0, len(noise), frame):
            await hand_on(call.bridge, noise[i : i + frame])
        assert len(call.session.audio) == pytest.approx(AUDIO_BURST_S * 8000, abs=frame)
        for second in range(1, 4):  # then 250 frames a second, five times real time
            call.clock.now = start + second
            for i in range(250):
                await hand_on(call.bridge, noise[i * frame : (i + 1) * frame])
    passed = len(call.session.audio) / 8000
    assert passed == pytest.approx(AUDIO_BURST_S + 3 * AUDIO_RATE, abs=0.04)
    assert call.bridge.stats.audio_dropped_ms == pytest.approx((30 + 3 * 5 - passed) * 1000, abs=1)
    assert call.bridge.stats.frames_in == len(call.session.audio) // frame
    lines = [r for r in caplog.records if "faster than real time" in r.getMessage()]
    assert len(lines) == 1 and "seconds" not in lines[0].getMessage()
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_stalls_backlog_and_real_time_audio_all_pass() -> None:
    """A network stall delivers its backlog at once (here 4 s of it), then the line goes on in
    real time for a minute: nothing is dropped."""
    call = await make_call(model=g711_model())
    frame = PCMU_20MS.frame_bytes
    chunk = bytes(range(256))[:frame]
    for _ in range(200):  # 4 s of backlog in one instant
        await hand_on(call.bridge, chunk)
    start = call.clock.now
    for i in range(1, 3001):  # 60 s at 20 ms
        call.clock.now = start + i * 0.02
        await hand_on(call.bridge, chunk)
    assert call.bridge.stats.audio_dropped_ms == 0
    assert len(call.session.audio) == 3200 * frame
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_law_leg_hears_the_apology_in_a_law_when_the_provider_is_down() -> None:
    model = g711_model()
    model.fail = True
    call = await make_call(fmt=PCMA_20MS, model=model)
    await call.run(8.0)
    assert call.bridge.outcome is CallOutcome.PROVIDER_FAILED
    prompt = prompt_audio("apology", AudioLaw.PCMA)
    assert bytes(call.leg.heard[: len(prompt)]) == prompt
    # The same words as the shipped mu-law prompt.
    assert snr_db(ulaw_to_pcm16(prompt_audio("apology", AudioLaw.PCMU)), alaw_to_pcm16(prompt)) > 25
    assert call.leg.hangups


async def test_a_session_taking_no_audio_the_leg_can_give_is_closed_and_the_caller_hears_the_apology() -> None:
    """A provider that opens with an input format no transcoder reaches from the leg (G.711 at
    16 kHz here): the call does not go live, the caller hears the apology, the session is
    closed at teardown, and no caller audio reached it."""
    odd = AudioFormat(AudioEncoding.G711_ULAW, 16000)
    call = await make_call(model=ScriptedModel((odd,), (PCM16_24K,)))
    await call.run(8.0)
    assert call.bridge.outcome is CallOutcome.PROVIDER_FAILED
    assert call.bridge.runner is None
    prompt = prompt_audio("apology", AudioLaw.PCMU)
    assert bytes(call.leg.heard[: len(prompt)]) == prompt
    assert call.leg.hangups
    session = call.model.sessions[0]
    assert session.closed and not session.audio


async def test_30ms_packets() -> None:
    fmt = PhoneFormat(AudioLaw.PCMA, ptime_ms=30)
    call = await make_call(fmt=fmt, model=pcm_model())
    agent = speech_pcm16("Thirty millisecond packets.", 24000)
    call.session.say("a", agent)
    await call.run(4.0)
    assert call.leg.frames_sent and call.leg.heard_ms == pytest.approx(len(agent) / 48, abs=30)


async def test_max_duration_plays_the_time_limit_prompt() -> None:
    call = await make_call(max_call_seconds=3.0)
    await call.run(2.9)
    assert call.bridge.phase is CallPhase.LIVE
    await call.run(10.0)
    assert call.bridge.outcome is CallOutcome.MAX_DURATION
    assert bytes(call.leg.heard).startswith(prompt_audio("time_limit", AudioLaw.PCMU)[:1600])


async def test_one_timer_holds_the_earliest_deadline() -> None:
    call = await make_call(idle_timeout_seconds=7.0, leg_timeout_seconds=4.0, max_call_seconds=100.0)
    call.caller_audio = False
    due = call.bridge.get_timer()
    assert due == pytest.approx(call.clock.now + 4.0)  # the leg timeout is the earliest
    call.bridge.handle_timer(call.clock.now + 1.0)  # early: nothing happens
    await call.settle()
    assert call.bridge.phase is CallPhase.LIVE and call.bridge.get_timer() == due
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)
    assert call.bridge.get_timer() is None


async def _connecting_call(**options: object) -> tuple[Call, asyncio.Task[None], asyncio.Event]:
    """A call whose provider session has not opened yet; set the event to open it."""
    clock = VirtualClock()
    leg = SimLeg(clock)
    model = pcm_model()
    model.opening = opening = asyncio.Event()
    opts = BridgeOptions(**{"vad": "off", **options})  # type: ignore[arg-type]
    bridge = CallBridge("CA-test", model, RealtimeConfig(instructions="Be brief."), leg, opts, clock=clock,
                        run_timer=False)
    call = Call(clock, leg, model, bridge, _next_packet=clock.now)
    starting = asyncio.create_task(bridge.start())
    await call.settle()
    assert bridge.phase is CallPhase.CONNECTING
    return call, starting, opening


async def test_keys_pressed_while_the_provider_connects_follow_the_greeting_request() -> None:
    call, starting, opening = await _connecting_call(greeting="Hello, Acme.")
    hooked: list[str] = []
    call.bridge.dtmf_hooks.append(hooked.append)
    await call.bridge.on_dtmf("1")
    await call.bridge.on_dtmf("#")
    assert hooked == ["1", "#"] and call.bridge.stats.dtmf == ["1", "#"]  # hooks hear each key at once
    opening.set()
    await starting
    await call.settle()
    # In one text, after the greeting's response request: where a key pressed just after the
    # session opened would be, and one response for the lot rather than one per key.
    assert call.session.requests == ["response.create", "The caller pressed 1, #."]
    await call.bridge.on_dtmf("5")
    assert call.session.requests[-1] == "The caller pressed 5."
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_keys_held_while_connecting_are_bounded() -> None:
    call, starting, opening = await _connecting_call()
    for i in range(EARLY_DIGITS + 8):
        call.clock.now += 0.1  # within the keys' rate: only the connecting bound applies
        await call.bridge.on_dtmf(str(i % 10))
    assert len(call.bridge.stats.dtmf) == EARLY_DIGITS + 8  # every key is counted and hooked
    opening.set()
    await starting
    await call.settle()
    assert call.session.texts == [f"The caller pressed {', '.join(str(i % 10) for i in range(EARLY_DIGITS))}."]
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_keys_of_a_call_that_ends_while_connecting_go_nowhere() -> None:
    call, starting, opening = await _connecting_call()
    await call.bridge.on_dtmf("1")
    await call.bridge.on_hangup()
    opening.set()
    await starting
    assert call.session.closed and call.session.requests == []


async def test_a_key_flood_is_dropped_past_the_burst_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    call = await make_call()
    hooked: list[str] = []
    call.bridge.dtmf_hooks.append(hooked.append)
    with caplog.at_level("WARNING", logger="telephony_agent.telephony.bridge"):
        for i in range(500):  # a peer sending keys as fast as it can, all at once
            await call.bridge.on_dtmf(str(i % 10))
    assert len(hooked) == len(call.session.texts) == KEY_BURST  # each costs a model request: bounded
    assert call.bridge.stats.dtmf_dropped == 500 - KEY_BURST and len(call.bridge.stats.dtmf) == KEY_BURST
    warnings = [r for r in caplog.records if "keys arrive faster" in r.getMessage()]
    assert [w.getMessage() for w in warnings] == ["keys arrive faster than 10 a second: 1 dropped so far"]  # no key
    call.clock.now += 1.0  # the rate comes back: a second later, KEYS_PER_S keys pass again
    for _ in range(20):
        await call.bridge.on_dtmf("1")
    assert len(hooked) == KEY_BURST + KEYS_PER_S
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_person_keying_fast_loses_no_key() -> None:
    call = await make_call()
    keyed = 0
    for burst in range(6):  # a card number in one go at the fastest dialler timing (80 ms a key), then a pause
        for _ in range(16):
            call.clock.now += 0.08
            await call.bridge.on_dtmf(str(burst))
            keyed += 1
        call.clock.now += 1.5
    assert call.bridge.stats.dtmf_dropped == 0 and len(call.session.texts) == keyed == 96
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_tool_call_that_arrives_after_the_call_ended_is_not_run() -> None:
    call = await make_call()
    ran: list[str] = []

    async def lookup_order() -> str:
        """Look up an order."""
        ran.append("lookup_order")
        return "shipped"

    call.bridge.tools.register(lookup_order)
    # The caller has hung up (the call is marked ended, its teardown not yet done) when the
    # model's function call comes in.
    assert call.bridge.core.set_ended(CallOutcome.CALLER_HANGUP)
    call.session.push(FunctionCallDone("call-9", "lookup_order", "{}"), ResponseDone("resp-9"))
    await call.run(0.5)
    assert ran == [] and call.session.tool_outputs == []
    assert call.bridge.runner is not None and call.bridge.runner.dropped_after_close == 1
    await call.bridge.close_down(hangup=False)


# -- the caller-speech detector's batched scores ----------------------------------------------------


async def _waiting_call() -> Call:
    """A call whose caller talks over the agent, its Silero blocks scored in the loop's batch,
    which waits (as under load) until the test runs it."""
    call = await make_call(vad="silero", vad_batch_ms=50)
    scorer = call.bridge.turns.scorer
    assert isinstance(scorer, BatchedSileroScorer)
    scorer._batch.rate = 1e6  # under load: a block waits for company
    call.session.say("item-1", speech_pcm16(
        "Our opening hours are nine to five on weekdays and ten to four on Saturdays.", 24000))
    await call.run(1.0)
    call.caller_payload = speech_ulaw("Wait, stop, I have a different question about my booking.")
    for _ in range(100):
        await call.run(0.02)
        if call.bridge.turns.waiting:
            return call
    raise AssertionError("no caller block waited for its score")


async def test_batched_scores_pause_and_barge_in_when_the_batch_runs() -> None:
    call = await _waiting_call()
    batch = call.bridge.turns.scorer._batch  # type: ignore[union-attr]
    for _ in range(150):  # the batch runs every 20 ms of the call
        batch.run()
        await call.run(0.02)
        if call.bridge.stats.barge_ins:
            break
    assert call.bridge.turn_stats.pauses >= 1 and len(call.leg.clears) >= 1
    assert call.bridge.stats.barge_ins == 1 and call.session.interrupts
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)


async def test_a_call_that_ends_while_a_block_waits_for_its_score_acts_on_nothing() -> None:
    call = await _waiting_call()
    clears = len(call.leg.clears)
    await call.bridge.end(CallOutcome.CALLER_HANGUP, hangup=False)
    call.bridge.turns.scorer._batch.run()  # type: ignore[union-attr]
    await call.settle()
    assert len(call.leg.clears) == clears and call.bridge.stats.barge_ins == 0
    assert not call.bridge.turns.waiting


async def test_a_near_silent_answer_decided_by_a_delta_gets_its_retry() -> None:
    """The dead-air guard can decide on an agent-audio delta itself (near-silent audio that
    arrives once its wait is over, before its timer has fired). Such a delta must reach the
    event task, where the decision is acted on, not be played where the provider's socket read
    it (which the bridge does with every delta while the guard is not listening)."""
    call = await make_call()
    silent = bytes(4800)  # 100 ms of digital silence at 24 kHz
    call.session.push(SpeechStopped(1000))  # the caller's turn ended: an answer is owed
    await call.settle()
    call.session.push(AudioDelta("quiet", silent, PCM16_24K))  # near-silent output starts
    await call.settle()
    assert call.bridge.turn_stats.retries == 0
    call.clock.now += call.bridge.dead_air.near_silent_after + 0.1  # no timer handled: the next delta decides
    call.session.push(AudioDelta("quiet", silent, PCM16_24K))
    await call.settle()
    assert call.bridge.turn_stats.retries == 1
    assert call.bridge.turn_stats.response_problems == {"near_silent": 1}
    assert call.session.responses >= 1 and call.session.interrupts  # asked again
