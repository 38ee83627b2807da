"""Free loopback ports for the test and benchmark peers: each test, and each benchmark step, its
own, so runs side by side (two Pythons, pytest-xdist workers) never meet on a port.

A port found free may be taken before its user binds it; the peers that bind several ports from
one (RTP and RTCP, sipp's media ports, baresip's SIP and SIP-TLS) get all of them checked, since
a clash on the second port fails a run as surely as one on the first.
"""

from __future__ import annotations

import contextlib
import random
import socket

__all__ = ["SIPP_MEDIA_PORTS", "free_port_range", "free_sip_port_pair", "free_tcp_port", "free_udp_port"]

SIPP_MEDIA_PORTS = 4
"""sipp's `-mp` port and the three above it: audio RTP and RTCP, then video RTP and RTCP, all bound
(a clash on the video port, `-mp` + 2, failed a run: "Unable to bind video RTP socket")."""


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port(*, even: bool = False, span: int = 1) -> int:
    """A UDP port on 127.0.0.1 free now, and the `span - 1` above it (RTP and RTCP: 2; sipp's
    media ports: `SIPP_MEDIA_PORTS`); `even` for RTP, whose port is even by convention."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (even and port % 2) or port > 65000:
            continue
        try:
            with contextlib.ExitStack() as held:
                for above in range(port + 1, port + span):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)).bind(("127.0.0.1", above))
        except OSError:
            continue
        return port
    raise RuntimeError("no free UDP port")


def free_sip_port_pair() -> int:
    """A port P with P and P+1 free for both UDP and TCP (baresip listens for SIP on P over UDP
    and TCP, and for SIP-TLS on P+1): a port that is free for UDP only clashes often enough with
    another suite's TCP listener to fail a run."""
    for _ in range(200):
        port = free_udp_port(span=2)
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return port
    raise RuntimeError("no free SIP port pair")


def free_port_range(n: int = 8) -> tuple[int, int]:
    """An even-aligned range of `n` UDP ports on 127.0.0.1 that are free now (a media port range
    for a server under test)."""
    for _ in range(200):
        first = random.randrange(30000, 60000, 2)
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first, first + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")
