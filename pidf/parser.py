"""The one hardened XML parser for every document that comes from the network.

Presence documents reach us from publishers we do not control, relayed by the
presence server. Everything here is built so that a hostile body costs at most
a bounded amount of time and memory and then fails with `RemoteProtocolError`:

* a size cap checked *before* parsing (a 50 MB body is refused without being
  read by libxml2);
* no DTD at all: none of our formats (RFC 3863, 3858, 4745) uses one, so any
  ``<!DOCTYPE`` is refused — this kills entity expansion ("billion laughs")
  and external entities (file/http) before libxml2 sees them, and the parser
  is configured not to resolve entities, load DTDs or touch the network in
  case a DOCTYPE hides behind a non-UTF-8 encoding;
* libxml2's own safety limits stay on (``huge_tree=False``), plus our own
  nesting-depth cap, far below libxml2's, checked while parsing.
"""

from __future__ import annotations

import threading
from typing import Any

from lxml import etree

from pidf.errors import RemoteProtocolError

#: Largest document accepted. An aggregated PIDF of a busy presentity is a few
#: kilobytes; watcherinfo for thousands of watchers stays well below this.
MAX_DOCUMENT_SIZE = 1024 * 1024

#: Deepest element nesting accepted. PIDF with RPID nests about six levels
#: (presence/tuple/caps:servcaps/caps:type/caps:supported/caps:type).
MAX_DEPTH = 32


#: Documents are fed to the pull parser in chunks of this size, the depth
#: checked after each; one that fits in a chunk is parsed in one call.
CHUNK = 16 * 1024

_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "collect_ids": False,
}

#: True when some element lies deeper than MAX_DEPTH (the root at depth 1),
#: evaluated by libxml2 rather than by a walk of the tree in Python.
_TOO_DEEP = etree.XPath("boolean(/" + "*/" * MAX_DEPTH + "*)")

# An lxml parser may not be used by two threads at once; one per thread.
_per_thread = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_per_thread, "parser", None)
    if parser is None:
        parser = _per_thread.parser = etree.XMLParser(**_OPTIONS)
    return parser


def _has_doctype(data: bytes) -> bool:
    # Markup declarations are ASCII in every encoding that is a superset of
    # ASCII; for UTF-16/32 bodies the parser-level settings and the doctype
    # check after parsing still hold the line.
    return b"<!DOCTYPE" in data or b"<!ENTITY" in data


def parse_document(data: bytes, *, max_size: int = MAX_DOCUMENT_SIZE) -> etree._Element:
    """Parse untrusted XML bytes into an element tree, or raise RemoteProtocolError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError("document must be bytes")
    data = bytes(data)
    if len(data) > max_size:
        raise RemoteProtocolError(f"document of {len(data)} bytes exceeds the {max_size}-byte cap")
    if not data.strip():
        raise RemoteProtocolError("empty document")
    if _has_doctype(data):
        raise RemoteProtocolError("document type declarations are not accepted")

    try:
        root = _parse_small(data) if len(data) <= CHUNK else _parse_pulled(data)
    except etree.XMLSyntaxError as exc:
        raise RemoteProtocolError(f"malformed XML: {exc}") from None
    except (ValueError, LookupError) as exc:
        # lxml raises ValueError/LookupError for unsupported encodings and the like.
        raise RemoteProtocolError(f"unreadable XML: {exc}") from None

    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise RemoteProtocolError("document type declarations are not accepted")
    for _node in root.iter(etree.Entity):
        # An entity reference left unresolved (resolve_entities=False):
        # only reachable through a DTD, which we have refused already.
        raise RemoteProtocolError("entity references are not accepted")
    return root


def _parse_small(data: bytes) -> etree._Element:
    """A document of one chunk: parsed in one call, its depth checked after
    (the pull parser could stop it no sooner: it checks after each chunk)."""
    root = etree.fromstring(data, _parser())
    if _TOO_DEEP(root):
        raise RemoteProtocolError(f"elements nested deeper than {MAX_DEPTH}")
    return root


def _parse_pulled(data: bytes) -> etree._Element:
    depth = 0

    def check_depth() -> None:
        nonlocal depth
        for event, _element in pull.read_events():
            if event == "start":
                depth += 1
                if depth > MAX_DEPTH:
                    raise RemoteProtocolError(f"elements nested deeper than {MAX_DEPTH}")
            else:
                depth -= 1

    # A pull parser fed in chunks rather than fromstring(), so that the
    # depth check stops a deep document as soon as the limit is crossed.
    pull = etree.XMLPullParser(events=("start", "end"), **_OPTIONS)
    for offset in range(0, len(data), CHUNK):
        pull.feed(data[offset : offset + CHUNK])
        check_depth()
    root: etree._Element = pull.close()
    check_depth()
    return root
