"""The presence data of the OCSG RESTful Presence interface as typed values.

Every enumerated value is spelt exactly as in the spec's "Data Common to
Operations" section, so `Enum.value` *is* the JSON text. The JSON shape
(``{"typeAndValue": …, "lastChange": …, "note": …}``) exists only at the REST
edge, in adapter.presence_json; everything else in the project passes these
frozen values around.

Instants: ``lastChange`` is an ISO 8601 date-time in JSON and PIDF and an
aware `datetime` in UTC here. Input without an offset is taken as UTC; output is
always UTC with a ``Z`` suffix, seconds precision, plus the fractional part only
when it is not zero (trailing zeros dropped), so the exact instant survives
JSON → PIDF → JSON.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from pidf.errors import ValidationError


class AttributeType(Enum):
    """The spec's unionElement / presenceAttribute / attributes values."""

    ACTIVITY = "Activity"
    PLACE = "Place"
    PRIVACY = "Privacy"
    SPHERE = "Sphere"
    COMMUNICATION = "Communication"
    OTHER = "Other"


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

#: The class of each attribute type's values.
VALUE_TYPES: dict[AttributeType, type[Value]] = {
    AttributeType.ACTIVITY: Activity,
    AttributeType.PLACE: Place,
    AttributeType.PRIVACY: Privacy,
    AttributeType.SPHERE: Sphere,
    AttributeType.COMMUNICATION: Communication,
    AttributeType.OTHER: Other,
}
_TYPE_OF: dict[type, AttributeType] = {cls: kind for kind, cls in VALUE_TYPES.items()}


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
    "VALUE_TYPES",
    "Value",
    "format_instant",
    "is_uri",
    "parse_instant",
]
