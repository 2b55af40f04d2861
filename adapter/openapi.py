"""The REST API described once: the OpenAPI 3.1 document and the service page.

OCSG serves "REST service descriptions of these operations ... at run-time"; ours
are ``GET /openapi.json`` and ``GET /rest/presence/index.html``.  Both are generated
from :data:`OPERATIONS` and :data:`NOTIFICATIONS` below, so the page cannot say
what the document does not.  The schemas of the bodies are not written here: they
are generated from the models the REST edge decodes and encodes with
(adapter.models), so the description cannot drift from the code.  What this
module adds is what the models cannot say: the paths, the query and path
parameters, what each operation does, its answers and faults, and examples.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Literal, NamedTuple

from msgspec import Struct
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapter import models
from adapter.admission import rate_limited
from adapter.auth import IDENTITY_HEADER, REALM
from adapter.errors import FaultCode, PolicyError, RestError, ServiceError
from adapter.models import METRICS
from adapter.presence_json import Uri
from adapter.rest import BASE, SUBSCRIPTION_PATHS, sip_busy, store_unavailable

__all__ = [
    "NOTIFICATIONS",
    "OPERATIONS",
    "Operation",
    "openapi_document",
    "openapi_routes",
    "service_description_html",
]

Schema = dict[str, Any]
Role = Literal["presentity", "watcher", "description"]

DOCUMENT_PATH = "/openapi.json"
PAGE_PATH = f"{BASE}/index.html"
SUBSCRIPTION, SUBSCRIPTIONS = SUBSCRIPTION_PATHS  # the spec's and OCSG 4.1's spelling


def ref(model: type[Struct]) -> Schema:
    return {"$ref": f"{models.COMPONENTS}{model.__name__}"}


URI = models.schema_of(Uri)
ATTRIBUTE_LIST = models.schema_of(models.Attributes)["anyOf"][1]


# -- the operations ---------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "path"]
    description: str
    schema: Schema
    required: bool = False
    as_json: bool = False  # URL-encoded JSON (OCSG's ?query= convention)
    example: Any = None  # a value that names something real in the examples


@dataclass(frozen=True)
class Reply:
    status: int
    description: str
    schema: type[Struct] | None = None  # a model of adapter.models
    example: Any = None  # a value that names something real in the examples
    headers: tuple[tuple[str, str], ...] = ()  # (name, description)
    media: str = "application/json"


@dataclass(frozen=True)
class Fault:
    error: RestError
    when: str


@dataclass(frozen=True)
class Operation:
    """One operation of the spec (or one of ours, marked ``extension``)."""

    id: str
    name: str
    role: Role
    method: str
    paths: tuple[str, ...]
    description: str
    params: tuple[Param, ...] = ()
    body: type[Struct] | None = None
    body_example: Any = None
    replies: tuple[Reply, ...] = ()
    faults: tuple[Fault, ...] = ()
    notifications: tuple[str, ...] = ()
    extension: bool = False

    @property
    def public(self) -> bool:
        return self.role == "description"

    def all_faults(self) -> tuple[Fault, ...]:
        if self.public:
            return self.faults
        return self.faults + AUTH_FAULTS


class Choice(NamedTuple):
    """A query parameter with a single allowed value, and the fault for any other."""

    param: Param
    fault: Fault

    @classmethod
    def of(cls, name: str, value: str, meaning: str) -> Choice:
        return cls(
            Param(name, "query", f"{value}: {meaning}", {"type": "string", "enum": [value]},
                  required=True),
            Fault(ServiceError.invalid_input_values(name, [value]), f"{name} has another value."),
        )


STATUS_OPEN = Choice.of("status", "open", "the watchers waiting for a decision.")
FILTER_WATCHER = Choice.of("filter", "watcher", "the watchers' URIs only.")

ALICE, BOB = "sip:alice@example.com", "sip:bob@example.com"
AUTH_FAULTS = (
    Fault(PolicyError.unauthenticated(REALM), "No or wrong HTTP Basic credentials."),
    Fault(
        PolicyError.policy_error("account alice-app may not act as sip:carol@example.com"),
        f"{IDENTITY_HEADER} names an address the account does not hold.",
    ),
    Fault(ServiceError.service_error("internal error", status=500),
          "An unexpected failure of the adapter (logged there, never shown)."),
    Fault(rate_limited(1.0), "The application is beyond its [limits] request rate "
          "(Retry-After: the seconds until it may retry)."),
)
BAD_INPUT = Fault(ServiceError.invalid_input("presentity"), "A member is missing or invalid.")
SIP_FAILED = (
    Fault(ServiceError.service_error("presence server: 500 Server Internal Error", status=502),
          "The presence server refused the request."),
    Fault(ServiceError.service_error("presence server: timed out", status=504),
          "The presence server did not answer."),
    Fault(sip_busy(5), "Too many SIP requests are outstanding ([sip] window): nothing was "
          "sent; retry (Retry-After: the seconds to wait)."),
)
XCAP_FAILED = (
    Fault(ServiceError.service_error("presence rules: 503 Service Unavailable", status=502),
          "The presence rules could not be read or written."),
    Fault(ServiceError.service_error("presence rules: timed out", status=504),
          "The XCAP server did not answer."),
)
STORE_FAILED = Fault(
    store_unavailable(),
    "The store could not keep the change (its database unreachable, its disk full); "
    "retry (Retry-After: the seconds to wait).",
)
NO_SUBSCRIPTION = Fault(
    ServiceError.not_found("presentity", ALICE),
    "No subscription to that presentity; variables: the part, then the presentity.",
)
ENDPOINT_REFUSED = Fault(
    PolicyError.policy_error("reference.endpoint must be /bayeux/bob-app or below it"),
    "reference.endpoint is not a channel of the calling application.",
)
BAD_WATCHER = Fault(ServiceError.invalid_input("watcher"), "The watcher is not a URI.")

REFERENCE = {
    "correlator": "board-7",
    "endpoint": "/bayeux/bob-app/presence",
    "interfaceName": "PresenceNotification",
}
PRESENCE = [
    {
        "lastChange": "2024-05-01T10:00:00Z",
        "typeAndValue": {"unionElement": "Activity", "activity": "Meeting"},
        "note": "Weekly review until 11:00",
    },
    {"typeAndValue": {"unionElement": "Place", "place": "Office"}},
    {"typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"}},
    {
        "typeAndValue": {
            "unionElement": "Communication",
            "communication": {
                "means": [
                    {"contact": ALICE, "priority": 1.0, "type": "Chat"},
                    {"contact": "tel:+15551234567", "priority": 0.5, "type": "Phone"},
                ]
            },
        }
    },
    {"typeAndValue": {"unionElement": "Other", "other": {"name": "mood", "value": "focused"}}},
]
DECISIONS = [
    {"presenceAttribute": "Activity", "decision": True},
    {"presenceAttribute": "Place", "decision": False},
]
NO_CONTENT = Reply(204, "Done; no body.")
SUBSCRIPTION_BOTH = (SUBSCRIPTION, SUBSCRIPTIONS)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "publish", "Publish", "presentity", "POST", (BASE,),
        "Publishes the presence of the acting address (PUBLISH, PIDF+RPID). The publication "
        "is refreshed before it expires and replaced by the next Publish.",
        body=models.PublishRequest, body_example={"presence": PRESENCE},
        replies=(NO_CONTENT,),
        faults=(Fault(ServiceError.invalid_input("presence[0].typeAndValue.activity"),
                      "The presence array is missing, empty or holds an invalid value."),
                *SIP_FAILED, STORE_FAILED),
    ),
    Operation(
        "withdrawPresence", "Withdraw Presence", "presentity", "DELETE", (BASE,),
        "Withdraws what the acting address published. Without attributes the publication "
        "ends (PUBLISH with Expires 0): watchers see the presentity with nothing published "
        "and unreachable, Get User Presence returns an empty result. With attributes only "
        "those are withdrawn and the others stay published (a modification of the "
        "publication). Stored like Publish: an adapter restarted afterwards publishes "
        "nothing withdrawn. Withdrawing what is not published is no error. Watchers with a "
        "notification are told what went away in statusChanged (see statusChanged). Not in "
        "the OCSG interface: an extension.",
        params=(Param("attributes", "query", "Only these attributes, comma-separated "
                      "(or the parameter repeated); Other withdraws every Other. Empty, "
                      "as absent, means all (the spec's convention for attributes).",
                      {**ATTRIBUTE_LIST, "examples": ["Place,Other"]}),),
        replies=(NO_CONTENT,),
        faults=(Fault(ServiceError.invalid_input("attributes[0]"),
                      "attributes names something that is not an attribute."), *SIP_FAILED,
                STORE_FAILED),
        extension=True,
    ),
    Operation(
        "getOpenSubscriptions", "Get Open Subscriptions", "presentity", "GET", SUBSCRIPTION_BOTH,
        "Lists the watchers who asked to subscribe and are waiting for authorization "
        "(status=open). With filter=watcher as well, only their URIs.",
        params=(STATUS_OPEN.param,),
        replies=(Reply(200, "The waiting watchers.", models.OpenSubscriptionsResult, {"result": [
            {"application": "Team board", "attributes": ["Activity", "Place"], "watcher": BOB}
        ]}),),
        faults=(STATUS_OPEN.fault, *SIP_FAILED),
    ),
    Operation(
        "getMyWatchers", "Get My Watchers", "presentity", "GET", SUBSCRIPTION_BOTH,
        "Lists the URIs of the watchers currently authorized (subscriptions in the active "
        "state): filter=watcher, which is also what GET without status or filter answers.",
        params=(FILTER_WATCHER.param,),
        replies=(Reply(200, "The current watchers.", models.UriResult, {"result": [BOB]}),),
        faults=(FILTER_WATCHER.fault, *SIP_FAILED),
    ),
    Operation(
        "updateSubscriptionAuthorization", "Update Subscription Authorization", "presentity",
        "PUT", SUBSCRIPTION_BOTH,
        "Grants or revokes, attribute by attribute, a watcher's access (presence rules over "
        "XCAP). An attribute not named keeps its earlier decision (none: not granted); when "
        "nothing is left granted the watcher is politely blocked. The watcher need not have "
        "subscribed yet: the rule applies from its first notification, and a rule alone does "
        "not list it among the open subscriptions or the watchers. A subscribed watcher gets "
        "notifySubscription.",
        body=models.UpdateAuthorizationRequest,
        body_example={"watcher": BOB, "decisions": DECISIONS},
        replies=(NO_CONTENT,),
        faults=(Fault(ServiceError.invalid_input("decisions[0].presenceAttribute"),
                      "watcher or decisions missing or invalid."),
                *XCAP_FAILED),
    ),
    Operation(
        "blockSubscription", "Block Subscription", "presentity", "DELETE",
        tuple(f"{p}/{{watcher}}" for p in SUBSCRIPTION_BOTH),
        "Blocks a watcher; its subscription ends and it gets subscriptionEnded (Blocked). "
        "The watcher need not have subscribed yet: a later subscription is refused.",
        params=(Param("watcher", "path", "The watcher's URI, percent-encoded.", URI,
                      required=True, example=BOB),),
        replies=(NO_CONTENT,), faults=(BAD_WATCHER, *XCAP_FAILED),
    ),
    Operation(
        "subscribePresence", "Subscribe Presence", "watcher", "POST", SUBSCRIPTION_BOTH,
        "Asks to subscribe to a presentity's attributes. Nothing is visible until the "
        "presentity authorizes the watcher; the decisions arrive as notifySubscription on "
        "reference.endpoint, and the end of the subscription as subscriptionEnded.",
        body=models.SubscribePresenceRequest,
        body_example={"application": "Team board", "presentity": ALICE,
                      "attributes": ["Activity", "Place"], "reference": REFERENCE},
        replies=(NO_CONTENT,),
        faults=(BAD_INPUT, ENDPOINT_REFUSED, *SIP_FAILED, STORE_FAILED),
        notifications=("notifySubscription", "subscriptionEnded"),
    ),
    Operation(
        "getUserPresence", "Get User Presence", "watcher", "GET", (BASE,),
        "Returns the presentity's current presence, only the attributes both asked for and "
        "authorized. The query object travels as URL-encoded JSON, bare or in double quotes "
        '(?query="%7B…%7D", as OCSG writes it). Accepted too in its place, and not described '
        "as parameters here because OpenAPI cannot make one of two forms required: "
        "?presentity=URI with attributes= given any number of times, each one attribute or "
        "a comma-separated list. Any other form (query twice, query beside presentity or "
        "attributes, presentity twice) is refused with 400 SVC0002 naming the part, never read "
        "in part.",
        params=(
            Param("query", "query", "URL-encoded JSON (OCSG convention).",
                  ref(models.UserPresenceQuery), required=True, as_json=True),
        ),
        replies=(Reply(200, "The authorized attributes.", models.PresenceResult,
                       {"result": PRESENCE[:2]}),),
        faults=(BAD_INPUT, NO_SUBSCRIPTION,
                Fault(ServiceError(FaultCode.INVALID_INPUT,
                                   ["presentity", "sip:friends@example.com is a group"]),
                      "The presentity is a group (a resource list): the result has no "
                      "presentity field to tell its members apart."),
                Fault(PolicyError.privacy_refused(ALICE),
                      "The presentity has not (yet) authorized the watcher.")),
    ),
    Operation(
        "startPresenceNotification", "Start Presence Notification", "watcher", "POST",
        (f"{BASE}/notification",),
        "Starts statusChanged notifications to reference.endpoint: at most one per frequency "
        "(changes in between are coalesced and the latest is sent), at most count of them "
        "(0: no limit), for duration; then statusEnd. checkImmediate true sends the current "
        "state at once and the frequency interval runs from then; false starts the first "
        "interval at the request, so the first notification comes at its end at the "
        "earliest, with the changes since the start (frequency 0: at once). A state "
        "coalesced when duration ends is sent just before statusEnd; the notification sent "
        "at the end of the first interval counts towards count like any other. criteria "
        "and attributes filter which changes are sent; with Reachable or UnReachable a "
        "change of reachability is itself a change (changedAttributes may then be empty). "
        "On a group (a resource list the presence server serves, RFC 4662) each "
        "statusChanged names the member as presentity, with the group's correlator; "
        "frequency and count hold across the members (README, Groups).",
        body=models.StartNotificationRequest,
        body_example={"presentity": ALICE, "checkImmediate": True, "criteria": "Reachable",
                      "frequency": {"metric": "Second", "units": 30}, "reference": REFERENCE,
                      "attributes": ["Activity"], "count": 10,
                      "duration": {"metric": "Hour", "units": 2}},
        replies=(Reply(201, "Started; result lists the presentities that could not be "
                       "subscribed (of a group: its members not active once the list's "
                       "state is in).", models.UriResult, {"result": []},
                       headers=(("Location", "The Bayeux server URL, e.g. "
                                 "http://127.0.0.1:8080/cometd"),)),),
        faults=(BAD_INPUT,
                Fault(ServiceError.invalid_input_values("frequency.metric", list(METRICS)),
                      "A metric or a criterion that does not exist."),
                Fault(ServiceError.duplicate_correlator("board-7", "reference.correlator"),
                      "The correlator is already in use by this application (409)."),
                ENDPOINT_REFUSED,
                Fault(PolicyError.policy_error("duration longer than 86400 s is not allowed"),
                      "duration beyond the configured maximum."),
                Fault(PolicyError(FaultCode.UNLIMITED_NOTIFICATIONS),
                      "count 0 while the configuration forbids unlimited notifications."),
                Fault(PolicyError(FaultCode.TOO_MANY_NOTIFICATIONS),
                      "count above the configured maximum."),
                Fault(PolicyError(FaultCode.INVALID_FREQUENCY),
                      "frequency below the configured minimum."),
                *SIP_FAILED, STORE_FAILED),
        notifications=("statusChanged", "statusEnd", "subscriptionEnded"),
    ),
    Operation(
        "endPresenceNotification", "End Presence Notification", "watcher", "DELETE",
        (f"{BASE}/notification/{{correlator}}",),
        "Stops the notifications of that correlator (no statusEnd); the subscription ends "
        "when nothing else needs it.",
        params=(Param("correlator", "path", "The correlator given at the start.",
                      {"type": "string"}, required=True, example=REFERENCE["correlator"]),),
        replies=(NO_CONTENT,),
        faults=(Fault(ServiceError.not_found("correlator", "board-7"),
                      "No notification with that correlator for this application; "
                      "variables: the part, then the correlator."), STORE_FAILED),
    ),
    Operation(
        "endSubscription", "End Subscription", "watcher", "DELETE", SUBSCRIPTION_BOTH,
        "Ends the watcher's own subscription to a presentity (unSUBSCRIBE) and every "
        "notification started for it. Not in the OCSG interface: an extension.",
        params=(Param("presentity", "query", "The presentity's URI.", URI, required=True,
                      example=ALICE),),
        replies=(NO_CONTENT,), faults=(BAD_INPUT, NO_SUBSCRIPTION, STORE_FAILED), extension=True,
    ),
    Operation(
        "getOpenApiDocument", "OpenAPI document", "description", "GET", (DOCUMENT_PATH,),
        "This API as an OpenAPI 3.1 document. No authentication.",
        replies=(Reply(200, "The document.", media="application/json"),),
    ),
    Operation(
        "getServiceDescription", "Service description", "description", "GET", (PAGE_PATH,),
        "This API as a readable page. No authentication.",
        replies=(Reply(200, "The page.", media="text/html"),),
    ),
)

#: The notifications published on Bayeux: name → (schema, when, example).
NOTIFICATIONS: dict[str, tuple[type[Struct], str, dict[str, Any]]] = {
    "statusChanged": (models.StatusChanged, "The presentity's state changed (Start Presence "
                      "Notification). changedAttributes holds the attributes that changed, "
                      "and those told before that went away (withdrawn, the publication "
                      "ended or expired, the presentity offline) in one form per type: "
                      "ActivityNone, PlaceNone, PrivacyNone, SphereNone, a Communication "
                      "whose means is empty, an Other of the same name whose value is "
                      "empty; lastChange is when the adapter learned it.",
                      {"statusChanged": {
                          "correlator": "board-7", "presentity": ALICE,
                          "changedAttributes": PRESENCE[:1]}}),
    "statusEnd": (models.StatusEnd, "count or duration is reached.",
                  {"statusEnd": {"correlator": "board-7"}}),
    "notifySubscription": (models.NotifySubscription, "The presentity decided on the watcher's "
                           "subscription.", {"notifySubscription": {
                               "presentity": ALICE, "decisions": DECISIONS}}),
    "subscriptionEnded": (models.SubscriptionEnded, "The subscription ended: the presentity "
                          "blocked the watcher (Blocked) or it could not be kept (Timeout).",
                          {"subscriptionEnded": {"presentity": ALICE, "reason": "Blocked"}}),
}


# -- the OpenAPI document ---------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One OpenAPI operation: a path and method, served by one or more spec operations.

    Get Open Subscriptions and Get My Watchers share ``GET …/subscription`` (told apart
    by the query), and OpenAPI allows one operation per path and method.
    """

    path: str
    method: str
    operations: tuple[Operation, ...]

    @property
    def operation_id(self) -> str:
        ids = [op.id for op in self.operations]
        name = ids[0] + "".join("Or" + i[0].upper() + i[1:] for i in ids[1:])
        return name + ("Plural" if self.path.startswith(SUBSCRIPTIONS) else "")


def endpoints() -> Iterator[Endpoint]:
    seen: dict[tuple[str, str], list[Operation]] = {}
    for op in OPERATIONS:
        for path in op.paths:
            seen.setdefault((path, op.method), []).append(op)
    for (path, method), ops in seen.items():
        yield Endpoint(path, method, tuple(ops))


def _example_map(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {name: {"value": value} for name, value in pairs}


def _openapi_operation(endpoint: Endpoint) -> Schema:
    ops = endpoint.operations
    first = ops[0]
    out: Schema = {
        "operationId": endpoint.operation_id,
        "summary": " / ".join(op.name for op in ops),
        "description": "\n\n".join(f"**{op.name}**: {op.description}" for op in ops)
        if len(ops) > 1 else first.description,
        "tags": [first.role],
        "x-role": first.role,
    }
    if first.extension:
        out["x-extension"] = True
    if endpoint.path.startswith(SUBSCRIPTIONS):
        out["description"] += "\n\nOCSG 4.1's plural spelling of the same operation."
    if first.public:
        out["security"] = []
    params: list[Schema] = [] if first.public else [{"$ref": "#/components/parameters/Identity"}]
    names = set()
    for op in ops:
        for p in op.params:
            if p.name in names:
                continue
            names.add(p.name)
            param: Schema = {"name": p.name, "in": p.where, "description": p.description,
                             "required": p.required and (p.where == "path" or len(ops) == 1)}
            if p.as_json:
                param["content"] = {"application/json": {"schema": p.schema}}
            else:
                param["schema"] = p.schema
                if p.example is not None:
                    param["example"] = p.example
            params.append(param)
    if params:
        out["parameters"] = params
    if first.body:
        out["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": ref(first.body), "example": first.body_example}}}
    responses: dict[str, Schema] = {}
    for status in sorted({r.status for op in ops for r in op.replies}):
        replies = [(op, r) for op in ops for r in op.replies if r.status == status]
        response: Schema = {"description": " / ".join(r.description for _, r in replies)}
        headers = {name: {"description": text, "schema": {"type": "string"}}
                   for _, r in replies for name, text in r.headers}
        if headers:
            response["headers"] = headers
        typed = [(op, r) for op, r in replies if r.status != 204]
        if typed:
            media: Schema = {}
            refs = [ref(r.schema) for _, r in typed if r.schema]
            if refs:
                # anyOf: an empty result is both an OpenSubscriptionsResult and a UriResult.
                media["schema"] = refs[0] if len(refs) == 1 else {"anyOf": refs}
            examples = [(op.id, r.example) for op, r in typed if r.example is not None]
            if examples:
                media["examples"] = _example_map(examples)
            response["content"] = {typed[0][1].media: media}
        responses[str(status)] = response
    faults = list(dict.fromkeys(f for op in ops for f in op.all_faults()))
    for status in sorted({f.error.status for f in faults}):
        same = [f for f in faults if f.error.status == status]
        responses[str(status)] = {
            "description": " ".join(dict.fromkeys(f.when for f in same)),
            "content": {"application/json": {
                "schema": ref(models.RequestError),
                "examples": _example_map(
                    [(f"{f.error.code.message_id}-{i}", f.error.body()) for i, f in enumerate(same)]
                ),
            }},
        }
    if any(op.notifications for op in ops):
        out["x-bayeux-notifications"] = sorted({n for op in ops for n in op.notifications})
    out["responses"] = responses
    return out


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document served at ``/openapi.json``."""
    paths: dict[str, Schema] = {}
    for endpoint in endpoints():
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _openapi_operation(
            endpoint
        )
    components = models.schema_components()
    # An example that names a real presentity, so that generated queries reach one.
    components["UserPresenceQuery"]["examples"] = [
        {"presentity": ALICE, "attributes": ["Activity", "Place"]}
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "presence-adapter: RESTful Presence",
            "version": version("presence-adapter"),
            "description": INTRODUCTION,
        },
        "tags": [
            {"name": "presentity", "description": "Publishing, and deciding who may watch."},
            {"name": "watcher", "description": "Watching presentities; notifications on "
                                               "Bayeux."},
            {"name": "description", "description": "This description itself."},
        ],
        "security": [{"basic": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                          "description": "The application instance account."}},
            "parameters": {"Identity": {
                "name": IDENTITY_HEADER, "in": "header", "required": False, "schema": URI,
                "description": "The SIP address the request acts as, one of the account's; "
                               "default: the account's first address.",
            }},
        },
        "x-bayeux-notifications": {
            name: {"description": when, "schema": ref(schema), "example": example}
            for name, (schema, when, example) in NOTIFICATIONS.items()
        },
    }


INTRODUCTION = (
    "The OCSG RESTful Presence interface over SIP SIMPLE. Requests authenticate an "
    "application instance account with HTTP Basic and act as one of its SIP addresses "
    f"(header {IDENTITY_HEADER}; default: its first). Bodies are JSON. Notifications are "
    "published on the adapter's Bayeux server (/cometd) to the channel given as "
    "reference.endpoint, below /bayeux/<account id>. Errors carry a requestError body with "
    "a Parlay X messageId. /rest/presence/subscriptions (OCSG 4.1) is the same as "
    "/rest/presence/subscription."
)


# -- the service description page ---------------------------------------------------

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
section{border-top:1px solid #ccc;padding-top:.5rem;margin-top:1.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f5f5f5;padding:.6rem;overflow-x:auto}
.method{font-weight:bold;color:#fff;background:#555;padding:0 .4rem;border-radius:3px}
.role{font-size:12px;border:1px solid #888;border-radius:3px;padding:0 .3rem}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=False)  # text only; attribute values are our ids


def _json(value: Any) -> str:
    return f"<pre>{_e(json.dumps(value, indent=2))}</pre>"


def _operation_html(op: Operation, ids: dict[tuple[str, str], str]) -> Iterator[str]:
    badge = op.role + (", extension" if op.extension else "")
    yield f'<section id="{_e(op.id)}"><h3>{_e(op.name)} <span class="role">{_e(badge)}</span></h3>'
    for path in op.paths:
        yield (f'<p><span class="method">{_e(op.method)}</span> <code>{_e(path)}</code> '
               f"(operationId <code>{_e(ids[path, op.method])}</code>)</p>")
    yield f"<p>{_e(op.description)}</p>"
    if op.params:
        yield "<table><tr><th>parameter</th><th>in</th><th>required</th><th>meaning</th></tr>"
        for p in op.params:
            yield (f"<tr><td><code>{_e(p.name)}</code></td><td>{_e(p.where)}</td>"
                   f"<td>{'yes' if p.required else 'no'}</td><td>{_e(p.description)}</td></tr>")
        yield "</table>"
    if op.body:
        yield f"<h4>Request body (<code>{_e(op.body.__name__)}</code>)</h4>{_json(op.body_example)}"
    for r in op.replies:
        yield f"<h4>{r.status} {_e(r.description)}</h4>"
        for name, text in r.headers:
            yield f"<p><code>{_e(name)}</code>: {_e(text)}</p>"
        if r.example is not None:
            yield _json(r.example)
    if op.notifications:
        links = ", ".join(f'<a href="#{n}"><code>{n}</code></a>' for n in op.notifications)
        yield f"<p>Notifications on reference.endpoint: {links}</p>"
    faults = op.all_faults()
    if faults:
        yield "<h4>Errors</h4><table><tr><th>status</th><th>messageId</th><th>when</th>"
        yield "<th>body</th></tr>"
        for f in faults:
            yield (f"<tr><td>{f.error.status}</td><td>{_e(f.error.code.message_id)}</td>"
                   f"<td>{_e(f.when)}</td><td><code>{_e(json.dumps(f.error.body()))}</code>"
                   "</td></tr>")
        yield "</table>"
    yield "</section>"


def service_description_html() -> str:
    """The readable, self-contained page served at ``/rest/presence/index.html``."""
    ids = {(e.path, e.method): e.operation_id for e in endpoints()}
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<title>RESTful Presence: service description</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>RESTful Presence</h1>",
        f"<p>{_e(INTRODUCTION)}</p>",
        f'<p>Machine-readable: <a href="{DOCUMENT_PATH}"><code>{DOCUMENT_PATH}</code></a> '
        "(OpenAPI 3.1).</p>",
    ]
    titles = {"presentity": "Presentity operations", "watcher": "Watcher operations",
              "description": "Service description"}
    for role, title in titles.items():
        parts.append(f"<h2>{title}</h2>")
        for op in OPERATIONS:
            if op.role == role:
                parts.extend(_operation_html(op, ids))
    parts.append("<h2>Notifications</h2>")
    for name, (_, when, example) in NOTIFICATIONS.items():
        parts.append(f'<section id="{name}"><h3><code>{name}</code></h3><p>{_e(when)}</p>')
        parts.append(f"{_json(example)}</section>")
    parts.append("<h2>Error codes</h2><table><tr><th>messageId</th><th>text</th></tr>")
    for code in FaultCode:
        parts.append(f"<tr><td>{code.message_id}</td><td>{_e(code.text)}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def openapi_routes() -> list[BaseRoute]:
    """``GET /openapi.json`` and ``GET /rest/presence/index.html``, rendered once."""
    document = json.dumps(openapi_document()).encode()
    page = service_description_html()

    async def serve_document(request: Request) -> Response:
        return Response(document, media_type=JSONResponse.media_type)

    async def serve_page(request: Request) -> Response:
        return HTMLResponse(page)

    return [
        Route(DOCUMENT_PATH, serve_document, methods=["GET"]),
        Route(PAGE_PATH, serve_page, methods=["GET"]),
    ]
