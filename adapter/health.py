"""Health of the adapter: can it reach its SIP presence server right now?"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

__all__ = ["PROBE_TIMEOUT", "SipHealth", "SipProbe", "check_sip", "health_endpoint"]

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
