"""Prometheus metrics for one server process. No label ever carries a caller's number.

Every metric is named `agent_*`. Labels are closed sets (provider, outcome, refusal reason,
bad-input kind, endpoint); call ids and phone numbers never appear in a label or a value.

Per-call counters (frames, barge-ins, clear latency, first audio, provider errors) are read
from each live call's `CallStats` and added as deltas, every live call's together each second and
before a scrape (`observe_calls`), and once more when a call ends (`observe_call`), so a scrape
during a long call sees it live.

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
GC_PAUSE_BUCKETS_MS = (0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 250)
RTP_DEPARTURE_BUCKETS_MS = (0.25, 0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 50, 100)
RTP_JITTER_BUCKETS_MS = (1, 2, 5, 10, 20, 40, 80, 160)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


@dataclass
class _CallCounts:
    """A call's unlabelled counts: already added (`_Seen`), or grown since (`_Growth`)."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    barge_ins: int = 0
    keys_dropped: int = 0
    audio_dropped_ms: int = 0


@dataclass
class _Seen(_CallCounts):
    """What of one call's stats has already been added to the counters."""

    clear_latencies: int = 0
    first_audio: bool = False
    provider_errors: int = 0
    reconnects: int = 0
    turns: dict[str, float] = field(default_factory=dict)  # turn-taking counts already added, by key


@dataclass
class _Growth(_CallCounts):
    """What every live call's stats grew by since the last look, added to the counters at once."""

    provider_errors: dict[str, int] = field(default_factory=dict)  # by provider
    reconnects: dict[str, int] = field(default_factory=dict)
    clear_latencies: list[float] = field(default_factory=list)
    first_audio: list[float] = field(default_factory=list)
    turns: dict[str, float] = field(default_factory=dict)  # by `_Seen.turns` key


def _grown(seen: _Seen, attr: str, now: int) -> int:
    """What the count `attr` grew by since `seen` recorded it (0 if it did not), now recorded."""
    before: int = getattr(seen, attr)
    if now > before:
        setattr(seen, attr, now)
        return now - before
    return 0


def _add_growth(seen: dict[str, float], growth: dict[str, float], key: str, now: float) -> None:
    """Add to `growth[key]` what the count `key` grew by since `seen` last recorded it."""
    before = seen.get(key, 0)
    if now > before:
        growth[key] = growth.get(key, 0) + now - before
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
        self.keys_dropped = Counter(
            "agent_dtmf_dropped", "Caller keys dropped: over a call's rate (a flood), never passed on", registry=r
        )
        self.audio_dropped = Counter(
            "agent_caller_audio_dropped_seconds",
            "Caller audio dropped for arriving faster than real time (a flood), never passed on, seconds",
            registry=r,
        )
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
        self.gc_pause = Histogram(
            "agent_gc_pause_ms",
            "Cyclic garbage-collector passes, by generation: how long each held the event loop, milliseconds",
            ["generation"],
            buckets=GC_PAUSE_BUCKETS_MS,
            registry=r,
        )
        self.bad_input = Counter("agent_bad_input", "Rejected input, by kind", ["kind"], registry=r)
        self.recordings = Counter(
            "agent_recordings",
            "Call recordings closed (AGENT_RECORDINGS_DIR), by outcome: written; failed (a write failed, the call went on"
            " unrecorded from there)",
            ["outcome"],
            registry=r,
        )
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

        Called with `final=True` when the call ends (live calls go through `observe_calls`); the
        call id is only a key here and never becomes a label.
        """
        growth = _Growth()
        self._gather(call, growth)
        self._add(growth)
        if final:
            del self._seen[str(call.call_id)]

    def observe_calls(self, calls: Any) -> None:
        """`observe_call` for every live call, their growth added to each counter once (not once per
        call: a counter's `inc` takes a lock, a labelled one a lookup too, and at a few hundred calls
        a flush per call was 2-3 % of the server's samples); forgets calls that vanished without a
        final look."""
        growth = _Growth()
        live = set()
        for call in list(calls):
            live.add(str(call.call_id))
            self._gather(call, growth)
        self._add(growth)
        for key in [k for k in self._seen if k not in live]:
            del self._seen[key]

    def _gather(self, call: Any, g: _Growth) -> None:
        """Add what grew in `call`'s stats since the last look to `g`, and remember it as seen."""
        key = str(call.call_id)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen()
        s = call.stats
        provider = str(getattr(call.model, "provider", "unknown"))
        playout_stats = getattr(getattr(call, "playout", None), "stats", None)
        g.frames_in += _grown(seen, "frames_in", int(s.frames_in))
        g.frames_out += _grown(seen, "frames_out", int(s.frames_out))
        g.frames_dropped += _grown(seen, "frames_dropped", int(getattr(playout_stats, "frames_dropped", 0)))
        g.barge_ins += _grown(seen, "barge_ins", int(s.barge_ins))
        g.keys_dropped += _grown(seen, "keys_dropped", int(getattr(s, "dtmf_dropped", 0)))
        g.audio_dropped_ms += _grown(seen, "audio_dropped_ms", int(getattr(s, "audio_dropped_ms", 0)))
        for attr, table in (("provider_errors", g.provider_errors), ("reconnects", g.reconnects)):
            n = _grown(seen, attr, int(getattr(s, attr)))
            if n:
                table[provider] = table.get(provider, 0) + n
        latencies = s.clear_latency_ms
        g.clear_latencies.extend(latencies[seen.clear_latencies :])
        seen.clear_latencies = len(latencies)
        if not seen.first_audio and s.first_audio_ms is not None:
            g.first_audio.append(s.first_audio_ms)
            seen.first_audio = True
        t = getattr(call, "turn_stats", None)
        if t is not None:
            grown, turns = seen.turns, g.turns
            for source, n in t.barge_ins.items():
                _add_growth(grown, turns, f"barge:{source}", n)
            for kind, n in t.response_problems.items():
                _add_growth(grown, turns, f"problem:{kind}", n)
            _add_growth(grown, turns, "false", t.false_interruptions)
            _add_growth(grown, turns, "dead_air", t.dead_air_seconds)
            _add_growth(grown, turns, "caps", t.tool_round_caps)

    def _add(self, g: _Growth) -> None:
        """One `inc` per counter (and label) that grew, one `observe` per new latency."""
        for counter, n in ((self.frames_in, g.frames_in), (self.frames_out, g.frames_out),
                           (self.frames_dropped, g.frames_dropped), (self.barge_ins, g.barge_ins),
                           (self.keys_dropped, g.keys_dropped)):
            if n:
                counter.inc(n)
        if g.audio_dropped_ms:
            self.audio_dropped.inc(g.audio_dropped_ms / 1000)
        for provider, n in g.provider_errors.items():
            self.provider_errors.labels(provider).inc(n)
        for provider, n in g.reconnects.items():
            self.provider_reconnects.labels(provider).inc(n)
        for ms in g.clear_latencies:
            self.clear_latency.observe(ms)
        for ms in g.first_audio:
            self.first_audio.observe(ms)
        for key, amount in g.turns.items():
            self._turn_counter(key).inc(amount)

    def _turn_counter(self, key: str) -> Any:
        """The counter of a `_Seen.turns` key ("barge:local", "problem:response_timeout", "false", ...)."""
        kind, _, label = key.partition(":")
        if kind == "barge":
            return self.turn_barge_ins.labels(label)
        if kind == "problem":
            return self.response_problems.labels(label)
        return {"false": self.false_interruptions, "dead_air": self.dead_air, "caps": self.tool_round_caps}[kind]

    def observe_vad_batch(self, batch: Any) -> None:
        """Add what the process's Silero batch (duck-typed `SileroBatch`) ran since the last look."""
        grown: dict[str, float] = {}
        for key, counter, now in (("batches", self.vad_batches, batch.batches),
                                  ("windows", self.vad_windows, batch.windows_scored),
                                  ("failures", self.vad_batch_failures, batch.failures)):
            _add_growth(self._vad_seen, grown, key, now)
            if key in grown:
                counter.inc(grown[key])

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry)
