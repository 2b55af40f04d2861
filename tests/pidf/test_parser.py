"""pidf/parser.py: hostile XML is refused quickly, with bounded memory."""

import time
import tracemalloc

import pytest

from pidf.errors import RemoteProtocolError
from pidf.parser import MAX_DEPTH, MAX_DOCUMENT_SIZE, parse_document

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
