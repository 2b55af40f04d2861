"""adapter/presence_json.py: typeAndValue ⇄ JSON, its validation and the parts it names."""

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from adapter.presence_json import JsonForms, attribute_to_json, attributes_from_json
from pidf import (
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
    ValidationError,
)


def from_json(obj: object) -> PresenceAttribute:
    """One item, its errors named within it (as the presence array names them)."""
    try:
        (attribute,) = attributes_from_json([obj])
    except ValidationError as exc:
        raise ValidationError(str(exc), exc.field.removeprefix("presence[0].")) from None
    return attribute


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
    attribute = from_json(obj)
    assert attribute.value is value
    assert attribute.last_change == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert attribute_to_json(attribute) == {**obj, "lastChange": "2024-05-01T10:00:00Z"}
    assert from_json(attribute_to_json(attribute)) == attribute


def test_communication_and_other_through_json() -> None:
    obj = {
        "typeAndValue": {
            "unionElement": "Communication",
            "communication": {"means": [{"contact": "tel:+1", "priority": "0.5", "type": "Sms"}]},
        }
    }
    attribute = from_json(obj)
    assert attribute.value == Communication((CommunicationMeans("tel:+1", 0.5, MeansType.SMS),))
    (means,) = attribute_to_json(attribute)["typeAndValue"]["communication"]["means"]
    assert means["priority"] == 0.5
    other = from_json(
        {"typeAndValue": {"unionElement": "Other", "other": {"name": "k", "value": "v"}}}
    )
    assert other.value == Other("k", "v") and other.type is AttributeType.OTHER


@pytest.mark.parametrize(
    ("obj", "message", "field"),
    [
        (
            {"typeAndValue": {"unionElement": "Mood"}},
            "Invalid value 'Mood'",
            "typeAndValue.unionElement",
        ),
        (
            {"typeAndValue": {"unionElement": "Activity", "activity": "Dancing"}},
            "Invalid enum value 'Dancing'",
            "typeAndValue.activity",
        ),
        (
            {"typeAndValue": {"unionElement": "Activity", "note": "Home"}},
            "missing required field `activity`",
            "typeAndValue.activity",
        ),
        (
            # The members are read in order: the second value is met first here.
            {"typeAndValue": {"unionElement": "Activity", "place": "Home"}},
            "Expected `null`, got `str`",
            "typeAndValue.place",
        ),
        (
            {"typeAndValue": {"unionElement": "Place", "place": "Home", "sphere": "SphereWork"}},
            "Expected `null`, got `str`",
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
            "Expected `float` <= 1.0",
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
            "Expected `str` matching regex",
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
            "Invalid enum value 'Pigeon'",
            "typeAndValue.communication.means[0].type",
        ),
        (
            {"typeAndValue": {"unionElement": "Communication", "communication": {"means": []}}},
            "Expected `array` of length >= 1",
            "typeAndValue.communication.means",
        ),
        (
            {"typeAndValue": {"unionElement": "Other", "other": {"name": "k"}}},
            "missing required field `value`",
            "typeAndValue.other.value",
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
            "Expected `str | null`, got `int`",
            "note",
        ),
        (
            {
                "typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"},
                "note": "bell\x07",
            },
            "Expected `str` matching regex",
            "note",
        ),
        ({}, "missing required field `typeAndValue`", "typeAndValue"),
    ],
)
def test_validation_errors_are_clear(obj: Any, message: str, field: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as info:
        from_json(obj)
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


@pytest.mark.parametrize("priority", [0.009, "0.25", 1, "1.000", 0])
def test_a_priority_of_three_decimals_or_quoted_is_taken(priority: Any) -> None:
    tav = {"unionElement": "Communication", "communication": {
        "means": [{"contact": "tel:+1", "priority": priority, "type": "Phone"}]}}
    (means,) = from_json({"typeAndValue": tav}).value.means  # type: ignore[union-attr]
    assert means.priority == float(priority)


def test_null_members_count_as_absent() -> None:
    obj = {"typeAndValue": {"unionElement": "Place", "place": "Home", "activity": None},
           "lastChange": None, "note": None}
    assert from_json(obj) == PresenceAttribute(Place.HOME)


def test_the_json_keeps_the_spec_order_and_leaves_out_what_is_not_there() -> None:
    at = datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert list(attribute_to_json(PresenceAttribute(Place.HOME, at, "n"))) == [
        "lastChange", "typeAndValue", "note"]
    assert attribute_to_json(PresenceAttribute(Other("k", "v"))) == {
        "typeAndValue": {"unionElement": "Other", "other": {"name": "k", "value": "v"}}}


def test_a_stored_record_that_is_not_a_list_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        attributes_from_json({"presence": []})
    assert info.value.field == "presence"


def test_json_forms_are_made_once_per_attribute_and_shared() -> None:
    forms = JsonForms(size=8)
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    busy = PresenceAttribute(Activity.BUSY, when, "in a call")
    home = PresenceAttribute(Place.HOME)
    first = forms([busy, home])
    assert first == [attribute_to_json(busy), attribute_to_json(home)]
    # An equal attribute from another document gets the very same dict.
    again = forms([PresenceAttribute(Activity.BUSY, when, "in a call")])
    assert again[0] is first[0]
    # Unequal ones are told apart (the note, the instant, the value).
    other = forms([
        PresenceAttribute(Activity.BUSY, when, "elsewhere"),
        PresenceAttribute(Activity.BUSY, None, "in a call"),
        PresenceAttribute(Activity.AWAY, when, "in a call"),
    ])
    assert [o["note"] if "note" in o else None for o in other] == [
        "elsewhere", "in a call", "in a call"
    ]
    assert other[2]["typeAndValue"]["activity"] == "Away"
    assert all(o is not first[0] for o in other)


def test_json_forms_are_bounded() -> None:
    forms = JsonForms(size=3)
    values = [PresenceAttribute(Other(f"n{i}", "v")) for i in range(10)]
    assert forms(values) == [attribute_to_json(v) for v in values]
    assert len(forms._forms) <= 3
