"""The adapter's configuration file (TOML), declared as typed models and read into them.

The keys below are a contract with outside tools (docs: DESIGN "Configuration and
command line"): they may be added to, never renamed. Each section is one model
(a frozen ``msgspec.Struct``): its fields are the keys, with their types, defaults
and constraints (ranges, enums, and value types such as :class:`SipUri` for URI
and address forms); checks across keys are the model's ``__post_init__``.
docs/configuration.md describes the same fields (tests/adapter/test_config.py
holds the two alike).

``load_config`` reads the file with ``tomllib`` and converts it with msgspec
(rather than pydantic: the REST edge uses it too, it is light to import for the
command line, and a model's own ValueError reaches us as the error's cause).
Every problem is reported as one ``ConfigError`` whose message is a single line
naming the file, the key path and the problem, e.g.::

    conf/adapter.toml: sip.server: "foo" is not a SIP URI

msgspec's own messages (``Expected `int`, got `str` - at `$.http.port```) are
translated into that form by :func:`_config_error`; the problems the models find
themselves are worded here.

Adding a key: a field on its table's model, with its type, default and
constraint (``Port``, ``Positive``, a ``Literal``, or a :class:`_Form` subclass
for a new string form); a check across keys in the model's ``__post_init__``,
raising :class:`_Problem` with the key; a new table is a model and a field of
:class:`Config`. docs/configuration.md lists it (a test sees to that).

Decisions this module makes (also stated in the README):

- Unknown keys are accepted, so that a newer file still starts an older adapter,
  and are reported once per load in one warning.
- Relative file paths (``store.path``, ``http.tls_*``, ``sip.tls_*``,
  ``xcap.tls_ca``) are relative to the current working directory of the process
  (not to the file), like every other relative path given on a command line.
- The same SIP address may appear in several accounts: several applications may act
  as one SIP identity, as several devices of one SIP user do. Within one account an
  address may be listed only once, and account ids must be unique.
- Whether the HTTP and SIP listen ports are free is checked by ``check_ports`` when
  serving, not by ``load_config``: loading must stay possible while the adapter runs.
  Files named by the configuration (TLS certificates and keys) are read and checked
  by ``load_config``: a server that would fail its first handshake must not start.
- TLS towards the presence server is never dropped silently: a ``sips:`` server or
  ``sip.transport = "tls"`` needs ``sip.tls_ca``, and the certificate files are
  loaded at load time (:func:`sip_tls_context`), so a file that is missing or not
  PEM stops start-up with one line naming its key.  TLS keys without TLS are an
  error too: whoever wrote them believes the link is protected.
"""

from __future__ import annotations

import datetime
import errno
import functools
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import tomllib
import types
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct, field
from msgspec.structs import force_setattr

from adapter.passwords import hash_problem
from sip.errors import SipError
from sip.uri import SipURI
from sip.useragent import server_destination

__all__ = [
    "Account",
    "BayeuxSettings",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "HostPort",
    "HttpConfig",
    "LogConfig",
    "MetricsConfig",
    "NotificationPolicy",
    "PostgresUrl",
    "RateLimit",
    "SipConfig",
    "StoreConfig",
    "XcapConfig",
    "check_ports",
    "cluster_tls_context",
    "load_config",
    "sip_tls_context",
    "xcap_tls_context",
]

logger = logging.getLogger(__name__)


class ConfigError(Exception):
    """A configuration problem, stated in one line: ``<file>: <key>: <problem>``."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        # One line whatever the input: values are quoted with json.dumps, which
        # escapes newlines, but a problem text from the OS or tomllib could carry one.
        super().__init__(" ".join(f"{where}: {problem}".split()))


class _Problem(ValueError):
    """What a model's own check found: ``key`` (relative to the model) and the problem.

    A ValueError, so that msgspec reports it with the model's path (and keeps it as
    the ``__cause__``) and a model built in code raises it like any bad argument.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# -- values -------------------------------------------------------------------------

_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),  # before int: bool is a subclass of int
    (str, "a string"),
    (int, "an integer"),
    (float, "a float"),
    (list, "an array"),
    (dict, "a table"),
    (datetime.datetime, "a date-time"),
    (datetime.date, "a date"),
    (datetime.time, "a time"),
)


def _type_name(value: object) -> str:
    for cls, name in _TYPE_NAMES:
        if isinstance(value, cls):
            return name
    return type(value).__name__


def _show(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(value: object) -> str:
    """``value`` as a non-blank string, or the problem a value type reports."""
    if not isinstance(value, str):
        raise TypeError(f"must be a string, not {_type_name(value)}")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


#: A string that is not blank (msgspec's pattern; :func:`_config_error` words it).
_NOT_BLANK = r"\S"
Text = Annotated[str, Meta(pattern=_NOT_BLANK)]
Port = Annotated[int, Meta(ge=1, le=65535)]
#: Seconds or counts: ``Positive`` must be above 0, ``NonNegative`` may be 0.
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
PositiveInt = Annotated[int, Meta(ge=1)]
NonNegativeInt = Annotated[int, Meta(ge=0)]

# RFC 1123 §2.1 host names: letters, digits, hyphens; labels of at most 63 characters.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"[0-9.]+", host):
        return False  # looks like a dotted quad but is not one (e.g. 300.1.1.1)
    name = host[:-1] if host.endswith(".") else host
    return 0 < len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def _valid_port(port: int) -> bool:
    return 1 <= port <= 65535


class HostPort:
    """``host:port``, IPv6 hosts in brackets (``[::1]:5080``), as in RFC 3986 §3.2.2.

    A plain immutable class rather than a dataclass: msgspec reads dataclasses
    from tables, and this value is written as one string (``_convert``).
    """

    __slots__ = ("host", "port")
    host: str
    port: int

    def __init__(self, host: str, port: int) -> None:
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HostPort is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HostPort):
            return NotImplemented
        return (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.host, self.port))

    def __repr__(self) -> str:
        return f"HostPort(host={self.host!r}, port={self.port!r})"

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not port.isascii():
            raise ValueError("is not host:port")
        if not _valid_host(host):
            raise ValueError("has no valid host")
        if not _valid_port(int(port)):
            raise ValueError("has a port outside 1-65535")
        return cls(host, int(port))

    @classmethod
    def _convert(cls, value: object) -> HostPort:
        text = _string(value)
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise ValueError(f"{_show(text)} {exc}") from None

    @property
    def bind_host(self) -> str:
        """The host as socket functions want it (no brackets around IPv6)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Form(str):
    """A string of a checked form: the file's value, kept as it was written.

    msgspec hands these types to ``_convert`` (through ``load_config``'s hook),
    which raises the problem in the words of the one-line error.
    """

    #: How an array of them is named in messages: "an array of <plural>".
    plural: ClassVar[str] = "strings"

    @classmethod
    def _convert(cls, value: object) -> _Form:
        text = _string(value)
        problem = cls._problem(text)
        if problem:
            raise ValueError(problem)
        return cls(text)

    @classmethod
    def _problem(cls, text: str) -> str | None:
        raise NotImplementedError


class Host(_Form):
    """A host name or IP address, IPv6 without brackets (``::1``)."""

    @staticmethod
    def _problem(text: str) -> str | None:
        if _valid_host(f"[{text}]" if ":" in text else text):
            return None
        return f"{_show(text)} is not a host name or IP address"


class SipUri(_Form):
    """A ``sip:`` or ``sips:`` URI with a valid host (RFC 3261 §19.1)."""

    plural = "SIP URIs"
    #: Whether the URI must name a user (``sip:user@host``).
    need_user: ClassVar[bool] = False

    @classmethod
    def _problem(cls, text: str) -> str | None:
        # Parsed by the SIP stack itself: what it refuses, the adapter could not use.
        try:
            uri = SipURI.parse(text)
        except SipError as exc:
            if "port" in str(exc):
                return f"{_show(text)} has a port outside 1-65535"
            return f"{_show(text)} is not a SIP URI"
        if not _valid_host(uri.host):
            return f"{_show(text)} has no valid host"
        if uri.port is not None and not _valid_port(uri.port):
            return f"{_show(text)} has a port outside 1-65535"
        if cls.need_user and not uri.user:
            return f"{_show(text)} has no user part (expected sip:user@host)"
        return None


class SipAddress(SipUri):
    """A SIP address of a user, ``sip:user@host``."""

    need_user = True


class HttpUrl(_Form):
    """An ``http://`` or ``https://`` URL with a host, no query, no fragment."""

    @staticmethod
    def _problem(text: str) -> str | None:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return f"{_show(text)} is not an HTTP URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"{_show(text)} is not an http:// or https:// URL with a host"
        if port == 0:
            return f"{_show(text)} has a port outside 1-65535"
        if parts.query or parts.fragment:
            return f"{_show(text)} must not have a query or fragment"
        return None


def _without_password(text: str) -> str:
    """A URL as messages may show it: its password, if any, replaced by ``***``.

    Read by hand, not by urlsplit, which refuses some URLs whose password must
    still be hidden (an unclosed IPv6 bracket).
    """
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{host}"


class PostgresUrl(_Form):
    """A PostgreSQL connection URL, ``postgresql://[user[:password]@]host[:port]/db[?…]``,
    as libpq reads it."""

    def __repr__(self) -> str:
        # str(self): a URL without a password comes back as itself, whose repr is this.
        return repr(_without_password(str(self)))

    @staticmethod
    def _problem(text: str) -> str | None:
        scheme, sep, _ = text.partition("://")
        shown = _show(_without_password(text))
        if not sep or scheme not in ("postgresql", "postgres"):
            return f"{shown} is not a postgresql:// URL"
        # libpq's own parser, so that what passes here is what connecting reads
        # (imported here: only a file with a url pays for it).
        import psycopg
        from psycopg import conninfo

        try:
            conninfo.conninfo_to_dict(text)
        except psycopg.Error as exc:
            # libpq may quote the whole URL: never its password.
            reason = " ".join(str(exc).replace(text, _without_password(text)).split())
            return f"{shown} is not a URL libpq reads: {reason}"
        return None


class RedisUrl(_Form):
    """A Redis URL as redis-py reads it: ``redis://[user:password@]host[:port][/db]``,
    ``rediss://`` (TLS) or ``unix:///path``."""

    def __repr__(self) -> str:
        # str(self): a URL without a password comes back as itself, whose repr is this.
        return repr(_without_password(str(self)))

    @staticmethod
    def _problem(text: str) -> str | None:
        shown = _show(_without_password(text))
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            return f"{shown} is not a Redis URL"
        if parts.scheme not in ("redis", "rediss", "unix"):
            return f"{shown} is not a redis://, rediss:// or unix:// URL"
        if parts.scheme == "unix" and not parts.path:
            return f"{shown} names no socket path"
        if parts.scheme != "unix" and not parts.hostname:
            return f"{shown} has no host"
        return None


class NodeName(_Form):
    """A cluster node's name: letters, digits, ``-`` and ``_``, 1 to 32 of them
    (it names the node in the store's tables and in logs)."""

    _PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")

    @staticmethod
    def _problem(text: str) -> str | None:
        if NodeName._PATTERN.fullmatch(text):
            return None
        return f"{_show(text)} must be 1 to 32 letters, digits, - or _"


class Origin(_Form):
    """A browser origin, serialised as browsers send it (RFC 6454 §6.2)."""

    plural = "origins"

    @staticmethod
    def _problem(text: str) -> str | None:
        if _serialised_origin(text):
            return None
        return (
            f"{_show(text)} is not an origin: scheme://host[:port] in lower case, "
            "no path (RFC 6454 §6.2, as browsers send it)"
        )


def _serialised_origin(text: str) -> bool:
    # Browsers send the serialised origin (RFC 6454 §6.2) and CORS compares it as
    # a string, so only that exact form can ever match.
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and port != 0
        and not (parts.path or parts.query or parts.fragment or text.endswith(("?", "#")))
        and text == text.lower()
    )


class AppId(_Form):
    """An appInstanceID.

    Bayeux 1.0 §2.2.1: a channel segment is 1*( ALPHA / DIGIT / mark ), with
    mark = "-" / "_" / "!" / "~" / "(" / ")" / "$" / "@". The id is such a segment
    (/bayeux/<id>); it also excludes ":", which HTTP Basic user-ids cannot contain
    (RFC 7617 §2).
    """

    _PATTERN = re.compile(r"[A-Za-z0-9_!~()$@-]+")

    @staticmethod
    def _problem(text: str) -> str | None:
        if AppId._PATTERN.fullmatch(text):
            return None
        return (
            f"{_show(text)} must be letters, digits and - _ ! ~ ( ) $ @ only "
            "(it names the Bayeux channel /bayeux/<id>)"
        )


#: ``[log] level`` values, as the command line's ``--log-level`` takes them.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class LogLevel(_Form):
    """One of LOG_LEVELS, in any case (kept in lower case)."""

    @classmethod
    def _convert(cls, value: object) -> LogLevel:
        text = _string(value)
        if text.lower() not in LOG_LEVELS:
            raise ValueError(f"{_show(text)} must be one of {', '.join(LOG_LEVELS)}")
        return cls(text.lower())


def _path(value: object, cwd: Path) -> Path:
    text = _string(value)
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~name" where no user has that name
        raise ValueError(f"{_show(text)}: no home directory for that user") from None
    return path if path.is_absolute() else cwd / path


# -- the models ----------------------------------------------------------------------

#: Field names whose values a repr leaves out.
_SECRET_FIELDS = frozenset({"password", "password_hash", "token", "secret"})


class _Model(Struct, frozen=True, kw_only=True):
    """One table of the file: frozen, secrets kept out of its repr.

    Each model restates ``frozen=True, kw_only=True``: msgspec does not inherit
    ``kw_only``, and mypy wants ``frozen`` on every class. Built in code, a model
    names its keys, so that adding a key never shifts the others.
    """

    def __repr__(self) -> str:
        shown = (
            f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
            if name not in _SECRET_FIELDS
        )
        return f"{type(self).__name__}({', '.join(shown)})"


def _both_or_neither(first: tuple[str, object], second: tuple[str, object]) -> None:
    (first_name, first_value), (second_name, second_value) = first, second
    if (first_value is None) != (second_value is None):
        missing = second_name if second_value is None else first_name
        raise _Problem(missing, f"missing ({first_name} and {second_name} go together)")


class HttpConfig(_Model, frozen=True, kw_only=True):
    """``[http]``: where the REST API and Bayeux are served."""

    host: Host
    port: Port
    #: One line per HTTP request at INFO on the ``adapter.access`` logger.
    access_log: bool = True
    #: PEM files: with both, REST and Bayeux are served over HTTPS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA certificates: when set, every client must present a certificate they sign.
    tls_client_ca: Path | None = None
    #: Browser origins (``https://app.example``) allowed by CORS; empty: no CORS headers.
    cors_origins: tuple[Origin, ...] = ()

    def __post_init__(self) -> None:
        _both_or_neither(("tls_cert", self.tls_cert), ("tls_key", self.tls_key))
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise _Problem(
                "tls_client_ca", "needs tls_cert and tls_key (client certificates come over TLS)"
            )
        if self.tls_cert is not None and self.tls_key is not None:
            _check_tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def address(self) -> HostPort:
        return HostPort(f"[{self.host}]" if ":" in self.host else self.host, self.port)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"


def _readable(name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _Problem(name, f"cannot read {path}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; refuse it instead.
    raise ValueError("encrypted")


def _check_tls_files(cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the files as the server will, naming the key whose file is at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, path in (("tls_cert", cert), ("tls_client_ca", client_ca)):
        if path is None:
            continue
        _readable(name, path)
        try:
            # The certificates alone first, so that a bad one is not blamed on the key.
            context.load_verify_locations(cafile=path)
        except ssl.SSLError:
            raise _Problem(name, f"{path} holds no PEM certificate") from None
    _readable("tls_key", key)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ValueError:
        raise _Problem("tls_key", f"{key} is encrypted (give an unencrypted key)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise _Problem("tls_key", f"{key} does not match the certificate of tls_cert") from None
        if exc.reason in ("EE_KEY_TOO_SMALL", "CA_MD_TOO_WEAK", "CA_KEY_TOO_SMALL"):
            raise _Problem("tls_cert", f"{cert} is too weak for OpenSSL ({exc.reason})") from None
        raise _Problem("tls_key", f"{key} holds no PEM private key") from None


Transport = Literal["udp", "tcp", "tls"]


class SipConfig(_Model, frozen=True, kw_only=True):
    """``[sip]``: the presence server and our own SIP side."""

    #: The presence server every request goes to (outbound proxy), a sip:/sips: URI.
    server: SipUri
    #: Our own SIP address, bound for both UDP and TCP.
    listen: HostPort
    transport: Transport
    #: Seconds between OPTIONS probes of the server (0: none); a server found
    #: down and back, or restarted, makes the adapter re-create its state there.
    keepalive: NonNegative = 5.0
    #: Longest a REST call waits for the presence server before answering 504.
    request_timeout: Positive = 10.0
    #: Seconds between checks of each watched group (0: none): its list
    #: document and its members' rules read again, its subscription refreshed.
    list_check: NonNegative = 30.0
    #: SIP requests outstanding at once (sent, not yet answered); more wait.
    window: PositiveInt = 100
    #: REST calls' SIP requests waiting for room in the window (each at most
    #: request_timeout / 2); beyond it, and after that wait, 503 with Retry-After.
    window_queue: NonNegativeInt = 1000
    #: Of the window, the places refreshes, retries and removals may hold at
    #: once (they fall due together on the refresh grid; see sip.Window.kept).
    window_kept: PositiveInt = 32
    #: CA certificates (PEM) the server's certificate is verified against (TLS only).
    tls_ca: Path | None = None
    #: Our certificate chain and its key (PEM), for mutual TLS; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Digest credentials answering the server's 401/407 challenges (RFC 3261 §22).
    username: Text | None = None
    password: str | None = None
    #: When set, only challenges of this realm are answered.
    realm: Text | None = None

    def __post_init__(self) -> None:
        if self.server.lower().startswith("sips:") and self.transport == "udp":
            # RFC 5630 §3.1.3: sips demands TLS on the hop, which UDP cannot carry.
            raise _Problem(
                "transport",
                f'"udp" with the sips: server {_show(self.server)}: sips means TLS; use "tls"',
            )
        _both_or_neither(("username", self.username), ("password", self.password))
        if self.realm is not None and self.username is None:
            raise _Problem("realm", "needs sip.username and sip.password")
        _both_or_neither(("tls_cert", self.tls_cert), ("tls_key", self.tls_key))
        if self.tls:
            if self.tls_ca is None:
                raise _Problem(
                    "tls_ca",
                    "missing (required for TLS: the CA certificates, PEM, that the presence "
                    "server's certificate is verified against)",
                )
            return
        for name in ("tls_ca", "tls_cert", "tls_key"):
            if getattr(self, name) is not None:
                raise _Problem(
                    name, 'is set but TLS is not used (sip.transport "tls" or a sips: server)'
                )

    @property
    def tls(self) -> bool:
        """Whether requests go to the server over TLS: transport "tls", a sips:
        server or a server URI with transport=tls (the SIP stack's own rule)."""
        return server_destination(SipURI.parse(self.server), self.transport).transport == "tls"


class XcapConfig(_Model, frozen=True, kw_only=True):
    """``[xcap]``: the server's XCAP root, where presence rules are read and written."""

    #: Without a trailing slash: documents live at ``{root}/pres-rules/users/...``.
    root: HttpUrl
    username: Text | None = None
    password: str | None = None
    #: CA certificates (PEM) for an https:// root; default: ``sip.tls_ca`` when
    #: TLS is used towards the SIP server, else the system's trust store.
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        force_setattr(self, "root", HttpUrl(self.root.rstrip("/")))
        _both_or_neither(("username", self.username), ("password", self.password))
        if self.tls_ca is not None and not self.root.startswith("https:"):
            raise _Problem("tls_ca", "is set but xcap.root is not an https:// URL")


#: When a commit of the store reaches the disk (SQLite ``PRAGMA synchronous``, WAL
#: journal): "normal" survives a crash of the process (kill -9), "full" also a
#: power cut or a crash of the operating system, at an fsync per commit.
Synchronous = Literal["normal", "full"]


class StoreConfig(_Model, frozen=True, kw_only=True):
    """``[store]``: where state kept across restarts lives: an SQLite file (``path``)
    or a PostgreSQL database (``url``), exactly one of the two."""

    #: Absolute: a relative ``store.path`` is resolved against the working directory.
    path: Path | None = None
    url: PostgresUrl | None = None
    #: SQLite only (PostgreSQL's is the server's ``synchronous_commit``).
    synchronous: Synchronous = "normal"

    def __post_init__(self) -> None:
        if self.path is None and self.url is None:
            raise _Problem("path", "missing (give path for SQLite, or url for PostgreSQL)")
        if self.path is not None and self.url is not None:
            raise _Problem("url", "and store.path are both set: give one of the two")

    @property
    def key(self) -> str:
        """The key naming the store in messages."""
        return "store.url" if self.url is not None else "store.path"


_SECRETS = ("password", "password_hash", "password_env")


class Account(_Model, frozen=True, kw_only=True, dict=True):
    """An application instance account: who may call the REST API and as whom.

    Its secret is either ``password`` (plain text: given in the file, or read from
    the environment variable ``password_env`` names, which is then cleared) or
    ``password_hash`` (an Argon2 PHC string, adapter.passwords); exactly one of the
    two is set.
    """

    #: The appInstanceID; also the root of its Bayeux channels, /bayeux/<id>/**.
    id: AppId
    password: Text | None = None
    #: The SIP identities the application may act as; the first is its default.
    addresses: tuple[SipAddress, ...]
    password_hash: Text | None = None
    password_env: Text | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, _SECRETS, "missing (give password, password_hash or password_env)")
        if self.password_hash is not None:
            problem = hash_problem(self.password_hash)
            if problem:
                raise _Problem("password_hash", problem)
        if self.password_env is not None:
            force_setattr(self, "password", _environment("password_env", self.password_env))
            force_setattr(self, "password_env", None)
        if not self.addresses:
            raise _Problem("addresses", "must list at least one SIP address")
        seen: set[str] = set()
        for index, address in enumerate(self.addresses):
            if address in seen:
                raise _Problem(f"addresses[{index}]", f"{_show(address)} is listed twice")
            seen.add(address)

    # The same addresses as a set: asked on every request that names one, and
    # an account may hold thousands.
    @cached_property
    def _address_set(self) -> frozenset[str]:
        return frozenset(self.addresses)

    @property
    def default_address(self) -> str:
        return self.addresses[0]

    def may_act_as(self, address: str) -> bool:
        return address in self._address_set


def _exactly_one(model: object, names: tuple[str, ...], missing: str) -> str:
    """The one of ``names`` that ``model`` sets (the first one's problem: ``missing``)."""
    given = _at_most_one(model, names)
    if given is None:
        raise _Problem(names[0], missing)
    return given


def _at_most_one(model: object, names: tuple[str, ...]) -> str | None:
    """The one of ``names`` that ``model`` sets, if any."""
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) > 1:
        raise _Problem(given[1], f"give only one of {', '.join(names)}, not also {given[0]}")
    return given[0] if given else None


def _environment(key: str, name: str) -> str:
    """The value of the environment variable ``name``, given by ``key``."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise _Problem(key, f"{_show(name)} is not an environment variable name")
    value = os.environ.get(name)
    if value is None:
        raise _Problem(key, f"environment variable {name} is not set")
    if not value:
        raise _Problem(key, f"environment variable {name} is empty")
    return value


class NotificationPolicy(_Model, frozen=True, kw_only=True):
    """``[notifications]``: limits on Start Presence Notification."""

    #: Shortest allowed ``frequency`` (seconds); below it: POL0009.
    min_frequency: NonNegative = 0.0
    #: Longest allowed ``duration`` (seconds); also the duration when none is given.
    max_duration: Positive = 86400.0
    #: Largest allowed ``count``; beyond it: POL0005.
    max_count: PositiveInt = 100000
    #: Whether ``count`` 0 (no limit) is accepted; if not: POL0004.
    allow_unlimited_count: bool = True


class RateLimit(_Model, frozen=True, kw_only=True):
    """``[limits]``: a token bucket per application (account id) for its REST requests."""

    #: Tokens added per second: the sustained rate.
    requests_per_second: Positive
    #: Tokens the bucket holds: how many requests may come at once after a quiet
    #: spell. Not given (0): a second's worth.
    burst: PositiveInt = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.requests_per_second):
            raise _Problem("requests_per_second", "must be positive")
        if self.burst == 0:
            force_setattr(self, "burst", max(1, math.ceil(self.requests_per_second)))


class LogConfig(_Model, frozen=True, kw_only=True):
    """``[log]``: how much the adapter logs, and in which form."""

    #: None: not in the file (``--log-level``, else "info", decides).
    level: LogLevel | None = None
    #: "text": one human line per record; "json": one JSON object per line.
    format: Literal["text", "json"] = "text"
    #: Every SIP message in and out on the ``sip.trace`` logger (at INFO).
    sip_trace: bool = False


class MetricsConfig(_Model, frozen=True, kw_only=True):
    """``[metrics]``: who may read ``GET /metrics``."""

    #: When set, /metrics answers only ``Authorization: Bearer <token>``.
    token: Text | None = None
    #: Instead of ``token``: the environment variable holding it (then cleared).
    token_env: Text | None = None

    def __post_init__(self) -> None:
        if self.token_env is None:
            return
        if self.token is not None:
            raise _Problem("token_env", "give token or token_env, not both")
        force_setattr(self, "token", _environment("token_env", self.token_env))
        force_setattr(self, "token_env", None)


class ClusterConfig(_Model, frozen=True, kw_only=True):
    """``[cluster]``: this adapter is one node of several sharing a PostgreSQL store
    (``[store] url``) and a Redis; without the table it is alone."""

    #: Unique per node: it owns SIP work under this name (adapter.cluster).
    node: NodeName
    #: The Redis carrying messages between the nodes.
    redis: RedisUrl
    #: Seconds between a node's heartbeats and lease renewals; a node silent for
    #: two of them is dead and its work is taken over.
    lease: Positive = 10.0
    #: The key of the calls between the nodes (adapter.cluster.peer), the same on
    #: every node: at most one of ``secret``, ``secret_file`` (read here, trailing
    #: blanks dropped) and ``secret_env`` (then cleared).  None of them: the
    #: nodes share a random key kept in the store.
    secret: str | None = None
    secret_file: Path | None = None
    secret_env: Text | None = None
    #: CA certificates (PEM) the other nodes' HTTPS certificates are checked
    #: against; default: the system's trust store.  Only with ``[http] tls_cert``.
    tls_ca: Path | None = None
    #: The client certificate shown to the other nodes (their ``[http]
    #: tls_client_ca`` must trust it); default: ``[http] tls_cert`` and ``tls_key``.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        _both_or_neither(("tls_cert", self.tls_cert), ("tls_key", self.tls_key))
        given = _at_most_one(self, _CLUSTER_SECRETS)
        if given is None:
            return
        if self.secret_file is not None:
            _readable("secret_file", self.secret_file)
            try:
                text = self.secret_file.read_text().strip()
            except UnicodeDecodeError:
                raise _Problem("secret_file", f"{self.secret_file} is not UTF-8 text") from None
            force_setattr(self, "secret", text)
            force_setattr(self, "secret_file", None)
        if self.secret_env is not None:
            force_setattr(self, "secret", _environment("secret_env", self.secret_env))
            force_setattr(self, "secret_env", None)
        assert self.secret is not None
        if len(self.secret) < MIN_SECRET:
            raise _Problem(
                given,
                f"too short ({len(self.secret)} characters; at least {MIN_SECRET}, "
                "e.g. from openssl rand -hex 32)",
            )


_CLUSTER_SECRETS = ("secret", "secret_file", "secret_env")
#: Characters of ``[cluster] secret`` at least: 128 bits and more as hex.
MIN_SECRET = 32


class BayeuxSettings(TypedDict, total=False):
    """``[bayeux]``: the Bayeux server's limits, each optional.

    Their meaning and defaults are adapter.bayeux.BayeuxLimits's (a test holds
    the names and kinds alike): only the keys the file sets are present, so
    ``BayeuxLimits(**settings)`` keeps the server's defaults for the others, and
    reading the configuration needs nothing of the server.
    """

    connect_timeout: Positive
    interval: NonNegative
    max_interval: Positive
    queue_size: PositiveInt
    backlog_size: PositiveInt
    backlog_ttl: Positive
    max_body: PositiveInt
    max_sessions_per_app: PositiveInt
    max_subscriptions_per_session: PositiveInt


class Config(_Model, frozen=True, kw_only=True):
    """The whole file: one field per table."""

    #: Fields that are not keys of the file: set by ``load_config``.
    _not_in_file: ClassVar[tuple[str, ...]] = ("source", "unknown_keys")

    http: HttpConfig
    sip: SipConfig
    xcap: XcapConfig
    store: StoreConfig
    accounts: tuple[Account, ...]
    #: Optional ``[bayeux]`` table: the limits it sets.
    bayeux: BayeuxSettings = field(default_factory=lambda: BayeuxSettings())
    #: Optional ``[notifications]`` table: limits on notification requests.
    notifications: NotificationPolicy = field(default_factory=NotificationPolicy)
    #: Optional ``[limits]`` table; None: no limit on any application's request rate.
    limits: RateLimit | None = None
    #: Optional ``[log]`` table.
    log: LogConfig = field(default_factory=LogConfig)
    #: Optional ``[metrics]`` table.
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: Optional ``[cluster]`` table; None: a single adapter.
    cluster: ClusterConfig | None = None
    #: The file the configuration was read from, as given (used in messages).
    source: str = ""
    #: Key paths present in the file that this version does not know.
    unknown_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.accounts:
            raise _Problem("accounts", "at least one [[accounts]] entry is required")
        first_index: dict[str, int] = {}
        for index, account in enumerate(self.accounts):
            if account.id in first_index:
                raise _Problem(
                    f"accounts[{index}].id",
                    f"{_show(account.id)} duplicates accounts[{first_index[account.id]}].id",
                )
            first_index[account.id] = index
        if self.cluster is not None and self.store.url is None:
            raise _Problem(
                "cluster", "needs store.url: the nodes of a cluster share a PostgreSQL store"
            )
        if self.cluster is not None and self.http.tls_cert is None:
            for name in ("tls_ca", "tls_cert"):
                if getattr(self.cluster, name) is not None:
                    raise _Problem(
                        f"cluster.{name}",
                        "is set but the nodes serve plain HTTP (no http.tls_cert)",
                    )
        if _overlap(self.http.address, self.sip.listen):
            raise _Problem(
                "sip.listen", f"{self.sip.listen} is also http.host/http.port (both use TCP)"
            )

    def account(self, account_id: str) -> Account | None:
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None


def _overlap(a: HostPort, b: HostPort) -> bool:
    wildcard = {"0.0.0.0", "[::]"}
    return a.port == b.port and (a.host == b.host or a.host in wildcard or b.host in wildcard)


# -- reading -----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, cwd: Path | None = None) -> Config:
    """Read and validate the configuration file at ``path``.

    ``cwd`` (default: the process's working directory) anchors relative paths.
    Raises ``ConfigError`` (one line) for any problem.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"invalid TOML: not UTF-8 ({exc.reason})") from None

    unknown: list[str] = []
    known = _known_keys(data, Config, "", unknown)
    anchor = Path.cwd() if cwd is None else cwd
    try:
        config = msgspec.convert(known, Config, strict=True, dec_hook=_value_reader(anchor))
    except msgspec.ValidationError as exc:
        raise _config_error(source, exc, known) from None
    force_setattr(config, "source", source)
    force_setattr(config, "unknown_keys", tuple(unknown))
    if unknown:
        logger.warning("%s: unknown keys ignored: %s", source, ", ".join(unknown))
    # Loaded now, so that an unusable certificate stops start-up here, in one line.
    sip_tls_context(config)
    xcap_tls_context(config)
    cluster_tls_context(config)
    return config


def _value_reader(cwd: Path) -> Callable[[type, object], object]:
    """msgspec's hook for the value types it does not know itself."""

    def read(kind: type, value: object) -> object:
        if kind is Path:
            return _path(value, cwd)
        convert = getattr(kind, "_convert", None)
        if convert is None:
            raise NotImplementedError(kind)
        return convert(value)

    return read


def _bare(kind: Any) -> Any:
    """``kind`` without ``Annotated`` and without ``| None``."""
    if get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    if get_origin(kind) in (Union, types.UnionType):
        kind = _bare(next(arg for arg in get_args(kind) if arg is not type(None)))
    return kind


def _meta(kind: Any) -> Meta:
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    if get_origin(kind) is Annotated:
        return next((arg for arg in get_args(kind) if isinstance(arg, Meta)), Meta())
    return Meta()


@functools.cache
def _fields(kind: Any) -> dict[str, Any] | None:
    """The keys of a table type and their types; None for any other type."""
    if isinstance(kind, type) and issubclass(kind, Struct):
        skip = getattr(kind, "_not_in_file", ())
        return {f.name: f.type for f in msgspec.structs.fields(kind) if f.name not in skip}
    if is_typeddict(kind):
        return get_type_hints(kind, include_extras=True)
    return None


def _known_keys(data: Any, kind: Any, path: str, unknown: list[str]) -> Any:
    """``data`` with only the keys the models know, in the models' order.

    The others are added to ``unknown``, a table's own before its sub-tables'.
    The order makes the first problem reported the same whatever the file's order.
    """
    kind = _bare(kind)
    fields = _fields(kind)
    if isinstance(data, dict) and fields is not None:
        unknown.extend(_key(path, name) for name in data if name not in fields)
        return {
            name: _known_keys(data[name], fields[name], _key(path, name), unknown)
            for name in fields
            if name in data
        }
    if isinstance(data, list) and get_origin(kind) is tuple:
        item = get_args(kind)[0]
        return [_known_keys(v, item, f"{path}[{i}]", unknown) for i, v in enumerate(data)]
    return data


def _key(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_PARTS = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _at(path: str, data: Any) -> tuple[Any, Any]:
    """The declared type and the file's value at ``path`` (None where either is unknown)."""
    kind: Any = Config
    for name, index in _PARTS.findall(path):
        kind = _bare(kind)
        if index:
            kind = next(iter(get_args(kind)), None)
            data = data[int(index)] if isinstance(data, list) else None
        else:
            kind = (_fields(kind) or {}).get(name)
            data = data.get(name) if isinstance(data, dict) else None
    return kind, data


def _expected(kind: Any, path: str) -> str:
    """What a value of type ``kind`` is, in the one-line error's words."""
    bare = _bare(kind)
    if bare is bool:
        return "a boolean"
    if bare is int:
        return "an integer"
    if bare is float:
        return "a number"
    if _fields(bare) is not None:
        return "a table"
    if get_origin(bare) is tuple:
        item = _bare(get_args(bare)[0])
        if _fields(item) is not None:
            return f"an array of tables ([[{path}]])"
        return f"an array of {getattr(item, 'plural', 'values')}"
    return "a string"


#: msgspec's names of the types it found, in the one-line error's words.
_GOT = {
    "str": "a string", "int": "an integer", "float": "a float", "bool": "a boolean",
    "array": "an array", "object": "a table",
    "datetime": "a date-time", "date": "a date", "time": "a time",
}


def _config_error(source: str, exc: msgspec.ValidationError, data: Any) -> ConfigError:
    """msgspec's error as the one-line ``ConfigError`` naming the key."""
    text = str(exc)
    message, at, where = text.rpartition(" - at `$")
    if not at:
        message, where = text, ""
    path = where.removesuffix("`").removeprefix(".")
    cause = exc.__cause__
    if isinstance(cause, _Problem):  # a model's own check
        return ConfigError(source, _key(path, cause.key), cause.problem)
    if isinstance(cause, (TypeError, ValueError)):  # a value type's _convert
        return ConfigError(source, path or None, str(cause))
    if match := re.fullmatch(r"Object missing required field `(\w+)`", message):
        return ConfigError(source, _key(path, match[1]), "missing (required)")
    kind, value = _at(path, data)
    if match := re.fullmatch(r"Expected `.+`, got `(\w+)`", message):
        problem = f"must be {_expected(kind, path)}, not {_GOT.get(match[1], match[1])}"
    elif message.startswith("Invalid enum value") and get_args(_bare(kind)):
        *first, last = (f'"{choice}"' for choice in get_args(_bare(kind)))
        problem = f"{_show(value)} must be {', '.join(first)} or {last}"
    elif message.startswith("Expected `str` matching regex"):
        problem = "must not be empty"
    elif re.match(r"Expected `(int|float)` [<>]", message):
        meta = _meta(kind)
        if meta.ge is not None and meta.le is not None:
            problem = f"{value} is outside {meta.ge}-{meta.le}"
        elif meta.ge == 0:
            problem = "must not be negative"
        else:
            problem = "must be positive"
    else:
        problem = message
    return ConfigError(source, path or None, problem)


# -- TLS contexts --------------------------------------------------------------------


def _client_context(
    source: str, prefix: str, ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context that verifies the server with ``ca`` (None: the system's
    trust store), and may present ``cert``.

    RFC 3261 §26.3.1 (and §26.2 for sips): the server's certificate is
    checked, its name included; problems are a :class:`ConfigError` naming the key.
    """
    try:
        context = ssl.create_default_context(cafile=None if ca is None else os.fspath(ca))
    except (OSError, ValueError) as exc:
        assert ca is not None  # the system's store loads, or OpenSSL has none
        raise ConfigError(source, f"{prefix}.tls_ca", _tls_problem(ca, exc)) from None
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(os.fspath(cert), os.fspath(key), password=_no_password)
        except ValueError:
            raise ConfigError(
                source, f"{prefix}.tls_key", f"{key} is encrypted (give an unencrypted key)"
            ) from None
        except OSError as exc:
            raise ConfigError(
                source, f"{prefix}.tls_cert", f"{_tls_problem(cert, exc)} (with tls_key {key})"
            ) from None
    return context


def _tls_problem(path: Path, exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{_show(str(path))}: no such file"
    if isinstance(exc, ssl.SSLError):
        return f"{_show(str(path))}: not usable PEM ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return f"{_show(str(path))}: {exc.strerror or exc}"
    return f"{_show(str(path))}: {exc}"


def sip_tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context towards the presence server, or None when TLS is not used."""
    sip = config.sip
    if not sip.tls:
        return None
    assert sip.tls_ca is not None  # load_config demands it
    return _client_context(config.source, "sip", sip.tls_ca, sip.tls_cert, sip.tls_key)


def xcap_tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for an https:// XCAP root; None: the system's trust store."""
    if not config.xcap.root.startswith("https:"):
        return None
    if config.xcap.tls_ca is not None:
        sip = config.sip
        return _client_context(config.source, "xcap", config.xcap.tls_ca, sip.tls_cert,
                               sip.tls_key)
    return sip_tls_context(config)



def cluster_tls_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of a node's calls to the other nodes, None when they serve
    plain HTTP (every node of a cluster is configured alike)."""
    cluster, http = config.cluster, config.http
    if cluster is None or http.tls_cert is None:
        return None
    cert = cluster.tls_cert or http.tls_cert
    key = cluster.tls_key or http.tls_key
    return _client_context(config.source, "cluster", cluster.tls_ca, cert, key)


# -- serve-time checks -------------------------------------------------------------


def _bind_problem(address: HostPort, kind: socket.SocketKind) -> str | None:
    try:
        infos = socket.getaddrinfo(address.bind_host, address.port, type=kind)
    except socket.gaierror as exc:
        return f"cannot resolve {address.host}: {exc.strerror}"
    family, socktype, proto, _, sockaddr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        if kind == socket.SOCK_STREAM:
            # As every TCP server does, so that connections of a previous run still
            # in TIME_WAIT do not count as "in use"; a listening socket still does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            proto_name = "TCP" if kind == socket.SOCK_STREAM else "UDP"
            if exc.errno == errno.EADDRINUSE:
                return f"{address} ({proto_name}) is already in use"
            return f"cannot bind {address} ({proto_name}): {exc.strerror or exc}"
    return None


def check_ports(config: Config) -> None:
    """Raise ``ConfigError`` if the HTTP port or the SIP listen port cannot be bound.

    Checked just before serving, so that "port in use" is one clear line instead of
    a server's traceback; whoever binds first afterwards still wins a race.
    """
    checks = [
        ("http.port", config.http.address, socket.SOCK_STREAM),
        ("sip.listen", config.sip.listen, socket.SOCK_DGRAM),
        ("sip.listen", config.sip.listen, socket.SOCK_STREAM),
    ]
    for key, address, kind in checks:
        problem = _bind_problem(address, kind)
        if problem:
            raise ConfigError(config.source, key, problem)
