"""Hypothesis strategies for presence attributes, shared by the pidf tests."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import strategies as st

from pidf.model import (
    Activity,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    Place,
    PresenceAttribute,
    Privacy,
    Sphere,
)

ALL_ENUM_VALUES = [*Activity, *Place, *Privacy, *Sphere]

#: Strings XML 1.0 can carry.
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
).filter(
    lambda s: (
        all(c in "\t\n\r" or ord(c) >= 0x20 for c in s) and "\ufffe" not in s and "\uffff" not in s
    )
)
instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


def attributes(contact_chars: str = "a-z0-9@.+") -> st.SearchStrategy[PresenceAttribute]:
    """Any attribute; contacts are URIs whose part after the scheme uses ``contact_chars``."""
    means = st.builds(
        CommunicationMeans,
        contact=st.from_regex(
            rf"(sip|tel|mailto|https|im):[{contact_chars}]{{1,12}}", fullmatch=True
        ),
        priority=st.integers(0, 1000).map(lambda n: n / 1000),
        type=st.sampled_from(MeansType),
    )
    values = st.one_of(
        st.sampled_from(ALL_ENUM_VALUES),
        # One means per contact and type: decoding keeps one of each (README,
        # "Decoding aggregated documents"), so a repeated one cannot round-trip.
        st.builds(
            Communication,
            st.lists(means, min_size=1, max_size=3,
                     unique_by=lambda m: (m.contact, m.type)).map(tuple),
        ),
        st.builds(Other, name=texts.filter(bool), value=texts),
    )
    return st.builds(
        PresenceAttribute, values, st.one_of(st.none(), instants), st.one_of(st.none(), texts)
    )


def attribute_key(a: PresenceAttribute) -> object:
    """What must differ between the attributes of one publication."""
    return (a.type.value, a.value.name if isinstance(a.value, Other) else "")
