"""The regression corpus: every recorded call in tests/fixtures/calls/ replayed against the
server (local engine or fake OpenAI), on the virtual clock, compared with its recording."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "calls"))

from scenarios import AUTH_TOKEN, BY_NAME, PUBLIC_URL, SCENARIOS, environment

from telephony_agent.recording import read_recording
from telephony_agent.recording.analysis import summarize
from telephony_agent.replay import (
    VIRTUAL_ORIGIN,
    ReplayResult,
    VirtualClockLoop,
    loopback_in_flight,
    replay,
    run_virtual,
)
from telephony_agent.state import STATE
from telephony_agent.wiretap import LEG_PHONE, LEG_PROVIDER

_UNSTALLED: dict[str, tuple[ReplayResult, dict]] = {}


def run_replay(name: str, *, stall_s: float = 0.0) -> tuple[ReplayResult, dict]:
    """Replay `name`; with `stall_s`, the loop is blocked for that long (real time) every 100 ms
    of call time, as on a slow or busy machine. An unstalled replay is run once per session and
    its result reused (it is what `test_replay_matches_recording` checked): the machine-speed
    test compares its stalled replays with those."""
    if not stall_s and name in _UNSTALLED:
        return _UNSTALLED[name]
    result = _run_replay(name, stall_s=stall_s)
    if not stall_s:
        _UNSTALLED[name] = result
    return result


def _run_replay(name: str, *, stall_s: float = 0.0) -> tuple[ReplayResult, dict]:
    scenario = BY_NAME[name]

    stalls = [0]

    async def main() -> tuple[ReplayResult, dict]:
        async with environment(scenario) as env:
            if stall_s:
                loop = asyncio.get_running_loop()

                def stall() -> None:
                    time.sleep(stall_s)
                    stalls[0] += 1
                    loop.call_later(0.1, stall)

                loop.call_later(0.1, stall)
            result = await replay(
                scenario.path, env.base_url, PUBLIC_URL, AUTH_TOKEN,
                server_recordings=env.recordings, on_phone=env.rest.register_call, before_compare=env.settle,
            )
            after = {
                "skipped": asyncio.get_running_loop().skipped_seconds,  # type: ignore[attr-defined]
                "calls": dict(env.app[STATE].calls),
                "provider_open": [c for c in env.openai.connections if not c.closed] if env.openai else [],
                "rest": [r.form for r in env.rest.requests],
                "truncates": list(env.openai.truncates) if env.openai else [],
                "stalls": stalls[0],
                "waits_in_flight": asyncio.get_running_loop().waits_in_flight,  # type: ignore[attr-defined]
            }
            return result, after

    return run_virtual(main())


def test_corpus_is_complete_and_small() -> None:
    assert len(SCENARIOS) >= 6
    for scenario in SCENARIOS:
        assert scenario.path.exists(), f"run scripts/make_corpus.py ({scenario.name} is missing)"
        assert scenario.path.stat().st_size < 300 * 1024
        rec = read_recording(scenario.path)
        assert rec.header["scenario"] == scenario.name
        assert rec.trailer is not None


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_replay_matches_recording(name: str) -> None:
    result, after = run_replay(name)
    assert result.differences == [], "\n".join(result.differences)
    assert not result.phone.violations
    # Clean teardown: no call left in the server, every provider connection closed.
    assert after["calls"] == {}
    assert after["provider_open"] == []
    assert result.new_recording is not None and result.new_recording.trailer is not None
    # The server records format v2: the transport in the header, the phone leg by its neutral name.
    head = result.new_recording.header
    assert (head["version"], head["transport"], head.get("read_from_version")) == (2, "twilio", None)
    assert {e.leg for e in result.new_recording.entries} <= {LEG_PHONE, LEG_PROVIDER}
    # The virtual clock: the call's time was skipped, not waited for (running code takes none).
    assert result.call_seconds > 1.0 and after["skipped"] >= result.call_seconds, (after["skipped"], result.call_seconds)
    check = CHECKS[name]
    check(result, after)


def _timeline(result: ReplayResult) -> list[tuple[float, str, str, str | None]]:
    assert result.new_recording is not None
    return [(e.t, e.leg, e.dir, e.event) for e in result.new_recording.entries]


def test_replay_does_not_depend_on_machine_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a slow machine (the loop stalls, synthesis and other thread jobs start late) a call
    replays to the same timeline as on a fast one: running code takes no virtual time, and the
    clock waits for the local engine's outstanding recognition and synthesis jobs."""
    names = ("barge_in", "greeting_question")
    fast = {name: run_replay(name)[0] for name in names}
    submit = concurrent.futures.ThreadPoolExecutor.submit
    late_jobs = [0]

    def late(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        def job() -> Any:
            time.sleep(0.03)
            late_jobs[0] += 1
            return fn(*args, **kwargs)

        return submit(self, job)

    monkeypatch.setattr(concurrent.futures.ThreadPoolExecutor, "submit", late)
    slow: dict[str, ReplayResult] = {}
    for name in names:
        slow[name], after = run_replay(name, stall_s=0.02)
        assert after["stalls"] > 50  # the loop stalled all along the call
    assert late_jobs[0] >= 5  # the local engine's synthesis ran late

    # The fake provider's audio is fixed: the timeline is the same message by message (messages
    # of one instant on different sockets may reach the loop in either order: sorted).
    a, b = sorted(_timeline(fast["barge_in"])), sorted(_timeline(slow["barge_in"]))
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    assert a == b, f"timelines differ from message {first}: {a[max(0, first - 3):first + 4]} vs {b[max(0, first - 3):first + 4]}"
    assert len(a) > 500 and slow["barge_in"].actual == fast["barge_in"].actual

    # eSpeak NG's output for the same sentence varies by a few milliseconds from one synthesis
    # to the next (the synthesiser, not the clock): same turns starting at the same instants,
    # the same audio heard to within a few frames.
    fa, sa = fast["greeting_question"].actual, slow["greeting_question"].actual
    assert len(fa.turns) == len(sa.turns) == 3
    for x, y in zip(fa.turns, sa.turns, strict=False):
        assert x.start == pytest.approx(y.start, abs=0.001) and abs(x.heard_ms - y.heard_ms) <= 60, (fa.turns, sa.turns)
    assert (fa.tool_calls, fa.outcome, fa.ended_by) == (sa.tool_calls, sa.outcome, sa.ended_by)


def test_loopback_in_flight_sees_both_ends_of_a_connection() -> None:
    """What the virtual clock checks before a jump: a loopback connection inside the process
    that the listener has not taken yet is on its way; bytes already in the peer's buffer are not."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        assert not loopback_in_flight()
        with socket.create_connection(server.getsockname()[:2]) as client:
            assert loopback_in_flight()  # not accepted yet: the server side is no fd of ours
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"x" * 5000)
                assert _delivered()  # in the peer's buffer (read or not)
                assert accepted.recv(8192)


def _delivered() -> bool:
    deadline = time.monotonic() + 2.0  # a busy kernel may take a moment to deliver
    while loopback_in_flight() and time.monotonic() < deadline:
        time.sleep(0.001)
    return not loopback_in_flight()


def test_loopback_in_flight_knows_a_reused_fd_and_a_socket_bound_later() -> None:
    """The check remembers each socket's address and peer by fd between polls. A closed socket's
    fd taken by a new connection must be looked at afresh: remembered as the old one, its bytes
    would be matched against the old peer's count and seem in flight for good. So must a socket
    polled before `connect()` gave it an address."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        address = server.getsockname()[:2]
        first = socket.create_connection(address)
        old_peer, _ = server.accept()  # stays open: the old connection's other end
        with old_peer:
            assert not loopback_in_flight()  # both ends of the first connection remembered
            with socket.create_connection(address) as second:
                fd = first.detach()
                os.dup2(second.fileno(), fd)  # closes the first; the new connection under its fd
                second.close()
                reused = socket.socket(fileno=fd)
                new_peer, _ = server.accept()
                with reused, new_peer:
                    reused.sendall(b"x" * 5000)
                    assert _delivered()
                    assert new_peer.recv(8192)
        with socket.socket() as late:
            assert not loopback_in_flight()  # unbound: nothing to say yet
            late.connect(address)
            assert loopback_in_flight()  # connected, not yet accepted
            accepted, _ = server.accept()
            with accepted:
                late.sendall(b"y" * 5000)
                assert _delivered()


def test_virtual_clock_starts_at_the_same_instant_whenever_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay repeats only if its clock reads the same numbers every time. It started at the
    machine's monotonic time, so two replays of `barge_in` started at different times rounded
    their instants differently: with the clock started at 98765.4321 or 777777.77 instead of
    1000.0 or 12509.49, a caller frame and an agent frame a few picoseconds apart swapped, and
    the truncate went out 20 ms earlier (the machine-speed test above failed that way in CI)."""
    real = time.monotonic
    for offset in (0.0, 98765.4321, 777777.77):
        monkeypatch.setattr(time, "monotonic", lambda offset=offset: real() + offset)
        loop = VirtualClockLoop()
        try:
            assert loop.time() == VIRTUAL_ORIGIN
        finally:
            loop.close()


def _greeting_question(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert len(a.turns) == 3 and all(t.heard_ms > 2000 for t in a.turns)  # greeting, hours, goodbye
    assert a.tool_calls == ["end_call"]
    assert a.outcome == "agent_hangup" and a.ended_by == "agent"
    assert after["rest"] == [{"Status": "completed"}]
    assert r.phone.heard_ms == pytest.approx(a.heard_ms, abs=100)


def _barge_in(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert len(a.clears) == 1 and a.turns[0].cleared
    heard_at_clear = a.turns[0].heard_ms
    assert len(a.truncates) == 1 and abs(a.truncates[0] - heard_at_clear) <= 60, (a.truncates, heard_at_clear)
    assert after["truncates"][0]["audio_end_ms"] == a.truncates[0]
    assert heard_at_clear < 4000  # really cut short: the answer is ~7 s
    assert a.outcome == "caller_hangup"


def _dtmf_menu(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert a.dtmf == ["1"]
    assert a.tool_calls == ["transfer_call"]
    assert a.outcome == "transferred"
    assert "<Dial>+15551230000</Dial>" in after["rest"][0]["Twiml"]


def _hangup_mid_response(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert a.ended_by == "caller" and a.outcome == "caller_hangup"
    assert len(a.turns) == 1 and 900 <= a.turns[0].heard_ms <= 1600  # hung up a second in
    assert a.truncates == [] and a.clears == []


def _idle_timeout(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert a.outcome == "idle_timeout"
    assert len(a.turns) == 2  # the greeting, then the idle prompt
    assert a.turns[1].start - a.turns[0].end == pytest.approx(4.0, abs=0.5)  # AGENT_IDLE_TIMEOUT_SECONDS=4
    assert after["rest"] == [{"Status": "completed"}]


def _line_noise(r: ReplayResult, after: dict) -> None:
    a = r.actual
    assert len(a.turns) == 2 and a.clears == []  # the noise never read as a barge-in
    transcript = (r.new_recording.trailer or {})["stats"]["transcript"]
    assert ["caller", "where are you located"] in transcript
    assert any(who == "agent" and "High Street" in text for who, text in transcript)


CHECKS = {
    "greeting_question": _greeting_question,
    "barge_in": _barge_in,
    "dtmf_menu": _dtmf_menu,
    "hangup_mid_response": _hangup_mid_response,
    "idle_timeout": _idle_timeout,
    "line_noise": _line_noise,
}


def test_the_recordings_say_what_they_should() -> None:
    """The corpus itself (not a replay) holds the behaviour the checks expect."""
    s = summarize(read_recording(BY_NAME["barge_in"].path))
    assert s.truncates and abs(s.truncates[0] - s.turns[0].heard_ms) <= 60
    assert summarize(read_recording(BY_NAME["dtmf_menu"].path)).tool_calls == ["transfer_call"]
