"""pidf/parser.py: hostile XML is refused quickly, with bounded memory."""

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from pidf.errors import RemoteProtocolError
from pidf.parser import (
    CHUNK,
    MAX_DEPTH,
    MAX_DOCUMENT_SIZE,
    _parse_pulled,
    _parse_small,
    parse_document,
)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&lol9;</note></presence>"""

EXTERNAL_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&xxe;</note></presence>"""

EXTERNAL_HTTP = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY xxe SYSTEM "http://127.0.0.1:9/evil.xml">]>
<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&xxe;</note></presence>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE presence SYSTEM "http://127.0.0.1:9/evil.dtd">
<presence xmlns="urn:ietf:params:xml:ns:pidf"/>"""

PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE presence [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>
<presence xmlns="urn:ietf:params:xml:ns:pidf"/>"""


def _utf16(doc: bytes) -> bytes:
    return (
        doc.decode()
        .replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
        .encode("utf-16")
    )


def _refused_quickly(data: bytes, match: str | None = None) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RemoteProtocolError, match=match):
            parse_document(data)
    finally:
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < 0.5
    # Python-side allocations stay small: the document is never expanded.
    assert peak < 5 * 1024 * 1024


@pytest.mark.parametrize(
    "doc",
    [BILLION_LAUGHS, EXTERNAL_FILE, EXTERNAL_HTTP, EXTERNAL_DTD, PARAMETER_ENTITY],
    ids=["billion-laughs", "xxe-file", "xxe-http", "external-dtd", "parameter-entity"],
)
def test_dtds_and_entities_are_refused(doc: bytes) -> None:
    _refused_quickly(doc, "document type")


@pytest.mark.parametrize(
    "doc", [BILLION_LAUGHS, EXTERNAL_FILE, EXTERNAL_HTTP], ids=["laughs", "file", "http"]
)
def test_doctype_hidden_in_utf16_is_refused_too(doc: bytes) -> None:
    encoded = _utf16(doc)
    assert b"<!DOCTYPE" not in encoded
    _refused_quickly(encoded)


def test_fifty_megabytes_are_refused_before_parsing() -> None:
    huge = (
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'><note>"
        + b"a" * (50 * 1024 * 1024)
        + b"</note></presence>"
    )
    started = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        parse_document(huge)
    assert time.perf_counter() - started < 0.5


def test_size_cap_is_exact() -> None:
    body = b"<a>" + b"x" * (MAX_DOCUMENT_SIZE - 7) + b"</a>"
    assert len(body) == MAX_DOCUMENT_SIZE
    assert parse_document(body).text is not None
    with pytest.raises(RemoteProtocolError):
        parse_document(body + b" ")


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused(depth: int) -> None:
    doc = b"<a>" * depth + b"</a>" * depth
    _refused_quickly(doc, "nested|malformed")


def test_nesting_up_to_the_limit_is_fine() -> None:
    doc = b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH
    assert parse_document(doc).tag == "a"


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"   ",
        b"\xff\xfe\x00",
        b"<a>",
        b"<a></b>",
        b"<?xml version='1.0' encoding='nope'?><a/>",
        b"<a>&undefined;</a>",
    ],
)
def test_garbage_raises_only_remote_protocol_error(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_document(garbage)


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_document(b"<a><!-- c --><?pi x?><b/></a>")
    assert [child.tag for child in root] == ["b"]


# -- the one-call path for small documents against the pull parser -------------------

DATA = Path(__file__).resolve().parent.parent / "data"
CAPTURES = sorted(p for p in DATA.rglob("*.xml"))
ODD = [
    BILLION_LAUGHS, EXTERNAL_FILE, EXTERNAL_HTTP, EXTERNAL_DTD, PARAMETER_ENTITY,
    _utf16(BILLION_LAUGHS), b"<a>", b"<a></b>", b"<a>&undefined;</a>", b"\xff\xfe\x00",
    b"<?xml version='1.0' encoding='nope'?><a/>", b"<a><!-- c --><?pi x?><b/></a>",
    b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH,
    b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1),
]


def _outcome(parse: Callable[[bytes], etree._Element], data: bytes) -> bytes | str:
    """The tree as bytes, or the refusal: what a caller of parse_document can tell apart."""
    try:
        root = parse(data)
    except etree.XMLSyntaxError:
        return "malformed"
    except (ValueError, LookupError) as exc:
        return f"unreadable: {type(exc).__name__}"
    except RemoteProtocolError as exc:
        return str(exc)
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        return "dtd"
    if any(True for _ in root.iter(etree.Entity)):
        return "entity"
    return etree.tostring(root)


def test_captures_are_in_the_data_folder() -> None:
    assert len(CAPTURES) >= 15


@pytest.mark.parametrize(
    "data",
    [path.read_bytes() for path in CAPTURES] + ODD,
    ids=[path.name for path in CAPTURES] + [f"odd{i}" for i in range(len(ODD))],
)
def test_small_documents_parse_as_the_pull_parser_parses_them(data: bytes) -> None:
    assert len(data) <= CHUNK
    assert _outcome(_parse_small, data) == _outcome(_parse_pulled, data)


def test_a_document_past_one_chunk_takes_the_pull_parser_and_parses_the_same() -> None:
    notes = b"".join(b"<note>%d</note>" % i for i in range(2000))
    data = b'<presence xmlns="urn:ietf:params:xml:ns:pidf">' + notes + b"</presence>"
    assert len(data) > CHUNK
    assert etree.tostring(parse_document(data)) == etree.tostring(_parse_small(data))
    assert len(parse_document(data)) == 2000


def test_depth_is_refused_on_both_paths_at_the_same_element() -> None:
    for depth in (MAX_DEPTH, MAX_DEPTH + 1):
        small = b"<a>" * depth + b"</a>" * depth
        padded = b"<a>" * depth + b" " * CHUNK + b"</a>" * depth
        assert len(small) <= CHUNK < len(padded)
        results = []
        for data in (small, padded):
            try:
                parse_document(data)
                results.append("parsed")
            except RemoteProtocolError as exc:
                results.append(str(exc))
        assert results[0] == results[1]
        assert (results[0] == "parsed") == (depth == MAX_DEPTH)
