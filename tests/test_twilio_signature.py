"""X-Twilio-Signature (docs/protocols.md, "Request signatures") and our per-call stream tokens."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from telephony_agent.telephony.twilio.signature import (
    check_stream_token,
    compute_signature,
    make_stream_token,
    url_variants,
    validate_body,
    validate_request,
    validate_websocket,
)

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
BODY = b'{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def test_vector_form_params() -> None:
    assert compute_signature(URL, PARAMS, TOKEN) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert validate_request(URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", TOKEN)


def test_vector_with_port() -> None:
    url_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert compute_signature(url_443, PARAMS, TOKEN) == "kvajT1Ptam85bY51eRf/AJRuM3w="


def test_vector_json_body() -> None:
    assert hashlib.sha256(BODY).hexdigest() == BODY_HASH
    url = URL + "&bodySHA256=" + BODY_HASH
    assert compute_signature(url, {}, TOKEN) == "a9nBmqA0ju/hNViExpshrM61xv4="
    assert validate_body(url, BODY, "a9nBmqA0ju/hNViExpshrM61xv4=", TOKEN)
    assert not validate_body(url, BODY + b" ", "a9nBmqA0ju/hNViExpshrM61xv4=", TOKEN)
    assert not validate_body(url, BODY, "a9nBmqA0ju/hNViExpshrM61xv5=", TOKEN)
    assert not validate_body(URL, BODY, "a9nBmqA0ju/hNViExpshrM61xv4=", TOKEN)  # no bodySHA256


def test_port_quirk_both_directions() -> None:
    # Signed without port, validated against a URL with :443, and vice versa.
    assert validate_request("https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", TOKEN)
    assert validate_request(URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=", TOKEN)
    # http gets :80; a non-default port is only removed, never swapped.
    assert url_variants("http://a.test/x") == ["http://a.test/x", "http://a.test:80/x"]
    assert url_variants("wss://a.test/x") == ["wss://a.test/x", "wss://a.test:80/x"]
    assert url_variants("https://a.test:8443/x?q=1") == ["https://a.test/x?q=1", "https://a.test:8443/x?q=1"]


def test_rejects_wrong_signature_token_params() -> None:
    good = compute_signature(URL, PARAMS, TOKEN)
    assert not validate_request(URL, PARAMS, good, "54321")
    assert not validate_request(URL, {**PARAMS, "Digits": "9"}, good, TOKEN)
    assert not validate_request(URL, PARAMS, None, TOKEN)
    assert not validate_request(URL, PARAMS, "", TOKEN)
    assert not validate_request(URL, PARAMS, good, "")
    assert not validate_request(URL.replace("https", "http"), PARAMS, good, TOKEN)


def test_multidict_sorted_unique_values() -> None:
    md = MultiDict([("b", "2"), ("a", "z"), ("a", "y"), ("a", "z")])
    # a: sorted unique values y, z; then b.
    assert compute_signature("https://x.test/", md, TOKEN) == compute_signature("https://x.test/", {"a": ["y", "z"], "b": "2"}, TOKEN)
    expected = RequestValidator(TOKEN).compute_signature("https://x.test/", md)
    assert compute_signature("https://x.test/", md, TOKEN) == expected


@given(
    st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=6),
    st.text(min_size=1, max_size=20),
)
def test_matches_official_sdk(params: dict[str, str], token: str) -> None:
    url = "https://agent.test/twilio/voice"
    ours = compute_signature(url, params, token)
    assert ours == RequestValidator(token).compute_signature(url, params)
    assert RequestValidator(token).validate(url, params, ours)
    assert validate_request(url, params, ours, token)


def test_websocket_wss_and_https_forms() -> None:
    base = "https://agent.test"
    wss = compute_signature("wss://agent.test/twilio/media", {}, TOKEN)
    https = compute_signature("https://agent.test/twilio/media", {}, TOKEN)
    assert validate_websocket(base, "/twilio/media", wss, TOKEN)
    assert validate_websocket(base + "/", "twilio/media", wss, TOKEN)
    assert validate_websocket(base, "/twilio/media", https, TOKEN)
    # Port variants are accepted as for webhooks.
    assert validate_websocket(base, "/twilio/media", compute_signature("https://agent.test:443/twilio/media", {}, TOKEN), TOKEN)
    # Base URL with a path prefix.
    pref = compute_signature("wss://agent.test/prefix/twilio/media", {}, TOKEN)
    assert validate_websocket("https://agent.test/prefix", "/twilio/media", pref, TOKEN)


def test_websocket_rejections() -> None:
    base = "https://agent.test"
    wss = compute_signature("wss://agent.test/twilio/media", {}, TOKEN)
    assert not validate_websocket(base, "/twilio/other", wss, TOKEN)
    assert not validate_websocket("https://evil.test", "/twilio/media", wss, TOKEN)
    assert not validate_websocket(base, "/twilio/media", wss, "wrong")
    assert not validate_websocket(base, "/twilio/media", None, TOKEN)
    assert not validate_websocket(base, "/twilio/media", "", TOKEN)
    assert not validate_websocket("not a url", "/twilio/media", wss, TOKEN)
    # Signed with params (as if a query or form were included) does not match.
    assert not validate_websocket(base, "/twilio/media", compute_signature("wss://agent.test/twilio/media", {"a": "b"}, TOKEN), TOKEN)


SECRET = b"s" * 32


NONCE = b"n" * 12


def test_stream_token_roundtrip_and_expiry() -> None:
    tok = make_stream_token("CA" + "a" * 32, SECRET, now=1000.0, ttl=60, nonce=NONCE)
    claim = check_stream_token(tok, "CA" + "a" * 32, SECRET, now=1000.0)
    assert claim is not None and claim.expiry == 1060 and claim.token_id == tok.split(".")[1]
    assert check_stream_token(tok, "CA" + "a" * 32, SECRET, now=1059.9)
    assert not check_stream_token(tok, "CA" + "a" * 32, SECRET, now=1060.0)
    assert not check_stream_token(tok, "CA" + "b" * 32, SECRET, now=1000.0)
    assert not check_stream_token(tok, "CA" + "a" * 32, b"other", now=1000.0)
    other = make_stream_token("CA" + "a" * 32, SECRET, now=1000.0, ttl=60, nonce=b"m" * 12)
    assert check_stream_token(other, "CA" + "a" * 32, SECRET, now=1000.0).token_id != claim.token_id


def test_stream_token_tamper_and_garbage() -> None:
    sid = "CA" + "a" * 32
    tok = make_stream_token(sid, SECRET, now=1000.0, ttl=60, nonce=NONCE)
    expiry, token_id, mac = tok.split(".")
    assert not check_stream_token(f"{int(expiry) + 1000}.{token_id}.{mac}", sid, SECRET, now=1000.0)
    assert not check_stream_token(f"{expiry}.{token_id}x.{mac}", sid, SECRET, now=1000.0)  # another id, same MAC
    flipped = mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1]
    assert not check_stream_token(f"{expiry}.{token_id}.{flipped}", sid, SECRET, now=1000.0)
    assert not check_stream_token(f"{expiry}.{mac}", sid, SECRET, now=1000.0)  # the old two-part shape
    for bad in ["", ".", "..", "abc", "123.", ".abc", "12a.x.yz", "1e9.a.bc", "-5.a.bc", "१२३.a.bc", "1.a b.c",
                "x" * 500, None, 123, b"1.2.3"]:
        assert check_stream_token(bad, sid, SECRET, now=1000.0) is None
    assert check_stream_token(tok, None, SECRET, now=1000.0) is None


@given(st.text(max_size=80))
def test_stream_token_never_raises(garbage: str) -> None:
    assert check_stream_token(garbage, "CA1", SECRET, now=0.0) is None
