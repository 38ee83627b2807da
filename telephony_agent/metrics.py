"""Prometheus metrics for one server process. No label ever carries a caller's number.

Every metric is named `agent_*`. Labels are closed sets (provider, outcome, refusal reason,
bad-input kind, endpoint); call ids and phone numbers never appear in a label or a value.

Per-call counters (frames, barge-ins, clear latency, first audio, provider errors) are read
from each live call's `CallStats` and added as deltas (`observe_call`), periodically while the
call runs and once more when it ends, so a scrape during a long call sees it live.

With several worker processes (`AGENT_WORKERS>1`) the supervisor sets
`PROMETHEUS_MULTIPROC_DIR` before the workers start; values then live in shared files and any
worker's `/metrics` answers for the whole host (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 500, 1000)
FIRST_AUDIO_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
LAG_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)
RTP_DEPARTURE_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 50, 100)
RTP_JITTER_BUCKETS_MS = (1, 2, 5, 10, 20, 40, 80, 160)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass
class _Seen:
    """What of one call's stats has already been added to the counters."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    barge_ins: int = 0
    clear_latencies: int = 0
    first_audio: bool = False
    provider_errors: int = 0
    reconnects: int = 0
    turns: dict[str, float] = field(default_factory=dict)  # turn-taking counts already added, by key


def _add_growth(seen: dict[str, float], key: str, counter: Any, now: float) -> None:
    """Add to `counter` what the count `key` grew by since `seen` last recorded it."""
    before = seen.get(key, 0)
    if now > before:
        counter.inc(now - before)
        seen[key] = now


class Metrics:
    """Owns its registry so several apps (tests, workers) never share counters by accident."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.active_calls = Gauge(
            "agent_active_calls", "Calls in progress", registry=r, multiprocess_mode="livesum"
        )
        self.max_calls = Gauge(
            "agent_max_calls", "Configured call limit (AGENT_MAX_CALLS)", registry=r, multiprocess_mode="livesum"
        )
        self.draining = Gauge(
            "agent_draining", "1 while the server drains (SIGTERM received)", registry=r, multiprocess_mode="livemax"
        )
        self.calls_started = Counter("agent_calls_started", "Calls started", ["provider"], registry=r)
        self.calls_ended = Counter("agent_calls_ended", "Calls ended, by outcome", ["outcome"], registry=r)
        self.calls_refused = Counter(
            "agent_calls_refused", "Calls refused (draining, at_capacity, overloaded)", ["reason"], registry=r
        )
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
        self.loop_lag_max = Gauge(
            "agent_event_loop_lag_max_ms",
            "Largest event-loop lag in the last second, milliseconds (what admission control compares)",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.bad_input = Counter("agent_bad_input", "Rejected input, by kind", ["kind"], registry=r)
        self.webhooks_refused = Counter(
            "agent_requests_refused", "Unsigned or badly signed Twilio requests", ["endpoint"], registry=r
        )
        # Turn-taking and dead air (telephony/turns.py).
        self.turn_barge_ins = Counter(
            "agent_turn_barge_ins", "Barge-ins, by who heard the caller first: local, provider, both", ["source"], registry=r
        )
        self.false_interruptions = Counter(
            "agent_false_interruptions_resumed", "Agent paused for a sound that was not an interruption, then resumed", registry=r
        )
        self.response_problems = Counter(
            "agent_response_problems",
            "Answers that did not come: response_timeout, response_failed, near_silent, tool_loop",
            ["kind"],
            registry=r,
        )
        self.dead_air = Counter("agent_dead_air_seconds", "Caller waiting for an answer beyond 1 s, seconds", registry=r)
        self.tool_round_caps = Counter(
            "agent_tool_round_caps", "Tool rounds refused because a caller turn hit AGENT_MAX_TOOL_ROUNDS", registry=r
        )
        self.vad_windows = Counter(
            "agent_vad_windows", "Silero windows scored (32 ms of caller audio each)", registry=r
        )
        self.vad_batches = Counter(
            "agent_vad_batches", "Silero batches run: windows / batches is the mean batch size (AGENT_VAD_BATCH_MS)", registry=r
        )
        self.vad_batch_failures = Counter(
            "agent_vad_batch_failures", "Silero batches whose arithmetic failed (scored as no speech)", registry=r
        )
        # SIP trunk (telephony/sip). Labels are closed sets: methods, status codes, kinds, reasons.
        self.sip_calls = Counter("agent_sip_calls", "SIP calls by outcome", ["outcome"], registry=r)
        self.sip_requests = Counter("agent_sip_requests", "SIP requests received, by method", ["method"], registry=r)
        self.sip_responses = Counter("agent_sip_responses", "SIP responses sent, by status code", ["code"], registry=r)
        self.sip_bad_input = Counter(
            "agent_sip_bad_input", "SIP messages dropped as malformed or oversized, by kind", ["kind"], registry=r
        )
        self.sip_refused = Counter(
            "agent_sip_refused", "SIP requests refused before admission, by reason", ["reason"], registry=r
        )
        self.sip_info_dtmf = Counter("agent_sip_info_dtmf", "DTMF keys received in SIP INFO", registry=r)
        # SIP media (RTP): fed by telephony/sip/media.py's RtpSession (counters about once a second).
        self.rtp_packets = Counter("agent_rtp_packets", "RTP packets, by direction (in, out)", ["direction"], registry=r)
        self.rtp_lost = Counter("agent_rtp_lost", "Inbound RTP packets lost (sequence gaps never filled)", registry=r)
        self.rtp_late = Counter("agent_rtp_late", "Inbound RTP packets too late or duplicated (dropped)", registry=r)
        self.rtp_malformed = Counter(
            "agent_rtp_malformed", "Datagrams on RTP ports that are not RTP (RTCP not included)", ["kind"], registry=r
        )
        self.rtp_dtmf = Counter("agent_rtp_dtmf", "DTMF keys received over RFC 4733", registry=r)
        self.rtp_departure = Histogram(
            "agent_rtp_departure_deviation_ms",
            "Outbound RTP inter-departure interval minus the 20 ms packet time (absolute), milliseconds",
            buckets=RTP_DEPARTURE_BUCKETS_MS,
            registry=r,
        )
        self.rtp_jitter = Histogram(
            "agent_rtp_jitter_ms",
            "Inbound RTP interarrival jitter (RFC 3550) at the end of each SIP call, milliseconds",
            buckets=RTP_JITTER_BUCKETS_MS,
            registry=r,
        )
        self._seen: dict[str, _Seen] = {}
        self._vad_seen: dict[str, float] = {}  # what of the Silero batch's counts was already added

    def add_rtp_departures(self, counts: list[int], total_ms: float) -> None:
        """Add outbound RTP departures counted per `RTP_DEPARTURE_BUCKETS_MS` bucket (the last:
        above the largest) by a SIP call, about once a second: an `observe` per packet was 1-2 %
        of a core at 200 calls. prometheus-client has no public bulk add, so this adds to the
        histogram's own values (guarded: per observation if they are not there); they are
        shared files in multiprocess mode, as `observe` would write."""
        h = self.rtp_departure
        buckets, total = getattr(h, "_buckets", None), getattr(h, "_sum", None)
        if buckets is None or total is None or len(buckets) != len(counts):
            bounds = (*RTP_DEPARTURE_BUCKETS_MS, RTP_DEPARTURE_BUCKETS_MS[-1] * 2)
            for bound, n in zip(bounds, counts, strict=True):
                for _ in range(n):
                    h.observe(bound)
            return
        for value, n in zip(buckets, counts, strict=True):
            if n:
                value.inc(n)
        total.inc(total_ms)

    # -- per-call stats -----------------------------------------------------------------------

    def observe_call(self, call: Any, *, final: bool = False) -> None:
        """Add what changed in one call's stats since the last look (duck-typed `CallBridge`).

        Called periodically for live calls and with `final=True` when the call ends; the call id
        is only a key here and never becomes a label.
        """
        key = str(call.call_id)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
        s = call.stats
        provider = str(getattr(call.model, "provider", "unknown"))
        playout_stats = getattr(getattr(call, "playout", None), "stats", None)
        dropped = int(getattr(playout_stats, "frames_dropped", 0))

        def delta(counter: Any, attr: str, now: int) -> None:
            before = getattr(seen, attr)
            if now > before:
                counter.inc(now - before)
                setattr(seen, attr, now)

        delta(self.frames_in, "frames_in", int(s.frames_in))
        delta(self.frames_out, "frames_out", int(s.frames_out))
        delta(self.frames_dropped, "frames_dropped", dropped)
        delta(self.barge_ins, "barge_ins", int(s.barge_ins))
        delta(self.provider_errors.labels(provider), "provider_errors", int(s.provider_errors))
        delta(self.provider_reconnects.labels(provider), "reconnects", int(s.reconnects))
        latencies = s.clear_latency_ms
        for ms in latencies[seen.clear_latencies :]:
            self.clear_latency.observe(ms)
        seen.clear_latencies = len(latencies)
        if not seen.first_audio and s.first_audio_ms is not None:
            self.first_audio.observe(s.first_audio_ms)
            seen.first_audio = True
        turns = getattr(call, "turn_stats", None)
        if turns is not None:
            self._observe_turns(turns, seen)
        if final:
            del self._seen[key]

    def _observe_turns(self, t: Any, seen: _Seen) -> None:
        grown = seen.turns
        for source, n in t.barge_ins.items():
            _add_growth(grown, f"barge:{source}", self.turn_barge_ins.labels(source), n)
        for kind, n in t.response_problems.items():
            _add_growth(grown, f"problem:{kind}", self.response_problems.labels(kind), n)
        _add_growth(grown, "false", self.false_interruptions, t.false_interruptions)
        _add_growth(grown, "dead_air", self.dead_air, t.dead_air_seconds)
        _add_growth(grown, "caps", self.tool_round_caps, t.tool_round_caps)

    def observe_vad_batch(self, batch: Any) -> None:
        """Add what the process's Silero batch (duck-typed `SileroBatch`) ran since the last look."""
        seen = self._vad_seen
        _add_growth(seen, "batches", self.vad_batches, batch.batches)
        _add_growth(seen, "windows", self.vad_windows, batch.windows_scored)
        _add_growth(seen, "failures", self.vad_batch_failures, batch.failures)

    def observe_calls(self, calls: Any) -> None:
        """`observe_call` for every live call; forgets calls that vanished without a final look."""
        live = set()
        for call in list(calls):
            live.add(str(call.call_id))
            self.observe_call(call)
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)
