"""WebSocket frames built by hand (RFC 6455 5.2), as a peer writes them, for tests that feed a
reader bytes no library would send: cut anywhere, fragmented, reserved bits, bad UTF-8."""

from __future__ import annotations

import os
import struct


def frame(payload: bytes, opcode: int = 1, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """A frame as a peer writes it: a client masks (`mask`), a server does not."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
