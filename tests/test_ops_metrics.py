"""/metrics content, live per-call deltas, and the JSON log format."""

from __future__ import annotations

import gc
import io
import json
import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from agent_server import running_agent, test_settings

from telephony_agent.logs import JsonFormatter, call_logger, configure_logging
from telephony_agent.metrics import RTP_DEPARTURE_BUCKETS_MS, Metrics
from telephony_agent.ops import GcPauses

pytestmark = pytest.mark.timeout(30)

# What the issue asks /metrics to show, by family name.
FAMILIES = {
    "agent_active_calls": "gauge",  # active calls
    "agent_calls_started": "counter",  # calls started
    "agent_calls_ended": "counter",  # calls ended by outcome
    "agent_calls_refused": "counter",  # admission control
    "agent_frames_in": "counter",
    "agent_frames_out": "counter",
    "agent_frames_dropped": "counter",
    "agent_barge_ins": "counter",
    "agent_dtmf_dropped": "counter",
    "agent_caller_audio_dropped_seconds": "counter",  # caller audio past real time (a flood)
    "agent_bargein_clear_ms": "histogram",  # provider speech-start -> Twilio clear
    "agent_first_audio_ms": "histogram",  # time to first agent audio
    "agent_provider_errors": "counter",
    "agent_provider_reconnects": "counter",
    "agent_event_loop_lag_ms": "histogram",
    "agent_event_loop_lag_max_ms": "gauge",
    "agent_gc_pause_ms": "histogram",  # cyclic GC passes: what holds the loop without a CPU cause
    "agent_bad_input": "counter",
    "agent_draining": "gauge",
    "agent_max_calls": "gauge",
}


def families(text: str) -> dict[str, str]:
    """Family -> type; newer prometheus-client names counter families with their `_total`."""
    found = re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M)
    return {name.removesuffix("_total") if kind == "counter" else name: kind for name, kind in found}


async def test_exposition_has_every_family_and_no_phone_numbers() -> None:
    settings = test_settings(twilio_validate=False, max_calls=1)
    async with running_agent(settings) as agent, aiohttp.ClientSession() as http:
        for sid in ("CA" + "1" * 32, "CA" + "2" * 32):  # the second is refused (at capacity)
            data = {"CallSid": sid, "From": "+15551234567", "To": "+15557654321", "Caller": "+15551234567"}
            async with http.post(agent.base_url + "/twilio/voice", data=data) as r:
                assert r.status == 200
        async with http.get(agent.base_url + "/twilio/media") as r:
            pass  # not a WebSocket handshake: any label it produces must not carry numbers either
        async with http.get(agent.base_url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
    found = families(text)
    for name, kind in FAMILIES.items():
        assert found.get(name) == kind, f"{name}: {found.get(name)}"
    assert all(name.startswith("agent_") or name.startswith(("python_", "process_")) for name in found)
    for needle in ("+1555", "15551234567", "5551234567", "7654321", "CA1111"):
        assert needle not in text
    assert 'agent_calls_refused_total{reason="at_capacity"} 1.0' in text


@dataclass
class FakeCall:
    call_id: str
    stats: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(
            frames_in=0, frames_out=0, barge_ins=0, clear_latency_ms=[], first_audio_ms=None,
            provider_errors=0, reconnects=0, dtmf_dropped=0, audio_dropped_ms=0.0,
        )
    )
    playout: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(stats=SimpleNamespace(frames_dropped=0)))
    model: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(provider="openai"))
    turn_stats: Any = None


def sample(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = m.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_per_call_counters_are_added_as_deltas_while_the_call_runs() -> None:
    m = Metrics()
    a, b = FakeCall("CA-a"), FakeCall("CA-b")
    a.stats.frames_in = 50
    a.stats.first_audio_ms = 420.0
    m.observe_calls([a, b])
    assert sample(m, "agent_frames_in_total") == 50
    assert sample(m, "agent_first_audio_ms_count") == 1
    a.stats.frames_in = 80
    a.stats.frames_out = 30
    a.stats.barge_ins = 1
    a.stats.clear_latency_ms.append(1.5)
    a.playout.stats.frames_dropped = 12
    b.stats.provider_errors = 2
    b.stats.reconnects = 1
    m.observe_calls([a, b])
    m.observe_calls([a, b])  # nothing new: nothing added
    assert sample(m, "agent_frames_in_total") == 80
    assert sample(m, "agent_frames_out_total") == 30
    assert sample(m, "agent_frames_dropped_total") == 12
    assert sample(m, "agent_barge_ins_total") == 1
    assert sample(m, "agent_bargein_clear_ms_count") == 1
    assert sample(m, "agent_first_audio_ms_count") == 1
    assert sample(m, "agent_provider_errors_total", {"provider": "openai"}) == 2
    assert sample(m, "agent_provider_reconnects_total", {"provider": "openai"}) == 1
    a.stats.frames_in = 100
    a.stats.clear_latency_ms.append(2.5)
    m.observe_call(a, final=True)  # the call ended: last deltas, then forgotten
    assert sample(m, "agent_frames_in_total") == 100
    assert sample(m, "agent_bargein_clear_ms_count") == 2
    m.observe_calls([b])
    assert sample(m, "agent_frames_in_total") == 100
    assert "CA-a" not in m.render().decode()


def test_live_calls_growth_is_summed_across_calls_and_labels() -> None:
    from telephony_agent.telephony.turns import TurnStats

    m = Metrics()
    calls = [FakeCall(f"CA-{i}", model=SimpleNamespace(provider=p)) for i, p in enumerate(["openai", "openai", "gemini"])]
    for call in calls:
        call.turn_stats = TurnStats()
    a, b, c = (call.turn_stats for call in calls)
    a.count(a.barge_ins, "local")
    b.count(b.barge_ins, "provider")
    b.count(b.barge_ins, "provider")
    c.count(c.barge_ins, "local")
    a.dead_air_seconds, b.dead_air_seconds = 0.5, 0.25
    c.count(c.response_problems, "response_failed")
    calls[0].stats.provider_errors, calls[2].stats.provider_errors = 1, 3
    calls[1].stats.dtmf_dropped = 7
    calls[0].stats.audio_dropped_ms, calls[2].stats.audio_dropped_ms = 1500.0, 40.0
    for i, call in enumerate(calls):
        call.stats.frames_in = 10 * (i + 1)
    m.observe_calls(calls)
    m.observe_calls(calls)  # nothing new: nothing added
    assert sample(m, "agent_frames_in_total") == 60
    assert sample(m, "agent_turn_barge_ins_total", {"source": "local"}) == 2
    assert sample(m, "agent_turn_barge_ins_total", {"source": "provider"}) == 2
    assert sample(m, "agent_dead_air_seconds_total") == 0.75
    assert sample(m, "agent_response_problems_total", {"kind": "response_failed"}) == 1
    assert sample(m, "agent_provider_errors_total", {"provider": "openai"}) == 1
    assert sample(m, "agent_provider_errors_total", {"provider": "gemini"}) == 3
    assert sample(m, "agent_dtmf_dropped_total") == 7
    assert sample(m, "agent_caller_audio_dropped_seconds_total") == 1.54
    c.count(c.barge_ins, "local")
    calls[1].stats.frames_in = 25
    m.observe_calls(calls[1:])  # the first call vanished without a final look: forgotten, nothing lost
    assert sample(m, "agent_turn_barge_ins_total", {"source": "local"}) == 3
    assert sample(m, "agent_frames_in_total") == 65


def test_json_log_lines_carry_call_id_and_extra_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.ops.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        log = call_logger("test.ops.json", "CA123")
        log.info("call started", extra={"event": "call_started", "provider": "local"})
        try:
            raise ValueError("boom\nwith a newline")
        except ValueError:
            log.exception("it failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one JSON object per line, tracebacks included
    first, second = (json.loads(line) for line in lines)
    assert first["call_id"] == "CA123" and first["event"] == "call_started" and first["provider"] == "local"
    assert first["msg"] == "call started" and first["level"] == "info" and "pid" in first
    assert second["call_id"] == "CA123" and "ValueError" in second["exc"]


def test_configure_logging_json_adds_worker(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", "INFO", worker=3)
        logging.getLogger("test.ops").info("hello")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["worker"] == 3 and record["msg"] == "hello"


def test_rtp_departures_are_added_in_bulk_or_observed_one_by_one() -> None:
    m = Metrics()
    counts = [3, 0, 1] + [0] * (len(RTP_DEPARTURE_BUCKETS_MS) - 3) + [2]  # the last: above 100 ms
    m.add_rtp_departures(counts, 500.0)
    m.add_rtp_departures(counts, 500.0)
    text = m.render().decode()
    assert 'agent_rtp_departure_deviation_ms_bucket{le="0.25"} 6.0' in text
    assert 'agent_rtp_departure_deviation_ms_bucket{le="1.0"} 8.0' in text
    assert 'agent_rtp_departure_deviation_ms_bucket{le="100.0"} 8.0' in text
    assert "agent_rtp_departure_deviation_ms_count 12.0" in text
    assert "agent_rtp_departure_deviation_ms_sum 1000.0" in text

    class WithoutInternals:  # a prometheus-client whose histogram keeps its values elsewhere
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    stand_in = WithoutInternals()
    m.rtp_departure = stand_in  # type: ignore[assignment]
    m.add_rtp_departures(counts, 500.0)
    assert stand_in.seen == [0.25, 0.25, 0.25, 1.0, 200.0, 200.0]


async def test_gc_passes_are_timed_by_generation_while_serving_and_not_after() -> None:
    async with running_agent(test_settings()) as agent:
        metrics = agent.state.metrics
        full_before = sample(metrics, "agent_gc_pause_ms_count", {"generation": "2"})
        gc.collect()
        gc.collect(0)
        assert sample(metrics, "agent_gc_pause_ms_count", {"generation": "2"}) >= full_before + 1  # collect() is full
        assert sample(metrics, "agent_gc_pause_ms_count", {"generation": "0"}) >= 1
        assert sample(metrics, "agent_gc_pause_ms_sum", {"generation": "2"}) > 0
        assert sum(isinstance(cb, GcPauses) for cb in gc.callbacks) == 1
    assert not any(isinstance(cb, GcPauses) for cb in gc.callbacks)  # removed with the app


def test_gc_pause_is_the_time_between_start_and_stop() -> None:
    m = Metrics()
    times = iter([10.0, 10.025, 11.0, 11.0005])
    pauses = GcPauses(m.gc_pause, clock=lambda: next(times))
    pauses("start", {"generation": 2})
    pauses("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
    pauses("start", {"generation": 0})
    pauses("stop", {"generation": 0, "collected": 0, "uncollectable": 0})
    assert sample(m, "agent_gc_pause_ms_sum", {"generation": "2"}) == pytest.approx(25.0)
    assert sample(m, "agent_gc_pause_ms_bucket", {"generation": "2", "le": "20.0"}) == 0
    assert sample(m, "agent_gc_pause_ms_bucket", {"generation": "2", "le": "50.0"}) == 1
    assert sample(m, "agent_gc_pause_ms_sum", {"generation": "0"}) == pytest.approx(0.5)
