"""Digest authentication of INVITEs (RFC 3261 §22, RFC 8760 SHA-256, RFC 2617 MD5), sans-I/O.

Nonces are stateless: `<time>.<hmac(time)>` under a per-process secret, so nothing grows per
challenge. A nonce older than `nonce_ttl_s` is stale: the caller gets a fresh challenge with
`stale=true` and retries without asking its user again. We challenge with SHA-256 first and
MD5 second (RFC 8760 §2.4: the client uses the first it supports); the order is configurable
because some older clients (sipp 3.6 among them) read only the first challenge.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from telephony_agent.telephony.sip.message import split_list

__all__ = ["AuthResult", "DigestAuthenticator", "digest_response", "parse_authorization"]

_ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class AuthResult(str, enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials: challenge
    STALE = "stale"  # right password, expired nonce: challenge with stale=true
    FAILED = "failed"  # wrong user/password/realm/nonce: challenge again (and count it)


def _h(algorithm: str, text: str) -> str:
    return _ALGORITHMS[algorithm](text.encode()).hexdigest()


def digest_response(
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The `response=` value a client computes (RFC 2617 §3.2.2, RFC 8760)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    ha2 = _h(algorithm, f"{method}:{uri}")
    if qop:
        return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{ha2}")


def parse_authorization(value: str) -> dict[str, str] | None:
    """`Digest username="a", realm="b", ...` -> lower-cased parameter dict; None if not Digest."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    for part in split_list(rest):
        name, eq, val = part.partition("=")
        if not eq:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        params[name.strip().lower()] = val
    return params


@dataclass
class DigestAuthenticator:
    username: str
    password: str
    realm: str = "telephony-agent"
    nonce_ttl_s: float = 300.0
    secret: bytes = b""
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")  # challenge order; some old UACs read only the first

    def __post_init__(self) -> None:
        unknown = [a for a in self.algorithms if a not in _ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"digest algorithms must be SHA-256 and/or MD5, not {unknown or 'none'}")
        if not self.secret:
            self.secret = secrets.token_bytes(32)

    def nonce(self, now: float) -> str:
        stamp = f"{now:.3f}"
        mac = hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{stamp}.{mac}"

    def _nonce_age(self, nonce: str, now: float) -> float | None:
        stamp_full, _, mac = nonce.rpartition(".")
        expected = hmac.new(self.secret, stamp_full.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            return now - float(stamp_full)
        except ValueError:
            return None

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """`WWW-Authenticate` values, one per algorithm (SHA-256 first by default, then MD5)."""
        nonce = self.nonce(now)
        extra = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={alg}, qop="auth"{extra}'
            for alg in self.algorithms
        ]

    def check(self, method: str, authorization: str | None, now: float) -> AuthResult:
        if not authorization:
            return AuthResult.MISSING
        params = parse_authorization(authorization)
        if params is None:
            return AuthResult.MISSING
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in self.algorithms:
            return AuthResult.FAILED
        nonce = params.get("nonce", "")
        uri = params.get("uri", "")
        given = params.get("response", "").lower()
        if params.get("username") != self.username or params.get("realm") != self.realm or not uri:
            return AuthResult.FAILED
        age = self._nonce_age(nonce, now)
        if age is None or age < -5.0:
            return AuthResult.FAILED
        qop = params.get("qop") or None
        if qop is not None and qop.lower() != "auth":
            return AuthResult.FAILED
        expected = digest_response(
            algorithm,
            self.username,
            self.realm,
            self.password,
            method,
            uri,
            nonce,
            qop=qop,
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
        )
        if not hmac.compare_digest(given, expected):
            return AuthResult.FAILED
        if age > self.nonce_ttl_s:
            return AuthResult.STALE
        return AuthResult.OK
