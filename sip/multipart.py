"""multipart/related bodies (RFC 2387 on RFC 2046 §5.1), as a resource list
server sends them (RFC 4662 §5): a root RLMI document and one part per
resource state, each part named by its Content-ID.

Hand-written rather than the stdlib ``email`` parser: ``email`` is lenient by
design (a missing boundary, a truncated body or a header without a colon
become "defects" on a message that still parses), decodes RFC 2047 words and
transfer encodings we must not accept, and has no size bounds of its own. A
NOTIFY body needs the opposite — every fault is a ``RemoteProtocolError`` —
and the format that arrives is small: ``binary`` (or 7bit/8bit) parts with a
few header fields each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RemoteProtocolError
from .params import quoted_end, split_outside, unquote

__all__ = ["BodyPart", "MediaType", "MultipartRelated", "parse_media_type", "parse_multipart"]

#: Most parts accepted in one body; rls sends one per changed member plus the
#: root, and splits its NOTIFYs well below this.
MAX_PARTS = 4096
#: Most header fields in one part (Content-ID/-Type/-Transfer-Encoding, a few more).
MAX_PART_HEADERS = 32

# RFC 2045 §5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>.
_MIME_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 2045 §6.1: "binary" is what RFC 4662 §5 bodies use; 7bit and 8bit are
# identity encodings too. Anything else (base64, quoted-printable) would need
# decoding that no RLS we know of asks for.
_IDENTITY_ENCODINGS = frozenset({"binary", "7bit", "8bit"})


@dataclass(frozen=True, slots=True)
class MediaType:
    """``type/subtype;param=value`` with the type lower-cased and values unquoted."""

    type: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        lname = name.lower()
        for n, v in self.params:
            if n == lname:
                return v
        return None


def parse_media_type(text: str) -> MediaType:
    """Parse a Content-Type value (RFC 2045 §5.1); parameter names lower-cased."""
    items = split_outside(text, ";")
    media = items[0].strip().lower()
    kind, slash, sub = media.partition("/")
    if not slash or not _MIME_TOKEN.fullmatch(kind) or not _MIME_TOKEN.fullmatch(sub):
        raise RemoteProtocolError(f"bad media type: {text!r}")
    params: list[tuple[str, str]] = []
    for item in items[1:]:
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        value = value.strip()
        if not eq or not _MIME_TOKEN.fullmatch(name):
            raise RemoteProtocolError(f"bad media type parameter: {item!r}")
        if value[:1] == '"':
            if quoted_end(value, 0) != len(value):
                raise RemoteProtocolError(f"bad quoted parameter value: {item!r}")
            value = unquote(value)
        elif not _MIME_TOKEN.fullmatch(value):
            raise RemoteProtocolError(f"bad media type parameter value: {item!r}")
        params.append((name, value))
    return MediaType(media, tuple(params))


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One body part: its Content-ID (without the angle brackets), media type and bytes."""

    content_id: str | None
    content_type: MediaType
    body: bytes


@dataclass(frozen=True, slots=True)
class MultipartRelated:
    """A multipart/related body: its parts in order, the root first found by ``start``."""

    type: str | None
    parts: tuple[BodyPart, ...]
    root: BodyPart

    def by_content_id(self) -> dict[str, tuple[str, bytes]]:
        """Content-ID -> (media type, bytes) of every part that has one."""
        return {p.content_id: (p.content_type.type, p.body) for p in self.parts if p.content_id}

    def part(self, content_id: str) -> BodyPart | None:
        """The part whose Content-ID is ``content_id`` (with or without ``<>``)."""
        wanted = _bare_cid(content_id)
        for part in self.parts:
            if part.content_id == wanted:
                return part
        return None


def parse_multipart(content_type: str, body: bytes) -> MultipartRelated:
    """Parse a multipart/related body given its Content-Type header value.

    RFC 2387 §3.2: the root is the part named by the ``start`` parameter, or
    the first part when there is none; its media type must equal ``type``
    when that is given (§3.1). Raises ``RemoteProtocolError`` on anything else.
    """
    media = parse_media_type(content_type)
    if media.type != "multipart/related":
        raise RemoteProtocolError(f"not multipart/related: {media.type!r}")
    boundary = media.param("boundary")
    if boundary is None or not _BOUNDARY.fullmatch(boundary):
        raise RemoteProtocolError(f"missing or bad boundary: {boundary!r}")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise RemoteProtocolError("body must be bytes")
    parts = tuple(_part(raw) for raw in _split(bytes(body), boundary.encode("ascii")))
    if not parts:
        raise RemoteProtocolError("multipart body without parts")
    ids = [p.content_id for p in parts if p.content_id is not None]
    if len(ids) != len(set(ids)):
        raise RemoteProtocolError("two parts with the same Content-ID")
    start = media.param("start")
    if start is None:
        root = parts[0]
    else:
        found = next((p for p in parts if p.content_id == _bare_cid(start)), None)
        if found is None:
            raise RemoteProtocolError(f"no part has the start Content-ID {start!r}")
        root = found
    root_type = media.param("type")
    if root_type is not None and root.content_type.type != root_type.lower():
        raise RemoteProtocolError(
            f"root part is {root.content_type.type!r}, the type parameter says {root_type!r}"
        )
    return MultipartRelated(root_type, parts, root)


def _split(body: bytes, boundary: bytes) -> list[bytes]:
    """The raw parts between the delimiters (RFC 2046 §5.1.1)."""
    delimiter = b"--" + boundary
    # The first delimiter may open the body; every other one follows a CRLF.
    if body.startswith(delimiter):
        position = 0
    else:
        position = body.find(b"\r\n" + delimiter)
        if position < 0:
            raise RemoteProtocolError("multipart body without its boundary")
        position += 2
    parts: list[bytes] = []
    while True:
        after = position + len(delimiter)
        if body[after : after + 2] == b"--":
            return parts  # close-delimiter; the epilogue is ignored
        line_end = body.find(b"\r\n", after)
        # transport-padding: the delimiter line may end in spaces or tabs.
        if line_end < 0 or body[after:line_end].strip(b" \t"):
            raise RemoteProtocolError("malformed boundary line")
        start = line_end + 2
        following = body.find(b"\r\n" + delimiter, start)
        if following < 0:
            raise RemoteProtocolError("multipart body is not closed")
        if len(parts) >= MAX_PARTS:
            raise RemoteProtocolError(f"more than {MAX_PARTS} parts")
        parts.append(body[start:following])
        position = following + 2


def _part(raw: bytes) -> BodyPart:
    """Headers, blank line, content (RFC 2046 §5.1.1 body-part)."""
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            raise RemoteProtocolError("body part without the blank line after its headers")
        head, content = raw[:end], raw[end + 4 :]
    fields: dict[str, str] = {}
    if head:
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise RemoteProtocolError("non-ASCII body part header") from None
        # RFC 5322 §2.2.3: a line starting with white space continues the field.
        lines = re.sub(r"\r\n[ \t]+", " ", text).split("\r\n")
        if len(lines) > MAX_PART_HEADERS:
            raise RemoteProtocolError(f"more than {MAX_PART_HEADERS} body part headers")
        for line in lines:
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not _MIME_TOKEN.fullmatch(name):
                raise RemoteProtocolError(f"bad body part header: {line!r}")
            if name in fields:
                raise RemoteProtocolError(f"repeated body part header: {name}")
            fields[name] = value.strip()
    encoding = fields.get("content-transfer-encoding", "binary").lower()
    if encoding not in _IDENTITY_ENCODINGS:
        raise RemoteProtocolError(f"unsupported Content-Transfer-Encoding: {encoding!r}")
    # RFC 2046 §5.1: a part without Content-Type is text/plain.
    media = parse_media_type(fields.get("content-type", "text/plain"))
    cid = fields.get("content-id")
    return BodyPart(None if cid is None else _content_id(cid), media, content)


def _content_id(value: str) -> str:
    """RFC 2045 §7: Content-ID is a msg-id, ``<id>``."""
    if len(value) < 3 or value[0] != "<" or value[-1] != ">" or "<" in value[1:-1]:
        raise RemoteProtocolError(f"bad Content-ID: {value!r}")
    return value[1:-1]


def _bare_cid(value: str) -> str:
    """A Content-ID as the ``start`` parameter or an RLMI ``cid`` gives it,
    with or without the angle brackets (RFC 2387 §3.2, RFC 4662 §5.3)."""
    value = value.strip()
    if value[:1] == "<" and value[-1:] == ">":
        return value[1:-1]
    return value
