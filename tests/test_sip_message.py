"""SIP message parsing/building, SDP offer/answer and digest auth: the sans-I/O pieces, in memory."""

from __future__ import annotations

import random

import pytest

from telephony_agent.telephony.leg import AudioLaw
from telephony_agent.telephony.sip.auth import (
    AuthResult,
    DigestAuthenticator,
    digest_response,
)
from telephony_agent.telephony.sip.message import (
    MAX_MESSAGE_SIZE,
    BadInputKind,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    parse_message,
    parse_name_addr,
    parse_uri,
)
from telephony_agent.telephony.sip.sdp import build_answer, negotiate, parse_offer

OFFER = (
    b"v=0\r\no=x 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8 0 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-16\r\na=ptime:30\r\na=sendrecv\r\n"
)

COMPACT_INVITE = (
    b"INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKaaa;rport, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKbbb\r\n"
    b"Via: SIP/2.0/TCP [2001:db8::1]:5080;branch=z9hG4bKccc\r\n"
    b"f: \"Caller, Esq.\" <sip:+15551230000@10.0.0.1>;tag=abc\r\n"
    b"t: <sip:agent@127.0.0.1>\r\n"
    b"i: call-1@10.0.0.1\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"m: <sip:caller@10.0.0.1:5070>\r\n"
    b"Subject: a folded\r\n  header line\r\n"
    b"c: application/sdp\r\n"
    b"l: " + str(len(OFFER)).encode() + b"\r\n\r\n" + OFFER
)


def test_compact_forms_folding_and_multiple_via() -> None:
    msg = parse_message(COMPACT_INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE" and msg.call_id == "call-1@10.0.0.1"
    vias = msg.headers.get_all("Via")
    assert [v.split(";branch=")[1].split(";")[0] for v in vias] == ["z9hG4bKaaa", "z9hG4bKbbb", "z9hG4bKccc"]
    assert msg.top_via.params == {"branch": "z9hG4bKaaa", "rport": ""}
    assert msg.headers.get("Subject") == "a folded header line"
    assert msg.from_tag == "abc" and msg.to_tag is None
    assert parse_name_addr(msg.headers.get("From") or "").display == '"Caller, Esq."'
    assert msg.body == OFFER and msg.cseq.number == 7


def test_build_round_trip_sets_content_length() -> None:
    msg = parse_message(COMPACT_INVITE)
    again = parse_message(msg.to_bytes())
    assert isinstance(again, Request)
    assert again.body == OFFER
    assert again.headers.get("Content-Length") == str(len(OFFER))
    resp = parse_message(Response(200, "OK", msg.headers.copy(), b"").to_bytes())
    assert isinstance(resp, Response) and resp.status == 200 and resp.headers.get("Content-Length") == "0"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", BadInputKind.EMPTY),
        (b"\r\n\r\n", BadInputKind.EMPTY),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n", BadInputKind.TRUNCATED),
        (b"HELLO\r\n\r\n", BadInputKind.START_LINE),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", BadInputKind.START_LINE),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n", BadInputKind.MISSING_HEADER),
        (COMPACT_INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: x INVITE"), BadInputKind.CSEQ),
        (COMPACT_INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), BadInputKind.CSEQ),
        (COMPACT_INVITE.replace(b"l: ", b"l: 9"), BadInputKind.TRUNCATED),
        (COMPACT_INVITE.replace(b"l: ", b"l: -"), BadInputKind.CONTENT_LENGTH),
        (COMPACT_INVITE.replace(b"i: call", b"bad header call"), BadInputKind.HEADER),
        (b"SIP/2.0 99 Odd\r\nVia: SIP/2.0/UDP h\r\n\r\n", BadInputKind.START_LINE),
        (b"x" * (MAX_MESSAGE_SIZE + 1), BadInputKind.OVERSIZED),
    ],
)
def test_malformed_is_a_typed_error(data: bytes, kind: BadInputKind) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.kind is kind


def test_mutated_messages_never_raise_anything_but_sip_parse_error() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        data = bytearray(COMPACT_INVITE)
        for _ in range(rng.randint(1, 12)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = bytes(rng.choice([b":", b"\r\n", b";", b"<", b"\"", b",", b" \t", b"\xff"]))
        try:
            parse_message(bytes(data))
        except SipParseError:
            pass


def test_content_length_trims_udp_body() -> None:
    msg = parse_message(COMPACT_INVITE + b"trailing junk")
    assert msg.body == OFFER


def test_stream_framer_cuts_by_content_length_and_caps_size() -> None:
    framer = StreamFramer()
    two = COMPACT_INVITE + b"\r\n\r\n" + COMPACT_INVITE
    out: list[bytes] = []
    for i in range(0, len(two), 7):  # arbitrary TCP segmentation
        out += framer.feed(two[i : i + 7])
    assert out == [COMPACT_INVITE, COMPACT_INVITE] and framer.buffered == 0
    huge = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 70000\r\n\r\n"
    with pytest.raises(SipParseError) as info:
        StreamFramer().feed(huge)
    assert info.value.kind is BadInputKind.OVERSIZED
    with pytest.raises(SipParseError):
        StreamFramer().feed(b"A" * (MAX_MESSAGE_SIZE + 10))


def test_uri_parsing() -> None:
    uri = parse_uri("sip:+1555@[2001:db8::5]:5070;transport=TCP;lr")
    assert (uri.user, uri.host, uri.port, uri.transport, "lr" in uri.params) == ("+1555", "2001:db8::5", 5070, "tcp", True)
    with pytest.raises(ValueError):
        parse_uri("tel:+1555")
    with pytest.raises(ValueError):
        parse_uri("sip:host:99999")


def test_sdp_answer_prefers_configured_codec_and_mirrors_te_pt() -> None:
    offer = parse_offer(OFFER)
    neg = negotiate(offer, ["PCMU", "PCMA"])
    assert neg is not None
    assert (neg.law, neg.payload_type, neg.te_payload_type, neg.remote) == (AudioLaw.PCMU, 0, 96, ("192.0.2.9", 40000))
    assert neg.inbound_ptime_ms == 30 and neg.format.ptime_ms == 20
    neg_a = negotiate(offer, ["PCMA"])
    assert neg_a is not None and neg_a.law is AudioLaw.PCMA and neg_a.payload_type == 8
    answer = build_answer(neg, "203.0.113.7", 20002, 42).decode()
    assert "c=IN IP4 203.0.113.7" in answer and "m=audio 20002 RTP/AVP 0 96\r\n" in answer
    assert "a=rtpmap:96 telephone-event/8000" in answer and "a=ptime:20" in answer and "a=sendrecv" in answer


def test_sdp_no_match_and_bad_offers() -> None:
    g722 = OFFER.replace(b"RTP/AVP 8 0 96", b"RTP/AVP 9 96")
    assert negotiate(parse_offer(g722), ["PCMU", "PCMA"]) is None
    srtp = OFFER.replace(b"RTP/AVP", b"RTP/SAVP")
    assert negotiate(parse_offer(srtp), ["PCMU"]) is None
    from telephony_agent.telephony.sip.sdp import SdpError

    for bad in (b"v=0\r\n", b"\xff\xfe", OFFER.replace(b"c=IN IP4 192.0.2.9", b"c=IN IP4 not-an-ip")):
        with pytest.raises(SdpError):
            parse_offer(bad)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_digest_accepts_right_password_and_expires_nonces(algorithm: str) -> None:
    auth = DigestAuthenticator("trunk", "s3cret", nonce_ttl_s=60)
    challenge = next(c for c in auth.challenges(100.0) if f"algorithm={algorithm}" in c)
    nonce = challenge.split('nonce="')[1].split('"')[0]

    def header(password: str, n: str = nonce) -> str:
        resp = digest_response(algorithm, "trunk", "telephony-agent", password, "INVITE", "sip:a@b", n,
                               qop="auth", nc="00000001", cnonce="xyz")
        return (f'Digest username="trunk", realm="telephony-agent", nonce="{n}", uri="sip:a@b", '
                f'response="{resp}", algorithm={algorithm}, qop=auth, nc=00000001, cnonce="xyz"')

    assert auth.check("INVITE", header("s3cret"), 101.0) is AuthResult.OK
    assert auth.check("INVITE", header("wrong"), 101.0) is AuthResult.FAILED
    assert auth.check("INVITE", header("s3cret"), 200.0) is AuthResult.STALE
    assert auth.check("INVITE", header("s3cret", "100.000." + "0" * 32), 101.0) is AuthResult.FAILED
    assert auth.check("INVITE", None, 101.0) is AuthResult.MISSING
    assert auth.challenges(1.0)[0].find("SHA-256") > 0
