"""TwiML documents the bridge returns to Twilio, built with the official `twilio` package.

The package escapes markup (`<`, `&`, quotes) but passes through characters XML 1.0 forbids
(most control characters, U+FFFE/U+FFFF, lone surrogates): a caller's From with one of those
would make the document unparseable. Every text and attribute value goes through `xml_safe`,
which drops them. We add the checks Twilio itself would make late (at call time, as errors
31920/31922), so a misconfigured URL fails at build time instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

__all__ = ["busy_twiml", "connect_stream_twiml", "dial_twiml", "hangup_twiml", "say_hangup_twiml", "xml_safe"]

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` without the characters XML 1.0 cannot carry at all (escaping cannot help those)."""
    return _NOT_XML.sub("", text)


def _xml(response: VoiceResponse, declaration: bool) -> str:
    return str(response.to_xml(xml_declaration=declaration))


def connect_stream_twiml(
    ws_url: str,
    parameters: Mapping[str, str] | None = None,
    status_callback: str | None = None,
    *,
    declaration: bool = True,
) -> str:
    """`<Connect><Stream url>` with `<Parameter>`s: opens the bidirectional Media Stream.

    Raises ValueError for a non-wss URL or one with a query string (Twilio refuses both);
    values travel as `<Parameter>`s instead.
    """
    parts = urlsplit(ws_url)
    if parts.scheme != "wss" or not parts.netloc:
        raise ValueError(f"Media Stream URL must be an absolute wss:// URL, got {ws_url!r}")
    if parts.query or parts.fragment or "?" in ws_url:
        raise ValueError("Media Stream URL must not have a query string; use <Parameter>s")
    response = VoiceResponse()
    connect = Connect()
    attrs = {"url": ws_url}
    if status_callback is not None:
        attrs["status_callback"] = status_callback
    stream = connect.stream(**attrs)
    for name, value in (parameters or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError("stream parameter names and values must be strings")
        stream.parameter(name=xml_safe(name), value=xml_safe(value))
    response.append(connect)
    return _xml(response, declaration)


def busy_twiml(*, declaration: bool = True) -> str:
    """Refuse a call with a busy tone (at capacity): `<Reject reason="busy"/>` costs nothing."""
    response = VoiceResponse()
    response.reject(reason="busy")
    return _xml(response, declaration)


def dial_twiml(target: str, *, declaration: bool = False) -> str:
    """Transfer: `<Dial>number</Dial>`, or `<Dial><Sip>uri</Sip></Dial>` for a `sip:` target."""
    target = target.strip()
    if not target:
        raise ValueError("transfer target is empty")
    response = VoiceResponse()
    if target.lower().startswith(("sip:", "sips:")):
        dial = Dial()
        dial.sip(xml_safe(target))
        response.append(dial)
    else:
        response.dial(xml_safe(target))
    return _xml(response, declaration)


def hangup_twiml(*, declaration: bool = True) -> str:
    """`<Hangup/>`: end the call."""
    response = VoiceResponse()
    response.hangup()
    return _xml(response, declaration)


def say_hangup_twiml(text: str, *, declaration: bool = True) -> str:
    """A short spoken message and hang-up, for when no provider session can be opened."""
    response = VoiceResponse()
    response.say(xml_safe(text))
    response.hangup()
    return _xml(response, declaration)
