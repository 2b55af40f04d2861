"""The REST API's request and response bodies, declared once as typed structs.

Each body the API reads or writes is a msgspec struct here.  From these and
nothing else come the validation of what arrives (:func:`decode`, one
decoder compiled per body at import, decoding in C), the part an invalid
input names in its SVC0002 ``variables`` (the path msgspec reports, in the
spec's ``decisions[0].decision`` notation), and the OpenAPI components
(:func:`schema_components`, which adapter.openapi serves).

The structs describe what the adapter accepts, which is a little more than
the spec's letter: ``null`` for an optional member counts as absent (as
serialisers that write every field send it), and the scalars the spec's own
samples quote (``"Boolean"``, ``"Integer"``, ``"Float"``) take the quoted
form too.  Lists of attributes or criteria may be a comma-separated string.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

from adapter.errors import FaultCode, ServiceError
from adapter.notification import Criterion
from adapter.presence_json import (
    PresenceItem,
    Uri,
    comma_list,
    comma_list_pattern,
    matching,
    part_of,
    schema_pattern,
)
from pidf import AttributeType

__all__ = [
    "METRICS",
    "Attributes",
    "Decision",
    "NotifySubscription",
    "OpenSubscription",
    "OpenSubscriptionsResult",
    "PresenceResult",
    "PublishRequest",
    "Reference",
    "RequestError",
    "StartNotificationRequest",
    "StatusChanged",
    "StatusEnd",
    "SubscribePresenceRequest",
    "SubscriptionEnded",
    "TimeMetric",
    "UpdateAuthorizationRequest",
    "UriResult",
    "UserPresenceQuery",
    "attribute_kinds",
    "boolean",
    "count",
    "criteria",
    "decode",
    "schema_components",
]


class Metric(enum.Enum):
    """Parlay X TimeMetric units."""

    MILLISECOND = "Millisecond"
    SECOND = "Second"
    MINUTE = "Minute"
    HOUR = "Hour"
    DAY = "Day"
    WEEK = "Week"
    MONTH = "Month"
    YEAR = "Year"


#: Each metric in seconds (a month of 30 days, a year of 365).
METRICS: dict[str, float] = {
    "Millisecond": 0.001,
    "Second": 1.0,
    "Minute": 60.0,
    "Hour": 3600.0,
    "Day": 86400.0,
    "Week": 7 * 86400.0,
    "Month": 30 * 86400.0,
    "Year": 365 * 86400.0,
}

# -- scalars the spec's samples quote ----------------------------------------------

Boolean = bool | Annotated[
    str,
    matching("^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])$",
             description='A boolean; the strings "true" and "false" are accepted too.'),
]
Count = Annotated[int, Meta(ge=0, description="A non-negative integer.")] | Annotated[
    str, matching("^[0-9]+$", description="A non-negative integer, quoted.")
]

#: An empty array (or none) means all attributes; in a string, comma-separated.
Attributes = list[AttributeType] | Annotated[
    str,
    matching(
        comma_list_pattern([k.value for k in AttributeType], empty_items=True),
        description="Attributes, comma-separated.",
    ),
]
Criteria = list[Criterion] | Annotated[
    str,
    matching(
        comma_list_pattern([c.value for c in Criterion], empty_items=False),
        description="Criteria, comma-separated.",
    ),
]


def boolean(value: bool | str | None, default: bool) -> bool:
    if value is None:
        return default
    return value if isinstance(value, bool) else value.lower() == "true"


def count(value: int | str | None, default: int) -> int:
    return default if value is None else int(value)


def attribute_kinds(value: list[AttributeType] | str | None) -> frozenset[AttributeType]:
    """The spec's ``attributes`` as decoded: absent or empty = all."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(AttributeType(item) for item in comma_list(value))
    return frozenset(value)


def criteria(value: list[Criterion] | str | None) -> frozenset[Criterion]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return frozenset()
    if isinstance(value, str):  # the pattern let through only criteria, comma-separated
        return frozenset(Criterion(item.strip()) for item in value.split(","))
    return frozenset(value)


COMPONENTS = "#/components/schemas/"

# -- requests --------------------------------------------------------------------------


class PublishRequest(Struct):
    presence: Annotated[
        list[PresenceItem],
        Meta(min_length=1, description="Applied in order: of two values for one attribute "
             "(Other: one name) the later is published."),
    ]


class Decision(Struct):
    presenceAttribute: AttributeType
    decision: Boolean


class UpdateAuthorizationRequest(Struct):
    watcher: Uri
    decisions: Annotated[
        list[Decision],
        Meta(min_length=1, description="Applied in order: of two decisions on one attribute "
             "the later counts."),
    ]


InterfaceName = Annotated[str, Meta(description="Identifies the kind of notification.")]


class Reference(Struct, kw_only=True):
    correlator: Annotated[str, Meta(min_length=1)]
    endpoint: Annotated[
        str, Meta(pattern="^/", description="A Bayeux channel: /bayeux/<account id> or below it.")
    ]
    interfaceName: InterfaceName | None = None


Application = Annotated[str, Meta(description="A descriptive name; informational only.")]


class SubscribePresenceRequest(Struct, kw_only=True):
    application: Application | None = None
    presentity: Uri
    attributes: Attributes | None = None
    reference: Reference


class UserPresenceQuery(Struct, kw_only=True):
    presentity: Uri
    attributes: Attributes | None = None


class TimeMetric(Struct):
    metric: Metric
    units: Count

    @property
    def seconds(self) -> float:
        return METRICS[self.metric.value] * int(self.units)


class StartNotificationRequest(Struct, kw_only=True):
    presentity: Uri
    checkImmediate: Boolean | None = None
    criteria: Annotated[Criteria, Meta(description="Notify only these changes.")] | None = None
    frequency: TimeMetric | None = None
    reference: Reference
    attributes: Attributes | None = None
    count: Count | None = None
    duration: TimeMetric | None = None


# -- answers and notifications -------------------------------------------------------------


class PresenceResult(Struct):
    result: list[PresenceItem]


class OpenSubscription(Struct):
    application: Application
    attributes: list[AttributeType]
    watcher: Uri


class OpenSubscriptionsResult(Struct):
    result: list[OpenSubscription]


class UriResult(Struct):
    result: list[Uri]


class MeansWithdrawn(Struct):
    means: Annotated[list[Any], Meta(max_length=0)]


class CommunicationWithdrawnValue(Struct, tag_field="unionElement", tag="Communication"):
    communication: MeansWithdrawn


class CommunicationWithdrawn(Struct):
    """What statusChanged says of a Communication that went away: no means (a
    Publish refuses it; DELETE /rest/presence withdraws)."""

    lastChange: Annotated[str, Meta(extra_json_schema={"format": "date-time"},
                                    description="When the adapter learned it.")]
    typeAndValue: CommunicationWithdrawnValue


class StatusChangedBody(Struct):
    correlator: str
    presentity: Uri
    # Or a CommunicationWithdrawn (see schema_components).
    changedAttributes: list[PresenceItem]


class StatusChanged(Struct):
    statusChanged: StatusChangedBody


class StatusEndBody(Struct):
    correlator: str


class StatusEnd(Struct):
    statusEnd: StatusEndBody


class DecisionMade(Struct):
    presenceAttribute: AttributeType
    decision: bool


class NotifySubscriptionBody(Struct):
    presentity: Uri
    decisions: list[DecisionMade]


class NotifySubscription(Struct):
    notifySubscription: NotifySubscriptionBody


class SubscriptionEndedBody(Struct):
    presentity: Uri
    reason: Annotated[str, Meta(examples=["Blocked", "Timeout"])]


class SubscriptionEnded(Struct):
    subscriptionEnded: SubscriptionEndedBody


class Fault(Struct):
    messageId: Annotated[str, Meta(extra_json_schema={
        "enum": [code.message_id for code in FaultCode]})]
    text: Annotated[str, Meta(description="%1, %2 … stand for the variables, in order.")]
    variables: list[str]


class RequestError(Struct):
    """adapter.errors.RestError.body(): one member, the kind of fault."""

    requestError: Annotated[dict[str, Fault], Meta(
        min_length=1, max_length=1,
        extra_json_schema={"propertyNames": {"enum": ["serviceException", "policyException"]}},
    )]


#: Every body the API reads or writes, for the OpenAPI components.
MODELS: tuple[type[Struct], ...] = (
    PublishRequest,
    PresenceResult,
    OpenSubscriptionsResult,
    UriResult,
    UpdateAuthorizationRequest,
    SubscribePresenceRequest,
    UserPresenceQuery,
    StartNotificationRequest,
    StatusChanged,
    CommunicationWithdrawn,
    StatusEnd,
    NotifySubscription,
    SubscriptionEnded,
    RequestError,
)


def schema_components() -> dict[str, Any]:
    """The components/schemas of the OpenAPI document (JSON Schema 2020-12)."""
    _, components = msgspec.json.schema_components(MODELS, ref_template=COMPONENTS + "{name}")
    # A withdrawn Communication has no means, which a PresenceItem refuses, and
    # two structs of one tag make no union msgspec can decode: it is said here.
    changed = components["StatusChangedBody"]["properties"]["changedAttributes"]
    withdrawn = {"$ref": f"{COMPONENTS}CommunicationWithdrawn"}
    changed["items"] = {"anyOf": [changed["items"], withdrawn]}
    return _schema_patterns(components)  # type: ignore[no-any-return]


def schema_of(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one annotated type (a parameter's)."""
    return _schema_patterns(msgspec.json.schema(annotation))  # type: ignore[no-any-return]


def _schema_patterns(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            key: schema_pattern(value) if key == "pattern" else _schema_patterns(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_schema_patterns(value) for value in schema]
    return schema


# -- decoding --------------------------------------------------------------------------

T = TypeVar("T")

#: Parts whose fault lists the valid values (SVC0003) rather than only naming the part.
VALUES: dict[str, list[str]] = {
    "criteria": [c.value for c in Criterion],
    "frequency.metric": list(METRICS),
    "duration.metric": list(METRICS),
}
_INDEX = re.compile(r"\[\d+\]")


def decode(decoder: msgspec.json.Decoder[T], raw: bytes | str, part: str = "body") -> T:
    """``raw`` decoded by ``decoder``, or the SVC0002 (SVC0003) naming what is wrong.

    Whether it is JSON at all is said first, as a JSON parser would: the typed
    decoder stops at the first value of the wrong type.
    """
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        error = exc
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(exc, part) from None
    try:
        value = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise _not_json(exc, part) from None
    if not isinstance(value, dict):
        raise ServiceError.invalid_input(f"{part} (not a JSON object)")
    path = part_of(error)
    named = part_of(error, "" if part == "body" else part) or part
    valid = VALUES.get(_INDEX.sub("", path))
    if valid is not None:  # the member, not an item of it: the valid values are its
        raise ServiceError.invalid_input_values(_INDEX.sub("", named), valid)
    raise ServiceError.invalid_input(named)


def _not_json(exc: Exception, part: str) -> ServiceError:
    # The decoder recurses once per level of nesting, as a parser would.
    reason = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
    return ServiceError.invalid_input(f"{part} ({reason})")


def decoder(model: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(model)


def encode(value: Struct) -> bytes:
    return _ENCODER.encode(value)


_ENCODER = msgspec.json.Encoder()
