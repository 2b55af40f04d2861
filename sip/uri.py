"""SIP URIs, other absolute URIs, and name-addr values.

``SipURI`` follows RFC 3261 §19.1.1:

    sip:user:password@host:port;uri-parameters?headers

Components are kept *unescaped* (``%41`` becomes ``A``) and escaped again by
``__str__`` with the character sets of §25.1, so that ``SipURI.parse(str(u))
== u`` for every value, and ``str(SipURI.parse(s)) == s`` whenever ``s`` is
escaped the canonical way.  §19.1.4: "characters other than those in the
'reserved' set ... are equivalent to their '%' HEX HEX encoding", so
unescaped storage is also what comparisons want.  Octets that are not UTF-8
survive a round trip through ``surrogateescape``.

``host`` is kept as written, IPv6 references with their brackets
(``[2001:db8::1]``), because that is the form every SIP header uses.

Other schemes (``tel:``, ``pres:``, ``mailto:``, the watcher URIs of RFC 3858
watcherinfo, ...) may appear in name-addr values and in the Request-URI
(§25.1: ``Request-URI = SIP-URI / SIPS-URI / absoluteURI``).  They become an
``AbsoluteURI``: the scheme plus the opaque rest, kept verbatim.  ``URI`` is
the union of the two, and what ``NameAddr.uri`` and ``Request.uri`` hold;
``NameAddr.sip_uri`` narrows it where a SIP URI is required (Contact and
Record-Route of a dialog, §12.1.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import quote as _pct_quote
from urllib.parse import unquote as _pct_unquote

from .errors import RemoteProtocolError
from .params import (
    Params,
    WithParams,
    format_params,
    parse_params,
    quote,
    quoted_end,
    replace_params,
    unquote,
)

__all__ = ["URI", "AbsoluteURI", "NameAddr", "SipURI", "parse_hostport", "parse_uri"]

# RFC 3261 §25.1 character classes, with "%" HEX HEX escapes allowed.
#   unreserved      = alphanum / "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
#   user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
#   password        = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
#   param-unreserved= "[" / "]" / "/" / ":" / "&" / "+" / "$"
#   hnv-unreserved  = "[" / "]" / "/" / "?" / ":" / "+" / "$"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|%[0-9A-Fa-f]{{2}})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|%[0-9A-Fa-f]{{2}})*")
_PARAM = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|%[0-9A-Fa-f]{{2}})+")
_HNAME = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|%[0-9A-Fa-f]{{2}})+")
_HVALUE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|%[0-9A-Fa-f]{{2}})*")
# Output: the same sets without "%", which must itself be escaped.
_USER_SAFE = "!~*'()&=+$,;?/"
_PASSWORD_SAFE = "!~*'()&=+$,"
_PARAM_SAFE = "!~*'()[]/:&+$"
_HEADER_SAFE = "!~*'()[]/?:+$"
_NEEDS_ESCAPE_USER = re.compile(r"[^A-Za-z0-9\-_.!~*'()&=+$,;?/]")
_NEEDS_ESCAPE_PASSWORD = re.compile(r"[^A-Za-z0-9\-_.!~*'()&=+$,]")
_NEEDS_ESCAPE_PARAM = re.compile(r"[^A-Za-z0-9\-_.!~*'()\[\]/:&+$]")
_NEEDS_ESCAPE_HEADER = re.compile(r"[^A-Za-z0-9\-_.!~*'()\[\]/?:+$]")

# host = hostname / IPv4address / IPv6reference (§25.1).  Hostnames are
# checked loosely (labels of alphanum and "-"), IPv6 references by alphabet.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?")
_IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# An opaque URI body: printable ASCII without SP, '"', '<', '>' (RFC 2396 uric
# plus the few characters real peers use unescaped).
_OPAQUE = re.compile(r"[!#-;=?-~]+")
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def _decode(text: str, pattern: re.Pattern[str], what: str) -> str:
    if pattern.fullmatch(text) is None:
        raise RemoteProtocolError(f"bad {what}: {text!r}")
    if "%" not in text:
        return text
    return _pct_unquote(text, errors="surrogateescape")


def _encode(text: str, needs: re.Pattern[str], safe: str) -> str:
    if needs.search(text) is None:
        return text
    return _pct_quote(text, safe=safe, errors="surrogateescape")


def parse_hostport(text: str) -> tuple[str, int | None]:
    """``host [":" port]`` (§25.1 hostport; §20.42 sent-by), IPv6 in brackets."""
    text = text.strip()
    if text[:1] == "[":
        close = text.find("]")
        if close < 0:
            raise RemoteProtocolError(f"unterminated IPv6 reference: {text!r}")
        host, rest = text[: close + 1], text[close + 1 :].strip()
        if _IPV6_REFERENCE.fullmatch(host) is None:
            raise RemoteProtocolError(f"bad IPv6 reference: {text!r}")
        if not rest:
            return host, None
        if rest[0] != ":":
            raise RemoteProtocolError(f"bad host:port: {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        host = host.rstrip()
        if _HOSTNAME.fullmatch(host) is None:
            raise RemoteProtocolError(f"bad host: {text!r}")
        if not colon:
            return host, None
    port_text = port_text.strip()
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise RemoteProtocolError(f"bad port: {text!r}")
    port = int(port_text)
    if port > 65535:
        raise RemoteProtocolError(f"port out of range: {text!r}")
    return host, port


@dataclass(frozen=True, slots=True)
class SipURI(WithParams):
    """A ``sip:`` or ``sips:`` URI (RFC 3261 §19.1.1), components unescaped."""

    scheme: str
    user: str | None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None
    # The text __str__ made, kept: a dialog's URIs are written into every
    # request of it, and a gateway shares one object per address among its
    # dialogs.  Not a value of the URI: outside comparison, hash and repr.
    _text: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> SipURI:
        colon = text.find(":")
        scheme = text[:colon].lower()
        if colon < 0 or scheme not in ("sip", "sips"):
            raise RemoteProtocolError(f"not a SIP URI: {text!r}")
        rest = text[colon + 1 :]
        user: str | None = None
        password: str | None = None
        # "@" can appear in no other part of a SIP URI unescaped (§25.1), but
        # ";" and "?" can appear in the user part: split on "@" first.
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user_text, has_password, password_text = userinfo.partition(":")
            user = _decode(user_text, _USER, "URI user")
            if has_password:
                password = _decode(password_text, _PASSWORD, "URI password")
        headers: tuple[tuple[str, str], ...] = ()
        qmark = rest.find("?")
        if qmark >= 0:
            headers = _parse_uri_headers(rest[qmark + 1 :], text)
            rest = rest[:qmark]
        params: Params = ()
        semi = rest.find(";")
        if semi >= 0:
            params = _parse_uri_params(rest[semi + 1 :], text)
            rest = rest[:semi]
        if not rest or rest != rest.strip():
            raise RemoteProtocolError(f"bad host in URI: {text!r}")
        host, port = parse_hostport(rest)
        return cls(scheme, user, host, port, params, headers, password)

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._format()
            object.__setattr__(self, "_text", text)  # frozen: a cache, not a field's value
        return text

    def _format(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(_encode(self.user, _NEEDS_ESCAPE_USER, _USER_SAFE))
            if self.password is not None:
                parts.append(":")
                parts.append(_encode(self.password, _NEEDS_ESCAPE_PASSWORD, _PASSWORD_SAFE))
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.params:
            parts.append(";")
            parts.append(_encode(name, _NEEDS_ESCAPE_PARAM, _PARAM_SAFE))
            if value is not None:
                parts.append("=")
                parts.append(_encode(value, _NEEDS_ESCAPE_PARAM, _PARAM_SAFE))
        sep = "?"
        for name, value in self.headers:
            parts.append(sep)
            parts.append(_encode(name, _NEEDS_ESCAPE_HEADER, _HEADER_SAFE))
            parts.append("=")
            parts.append(_encode(value, _NEEDS_ESCAPE_HEADER, _HEADER_SAFE))
            sep = "&"
        return "".join(parts)

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter, lower-cased (§19.1.4: compared case-insensitively)."""
        value = self.param("transport")
        return value.lower() if value is not None else None

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def aor(self) -> str:
        """``scheme:user@host`` — the address-of-record form, no port or parameters.

        Scheme and host are lower-cased (§19.1.4: compared case-insensitively);
        the user part is case-sensitive and kept.
        """
        host = self.host.lower()
        if self.user is None:
            return f"{self.scheme}:{host}"
        return f"{self.scheme}:{_encode(self.user, _NEEDS_ESCAPE_USER, _USER_SAFE)}@{host}"


def _parse_uri_params(text: str, uri: str) -> Params:
    out: list[tuple[str, str | None]] = []
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        pname = _decode(name, _PARAM, f"URI parameter in {uri!r}")
        out.append((pname, _decode(value, _PARAM, f"URI parameter in {uri!r}") if eq else None))
    return tuple(out)


def _parse_uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not eq:
            raise RemoteProtocolError(f"URI header without '=': {uri!r}")
        out.append(
            (
                _decode(name, _HNAME, f"URI header in {uri!r}"),
                _decode(value, _HVALUE, f"URI header in {uri!r}"),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """A URI of another scheme (``tel:+1-201-555-0123``, ``pres:bob@example.com``).

    The part after the colon is opaque to SIP and kept verbatim.
    """

    scheme: str
    opaque: str

    @classmethod
    def parse(cls, text: str) -> AbsoluteURI:
        scheme, colon, opaque = text.partition(":")
        if not colon or _SCHEME.fullmatch(scheme) is None:
            raise RemoteProtocolError(f"bad URI: {text!r}")
        scheme = scheme.lower()
        if scheme in ("sip", "sips"):
            raise RemoteProtocolError(f"SIP URI where another scheme was expected: {text!r}")
        if _OPAQUE.fullmatch(opaque) is None:
            raise RemoteProtocolError(f"bad URI: {text!r}")
        return cls(scheme, opaque)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    @property
    def aor(self) -> str:
        return str(self)


URI = SipURI | AbsoluteURI


def parse_uri(text: str) -> URI:
    """A SIP/SIPS URI as ``SipURI``, any other absolute URI as ``AbsoluteURI``."""
    head = text[:5].lower()
    if head.startswith("sip:") or head == "sips:":
        return SipURI.parse(text)
    return AbsoluteURI.parse(text)


@dataclass(frozen=True, slots=True)
class NameAddr(WithParams):
    """``[display-name] <URI> *(;param)`` or a bare addr-spec (RFC 3261 §20.10, §25.1).

    ``params`` are *header* parameters (``tag``, ``expires``, ``q``, ...).
    §20: "If the URI is not enclosed in angle brackets, any semicolon-delimited
    parameters are header-parameters, not URI parameters" — so
    ``sip:a@b;tag=x`` gives a URI without parameters and ``tag=x``.
    ``__str__`` always writes the URI in angle brackets, which is valid for
    every URI.  ``display`` is the unquoted display name, ``None`` when there
    is none (``""`` for an explicit ``""``).
    """

    display: str | None
    uri: URI
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        s = text.strip()
        if not s:
            raise RemoteProtocolError("empty name-addr")
        display: str | None
        if s[0] == '"':
            end = quoted_end(s, 0)
            display = unquote(s[:end])
            rest = s[end:].lstrip()
            if rest[:1] != "<":
                raise RemoteProtocolError(f"display name without <URI>: {text!r}")
        else:
            lt = s.find("<")
            if lt < 0:
                # addr-spec: the URI ends at the first ";" (§20).
                semi = s.find(";")
                uri_text, param_text = (s, "") if semi < 0 else (s[:semi], s[semi:])
                return cls(None, _parse_addr_uri(uri_text.rstrip(), text), parse_params(param_text))
            words = s[:lt].split()
            for word in words:
                if '"' in word or ">" in word or not word.isprintable():
                    raise RemoteProtocolError(f"bad display name: {text!r}")
            display = " ".join(words) if words else None
            rest = s[lt:]
        gt = rest.find(">")
        if gt < 0:
            raise RemoteProtocolError(f"unterminated <URI>: {text!r}")
        uri = _parse_addr_uri(rest[1:gt], text)
        return cls(display, uri, parse_params(rest[gt + 1 :]))

    def __str__(self) -> str:
        head = f"<{self.uri}>" if self.display is None else f"{quote(self.display)} <{self.uri}>"
        return head + format_params(self.params) if self.params else head

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return replace(self, params=replace_params(self.params, {"tag": tag}))

    @property
    def expires(self) -> int | None:
        """Contact ``expires`` parameter (§20.10), delta-seconds."""
        return self.delta_param("expires")

    @property
    def q(self) -> float | None:
        """Contact ``q`` parameter (§20.10).

        ``qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )``
        """
        value = self.param("q")
        if value is None:
            return None
        if _QVALUE.fullmatch(value) is None:
            raise RemoteProtocolError(f"bad q value: {value!r}")
        return float(value)

    @property
    def sip_uri(self) -> SipURI:
        """The URI when it must be SIP (a dialog's remote target, a route)."""
        if not isinstance(self.uri, SipURI):
            raise RemoteProtocolError(f"SIP URI required, got {self.uri}")
        return self.uri

    @property
    def aor(self) -> str:
        return self.uri.aor


def _parse_addr_uri(text: str, whole: str) -> URI:
    if not text:
        raise RemoteProtocolError(f"empty URI in {whole!r}")
    return parse_uri(text)
