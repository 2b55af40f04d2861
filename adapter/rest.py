"""The RESTful Presence interface (OCSG): thin endpoints over the services.

Each endpoint parses and validates its input, calls one service method and
shapes the answer; errors of the layers below are translated once, here, into
the ``requestError`` body (:data:`EXCEPTION_HANDLERS`).  The spec's singular
``/subscription`` and OCSG 4.1's plural ``/subscriptions`` are both served.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.auth import Accounts, Caller
from adapter.config import NotificationPolicy
from adapter.errors import PolicyError, RestError, ServiceError
from adapter.notification import Criterion, Schedule
from adapter.presentity import PresentityService, UnknownWatcher
from adapter.watcher import (
    DuplicateCorrelator,
    NoSubscription,
    NotAuthorized,
    Reference,
    UnknownCorrelator,
    WatcherService,
)
from adapter.xcap import XcapError, XcapTimeout
from pidf import AttributeType, ValidationError, attributes_from_json, attributes_to_json
from pidf.model import is_uri
from sip.aio import RequestFailed, RequestTimedOut

__all__ = ["EXCEPTION_HANDLERS", "BASE", "fast_routes", "routes"]

logger = logging.getLogger(__name__)

BASE = "/rest/presence"
SUBSCRIPTION_PATHS = (f"{BASE}/subscription", f"{BASE}/subscriptions")

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


# -- input -------------------------------------------------------------------


async def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or SVC0002 naming the body."""
    return decoded_object(await request.body())


def decoded_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or SVC0002 naming the body."""
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
    """Publish: POST /rest/presence {"presence":[…]} → 204.

    The adapter's app serves this operation with :func:`publish_asgi`, which
    gives the same answers; this form stays for apps composed without it.
    """
    who = caller(request)
    await _publish(request.state.presentity, who.address, await request.body())
    return Response(status_code=204)


async def publish_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """Publish as a bare ASGI app, the hot path of the REST API.

    The same steps and answers as :func:`publish` without Starlette's
    request, routing and response objects (see adapter.app._FastRoutes and
    docs/benchmarks.md, "Publish throughput").  Errors are raised, for the
    app's exception handlers.
    """
    authorization = named = None
    # ASGI header names are lower case; the first of a repeated header counts,
    # as with Starlette's Headers.get.
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"x-presence-identity" and named is None:
            named = value.decode("latin-1")
    state = scope["state"]
    accounts: Accounts = state["accounts"]
    who = accounts.caller(authorization, named)
    await _publish(state["presentity"], who.address, await _body(receive))
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def _body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        return bytes(message.get("body", b""))
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


async def _publish(service: PresentityService, address: str, raw: bytes) -> None:
    items = decoded_object(raw).get("presence")
    if not isinstance(items, list) or not items:
        raise ServiceError.invalid_input("presence")
    await service.publish(address, attributes_from_json(items))


async def withdraw(request: Request) -> Response:
    """DELETE /rest/presence[?attributes=Place,Other] → 204 (an extension: withdraw).

    Without ``attributes`` the publication ends (un-PUBLISH); with them only
    those attributes are withdrawn and the rest stays published.
    """
    who = caller(request)
    kinds: frozenset[AttributeType] = frozenset()
    for value in request.query_params.getlist("attributes"):
        kinds |= attribute_list(value, "attributes")
    service: PresentityService = request.state.presentity
    await service.withdraw(who.address, kinds)
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
    # The server has already percent-decoded the path (ASGI "path" is decoded):
    # decoding again would turn an escaped SIP URI (sip:a%20b@…, RFC 3261
    # §19.1.2) into a different, invalid one.
    watcher = uri(request.path_params["watcher"], "watcher")
    service: PresentityService = request.state.presentity
    await service.require_known_watcher(who.address, watcher)
    await service.block(who.address, watcher)
    return Response(status_code=204)


# -- watcher operations -----------------------------------------------------------

#: Parlay X TimeMetric units, in seconds (a month of 30 days, a year of 365).
METRICS = {
    "Millisecond": 0.001,
    "Second": 1.0,
    "Minute": 60.0,
    "Hour": 3600.0,
    "Day": 86400.0,
    "Week": 7 * 86400.0,
    "Month": 30 * 86400.0,
    "Year": 365 * 86400.0,
}


def attribute_list(value: Any, part: str) -> frozenset[AttributeType]:
    """The spec's ``attributes``: absent or empty = all."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise ServiceError.invalid_input(part)
    return frozenset(AttributeType.parse(item, f"{part}[{i}]") for i, item in enumerate(value))


def reference(value: Any, who: Caller) -> Reference:
    """The spec's ``reference``; its endpoint must be the caller's own channel."""
    if not isinstance(value, dict):
        raise ServiceError.invalid_input("reference")
    correlator = value.get("correlator")
    if not isinstance(correlator, str) or not correlator:
        raise ServiceError.invalid_input("reference.correlator")
    endpoint = value.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith("/"):
        raise ServiceError.invalid_input("reference.endpoint")
    root = f"/bayeux/{who.account.id}"
    if not (endpoint == root or endpoint.startswith(root + "/")) or "*" in endpoint:
        raise PolicyError.policy_error(f"reference.endpoint must be {root} or below it")
    interface_name = value.get("interfaceName", "")
    if not isinstance(interface_name, str):
        raise ServiceError.invalid_input("reference.interfaceName")
    return Reference(correlator, endpoint, interface_name)


def boolean(value: Any, part: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # the spec writes booleans as strings
    if not isinstance(value, bool):
        raise ServiceError.invalid_input(part)
    return value


def period(value: Any, part: str) -> float | None:
    """A Parlay X TimeMetric ``{"metric","units"}`` in seconds; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ServiceError.invalid_input(part)
    metric = value.get("metric")
    if metric not in METRICS:
        raise ServiceError.invalid_input_values(f"{part}.metric", list(METRICS))
    units = value.get("units")
    if isinstance(units, str) and units.isdigit():
        units = int(units)
    if not isinstance(units, int) or isinstance(units, bool) or units < 0:
        raise ServiceError.invalid_input(f"{part}.units")
    return METRICS[metric] * units


def criteria(value: Any) -> frozenset[Criterion]:
    if value is None or value == "":
        return frozenset()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ServiceError.invalid_input("criteria")
    out = set()
    for item in items:
        try:
            out.add(Criterion(item))
        except ValueError:
            raise ServiceError.invalid_input_values(
                "criteria", [c.value for c in Criterion]
            ) from None
    return frozenset(out)


async def subscribe_presence(request: Request) -> Response:
    """Subscribe Presence: POST …/subscription → 204."""
    who = caller(request)
    body = await json_object(request)
    presentity = uri(body.get("presentity"), "presentity")
    application = body.get("application", "")
    if not isinstance(application, str):
        raise ServiceError.invalid_input("application")
    service: WatcherService = request.state.watcher
    await service.subscribe(
        who.account.id,
        who.address,
        presentity,
        application=application,
        attributes=attribute_list(body.get("attributes"), "attributes"),
        reference=reference(body.get("reference"), who),
    )
    return Response(status_code=204)


async def end_subscription(request: Request) -> Response:
    """DELETE …/subscription?presentity=URI → 204 (an extension: the watcher's own end)."""
    who = caller(request)
    presentity = uri(request.query_params.get("presentity"), "presentity")
    service: WatcherService = request.state.watcher
    await service.unsubscribe(who.address, presentity)
    return Response(status_code=204)


async def get_user_presence(request: Request) -> Response:
    """Get User Presence: GET /rest/presence?query={"presentity","attributes"}."""
    who = caller(request)
    params = request.query_params
    query: Any = {"presentity": params.get("presentity"), "attributes": params.get("attributes")}
    if "query" in params:
        try:
            query = json.loads(params["query"])
        except json.JSONDecodeError:
            raise ServiceError.invalid_input("query (not JSON)") from None
        if not isinstance(query, dict):
            raise ServiceError.invalid_input("query")
    presentity = uri(query.get("presentity"), "presentity")
    asked = attribute_list(query.get("attributes"), "attributes")
    service: WatcherService = request.state.watcher
    presence = await service.user_presence(who.address, presentity, asked)
    attributes = presence.attributes if presence is not None else ()
    return JSONResponse({"result": attributes_to_json(attributes)})


async def start_notification(request: Request) -> Response:
    """Start Presence Notification: POST /rest/presence/notification → 201."""
    who = caller(request)
    body = await json_object(request)
    policy: NotificationPolicy = request.state.notification_policy
    presentity = uri(body.get("presentity"), "presentity")
    ref = reference(body.get("reference"), who)
    frequency = period(body.get("frequency"), "frequency")
    if frequency is None:
        frequency = policy.min_frequency
    if frequency < policy.min_frequency:
        raise PolicyError.invalid_frequency()
    duration = period(body.get("duration"), "duration")
    if duration is None or duration == 0:
        duration = policy.max_duration
    if duration > policy.max_duration:
        raise PolicyError.policy_error(
            f"duration longer than {policy.max_duration:g} s is not allowed"
        )
    count = body.get("count", 0)
    if isinstance(count, str) and count.isdigit():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ServiceError.invalid_input("count")
    if count == 0 and not policy.allow_unlimited_count:
        raise PolicyError.unlimited_notifications()
    if count > policy.max_count:
        raise PolicyError.too_many_notifications()
    now = time.time()
    schedule = Schedule(
        correlator=ref.correlator,
        app_id=who.account.id,
        endpoint=ref.endpoint,
        watcher=who.address,
        presentity=presentity,
        interface_name=ref.interface_name,
        attributes=attribute_list(body.get("attributes"), "attributes"),
        criteria=criteria(body.get("criteria")),
        frequency=frequency,
        remaining=count or None,
        deadline=now + duration,
    )
    service: WatcherService = request.state.watcher
    ok = await service.start_notification(
        who.account.id,
        who.address,
        presentity,
        schedule,
        check_immediate=boolean(body.get("checkImmediate"), "checkImmediate", False),
    )
    location = str(request.base_url).rstrip("/") + "/cometd"
    return JSONResponse(
        {"result": [] if ok else [presentity]}, status_code=201, headers={"Location": location}
    )


async def end_notification(request: Request) -> Response:
    """End Presence Notification: DELETE /rest/presence/notification/{correlator} → 204."""
    who = caller(request)
    service: WatcherService = request.state.watcher
    # Starlette has already percent-decoded the path: decoding again would
    # turn a correlator with an escaped "%" into another one.
    await service.end_notification(who.account.id, request.path_params["correlator"])
    return Response(status_code=204)


def fast_routes() -> dict[tuple[str, str], ASGIApp]:
    """(method, path) -> the bare ASGI app that serves it ahead of :func:`routes`."""
    return {("POST", BASE): publish_asgi}


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route(BASE, publish, methods=["POST"]),
        Route(BASE, get_user_presence, methods=["GET"]),
        Route(BASE, withdraw, methods=["DELETE"]),
        Route(f"{BASE}/notification", start_notification, methods=["POST"]),
        Route(f"{BASE}/notification/{{correlator:path}}", end_notification, methods=["DELETE"]),
    ]
    for path in SUBSCRIPTION_PATHS:
        out.append(Route(path, get_subscriptions, methods=["GET"]))
        out.append(Route(path, update_authorization, methods=["PUT"]))
        out.append(Route(path, subscribe_presence, methods=["POST"]))
        out.append(Route(path, end_subscription, methods=["DELETE"]))
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


async def _no_subscription(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.invalid_input("presentity", status=404))


async def _not_authorized(request: Request, exc: Exception) -> Response:
    return _json_error(PolicyError.privacy_refused(str(exc)))


async def _duplicate_correlator(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.duplicate_correlator(str(exc), "reference.correlator"))


async def _unknown_correlator(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.invalid_input("correlator", status=404))


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    UnknownWatcher: _unknown_watcher,
    NoSubscription: _no_subscription,
    NotAuthorized: _not_authorized,
    DuplicateCorrelator: _duplicate_correlator,
    UnknownCorrelator: _unknown_correlator,
    ValidationError: _validation_error,
    RequestFailed: _sip_error,
    XcapError: _xcap_error,
}
