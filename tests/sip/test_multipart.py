"""multipart/related parsing (RFC 2387): real rls NOTIFY bodies, strictness, fuzz."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import RemoteProtocolError
from sip.multipart import MAX_PARTS, parse_media_type, parse_multipart

DATA = Path(__file__).parent.parent / "data" / "rls"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def capture(name: str) -> tuple[str, bytes]:
    """A captured NOTIFY: (Content-Type value, body)."""
    head, _, body = (DATA / name).read_bytes().partition(b"\r\n\r\n")
    return head.decode().removeprefix("Content-Type: "), body


MR = "multipart/related;boundary=b1"
CT = 'multipart/related;type="application/rlmi+xml";start="<root@x>";boundary="b1"'


def body(*parts: bytes, end: bytes = b"--b1--\r\n") -> bytes:
    return b"".join(b"--b1\r\n" + p + b"\r\n" for p in parts) + end


ROOT = b"Content-ID: <root@x>\r\nContent-Type: application/rlmi+xml\r\n\r\n<list/>"
PIDF = (
    b"Content-ID: <p1@x>\r\nContent-Transfer-Encoding: binary\r\n"
    b"Content-Type: application/pidf+xml\r\n\r\n<presence/>"
)


def test_a_captured_partial_notify_has_its_root_and_member_parts() -> None:
    content_type, data = capture("change-unpublish-2.txt")
    multipart = parse_multipart(content_type, data)
    assert multipart.type == "application/rlmi+xml"
    assert multipart.root is multipart.parts[0]
    assert multipart.root.content_type.type == "application/rlmi+xml"
    assert multipart.root.content_type.param("charset") == "UTF-8"
    assert multipart.root.body.startswith(b'<?xml version="1.0"?>\n<list ')
    assert [p.content_type.type for p in multipart.parts[1:]] == ["application/pidf+xml"] * 2
    by_id = multipart.by_content_id()
    assert len(by_id) == 3
    for part in multipart.parts[1:]:
        assert part.content_id is not None
        assert by_id[part.content_id] == ("application/pidf+xml", part.body)
        # rls writes a CRLF after each document, and the delimiter's own CRLF
        # follows (RFC 2046 §5.1.1): the first belongs to the part.
        assert part.body.endswith(b"</presence>\r\n")
        assert multipart.part(f"<{part.content_id}>") is part


def test_every_captured_notify_parses() -> None:
    files = sorted(DATA.glob("*.txt"))
    assert len(files) >= 10
    for path in files:
        multipart = parse_multipart(*capture(path.name))
        assert multipart.root.content_type.type == "application/rlmi+xml", path.name


def test_start_picks_the_root_wherever_it_is() -> None:
    multipart = parse_multipart(CT, body(PIDF, ROOT))
    assert multipart.root.content_id == "root@x"
    assert multipart.parts[0].content_id == "p1@x"


def test_without_start_the_first_part_is_the_root() -> None:
    multipart = parse_multipart("multipart/related; boundary=b1", body(PIDF, ROOT))
    assert multipart.root.content_id == "p1@x"
    assert multipart.type is None


def test_preamble_epilogue_and_padding_are_allowed() -> None:
    data = b"preamble\r\n--b1  \r\n" + ROOT + b"\r\n--b1--\r\nepilogue"
    assert parse_multipart(CT, data).root.body == b"<list/>"


def test_a_part_without_headers_is_text_plain() -> None:
    multipart = parse_multipart(MR, body(b"\r\nhello"))
    assert multipart.root.content_type.type == "text/plain"
    assert multipart.root.body == b"hello"


@pytest.mark.parametrize(
    ("content_type", "data", "fault"),
    [
        ("application/pidf+xml", body(ROOT), "not multipart/related"),
        ("multipart/related", body(ROOT), "boundary"),
        (MR, b"<list/>", "without its boundary"),
        (MR, b"--b1\r\n" + ROOT, "not closed"),
        (MR, body(ROOT, end=b""), "not closed"),
        (MR, b"--b1--\r\n", "without parts"),
        (CT, body(PIDF), "start Content-ID"),
        (CT.replace("rlmi", "pidf"), body(ROOT), "type parameter"),
        (MR, body(ROOT, ROOT), "same Content-ID"),
        (MR, body(b"Content-Type text/plain\r\n\r\nx"), "bad body part header"),
        (MR, body(b"Content-Transfer-Encoding: base64\r\n\r\nx"), "Transfer-Encoding"),
        (MR, body(b"Content-ID: nobrackets\r\n\r\nx"), "Content-ID"),
        (MR, body(b"Content-Type: text/plain\r\nContent-Type: text/plain\r\n\r\nx"), "repeated"),
        (MR, body(b"Content-Type: text/plain"), "blank line"),
        (MR, body("Content-Type: tèxt/plain\r\n\r\nx".encode()), "non-ASCII"),
        (MR, b"--b1junk\r\n" + ROOT + b"\r\n--b1--", "boundary line"),
        (MR + ";type", body(ROOT), "parameter"),
    ],
)  # fmt: skip
def test_malformed_bodies_are_refused(content_type: str, data: bytes, fault: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fault):
        parse_multipart(content_type, data)


def test_too_many_parts_are_refused() -> None:
    part = b"\r\nx"
    with pytest.raises(RemoteProtocolError, match="parts"):
        parse_multipart(MR, body(*[part] * (MAX_PARTS + 1)))


def test_media_type_parameters() -> None:
    media = parse_media_type(
        'Multipart/Related; Type="application/rlmi+xml"; start="<a b>"; boundary=x'
    )
    assert media.type == "multipart/related"
    assert media.param("type") == "application/rlmi+xml"
    assert media.param("START") == "<a b>"
    assert media.param("boundary") == "x"
    assert media.param("charset") is None


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([CT, "multipart/related;boundary=b1"]))
def test_garbage_bodies_raise_only_remote_protocol_error(data: bytes, content_type: str) -> None:
    try:
        parse_multipart(content_type, data)
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_garbage_content_types_raise_only_remote_protocol_error(text: str) -> None:
    try:
        parse_multipart(text, body(ROOT))
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.data())
def test_mutated_captures_raise_only_remote_protocol_error(data: st.DataObject) -> None:
    content_type, raw = capture("change-unpublish-2.txt")
    position = data.draw(st.integers(0, len(raw) - 1))
    replacement = data.draw(st.binary(max_size=8))
    cut = data.draw(st.integers(0, 8))
    try:
        parse_multipart(content_type, raw[:position] + replacement + raw[position + cut :])
    except RemoteProtocolError:
        pass
