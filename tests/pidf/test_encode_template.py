"""pidf.encode's templates: the same bytes as serialising the lxml tree, for any publication.

encode() builds a publication from a template cached per shape; these tests
hold it to the bytes lxml writes for the same document (pidf.document._document,
serialised), for every value, random combinations and strings full of what
XML escapes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from pidf import (
    Activity,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    PresenceAttribute,
    ValidationError,
    encode,
)
from pidf import document as pidf_document

from . import strategies
from .strategies import ALL_ENUM_VALUES, texts

ENTITY = "sip:alice@example.com"
T0 = datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)


def lxml_bytes(items: list[PresenceAttribute], *, entity: str = ENTITY, tag: str = "t1") -> bytes:
    """The document as lxml serialises it, without any template."""
    stamped = tuple(a if a.last_change else PresenceAttribute(a.value, T0, a.note) for a in items)
    strings = pidf_document._Strings(stamped, entity)
    strings.prefix = "pa" + tag
    return pidf_document._serialise(pidf_document._document(stamped, strings))


@pytest.mark.parametrize("value", ALL_ENUM_VALUES, ids=str)
@pytest.mark.parametrize("note", [None, "at lunch", 'a <b> & "c"\r\n\tend'])
def test_every_value_is_the_bytes_lxml_writes(value: object, note: str | None) -> None:
    items = [PresenceAttribute(value, T0, note)]  # type: ignore[arg-type]
    for _ in range(2):  # the first call makes the template, the second uses it
        assert encode(items, entity=ENTITY, now=T0, tag="t1") == lxml_bytes(items)


def test_strings_are_escaped_as_lxml_escapes_them_in_text_and_attributes() -> None:
    tricky = 'x & y < z > "q" \'a\'\r\n\t é 𝄞 ]]>'
    means = CommunicationMeans("sip:a&b@example.com", 0.125, MeansType.CHAT)
    items = [
        PresenceAttribute(Other(tricky, tricky), T0, tricky),
        PresenceAttribute(Communication((means,)), T0, tricky),
    ]
    entity = "sip:a&b@example.com"
    body = encode(items, entity=entity, now=T0, tag="t1")
    assert body == lxml_bytes(items, entity=entity)
    assert b'entity="sip:a&amp;b@example.com"' in body and b"&#13;" in body


@given(texts)
def test_attribute_and_text_escapes_are_libxml2s(text: str) -> None:
    element = etree.Element("e", a=text)
    element.text = text
    written = etree.tostring(element, encoding="UTF-8").split(b"?>\n", 1)[-1]
    ours = (
        b'<e a="' + pidf_document._escape(text, pidf_document._ATTRIBUTE_ESCAPES) + b'">'
        + pidf_document._escape(text, pidf_document._TEXT_ESCAPES) + b"</e>"
    )
    assert written == ours or (not text and written == b'<e a=""/>')


def test_two_publications_of_one_shape_differ_only_in_their_strings() -> None:
    busy = encode([PresenceAttribute(Activity.BUSY, T0, "one")], entity=ENTITY, now=T0)
    later = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    again = encode([PresenceAttribute(Activity.BUSY, later, "two")], entity=ENTITY, now=T0)
    assert b"one" in busy and b"two" in again
    assert b"2025-01-02T03:04:05Z" in again and b"2025-01-02" not in busy


def test_a_string_xml_cannot_carry_is_still_refused() -> None:
    # The model refuses such notes, and such contacts (no URI has a control character).
    with pytest.raises(ValidationError):
        CommunicationMeans("sip:a\x01b@example.com", 1.0, MeansType.PHONE)
    with pytest.raises((ValueError, ValidationError)):
        encode([PresenceAttribute(Activity.BUSY, T0, "a\x01b")], entity=ENTITY, now=T0)


attributes = strategies.attributes("a-z0-9@.+&")


@settings(max_examples=300, deadline=None)
@given(st.lists(attributes, max_size=6, unique_by=strategies.attribute_key))
def test_property_encode_is_the_bytes_lxml_writes(items: list[PresenceAttribute]) -> None:
    assert encode(items, entity=ENTITY, now=T0, tag="t1") == lxml_bytes(items)


def test_the_default_ids_follow_the_content() -> None:
    def ids(value: object, note: str, entity: str = ENTITY) -> set[bytes]:
        body = encode([PresenceAttribute(value, T0, note)], entity=entity, now=T0)  # type: ignore[arg-type]
        root = etree.fromstring(body)
        return {el.get("id").encode() for el in root.iter() if el.get("id")}

    assert ids(Activity.BUSY, "a") == ids(Activity.BUSY, "a")
    assert ids(Activity.BUSY, "a").isdisjoint(ids(Activity.AWAY, "a"))  # another shape
    assert ids(Activity.BUSY, "a").isdisjoint(ids(Activity.BUSY, "b"))  # another note
    assert ids(Activity.BUSY, "a").isdisjoint(ids(Activity.BUSY, "a", "sip:bob@example.com"))
