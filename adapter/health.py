"""Health of the adapter: /health (can it reach its SIP presence server right now?),
/livez (is the process serving?) and /readyz (should it be sent work?)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = [
    "PROBE_TIMEOUT",
    "Readiness",
    "SipHealth",
    "SipProbe",
    "check_sip",
    "health_endpoint",
    "livez_endpoint",
    "readyz_endpoint",
]

logger = logging.getLogger(__name__)

#: Upper bound on one /health answer, whatever the probe does: a health check that
#: hangs is read by load balancers as a dead node, which is worse than "degraded".
PROBE_TIMEOUT = 2.0


class SipProbe(Protocol):
    """The SIP user agent's liveness check of the presence server (an OPTIONS ping)."""

    async def ping(self) -> float:
        """Round-trip time in seconds; raises on failure or timeout."""
        ...


@dataclass(frozen=True)
class SipHealth:
    server: str
    reachable: bool
    rtt: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"server": self.server, "reachable": self.reachable}
        if self.rtt is not None:
            out["rtt_ms"] = round(self.rtt * 1000, 3)
        if self.reason is not None:
            out["reason"] = self.reason
        return out


async def check_sip(
    probe: SipProbe, server: str, *, timeout: float | None = None
) -> SipHealth:
    """Ping the presence server through ``probe``; never raises, never exceeds ``timeout``."""
    limit = PROBE_TIMEOUT if timeout is None else timeout
    with anyio.move_on_after(limit):
        try:
            rtt = await probe.ping()
        # The probe promises only that it "raises on failure"; whatever it raises means
        # the server is unreachable, and /health must report that rather than fail.
        except Exception as exc:
            logger.info("SIP probe of %s failed: %r", server, exc)
            return SipHealth(server, reachable=False, reason=str(exc) or type(exc).__name__)
        return SipHealth(server, reachable=True, rtt=rtt)
    return SipHealth(server, reachable=False, reason=f"no answer within {limit:g} s")


async def health_endpoint(request: Request) -> JSONResponse:
    """GET /health: 200 when the presence server answers, 503 otherwise."""
    sip = await check_sip(request.app.state.sip_probe, request.app.state.config.sip.server)
    body = {"status": "ok" if sip.reachable else "degraded", "sip": sip.to_json()}
    return JSONResponse(
        body,
        status_code=200 if sip.reachable else 503,
        headers={"Cache-Control": "no-store"},
    )


@dataclass
class Readiness:
    """What /readyz asks besides the presence server; each part optional."""

    #: True once the publications and subscriptions kept in the store are re-created.
    recovered: Callable[[], bool] = lambda: True
    #: Writes something small to the store and waits for it; raises when it cannot.
    store_probe: Callable[[], Awaitable[None]] | None = None
    #: True from SIGTERM on: a draining adapter takes no new work.
    draining: Callable[[], bool] = lambda: False
    #: A node of a cluster: pings its Redis; raises when it cannot.
    redis_probe: Callable[[], Awaitable[None]] | None = None
    #: A node of a cluster: Bayeux messages waiting here for Redis.
    redis_waiting: Callable[[], int] = lambda: 0


async def _check_redis(readiness: Readiness) -> dict[str, Any]:
    assert readiness.redis_probe is not None
    out: dict[str, Any] = {"reachable": False}
    with anyio.move_on_after(PROBE_TIMEOUT):
        try:
            await readiness.redis_probe()
            out["reachable"] = True
        # As for the store: whatever the probe raises means "not reachable".
        except Exception as exc:
            out["reason"] = str(exc) or type(exc).__name__
    if not out["reachable"]:
        out.setdefault("reason", f"no answer within {PROBE_TIMEOUT:g} s")
    out["waiting_messages"] = readiness.redis_waiting()
    return out


async def livez_endpoint(request: Request) -> JSONResponse:
    """GET /livez: 200 while the process serves HTTP (nothing else is asked)."""
    return JSONResponse({"status": "alive"}, headers={"Cache-Control": "no-store"})


async def readyz_endpoint(request: Request) -> JSONResponse:
    """GET /readyz: 200 when recovery is done, the store takes writes and the presence
    server answers; otherwise 503 with the reasons.

    A node's Redis is reported, and its absence makes the node "degraded", still
    200: every REST call is served, and the Bayeux messages made meanwhile wait
    in memory until Redis is back.  The Redis is the same for every node, so
    taking nodes out of a load balancer would only stop REST calls too.
    """
    readiness: Readiness = request.app.state.readiness
    reasons: list[str] = []
    if readiness.draining():
        reasons.append("shutting down")
    if not readiness.recovered():
        reasons.append("recovery of stored publications and subscriptions not finished")
    if readiness.store_probe is not None:
        with anyio.move_on_after(PROBE_TIMEOUT) as scope:
            try:
                await readiness.store_probe()
            # As for the SIP probe: whatever the store raises means "not writable".
            except Exception as exc:
                reasons.append(f"store not writable: {exc}")
        if scope.cancelled_caught:
            reasons.append(f"store write not done within {PROBE_TIMEOUT:g} s")
    sip = await check_sip(request.app.state.sip_probe, request.app.state.config.sip.server)
    if not sip.reachable:
        reasons.append(f"presence server not answering: {sip.reason}")
    body: dict[str, Any] = {"status": "not ready" if reasons else "ready", "sip": sip.to_json()}
    if reasons:
        body["reasons"] = reasons
    if readiness.redis_probe is not None:
        redis = await _check_redis(readiness)
        body["redis"] = redis
        if not redis["reachable"] and not reasons:
            body["status"] = "degraded"
    return JSONResponse(
        body, status_code=503 if reasons else 200, headers={"Cache-Control": "no-store"}
    )
