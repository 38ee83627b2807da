"""Prometheus metrics for one server process. No label ever carries a caller's number."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)
FIRST_AUDIO_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
LAG_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)


class Metrics:
    """Owns its registry so several apps (tests, workers) never share counters by accident."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.active_calls = Gauge("agent_active_calls", "Calls in progress", registry=r)
        self.calls_started = Counter("agent_calls_started", "Calls started", ["provider"], registry=r)
        self.calls_ended = Counter("agent_calls_ended", "Calls ended, by outcome", ["outcome"], registry=r)
        self.calls_refused = Counter("agent_calls_refused", "Calls refused, by reason", ["reason"], registry=r)
        self.frames_in = Counter("agent_frames_in", "Caller audio frames received", registry=r)
        self.frames_out = Counter("agent_frames_out", "Agent audio frames sent", registry=r)
        self.frames_dropped = Counter(
            "agent_frames_dropped", "Agent audio frames discarded (barge-in, cancelled output)", registry=r
        )
        self.barge_ins = Counter("agent_barge_ins", "Barge-ins handled", registry=r)
        self.clear_latency = Histogram(
            "agent_bargein_clear_ms",
            "Provider speech-start/interrupted event to Twilio clear sent, milliseconds",
            buckets=LATENCY_BUCKETS_MS,
            registry=r,
        )
        self.first_audio = Histogram(
            "agent_first_audio_ms",
            "Stream start to first agent audio frame sent, milliseconds",
            buckets=FIRST_AUDIO_BUCKETS_MS,
            registry=r,
        )
        self.provider_errors = Counter("agent_provider_errors", "Provider errors", ["provider"], registry=r)
        self.provider_reconnects = Counter(
            "agent_provider_reconnects", "Provider reconnections (limits, goAway, drops)", ["provider"], registry=r
        )
        self.loop_lag = Histogram(
            "agent_event_loop_lag_ms", "Event-loop scheduling lag, milliseconds", buckets=LAG_BUCKETS_MS, registry=r
        )
        self.bad_input = Counter("agent_bad_input", "Rejected input, by kind", ["kind"], registry=r)
        self.webhooks_refused = Counter(
            "agent_requests_refused", "Unsigned or badly signed Twilio requests", ["endpoint"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
