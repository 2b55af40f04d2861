"""pidf/model.py: the REST JSON edge and validation of presence values."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pidf.errors import ValidationError
from pidf.model import (
    Activity,
    AttributeType,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    Place,
    PresenceAttribute,
    Privacy,
    Sphere,
    attributes_from_json,
    format_instant,
    parse_instant,
)

SPEC_SPELLING = {
    Activity: "ActivityNone|Available|Busy|DoNotDisturb|OnThePhone|Steering|Meeting|Away|Meal|"
    "PermanentAbsence|Holiday|Performance|InTransit|Travel|Sleeping|ActivityOther",
    Place: "PlaceNone|Home|Office|PublicTransport|Street|Outdoors|PublicPlace|Hotel|Theatre|"
    "Restaurant|School|Industrial|Quiet|Noisy|Aircraft|Ship|Bus|Station|Mall|Airport|Train|"
    "PlaceOther",
    Privacy: "PrivacyNone|PrivacyPublic|PrivacyPrivate|PrivacyQuiet|PrivacyOther",
    Sphere: "SphereNone|SphereWork|SphereHome|SphereOther",
    MeansType: "Phone|Chat|Sms|Video|Web|Email|Mms|MeansOther",
    AttributeType: "Activity|Place|Privacy|Sphere|Communication|Other",
}


@pytest.mark.parametrize("enum", list(SPEC_SPELLING), ids=lambda e: e.__name__)
def test_enums_are_spelt_exactly_as_the_spec(enum: Any) -> None:
    assert [m.value for m in enum] == SPEC_SPELLING[enum].split("|")


@pytest.mark.parametrize(
    ("member", "value"),
    [("activity", v) for v in Activity]
    + [("place", v) for v in Place]
    + [("privacy", v) for v in Privacy]
    + [("sphere", v) for v in Sphere],
    ids=lambda x: getattr(x, "value", x),
)
def test_every_enum_value_through_json(member: str, value: Any) -> None:
    obj = {
        "lastChange": "2024-05-01T12:00:00+02:00",
        "typeAndValue": {"unionElement": member.capitalize(), member: value.value},
        "note": "n",
    }
    attribute = PresenceAttribute.from_json(obj)
    assert attribute.value is value
    assert attribute.last_change == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert attribute.to_json() == {**obj, "lastChange": "2024-05-01T10:00:00Z"}
    assert PresenceAttribute.from_json(attribute.to_json()) == attribute


def test_communication_and_other_through_json() -> None:
    obj = {
        "typeAndValue": {
            "unionElement": "Communication",
            "communication": {"means": [{"contact": "tel:+1", "priority": "0.5", "type": "Sms"}]},
        }
    }
    attribute = PresenceAttribute.from_json(obj)
    assert attribute.value == Communication((CommunicationMeans("tel:+1", 0.5, MeansType.SMS),))
    assert attribute.to_json()["typeAndValue"]["communication"]["means"][0]["priority"] == 0.5
    other = PresenceAttribute.from_json(
        {"typeAndValue": {"unionElement": "Other", "other": {"name": "k", "value": "v"}}}
    )
    assert other.value == Other("k", "v") and other.type is AttributeType.OTHER


@pytest.mark.parametrize(
    ("obj", "message", "field"),
    [
        (
            {"typeAndValue": {"unionElement": "Mood"}},
            "not one of Activity|",
            "typeAndValue.unionElement",
        ),
        (
            {"typeAndValue": {"unionElement": "Activity", "activity": "Dancing"}},
            "'Dancing' is not one of",
            "typeAndValue.activity",
        ),
        (
            {"typeAndValue": {"unionElement": "Activity", "place": "Home"}},
            "has no 'activity' member",
            "typeAndValue.activity",
        ),
        (
            {"typeAndValue": {"unionElement": "Place", "place": "Home", "sphere": "SphereWork"}},
            "also carries sphere",
            "typeAndValue.sphere",
        ),
        (
            {
                "typeAndValue": {
                    "unionElement": "Communication",
                    "communication": {
                        "means": [{"contact": "tel:+1", "priority": 1.5, "type": "Phone"}]
                    },
                }
            },
            "outside 0.0",
            "typeAndValue.communication.means[0].priority",
        ),
        (
            {
                "typeAndValue": {
                    "unionElement": "Communication",
                    "communication": {
                        "means": [{"contact": "tel:+1", "priority": 0.12345, "type": "Phone"}]
                    },
                }
            },
            "three decimals",
            "typeAndValue.communication.means[0].priority",
        ),
        (
            {
                "typeAndValue": {
                    "unionElement": "Communication",
                    "communication": {
                        "means": [{"contact": "not a uri", "priority": 1, "type": "Phone"}]
                    },
                }
            },
            "is not a URI",
            "typeAndValue.communication.means[0].contact",
        ),
        (
            {
                "typeAndValue": {
                    "unionElement": "Communication",
                    "communication": {
                        "means": [{"contact": "tel:+1", "priority": 1, "type": "Pigeon"}]
                    },
                }
            },
            "not one of Phone|",
            "typeAndValue.communication.means[0].type",
        ),
        (
            {"typeAndValue": {"unionElement": "Communication", "communication": {"means": []}}},
            "must not be empty",
            "communication.means",
        ),
        (
            {"typeAndValue": {"unionElement": "Other", "other": {"name": "k"}}},
            "required strings",
            "typeAndValue.other",
        ),
        (
            {
                "typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"},
                "lastChange": "yesterday",
            },
            "not an ISO 8601",
            "lastChange",
        ),
        (
            {"typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"}, "note": 5},
            "note must be a string",
            "note",
        ),
        (
            {
                "typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"},
                "note": "bell\x07",
            },
            "XML cannot carry",
            "note",
        ),
        ({}, "typeAndValue is required", "typeAndValue"),
    ],
)
def test_validation_errors_are_clear(obj: Any, message: str, field: str) -> None:
    with pytest.raises(
        ValidationError, match=message.replace("|", r"\|").replace("(", r"\(")
    ) as info:
        PresenceAttribute.from_json(obj)
    assert info.value.field == field


def test_array_errors_name_the_element() -> None:
    with pytest.raises(ValidationError) as info:
        attributes_from_json(
            [
                {"typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"}},
                {"typeAndValue": {"unionElement": "Sphere", "sphere": "Nowhere"}},
            ]
        )
    assert info.value.field == "presence[1].typeAndValue.sphere"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5+02:00", datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2024-05-01T05:00:00-0500", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T10:00:00.1234567Z", datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    assert parse_instant(text) == expected


def test_format_instant_is_utc_seconds_with_fraction_only_when_needed() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_instant(datetime(2024, 5, 1, 12, tzinfo=plus2)) == "2024-05-01T10:00:00Z"
    assert (
        format_instant(datetime(2024, 5, 1, 10, 0, 0, 120000, tzinfo=UTC))
        == "2024-05-01T10:00:00.12Z"
    )
    assert (
        format_instant(datetime(2024, 5, 1, 10, 0, 0, 1, tzinfo=UTC))
        == "2024-05-01T10:00:00.000001Z"
    )
    # RFC 3339 §5.6: the year is always four digits, so the text parses back.
    early = datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_instant(early) == "0999-01-02T03:04:05Z"
    assert parse_instant(format_instant(early)) == early


@pytest.mark.parametrize("bad", ["2024-13-01T00:00:00Z", "2024-05-01", 12, None])
def test_bad_instants(bad: object) -> None:
    with pytest.raises(ValidationError):
        parse_instant(bad)
