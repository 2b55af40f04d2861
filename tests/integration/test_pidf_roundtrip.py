"""PIDF documents survive the real presence server: PUBLISH → aggregation → NOTIFY.

Documents made by pidf.encode are published to the bundled Kamailio; a
watcher allowed by a pres-rules document made by pidf.PresRules (XCAP PUT)
receives the NOTIFYs, and pidf.decode must give back exactly the published
model — for every enumerated value, after the server aggregates two
publications, and after one of them is removed.

Set PIDF_CAPTURE_DIR to a directory to save the NOTIFY bodies received (this
is how tests/data/pidf/kamailio-*.xml were produced).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from adapter.presence_json import attribute_to_json
from pidf import (
    Activity,
    AttributeType,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    Place,
    Presence,
    PresenceAttribute,
    PresRules,
    Privacy,
    Sphere,
    WatcherInfo,
    WatcherStatus,
    decode,
    encode,
)
from tests.presence_server import PresenceServer
from tests.rawsip import PUBLISH, SUBSCRIBE, SipMessage, SipPeer, new_token

pytestmark = pytest.mark.integration


# RFC 3903 §4.4: modifying (or removing) a publication names its entity-tag.
MODIFY = PUBLISH.replace("Content-Type: application/pidf+xml", "SIP-If-Match: {etag}")
MODIFY_WITH_BODY = MODIFY + "    Content-Type: application/pidf+xml\n"


T0 = datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=UTC)


@dataclass
class Session:
    server: PresenceServer
    presentity: str
    watcher: str
    publisher: SipPeer
    watcher_peer: SipPeer
    dialog: str = ""

    def publish(self, body: bytes, *, etag: str | None = None, expires: int = 3600) -> SipMessage:
        call_id = new_token()
        template = PUBLISH if etag is None else (MODIFY_WITH_BODY if body else MODIFY)
        reply = self.publisher.request(
            template,
            body,
            call_id=call_id,
            method="PUBLISH",
            presentity=self.presentity,
            tag=new_token(),
            expires=expires,
            etag=etag,
        )
        assert reply.status == 200, reply.start_line
        return reply

    def encode(self, attributes: list[PresenceAttribute]) -> bytes:
        return encode(attributes, entity=f"sip:{self.presentity}", now=T0)

    def next_notify(self) -> SipMessage:
        return self.watcher_peer.wait_for(
            lambda m: not m.is_response and m.method == "NOTIFY" and m.call_id == self.dialog
        )

    def next_presence(self, capture: str | None = None) -> Presence:
        notify = self.next_notify()
        assert (notify.header("Subscription-State") or "").startswith("active")
        assert notify.body, "active NOTIFY without a body"
        _capture(capture, notify.body)
        return decode(notify.body)


def _capture(name: str | None, body: bytes) -> None:
    directory = os.environ.get("PIDF_CAPTURE_DIR")
    if name and directory:
        Path(directory, f"kamailio-{name}.xml").write_bytes(body)


@pytest.fixture
def session(presence_server: PresenceServer) -> Iterator[Session]:
    """A presentity with an allowed watcher whose subscription is active."""
    suffix = new_token()
    address = presence_server.sip_address
    with SipPeer(address) as publisher, SipPeer(address) as watcher_peer:
        s = Session(
            presence_server,
            f"alice-{suffix}@example.com",
            f"bob-{suffix}@example.com",
            publisher,
            watcher_peer,
        )
        s.dialog = new_token()
        reply = watcher_peer.request(
            SUBSCRIBE,
            call_id=s.dialog,
            method="SUBSCRIBE",
            presentity=s.presentity,
            subscriber=s.watcher,
            tag=new_token(),
            event="presence",
            accept="application/pidf+xml",
        )
        assert reply.status == 200, reply.start_line
        rules = PresRules().allow(f"sip:{s.watcher}", {kind: True for kind in AttributeType})
        reply = httpx.put(
            f"{presence_server.xcap_root}/pres-rules/users/sip:{s.presentity}/index",
            content=rules.to_xml(),
            headers={"Content-Type": "application/auth-policy+xml"},
            timeout=5.0,
        )
        assert reply.status_code == 200
        watcher_peer.wait_for(
            lambda m: (
                m.method == "NOTIFY"
                and m.call_id == s.dialog
                and (m.header("Subscription-State") or "").startswith("active")
            )
        )
        # An XCAP PUT usually yields two NOTIFYs: let the second one pass.
        watcher_peer.drain(0.3)
        for index in range(len(watcher_peer.received)):
            watcher_peer._taken.add(index)
        yield s


def _publication(i: int) -> list[PresenceAttribute]:
    """The i-th of a series of publications that together use every value."""
    at = T0 + timedelta(seconds=i)
    types = list(MeansType)
    means = tuple(
        CommunicationMeans(f"sip:dev{n}-{i}@example.com", round(0.125 * n, 3), types[(i + n) % 8])
        for n in range(3)
    )
    return [
        PresenceAttribute(list(Activity)[i % len(Activity)], at, f"activity {i}"),
        PresenceAttribute(list(Place)[i % len(Place)], at, None),
        PresenceAttribute(list(Privacy)[i % len(Privacy)], at, f"privacy {i} <&>"),
        PresenceAttribute(list(Sphere)[i % len(Sphere)], at, None),
        PresenceAttribute(Communication(means), at, "call me"),
        PresenceAttribute(Other("mood", f"value {i}  \t"), at, ""),
    ]


def test_every_value_survives_the_presence_server(session: Session) -> None:
    count = max(len(Activity), len(Place), len(Privacy), len(Sphere), len(MeansType))
    etag: str | None = None
    for i in range(count):
        published = _publication(i)
        reply = session.publish(session.encode(published), etag=etag)
        etag = reply.require("SIP-ETag")
        presence = session.next_presence("all-attributes" if i == 1 else None)
        got = [attribute_to_json(a) for a in presence.attributes]
        assert got == [attribute_to_json(a) for a in published], i
        assert presence.entity == f"sip:{session.presentity}"


def test_aggregation_of_two_publications_and_a_removal(session: Session) -> None:
    phone = CommunicationMeans("tel:+15550100", 0.9, MeansType.PHONE)
    chat = CommunicationMeans("im:alice@example.com", 0.4, MeansType.CHAT)
    desk = [
        PresenceAttribute(Activity.BUSY, T0, "desk"),
        PresenceAttribute(Place.OFFICE, T0),
        PresenceAttribute(Communication((phone,)), T0, "desk phone"),
    ]
    later = T0 + timedelta(minutes=3)
    mobile = [
        PresenceAttribute(Activity.IN_TRANSIT, later, "mobile"),
        PresenceAttribute(Communication((chat,)), later, "mobile chat"),
        PresenceAttribute(Other("battery", "40%"), later),
    ]
    session.publish(session.encode(desk))
    assert session.next_presence().attributes == tuple(desk)

    # A PUBLISH without SIP-If-Match is a second publication: the server
    # aggregates both documents in one NOTIFY body.
    mobile_etag = session.publish(session.encode(mobile)).require("SIP-ETag")
    aggregated = session.next_presence("aggregated")
    assert aggregated.get(AttributeType.ACTIVITY) == mobile[0]
    assert aggregated.get(AttributeType.PLACE) == desk[1]
    comm = aggregated.get(AttributeType.COMMUNICATION)
    assert comm is not None and isinstance(comm.value, Communication)
    assert set(comm.value.means) == {phone, chat}
    assert (comm.last_change, comm.note) == (later, "mobile chat")
    assert aggregated.get(AttributeType.OTHER) == mobile[2]

    # Removing the newer publication (Expires 0) brings the older one back.
    session.publish(b"", etag=mobile_etag, expires=0)
    after = session.next_presence("after-removal")
    assert after.attributes == tuple(desk)


def test_watcherinfo_from_the_presence_server_parses(session: Session) -> None:
    call_id = new_token()
    reply = session.publisher.request(
        SUBSCRIBE,
        call_id=call_id,
        method="SUBSCRIBE",
        presentity=session.presentity,
        subscriber=session.presentity,
        tag=new_token(),
        event="presence.winfo",
        accept="application/watcherinfo+xml",
    )
    assert reply.status == 200, reply.start_line
    notify = session.publisher.notify(call_id)
    _capture("watcherinfo", notify.body)
    info = WatcherInfo.parse(notify.body)
    assert info.full
    (watchers,) = info.lists
    assert watchers.resource == f"sip:{session.presentity}"
    assert [(w.uri, w.status, w.id) for w in watchers.watchers] == [
        (f"sip:{session.watcher}", WatcherStatus.ACTIVE, session.dialog)
    ]
