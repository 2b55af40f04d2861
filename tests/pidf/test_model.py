"""pidf/model.py: the presence values, their spelling and instants."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from pidf.errors import ValidationError
from pidf.model import (
    Activity,
    AttributeType,
    MeansType,
    Place,
    Privacy,
    Sphere,
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
