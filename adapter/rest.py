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

from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.auth import Accounts, Caller
from adapter.config import NotificationPolicy
from adapter.errors import FaultCode, PolicyError, RestError, ServiceError
from adapter.notification import Criterion, Schedule
from adapter.presentity import PresentityService
from adapter.watcher import (
    DuplicateCorrelator,
    GroupPresentity,
    NoSubscription,
    NotAuthorized,
    Reference,
    UnknownCorrelator,
    WatcherService,
)
from adapter.xcap import XcapError, XcapTimeout
from pidf import (
    AttributeType,
    Other,
    PresenceAttribute,
    ValidationError,
    attributes_from_json,
    attributes_to_json,
)
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


def decoded_object(raw: bytes | str, part: str = "body") -> dict[str, Any]:
    """``raw`` as a JSON object, or SVC0002 naming ``part``."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ServiceError.invalid_input(f"{part} (not JSON)") from None
    except RecursionError:  # the json module recurses once per level of nesting
        raise ServiceError.invalid_input(f"{part} (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ServiceError.invalid_input(f"{part} (not a JSON object)")
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


def _optional(obj: Mapping[str, Any], name: str, default: Any) -> Any:
    """An optional member; null counts as absent (serialisers that write every field)."""
    value = obj.get(name)
    return default if value is None else value


def caller(request: Request, params: tuple[str, ...] = ()) -> Caller:
    """The authenticated caller of an operation that reads the query ``params``.

    Any other query parameter is refused (after authentication): a misspelt
    one would otherwise be ignored and the request read in part.
    """
    accounts: Accounts = request.state.accounts
    who = accounts.authenticate(request)
    refuse_unknown_parameters(request.query_params, params)
    return who


def refuse_unknown_parameters(query: QueryParams, known: tuple[str, ...]) -> None:
    for name in query:
        if name not in known:
            raise ServiceError.invalid_input(f"{name} (unknown parameter)")


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
    request, routing and response objects (see adapter.app._FastRoutes).
    Errors are raised, for the app's exception handlers.
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
    if scope["query_string"]:
        refuse_unknown_parameters(QueryParams(scope["query_string"]), ())
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
    await service.publish(address, in_order(attributes_from_json(items)))


def in_order(attributes: tuple[PresenceAttribute, ...]) -> tuple[PresenceAttribute, ...]:
    """The items applied in order, as successive Publishes would be: of two values
    for one attribute (for Other, one name) the later is published."""
    kept: dict[object, PresenceAttribute] = {}
    for attribute in attributes:
        value = attribute.value
        key = (attribute.type, value.name) if isinstance(value, Other) else attribute.type
        kept.pop(key, None)
        kept[key] = attribute
    return tuple(kept.values())


async def withdraw(request: Request) -> Response:
    """DELETE /rest/presence[?attributes=Place,Other] → 204 (an extension: withdraw).

    Without ``attributes`` the publication ends (un-PUBLISH); with them only
    those attributes are withdrawn and the rest stays published.
    """
    who = caller(request, ("attributes",))
    kinds: frozenset[AttributeType] = frozenset()
    for value in request.query_params.getlist("attributes"):
        kinds |= attribute_list(value, "attributes")
    service: PresentityService = request.state.presentity
    await service.withdraw(who.address, kinds)
    return Response(status_code=204)


async def get_subscriptions(request: Request) -> Response:
    """Get Open Subscriptions (?status=open) / Get My Watchers (?filter=watcher).

    ``status=open`` asks for the watchers waiting for a decision instead of the
    current ones; ``filter=watcher`` for their URIs only.  The current watchers
    are known by URI alone, so without either parameter the answer is Get My
    Watchers', and with both it is the waiting watchers' URIs.
    """
    who = caller(request, ("status", "filter"))
    service: PresentityService = request.state.presentity
    params = request.query_params
    if params.get("status", "open") != "open":
        raise ServiceError.invalid_input_values("status", ["open"])
    if params.get("filter", "watcher") != "watcher":
        raise ServiceError.invalid_input_values("filter", ["watcher"])
    if "status" not in params:
        return JSONResponse({"result": await service.watchers(who.address)})
    waiting = await service.open_subscriptions(who.address)
    if "filter" in params:
        return JSONResponse({"result": [item.watcher for item in waiting]})
    return JSONResponse(
        {
            "result": [
                {
                    "application": item.application,
                    "attributes": [a.value for a in item.attributes],
                    "watcher": item.watcher,
                }
                for item in waiting
            ]
        }
    )


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
        decisions.pop(kind, None)  # in order, as successive requests: the later decides
        decisions[kind] = decision
    service: PresentityService = request.state.presentity
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
    """The spec's ``attributes``: absent or empty = all; a comma list in a string too."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = comma_list(value)
    if not isinstance(value, list):
        raise ServiceError.invalid_input(part)
    return frozenset(AttributeType.parse(item, f"{part}[{i}]") for i, item in enumerate(value))


def comma_list(text: str) -> list[str]:
    """``"Activity, Place"`` → ``["Activity", "Place"]``; empty items are dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


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
    interface_name = _optional(value, "interfaceName", "")
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
    if not isinstance(metric, str) or metric not in METRICS:
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
    application = _optional(body, "application", "")
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
    who = caller(request, ("presentity",))
    presentity = uri(request.query_params.get("presentity"), "presentity")
    service: WatcherService = request.state.watcher
    await service.unsubscribe(who.address, presentity)
    return Response(status_code=204)


async def get_user_presence(request: Request) -> Response:
    """Get User Presence: GET /rest/presence?query={"presentity","attributes"}."""
    who = caller(request, ("query", "presentity", "attributes"))
    presentity, asked = user_presence_query(request.query_params)
    service: WatcherService = request.state.watcher
    presence = await service.user_presence(who.address, presentity, asked)
    attributes = presence.attributes if presence is not None else ()
    return JSONResponse({"result": attributes_to_json(attributes)})


def user_presence_query(params: QueryParams) -> tuple[str, frozenset[AttributeType]]:
    """The presentity and the attributes asked for, in each form clients send.

    Either ``query`` — the spec's object as JSON, also wrapped in double quotes
    as OCSG's own examples write it (``?query="%7B…%7D"``) — or plain
    ``presentity`` with ``attributes`` given any number of times, each one
    attribute or a comma list.  A form that would lose part of the request
    (two presentities, ``query`` beside plain parameters) is refused rather
    than read in part.
    """
    for name in ("query", "presentity"):
        if len(params.getlist(name)) > 1:
            raise ServiceError.invalid_input(f"{name} (repeated)")
    if "query" not in params:
        asked: list[str] = []
        for value in params.getlist("attributes"):
            asked.extend(comma_list(value))
        return uri(params.get("presentity"), "presentity"), attribute_list(asked, "attributes")
    for name in ("presentity", "attributes"):
        if name in params:
            raise ServiceError.invalid_input(f"{name} (beside query)")
    query = json_query(params["query"])
    return uri(query.get("presentity"), "query.presentity"), attribute_list(
        query.get("attributes"), "query.attributes"
    )


def json_query(text: str) -> dict[str, Any]:
    """OCSG's ``?query=`` object: JSON, bare or wrapped in double quotes."""
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]  # ?query="%7B%22presentity%22…%7D", as OCSG's examples write it
    return decoded_object(text, "query")


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
    count = _optional(body, "count", 0)
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
    not_subscribed = await service.start_notification(
        who.account.id,
        who.address,
        presentity,
        schedule,
        check_immediate=boolean(body.get("checkImmediate"), "checkImmediate", False),
    )
    location = str(request.base_url).rstrip("/") + "/cometd"
    return JSONResponse(
        {"result": not_subscribed}, status_code=201, headers={"Location": location}
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


async def _no_subscription(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.not_found("presentity", _named(exc)))


async def _group_presentity(request: Request, exc: Exception) -> Response:
    # The chapter's Get User Presence result has no presentity field: a
    # group's members' attributes could not be told apart (README, Groups).
    return _json_error(ServiceError(
        FaultCode.INVALID_INPUT, ["presentity", f"{_named(exc)} is a group"], status=400
    ))


async def _not_authorized(request: Request, exc: Exception) -> Response:
    return _json_error(PolicyError.privacy_refused(str(exc)))


async def _duplicate_correlator(request: Request, exc: Exception) -> Response:
    return _json_error(ServiceError.duplicate_correlator(str(exc), "reference.correlator"))


async def _unknown_correlator(request: Request, exc: Exception) -> Response:
    # The chapter: "the body of the error response will contain the identifier
    # for the notification".
    return _json_error(ServiceError.not_found("correlator", _named(exc)))


def _named(exc: Exception) -> str:
    """What a lookup error of the services did not find: its first argument."""
    return str(exc.args[0]) if exc.args else ""


EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    GroupPresentity: _group_presentity,
    NoSubscription: _no_subscription,
    NotAuthorized: _not_authorized,
    DuplicateCorrelator: _duplicate_correlator,
    UnknownCorrelator: _unknown_correlator,
    ValidationError: _validation_error,
    RequestFailed: _sip_error,
    XcapError: _xcap_error,
}
