"""Parameter lists and the small pieces of RFC 3261 §25.1 grammar they need.

Header values in SIP end in ``*( SEMI generic-param )`` (RFC 3261 §25.1):

    generic-param  =  token [ EQUAL gen-value ]
    gen-value      =  token / host / quoted-string

A parameter list is kept as a tuple of ``(name, value)`` pairs in received
order, ``value`` being ``None`` for a valueless parameter such as ``lr`` or
``rport``.  Quoted values keep their quotes, so that formatting gives back
what was parsed.  Names compare case-insensitively (§7.3.1: "field names
are always case-insensitive" — and so are parameter names, §19.1.4 and
§20).

These functions are shared by ``uri.py`` and ``headers.py``; they are written
for the common case (no quotes, no angle brackets) to cost one ``str.split``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Self

from .errors import LocalProtocolError, RemoteProtocolError

Params = tuple[tuple[str, str | None], ...]

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value when not quoted: token / host (host adds ":" "[" "]" for IPv6).
_GEN_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string opening at ``text[start] == '"'``.

    RFC 3261 §25.1: ``quoted-pair = "\\" (%x00-09 / %x0B-0C / %x0E-7F)`` — a
    backslash takes the next character literally, including a quote.
    """
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        else:
            i += 1
    raise RemoteProtocolError(f"unterminated quoted string: {text!r}")


def split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not inside a quoted string or ``<...>``."""
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    begin = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = quoted_end(text, i)
            continue
        if c == "<":
            close = text.find(">", i)
            if close < 0:
                raise RemoteProtocolError(f"unterminated '<': {text!r}")
            i = close + 1
            continue
        if c == sep:
            parts.append(text[begin:i])
            begin = i + 1
        i += 1
    parts.append(text[begin:])
    return parts


def quote(text: str) -> str:
    """``text`` as a quoted-string, escaping ``"`` and ``\\`` (§25.1)."""
    if "\r" in text or "\n" in text:
        # quoted-pair cannot carry CR or LF: such a value cannot be sent.
        raise LocalProtocolError(f"CR/LF cannot appear in a quoted string: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(quoted: str) -> str:
    """The content of a well-formed quoted-string (quotes included in input)."""
    inner = quoted[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_params(text: str) -> Params:
    """Parse ``;a=b;c;d="x y"`` (leading ``;`` required unless ``text`` is blank)."""
    text = text.strip()
    if not text:
        return ()
    if text[0] != ";":
        raise RemoteProtocolError(f"expected ';' before parameters: {text!r}")
    out: list[tuple[str, str | None]] = []
    for item in split_outside(text[1:], ";"):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not is_token(name):
            raise RemoteProtocolError(f"bad parameter name: {item!r}")
        if not eq:
            out.append((name, None))
            continue
        value = value.strip()
        if value[:1] == '"':
            if quoted_end(value, 0) != len(value):
                raise RemoteProtocolError(f"bad quoted parameter value: {item!r}")
        elif _GEN_VALUE.fullmatch(value) is None:
            raise RemoteProtocolError(f"bad parameter value: {item!r}")
        out.append((name, value))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def find_param(params: Params, name: str) -> tuple[bool, str | None]:
    """(present, value) for the first parameter called ``name``."""
    lname = name.lower()
    for n, v in params:
        if n.lower() == lname:
            return True, v
    return False, None


def replace_params(params: Params, updates: Mapping[str, str | None]) -> Params:
    """Params with ``updates`` applied: existing names replaced in place, new ones appended."""
    pending = {k.lower(): (k, v) for k, v in updates.items()}
    out: list[tuple[str, str | None]] = []
    for n, v in params:
        hit = pending.pop(n.lower(), None)
        out.append((n, hit[1]) if hit is not None else (n, v))
    out.extend(pending.values())
    return tuple(out)


def remove_params(params: Params, names: Iterable[str]) -> Params:
    drop = {n.lower() for n in names}
    return tuple((n, v) for n, v in params if n.lower() not in drop)


class WithParams:
    """Parameter lookups and copies for a frozen dataclass with a ``params`` field
    (URIs, name-addrs and header values share the ``;name=value`` grammar)."""

    __slots__ = ()
    params: Params

    def param(self, name: str) -> str | None:
        """The raw value (quoted values keep their quotes) of the first parameter
        ``name``; ``None`` when absent *or valueless* (see :meth:`has_param`)."""
        return find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return find_param(self.params, name)[0]

    def delta_param(self, name: str) -> int | None:
        """A parameter whose value is delta-seconds (RFC 3261 §25.1), as a number."""
        value = find_param(self.params, name)[1]
        return None if value is None else parse_delta_seconds(value, f"{name} parameter")

    def with_params(self, **params: str | None) -> Self:
        """A copy with parameters set (``None`` = valueless, e.g. ``lr=None``)."""
        return replace(self, params=replace_params(self.params, params))  # type: ignore[type-var]

    def without_params(self, *names: str) -> Self:
        return replace(self, params=remove_params(self.params, names))  # type: ignore[type-var]


def parse_delta_seconds(text: str, what: str) -> int:
    """RFC 3261 §25.1 ``delta-seconds = 1*DIGIT``.

    Values beyond 2**32-1 are clamped to it, as §20.19 bounds Expires to
    "between 0 and (2**32)-1"; a longer string is garbage rather than a number.
    """
    text = text.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise RemoteProtocolError(f"bad {what}: {text!r}")
    return min(int(text), 2**32 - 1)
