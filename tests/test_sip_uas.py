"""The sans-I/O SIP UAS core driven in memory: bytes and `now` in, actions out (no sockets)."""

from __future__ import annotations

from telephony_agent.telephony.sip.auth import DigestAuthenticator, digest_response
from telephony_agent.telephony.sip.message import Request, Response, parse_message
from telephony_agent.telephony.sip.sdp import build_answer
from telephony_agent.telephony.sip.transaction import Peer
from telephony_agent.telephony.sip.uas import (
    CallConfirmed,
    CallEnded,
    CallState,
    Count,
    EndReason,
    IncomingCall,
    InfoReceived,
    Send,
    SipUas,
    TransferUpdate,
    UasConfig,
    parse_networks,
)

CALLER = Peer("udp", "127.0.0.1", 5070)
SDP = (
    b"v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


def invite(branch: str = "z9hG4bK1", *, call_id: str = "c1", cseq: int = 1, extra: str = "", body: bytes = SDP,
           method: str = "INVITE", to_tag: str = "") -> bytes:
    to = "<sip:agent@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    head = (
        f"{method} sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch};rport\r\n"
        f"From: <sip:+15551230000@127.0.0.1>;tag=ft\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:caller@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n{extra}"
    )
    if body:
        head += "Content-Type: application/sdp\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def sent(actions: list) -> list[Request | Response]:
    return [parse_message(a.data) for a in actions if isinstance(a, Send)]


def statuses(actions: list) -> list[int]:
    return [m.status for m in sent(actions) if isinstance(m, Response)]


def answered_call(uas: SipUas, now: float = 0.0, extra: str = "") -> tuple[str, Response]:
    actions = uas.receive(invite(extra=extra), CALLER, now)
    call = next(a for a in actions if isinstance(a, IncomingCall))
    ok = sent(uas.answer(call.call_id, build_answer(call.negotiated, "127.0.0.1", 20000, 1), now))[0]
    assert isinstance(ok, Response) and ok.status == 200
    return call.call_id, ok


def ack_for(ok: Response, branch: str = "z9hG4bKack") -> bytes:
    return invite(branch, method="ACK", body=b"", to_tag=ok.to_tag or "")


def uas(**kw: object) -> SipUas:
    return SipUas(UasConfig(ports={"udp": 5060, "tcp": 5060}, **kw))  # type: ignore[arg-type]


def test_options_gets_200_with_allow_and_unknown_method_405() -> None:
    u = uas()
    opts = sent(u.receive(invite(method="OPTIONS", body=b""), CALLER, 0.0))
    assert isinstance(opts[0], Response) and opts[0].status == 200
    assert opts[0].headers.get("Allow") == "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER, NOTIFY, INFO"
    assert opts[0].top_via.params["rport"] == "5070" and opts[0].top_via.params["received"] == "127.0.0.1"
    resp = sent(u.receive(invite(method="SUBSCRIBE", body=b""), CALLER, 0.0))[0]
    assert isinstance(resp, Response) and resp.status == 405 and resp.headers.get_all("Allow")


def test_invite_100_at_once_then_answer_and_ack() -> None:
    u = uas()
    actions = u.receive(invite(extra="Record-Route: <sip:10.0.0.9;lr>, <sip:10.0.0.8;lr>\r\n"), CALLER, 0.0)
    assert statuses(actions) == [100]
    call = next(a for a in actions if isinstance(a, IncomingCall))
    assert call.negotiated.te_payload_type == 101 and call.request_user == "agent"
    assert statuses(u.ring(call.call_id, 0.1)) == [180]
    ok = sent(u.answer(call.call_id, b"v=0\r\n", 0.2))[0]
    assert isinstance(ok, Response) and ok.to_tag and ok.headers.get("Content-Type") == "application/sdp"
    assert ok.headers.get_all("Record-Route") == ["<sip:10.0.0.9;lr>", "<sip:10.0.0.8;lr>"]
    events = u.receive(ack_for(ok), CALLER, 0.3)
    assert events == [Count("request", "ACK"), CallConfirmed(call.call_id)]
    assert u.get_timer() is not None  # the INVITE transaction lingers to absorb late copies


def test_retransmitted_invite_is_one_call_and_gets_the_last_response() -> None:
    u = uas()
    first = u.receive(invite(), CALLER, 0.0)
    call = next(a for a in first if isinstance(a, IncomingCall))
    again = u.receive(invite(), CALLER, 0.5)
    assert statuses(again) == [100] and not any(isinstance(a, IncomingCall) for a in again)
    u.answer(call.call_id, b"v=0\r\n", 1.0)
    assert statuses(u.receive(invite(), CALLER, 1.5)) == [200]
    # Same call on another branch (a proxy forked it): still not a second call.
    other = u.receive(invite("z9hG4bK2"), CALLER, 1.6)
    assert not any(isinstance(a, IncomingCall) for a in other)
    assert u.active_calls == 1


def test_2xx_retransmitted_t1_doubling_to_t2_then_bye_at_64_t1() -> None:
    u = uas()
    call_id, _ok = answered_call(u, 0.0)
    times = []
    now = 0.0
    ended = []
    while now < 40:
        deadline = u.get_timer()
        assert deadline is not None
        now = deadline
        out = u.handle_timer(now)
        times += [round(now, 2) for m in sent(out) if isinstance(m, Response) and m.status == 200]
        ended += [a for a in out if isinstance(a, CallEnded)]
        if ended:
            bye = [m for m in sent(out) if isinstance(m, Request)]
            assert bye and bye[0].method == "BYE"
            break
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1, 2T1, 4T1, then T2 = 4 s
    assert ended == [CallEnded(call_id, EndReason.ACK_TIMEOUT)] and 31.9 <= now <= 32.1


def test_cancel_before_answer_200_487_and_ack_absorbed() -> None:
    u = uas()
    call = next(a for a in u.receive(invite(), CALLER, 0.0) if isinstance(a, IncomingCall))
    u.ring(call.call_id, 0.0)
    out = u.receive(invite(method="CANCEL", body=b""), CALLER, 0.5)
    assert statuses(out) == [200, 487]
    assert CallEnded(call.call_id, EndReason.CANCELLED) in out
    r487 = next(m for m in sent(out) if isinstance(m, Response) and m.status == 487)
    ack = invite(method="ACK", body=b"", to_tag=r487.to_tag or "")  # same branch as the INVITE
    assert sent(u.receive(ack, CALLER, 0.6)) == []
    # No 487 retransmission after the ACK.
    for _ in range(20):
        deadline = u.get_timer()
        if deadline is None:
            break
        assert statuses(u.handle_timer(deadline)) == []
    assert u.answer(call.call_id, b"v=0\r\n", 1.0) == []
    assert statuses(u.receive(invite(method="CANCEL", body=b"", branch="z9hG4bKnone"), CALLER, 1.0)) == [481]


def test_caller_bye_ends_the_call_and_unknown_dialog_gets_481() -> None:
    u = uas()
    call_id, ok = answered_call(u)
    u.receive(ack_for(ok), CALLER, 0.1)
    bye = invite("z9hG4bKbye", method="BYE", body=b"", cseq=2, to_tag=ok.to_tag or "")
    out = u.receive(bye, CALLER, 1.0)
    assert statuses(out) == [200] and CallEnded(call_id, EndReason.REMOTE_BYE) in out
    assert statuses(u.receive(bye, CALLER, 1.5)) == [200]  # retransmission: same answer, no new event
    stray = invite("z9hG4bKx", method="BYE", body=b"", cseq=3, to_tag="nosuch")
    assert statuses(u.receive(stray, CALLER, 2.0)) == [481]


def test_our_bye_retransmitted_until_answered_and_follows_route_set() -> None:
    u = uas()
    call_id, ok = answered_call(u, extra="Record-Route: <sip:127.0.0.9:5099;lr>\r\n")
    u.receive(ack_for(ok), CALLER, 0.1)
    out = u.bye(call_id, 1.0)
    bye = next(a for a in out if isinstance(a, Send))
    req = parse_message(bye.data)
    assert isinstance(req, Request) and req.method == "BYE" and req.uri == "sip:caller@127.0.0.1:5070"
    assert bye.peer == Peer("udp", "127.0.0.9", 5099)
    assert req.headers.get_all("Route") == ["<sip:127.0.0.9:5099;lr>"]
    assert req.to_tag == "ft" and req.from_tag == ok.to_tag
    retrans = u.handle_timer(1.5)
    assert [m.method for m in sent(retrans) if isinstance(m, Request)] == ["BYE"]
    resp = Response(200, "OK", req.headers.copy())
    out = u.receive(resp.to_bytes(), Peer("udp", "127.0.0.9", 5099), 1.6)
    assert CallEnded(call_id, EndReason.LOCAL_BYE) in out
    assert u.active_calls == 0


def test_our_bye_waits_for_the_ack_of_our_2xx() -> None:
    """RFC 3261 section 15: no BYE on a dialog whose 2xx is not yet acknowledged; it goes out
    with the ACK, or when the 2xx's transaction times out without one."""
    u = uas()
    call_id, ok = answered_call(u)
    assert sent(u.bye(call_id, 0.2)) == []
    retrans = u.handle_timer(0.5)  # the 2xx is still retransmitted meanwhile
    assert statuses(retrans) == [200]
    out = u.receive(ack_for(ok), CALLER, 0.6)
    assert not any(isinstance(a, CallConfirmed) for a in out)
    assert [m.method for m in sent(out) if isinstance(m, Request)] == ["BYE"]
    assert u.bye(call_id, 0.7) == []  # once is enough
    v = uas()
    never_acked, _ = answered_call(v, 0.0)
    assert sent(v.bye(never_acked, 0.1)) == []
    now, ended = 0.1, []
    while not ended and now < 40:
        deadline = v.get_timer()
        assert deadline is not None
        now = deadline
        out = v.handle_timer(now)
        ended = [a for a in out if isinstance(a, CallEnded)]
    assert [m.method for m in sent(out) if isinstance(m, Request)] == ["BYE"] and 31.9 <= now <= 32.1


def test_refer_then_notify_sipfrag_reports_transfer() -> None:
    u = uas()
    call_id, ok = answered_call(u)
    u.receive(ack_for(ok), CALLER, 0.1)
    refer = next(m for m in sent(u.refer(call_id, "sip:sales@example.com", 1.0)) if isinstance(m, Request))
    assert refer.method == "REFER" and refer.headers.get("Refer-To") == "<sip:sales@example.com>"
    out = u.receive(Response(202, "Accepted", refer.headers.copy()).to_bytes(), CALLER, 1.1)
    assert TransferUpdate(call_id, 202, False) in out
    notify = invite("z9hG4bKn1", method="NOTIFY", cseq=2, to_tag=ok.to_tag or "", body=b"SIP/2.0 100 Trying\r\n",
                    extra="Event: refer\r\nSubscription-State: active\r\n")
    out = u.receive(notify.replace(b"application/sdp", b"message/sipfrag"), CALLER, 1.2)
    assert statuses(out) == [200] and TransferUpdate(call_id, 100, False) in out
    notify = invite("z9hG4bKn2", method="NOTIFY", cseq=3, to_tag=ok.to_tag or "", body=b"SIP/2.0 200 OK\r\n",
                    extra="Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n")
    out = u.receive(notify, CALLER, 1.3)
    assert TransferUpdate(call_id, 200, True) in out


def test_info_dtmf_relay_is_handed_over() -> None:
    u = uas()
    call_id, ok = answered_call(u)
    info = invite("z9hG4bKi", method="INFO", cseq=2, to_tag=ok.to_tag or "", body=b"Signal=5\r\nDuration=160\r\n")
    out = u.receive(info.replace(b"application/sdp", b"application/dtmf-relay"), CALLER, 0.5)
    assert statuses(out) == [200]
    assert InfoReceived(call_id, "application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n") in out


def test_source_allowlist_403_and_rate_limit() -> None:
    u = uas(allowed_sources=parse_networks(["10.0.0.0/8"]), rate_per_s=1.0, rate_burst=3.0)
    out = u.receive(invite(), CALLER, 0.0)
    assert statuses(out) == [403] and not any(isinstance(a, IncomingCall) for a in out)
    trunk = Peer("udp", "10.1.2.3", 5070)
    results = [statuses(u.receive(invite(f"z9hG4bKo{i}", method="OPTIONS", body=b""), trunk, 0.0)) for i in range(5)]
    assert results == [[200], [200], [200], [], []]
    assert statuses(u.receive(invite("z9hG4bKo9", method="OPTIONS", body=b""), trunk, 1.1)) == [200]


def test_digest_401_then_authorised_invite() -> None:
    u = uas(authenticator=DigestAuthenticator("trunk", "pw"))
    out = u.receive(invite(), CALLER, 0.0)
    assert statuses(out) == [100, 401] and not any(isinstance(a, IncomingCall) for a in out)
    challenge = next(m for m in sent(out) if isinstance(m, Response) and m.status == 401)
    www = challenge.headers.get_all("WWW-Authenticate")
    assert "SHA-256" in www[0] and "MD5" in www[1]
    r401 = challenge
    assert sent(u.receive(invite(method="ACK", body=b"", to_tag=r401.to_tag or ""), CALLER, 0.1)) == []
    nonce = www[0].split('nonce="')[1].split('"')[0]
    resp = digest_response("SHA-256", "trunk", "telephony-agent", "pw", "INVITE", "sip:agent@127.0.0.1:5060", nonce)
    auth = (f'Authorization: Digest username="trunk", realm="telephony-agent", nonce="{nonce}", '
            f'uri="sip:agent@127.0.0.1:5060", response="{resp}", algorithm=SHA-256\r\n')
    out = u.receive(invite("z9hG4bK2", cseq=2, extra=auth), CALLER, 0.2)
    assert any(isinstance(a, IncomingCall) for a in out)
    bad = auth.replace(resp, "0" * 64)
    out = u.receive(invite("z9hG4bK3", call_id="c2", cseq=2, extra=bad), CALLER, 0.3)
    assert statuses(out) == [100, 401] and Count("refused", "auth_failed") in out


def test_no_codec_488_and_no_offer_488() -> None:
    u = uas(codecs=("PCMA",))
    out = u.receive(invite(), CALLER, 0.0)
    assert statuses(out) == [100, 488]
    assert statuses(uas().receive(invite(body=b""), CALLER, 0.0)) == [100, 488]


def test_garbage_is_counted_never_raised() -> None:
    u = uas()
    for data in (b"", b"\x00" * 100, b"INVITE\r\n\r\n", invite().replace(b"CSeq: 1", b"CSeq: 99999999999"),
                 invite().replace(b"Via: SIP/2.0/UDP", b"Via: SIP/9")):
        out = u.receive(data, CALLER, 0.0)
        assert all(isinstance(a, (Count, Send)) for a in out)
        assert any(isinstance(a, Count) and a.family == "bad_input" for a in out)
    assert u.active_calls == 0


def test_tcp_answers_on_the_connection_and_our_bye_falls_back_to_the_contact() -> None:
    u = uas()
    conn = Peer("tcp", "127.0.0.1", 40123)  # the caller's ephemeral source port
    data = invite().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    actions = u.receive(data, conn, 0.0)
    assert all(a.peer == conn for a in actions if isinstance(a, Send))
    call = next(a for a in actions if isinstance(a, IncomingCall))
    ok = sent(u.answer(call.call_id, b"v=0\r\n", 0.1))[0]
    assert isinstance(ok, Response) and "transport=tcp" in (ok.headers.get("Contact") or "")
    u.receive(ack_for(ok).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), conn, 0.2)
    bye = next(a for a in u.bye(call.call_id, 1.0) if isinstance(a, Send))
    assert bye.peer == conn and bye.fallback == Peer("tcp", "127.0.0.1", 5070)
    assert [a for a in u.handle_timer(1.5) if isinstance(a, Send)] == []  # no retransmission on TCP


def test_refer_refused_or_unanswered_is_a_final_failure() -> None:
    u = uas()
    call_id, ok = answered_call(u)
    u.receive(ack_for(ok), CALLER, 0.1)
    refer = next(m for m in sent(u.refer(call_id, "tel:+15551230000", 1.0)) if isinstance(m, Request))
    assert refer.headers.get("Refer-To") == "<tel:+15551230000>"
    out = u.receive(Response(603, "Decline", refer.headers.copy()).to_bytes(), CALLER, 1.1)
    assert TransferUpdate(call_id, 603, True) in out
    u.refer(call_id, "sip:sales@example.com", 2.0)  # never answered: 408 after 64*T1
    updates: list[TransferUpdate] = []
    now = 2.0
    while not updates and now < 60:
        deadline = u.get_timer()
        assert deadline is not None
        now = deadline
        updates = [a for a in u.handle_timer(now) if isinstance(a, TransferUpdate)]
    assert updates == [TransferUpdate(call_id, 408, True)] and 33.0 <= now <= 34.1
    assert u.call_state(call_id) is not None  # the call goes on: the bridge decides


def test_mutation_fuzz_never_raises_and_leaves_the_live_call_alone() -> None:
    """Thousands of mutated requests and responses (parseable or not) at the core while a call
    is up: `receive` never raises, and the call's dialog is untouched."""
    import random

    u = uas(rate_per_s=1e6, rate_burst=1e6)
    call_id, ok = answered_call(u)
    u.receive(ack_for(ok), CALLER, 0.1)
    tag = ok.to_tag or ""
    templates = [
        invite("z9hG4bKf1", call_id="fz"),
        invite("z9hG4bKf2", method="BYE", body=b"", to_tag="x", call_id="fz"),
        invite("z9hG4bKf3", method="CANCEL", body=b"", call_id="fz"),
        invite("z9hG4bKf4", method="ACK", body=b"", to_tag="x", call_id="fz"),
        invite("z9hG4bKf5", method="NOTIFY", body=b"SIP/2.0 200 OK\r\n", to_tag="x", call_id="fz",
               extra="Event: refer\r\n"),
        invite("z9hG4bKf6", method="OPTIONS", body=b""),
        Response(200, "OK", parse_message(invite("z9hG4bKf7", method="BYE", body=b"")).headers.copy()).to_bytes(),
    ]
    tokens = [b"\r\n", b":", b";", b",", b"<", b">", b"\"", b" ", b"\t", b"=", b"@", b"[", b"]", b"z9hG4bK",
              b"SIP/2.0", b"INVITE", b"tag=", b"rport", b"Content-Length: 99999\r\n", b"\xff\xfe", b"0", b"-1"]
    rng = random.Random(20261201)
    now = 1.0
    for i in range(6000):
        data = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(4)
            if op == 0 and pos < len(data):
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 30)]
            elif op == 2:
                data[pos:pos] = rng.choice(tokens)
            else:
                data[pos:pos] = data[rng.randrange(len(data) or 1) :][: rng.randint(1, 40)]
        now += 0.001
        source = Peer(rng.choice(["udp", "tcp"]), "127.0.0.1", rng.choice([5070, 5071, 40000]))
        u.receive(bytes(data), source, now)
        if i % 500 == 0:
            u.handle_timer(now)
    assert u.call_state(call_id) is CallState.CONFIRMED
    bye = invite("z9hG4bKend", method="BYE", body=b"", cseq=2, to_tag=tag)
    assert CallEnded(call_id, EndReason.REMOTE_BYE) in u.receive(bye, CALLER, now + 0.1)
