"""Minimal async Twilio REST client: hang up, transfer or redirect a live call (docs/protocols.md, "REST").

One aiohttp `ClientSession` (shared, or owned and closed by `close()`); every request has a
bounded timeout; the auth token never appears in reprs, logs or exceptions.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import aiohttp
import orjson

from .twiml import dial_twiml

__all__ = ["TwilioRest", "TwilioRestError"]

log = logging.getLogger(__name__)

_SID_RE = re.compile(r"^[A-Za-z0-9]{2,64}$")


class TwilioRestError(Exception):
    """A Twilio REST call failed: `status` is the HTTP status (0 for transport errors or timeouts);
    `code`/`message`/`more_info` come from Twilio's error JSON when present."""

    def __init__(self, status: int, code: int | None, message: str, more_info: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.more_info = more_info
        super().__init__(f"Twilio REST error: HTTP {status}, code {code}: {message}")


class TwilioRest:
    """Calls-resource updates for live calls."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        base_url: str = "https://api.twilio.com",
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        if not _SID_RE.match(account_sid or ""):
            raise ValueError("invalid Twilio account SID")
        if not auth_token:
            raise ValueError("Twilio auth token is empty")
        self.account_sid = account_sid
        basic = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode("ascii")
        self._headers = {"Authorization": "Basic " + basic, "Accept": "application/json"}
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    def __repr__(self) -> str:
        return f"TwilioRest(account_sid={self.account_sid!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> TwilioRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if we created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    def _call_url(self, call_sid: str) -> str:
        if not _SID_RE.match(call_sid or ""):
            raise ValueError(f"invalid call SID {call_sid!r}")
        return f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Calls/{call_sid}.json"

    async def update_call(self, call_sid: str, fields: dict[str, str]) -> dict[str, Any]:
        """POST form `fields` to the Call resource; returns the Call JSON or raises TwilioRestError."""
        url = self._call_url(call_sid)
        try:
            async with self._get_session().post(
                url,
                data=fields,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError:
            raise TwilioRestError(0, None, "request timed out") from None
        except aiohttp.ClientError as exc:
            raise TwilioRestError(0, None, f"transport error: {type(exc).__name__}") from None
        data: Any = None
        try:
            data = orjson.loads(body) if body else None
        except ValueError:
            data = None
        if 200 <= status < 300:
            return data if isinstance(data, dict) else {}
        code = message = more_info = None
        if isinstance(data, dict):
            code = data.get("code") if isinstance(data.get("code"), int) else None
            message = data.get("message") if isinstance(data.get("message"), str) else None
            more_info = data.get("more_info") if isinstance(data.get("more_info"), str) else None
        raise TwilioRestError(status, code, message or f"HTTP {status}", more_info)

    async def hangup(self, call_sid: str) -> bool:
        """End a live call. True if Twilio ended it; False if the call was already gone (404)."""
        try:
            await self.update_call(call_sid, {"Status": "completed"})
        except TwilioRestError as exc:
            if exc.status == 404:
                log.info("hang-up: call %s already ended (404)", call_sid)
                return False
            raise
        return True

    async def transfer(self, call_sid: str, target: str) -> None:
        """Send the call to `target` (number or sip: URI); this ends its Media Stream."""
        await self.update_call(call_sid, {"Twiml": dial_twiml(target)})

    async def redirect_twiml(self, call_sid: str, twiml: str) -> None:
        """Replace the call's running TwiML with `twiml`."""
        await self.update_call(call_sid, {"Twiml": twiml})
