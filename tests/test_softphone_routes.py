"""The softphone's HTTP side without a browser: who may load the page and place calls, admission,
and the per-call stream token on the real media socket."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from agent_server import PUBLIC_URL, running_agent, test_settings
from pydantic import ValidationError

from telephony_agent.realtime.providers.local import LocalRealtimeModel
from telephony_agent.settings import Settings
from telephony_agent.testing.twilio_caller import TwilioCaller

TOKEN = "softphone-test-token-0123456789"
OTHER_ORIGIN = re.compile(r"(https?:|wss?:)?//[a-z0-9-]+\.[a-z]", re.IGNORECASE)  # a URL with a host
STATIC = ("softphone.js", "dsp.js", "capture-worklet.js", "playout-worklet.js", "softphone.css")


def settings(**overrides: Any) -> Settings:
    # No account SID: a softphone call has no Twilio call to hang up over REST (and tests stay offline).
    return test_settings(max_loop_lag_ms=5000, **{"twilio_account_sid": None, **overrides})


async def place(http: aiohttp.ClientSession, base: str, token: str | None = None, **headers: str) -> tuple[int, dict]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(base + "/softphone/call", json={}, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_off_unless_local_mode_or_a_token() -> None:
    async with running_agent(settings(), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        for path in ("/softphone", "/softphone/", "/softphone/static/softphone.js"):
            async with http.get(agent.base_url + path, allow_redirects=False) as resp:
                assert resp.status == 404, path
        async with http.post(agent.base_url + "/softphone/call", json={}) as resp:
            assert resp.status == 404
        assert not agent.state.pending


async def test_local_mode_serves_the_page_and_places_calls() -> None:
    async with running_agent(settings(twilio_validate=False), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        async with http.get(agent.base_url + "/softphone") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            html = await resp.text()
            csp = resp.headers["Content-Security-Policy"]
        assert 'data-access="local"' in html and "__ACCESS__" not in html
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert not OTHER_ORIGIN.search(html)  # nothing from anywhere else
        for name in STATIC:
            async with http.get(f"{agent.base_url}/softphone/static/{name}") as resp:
                assert resp.status == 200, name
                assert resp.content_type in ("text/javascript", "text/css")
                assert not OTHER_ORIGIN.search(await resp.text()), name
        for bad in ("routes.py", "softphone.html", "..%2Froutes.py", "nope.js"):
            async with http.get(f"{agent.base_url}/softphone/static/{bad}") as resp:
                assert resp.status == 404, bad
        async with http.get(agent.base_url + "/softphone/", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"] == "../softphone"

        status, body = await place(http, agent.base_url)
        assert status == 200, body
        sid = body["callSid"]
        assert sid.startswith("CA") and len(sid) == 34
        assert body["streamPath"] == "twilio/media"
        assert body["customParameters"]["callSid"] == sid and body["customParameters"]["token"]
        assert sid in agent.state.pending  # reserved like a webhook-answered call

        # Another site's page may not place calls here, even in local mode.
        status, body = await place(http, agent.base_url, Origin="https://evil.example")
        assert (status, body["error"]) == (403, "cross_origin")
        host = agent.base_url.removeprefix("http://")
        status, _ = await place(http, agent.base_url, Origin=f"http://{host}")
        assert status == 200


async def test_admission_as_the_webhook() -> None:
    async with running_agent(settings(twilio_validate=False, max_calls=1), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        status, _ = await place(http, agent.base_url)
        assert status == 200
        status, body = await place(http, agent.base_url)  # the first call's reservation holds the slot
        assert (status, body) == (503, {"error": "refused", "reason": "at_capacity"})
        assert agent.state.metrics.calls_refused.labels("at_capacity")._value.get() == 1
        for sid in agent.state.pending:
            agent.state.manager.release(sid)
        agent.state.draining = True
        status, body = await place(http, agent.base_url)
        assert (status, body["reason"]) == (503, "draining")


async def test_token_mode() -> None:
    async with running_agent(settings(softphone_token=TOKEN), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        async with http.get(agent.base_url + "/softphone") as resp:
            assert resp.status == 200 and 'data-access="token"' in await resp.text()
        assert await place(http, agent.base_url) == (401, {"error": "token_required"})
        assert await place(http, agent.base_url, token=TOKEN + "x") == (401, {"error": "bad_token"})
        async with http.post(agent.base_url + "/softphone/call", headers={"Authorization": "Basic abc"}) as resp:
            assert resp.status == 401
        assert not agent.state.pending
        assert agent.state.metrics.webhooks_refused.labels("softphone")._value.get() == 3
        status, body = await place(http, agent.base_url, token=TOKEN)
        assert status == 200 and body["callSid"] in agent.state.pending


async def test_token_mode_needs_the_twilio_auth_token() -> None:
    """Without it the media socket refuses every stream, so placing a call would only fail later."""
    async with running_agent(settings(softphone_token=TOKEN, twilio_auth_token=None), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        assert await place(http, agent.base_url, token=TOKEN) == (503, {"error": "no_twilio_auth_token"})
        assert not agent.state.pending


@pytest.mark.parametrize("tamper", [None, "token", "call"])
async def test_the_minted_stream_token_opens_the_media_socket(tamper: str | None) -> None:
    """Signatures are checked: an unsigned stream gets in only with the token minted for its call."""
    async with running_agent(settings(softphone_token=TOKEN), LocalRealtimeModel()) as agent, aiohttp.ClientSession() as http:
        status, body = await place(http, agent.base_url, token=TOKEN)
        assert status == 200
        params = dict(body["customParameters"])
        sid = body["callSid"]
        if tamper == "token":
            params["token"] = params["token"][:-2] + ("AA" if not params["token"].endswith("AA") else "BB")
        async with TwilioCaller(agent.base_url, PUBLIC_URL, "unused", session=http) as phone:
            if tamper == "call":
                phone.call_sid = "CA" + "1" * 32  # a token minted for another call
            else:
                phone.call_sid = sid
            await phone.connect(signature="omit", custom_parameters=params, stream_url=f"wss://agent.test/{body['streamPath']}")
            if tamper is None:
                await phone.wait_for(lambda: agent.state.calls, timeout=5, what="the call to start")
                assert sid in agent.state.calls and sid not in agent.state.pending
                await phone.hangup()
                await agent.wait_no_calls()
            else:
                await phone.wait_for(lambda: phone.closed_at is not None, timeout=5, what="the socket to close")
                assert phone.close_code == 1008 and not agent.state.calls


def test_softphone_token_setting() -> None:
    def make(token: str) -> Settings:
        values: dict[str, Any] = {"_env_file": None, "softphone_token": token}
        return Settings(**values)

    assert make("").softphone_token is None
    assert make(TOKEN).softphone_token is not None
    with pytest.raises(ValidationError, match="at least 16 characters"):
        make("short")
    assert make(TOKEN).masked()["AGENT_SOFTPHONE_TOKEN"] == "********"
