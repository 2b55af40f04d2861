"""The RESTful Presence interface (OCSG): thin endpoints over the services.

Each endpoint parses and validates its input, calls one service method and
shapes the answer; errors of the layers below are translated once, here, into
the ``requestError`` body (:data:`EXCEPTION_HANDLERS`).  The spec's singular
``/subscription`` and OCSG 4.1's plural ``/subscriptions`` are both served.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapter.auth import Accounts, Caller
from adapter.errors import RestError, ServiceError
from adapter.presentity import PresentityService, UnknownWatcher
from adapter.xcap import XcapError, XcapTimeout
from pidf import AttributeType, ValidationError, attributes_from_json
from pidf.model import is_uri
from sip.aio import RequestFailed, RequestTimedOut

__all__ = ["EXCEPTION_HANDLERS", "BASE", "routes"]

logger = logging.getLogger(__name__)

BASE = "/rest/presence"
SUBSCRIPTION_PATHS = (f"{BASE}/subscription", f"{BASE}/subscriptions")

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


# -- input -------------------------------------------------------------------


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or SVC0002 naming the body."""
    raw = await request.body()
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ServiceError.invalid_input("body (not JSON)") from None
    if not isinstance(value, dict):
        raise ServiceError.invalid_input("body (not a JSON object)")
    return value


def require(obj: Mapping[str, Any], name: str, kind: type, part: str | None = None) -> Any:
    value = obj.get(name)
    if value is None or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ServiceError.invalid_input(part or name)
    return value


def uri(value: Any, part: str) -> str:
    if not isinstance(value, str) or not is_uri(value):
        raise ServiceError.invalid_input(part)
    return value


def caller(request: Request) -> Caller:
    accounts: Accounts = request.state.accounts
    return accounts.authenticate(request)


# -- presentity operations ------------------------------------------------------


async def publish(request: Request) -> Response:
    """Publish: POST /rest/presence {"presence":[…]} → 204."""
    who = caller(request)
    body = await json_object(request)
    items = body.get("presence")
    if not isinstance(items, list) or not items:
        raise ServiceError.invalid_input("presence")
    attributes = attributes_from_json(items)
    service: PresentityService = request.state.presentity
    await service.publish(who.address, attributes)
    return Response(status_code=204)


async def get_subscriptions(request: Request) -> Response:
    """Get Open Subscriptions (?status=open) / Get My Watchers (?filter=watcher)."""
    who = caller(request)
    service: PresentityService = request.state.presentity
    params = request.query_params
    if params.get("status") == "open":
        open_subscriptions = await service.open_subscriptions(who.address)
        return JSONResponse(
            {
                "result": [
                    {
                        "application": item.application,
                        "attributes": [a.value for a in item.attributes],
                        "watcher": item.watcher,
                    }
                    for item in open_subscriptions
                ]
            }
        )
    if params.get("filter") == "watcher":
        return JSONResponse({"result": await service.watchers(who.address)})
    if "status" in params:
        raise ServiceError.invalid_input_values("status", ["open"])
    if "filter" in params:
        raise ServiceError.invalid_input_values("filter", ["watcher"])
    raise ServiceError.invalid_input("status or filter")


async def update_authorization(request: Request) -> Response:
    """Update Subscription Authorization: PUT …/subscription {"watcher","decisions"} → 204."""
    who = caller(request)
    body = await json_object(request)
    watcher = uri(body.get("watcher"), "watcher")
    raw = body.get("decisions")
    if not isinstance(raw, list) or not raw:
        raise ServiceError.invalid_input("decisions")
    decisions: dict[AttributeType, bool] = {}
    for i, item in enumerate(raw):
        part = f"decisions[{i}]"
        if not isinstance(item, dict):
            raise ServiceError.invalid_input(part)
        kind = AttributeType.parse(item.get("presenceAttribute"), f"{part}.presenceAttribute")
        decision = item.get("decision")
        if isinstance(decision, str) and decision.lower() in ("true", "false"):
            decision = decision.lower() == "true"  # the spec's examples quote booleans
        if not isinstance(decision, bool):
            raise ServiceError.invalid_input(f"{part}.decision")
        if kind in decisions:
            raise ServiceError.invalid_input(f"{part}.presenceAttribute (repeated)")
        decisions[kind] = decision
    service: PresentityService = request.state.presentity
    await service.require_known_watcher(who.address, watcher)
    await service.authorize(who.address, watcher, decisions)
    return Response(status_code=204)


async def block_subscription(request: Request) -> Response:
    """Block Subscription: DELETE …/subscription/{watcher} → 204."""
    who = caller(request)
    watcher = uri(unquote(request.path_params["watcher"]), "watcher")
    service: PresentityService = request.state.presentity
    await service.require_known_watcher(who.address, watcher)
    await service.block(who.address, watcher)
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [Route(BASE, publish, methods=["POST"])]
    for path in SUBSCRIPTION_PATHS:
        out.append(Route(path, get_subscriptions, methods=["GET"]))
        out.append(Route(path, update_authorization, methods=["PUT"]))
        out.append(Route(path + "/{watcher:path}", block_subscription, methods=["DELETE"]))
    return out


# -- errors of the layers below, translated once ----------------------------------


def _json_error(error: RestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=dict(error.headers))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ValidationError)
    return _json_error(ServiceError.invalid_input(exc.field or "body"))


async def _sip_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestFailed)
    status = 504 if isinstance(exc, RequestTimedOut) else 502
    logger.info("%s %s: %s", request.method, request.url.path, exc)
    return _json_error(ServiceError.service_error(f"presence server: {exc}", status=status))


async def _xcap_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, XcapError)
    status = 504 if isinstance(exc, XcapTimeout) else 502
    logger.info("%s %s: %s", request.method, request.url.path, exc)
    return _json_error(ServiceError.service_error(f"presence rules: {exc}", status=status))


async def _unknown_watcher(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.invalid_input("watcher", status=404))


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    UnknownWatcher: _unknown_watcher,
    ValidationError: _validation_error,
    RequestFailed: _sip_error,
    XcapError: _xcap_error,
}
