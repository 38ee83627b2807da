"""TwiML builders: structure, escaping, and the URL rules Twilio enforces (docs/protocols.md, "TwiML")."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from telephony_agent.telephony.twilio.twiml import (
    busy_twiml,
    connect_stream_twiml,
    dial_twiml,
    hangup_twiml,
    say_hangup_twiml,
)


def test_connect_stream_with_parameters_and_escaping() -> None:
    xml = connect_stream_twiml(
        "wss://agent.test/twilio/media",
        {"token": 'a"b<c>&d', "tenant": "acme"},
        status_callback="https://agent.test/twilio/stream-status?x=1&y=2",
    )
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://agent.test/twilio/media"
    assert stream.get("statusCallback") == "https://agent.test/twilio/stream-status?x=1&y=2"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"token": 'a"b<c>&d', "tenant": "acme"}
    assert "statusCallback" not in connect_stream_twiml("wss://a.test/m")


@pytest.mark.parametrize("url", ["https://agent.test/m", "ws://agent.test/m", "wss://agent.test/m?x=1", "wss:///m", "/m"])
def test_connect_stream_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        connect_stream_twiml(url, {})


def test_connect_stream_rejects_non_string_parameters() -> None:
    with pytest.raises(ValueError):
        connect_stream_twiml("wss://agent.test/m", {"n": 1})  # type: ignore[dict-item]


def test_busy_dial_hangup() -> None:
    assert ET.fromstring(busy_twiml()).find("Reject").get("reason") == "busy"  # type: ignore[union-attr]
    assert dial_twiml("+15551234567") == "<Response><Dial>+15551234567</Dial></Response>"
    assert dial_twiml("sip:desk@pbx.test") == "<Response><Dial><Sip>sip:desk@pbx.test</Sip></Dial></Response>"
    assert dial_twiml("+1<2") == "<Response><Dial>+1&lt;2</Dial></Response>"
    with pytest.raises(ValueError):
        dial_twiml("  ")
    assert ET.fromstring(hangup_twiml()).find("Hangup") is not None
    root = ET.fromstring(say_hangup_twiml("Sorry & goodbye"))
    assert [c.tag for c in root] == ["Say", "Hangup"] and root.find("Say").text == "Sorry & goodbye"  # type: ignore[union-attr]
