"""Who a list lists, as its owner's rls-services document says (RFC 4826 §4).

A resource list server holds the list a subscriber subscribes to in the
subscriber's own rls-services document: a ``<service uri>`` with an inline
``<list>`` (RFC 4826 §4.2; its entries in the resource-lists format of §3) or
a ``<resource-list>`` reference to a list in another document.  The adapter
reads it to notice an edit the server tells nobody of (Kamailio 5.6 sends no
NOTIFY for a member removed from a list: docs/kamailio.md).  No I/O here.
"""

from __future__ import annotations

from pidf.errors import RemoteProtocolError
from pidf.parser import parse_document

__all__ = ["CONTENT_TYPE", "service_members"]

CONTENT_TYPE = "application/rls-services+xml"
_RS = "{urn:ietf:params:xml:ns:rls-services}"
_RL = "{urn:ietf:params:xml:ns:resource-lists}"


def service_members(body: bytes, service: str) -> frozenset[str] | None:
    """The URIs the ``service`` lists, nested lists flattened; an empty set
    when the document has no such service.  None when the list is not all in
    this document (a ``<resource-list>`` reference, an ``<entry-ref>`` or
    ``<external>``): who it lists cannot be told from here.
    Raises RemoteProtocolError for a document that is not rls-services."""
    root = parse_document(body)
    if root.tag != f"{_RS}rls-services":
        raise RemoteProtocolError(f"not an rls-services document (root {root.tag!r})")
    for element in root.iterchildren(f"{_RS}service"):
        if element.get("uri") != service:
            continue
        listed = element.find(f"{_RS}list")
        if listed is None:
            return None  # <resource-list>: a reference to another document
        members: set[str] = set()
        for item in listed.iter():
            if item.tag in (f"{_RL}entry-ref", f"{_RL}external"):
                return None
            if item.tag == f"{_RL}entry":
                uri = item.get("uri")
                if not uri:
                    raise RemoteProtocolError("rls-services entry without a uri")
                members.add(uri)
        return frozenset(members)
    return frozenset()
