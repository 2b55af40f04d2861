"""pidf/document.py: encode/decode, every enum value, aggregation, foreign documents."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from adapter.presence_json import attribute_to_json
from pidf.document import (
    CAPS_NS,
    EXT_NS,
    LT_NS,
    PIDF_NS,
    RPID_NS,
    decode,
    encode,
)
from pidf.errors import RemoteProtocolError, ValidationError
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
)

from . import strategies
from .strategies import ALL_ENUM_VALUES

DATA = Path(__file__).resolve().parent.parent / "data" / "pidf"
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
ENTITY = "sip:alice@example.com"


def roundtrip(*attributes: PresenceAttribute) -> tuple[PresenceAttribute, ...]:
    return decode(encode(attributes, entity=ENTITY, now=T0)).attributes


@pytest.mark.parametrize("value", ALL_ENUM_VALUES, ids=lambda v: v.value)
def test_every_enum_value_roundtrips_with_note_and_last_change(value: object) -> None:
    attribute = PresenceAttribute(value, T0 + timedelta(seconds=7), "a note")  # type: ignore[arg-type]
    assert roundtrip(attribute) == (attribute,)


@pytest.mark.parametrize("means_type", list(MeansType), ids=lambda v: v.value)
def test_every_means_type_roundtrips(means_type: MeansType) -> None:
    means = CommunicationMeans("sip:alice@phone.example.com", 0.25, means_type)
    attribute = PresenceAttribute(Communication((means,)), T0, None)
    assert roundtrip(attribute) == (attribute,)


def test_missing_last_change_becomes_now() -> None:
    (decoded,) = roundtrip(PresenceAttribute(Sphere.SPHERE_WORK))
    assert decoded.last_change == T0


def test_standard_rpid_tokens_are_used() -> None:
    body = encode(
        [
            PresenceAttribute(Activity.ON_THE_PHONE),
            PresenceAttribute(Place.HOME),
            PresenceAttribute(Sphere.SPHERE_WORK),
        ],
        entity=ENTITY,
        now=T0,
    )
    root = etree.fromstring(body)
    assert root.find(f".//{{{RPID_NS}}}activities/{{{RPID_NS}}}on-the-phone") is not None
    assert root.find(f".//{{{RPID_NS}}}place-type/{{{LT_NS}}}residence") is not None
    assert root.find(f".//{{{RPID_NS}}}sphere/{{{RPID_NS}}}work") is not None
    # The status tuple, basic open, for ordinary clients.
    basics = [b.text for b in root.iter(f"{{{PIDF_NS}}}basic")]
    assert basics == ["open"]


def tuple_classes(root: etree._Element) -> list[tuple[str | None, str | None, str | None]]:
    """(id suffix, RPID class, note) of each tuple, in document order."""
    return [
        (
            (t.get("id") or "").rsplit("-", 1)[-1],
            t.findtext(f"{{{RPID_NS}}}class"),
            t.findtext(f"{{{PIDF_NS}}}note"),
        )
        for t in root.iterfind(f"{{{PIDF_NS}}}tuple")
    ]


def test_the_status_tuple_comes_first_with_its_class_and_no_note() -> None:
    comm = Communication((CommunicationMeans("tel:+1", 1.0, MeansType.PHONE),))
    body = encode(
        [
            PresenceAttribute(comm, note="call me"),
            PresenceAttribute(Place.OFFICE, note="desk 4"),
            PresenceAttribute(Activity.BUSY, note="in a meeting"),
        ],
        entity=ENTITY,
        now=T0,
    )
    root = etree.fromstring(body)
    # A rule hands the status tuple out by its class to every watcher, so it
    # carries no note: the Activity note stays in rpid:activities.
    assert tuple_classes(root) == [("s", "pa-status", None), ("m0", None, "call me")]
    # Kamailio walks tuples until the first other element: all before the person.
    assert [etree.QName(el).localname for el in root] == ["tuple", "tuple", "person"]
    assert root.findtext(f".//{{{RPID_NS}}}activities/{{{RPID_NS}}}note") == "in a meeting"


def test_every_publication_has_the_status_tuple_and_no_activity_grows_from_it() -> None:
    for attribute in (
        PresenceAttribute(Place.OFFICE, T0),
        PresenceAttribute(Sphere.SPHERE_HOME, T0),
        PresenceAttribute(Other("mood", "fine"), T0),
    ):
        body = encode([attribute], entity=ENTITY, now=T0)
        assert tuple_classes(etree.fromstring(body)) == [("s", "pa-status", None)]
        presence = decode(body)
        assert presence.open and presence.attributes == (attribute,)


def test_permanent_absence_closes_the_status_tuple() -> None:
    body = encode([PresenceAttribute(Activity.PERMANENT_ABSENCE)], entity=ENTITY, now=T0)
    basics = [b.text for b in etree.fromstring(body).iter(f"{{{PIDF_NS}}}basic")]
    assert basics == ["closed"]
    assert not decode(body).open


def test_busy_and_dnd_both_show_busy_to_ordinary_clients() -> None:
    body = encode([PresenceAttribute(Activity.DO_NOT_DISTURB)], entity=ENTITY, now=T0)
    root = etree.fromstring(body)
    activities = root.find(f".//{{{RPID_NS}}}activities")
    assert activities is not None and activities[0].tag == f"{{{RPID_NS}}}busy"


def test_communication_tuples_carry_contact_priority_and_caps() -> None:
    comm = Communication(
        (
            CommunicationMeans("tel:+15551234", 0.8, MeansType.PHONE),
            CommunicationMeans("mailto:a@example.com", 0.1, MeansType.EMAIL),
        )
    )
    root = etree.fromstring(encode([PresenceAttribute(comm)], entity=ENTITY, now=T0))
    tuples = root.findall(f"{{{PIDF_NS}}}tuple")[1:]  # after the status tuple
    assert len(tuples) == 2
    contacts = [
        (t.findtext(f"{{{PIDF_NS}}}contact"), t.find(f"{{{PIDF_NS}}}contact").get("priority"))
        for t in tuples
    ]  # type: ignore[union-attr]
    assert contacts == [("tel:+15551234", "0.8"), ("mailto:a@example.com", "0.1")]
    assert tuples[0].findtext(f"{{{CAPS_NS}}}servcaps/{{{CAPS_NS}}}audio") == "true"
    # No Activity published: no Activity decoded even though tuples are open.
    assert [a.type for a in decode(etree.tostring(root)).attributes] == [
        AttributeType.COMMUNICATION
    ]


def test_tuple_ids_differ_between_publications() -> None:
    a = etree.fromstring(encode([PresenceAttribute(Activity.BUSY)], entity=ENTITY, now=T0))
    b = etree.fromstring(encode([PresenceAttribute(Activity.AWAY)], entity=ENTITY, now=T0))
    assert a[0].get("id") != b[0].get("id")
    c = etree.fromstring(
        encode([PresenceAttribute(Activity.AWAY)], entity=ENTITY, now=T0, tag="x1")
    )
    assert [t.get("id") for t in c] == ["pax1-s", "pax1-p"]


def test_duplicate_attribute_types_are_refused() -> None:
    with pytest.raises(ValidationError, match="more than one Activity"):
        encode(
            [PresenceAttribute(Activity.BUSY), PresenceAttribute(Activity.AWAY)],
            entity=ENTITY,
            now=T0,
        )
    with pytest.raises(ValidationError, match="Other named 'k'"):
        encode(
            [PresenceAttribute(Other("k", "1")), PresenceAttribute(Other("k", "2"))],
            entity=ENTITY,
            now=T0,
        )
    two_others = [PresenceAttribute(Other("k", "1"), T0), PresenceAttribute(Other("j", "2"), T0)]
    assert roundtrip(*two_others) == tuple(two_others)


def test_entity_must_be_a_uri() -> None:
    with pytest.raises(ValidationError):
        encode([], entity="alice", now=T0)


# -- the property: every value, random combinations -------------------------

attributes = strategies.attributes("a-z0-9@.+")


@settings(max_examples=300, deadline=None)
@given(st.lists(attributes, max_size=8, unique_by=strategies.attribute_key))
def test_property_encode_decode_is_identity_on_the_json_model(
    items: list[PresenceAttribute],
) -> None:
    decoded = decode(encode(items, entity=ENTITY, now=T0)).attributes
    expected = [
        attribute_to_json(PresenceAttribute(a.value, a.last_change or T0, a.note)) for a in items
    ]
    got = [attribute_to_json(a) for a in decoded]
    assert sorted(got, key=repr) == sorted(expected, key=repr)


# -- aggregation ------------------------------------------------------------


def _aggregate(*bodies: bytes) -> bytes:
    """Concatenate documents the way a presence server aggregates them."""
    roots = [etree.fromstring(b) for b in bodies]
    for other in roots[1:]:
        roots[0].extend(list(other))
    return etree.tostring(roots[0])


def test_aggregate_takes_each_attribute_from_the_newest_publication() -> None:
    old = encode(
        [PresenceAttribute(Activity.BUSY, T0, "old"), PresenceAttribute(Place.OFFICE, T0)],
        entity=ENTITY,
        now=T0,
    )
    new = encode(
        [PresenceAttribute(Activity.AWAY, T0 + timedelta(minutes=5), "new")],
        entity=ENTITY,
        now=T0,
    )
    for body in (_aggregate(old, new), _aggregate(new, old)):
        presence = decode(body)
        assert presence.get(AttributeType.ACTIVITY) == PresenceAttribute(
            Activity.AWAY, T0 + timedelta(minutes=5), "new"
        )
        assert presence.get(AttributeType.PLACE) == PresenceAttribute(Place.OFFICE, T0)


def test_aggregate_unites_communication_means() -> None:
    phone = CommunicationMeans("tel:+1", 0.5, MeansType.PHONE)
    chat = CommunicationMeans("im:a@example.com", 0.9, MeansType.CHAT)
    a = encode([PresenceAttribute(Communication((phone,)), T0, "desk")], entity=ENTITY, now=T0)
    later = T0 + timedelta(seconds=1)
    b = encode([PresenceAttribute(Communication((chat,)), later, "laptop")], entity=ENTITY, now=T0)
    comm = decode(_aggregate(a, b)).get(AttributeType.COMMUNICATION)
    assert comm is not None and isinstance(comm.value, Communication)
    assert set(comm.value.means) == {phone, chat}
    assert (comm.last_change, comm.note) == (later, "laptop")


def test_closed_tuples_are_not_means_of_communication() -> None:
    body = b"""<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b">
      <tuple id="t1"><status><basic>closed</basic></status><contact>sip:a@b</contact></tuple>
    </presence>"""
    presence = decode(body)
    assert presence.attributes == () and presence.open is False


# -- documents other clients publish -----------------------------------------


def test_pjsua2_online_is_available() -> None:
    presence = decode((DATA / "pjsua2-online.xml").read_bytes())
    (activity,) = presence.attributes
    assert activity.value is Activity.AVAILABLE
    assert activity.last_change == datetime(2026, 11, 29, 4, 57, 34, 263000, tzinfo=UTC)
    assert presence.open


@pytest.mark.parametrize(
    ("name", "activity", "note"),
    [("busy", Activity.BUSY, "In a meeting"), ("away", Activity.AWAY, "Back soon")],
)
def test_pjsua2_activities(name: str, activity: Activity, note: str) -> None:
    presence = decode((DATA / f"pjsua2-{name}.xml").read_bytes())
    decoded = presence.get(AttributeType.ACTIVITY)
    assert decoded is not None and (decoded.value, decoded.note) == (activity, note)


def test_pjsua2_offline_has_nothing() -> None:
    presence = decode((DATA / "pjsua2-offline.xml").read_bytes())
    assert presence.attributes == () and presence.open is False


def test_rfc3863_example() -> None:
    presence = decode((DATA / "rfc3863-example.xml").read_bytes())
    assert presence.entity == "pres:someone@example.com"
    comm = presence.get(AttributeType.COMMUNICATION)
    assert comm is not None and isinstance(comm.value, Communication)
    assert comm.value.means == (
        CommunicationMeans("im:someone@mobilecarrier.net", 0.8, MeansType.CHAT),
        CommunicationMeans("mailto:someone@example.com", 1.0, MeansType.EMAIL),
    )
    assert comm.note == "Don't Disturb Please!"
    assert comm.last_change == datetime(2001, 10, 27, 16, 49, 29, tzinfo=UTC)
    activity = presence.get(AttributeType.ACTIVITY)
    assert activity is not None and activity.value is Activity.AVAILABLE


def test_rfc4480_example() -> None:
    presence = decode((DATA / "rfc4480-example.xml").read_bytes())
    got = {a.type: a for a in presence.attributes}
    assert got[AttributeType.ACTIVITY] == PresenceAttribute(
        Activity.AWAY, datetime(2005, 5, 30, 7, 0, tzinfo=UTC), "Far away"
    )
    # place-is and place-type share the person's timestamp: the first wins.
    assert got[AttributeType.PLACE].value is Place.NOISY
    assert got[AttributeType.PLACE].last_change == datetime(2005, 5, 30, 11, 9, 44, tzinfo=UTC)
    assert got[AttributeType.PRIVACY].value is Privacy.PRIVACY_NONE
    assert got[AttributeType.SPHERE].value is Sphere.SPHERE_OTHER
    comm = got[AttributeType.COMMUNICATION].value
    assert isinstance(comm, Communication) and len(comm.means) == 3


def test_rfc4479_example() -> None:
    presence = decode((DATA / "rfc4479-example.xml").read_bytes())
    activity = presence.get(AttributeType.ACTIVITY)
    assert activity == PresenceAttribute(
        Activity.ON_THE_PHONE, datetime(2005, 5, 30, 22, 2, 44, tzinfo=UTC)
    )
    comm = presence.get(AttributeType.COMMUNICATION)
    assert comm is not None and isinstance(comm.value, Communication)
    assert comm.value.means == (
        CommunicationMeans("sip:someone@example.com", 1.0, MeansType.PHONE),
    )


def test_kamailio_dummy_body_is_nothing_published() -> None:
    # Kamailio's placeholder for a presentity without publication: its open
    # tuple and "Available" note are no presence information.
    dummy = (DATA / "kamailio-dummy.xml").read_bytes()
    presence = decode(dummy)
    assert presence.attributes == () and not presence.open
    # The same document from a publisher (another tuple id) is a client online.
    published = decode(dummy.replace(b"615293b33c62dec073e05d9421e9f48b", b"t1"))
    assert [a.value for a in published.attributes] == [Activity.AVAILABLE]


def test_unknown_elements_and_foreign_extensions_are_skipped() -> None:
    body = f"""<presence xmlns="{PIDF_NS}" xmlns:x="urn:example:x" xmlns:rpid="{RPID_NS}"
        xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" xmlns:pa="{EXT_NS}" entity="sip:a@b">
      <x:weird><x:deep a="1"/></x:weird>
      <dm:person id="p"><x:mood/><rpid:activities><x:juggling/></rpid:activities>
        <rpid:sphere><x:club/></rpid:sphere><rpid:place-is><rpid:audio><rpid:ok/></rpid:audio></rpid:place-is>
        <rpid:activities from="not a date"><rpid:shopping/></rpid:activities>
        <pa:other><pa:name>only a name</pa:name></pa:other>
      </dm:person>
      <tuple id="t"><status><basic>open</basic></status><contact>not a uri</contact></tuple>
    </presence>""".encode()
    presence = decode(body)
    assert [(a.type, a.value) for a in presence.attributes] == [
        (AttributeType.ACTIVITY, Activity.ACTIVITY_OTHER),
        (AttributeType.SPHERE, Sphere.SPHERE_OTHER),
    ]


def test_unqualified_pidf_is_accepted() -> None:
    body = b"""<presence entity="sip:a@b"><tuple id="t"><status><basic>open</basic></status>
      <contact priority="0.3">tel:+1</contact></tuple></presence>"""
    comm = decode(body).get(AttributeType.COMMUNICATION)
    assert comm is not None and comm.value == Communication(
        (CommunicationMeans("tel:+1", 0.3, MeansType.PHONE),)
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'>",
        b"<watcherinfo xmlns='urn:ietf:params:xml:ns:watcherinfo'/>",
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><rpid:activities/></presence>",
    ],
)
def test_malformed_documents_raise_remote_protocol_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(body)


# -- bodies captured from the bundled Kamailio --------------------------------

K0 = datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)


def test_kamailio_aggregated_capture() -> None:
    presence = decode((DATA / "kamailio-aggregated.xml").read_bytes())
    later = K0 + timedelta(minutes=3)
    assert presence.get(AttributeType.ACTIVITY) == PresenceAttribute(
        Activity.IN_TRANSIT, later, "mobile"
    )
    assert presence.get(AttributeType.PLACE) == PresenceAttribute(Place.OFFICE, K0)
    comm = presence.get(AttributeType.COMMUNICATION)
    assert comm is not None and comm.value == Communication(
        (
            CommunicationMeans("im:alice@example.com", 0.4, MeansType.CHAT),
            CommunicationMeans("tel:+15550100", 0.9, MeansType.PHONE),
        )
    )
    assert presence.get(AttributeType.OTHER) == PresenceAttribute(Other("battery", "40%"), later)


def test_kamailio_after_removal_capture_ignores_the_closed_tuple() -> None:
    presence = decode((DATA / "kamailio-after-removal.xml").read_bytes())
    assert [attribute_to_json(a) for a in presence.attributes] == [
        attribute_to_json(PresenceAttribute(Activity.BUSY, K0, "desk")),
        attribute_to_json(PresenceAttribute(Place.OFFICE, K0)),
        attribute_to_json(PresenceAttribute(
            Communication((CommunicationMeans("tel:+15550100", 0.9, MeansType.PHONE),)),
            K0,
            "desk phone",
        )),
    ]


def test_kamailio_body_after_the_only_publication_ended_is_nothing_published() -> None:
    presence = decode((DATA / "kamailio-unpublished.xml").read_bytes())
    assert presence.attributes == () and not presence.open


def test_kamailio_all_attributes_capture() -> None:
    presence = decode((DATA / "kamailio-all-attributes.xml").read_bytes())
    assert [a.type for a in presence.attributes] == list(AttributeType)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except RemoteProtocolError:
        pass
