"""REST client against the fake Calls endpoint (docs/protocols.md, "REST")."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import aiohttp
import pytest
from peers.fake_twilio_rest import FakeTwilioRest

from telephony_agent.telephony.twilio.rest import TwilioRest, TwilioRestError

ACC = "AC" + "1" * 32
TOKEN = "secret-auth-token-xyz"
CALL = "CA" + "2" * 32


@pytest.fixture
async def api():
    async with FakeTwilioRest(ACC, TOKEN) as server:
        yield server


async def test_hangup(api: FakeTwilioRest) -> None:
    async with TwilioRest(ACC, TOKEN, base_url=api.base_url) as rest:
        assert await rest.hangup(CALL) is True
    (req,) = api.requests
    assert req.call_sid == CALL and req.account_sid == ACC
    assert req.form == {"Status": "completed"}
    assert req.headers["Accept"] == "application/json"
    assert req.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert api.call_status[CALL] == "completed"


async def test_hangup_unknown_call_returns_false(api: FakeTwilioRest) -> None:
    api.mark_unknown(CALL)
    async with TwilioRest(ACC, TOKEN, base_url=api.base_url) as rest:
        assert await rest.hangup(CALL) is False


async def test_transfer_twiml(api: FakeTwilioRest) -> None:
    async with aiohttp.ClientSession() as session:
        rest = TwilioRest(ACC, TOKEN, base_url=api.base_url, session=session)
        await rest.transfer(CALL, "+15551234567")
        await rest.transfer(CALL, "sip:desk@pbx.example.com")
        await rest.close()  # shared session stays open
        assert not session.closed
    first, second = (r.form["Twiml"] for r in api.requests)
    assert first == "<Response><Dial>+15551234567</Dial></Response>"
    root = ET.fromstring(second)
    assert root.find("Dial/Sip").text == "sip:desk@pbx.example.com"


async def test_redirect_twiml_escaping(api: FakeTwilioRest) -> None:
    async with TwilioRest(ACC, TOKEN, base_url=api.base_url) as rest:
        await rest.redirect_twiml(CALL, "<Response><Say>a &amp; b</Say></Response>")
    assert api.requests[0].form["Twiml"] == "<Response><Say>a &amp; b</Say></Response>"


async def test_auth_failure_raises(api: FakeTwilioRest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with TwilioRest(ACC, "wrong-token", base_url=api.base_url) as rest:
        with pytest.raises(TwilioRestError) as info:
            await rest.hangup(CALL)
    assert info.value.status == 401 and info.value.code == 20003
    assert "wrong-token" not in str(info.value) and "wrong-token" not in repr(rest)
    assert "wrong-token" not in caplog.text
    assert api.requests == []


async def test_transfer_404_raises_and_server_error(api: FakeTwilioRest) -> None:
    api.mark_unknown(CALL)
    async with TwilioRest(ACC, TOKEN, base_url=api.base_url) as rest:
        with pytest.raises(TwilioRestError) as info:
            await rest.transfer(CALL, "+15551234567")
        assert info.value.status == 404 and info.value.code == 20404
        api.fail_next(500, 20500, "Internal Server Error")
        with pytest.raises(TwilioRestError) as info:
            await rest.hangup("CA" + "3" * 32)
        assert info.value.status == 500 and info.value.message == "Internal Server Error"


async def test_timeout_and_unreachable(api: FakeTwilioRest) -> None:
    api.delay = 0.4
    async with TwilioRest(ACC, TOKEN, base_url=api.base_url, timeout=0.1) as rest:
        with pytest.raises(TwilioRestError) as info:
            await rest.hangup(CALL)
        assert info.value.status == 0 and "timed out" in info.value.message
    async with TwilioRest(ACC, TOKEN, base_url="http://127.0.0.1:1", timeout=1.0) as rest:
        with pytest.raises(TwilioRestError) as info:
            await rest.hangup(CALL)
        assert info.value.status == 0


async def test_rejects_bad_sids() -> None:
    with pytest.raises(ValueError):
        TwilioRest("AC/../x", TOKEN)
    with pytest.raises(ValueError):
        TwilioRest(ACC, "")
    rest = TwilioRest(ACC, TOKEN, base_url="http://127.0.0.1:1")
    with pytest.raises(ValueError):
        await rest.hangup("../Calls/CA1")
    await rest.close()
