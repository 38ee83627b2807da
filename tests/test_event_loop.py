"""`AGENT_EVENT_LOOP`: the real server serves a call on the standard loop and on uvloop, says which
one runs, and refuses to start with a clear message when the loop asked for cannot run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from test_ops_process import (
    CALL_SID,
    _active,
    json_log,
    live_call,
    running,
    start_server,
    wait_for,
)

from telephony_agent.event_loop import EventLoopUnavailable, loop_factory, run
from telephony_agent.settings import EventLoopKind, SettingsError, load_settings

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
async def test_the_server_serves_a_call_on_each_loop(tmp_path: Path, kind: str) -> None:
    if kind == "uvloop":
        pytest.importorskip("uvloop")
    async with running(tmp_path, AGENT_EVENT_LOOP=kind) as (server, http):
        async with live_call(server, http, start_timeout=20) as leg:
            await leg.media(10)

            async def greeted() -> bool:
                return leg.media_received > 0

            await wait_for(greeted, 30, "the agent's greeting audio")  # the local engine speaks first
            await leg.stop()
            await asyncio.wait_for(leg.closed.wait(), 15)
        await wait_for(lambda: _active(server, http, 0), 10, "the call to end")
    records = json_log(server)
    loops = [r["msg"] for r in records if r.get("event") == "event_loop"]
    assert len(loops) == 1 and loops[0].startswith(f"event loop: {kind}"), loops
    summary = next(r for r in records if r.get("call_id") == CALL_SID and r.get("event") == "call_summary")
    assert summary["outcome"] == "caller_hangup"


async def _refused_start(tmp_path: Path, **env: str) -> str:
    """Start the server with `env`, expect it to exit 2 at start-up; its stderr."""
    server = start_server(tmp_path, **env)
    try:
        assert await server.wait_exit(40) == 2
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(5)
    return server.stderr_path.read_text()


async def test_uvloop_asked_for_but_missing_stops_start_up(tmp_path: Path) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "uvloop.py").write_text("raise ImportError('hidden by the test')\n")
    pythonpath = ":".join(p for p in (str(hide), *sys.path) if p)
    text = await _refused_start(tmp_path, AGENT_EVENT_LOOP="uvloop", PYTHONPATH=pythonpath)
    assert "AGENT_EVENT_LOOP=uvloop but uvloop cannot be imported (hidden by the test)" in text
    assert "AGENT_EVENT_LOOP=auto or asyncio" in text


async def test_a_bad_value_stops_start_up_naming_the_setting(tmp_path: Path) -> None:
    text = await _refused_start(tmp_path, AGENT_EVENT_LOOP="libuv")
    assert "AGENT_EVENT_LOOP" in text and "'auto', 'asyncio' or 'uvloop'" in text, text


def test_settings_accept_the_three_values_and_refuse_others(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("auto", "asyncio", "uvloop"):
        monkeypatch.setenv("AGENT_EVENT_LOOP", value)
        assert load_settings(_env_file=None).event_loop.value == value
    monkeypatch.setenv("AGENT_EVENT_LOOP", "trio")
    with pytest.raises(SettingsError, match="AGENT_EVENT_LOOP"):
        load_settings(_env_file=None)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    name, factory = loop_factory(EventLoopKind.AUTO)
    assert name == "asyncio"
    with pytest.raises(EventLoopUnavailable, match="AGENT_EVENT_LOOP=uvloop"):
        loop_factory(EventLoopKind.UVLOOP)

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(which(), factory).startswith("asyncio")


def test_uvloop_runs_the_coroutine_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    for kind in (EventLoopKind.AUTO, EventLoopKind.UVLOOP):
        name, factory = loop_factory(kind)
        assert name.startswith("uvloop ")

        async def which() -> str:
            await asyncio.sleep(0)
            return type(asyncio.get_running_loop()).__module__

        assert run(which(), factory).startswith("uvloop")
