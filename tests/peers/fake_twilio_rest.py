"""Fake Twilio REST API: the Calls update endpoint, on 127.0.0.1 with a random port.

Checks Basic auth like Twilio, records every request's form fields, answers with Call JSON,
and can be told that a call is unknown (404, code 20404) or to fail the next request.

    async with FakeTwilioRest(account_sid, auth_token) as api:
        rest = TwilioRest(account_sid, auth_token, base_url=api.base_url)
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["FakeTwilioRest", "RestRequest"]


@dataclass
class RestRequest:
    account_sid: str
    call_sid: str
    form: dict[str, str]
    headers: dict[str, str]
    time: float


@dataclass
class _Failure:
    status: int
    code: int
    message: str
    delay: float = 0.0


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status},
        status=status,
    )


@dataclass
class FakeTwilioRest:
    account_sid: str
    auth_token: str
    requests: list[RestRequest] = field(default_factory=list)
    unknown_calls: set[str] = field(default_factory=set)
    call_status: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (for client timeout tests)."""
    calls: dict[str, Any] = field(default_factory=dict)
    """Registered TwilioCallers: a hang-up or redirect over REST ends their stream."""
    _failures: list[_Failure] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _port: int | None = None
    _changed: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        assert self._port is not None, "start() first"
        return f"http://127.0.0.1:{self._port}"

    def register_call(self, call: Any) -> None:
        """Link a TwilioCaller: `Status=completed`, `Twiml` or `Url` updates make it send `stop`
        and close its socket, as Twilio does."""
        self.calls[call.call_sid] = call

    def mark_unknown(self, call_sid: str) -> None:
        """Requests for this call get 404 / 20404, as for a call that has ended and aged out."""
        self.unknown_calls.add(call_sid)

    def fail_next(self, status: int = 500, code: int = 20500, message: str = "Internal Server Error", delay: float = 0.0) -> None:
        """The next request (after auth) gets this error."""
        self._failures.append(_Failure(status, code, message, delay))

    def requests_for(self, call_sid: str) -> list[RestRequest]:
        return [r for r in self.requests if r.call_sid == call_sid]

    async def wait_for_request(self, count: int = 1, timeout: float = 5.0) -> list[RestRequest]:
        """Wait until at least `count` requests have been recorded."""
        assert self._changed is not None
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.requests

    async def start(self) -> FakeTwilioRest:
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self._update_call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilioRest:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user, self.account_sid) & hmac.compare_digest(password, self.auth_token)

    async def _update_call(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        call = request.match_info["call"]
        if not self._authorized(request):
            return _error(401, 20003, "Authenticate")
        if account != self.account_sid:
            return _error(404, 20404, f"The requested resource /2010-04-01/Accounts/{account} was not found")
        form = await request.post()
        self.requests.append(
            RestRequest(account, call, {k: str(v) for k, v in form.items()}, dict(request.headers),
                        asyncio.get_running_loop().time())
        )
        assert self._changed is not None
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._failures:
            failure = self._failures.pop(0)
            if failure.delay:
                await asyncio.sleep(failure.delay)
            return _error(failure.status, failure.code, failure.message)
        if call in self.unknown_calls:
            return _error(404, 20404,
                          f"The requested resource /2010-04-01/Accounts/{account}/Calls/{call}.json was not found")
        if "Twiml" in form and "Url" in form:
            return _error(400, 21220, "Twiml and Url are mutually exclusive")
        status = self.call_status.get(call, "in-progress")
        if form.get("Status") in ("completed", "canceled"):
            status = str(form["Status"])
        self.call_status[call] = status
        linked = self.calls.get(call)
        if linked is not None and ("Twiml" in form or "Url" in form or status in ("completed", "canceled")):
            task = asyncio.create_task(linked.end_from_rest(dict(self.requests[-1].form)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(self._call_json(account, call, status))

    @staticmethod
    def _call_json(account: str, call: str, status: str) -> dict[str, Any]:
        return {
            "sid": call,
            "account_sid": account,
            "status": status,
            "from": "+15005550006",
            "to": "+15005550001",
            "direction": "inbound",
            "api_version": "2010-04-01",
            "uri": f"/2010-04-01/Accounts/{account}/Calls/{call}.json",
        }
