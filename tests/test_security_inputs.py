"""Hostile values in configuration, TwiML and logs: allowlist parsing, XML-safe TwiML, one log
record per line in text logs, URL settings masked, rate-limited log budget."""

from __future__ import annotations

import io
import logging
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from telephony_agent.logs import LogBudget, TextFormatter, call_logger, escape_text
from telephony_agent.settings import Settings, mask_url
from telephony_agent.telephony.call_tools import transfer_targets
from telephony_agent.telephony.twilio.twiml import (
    connect_stream_twiml,
    dial_twiml,
    say_hangup_twiml,
)


def test_allowlist_sip_uri_with_parameters_is_one_destination() -> None:
    uri = "sip:desk@pbx.example.com;transport=tls"
    targets = transfer_targets([uri, "Sales=+15551230000", "support = sip:help@pbx.example.com;transport=tcp", "+15559990000"])
    assert targets[uri] == uri  # before: {"sip:desk@pbx.example.com;transport": "tls"}
    assert targets["sales"] == "+15551230000"
    assert targets["support"] == "sip:help@pbx.example.com;transport=tcp"
    assert targets["+15559990000"] == "+15559990000"
    assert "tls" not in targets.values() or targets[uri] == uri
    assert transfer_targets(["tel:+1555;ext=12", "  ", "x="]) == {"tel:+1555;ext=12": "tel:+1555;ext=12", "x=": "x="}


@given(st.text(max_size=40), st.text(max_size=40))
def test_twiml_is_valid_xml_for_any_caller_values(from_: str, to: str) -> None:
    xml = connect_stream_twiml("wss://agent.test/twilio/media/CA1/t", {"from": from_, "to": to})
    root = ET.fromstring(xml)  # before: U+FFFF or \x01 made this raise
    params = {p.get("name"): p.get("value") for p in root.iter("Parameter")}
    assert set(params) == {"from", "to"}


def test_twiml_strips_only_what_xml_forbids() -> None:
    xml = connect_stream_twiml("wss://a.test/m", {"from": "+1\x01\uffff\ufffe<b>&\U0001f600\t"})
    assert ET.fromstring(xml).find("Connect/Stream/Parameter").get("value") == "+1<b>&\U0001f600\t"  # type: ignore[union-attr]
    ET.fromstring(say_hangup_twiml("bye\x00"))
    ET.fromstring(dial_twiml("sip:a@b;transport=tls\x07"))


def _text_log(record_fn) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.security.escape")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    record_fn(logger)
    return stream.getvalue()


def test_text_log_escapes_control_characters_in_message_and_call_id() -> None:
    forged = "CA1\n2026-12-01 00:00:00,000 ERROR telephony_agent.server admin logged in"
    out = _text_log(lambda lg: lg.warning("refusing call %s: %s", forged, "at_capacity", extra={"call_id": forged}))
    assert out.count("\n") == 1, out  # one record, one line
    assert "\\x0a2026-12-01" in out
    out = _text_log(lambda lg: call_logger("test.security.escape", "CA\r\u2028x").info("hi"))
    assert out.count("\n") == 1 and "\\x0d" in out and "\\u2028" in out


def test_text_log_keeps_tracebacks_multiline() -> None:
    def boom(lg: logging.Logger) -> None:
        try:
            raise ValueError("x")
        except ValueError:
            lg.exception("failed\nforged")

    out = _text_log(boom)
    assert "failed\\x0aforged" in out and "Traceback" in out and out.count("\n") > 2


def test_escape_text() -> None:
    assert escape_text("a\tb\x7fc\x85") == "a\\x09b\\x7fc\\x85"
    assert escape_text("plain ünicode") == "plain ünicode"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("wss://api.openai.com/v1/realtime", "wss://api.openai.com/v1/realtime"),
        ("wss://proxy.example/realtime?key=sk-live-123&model=x", "wss://proxy.example/realtime?key=********&model=********"),
        ("https://user:pass@api.example:8443/x", "https://********@api.example:8443/x"),
        ("https://h/p#token", "https://h/p#********"),
        ("local", "local"),
    ],
)
def test_mask_url(value: str, masked: str) -> None:
    assert mask_url(value) == masked


def test_config_masks_url_settings_with_credentials() -> None:
    s = Settings(_env_file=None, gemini_url="wss://g.example/ws?key=AIzaSECRET", public_url="https://u:pw@agent.example")
    out = s.masked()
    assert "AIzaSECRET" not in out["AGENT_GEMINI_URL"] and "pw" not in out["AGENT_PUBLIC_URL"]
    assert out["AGENT_OPENAI_URL"] == "wss://api.openai.com/v1/realtime"


def test_log_budget_one_line_per_interval_per_kind() -> None:
    budget = LogBudget(interval=10.0)
    assert budget.allow("bad_json", 0.0) == 0
    assert [budget.allow("bad_json", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert budget.allow("oversized", 1.0) == 0  # kinds are independent
    assert budget.allow("bad_json", 10.0) == 3  # and the line says how many were not logged
    assert budget.allow("bad_json", 10.1) is None


def test_config_command_prints_no_url_credentials(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                   tmp_path) -> None:
    from telephony_agent.cli import main

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("AGENT_OPENAI_URL", "wss://proxy.example/v1/realtime?api-key=sk-live-SECRET")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok-SECRET")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "SECRET" not in out
    assert "AGENT_OPENAI_URL=wss://proxy.example/v1/realtime?api-key=********" in out


def test_accept_errors_out_of_descriptors_log_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import errno

    from telephony_agent.connections import install_accept_error_handler

    loop = asyncio.new_event_loop()
    try:
        install_accept_error_handler(loop, interval=10.0)
        with caplog.at_level(logging.INFO):
            for _ in range(1000):  # what asyncio's accept loop reports, once per failed accept()
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
            loop.call_exception_handler({"message": "something else"})
        accept_lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
        assert len(accept_lines) == 1 and accept_lines[0].exc_info is None  # one line, no traceback
        assert any("something else" in r.getMessage() for r in caplog.records)  # others still reported
    finally:
        loop.close()
