"""Groups on the bundled presence server, for tests and benchmarks of many members.

A group is an RFC 4826 rls-services ``<service>`` in the *subscriber's* own
document (Kamailio's rls looks the list up there: ../shared/DESIGN.md,
"Resource lists"), and each member's pres-rules must allow the subscriber,
because rls's back-end SUBSCRIBEs carry the subscriber as From.  This module
writes both over XCAP, and publishes the members' presence with
:class:`RawPublisher`: many addresses from one UDP socket, outside the
product's SIP stack (tests/rawsip.py), so a group of 100 does not need 100
phones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

import httpx

from pidf import AttributeType, PresRules
from tests.integration.test_resource_lists import RLS_SERVICES
from tests.rawsip import SipPeer, new_token

#: Every attribute granted (the members hide nothing from the group's watchers).
EVERYTHING = {kind: True for kind in AttributeType}

#: XCAP over HTTP: one request per connection, Kamailio's xhttp closes after
#: every reply without saying so (adapter/xcap.py).
_CLOSE = {"Connection": "close"}


def rls_services(service: str, members: Iterable[str]) -> str:
    """An rls-services document holding one list, ``service``, of ``members``."""
    entries = "".join(f"<rl:entry uri={quoteattr(m)}/>" for m in members)
    return RLS_SERVICES.format(service=service, entries=entries)


def put_rls_services(
    xcap_root: str, owner: str, service: str, members: Iterable[str], timeout: float = 30
) -> None:
    """Store ``owner``'s rls-services with the list ``service`` (the server then
    re-reads the owner's lists: kamailio.cfg calls rls_update_subs)."""
    reply = httpx.put(
        f"{xcap_root}/rls-services/users/{owner}/index",
        content=rls_services(service, members),
        headers={"Content-Type": "application/rls-services+xml", **_CLOSE},
        timeout=timeout,
    )
    if reply.status_code != 200:
        raise AssertionError(f"rls-services of {owner}: {reply.status_code} {reply.text}")


def put_pres_rules(
    xcap_root: str, presentity: str, watchers: Iterable[str], timeout: float = 30
) -> None:
    """Store ``presentity``'s pres-rules allowing each of ``watchers`` everything.

    A 500 is tried again a few times: the sqlite-backed server answers 500 when
    another of its processes writes at the same moment (docs/kamailio.md), so
    callers may write several presentities' rules at once.
    """
    rules = PresRules.build({watcher: EVERYTHING for watcher in watchers}).to_xml()
    for attempt in range(1, 6):
        reply = httpx.put(
            f"{xcap_root}/pres-rules/users/{presentity}/index",
            content=rules,
            headers={"Content-Type": "application/auth-policy+xml", **_CLOSE},
            timeout=timeout,
        )
        if reply.status_code != 500:
            break
        time.sleep(0.05 * attempt)
    if reply.status_code != 200:
        raise AssertionError(f"pres-rules of {presentity}: {reply.status_code} {reply.text}")


def member_pidf(aor: str, note: str) -> bytes:
    """A PIDF an application sees as Activity Busy with ``note`` (rpid, RFC 4480)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity={quoteattr(aor)}>'
        '<tuple id="t1"><status><basic>open</basic></status></tuple>'
        '<dm:person id="p1"><rpid:activities>'
        f"<rpid:note>{note}</rpid:note><rpid:busy/></rpid:activities></dm:person>"
        "</presence>"
    ).encode()


PUBLISH = """
    PUBLISH {aor} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <{aor}>;tag={tag}
    To: <{aor}>
    Call-ID: {call_id}
    CSeq: {cseq} PUBLISH
    Event: presence
    Expires: {expires}
    Content-Type: application/pidf+xml
"""


@dataclass
class _Publication:
    call_id: str = field(default_factory=new_token)
    tag: str = field(default_factory=new_token)
    cseq: int = 0
    etag: str | None = None


class RawPublisher:
    """Publishes the presence of any number of addresses from one UDP socket.

    The first PUBLISH of an address creates its publication; later ones modify
    it with SIP-If-Match (RFC 3903 §4.4), so each address has one document on
    the server, as a phone's would.  A 412 (the server forgot the entity tag,
    RFC 3903 §6) publishes anew.  One request at a time: the sqlite-backed
    server refuses concurrent writers (SipPeer.request retries its 500s).
    """

    def __init__(self, server: tuple[str, int], expires: int = 3600) -> None:
        self.peer = SipPeer(server)
        self.expires = expires
        self._publications: dict[str, _Publication] = {}

    def publish(self, aor: str, body: bytes) -> None:
        publication = self._publications.setdefault(aor, _Publication())
        for _attempt in range(2):
            publication.cseq += 1
            template = PUBLISH
            if publication.etag is not None:
                template += f"    SIP-If-Match: {publication.etag}\n"
            reply = self.peer.request(
                template,
                body,
                call_id=publication.call_id,
                method="PUBLISH",
                aor=aor,
                tag=publication.tag,
                cseq=publication.cseq,
                expires=self.expires,
            )
            if reply.status == 412 and publication.etag is not None:
                publication.etag = None
                continue
            if not 200 <= reply.status < 300:
                raise AssertionError(f"PUBLISH {aor}: {reply.start_line}")
            publication.etag = reply.require("SIP-ETag")
            return
        raise AssertionError(f"PUBLISH {aor}: 412 twice")

    def close(self) -> None:
        self.peer.close()

    def __enter__(self) -> RawPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
