"""Who is let in to the REST API, and how often: per-application token buckets.

``[limits] requests_per_second`` and ``burst`` give every application (account
id) a bucket of its own: ``burst`` tokens, refilled at ``requests_per_second``;
a request takes one, and finds none → 429 with ``Retry-After`` and a POL0001
body.  The buckets are independent, so one application's flood empties its own
bucket only; its surplus is refused here, before any service, store or SIP
work, at the cost of a Basic decode and a cached password check.

Bayeux traffic (``/cometd``) does not count: a long-poll is held open for tens
of seconds by design, and what one application can make the Bayeux server hold
is bounded by ``[bayeux]`` instead (sessions, subscriptions, queue, body size).

:class:`Admission` also moves password-hash verification off the event loop
for REST requests (adapter.auth), answering 401 itself when the credentials are
wrong, so that the endpoint's own check finds the password already remembered.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.auth import REALM, Accounts, basic_credentials
from adapter.config import RateLimit
from adapter.errors import FaultCode, PolicyError, RestError

__all__ = ["Admission", "TokenBucket", "rate_limited"]


class TokenBucket:
    """``burst`` tokens, refilled continuously at ``rate`` per second; reads no clock."""

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def rate_limited(wait: float) -> PolicyError:
    """429 (RFC 6585 §4) with POL0001: Parlay X has no code of its own for a rate
    limit, and its other POL codes each mean something narrower."""
    # Retry-After is whole seconds (RFC 9110 §10.2.3); rounding up never invites
    # a retry that would be refused again.
    seconds = max(1, math.ceil(wait))
    return PolicyError(
        FaultCode.POLICY_ERROR,
        ["request rate limit exceeded"],
        status=429,
        headers={"Retry-After": str(seconds)},
    )


def _answer(error: RestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=dict(error.headers))


class Admission:
    """ASGI middleware in front of the REST paths: authenticate, then charge the bucket.

    Requests without Basic credentials pass through (the endpoints answer 401,
    or serve what needs none).  The accounts are the app's lifespan state
    (``scope["state"]["accounts"]``); an app without them passes everything.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        limit: RateLimit | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.limit = limit
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        accounts: Accounts | None = scope.get("state", {}).get("accounts")
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        credentials = basic_credentials(authorization)
        if accounts is None or credentials is None:
            await self.app(scope, receive, send)
            return
        account = await accounts.check_async(*credentials)
        if account is None:
            await _answer(PolicyError.unauthenticated(REALM))(scope, receive, send)
            return
        if self.limit is not None:
            wait = self._bucket(account.id).take(self.clock())
            if wait:
                await _answer(rate_limited(wait))(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _bucket(self, app_id: str) -> TokenBucket:
        bucket = self._buckets.get(app_id)
        if bucket is None:
            assert self.limit is not None
            # At most one bucket per configured account: only authenticated ids get here.
            bucket = TokenBucket(self.limit.requests_per_second, self.limit.burst, self.clock())
            self._buckets[app_id] = bucket
        return bucket
