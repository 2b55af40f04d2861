"""pidf/privacy.py: decoded presence stripped to a watcher's grants."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from pidf.document import Presence, decode, encode
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
from pidf.privacy import filter_attributes, filter_presence

T0 = datetime(2024, 5, 1, tzinfo=UTC)
ALL = (
    PresenceAttribute(Activity.BUSY, T0),
    PresenceAttribute(Place.OFFICE, T0),
    PresenceAttribute(Privacy.PRIVACY_PRIVATE, T0),
    PresenceAttribute(Sphere.SPHERE_WORK, T0),
    PresenceAttribute(Communication((CommunicationMeans("tel:+1", 1.0, MeansType.PHONE),)), T0),
    PresenceAttribute(Other("mood", "fine"), T0),
)


def test_each_attribute_alone() -> None:
    for kind in AttributeType:
        kept = filter_attributes(ALL, [kind])
        assert [a.type for a in kept] == [kind]


def test_unfiltered_body_is_filtered_by_decisions() -> None:
    presence = decode(encode(ALL, entity="sip:a@example.com", now=T0))
    decisions = {
        AttributeType.ACTIVITY: False,
        AttributeType.PLACE: True,
        AttributeType.SPHERE: True,
        AttributeType.COMMUNICATION: False,
    }
    seen = filter_presence(presence, decisions)
    assert [a.type for a in seen.attributes] == [AttributeType.PLACE, AttributeType.SPHERE]
    # The basic status is seen under any grant, as a SIP watcher sees it.
    assert presence.open and seen.open
    assert not filter_presence(presence, {AttributeType.PLACE: False}).open


def test_nothing_granted_leaves_nothing() -> None:
    presence = Presence("sip:a@x", ALL, True)
    seen = filter_presence(presence, {})
    assert seen.attributes == () and seen.open is False
    assert filter_presence(presence, {AttributeType.COMMUNICATION: True}).open


DATA = Path(__file__).resolve().parent.parent / "data" / "pidf"
GRANTS = {
    "activity": {AttributeType.ACTIVITY: True},
    "place": {AttributeType.PLACE: True},
    "communication": {AttributeType.COMMUNICATION: True},
}


@pytest.mark.parametrize("grant", list(GRANTS))
def test_the_filter_agrees_with_what_kamailio_sent_under_a_partial_grant(grant: str) -> None:
    """kamailio-grant-*.xml: the same Publish as the presence server sent it to SIP
    watchers under each grant (tests/integration/test_authorization.py)."""
    everything = decode((DATA / "kamailio-grant-all.xml").read_bytes())
    sent = decode((DATA / f"kamailio-grant-{grant}.xml").read_bytes())
    ours = filter_presence(everything, GRANTS[grant])
    assert (ours.attributes, ours.open) == (sent.attributes, sent.open)
    assert sent.open and len(sent.attributes) == 1
