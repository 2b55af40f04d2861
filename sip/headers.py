"""Typed header values: frozen dataclasses with ``parse()`` and ``__str__``.

Each ``parse`` takes one header value (one element of a comma-joined list,
as ``Headers.get_all`` returns them) and raises ``RemoteProtocolError`` on
anything it cannot read.  ``__str__`` gives a value that parses back to an
equal object; whitespace is normalised on the way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import RemoteProtocolError
from .params import (
    Params,
    WithParams,
    find_param,
    format_params,
    is_token,
    parse_delta_seconds,
    parse_params,
)
from .uri import parse_hostport

__all__ = ["CSeq", "Event", "RetryAfter", "SubscriptionState", "Via"]

# RFC 3261 §8.1.1.5: "The sequence number value MUST be expressible as a
# 32-bit unsigned integer and MUST be less than 2**31."
CSEQ_MAX = 2**31 - 1


def _split_params(text: str) -> tuple[str, Params]:
    """``head;params`` -> (head, params); the head itself contains no ";"."""
    semi = text.find(";")
    if semi < 0:
        return text.strip(), ()
    return text[:semi].strip(), parse_params(text[semi:])


def _token_and_params(text: str, what: str) -> tuple[str, Params]:
    """``token;params`` (Event, Subscription-State) -> (token, params)."""
    head, params = _split_params(text)
    if not is_token(head):
        raise RemoteProtocolError(f"bad {what}: {text!r}")
    return head, params


# RFC 3261 §20.42 / §25.1: via-parm = sent-protocol LWS sent-by *( SEMI via-params ),
# in the common spelling: token transport, hostname or IPv4 host, optional
# port, generic-params with token names and unquoted token/host values.
_VIA_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_VIA_COMMON = re.compile(
    rf"SIP/2\.0/({_VIA_TOKEN}) ([A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9.])?)"
    rf"(?::([0-9]{{1,5}}))?((?:;{_VIA_TOKEN}(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]+)?)*)"
)

# One parameter of the text _VIA_COMMON matched: (name, "=" or "", value).
_VIA_PARAM = re.compile(r";([^;=]+)(=?)([^;]*)")


@dataclass(frozen=True, slots=True)
class Via(WithParams):
    """RFC 3261 §20.42: ``SIP/2.0/UDP host[:port];branch=z9hG4bK...;rport;received=...``.

    ``host`` keeps IPv6 brackets.  RFC 3581 ``rport`` may be valueless (a
    request asking for it) or carry the source port (in a response).
    """

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    @classmethod
    def parse(cls, text: str) -> Via:
        # The form every stack sends — ``SIP/2.0/UDP host[:port];a=b;c``, no
        # blanks, quotes or IPv6 — read with one regular expression; anything
        # else takes the general path below, which gives the same value.
        m = _VIA_COMMON.fullmatch(text)
        if m is not None:
            transport, host, port_text, param_text = m.groups()
            port = None if port_text is None else int(port_text)
            if port is None or port <= 65535:
                params: Params = tuple(
                    [(name, value if eq else None)
                     for name, eq, value in _VIA_PARAM.findall(param_text)]
                ) if param_text else ()
                rport = find_param(params, "rport")[1]
                if rport is None or (rport.isdigit() and rport.isascii() and len(rport) <= 5):
                    return cls(transport, host, port, params, "SIP/2.0")
        return cls._parse_general(text)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        # sent-protocol = protocol-name SLASH protocol-version SLASH transport,
        # SLASH = SWS "/" SWS: blanks may surround the slashes.
        parts = text.split("/", 2)
        if len(parts) != 3:
            raise RemoteProtocolError(f"bad Via: {text!r}")
        name, version, rest = parts[0].strip(), parts[1].strip(), parts[2].lstrip()
        if not is_token(name) or not is_token(version):
            raise RemoteProtocolError(f"bad Via protocol: {text!r}")
        fields = rest.split(None, 1)
        if len(fields) != 2 or not is_token(fields[0]):
            raise RemoteProtocolError(f"bad Via transport or sent-by: {text!r}")
        head, params = _split_params(fields[1])
        host, port = parse_hostport(head)
        rport = find_param(params, "rport")[1]
        if rport is not None and (not rport.isdigit() or not rport.isascii() or len(rport) > 5):
            raise RemoteProtocolError(f"bad Via rport: {text!r}")
        return cls(fields[0], host, port, params, f"{name}/{version}")

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value (RFC 3581 §4); ``None`` if absent or valueless."""
        value = self.param("rport")
        return int(value) if value is not None else None

    @property
    def rport_requested(self) -> bool:
        """RFC 3581 §3: a valueless ``rport`` asks the server to fill it in."""
        return self.has_param("rport")


@dataclass(frozen=True, slots=True)
class CSeq:
    """RFC 3261 §20.16: ``CSeq: 4711 SUBSCRIBE``."""

    seq: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2:
            raise RemoteProtocolError(f"bad CSeq: {text!r}")
        number, method = parts
        if not number.isdigit() or not number.isascii() or len(number) > 10:
            raise RemoteProtocolError(f"bad CSeq number: {text!r}")
        seq = int(number)
        if seq > CSEQ_MAX:
            raise RemoteProtocolError(f"CSeq number out of range: {text!r}")
        if not is_token(method):
            raise RemoteProtocolError(f"bad CSeq method: {text!r}")
        return cls(seq, method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


@dataclass(frozen=True, slots=True)
class Event(WithParams):
    """RFC 6665 §8.2.1: ``Event: presence.winfo;id=7``.

    ``package`` is the whole event-type, templates included
    (``presence.winfo``).
    """

    package: str
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> Event:
        return cls(*_token_and_params(text, "Event"))

    def __str__(self) -> str:
        return self.package + format_params(self.params)

    @property
    def id(self) -> str | None:
        return self.param("id")

    def matches(self, other: Event) -> bool:
        """Same subscription per RFC 6665 §8.2.1: equal event-type and equal ``id``.

        "...the 'Event' header field ... match if the 'event-type' portions
        match exactly and the 'id' parameters ... are identical" — both
        compared case-sensitively, a missing id matching only a missing id.
        """
        return self.package == other.package and self.id == other.id


@dataclass(frozen=True, slots=True)
class SubscriptionState(WithParams):
    """RFC 6665 §8.2.3: ``Subscription-State: active;expires=3600``.

    ``state`` is ``active``, ``pending``, ``terminated`` or an extension
    token, as received.  Numeric parameters are checked when parsing, so the
    properties never fail on a parsed value.
    """

    state: str
    params: Params = ()
    # The expires parameter as a number, read on first use (-1: not yet).  A
    # parsed value is shared by every NOTIFY of the same text, and each one
    # asks for it.
    _expires: int | None = field(default=-1, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> SubscriptionState:
        state, params = _token_and_params(text, "Subscription-State")
        # subexp-params = ("reason" EQUAL event-reason-value) / ("expires" EQUAL
        # delta-seconds) / ("retry-after" EQUAL delta-seconds): check them now,
        # so that garbage fails here and the properties never do.
        for name in ("expires", "retry-after"):
            present, number = find_param(params, name)
            if present:
                parse_delta_seconds(number or "", f"Subscription-State {name}")
        return cls(state, params)

    def __str__(self) -> str:
        return self.state + format_params(self.params)

    @property
    def reason(self) -> str | None:
        """The ``reason`` parameter, lower-cased (its values are tokens like ``rejected``)."""
        value = self.param("reason")
        return value.lower() if value is not None else None

    @property
    def expires(self) -> int | None:
        expires = self._expires
        if expires == -1:
            expires = self.delta_param("expires")
            object.__setattr__(self, "_expires", expires)
        return expires

    @property
    def retry_after(self) -> int | None:
        return self.delta_param("retry-after")


@dataclass(frozen=True, slots=True)
class RetryAfter(WithParams):
    """RFC 3261 §20.33: ``Retry-After: 18000;duration=3600`` or ``120 (I'm in a meeting)``."""

    seconds: int
    comment: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, text: str) -> RetryAfter:
        s = text.strip()
        i = 0
        while i < len(s) and s[i].isdigit() and s[i].isascii():
            i += 1
        seconds = parse_delta_seconds(s[:i], "Retry-After")
        rest = s[i:].lstrip()
        comment: str | None = None
        if rest[:1] == "(":
            end = _comment_end(rest)
            comment = rest[1 : end - 1]
            rest = rest[end:].lstrip()
        params = parse_params(rest)
        duration = find_param(params, "duration")[1]
        if duration is not None:
            parse_delta_seconds(duration, "Retry-After duration")
        return cls(seconds, comment, params)

    def __str__(self) -> str:
        comment = f" ({self.comment})" if self.comment is not None else ""
        return f"{self.seconds}{comment}{format_params(self.params)}"

    @property
    def duration(self) -> int | None:
        value = self.param("duration")
        return None if value is None else parse_delta_seconds(value, "Retry-After duration")


def _comment_end(text: str) -> int:
    """Index past the comment opening at ``text[0] == "("``.

    RFC 3261 §25.1: ``comment = LPAREN *(ctext / quoted-pair / comment) RPAREN`` —
    comments nest, and a backslash quotes the next character.
    """
    depth = 0
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise RemoteProtocolError(f"unterminated comment: {text!r}")
