"""SIP transactions (RFC 3261 §17, RFC 6026), sans-I/O: state, retransmissions, timeouts.

Each transaction holds the bytes it last sent and one deadline; the UAS core asks every
transaction for `deadline` and calls `handle_timer(now)` when it is due. Over TCP nothing is
retransmitted (the transport is reliable) but the same timeouts apply.

- `InviteServerTransaction`: provisional responses, then either a non-2xx final (retransmitted
  until its ACK, which this transaction absorbs) or a 2xx (retransmitted with T1 doubling to T2
  until the dialog's ACK; after 64*T1 without one the call is given up). A retransmitted INVITE
  gets the last response again.
- `NonInviteServerTransaction`: a retransmitted request gets the last response again.
- `NonInviteClientTransaction`: our BYE/REFER, retransmitted until a final response or 64*T1.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "T1",
    "T2",
    "T4",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "Peer",
    "TxState",
]

T1 = 0.5  # RTT estimate (s)
T2 = 4.0  # longest retransmit interval for non-INVITE requests and INVITE 2xx (s)
T4 = 5.0  # longest time a message stays in the network (s)


@dataclass(frozen=True, slots=True)
class Peer:
    """Where to send: a transport (`udp`/`tcp`) and an address (host, port)."""

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


class TxState(str, enum.Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"  # non-2xx final sent (server) / final received (client)
    CONFIRMED = "confirmed"  # ACK for the non-2xx received
    ACCEPTED = "accepted"  # 2xx sent, waiting for the dialog's ACK
    TERMINATED = "terminated"


class InviteServerTransaction:
    """One INVITE we received. States: PROCEEDING -> COMPLETED -> CONFIRMED, or -> ACCEPTED."""

    def __init__(self, peer: Peer, now: float, *, t1: float = T1) -> None:
        self.peer = peer
        self.state = TxState.PROCEEDING
        self.last_response: bytes | None = None
        self.final_status: int | None = None
        self.deadline: float | None = None
        self._t1 = t1
        self._interval = t1
        self._give_up: float = 0.0
        self.created = now

    def respond(self, status: int, data: bytes, now: float) -> bytes:
        """Record and return `data` (a response with `status`) for sending."""
        if self.state is not TxState.PROCEEDING:
            raise RuntimeError(f"INVITE transaction already {self.state.value}")
        self.last_response = data
        if status < 200:
            return data
        self.final_status = status
        self._interval = self._t1
        self._give_up = now + 64 * self._t1
        self.state = TxState.ACCEPTED if status < 300 else TxState.COMPLETED
        # Retransmit over UDP (timer G / 2xx); over TCP only wait for the ACK (timer H / L).
        self.deadline = self._give_up if self.peer.reliable else now + self._interval
        return data

    def on_retransmission(self) -> bytes | None:
        """A retransmitted INVITE: the last response again (none while the TU decides)."""
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED, TxState.ACCEPTED):
            return self.last_response
        return None

    def on_ack(self, now: float) -> bool:
        """ACK in this transaction (for a non-2xx final). True: absorbed here."""
        if self.state is TxState.COMPLETED:
            self.state = TxState.CONFIRMED
            self.deadline = now if self.peer.reliable else now + T4  # timer I: absorb ACK copies
            return True
        return self.state is TxState.CONFIRMED

    def on_2xx_ack(self, now: float) -> None:
        """The dialog's ACK for our 2xx arrived: stop retransmitting."""
        if self.state is TxState.ACCEPTED:
            # Linger (RFC 6026 timer L) so late copies of the INVITE are absorbed, not new calls.
            self.state = TxState.CONFIRMED
            self.deadline = now + 64 * self._t1

    def handle_timer(self, now: float) -> tuple[bytes | None, bool]:
        """(response to retransmit or None, True when the 2xx was never ACKed)."""
        if self.deadline is None or now < self.deadline:
            return None, False
        if self.state in (TxState.COMPLETED, TxState.ACCEPTED):
            if now >= self._give_up:
                timed_out_2xx = self.state is TxState.ACCEPTED
                self.state = TxState.TERMINATED
                self.deadline = None
                return None, timed_out_2xx
            self._interval = min(self._interval * 2, T2)
            self.deadline = min(now + self._interval, self._give_up)
            return self.last_response, False
        if self.state is TxState.CONFIRMED:
            self.state = TxState.TERMINATED
            self.deadline = None
        return None, False

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED


class NonInviteServerTransaction:
    """A BYE/OPTIONS/CANCEL/INFO/NOTIFY/... we received. TRYING -> COMPLETED -> TERMINATED."""

    def __init__(self, peer: Peer, now: float, *, t1: float = T1) -> None:
        self.peer = peer
        self.state = TxState.TRYING
        self.last_response: bytes | None = None
        self.deadline: float | None = now + 64 * t1  # a TU that never answers does not leak us
        self._t1 = t1

    def respond(self, status: int, data: bytes, now: float) -> bytes:
        self.last_response = data
        if status >= 200:
            self.state = TxState.COMPLETED
            self.deadline = now if self.peer.reliable else now + 64 * self._t1  # timer J
        else:
            self.state = TxState.PROCEEDING
        return data

    def on_retransmission(self) -> bytes | None:
        return self.last_response

    def handle_timer(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            self.state = TxState.TERMINATED
            self.deadline = None

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED


class NonInviteClientTransaction:
    """A request we sent (BYE, REFER). Retransmitted T1 doubling to T2 over UDP; 64*T1 timeout."""

    def __init__(self, peer: Peer, data: bytes, method: str, now: float, *, t1: float = T1) -> None:
        self.peer = peer
        self.data = data
        self.method = method
        self.state = TxState.TRYING
        self.final_status: int | None = None
        self._interval = t1
        self._give_up = now + 64 * t1  # timer F
        self.deadline: float | None = self._give_up if peer.reliable else now + t1

    def on_response(self, status: int, now: float) -> bool:
        """True when this is the final response (the first one)."""
        if self.state in (TxState.COMPLETED, TxState.TERMINATED):
            return False
        if status < 200:
            self.state = TxState.PROCEEDING
            return False
        self.final_status = status
        self.state = TxState.COMPLETED
        self.deadline = now if self.peer.reliable else now + T4  # timer K: absorb response copies
        return True

    def handle_timer(self, now: float) -> tuple[bytes | None, bool]:
        """(request to retransmit or None, True when it timed out without a final response)."""
        if self.deadline is None or now < self.deadline:
            return None, False
        if self.state is TxState.COMPLETED:
            self.state = TxState.TERMINATED
            self.deadline = None
            return None, False
        if now >= self._give_up:
            self.state = TxState.TERMINATED
            self.deadline = None
            self.final_status = 408
            return None, True
        interval = T2 if self.state is TxState.PROCEEDING else min(self._interval * 2, T2)
        self._interval = interval
        self.deadline = min(now + interval, self._give_up)
        return self.data, False

    @property
    def terminated(self) -> bool:
        return self.state is TxState.TERMINATED
