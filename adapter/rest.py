"""The RESTful Presence interface (OCSG): thin endpoints over the services.

Each endpoint decodes its input with the models of adapter.models (which
validate it and name the bad part), calls one service method and shapes the
answer; errors of the layers below are translated once, here, into the
``requestError`` body (:data:`EXCEPTION_HANDLERS`).  The spec's singular
``/subscription`` and OCSG 4.1's plural ``/subscriptions`` are both served.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from msgspec import Struct
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from adapter import models
from adapter.auth import Accounts, Caller
from adapter.config import NotificationPolicy
from adapter.errors import FaultCode, PolicyError, RestError, ServiceError
from adapter.models import METRICS, decode
from adapter.notification import Schedule
from adapter.presence_json import attributes_from_items, comma_list, item_of
from adapter.presentity import PUBLICATION, PresentityService
from adapter.records import WATCH
from adapter.store import StaleLease, StoreError
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
from pidf import AttributeType, Other, PresenceAttribute, ValidationError
from pidf.model import is_uri
from sip.aio import Busy, RequestFailed, RequestTimedOut

if TYPE_CHECKING:
    from adapter.cluster.ownership import Ownership

__all__ = [
    "BASE",
    "DIRECT_ROUTES",
    "EXCEPTION_HANDLERS",
    "METRICS",
    "routes",
    "sip_busy",
    "store_unavailable",
]

logger = logging.getLogger(__name__)

BASE = "/rest/presence"
SUBSCRIPTION_PATHS = (f"{BASE}/subscription", f"{BASE}/subscriptions")

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]

# Compiled once: a decoder per body.
PUBLISH = models.decoder(models.PublishRequest)
UPDATE_AUTHORIZATION = models.decoder(models.UpdateAuthorizationRequest)
SUBSCRIBE_PRESENCE = models.decoder(models.SubscribePresenceRequest)
USER_PRESENCE_QUERY = models.decoder(models.UserPresenceQuery)
START_NOTIFICATION = models.decoder(models.StartNotificationRequest)


# -- input -------------------------------------------------------------------


def uri(value: str | None, part: str) -> str:
    """A URI from the path or the query string (bodies are checked by their models)."""
    if value is None or not is_uri(value):
        raise ServiceError.invalid_input(part)
    return value


def caller(request: Request, params: tuple[str, ...] = ()) -> Caller:
    """The authenticated caller of an operation that reads the query ``params``.

    Any other query parameter is refused (after authentication): a misspelt
    one would otherwise be ignored and the request read in part.
    """
    accounts: Accounts = request.state.accounts
    who = accounts.authenticate(request)
    if request.scope["query_string"]:  # most requests have none: no parsing then
        refuse_unknown_parameters(request.query_params, params)
    return who


def refuse_unknown_parameters(query: QueryParams, known: tuple[str, ...]) -> None:
    for name in query:
        if name not in known:
            raise ServiceError.invalid_input(f"{name} (unknown parameter)")


async def routed(
    request: Request, kind: str, key: str, *, create: bool = True
) -> Response | None:
    """On a node of a cluster: None when this node serves the call (it holds the
    work, or takes it now), else the answer of the node that owns the work,
    to which the call was passed (adapter.cluster.ownership).  ``create``: the
    call may start the work (else, for work nobody has, nothing is taken).
    Alone: always None."""
    cluster = _cluster(request)
    if cluster is None:
        return None
    return await cluster.route(request, kind, key, create=create)


def _cluster(request: Request) -> Ownership | None:
    state: dict[str, Any] = request.scope.get("state") or {}
    return state.get("cluster")


def watch_key(watcher: str, presentity: str) -> str:
    """The name of a watch's record, and of its lease (adapter.records)."""
    return json.dumps((watcher, presentity))


def json_response(model: Struct, status_code: int = 200, **headers: str) -> Response:
    return Response(models.encode(model), status_code, headers or None, "application/json")


# -- presentity operations ------------------------------------------------------


class Publish:
    """Publish: POST /rest/presence {"presence":[…]} → 204.

    The operation that carries the load, so an ASGI app rather than a request
    function: it reads the two headers it needs from the scope, without a
    second exception wrapper and the headers and response objects a request
    function costs.  ``make_app`` serves it ahead of the router
    (:data:`DIRECT_ROUTES`); its route stays in :func:`routes`, where the
    router answers its path's other methods (405) and any app built without
    the direct routes.  It sends its answer last, so a handler never answers
    after a response has started.
    """

    __name__ = "publish"  # the operation's name in the metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorization = named = None
        # ASGI header names are lower case; the first of a repeated header
        # counts, as with Starlette's Headers.get.
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
        raw = await read_body(receive)
        body = decode(PUBLISH, raw)
        if state.get("cluster") is not None:
            elsewhere = await routed(Request(scope, replay(raw)), PUBLICATION, who.address)
            if elsewhere is not None:
                await elsewhere(scope, receive, send)
                return
        service: PresentityService = state["presentity"]
        await service.publish(who.address, in_order(attributes_from_items(body.presence)))
        await send(NO_CONTENT)
        await send(NO_BODY)


async def read_body(receive: Receive) -> bytes:
    """The request's body, as Starlette's ``Request.body`` reads it, without the
    Request: most bodies come in one message."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    """A receive that gives a body already read, for a call passed to another node."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


NO_CONTENT = {"type": "http.response.start", "status": 204, "headers": []}
NO_BODY = {"type": "http.response.body", "body": b""}


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
    kinds = query_attributes(request.query_params.getlist("attributes"), "attributes")
    if (elsewhere := await routed(request, PUBLICATION, who.address, create=False)) is not None:
        return elsewhere
    service: PresentityService = request.state.presentity
    await service.withdraw(who.address, kinds)
    return Response(status_code=204)


def query_attributes(values: list[str], part: str) -> frozenset[AttributeType]:
    """Attributes from the query string: the parameter repeated, each one a comma list."""
    names = [name for value in values for name in comma_list(value)]
    kinds = set()
    for i, name in enumerate(names):
        try:
            kinds.add(AttributeType(name))
        except ValueError:
            raise ServiceError.invalid_input(f"{part}[{i}]") from None
    return frozenset(kinds)


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
        return json_response(models.UriResult(await service.watchers(who.address)))
    waiting = await service.open_subscriptions(who.address)
    if "filter" in params:
        return json_response(models.UriResult([item.watcher for item in waiting]))
    return json_response(
        models.OpenSubscriptionsResult(
            [
                models.OpenSubscription(item.application, list(item.attributes), item.watcher)
                for item in waiting
            ]
        )
    )


async def update_authorization(request: Request) -> Response:
    """Update Subscription Authorization: PUT …/subscription {"watcher","decisions"} → 204."""
    who = caller(request)
    body = decode(UPDATE_AUTHORIZATION, await request.body())
    decisions: dict[AttributeType, bool] = {}
    for item in body.decisions:
        decisions.pop(item.presenceAttribute, None)  # in order: the later decides
        decisions[item.presenceAttribute] = models.boolean(item.decision, False)
    service: PresentityService = request.state.presentity
    await service.authorize(who.address, body.watcher, decisions)
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


def reference(value: models.Reference, who: Caller) -> Reference:
    """The spec's ``reference``; its endpoint must be the caller's own channel."""
    endpoint = value.endpoint
    root = f"/bayeux/{who.account.id}"
    if not (endpoint == root or endpoint.startswith(root + "/")) or "*" in endpoint:
        raise PolicyError.policy_error(f"reference.endpoint must be {root} or below it")
    return Reference(value.correlator, endpoint, value.interfaceName or "")


async def subscribe_presence(request: Request) -> Response:
    """Subscribe Presence: POST …/subscription → 204."""
    who = caller(request)
    body = decode(SUBSCRIBE_PRESENCE, await request.body())
    key = watch_key(who.address, body.presentity)
    if (elsewhere := await routed(request, WATCH, key)) is not None:
        return elsewhere
    service: WatcherService = request.state.watcher
    await service.subscribe(
        who.account.id,
        who.address,
        body.presentity,
        application=body.application or "",
        attributes=models.attribute_kinds(body.attributes),
        reference=reference(body.reference, who),
    )
    return Response(status_code=204)


async def end_subscription(request: Request) -> Response:
    """DELETE …/subscription?presentity=URI → 204 (an extension: the watcher's own end)."""
    who = caller(request, ("presentity",))
    presentity = uri(request.query_params.get("presentity"), "presentity")
    key = watch_key(who.address, presentity)
    if (elsewhere := await routed(request, WATCH, key, create=False)) is not None:
        return elsewhere
    service: WatcherService = request.state.watcher
    await service.unsubscribe(who.address, presentity)
    return Response(status_code=204)


async def get_user_presence(request: Request) -> Response:
    """Get User Presence: GET /rest/presence?query={"presentity","attributes"}."""
    who = caller(request, ("query", "presentity", "attributes"))
    presentity, asked = user_presence_query(request.query_params)
    key = watch_key(who.address, presentity)
    if (elsewhere := await routed(request, WATCH, key, create=False)) is not None:
        return elsewhere
    service: WatcherService = request.state.watcher
    cluster = _cluster(request)
    if cluster is not None and not service.answers(who.address, presentity):
        # A member of a group the watcher watches through another node.
        elsewhere = await cluster.route_member(request, who.address, presentity)
        if elsewhere is not None:
            return elsewhere
    presence = await service.user_presence(who.address, presentity, asked)
    attributes = presence.attributes if presence is not None else ()
    return json_response(models.PresenceResult([item_of(a) for a in attributes]))


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
        presentity = uri(params.get("presentity"), "presentity")
        return presentity, query_attributes(params.getlist("attributes"), "attributes")
    for name in ("presentity", "attributes"):
        if name in params:
            raise ServiceError.invalid_input(f"{name} (beside query)")
    text = params["query"]
    if len(text) > 1 and text[0] == text[-1] == '"':
        text = text[1:-1]  # ?query="%7B%22presentity%22…%7D", as OCSG's examples write it
    query = decode(USER_PRESENCE_QUERY, text, "query")
    return query.presentity, models.attribute_kinds(query.attributes)


async def start_notification(request: Request) -> Response:
    """Start Presence Notification: POST /rest/presence/notification → 201."""
    who = caller(request)
    body = decode(START_NOTIFICATION, await request.body())
    policy: NotificationPolicy = request.state.notification_policy
    ref = reference(body.reference, who)
    frequency = policy.min_frequency if body.frequency is None else body.frequency.seconds
    if frequency < policy.min_frequency:
        raise PolicyError(FaultCode.INVALID_FREQUENCY)
    duration = 0.0 if body.duration is None else body.duration.seconds
    if duration == 0:
        duration = policy.max_duration
    if duration > policy.max_duration:
        raise PolicyError.policy_error(
            f"duration longer than {policy.max_duration:g} s is not allowed"
        )
    count = models.count(body.count, 0)
    if count == 0 and not policy.allow_unlimited_count:
        raise PolicyError(FaultCode.UNLIMITED_NOTIFICATIONS)
    if count > policy.max_count:
        raise PolicyError(FaultCode.TOO_MANY_NOTIFICATIONS)
    now = time.time()
    schedule = Schedule(
        correlator=ref.correlator,
        app_id=who.account.id,
        endpoint=ref.endpoint,
        watcher=who.address,
        presentity=body.presentity,
        interface_name=ref.interface_name,
        attributes=models.attribute_kinds(body.attributes),
        criteria=models.criteria(body.criteria),
        frequency=frequency,
        remaining=count or None,
        deadline=now + duration,
    )
    service: WatcherService = request.state.watcher
    cluster = _cluster(request)
    if cluster is not None and (who.account.id, ref.correlator) not in service.machine.schedules:
        # A correlator is the application's across the nodes: one kept by
        # another node's watch (of any presentity) is taken.
        if await cluster.schedule_owner(who.account.id, ref.correlator) is not None:
            raise DuplicateCorrelator(ref.correlator)
    key = watch_key(who.address, body.presentity)
    if (elsewhere := await routed(request, WATCH, key)) is not None:
        return elsewhere
    not_subscribed = await service.start_notification(
        who.account.id,
        who.address,
        body.presentity,
        schedule,
        check_immediate=models.boolean(body.checkImmediate, False),
    )
    location = str(request.base_url).rstrip("/") + "/cometd"
    return json_response(
        models.UriResult(not_subscribed), 201, Location=location
    )


async def end_notification(request: Request) -> Response:
    """End Presence Notification: DELETE /rest/presence/notification/{correlator} → 204."""
    who = caller(request)
    service: WatcherService = request.state.watcher
    # Starlette has already percent-decoded the path: decoding again would
    # turn a correlator with an escaped "%" into another one.
    correlator = request.path_params["correlator"]
    cluster = _cluster(request)
    if cluster is not None and (who.account.id, correlator) not in service.machine.schedules:
        # Another node's, perhaps: its watch's owner ends it.
        key = await cluster.schedule_owner(who.account.id, correlator)
        elsewhere = None if key is None else await routed(request, WATCH, key, create=False)
        if elsewhere is not None:
            return elsewhere
    await service.end_notification(who.account.id, correlator)
    return Response(status_code=204)


PUBLISH_ENDPOINT = Publish()
#: Served ahead of the router (adapter.app): the operation that carries the load.
DIRECT_ROUTES = {("POST", BASE): PUBLISH_ENDPOINT}


def routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [
        Route(BASE, PUBLISH_ENDPOINT, methods=["POST"]),
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
    if isinstance(exc, Busy):
        logger.info("%s %s: %s", request.method, request.url.path, exc)
        return _json_error(sip_busy(exc.retry_after))
    status = 504 if isinstance(exc, RequestTimedOut) else 502
    logger.info("%s %s: %s", request.method, request.url.path, exc)
    return _json_error(ServiceError.service_error(f"presence server: {exc}", status=status))


async def _xcap_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, XcapError)
    status = 504 if isinstance(exc, XcapTimeout) else 502
    logger.info("%s %s: %s", request.method, request.url.path, exc)
    return _json_error(ServiceError.service_error(f"presence rules: {exc}", status=status))


def sip_busy(retry_after: int) -> ServiceError:
    """503 SVC0001: the SIP requests outstanding fill the window and its queue
    (``[sip] window``); nothing was sent.  RFC 9110 §15.6.4: retry after."""
    return ServiceError(
        FaultCode.SERVICE_ERROR,
        ["presence server: too many requests outstanding, retry later"],
        status=503,
        headers={"Retry-After": str(retry_after)},
    )


#: Seconds a client is told to wait (Retry-After) while the store cannot be written.
STORE_RETRY_AFTER = 5


async def _store_error(request: Request, exc: Exception) -> Response:
    """The store could not keep what the call must keep before it answers: 503,
    retry later (RFC 9110 §15.6.4).  The store's name and error go to the log
    only, not to the application."""
    assert isinstance(exc, StoreError)
    # INFO, as for the presence server: the store logged its error already.
    logger.info("%s %s: store unavailable: %s", request.method, request.url.path, exc)
    if isinstance(exc, StaleLease):
        # A node of a cluster no longer holds the work (taken over, or just
        # ended): asked again, the call goes where the work is now.
        return _json_error(ServiceError(
            FaultCode.SERVICE_ERROR, ["work changing hands between nodes, retry later"],
            status=503, headers={"Retry-After": "1"},
        ))
    return _json_error(store_unavailable())


def store_unavailable() -> ServiceError:
    """503 SVC0001: the store could not keep what the call must keep."""
    return ServiceError(
        FaultCode.SERVICE_ERROR,
        ["store unavailable, retry later"],
        status=503,
        headers={"Retry-After": str(STORE_RETRY_AFTER)},
    )


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
    StoreError: _store_error,
}
