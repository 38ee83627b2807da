"""G.711 mu-law and A-law through `audioop`, the one place the project imports it.

`audioop` is deprecated in 3.11-3.12 and gone from the standard library in 3.13, where the
`audioop-lts` distribution provides the same C code under the same import name. Its G.711 code is
bit-exact with the reference tables (see docs/protocols.md, "G.711"), and it is far faster than numpy for
160-byte frames, so we keep it rather than reimplementing the tables.
"""

from __future__ import annotations

import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["alaw_to_pcm16", "pcm16_to_alaw", "pcm16_to_ulaw", "ulaw_to_pcm16"]

_BIG_ENDIAN = sys.byteorder == "big"


def _check_pcm16(data: bytes) -> None:
    if len(data) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(data)}")


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode mu-law (one byte per sample) to PCM16 little-endian; output is twice as long."""
    out = audioop.ulaw2lin(data, 2)
    return audioop.byteswap(out, 2) if _BIG_ENDIAN else out


def pcm16_to_ulaw(data: bytes) -> bytes:
    """Encode PCM16 little-endian to mu-law, bit-exact with audioop.lin2ulaw (docs/protocols.md, "G.711")."""
    _check_pcm16(data)
    return audioop.lin2ulaw(audioop.byteswap(data, 2) if _BIG_ENDIAN else data, 2)


def alaw_to_pcm16(data: bytes) -> bytes:
    """Decode A-law (one byte per sample) to PCM16 little-endian."""
    out = audioop.alaw2lin(data, 2)
    return audioop.byteswap(out, 2) if _BIG_ENDIAN else out


def pcm16_to_alaw(data: bytes) -> bytes:
    """Encode PCM16 little-endian to A-law."""
    _check_pcm16(data)
    return audioop.lin2alaw(audioop.byteswap(data, 2) if _BIG_ENDIAN else data, 2)
