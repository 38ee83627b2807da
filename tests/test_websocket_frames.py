"""`FrameSplitter` without sockets: frames built by hand (RFC 6455 5.2), fed whole, byte by byte
and cut at random places. What it decodes comes out whole and right; everything else comes out
as exactly the bytes it arrived as, in order, so aiohttp's parser sees an unbroken stream of
whole frames; and it never holds more than one frame within its limit."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hand_frames import frame

from telephony_agent.websocket_frames import BINARY, IN_PLACE_MAX, NEED_DATA, RAW, TEXT, FrameSplitter


def cut(splitter: FrameSplitter, data: bytes, sizes: list[int] | None = None) -> list[tuple[int, object, bytes]]:
    """Feed `data` in reads of `sizes` (all of it at once by default); every (kind, value, raw)."""
    out: list[tuple[int, object, bytes]] = []
    reads = [data] if sizes is None else []
    if sizes is not None:
        at = 0
        for size in sizes:
            reads.append(data[at:at + size])
            at += size
        if at < len(data):
            reads.append(data[at:])
    for read in reads:
        splitter.feed(read)
        while (kind := splitter.next()) != NEED_DATA:
            value: object = splitter.text if kind == TEXT else splitter.data if kind == BINARY else None
            out.append((kind, value, splitter.raw()))
    return out


def server(max_size: int = 1 << 20) -> FrameSplitter:
    """A server's: the client masks its frames."""
    return FrameSplitter(masked=True, binary=False, max_size=max_size)


MEDIA = ('{"event":"media","sequenceNumber":"7","media":{"track":"inbound","chunk":"6","timestamp":"120",'
         '"payload":"' + "/" * 216 + '"},"streamSid":"MZ' + "0" * 32 + '"}')


def test_a_media_frame_cut_anywhere_comes_out_once_whole() -> None:
    data = frame(MEDIA.encode())
    for at in range(len(data) + 1):
        out = cut(server(), data, [at])
        assert out == [(TEXT, MEDIA, data)], at
    out = cut(server(), data + data, [1] * (2 * len(data)))  # a byte a read
    assert out == [(TEXT, MEDIA, data)] * 2


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_every_length_form(n: int) -> None:
    text = "é" * (n // 2) + "a" * (n % 2)
    for mask in (True, False):
        data = frame(text.encode(), mask=mask)
        splitter = FrameSplitter(masked=mask, binary=False, max_size=1 << 20)
        assert cut(splitter, data + data, [len(data) - 1, 5]) == [(TEXT, text, data)] * 2


def test_control_frames_and_what_is_not_taken_pass_as_they_came_in_order() -> None:
    frames = [
        (frame(b"a"), TEXT),
        (frame(b"ping!", opcode=9), RAW),  # ping: aiohttp answers it
        (frame(b"\x03\xe8bye", opcode=8), RAW),  # close
        (frame(b"pong", opcode=10), RAW),
        (frame(b"\x00\x01", opcode=2), RAW),  # binary, not asked for
        (frame(b"zz", rsv=0x40), RAW),  # compressed (RSV1): aiohttp inflates it
        (frame(b"\xff\xfe"), RAW),  # invalid UTF-8: aiohttp closes with 1007
        (frame(b"plain", mask=False), RAW),  # unmasked from a client: aiohttp's to judge
        (frame(b"x", opcode=3), RAW),  # a reserved opcode
        (frame(b"b"), TEXT),
    ]
    data = b"".join(f for f, _ in frames)
    for sizes in (None, [1] * len(data), [7, 3, 50, 2]):
        out = cut(server(), data, sizes)
        assert b"".join(raw for _, _, raw in out) == data
        assert [(kind, value) for kind, value, _ in out if kind != RAW] == [(TEXT, "a"), (TEXT, "b")]
        assert {raw for kind, _, raw in out if kind == TEXT} == {frames[0][0], frames[-1][0]}


def test_binary_frames_when_asked() -> None:
    data = frame(b"\x00\xffdata", opcode=2, mask=False)
    splitter = FrameSplitter(masked=False, binary=True, max_size=0)
    assert cut(splitter, data) == [(BINARY, b"\x00\xffdata", data)]


def test_a_fragmented_message_goes_to_aiohttp_whole_with_what_comes_between() -> None:
    first = frame(b"hel", fin=False)
    ping = frame(b"p", opcode=9)
    middle = frame(b"l", opcode=0, fin=False)
    last = frame(b"o", opcode=0)
    after = frame(b"next")
    data = first + ping + middle + last + after
    for sizes in (None, [1] * len(data)):
        out = cut(server(), data, sizes)
        assert b"".join(raw for _, _, raw in out) == data
        assert [(k, v) for k, v, _ in out if k != RAW] == [(TEXT, "next")]
        assert out[-1][2] == after


def test_a_frame_over_the_limit_streams_through_and_is_not_held() -> None:
    big = frame(b"x" * 5000)
    small = frame(b"ok")
    splitter = server(max_size=1000)
    out: list[tuple[int, object, bytes]] = []
    for at in range(0, len(big), 300):
        out += cut(splitter, big[at:at + 300])
        assert splitter.take_rest() == b""  # nothing held: each read went on at once
    out += cut(splitter, small)
    assert all(kind == RAW for kind, _, _ in out[:-1])
    assert b"".join(raw for _, _, raw in out[:-1]) == big
    assert out[-1] == (TEXT, "ok", small)


def test_an_absurd_length_streams_to_aiohttp_which_refuses_it() -> None:
    head = struct.pack("!BBQ", 0x81, 0x80 | 127, 1 << 62) + b"mask"
    out = cut(server(), head + b"abc")
    assert [kind for kind, _, _ in out] == [RAW] and out[0][2] == head + b"abc"


def test_the_in_place_limit_caps_what_is_held_whatever_the_socket_allows() -> None:
    splitter = FrameSplitter(masked=True, binary=False, max_size=0)  # aiohttp's 0: no limit
    data = frame(b"y" * (IN_PLACE_MAX + 1))
    out = cut(splitter, data, [IN_PLACE_MAX // 2])
    assert out[0][0] == RAW and len(out[0][2]) == IN_PLACE_MAX // 2


def test_take_rest_returns_a_partial_frame_for_aiohttp() -> None:
    data = frame(MEDIA.encode())
    splitter = server()
    assert cut(splitter, data[:100]) == []
    assert splitter.take_rest() == data[:100]
    assert cut(splitter, data) == [(TEXT, MEDIA, data)]


def test_random_streams_split_anywhere_lose_and_reorder_nothing() -> None:
    rng = random.Random(20261205)
    for _ in range(200):
        frames: list[bytes] = []
        texts: list[str] = []
        for _ in range(rng.randint(1, 12)):
            n = rng.choice([0, 5, 125, 126, 300, 2000, 70000])
            kind = rng.random()
            if kind < 0.6:
                text = "".join(rng.choice("aé€😀{}\"") for _ in range(n // 3))
                frames.append(frame(text.encode()))
                texts.append(text)
            elif kind < 0.75:
                frames.append(frame(os.urandom(min(n, 125)), opcode=9))
            elif kind < 0.9:
                frames.append(frame(b"x" * n, fin=False) + frame(b"y", opcode=9) + frame(b"z", opcode=0))
            else:
                frames.append(frame(b"w" * (n + 2200)))  # over the limit below
        data = b"".join(frames)
        sizes = [rng.randint(1, 3000) for _ in range(len(data) // 500 + 1)]
        out = cut(server(max_size=2100), data, sizes)
        assert b"".join(raw for _, _, raw in out) == data
        assert [v for k, v, _ in out if k == TEXT] == [t for t in texts if len(t.encode()) <= 2100]


def test_a_whole_text_frame_inside_a_fragmented_message_is_aiohttps_to_refuse() -> None:
    """RFC 6455 5.4 allows only control frames between fragments: the one in between is not
    handed on here, so aiohttp's parser sees it where it came and fails the connection."""
    data = frame(b"he", fin=False) + frame(b"intruder") + frame(b"llo", opcode=0)
    out = cut(server(), data)
    assert [kind for kind, _, _ in out] == [RAW, RAW, RAW]
