"""Just enough RFC 6455 for the load generators: text frames, ping/pong, close.

Client frames are masked with an all-zero key (valid per RFC 6455 and a no-op XOR), so the
callers never touch payload bytes; the fake provider unmasks aiohttp's frames with aiohttp's
own C helper. No extensions are negotiated (no permessage-deflate)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any

try:
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:  # pragma: no cover - older aiohttp
    _mask = None  # type: ignore[assignment]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
_H2 = struct.Struct("!BBH")
_H8 = struct.Struct("!BBQ")


ZERO_KEY = b"\0\0\0\0"


def frame(payload: bytes, opcode: int = OP_TEXT, *, masked: bool = False, key: bytes = ZERO_KEY) -> bytes:
    """One final frame. `masked`: a client's, masked with `key` (the all-zero default leaves the
    payload as it is; a real client's key is random, RFC 6455 5.3)."""
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = _H2.pack(b0, m | 126, n)
    else:
        head = _H8.pack(b0, m | 127, n)
    if masked:
        return head + key + (payload if key == ZERO_KEY else bytes(_xor(key, bytearray(payload))))
    return head + payload


def _xor(key: bytes, data: bytearray) -> bytearray:
    """`data` masked (or unmasked) with `key`, in place where aiohttp's C helper is there."""
    if _mask is not None:
        _mask(key, data)
        return data
    n = len(data)  # pragma: no cover - older aiohttp
    k = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return bytearray((int.from_bytes(data, "little") ^ k).to_bytes(n, "little"))


def parse(buf: bytearray) -> list[tuple[int, bytes]]:
    """Whole frames at the front of `buf` (consumed), as (opcode, payload)."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        ln = b1 & 0x7F
        p = pos + 2
        if ln == 126:
            if n - p < 2:
                break
            ln = (buf[p] << 8) | buf[p + 1]
            p += 2
        elif ln == 127:
            if n - p < 8:
                break
            ln = int.from_bytes(buf[p : p + 8], "big")
            p += 8
        key = None
        if b1 & 0x80:
            if n - p < 4:
                break
            key = bytes(buf[p : p + 4])
            p += 4
        if n - p < ln:
            break
        payload = buf[p : p + ln]
        if key is not None and key != ZERO_KEY:
            payload = _xor(key, payload)
        out.append((b0 & 0x0F, bytes(payload)))
        pos = p + ln
    if pos:
        del buf[:pos]
    return out


def dispatch(buf: bytearray, transport: Any, on_text: Callable[[bytes], None], *, masked: bool) -> bool:
    """Handle every whole frame in `buf`: text to `on_text`, ping answered, close echoed.
    Returns False once the socket is closed. `masked`: we are the client side."""
    for op, payload in parse(buf):
        if op == OP_TEXT:
            on_text(payload)
        elif op == OP_PING:
            transport.write(frame(payload, OP_PONG, masked=masked))
        elif op == OP_CLOSE:
            transport.write(frame(payload[:2], OP_CLOSE, masked=masked))
            transport.close()
            return False
    return True


def take_head(buf: bytearray) -> bytes | None:
    """The HTTP head at the front of `buf` (consumed with its blank line), or None until all of
    it has arrived."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


def switched(head: bytes) -> bool:
    """A client's upgrade request was answered with 101 Switching Protocols."""
    return b" 101 " in head.split(b"\r\n", 1)[0]


def client_handshake(host: str, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    req = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return req, key


def accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def server_handshake_response(request: bytes) -> bytes | None:
    """The 101 answer to a raw HTTP upgrade request, or None if it is not one."""
    key = None
    for line in request.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    if key is None:
        return None
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_value(key) + b"\r\n\r\n"
    )
