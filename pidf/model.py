"""The presence data of the OCSG RESTful Presence interface as typed values.

Every enumerated value is spelt exactly as in the spec's "Data Common to
Operations" section, so `Enum.value` *is* the JSON text. The JSON shape
(``{"typeAndValue": …, "lastChange": …, "note": …}``) exists only in
`PresenceAttribute.from_json` / `PresenceAttribute.to_json`; everything else
in the project passes these frozen values around.

Instants: ``lastChange`` is an ISO 8601 date-time in JSON and an aware
`datetime` in UTC here. Input without an offset is taken as UTC; output is
always UTC with a ``Z`` suffix, seconds precision, plus the fractional part only
when it is not zero (trailing zeros dropped), so the exact instant survives
JSON → PIDF → JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

from pidf.errors import ValidationError


class AttributeType(Enum):
    """The spec's unionElement / presenceAttribute / attributes values."""

    ACTIVITY = "Activity"
    PLACE = "Place"
    PRIVACY = "Privacy"
    SPHERE = "Sphere"
    COMMUNICATION = "Communication"
    OTHER = "Other"

    @classmethod
    def parse(cls, text: object, where: str = "presenceAttribute") -> AttributeType:
        return _parse_enum(cls, text, where)


class Activity(Enum):
    ACTIVITY_NONE = "ActivityNone"
    AVAILABLE = "Available"
    BUSY = "Busy"
    DO_NOT_DISTURB = "DoNotDisturb"
    ON_THE_PHONE = "OnThePhone"
    STEERING = "Steering"
    MEETING = "Meeting"
    AWAY = "Away"
    MEAL = "Meal"
    PERMANENT_ABSENCE = "PermanentAbsence"
    HOLIDAY = "Holiday"
    PERFORMANCE = "Performance"
    IN_TRANSIT = "InTransit"
    TRAVEL = "Travel"
    SLEEPING = "Sleeping"
    ACTIVITY_OTHER = "ActivityOther"


class Place(Enum):
    PLACE_NONE = "PlaceNone"
    HOME = "Home"
    OFFICE = "Office"
    PUBLIC_TRANSPORT = "PublicTransport"
    STREET = "Street"
    OUTDOORS = "Outdoors"
    PUBLIC_PLACE = "PublicPlace"
    HOTEL = "Hotel"
    THEATRE = "Theatre"
    RESTAURANT = "Restaurant"
    SCHOOL = "School"
    INDUSTRIAL = "Industrial"
    QUIET = "Quiet"
    NOISY = "Noisy"
    AIRCRAFT = "Aircraft"
    SHIP = "Ship"
    BUS = "Bus"
    STATION = "Station"
    MALL = "Mall"
    AIRPORT = "Airport"
    TRAIN = "Train"
    PLACE_OTHER = "PlaceOther"


class Privacy(Enum):
    PRIVACY_NONE = "PrivacyNone"
    PRIVACY_PUBLIC = "PrivacyPublic"
    PRIVACY_PRIVATE = "PrivacyPrivate"
    PRIVACY_QUIET = "PrivacyQuiet"
    PRIVACY_OTHER = "PrivacyOther"


class Sphere(Enum):
    SPHERE_NONE = "SphereNone"
    SPHERE_WORK = "SphereWork"
    SPHERE_HOME = "SphereHome"
    SPHERE_OTHER = "SphereOther"


class MeansType(Enum):
    PHONE = "Phone"
    CHAT = "Chat"
    SMS = "Sms"
    VIDEO = "Video"
    WEB = "Web"
    EMAIL = "Email"
    MMS = "Mms"
    MEANS_OTHER = "MeansOther"


# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":".
# No white space and no control characters (RFC 3986 §2 allows neither), nor what
# XML cannot carry (XML 1.0 §2.2): URIs go into PIDF, pres-rules and SIP headers.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]+\Z")


def is_uri(text: str) -> bool:
    """True when `text` is an absolute URI (scheme ":" and a non-empty rest)."""
    return bool(_URI.match(text))


@dataclass(frozen=True)
class CommunicationMeans:
    """One means of communication: contact URI, priority 0.0–1.0, type.

    Priority travels in PIDF as a ``qvalue`` (RFC 3863 §4.1.5, RFC 3261 §25.1:
    ``"0" [ "." 0*3DIGIT ] / "1" [ "." 0*3("0") ]``), so at most three decimals
    are accepted; more would not come back exactly.
    """

    contact: str
    priority: float
    type: MeansType

    def __post_init__(self) -> None:
        if not isinstance(self.contact, str) or not is_uri(self.contact):
            raise ValidationError(f"contact {self.contact!r} is not a URI", "contact")
        p = self.priority
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
            raise ValidationError(f"priority {p!r} is not a number", "priority")
        if not 0.0 <= p <= 1.0:
            raise ValidationError(f"priority {p!r} is outside 0.0–1.0", "priority")
        # A multiple of 0.001 up to binary noise (0.009000000000000001 is 9 × 0.001),
        # as JSON Schema's multipleOf reads it; kept as the nearest float to it.
        if abs(p * 1000 - round(p * 1000)) > 1e-6:
            raise ValidationError(
                f"priority {p!r} has more than three decimals (PIDF qvalue)", "priority"
            )
        object.__setattr__(self, "priority", round(float(p), 3))
        if not isinstance(self.type, MeansType):
            raise ValidationError(f"type {self.type!r} is not a means type", "type")


@dataclass(frozen=True)
class Communication:
    """The presentity's means of communication (at least one)."""

    means: tuple[CommunicationMeans, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "means", tuple(self.means))
        if not self.means:
            raise ValidationError("communication.means must not be empty", "communication.means")


@dataclass(frozen=True)
class Other:
    """Arbitrary name/value information."""

    name: str
    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError("other.name must be a non-empty string", "other.name")
        if not isinstance(self.value, str):
            raise ValidationError("other.value must be a string", "other.value")
        for part, text in (("name", self.name), ("value", self.value)):
            if not _xml_safe(text):
                raise ValidationError(
                    f"other.{part} contains characters XML cannot carry", f"other.{part}"
                )


Value = Activity | Place | Privacy | Sphere | Communication | Other

_TYPE_OF: dict[type, AttributeType] = {
    Activity: AttributeType.ACTIVITY,
    Place: AttributeType.PLACE,
    Privacy: AttributeType.PRIVACY,
    Sphere: AttributeType.SPHERE,
    Communication: AttributeType.COMMUNICATION,
    Other: AttributeType.OTHER,
}

# JSON member of typeAndValue that carries each union element.
_MEMBER: dict[AttributeType, str] = {
    AttributeType.ACTIVITY: "activity",
    AttributeType.PLACE: "place",
    AttributeType.PRIVACY: "privacy",
    AttributeType.SPHERE: "sphere",
    AttributeType.COMMUNICATION: "communication",
    AttributeType.OTHER: "other",
}


@dataclass(frozen=True)
class PresenceAttribute:
    """One element of the spec's presence arrays: typeAndValue + lastChange + note."""

    value: Value
    last_change: datetime | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if type(self.value) not in _TYPE_OF:
            raise ValidationError(f"{self.value!r} is not a presence value", "typeAndValue")
        if self.last_change is not None:
            object.__setattr__(self, "last_change", normalise_instant(self.last_change))
        if self.note is not None:
            if not isinstance(self.note, str):
                raise ValidationError("note must be a string", "note")
            if not _xml_safe(self.note):
                raise ValidationError("note contains characters XML cannot carry", "note")

    @property
    def type(self) -> AttributeType:
        return _TYPE_OF[type(self.value)]

    # -- the REST JSON edge -------------------------------------------------

    @classmethod
    def from_json(cls, obj: object) -> PresenceAttribute:
        """Validate one REST presence element; raises ValidationError."""
        if not isinstance(obj, Mapping):
            raise ValidationError("a presence element must be a JSON object", "presence")
        tav = obj.get("typeAndValue")
        if not isinstance(tav, Mapping):
            raise ValidationError("typeAndValue is required and must be an object", "typeAndValue")
        value = _value_from_json(tav)
        last_change = None
        if obj.get("lastChange") is not None:
            last_change = parse_instant(obj["lastChange"], "lastChange")
        note = obj.get("note")
        if note is not None and not isinstance(note, str):
            raise ValidationError("note must be a string", "note")
        return cls(value=value, last_change=last_change, note=note)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.last_change is not None:
            out["lastChange"] = format_instant(self.last_change)
        out["typeAndValue"] = _value_to_json(self.value)
        if self.note is not None:
            out["note"] = self.note
        return out


def attributes_from_json(items: object) -> tuple[PresenceAttribute, ...]:
    """Validate the REST ``presence`` array."""
    if not isinstance(items, list):
        raise ValidationError("presence must be an array", "presence")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(PresenceAttribute.from_json(item))
        except ValidationError as exc:
            where = f"presence[{i}].{exc.field}" if exc.field else f"presence[{i}]"
            raise ValidationError(str(exc), where) from None
    return tuple(out)


def attributes_to_json(attributes: Iterable[PresenceAttribute]) -> list[dict[str, Any]]:
    return [a.to_json() for a in attributes]


E = TypeVar("E", bound=Enum)


def _parse_enum(cls: type[E], text: object, where: str) -> E:
    if not isinstance(text, str):
        raise ValidationError(f"{where} must be a string", where)
    try:
        return cls(text)
    except ValueError:
        allowed = "|".join(str(m.value) for m in cls)
        raise ValidationError(f"{where} {text!r} is not one of {allowed}", where) from None


def _value_from_json(tav: Mapping[str, Any]) -> Value:
    kind = AttributeType.parse(tav.get("unionElement"), "typeAndValue.unionElement")
    member = _MEMBER[kind]
    present = [m for m in _MEMBER.values() if tav.get(m) is not None]
    if member not in present:
        raise ValidationError(
            f"unionElement is {kind.value} but typeAndValue has no {member!r} member",
            f"typeAndValue.{member}",
        )
    extra = [m for m in present if m != member]
    if extra:
        raise ValidationError(
            f"unionElement is {kind.value} but typeAndValue also carries {', '.join(extra)}",
            f"typeAndValue.{extra[0]}",
        )
    raw = tav[member]
    where = f"typeAndValue.{member}"
    if kind is AttributeType.ACTIVITY:
        return _parse_enum(Activity, raw, where)
    if kind is AttributeType.PLACE:
        return _parse_enum(Place, raw, where)
    if kind is AttributeType.PRIVACY:
        return _parse_enum(Privacy, raw, where)
    if kind is AttributeType.SPHERE:
        return _parse_enum(Sphere, raw, where)
    if kind is AttributeType.COMMUNICATION:
        return _communication_from_json(raw, where)
    if not isinstance(raw, Mapping):
        raise ValidationError("other must be an object with name and value", where)
    name, text = raw.get("name"), raw.get("value")
    if not isinstance(name, str) or not isinstance(text, str):
        raise ValidationError("other.name and other.value are required strings", where)
    try:
        return Other(name=name, value=text)
    except ValidationError as exc:
        raise ValidationError(str(exc), f"typeAndValue.{exc.field}") from None


def _communication_from_json(raw: object, where: str) -> Communication:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("means"), list):
        raise ValidationError("communication must be an object with a means array", where)
    means = []
    for i, m in enumerate(raw["means"]):
        at = f"{where}.means[{i}]"
        if not isinstance(m, Mapping):
            raise ValidationError("a means must be an object", at)
        contact = m.get("contact")
        if not isinstance(contact, str):
            raise ValidationError("means.contact is a required URI string", f"{at}.contact")
        priority = m.get("priority")
        # The spec's sample shows "Float" in quotes; accept a numeric string too.
        if isinstance(priority, str):
            try:
                priority = float(priority)
            except ValueError:
                raise ValidationError(
                    f"priority {m['priority']!r} is not a number", f"{at}.priority"
                ) from None
        if priority is None:
            raise ValidationError("means.priority is required", f"{at}.priority")
        mtype = _parse_enum(MeansType, m.get("type"), f"{at}.type")
        try:
            means.append(CommunicationMeans(contact=contact, priority=priority, type=mtype))
        except ValidationError as exc:
            raise ValidationError(str(exc), f"{at}.{exc.field}") from None
    return Communication(means=tuple(means))


def _value_to_json(value: Value) -> dict[str, Any]:
    kind = _TYPE_OF[type(value)]
    out: dict[str, Any] = {"unionElement": kind.value}
    if isinstance(value, Enum):
        out[_MEMBER[kind]] = value.value
    elif isinstance(value, Communication):
        out["communication"] = {
            "means": [
                {"contact": m.contact, "priority": m.priority, "type": m.type.value}
                for m in value.means
            ]
        }
    else:
        out["other"] = {"name": value.name, "value": value.value}
    return out


# -- instants ----------------------------------------------------------------

# ISO 8601 extended / xs:dateTime: fractions of any length, "Z" or ±hh:mm.
_INSTANT = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?\Z"
)


def normalise_instant(value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise ValidationError(f"{value!r} is not a date-time", "lastChange")
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_instant(text: object, where: str = "lastChange") -> datetime:
    """Parse an ISO 8601 extended date-time; no offset means UTC."""
    if not isinstance(text, str):
        raise ValidationError(f"{where} must be an ISO 8601 date-time string", where)
    m = _INSTANT.match(text.strip())
    if not m:
        raise ValidationError(f"{where} {text!r} is not an ISO 8601 date-time", where)
    date, clock, fraction, zone = m.groups()
    # Sub-microsecond digits cannot be kept by datetime; they are dropped.
    micro = (fraction or "")[:6].ljust(6, "0")
    zone = "+00:00" if zone in (None, "Z", "z") else zone
    if len(zone) == 5:  # ±hhmm
        zone = zone[:3] + ":" + zone[3:]
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}.{micro}{zone}")
    except ValueError:
        raise ValidationError(f"{where} {text!r} is not a valid date-time", where) from None
    return parsed.astimezone(UTC)


def format_instant(value: datetime) -> str:
    value = normalise_instant(value)
    # isoformat, not strftime: the same text for less, the year always four
    # digits as RFC 3339 §5.6 writes it; "+00:00" cut off.
    text = value.isoformat(timespec="seconds")[:19]
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


# XML 1.0 §2.2 Char: tab, LF, CR and the printable ranges; anything else cannot
# be carried in a PIDF note or value.
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(text: str) -> bool:
    return _NOT_XML_CHAR.search(text) is None


__all__ = [
    "Activity",
    "AttributeType",
    "Communication",
    "CommunicationMeans",
    "MeansType",
    "Other",
    "Place",
    "PresenceAttribute",
    "Privacy",
    "Sphere",
    "Value",
    "attributes_from_json",
    "attributes_to_json",
    "format_instant",
    "is_uri",
    "parse_instant",
]
