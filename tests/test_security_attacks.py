"""Issue 14's attacks (tests/attacks.py) against this tree's server, run as `telephony-agent serve`
in a subprocess with a fake provider: each asserts the hole is closed. The same attacks measure
the code before the fix: `python tests/attacks.py --tree <checkout>`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from attacks import (
    Target,
    bad_frame_flood,
    bare_url,
    call_sid,
    drain_bypass,
    fd_exhaustion,
    good_call,
    idle_connections,
    injection,
    malformed_webhooks,
    prestart_flood,
    prestart_memory,
    served,
    signature_replay,
    stream_call,
    stream_of,
    token_reuse,
    webhook,
)

pytestmark = pytest.mark.timeout(180)

TREE = Path(__file__).resolve().parent.parent
LIMIT_S = 140.0  # inside pytest's 180 s: a hang fails in the test, with the server's log, not in teardown


def serve(**kwargs: Any) -> contextlib.AbstractAsyncContextManager[Target]:
    """This tree's server, as the attacks meet it."""
    return served(TREE, python=sys.executable, limit=LIMIT_S, **kwargs)


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def metrics(t: Target) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(t.base_url + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def test_prestart_junk_writes_no_file_and_memory_stays_bounded() -> None:
    async with serve() as t:
        flood = await prestart_flood(t, sockets=3, seconds=2.0)
        assert flood["frames_sent"] > 0
        assert flood["files_created"] == 0 and flood["mib_written"] == 0  # before: 1 GiB in 5 s
        assert not flood["made_up_start_kept_open"]  # a refused start, and no file for it
        assert flood["log_lines"] == 0  # strangers only move counters
        memory = await prestart_memory(t, sockets=4, frames=64, frame_kib=200)  # under the frame limit
        assert memory["rss_peak_growth_mib"] < 60, memory  # before: 64 frames kept per socket
        memory = await prestart_memory(t, sockets=4, frames=8, frame_kib=1024)  # over it: closed at once
        assert memory["rss_peak_growth_mib"] < 60, memory
        files = list(t.recordings.iterdir()) if t.recordings else []
        assert files == []


async def test_recording_starts_with_authorisation_and_never_holds_the_token() -> None:
    async with serve() as t, aiohttp.ClientSession() as http:
        sid = call_sid()
        _, text = await webhook(http, t, sid)
        stream = stream_of(text)
        assert stream is not None
        token = stream[0].rsplit("/", 1)[1]
        params = {**stream[1], "token": token}  # a sender that also passes it as a parameter
        assert await stream_call(http, t, stream[0], sid, params, hold=1.0)
        await asyncio.sleep(1.5)
        assert t.recordings is not None
        jsonl = [p for p in t.recordings.iterdir() if p.suffix == ".jsonl"]
        assert len(jsonl) == 1 and sid in jsonl[0].name
        content = jsonl[0].read_text()
        assert token not in content and "[redacted]" in content
        assert '"connected"' in content  # the frame before start, kept and recorded once authorised
        assert token not in t.log_text()


# One server for the attacks that measure only what changes while they run (provider sessions,
# log lines, tracebacks, counters) and leave no call up: they run one after another on it, each
# its own test. The others need a server of their own (an empty recordings directory, other
# settings, a SIGTERM, descriptors used up, reservations left behind).
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[Target]:
    async with serve() as t:
        yield t


@module_loop
async def test_replayed_signature_and_reused_token_open_no_provider_session(shared: Target) -> None:
    t = shared
    replay = await signature_replay(t, calls=10, hold=1.0)
    assert replay["provider_sessions"] == 0 and replay["kept_open"] == 0  # before: every one
    reuse = await token_reuse(t, uses=3)
    assert reuse["provider_sessions"] == 1  # before: 3


@module_loop
async def test_bad_frame_floods_log_a_bounded_number_of_lines_and_counters_stay_exact(shared: Target) -> None:
    t = shared
    before = await metrics(t)
    result = await bad_frame_flood(t, frames=3000)
    assert result["preauth_log_lines"] == 0, result  # before authorisation only counters move
    assert result["call_log_lines"] <= 4, result  # one line per kind per 10 s
    after = await metrics(t)
    kinds = ("bad_json", "unknown_event")
    counted = sum(after.get(f'agent_bad_input_total{{kind="{k}"}}', 0) - before.get(f'agent_bad_input_total{{kind="{k}"}}', 0)
                  for k in kinds)
    # The stranger's socket is closed after 32 bad frames; every frame of the call is counted.
    assert counted == result["call_frames_sent"] + 32, (counted, result)


@module_loop
async def test_malformed_unsigned_webhooks_get_4xx_and_no_traceback(shared: Target) -> None:
    t = shared
    result = await malformed_webhooks(t)
    for name in ("not_utf8", "multipart_no_boundary", "json", "huge"):
        assert isinstance(result[name], int) and 400 <= result[name] < 500, result
    assert result["tracebacks"] == 0, result


async def test_call_limit_holds_against_every_way_in() -> None:
    async with serve() as t, aiohttp.ClientSession() as http:
        checked = asyncio.Event()  # the three calls are held until the checks are made
        held = [asyncio.create_task(good_call(http, t, hold=30.0, release=checked))
                for _ in range(3)]  # AGENT_MAX_CALLS=3
        await until(lambda: t.sessions() == 3)
        _, text = await webhook(http, t, call_sid())
        assert "Reject" in text  # the webhook is busy
        assert not await stream_call(http, t, bare_url(t), call_sid(), {}, hold=0.5)  # a replayed signature
        assert t.sessions() == 3
        checked.set()
        assert all(await asyncio.gather(*held))  # each stayed up through the checks
        for _ in range(100):  # the three calls have ended and left the registry
            if (await metrics(t)).get("agent_active_calls", 1) == 0:
                break
            await asyncio.sleep(0.1)
        drain = await drain_bypass(t)  # SIGTERM: a drain kept going by a call in progress
        assert drain["provider_sessions"] == 0 and not drain["replayed_kept_open"]
        assert drain["webhook_answer"] == "busy"


async def test_idle_and_slow_connections_are_closed_in_time_while_a_call_goes_through() -> None:
    env = {"AGENT_HTTP_KEEPALIVE_TIMEOUT_SECONDS": "3", "AGENT_HTTP_HEADER_TIMEOUT_SECONDS": "2"}
    async with serve(env=env) as t:
        result = await idle_connections(t, idle=1000, slow=50, wait=15.0)
        assert result["good_call_connected"], result
        assert result["held"] == 0, result  # before: all 1,050 for as long as they liked
        # 3 s keep-alive, 2 s for headers; the rest is a loaded machine opening and closing 1,050 sockets
        assert result["longest_held_s"] <= 12.0, result


async def test_running_out_of_descriptors_refuses_quietly_and_calls_still_connect() -> None:
    async with serve(nofile=1024) as t:
        result = await fd_exhaustion(t, conns=1100, seconds=5.0)
        assert result["good_call_connected"], result  # the idlest connection made room
        assert result["tracebacks"] == 0, result  # before: 21,119 in 10 s
        assert result["log_lines"] <= 10, result


async def test_caller_values_cannot_break_twiml_or_forge_log_lines() -> None:
    async with serve() as t:
        result = await injection(t)
        assert result == {"twiml_valid_xml": True, "forged_log_lines": 0}


async def test_a_token_is_single_use_across_worker_processes() -> None:
    async with serve(env={"AGENT_WORKERS": "2"}) as t:
        reuse = await token_reuse(t, uses=6)  # new connections: the kernel spreads them over both workers
        assert reuse["provider_sessions"] == 1, reuse


async def test_unauthenticated_cap_refuses_with_503_and_authorised_calls_do_not_count() -> None:
    env = {"AGENT_MAX_UNAUTHENTICATED_CONNECTIONS": "4", "AGENT_WS_HANDSHAKE_TIMEOUT_SECONDS": "4"}
    async with serve(env=env) as t, aiohttp.ClientSession() as http:
        checked = asyncio.Event()  # the two calls are held until the strangers are dealt with
        calls = [asyncio.create_task(good_call(http, t, hold=30.0, release=checked)) for _ in range(2)]
        await until(lambda: t.sessions() == 2)  # two authorised calls: they no longer count as strangers
        strangers = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as other:
            for _ in range(4):  # bare sockets that never send start: requests in progress, not idle
                ws = await other.ws_connect(f"ws://{t.host}:{t.port}/twilio/media")
                strangers.append(ws)
            reader, writer = await asyncio.open_connection(t.host, t.port)
            head = await asyncio.wait_for(reader.read(64), 5)
            writer.close()
            assert head.startswith(b"HTTP/1.1 503"), head  # none idle to evict: the newcomer is refused
            for ws in strangers:  # the handshake timeout frees them
                msg = await ws.receive(timeout=8)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
                assert "no start within 4s" in str(msg.extra)
        checked.set()
        assert all(await asyncio.gather(*calls))
        assert await good_call(http, t)
        assert t.log_text().count("refusing new connections") == 1
