"""SIP messages: headers, requests, responses, and their framing on the wire.

Parsing (RFC 3261 §7)
---------------------
``parse_message`` reads one datagram; ``StreamParser`` frames messages out of
a TCP/TLS byte stream by Content-Length (§18.3).  Both share one head parser:
the start line, then header lines split on CRLF, with folded continuation
lines joined (§7.3.1: "the entire line can be treated as a single line with
the LWS replaced by a single SP").  Header *values* are kept as strings and
parsed into typed values only when an accessor asks, except the five that
every layer above needs on every message — Via, From, To, Call-ID, CSeq —
which are checked (and cached) when the message is parsed, so a message that
``parse_message`` returns never fails on those accessors.

Lines end in CRLF only: a bare CR or LF in the head is garbage.  The head is
UTF-8 (§7.3.1: values may contain UTF-8 text).

Typed accessors parse on access and cache the result keyed by the raw header
strings they came from, so mutating ``headers`` afterwards is safe.  They
return fresh lists, never the cached ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from .errors import LocalProtocolError, RemoteProtocolError
from .headers import CSeq, Event, RetryAfter, SubscriptionState, Via
from .params import is_token, parse_delta_seconds, split_outside
from .uri import URI, NameAddr, parse_uri

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "DEFAULT_MAX_STREAM_MESSAGE",
    "REASON_PHRASES",
    "Headers",
    "LeanNotify",
    "LeanSuccess",
    "Message",
    "Request",
    "Response",
    "StreamParser",
    "is_keepalive",
    "parse_message",
    "read_lean_notify",
    "read_lean_success",
]

# The largest UDP payload over IPv4; nothing larger can arrive as one datagram.
DEFAULT_MAX_DATAGRAM = 65535
DEFAULT_MAX_STREAM_MESSAGE = 256 * 1024

# RFC 3261 §7.3.3 compact forms, plus those of later RFCs:
# o, u: RFC 6665 §8.2.1/§8.2.2; r: RFC 3515; b: RFC 3892; x: RFC 4028;
# a, j, d: RFC 3841; y, n: RFC 4474.
_COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}

_CANONICAL_NAMES = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info",
    "Allow", "Allow-Events", "Authentication-Info", "Authorization", "Call-ID",
    "Call-Info", "Contact", "Content-Disposition", "Content-Encoding",
    "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
    "Error-Info", "Event", "Expires", "From", "Identity", "Identity-Info",
    "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "Path", "Priority",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck",
    "Reason", "Record-Route", "Refer-To", "Referred-By", "Reject-Contact",
    "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq",
    "Server", "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
]  # fmt: skip
_CANONICAL = {name.lower(): name for name in _CANONICAL_NAMES}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1: "Multiple
# header field rows with the same field-name MAY be present ... if and only if
# the entire field-value for that header field is defined as a comma-separated
# list").  Everything else — WWW-Authenticate, Authorization, Date, unknown
# headers — is never split, as commas are part of those values.
_LIST_KEYS = frozenset(
    {
        "accept", "accept-contact", "accept-encoding", "accept-language",
        "alert-info", "allow", "allow-events", "call-info", "contact",
        "content-encoding", "content-language", "error-info", "in-reply-to",
        "p-asserted-identity", "path", "proxy-require", "reason", "record-route",
        "reject-contact", "request-disposition", "require", "route",
        "service-route", "supported", "unsupported", "via", "warning",
    }
)  # fmt: skip


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = name.lower()
        key = _COMPACT.get(key, key)
    return key


# The key of every known name as the code spells it, lower-cased or compact.
_KEYS = {
    **{name: name.lower() for name in _CANONICAL_NAMES},
    **{name.lower(): name.lower() for name in _CANONICAL_NAMES},
    **_COMPACT,
}


# Header names already checked: name as written -> (key, display name).  Every
# message built or parsed checks each of its header names, almost always the
# same dozen, and the token check and lower-casing were a sizeable part of a
# PUBLISH round trip (profiled).  Bounded, because received names are chosen
# by the peer.
_NAMES: dict[str, tuple[str, str]] = {}
_NAMES_MAX = 512


def _checked_name(name: str) -> tuple[str, str] | None:
    """(key, display name) of a valid header name; None if it is no token."""
    hit = _NAMES.get(name)
    if hit is None:
        if not is_token(name):
            return None
        key = _key(name)
        hit = (key, _CANONICAL.get(key, name))
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[name] = hit
    return hit


class Headers:
    """An ordered list of header fields, looked up case-insensitively.

    Names are stored in canonical spelling (compact forms expanded, known
    headers in their RFC spelling, unknown ones as given).  Values are the
    raw field values, trimmed.
    """

    __slots__ = ("_firsts", "_items", "_version")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (lower-case canonical name, display name, value)
        self._items: list[tuple[str, str, str]] = []
        # Bumped by every change, so a message's typed views of its headers
        # know whether they are still current without rescanning the fields.
        self._version = 0
        # (version, first value of each key): a message's headers are looked
        # up a dozen times on their way through the stack.
        self._firsts: tuple[int, dict[str, str]] | None = None
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _vouched(cls, items: list[tuple[str, str, str]]) -> Headers:
        """Fields (key, RFC spelling, value) that need no check: texts a
        message of ours had before, or that came from the parser."""
        headers = cls()
        headers._items = items
        return headers

    @staticmethod
    def _checked(name: str, value: str) -> tuple[str, str, str]:
        names = _checked_name(name)
        if names is None:
            raise LocalProtocolError(f"bad header name: {name!r}")
        if "\r" in value or "\n" in value or "\0" in value:
            # A CR or LF would end the header line and let the value forge
            # further headers; RFC 3261 §7.3.1 folding is never needed on output.
            raise LocalProtocolError(f"CR, LF or NUL in {name} value: {value!r}")
        return names[0], names[1], value.strip()

    def add(self, name: str, value: str) -> None:
        """Append a field (after any existing ones of that name)."""
        self._items.append(self._checked(name, value))
        self._version += 1

    def prepend(self, name: str, value: str) -> None:
        """Insert a field first (a new topmost Via, §8.1.1.7 / §16.6)."""
        self._items.insert(0, self._checked(name, value))
        self._version += 1

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name with one, at the first one's place."""
        item = self._checked(name, value)
        self._version += 1
        key = item[0]
        for i, (k, _, _) in enumerate(self._items):
            if k == key:
                self._items[i] = item
                self._items[i + 1 :] = [it for it in self._items[i + 1 :] if it[0] != key]
                return
        self._items.append(item)

    def remove(self, name: str) -> int:
        """Remove every field of that name; returns how many there were."""
        key = _key(name)
        before = len(self._items)
        self._items = [it for it in self._items if it[0] != key]
        self._version += 1
        return before - len(self._items)

    def _first_values(self) -> dict[str, str]:
        firsts = self._firsts
        if firsts is None or firsts[0] != self._version:
            # Read backwards, so that the first field of a name is what stays.
            firsts = self._firsts = (self._version, {k: v for k, _, v in reversed(self._items)})
        return firsts[1]

    def get(self, name: str) -> str | None:
        """The first value, or None.  For list headers, the first list element."""
        key = _key(name)
        v = self._first_values().get(key)
        if v is not None and key in _LIST_KEYS and ("," in v or not v):
            values = self.get_all(name)
            return values[0] if values else None
        return v

    def get_all(self, name: str) -> list[str]:
        """Every value in order; comma-joined values of list headers split."""
        key = _key(name)
        if key not in _LIST_KEYS:
            return [v for k, _, v in self._items if k == key]
        out: list[str] = []
        for k, _, v in self._items:
            if k == key:
                if "," in v:
                    out.extend(p.strip() for p in split_outside(v, ",") if p.strip())
                elif v:
                    out.append(v)
        return out

    def get_raw(self, name: str) -> list[str]:
        """The field values as they appear, one per header line, never split."""
        key = _key(name)
        return [v for k, _, v in self._items if k == key]

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for _, name, value in self._items:
            yield name, value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return _key(name) in self._first_values()

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({[(n, v) for _, n, v in self._items]!r})"


T = TypeVar("T")

# Typed values of header texts parsed recently, one table per parser.  The
# values are frozen, so sharing one between messages is safe, and the same
# texts come back all the time: our Contact as the Request-URI of every
# NOTIFY, the presence server's Contact on every NOTIFY and 200, a dialog's
# From and To on both (RFC 3261 §12.2.1.1: they carry the same tags for the
# dialog's life; the NOTIFY's To is the SUBSCRIBE's From and its From the
# 200's To), Event, Subscription-State, and CSeq (the same few numbers in
# every dialog).  Only successful parses are kept; a table that fills up is
# emptied, so its size stays bounded whatever texts a peer sends.
_PARSED_MAX = 4096


class _Parsed(dict[str, T]):
    """A table of typed values by text: a text seen before is one lookup of
    the dict, a new one is parsed (raising as the parser does) and kept."""

    __slots__ = ("_parse",)

    def __init__(self, parse: Callable[[str], T]) -> None:
        super().__init__()
        self._parse = parse

    def __missing__(self, text: str) -> T:
        value = self._parse(text)
        if len(self) >= _PARSED_MAX:
            self.clear()
        self[text] = value
        return value


_NAME_ADDRS = _Parsed(NameAddr.parse)
_URIS = _Parsed(parse_uri)
_CSEQS = _Parsed(CSeq.parse)
_EVENTS = _Parsed(Event.parse)
_SUBSCRIPTION_STATES = _Parsed(SubscriptionState.parse)
# Keyed by the Via text without its branch parameter (see _via).
_VIAS = _Parsed(Via.parse)
# An unquoted branch value, as both of Via.parse's paths read one (RFC 3261
# §25.1 gen-value = token / host).
_BRANCH_VALUE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")


def _uri(text: str) -> URI:
    return _URIS[text]


def _cseq(text: str) -> CSeq:
    return _CSEQS[text]


def _name_addr(text: str) -> NameAddr:
    hit = _NAME_ADDRS.get(text)
    if hit is not None:
        return hit
    cut = text.rfind(";tag=")
    tag = text[cut + 5 :]
    if cut > 0 and is_token(tag):
        # A tag is fresh per dialog (RFC 3261 §19.3) — a PUBLISH's 200 even
        # carries a new To tag each time — while the rest of the text
        # repeats: parse that rest once, and append the tag as the last
        # header parameter, as parsing the whole text would (§20.10, §25.1:
        # a token is a valid gen-value and holds no ";", ">" or blank).
        try:
            base: NameAddr | None = _NAME_ADDRS[text[:cut]]
        except RemoteProtocolError:
            base = None  # let the whole text's parse say what is wrong
        if base is not None:
            # Not kept: a gateway's dialogs, by the hundred thousand, would
            # fill the table with texts each seen twice or thrice per refresh
            # and empty it of the bases that every dialog shares.
            return NameAddr(base.display, base.uri, (*base.params, ("tag", tag)))
    return _NAME_ADDRS[text]


# A name-addr in its plainest shape, <sip:user@host>, each part drawn from a
# subset of what NameAddr.parse accepts there (§25.1: unreserved characters
# for the user, _HOSTNAME's host; no escapes, port or parameters): such a
# text is valid without being parsed.  A gateway's dialogs name more
# addresses than the table of parsed ones holds.
_PLAIN_ADDRESS = re.compile(
    r"<sips?:[A-Za-z0-9\-_.!~*'()]+@[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?>"
)


def _valid_address(text: str) -> bool:
    """Whether ``text`` is a name-addr known to parse, without parsing it."""
    return text in _NAME_ADDRS or _PLAIN_ADDRESS.fullmatch(text) is not None


def _check_name_addr(text: str) -> None:
    """Raise as :func:`_name_addr` would for ``text``, without making the value
    when its parts are known valid: the address and a token tag."""
    cut = text.rfind(";tag=")
    if cut > 0 and _valid_address(text[:cut]) and is_token(text[cut + 5 :]):
        return
    _name_addr(text)


def _via(text: str) -> Via:
    """``Via.parse(text)``, made from a cached parse of the text without its
    branch when it has one (an unquoted value in the common spelling).

    A branch is fresh per transaction (RFC 3261 §8.1.1.7) while the rest of
    the text repeats: the responses to our requests carry our own sent-by
    with the server's rport and received (RFC 3581 §4), its NOTIFYs its
    sent-by.  Without quotes or angle brackets, every ";" of a Via opens a
    parameter, so the branch goes back in at the place it was read from.
    """
    split = _via_branch(text)
    if split is not None:
        base, branch, cut = split
        params = base.params
        at = text.count(";", 0, cut)
        return Via(base.transport, base.host, base.port,
                   (*params[:at], ("branch", branch), *params[at:]), base.protocol)
    return Via.parse(text)


def _via_branch(text: str) -> tuple[Via, str, int] | None:
    """The Via of ``text`` without its branch (cached), the branch, and where
    it was cut out; None when ``text`` is not of that simple shape."""
    cut = text.find(";branch=")
    if cut > 0 and '"' not in text and "<" not in text:
        end = text.find(";", cut + 8)
        if end < 0:
            end = len(text)
        branch = text[cut + 8 : end]
        if _BRANCH_VALUE.fullmatch(branch) is not None:
            try:
                base = _VIAS[text[:cut] + text[end:]]
            except RemoteProtocolError:
                return None  # let the whole text's parse say what is wrong
            return base, branch, cut
    return None


def _event(text: str) -> Event:
    return _EVENTS[text]


def _subscription_state(text: str) -> SubscriptionState:
    return _SUBSCRIPTION_STATES[text]


@dataclass(eq=False)
class _Cache:
    """Typed values by accessor, valid for one Headers object at one version."""

    _cache: dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)
    _cache_headers: Headers | None = field(default=None, init=False, repr=False, compare=False)
    _cache_version: int = field(default=-1, init=False, repr=False, compare=False)


class _Accessors(_Cache):
    """Typed views of the headers shared by Request and Response, and equality."""

    headers: Headers
    body: bytes

    def _start(self) -> tuple[object, object]:
        """What the start line says: (method, URI) or (status, reason)."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Accessors)
        return (
            self._start() == other._start()
            and self.body == other.body
            and self._fields() == other._fields()
        )

    __hash__ = None  # type: ignore[assignment]

    def _fields(self) -> list[tuple[str, str]]:
        # Content-Length is derived from the body on output, so two messages
        # that differ only in it (or in having it) are the same message.
        return [(k, v) for k, _, v in self.headers._items if k != "content-length"]

    def _cached(self, key: str, build: Callable[[Headers], T]) -> T:
        # Valid while the same Headers object is unchanged (its version);
        # ``headers`` may also be replaced wholesale on a message.
        headers = self.headers
        cache = self._cache
        if self._cache_headers is headers and self._cache_version == headers._version:
            hit = cache.get(key, _MISSING)
            if hit is not _MISSING:
                # Not typing.cast: a call, and this runs on every access.
                return hit  # type: ignore[return-value]
        else:
            cache.clear()
            self._cache_headers = headers
            self._cache_version = headers._version
        value = build(headers)
        cache[key] = value
        return value

    def _remember(self, key: str, value: object) -> None:
        """Record a typed value the caller built along with its header text
        (it must equal what parsing that text gives), for the current headers."""
        headers = self.headers
        if self._cache_headers is not headers or self._cache_version != headers._version:
            self._cache.clear()
            self._cache_headers = headers
            self._cache_version = headers._version
        self._cache[key] = value

    @property
    def vias(self) -> list[Via]:
        """RFC 3261 §20.42, topmost first."""
        return list(self._cached("via", _vias))

    @property
    def top_via(self) -> Via | None:
        """The topmost Via (RFC 3261 §8.1.1.7, §17.1.3), or None."""
        vias = self._cached("via", _vias)
        return vias[0] if vias else None

    @property
    def call_id(self) -> str:
        """RFC 3261 §20.8: ``callid = word [ "@" word ]`` — no blanks."""
        return self._cached("call-id", _call_id_of)

    @property
    def cseq(self) -> CSeq:
        return self._cached("cseq", _cseq_of)

    @property
    def from_(self) -> NameAddr:
        return self._cached("from", _from_of)

    @property
    def to(self) -> NameAddr:
        return self._cached("to", _to_of)

    @property
    def contacts(self) -> list[NameAddr]:
        return list(self._cached("contact", _contacts))

    @property
    def record_routes(self) -> list[NameAddr]:
        return list(self._cached("record-route", lambda h: _name_addrs(h, "record-route")))

    @property
    def routes(self) -> list[NameAddr]:
        return list(self._cached("route", lambda h: _name_addrs(h, "route")))

    @property
    def expires(self) -> int | None:
        """RFC 3261 §20.19, delta-seconds."""
        return self._delta("expires", "Expires")

    @property
    def min_expires(self) -> int | None:
        """RFC 3261 §20.23 (with 423 Interval Too Brief)."""
        return self._delta("min-expires", "Min-Expires")

    @property
    def max_forwards(self) -> int | None:
        return self._delta("max-forwards", "Max-Forwards")

    def _delta(self, key: str, what: str) -> int | None:
        return self._cached(key, _DELTAS[key])

    @property
    def event(self) -> Event | None:
        return self._cached("event", lambda h: _optional(h, "event", _event))

    @property
    def subscription_state(self) -> SubscriptionState | None:
        return self._cached(
            "subscription-state",
            lambda h: _optional(h, "subscription-state", _subscription_state),
        )

    @property
    def retry_after(self) -> RetryAfter | None:
        return self._cached("retry-after", lambda h: _optional(h, "retry-after", RetryAfter.parse))

    @property
    def sip_etag(self) -> str | None:
        """RFC 3903 §11.3.1: ``SIP-ETag = "SIP-ETag" HCOLON entity-tag``, a token."""
        return self._cached("sip-etag", lambda h: _optional(h, "sip-etag", _entity_tag))

    @property
    def sip_if_match(self) -> str | None:
        """RFC 3903 §11.3.2."""
        return self._cached("sip-if-match", lambda h: _optional(h, "sip-if-match", _entity_tag))

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as sent (``application/pidf+xml;charset=UTF-8``)."""
        return self.headers.get("Content-Type")

    @property
    def media_type(self) -> str | None:
        """Content-Type without parameters, lower-cased (§20.15: case-insensitive)."""
        value = self.headers.get("Content-Type")
        return None if value is None else value.partition(";")[0].strip().lower()


# The builders of the typed values (module functions: no closure per access).
_MISSING = object()


def _required(h: Headers, name: str) -> str:
    value = h.get(name)
    if value is None:
        raise RemoteProtocolError(f"missing {name} header")
    return value


def _vias(h: Headers) -> tuple[Via, ...]:
    return tuple(_via(v) for v in h.get_all("via"))


def _call_id_of(h: Headers) -> str:
    return _call_id(_required(h, "Call-ID"))


def _cseq_of(h: Headers) -> CSeq:
    return _cseq(_required(h, "CSeq"))


def _from_of(h: Headers) -> NameAddr:
    return _name_addr(_required(h, "From"))


def _to_of(h: Headers) -> NameAddr:
    return _name_addr(_required(h, "To"))


def _contacts(h: Headers) -> tuple[NameAddr, ...]:
    return _name_addrs(h, "contact")


def _delta_of(key: str, what: str, h: Headers) -> int | None:
    value = h.get(key)
    return None if value is None else parse_delta_seconds(value, what)


_DELTAS = {
    key: partial(_delta_of, key, what)
    for key, what in (("expires", "Expires"), ("min-expires", "Min-Expires"),
                      ("max-forwards", "Max-Forwards"))
}


def _call_id(value: str) -> str:
    if len(value.split(None, 1)) != 1:
        raise RemoteProtocolError(f"bad Call-ID: {value!r}")
    return value


def _entity_tag(value: str) -> str:
    if not is_token(value):
        raise RemoteProtocolError(f"bad entity-tag: {value!r}")
    return value


def _name_addrs(h: Headers, key: str) -> tuple[NameAddr, ...]:
    return tuple(_name_addr(v) for v in h.get_all(key))


def _optional(h: Headers, key: str, parse: Callable[[str], T]) -> T | None:
    value = h.get(key)
    return None if value is None else parse(value)


def _serialise(start: str, headers: Headers, body: bytes) -> bytes:
    if "\r" in start or "\n" in start:
        raise LocalProtocolError(f"CR or LF in start line: {start!r}")
    lines = [start]
    length_done = False
    for key, name, value in headers._items:
        if key == "content-length":
            # Always the real body length, at the place of the first one.
            if not length_done:
                lines.append(f"Content-Length: {len(body)}")
                length_done = True
            continue
        lines.append(f"{name}: {value}")
    if not length_done:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


# RFC 3261 §21, RFC 3265/6665 (202, 489), RFC 3903 (412), RFC 5839 (204),
# RFC 4474 (428, 436-438), RFC 6228 (199), RFC 3329 (494).
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    423: "Interval Too Brief", 428: "Use Identity Header",
    436: "Bad Identity-Info", 437: "Unsupported Certificate", 438: "Invalid Identity Header",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}  # fmt: skip
# For codes without a phrase of their own: the class names of RFC 3261 §7.2.
_CLASS_PHRASES = {1: "Provisional", 2: "Success", 3: "Redirection", 4: "Client Error",
                  5: "Server Error", 6: "Global Failure"}  # fmt: skip


# The last Request-URI written and its text.  Every request in a dialog goes
# to its remote target (RFC 3261 §12.2.1.1), which is the presence server's
# Contact for all our dialogs: one URI object, read once by the parser.
_last_uri: tuple[URI | None, str] = (None, "")


def _uri_text(uri: URI) -> str:
    """``str(uri)``, made once for the same URI object asked again (URIs are frozen)."""
    global _last_uri
    last, text = _last_uri
    if last is not uri:
        text = str(uri)
        _last_uri = (uri, text)
    return text


_ECHOED_ORDER = {"via": 0, "from": 1, "to": 2, "call-id": 3, "cseq": 4}


def _echoed_order(item: tuple[str, str, str]) -> int:
    return _ECHOED_ORDER[item[0]]


@dataclass(eq=False)
class Request(_Accessors):
    method: str
    uri: URI
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _serialise(f"{self.method} {_uri_text(self.uri)} SIP/2.0", self.headers,
                          self.body)

    def _start(self) -> tuple[object, object]:
        return self.method, self.uri

    def response(
        self, status: int, reason: str | None = None, *, to_tag: str | None = None
    ) -> Response:
        """A response to this request, per RFC 3261 §8.2.6.2.

        "The From field of the response MUST equal the From header field of
        the request.  The Call-ID header field of the response MUST equal the
        Call-ID header field of the request.  The CSeq header field of the
        response MUST equal the CSeq field of the request.  The Via header
        field values in the response MUST equal the Via header field values in
        the request and MUST maintain the same ordering."  The To is copied
        too, and "if the request contained no tag in the To header field, the
        UAS MUST add one" — except in a 100 (Trying).  That tag is ``to_tag``;
        it is required then and ignored when the request's To already has one.
        """
        items, reason = self._response_items(status, reason, to_tag)
        return Response(status, reason, Headers._vouched(items))

    def response_bytes(
        self, status: int, reason: str | None = None, *, to_tag: str | None = None
    ) -> bytes:
        """``bytes(self.response(status, reason, to_tag=to_tag))``, made without
        the Response: the answer to every NOTIFY, which needs no more headers."""
        items, reason = self._response_items(status, reason, to_tag)
        if "\r" in reason or "\n" in reason:
            raise LocalProtocolError(f"CR or LF in reason phrase: {reason!r}")
        # The fields are the request's, as parsed or as checked when they
        # were added: no CR or LF is in any.
        head = "".join([f"SIP/2.0 {status} {reason}\r\n",
                        *[f"{name}: {value}\r\n" for _, name, value in items],
                        "Content-Length: 0\r\n\r\n"])
        return head.encode("utf-8", "surrogateescape")

    def _response_items(
        self, status: int, reason: str | None, to_tag: str | None
    ) -> tuple[list[tuple[str, str, str]], str]:
        """The fields of :meth:`response`, and its reason phrase."""
        if not 100 <= status <= 699:
            raise LocalProtocolError(f"status code out of range: {status}")
        if self.method == "ACK":
            raise LocalProtocolError("ACK is never answered (RFC 3261 §17.1.1.3)")
        # One pass, then a stable sort into Via, From, To, Call-ID, CSeq order
        # (the Vias keep theirs).
        items = [it for it in self.headers._items if it[0] in _ECHOED_ORDER]
        items.sort(key=_echoed_order)
        to_index = None
        for i, it in enumerate(items):
            if it[0] == "to":
                to_index = i
                break
        if to_index is not None and self.to.tag is None:
            if to_tag is not None:
                if not is_token(to_tag):
                    raise LocalProtocolError(f"bad To tag: {to_tag!r}")
                # Appending keeps the request's To text as it was; after an
                # addr-spec too, ";tag=" is a header parameter (§20).
                k, name, value = items[to_index]
                items[to_index] = (k, name, f"{value};tag={to_tag}")
            elif status != 100:
                raise LocalProtocolError(
                    f"a {status} response needs a To tag (RFC 3261 §8.2.6.2): pass to_tag"
                )
        if status == 100:
            # §8.2.6.1: "If a Timestamp header field is present in the request,
            # it MUST be copied into this 100 (Trying) response."
            for k, name, value in self.headers._items:
                if k == "timestamp":
                    items.append((k, name, value))
        elif status < 300 and self.method in ("SUBSCRIBE", "REFER", "INVITE"):
            # §12.1.1: a UAS establishing a dialog "MUST copy all Record-Route
            # header field values from the request into the response".
            for k, name, value in self.headers._items:
                if k == "record-route":
                    items.append((k, name, value))
        if reason is None:
            reason = REASON_PHRASES.get(status) or _CLASS_PHRASES[status // 100]
        return items, reason


@dataclass(eq=False)
class Response(_Accessors):
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def __bytes__(self) -> bytes:
        return _serialise(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)

    def _start(self) -> tuple[object, object]:
        return self.status, self.reason


Message = Request | Response


# -- parsing -----------------------------------------------------------------

_Head = tuple[str, Headers]


def _parse_head(data: bytes | bytearray, end: int) -> _Head:
    """Start line and headers of ``data[:end]`` (``end`` = the blank line)."""
    try:
        text = bytes(data[:end]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"message head is not UTF-8: {exc}") from None
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:
        raise RemoteProtocolError("bare CR or LF in message head")
    lines = text.split("\r\n")
    headers = Headers()
    items = headers._items
    names_seen = _NAMES
    for line in lines[1:]:
        colon = line.find(":")
        if colon > 0:
            # The common case first: a name spelled as before, no blanks.
            names = names_seen.get(line[:colon])
            if names is not None:
                items.append((names[0], names[1], line[colon + 1 :].strip()))
                continue
        if line[:1] in (" ", "\t"):
            # §7.3.1 folding: a line starting with whitespace continues the
            # previous header value.
            if not items:
                raise RemoteProtocolError("continuation line before any header")
            k, name, value = items[-1]
            items[-1] = (k, name, f"{value} {line.strip()}".strip())
            continue
        if colon <= 0:
            raise RemoteProtocolError(f"bad header line: {line!r}")
        # HCOLON = *( SP / HTAB ) ":" SWS — blanks may precede the colon.
        names = _checked_name(line[:colon].rstrip(" \t"))
        if names is None:
            raise RemoteProtocolError(f"bad header name: {line!r}")
        items.append((names[0], names[1], line[colon + 1 :].strip()))
    return lines[0], headers


def _content_length(headers: Headers) -> int | None:
    values = headers.get_raw("content-length")
    if not values:
        return None
    if any(v != values[0] for v in values):
        raise RemoteProtocolError(f"conflicting Content-Length values: {values!r}")
    value = values[0]
    if not value.isdigit() or not value.isascii() or len(value) > 12:
        raise RemoteProtocolError(f"bad Content-Length: {value!r}")
    return int(value)


def _start_line(start: str, headers: Headers, body: bytes) -> Message:
    """The Request or Response that the start line says, with these headers."""
    msg: Message
    if start[:4].upper() == "SIP/":
        parts = start.split(" ", 2)
        if len(parts) < 2 or parts[0].upper() != "SIP/2.0":
            raise RemoteProtocolError(f"bad status line: {start!r}")
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] not in "123456":
            raise RemoteProtocolError(f"bad status code: {start!r}")
        msg = Response(int(code), parts[2] if len(parts) == 3 else "", headers, body)
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2].upper() != "SIP/2.0" or not is_token(parts[0]):
            raise RemoteProtocolError(f"bad request line: {start!r}")
        msg = Request(parts[0], _uri(parts[1]), headers, body)
    return msg


def _build(head: _Head, body: bytes) -> Message:
    start, headers = head
    msg = _start_line(start, headers, body)
    # §8.1.1: To, From, CSeq, Call-ID, Max-Forwards and Via are mandatory in a
    # request; Max-Forwards is tolerated missing (§16.6 defaults it), the rest
    # are what every layer above matches on, so they are checked here once.
    if not msg.vias:
        raise RemoteProtocolError("missing Via header")
    msg.call_id  # noqa: B018
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        # §8.1.1.5: "The method MUST match that of the request."
        raise RemoteProtocolError(f"CSeq method {cseq.method} does not match {msg.method}")
    return msg


# What the lean parse reads: header names as the RFCs spell them, so that each
# stands for itself (no compact form, no other case) and a repeated one shows.
_LEAN_NAMES = frozenset(_CANONICAL_NAMES)


def _parse_lean(data: bytes) -> Message | None:
    """``parse_message(data)``, when ``data`` has the shape the presence server
    and every common stack send; None for anything else, which the full parse
    then reads (or refuses) as before.

    The shape: no CRLF before the start line; header lines ``Name: value``
    with names in their RFC spelling, each at most once (so one Via, no
    folding: a continuation line has no such name); Via, From, To, Call-ID
    and CSeq present, the Via one value.  The message is the very one the
    full parse builds — the same header items, the same checks of the five
    headers every layer reads (§8.1.1), by the same functions — made with
    the per-line work done by ``str`` and ``dict`` methods, and with the
    typed Via, Call-ID and CSeq kept for the accessors.
    """
    split = _lean_head(data)
    if split is None:
        return None
    start, fields, end = split
    keys = _KEYS
    # Stripped as the full parse strips every value (§7.3.1 LWS).
    items = [(keys[name], name, value.strip()) for name, value in fields.items()]
    headers = Headers()
    headers._items = items
    try:
        via = fields["Via"].strip()
        call_id = _call_id(fields["Call-ID"].strip())
        _check_name_addr(fields["From"].strip())
        _check_name_addr(fields["To"].strip())
        cseq = _cseq(fields["CSeq"].strip())
        body = _lean_body(data, end, fields)
        if body is None:
            return None
        if "," in via or not via:
            return None  # several Vias in one line: the full parse splits them
        vias = (_via(via),)
        msg = _start_line(start, headers, body)
    except (KeyError, RemoteProtocolError):
        return None  # a header missing or malformed: the full parse says which
    if isinstance(msg, Request) and cseq.method != msg.method:
        return None
    # From and To are made on first access: a refresh's 200 needs neither.
    msg._cache = {"via": vias, "call-id": call_id, "cseq": cseq}
    msg._cache_headers = headers
    msg._cache_version = headers._version
    return msg


def _lean_head(data: bytes) -> tuple[str, dict[str, str], int] | None:
    """The head of ``data`` in the lean parse's shape (see :func:`_parse_lean`):
    its start line, its fields by name (values unstripped), and where it ends."""
    end = data.find(b"\r\n\r\n")
    if end <= 0 or data.startswith(b"\r\n"):
        return None
    try:
        text = data[:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    # The split counted the CRLFs: any other CR or LF is a bare one (in UTF-8
    # text, those bytes are those characters and nothing else).
    crlf = len(lines) - 1
    if text.count("\r") != crlf or text.count("\n") != crlf:
        return None
    start = lines.pop(0)
    try:
        # A line without ": " makes a one-element split, which dict() refuses.
        fields = dict([line.split(": ", 1) for line in lines])
    except ValueError:
        return None
    if len(fields) != crlf or not _LEAN_NAMES.issuperset(fields):
        return None
    return start, fields, end


def _lean_body(data: bytes, end: int, fields: dict[str, str]) -> bytes | None:
    """The body after the head ending at ``end``, as :func:`_content_length`
    and §18.3 frame it; None where the full parse has something to say."""
    length = fields.get("Content-Length")
    body_start = end + 4
    if length is None:
        return bytes(data[body_start:])  # the same object when data is bytes
    # As _content_length reads it (here the field is there once).
    length = length.strip()
    if not length.isdigit() or not length.isascii() or len(length) > 12:
        return None
    stop = body_start + int(length)
    if stop > len(data):
        return None
    return bytes(data[body_start:stop])


@dataclass(slots=True)
class LeanNotify:
    """A NOTIFY as :func:`read_lean_notify` reads it: what a subscriber needs
    to take one within a dialog and answer it, with no Request made."""

    via: str
    #: The top Via without its branch (shared by every NOTIFY of the server).
    via_base: Via
    branch: str
    from_: str
    from_tag: str
    to: str
    to_tag: str
    call_id: str
    cseq: int
    cseq_text: str
    event: Event
    state: SubscriptionState
    contact: NameAddr | None
    content_type: str | None
    body: bytes

    def answer(self) -> bytes:
        """``Request.response_bytes(200)`` of the request read: a final
        response echoes Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2;
        the To has its tag already)."""
        return (
            f"SIP/2.0 200 OK\r\nVia: {self.via}\r\nFrom: {self.from_}\r\nTo: {self.to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {self.cseq_text}\r\nContent-Length: 0\r\n\r\n"
        ).encode("utf-8", "surrogateescape")


def read_lean_notify(data: bytes) -> LeanNotify | None:
    """A NOTIFY of a dialog, read without making a Request: in the lean
    parse's shape (see :func:`_parse_lean`), with one Via of an unquoted
    branch, tagged From and To, Event, Subscription-State and at most one
    Contact.  None for anything else, and for anything :func:`parse_message`
    refuses or reads otherwise, but for the tags (see :func:`_lean_tag`): the
    caller then parses it as it would have.

    The values are those the typed accessors give, by the same cached
    parsers; the request line is checked as :func:`_start_line` checks it,
    more strictly (the method and version as spelled here).
    """
    split = _lean_head(data)
    if split is None:
        return None
    line, fields, end = split
    start = line.split(" ")
    if len(start) != 3 or start[0] != "NOTIFY" or start[2] != "SIP/2.0":
        return None
    try:
        _URIS[start[1]]
        via = fields["Via"].strip()
        top = None if "," in via else _via_branch(via)
        from_ = fields["From"].strip()
        to = fields["To"].strip()
        from_tag = _lean_tag(from_)
        to_tag = _lean_tag(to)
        call_id = _call_id(fields["Call-ID"].strip())
        cseq_text = fields["CSeq"].strip()
        cseq = _CSEQS[cseq_text]
        event = _EVENTS[fields["Event"].strip()]
        state = _SUBSCRIPTION_STATES[fields["Subscription-State"].strip()]
        contact_text = fields.get("Contact")
        contact = None
        if contact_text is not None:
            contact_text = contact_text.strip()
            if "," in contact_text:
                return None  # perhaps several: the accessor splits them
            contact = _name_addr(contact_text)
        body = _lean_body(data, end, fields)
    except (KeyError, RemoteProtocolError):
        return None
    if top is None or from_tag is None or to_tag is None or body is None:
        return None
    if cseq.method != "NOTIFY":
        return None
    content_type = fields.get("Content-Type")
    return LeanNotify(
        via, top[0], top[1], from_, from_tag, to, to_tag, call_id, cseq.seq, cseq_text,
        event, state, contact, None if content_type is None else content_type.strip(), body,
    )


@dataclass(slots=True)
class LeanSuccess:
    """A 2xx as :func:`read_lean_success` reads it: what the answer to a
    refresh, or to a PUBLISH, is matched and taken by."""

    status: int
    branch: str
    method: str
    expires: int | None
    #: RFC 3903 §11.3.1: the entity tag a 2xx to a PUBLISH carries.
    etag: str | None = None


def read_lean_success(data: bytes) -> LeanSuccess | None:
    """A 2xx response read without making a Response: in the lean parse's
    shape (see :func:`_parse_lean`), with one Via of an unquoted branch.
    None for anything else, and for anything :func:`parse_message` refuses or
    reads otherwise, or whose Expires or SIP-ETag the ``expires`` or
    ``sip_etag`` accessor would refuse: the caller then parses it as it
    would have."""
    split = _lean_head(data)
    if split is None:
        return None
    line, fields, end = split
    start = line.split(" ", 2)
    if len(start) < 2 or start[0] != "SIP/2.0":
        return None
    code = start[1]
    if len(code) != 3 or code[0] != "2" or not code.isdigit() or not code.isascii():
        return None
    try:
        via = fields["Via"].strip()
        top = None if "," in via else _via_branch(via)
        _check_name_addr(fields["From"].strip())
        _check_name_addr(fields["To"].strip())
        _call_id(fields["Call-ID"].strip())
        cseq = _CSEQS[fields["CSeq"].strip()]
        expires_text = fields.get("Expires")
        expires = (None if expires_text is None
                   else parse_delta_seconds(expires_text.strip(), "Expires"))
        etag_text = fields.get("SIP-ETag")
        etag = None if etag_text is None else _entity_tag(etag_text.strip())
    except (KeyError, RemoteProtocolError):
        return None
    if top is None or _lean_body(data, end, fields) is None:
        return None
    return LeanSuccess(int(code), top[1], cseq.method, expires, etag)


def _lean_tag(text: str) -> str | None:
    """The tag of a From or To, the address checked as :func:`_check_name_addr`
    checks it (RemoteProtocolError where it raises).  A tag after a valid
    address is not checked to be a token: a NOTIFY's are only of use matched
    to a dialog's, which are."""
    cut = text.rfind(";tag=")
    if cut > 0 and _valid_address(text[:cut]):
        return text[cut + 5 :]
    return _name_addr(text).tag


def is_keepalive(data: bytes) -> bool:
    """A datagram of CRLFs only: a keep-alive (RFC 5626 §4.4.1 style), not a message."""
    return bool(data) and not data.replace(b"\r\n", b"")


def parse_message(data: bytes, *, max_size: int = DEFAULT_MAX_DATAGRAM) -> Message:
    """Parse one datagram into a Request or Response (RemoteProtocolError on garbage).

    §18.3: with Content-Length, bytes beyond the body are discarded; "If the
    transport packet ends before the end of the message body, this is
    considered an error."  Without it, the body is the rest of the datagram.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes exceeds {max_size}")
    lean = _parse_lean(data)
    return lean if lean is not None else _parse_full(data)


def _parse_full(data: bytes) -> Message:
    """:func:`parse_message` for any shape of message."""
    # §7.5: CRLFs before the start line are ignored.
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    if start:
        data = data[start:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise RemoteProtocolError("no empty line after the headers")
    head = _parse_head(data, end)
    body_start = end + 4
    length = _content_length(head[1])
    if length is None:
        body = data[body_start:]
    else:
        if body_start + length > len(data):
            raise RemoteProtocolError(
                f"Content-Length {length} exceeds the {len(data) - body_start} bytes received"
            )
        body = data[body_start : body_start + length]
    return _build(head, bytes(body))


class StreamParser:
    """Frames messages out of a stream transport (RFC 3261 §18.3).

    "In the case of stream-oriented transports such as TCP, the Content-Length
    header field indicates the size of the body" and is required here: a
    message without one cannot be delimited, so the stream fails.  CRLFs
    between messages are skipped (§7.5); a double CRLF there is an RFC 5626
    §3.5.1 keep-alive "ping", counted for ``take_pings()`` so that the
    transport can answer with a single-CRLF "pong".

    After a RemoteProtocolError the stream cannot be resynchronised, and every
    later ``feed`` raises again: close the connection.
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_STREAM_MESSAGE) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._scanned = 0  # bytes already searched for the blank line
        self._head: _Head | None = None
        self._body_start = 0
        self._total = 0
        self._crlfs = 0  # consecutive CRLFs seen between messages
        self._pings = 0
        self._broken: str | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self._broken is not None:
            raise RemoteProtocolError(f"stream already failed: {self._broken}")
        self._buf += data
        try:
            return self._drain()
        except RemoteProtocolError as exc:
            self._broken = str(exc)
            self._buf.clear()
            raise

    def take_pings(self) -> int:
        """How many double-CRLF keep-alive pings arrived since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _drain(self) -> list[Message]:
        out: list[Message] = []
        buf = self._buf
        while True:
            if self._head is None:
                skip = 0
                while buf.startswith(b"\r\n", skip):
                    skip += 2
                    self._crlfs += 1
                    if self._crlfs == 2:
                        self._pings += 1
                        self._crlfs = 0
                if skip:
                    del buf[:skip]
                    self._scanned = 0
                if not buf or buf == b"\r":
                    break
                self._crlfs = 0
                end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
                if end < 0:
                    if len(buf) > self.max_message_size:
                        raise RemoteProtocolError(
                            f"message head exceeds {self.max_message_size} bytes"
                        )
                    self._scanned = len(buf)
                    break
                head = _parse_head(buf, end)
                length = _content_length(head[1])
                if length is None:
                    raise RemoteProtocolError(
                        "Content-Length is required on a stream transport (RFC 3261 §18.3)"
                    )
                self._body_start = end + 4
                self._total = self._body_start + length
                if self._total > self.max_message_size:
                    raise RemoteProtocolError(
                        f"message of {self._total} bytes exceeds {self.max_message_size}"
                    )
                self._head = head
            if len(buf) < self._total:
                break
            body = bytes(buf[self._body_start : self._total])
            head, self._head = self._head, None
            del buf[: self._total]
            self._scanned = 0
            out.append(_build(head, body))
        return out
