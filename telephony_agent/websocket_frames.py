"""A WebSocket byte stream cut into frames (RFC 6455 5.2), sans-I/O: bytes in, frames out.

`websocket_read.InPlaceReader` feeds it every read of an upgraded connection. The frames a call
sends most (a Twilio media message or mark echo, a provider's audio delta: final, unfragmented,
uncompressed text, or binary where asked, within the size limit) come out whole and decoded, for
the reader to hand on where they were read. Everything else (control frames, fragments,
compressed or oversized frames, invalid UTF-8, a mask bit the wrong way round) comes out as the
raw bytes it arrived as, at frame boundaries, for aiohttp's own parser, which answers pings,
closes, reassembles and refuses exactly as it always has. So aiohttp keeps every protocol
decision, and the common frame costs a header read, an unmask and a decode instead of aiohttp's
message object, its queue and the queue's coroutine.

The cut is exact: the raw bytes of every frame not decoded here reach aiohttp in order, and
nothing is buffered beyond one frame no larger than the in-place limit (a larger one streams
through as it arrives). This module is compiled (`native.MODULES`).
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["BINARY", "NEED_DATA", "RAW", "TEXT", "FrameSplitter", "available"]

NEED_DATA: Final = 0
TEXT: Final = 1
BINARY: Final = 2
RAW: Final = 3

IN_PLACE_MAX: Final = 1 << 20
"""The largest frame decoded here (and so the most buffered); larger ones stream to aiohttp."""

_FIN_TEXT: Final = 0x81
_FIN_BINARY: Final = 0x82
_OPCODE: Final = 0x0F
_FIN: Final = 0x80
_MASK: Final = 0x80
_LENGTH: Final = 0x7F
_EMPTY: Final = b""


def _find_mask() -> Any:
    """aiohttp's unmasking, in C where it was built (its own reader uses it); None without it."""
    try:
        from aiohttp._websocket.helpers import websocket_mask
    except ImportError:  # pragma: no cover - an aiohttp without it: the reader splits nothing
        return None
    return websocket_mask


_mask: Final[Any] = _find_mask()


def available() -> bool:
    """Whether this aiohttp has the unmasking `FrameSplitter` needs."""
    return _mask is not None


class FrameSplitter:
    """One direction of one connection. `feed` each read, then call `next` until NEED_DATA:
    TEXT (`text`) and BINARY (`data`, only with `binary`) are whole frames decoded here, whose
    bytes `raw()` still gives for a caller that does not take them; RAW (`raw()`) is bytes for
    aiohttp's parser. `masked`: the peer masks its frames (it is a client; a server reads them)."""

    def __init__(self, *, masked: bool, binary: bool, max_size: int) -> None:
        self._masked = masked
        self._binary = binary
        self._limit = min(max_size, IN_PLACE_MAX) if max_size > 0 else IN_PLACE_MAX
        self._buf = _EMPTY
        self._pos = 0
        self._start = 0  # the current frame's first byte in `_buf`
        self._end = 0  # one past its last (or past the RAW chunk)
        self._passing = 0  # bytes of a frame streaming to aiohttp still to come
        self._fragmented = False  # aiohttp holds the start of a fragmented message
        self.text = ""
        self.data = _EMPTY

    def feed(self, data: bytes) -> None:
        """The next bytes read from the connection."""
        if self._pos < len(self._buf):
            self._buf = self._buf[self._pos:] + data
        else:
            self._buf = data
        self._pos = 0

    def take_rest(self) -> bytes:
        """What was fed and not yet cut (a partial frame), taken out: for aiohttp's parser when
        this splitter is retired."""
        rest = self._buf[self._pos:]
        self._buf = _EMPTY
        self._pos = 0
        return rest

    def raw(self) -> bytes:
        """The bytes of the frame (or RAW chunk) `next` returned last."""
        buf = self._buf
        if self._start == 0 and self._end == len(buf):
            return buf
        return buf[self._start:self._end]

    def next(self) -> int:
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if self._passing:
            take = min(self._passing, end - pos)
            if take == 0:
                return NEED_DATA
            self._passing -= take
            self._start = pos
            self._end = self._pos = pos + take
            return RAW
        if end - pos < 2:
            return NEED_DATA
        b0 = buf[pos]
        b1 = buf[pos + 1]
        n = b1 & _LENGTH
        head = pos + 2
        if n == 126:
            if end - head < 2:
                return NEED_DATA
            n = (buf[head] << 8) | buf[head + 1]
            head += 2
        elif n == 127:
            if end - head < 8:
                return NEED_DATA
            n = int.from_bytes(buf[head:head + 8], "big")
            head += 8
        masked = (b1 & _MASK) != 0
        if masked:
            head += 4
            if end < head:
                return NEED_DATA
        if (
            masked != self._masked
            or n > self._limit
            or self._fragmented
            or (b0 != _FIN_TEXT and (b0 != _FIN_BINARY or not self._binary))
        ):
            return self._pass(b0, pos, head - pos + n)
        stop = head + n
        if end < stop:
            return NEED_DATA
        self._start = pos
        self._end = self._pos = stop
        payload: bytes | bytearray = buf[head:stop]
        if masked:  # unmasked in a copy, which a text frame decodes as it is
            payload = bytearray(payload)
            _mask(buf[head - 4:head], payload)
        if b0 == _FIN_TEXT:
            try:
                self.text = payload.decode()
            except UnicodeDecodeError:  # aiohttp's parser closes the socket, as its rules say
                return RAW
            return TEXT
        self.data = bytes(payload)  # the same object when it was not masked
        return BINARY

    def _pass(self, b0: int, pos: int, size: int) -> int:
        """The frame at `pos` (`size` bytes with its header) goes to aiohttp as it arrives."""
        opcode = b0 & _OPCODE
        if opcode < 8:  # a data frame: it starts, continues or ends a fragmented message
            self._fragmented = (b0 & _FIN) == 0
        self._passing = size
        return self.next()
