"""The adapter's configuration file (TOML), read into frozen values.

The keys below are a contract with outside tools (docs: DESIGN "Configuration and
command line"): they may be added to, never renamed. Everything is validated at
load time, and every problem is reported as one ``ConfigError`` whose message is a
single line naming the file, the key path and the problem, e.g.::

    conf/adapter.toml: sip.server: "foo" is not a SIP URI

Decisions this module makes (also stated in the README):

- Unknown keys are accepted, so that a newer file still starts an older adapter,
  and are reported once per load in one warning.
- ``store.path``, when relative, is relative to the current working directory of
  the process (not to the file), like every other relative path given on a command
  line.
- The same SIP address may appear in several accounts: several applications may act
  as one SIP identity, as several devices of one SIP user do. Within one account an
  address may be listed only once, and account ids must be unique.
- Whether the HTTP and SIP listen ports are free is checked by ``check_ports`` when
  serving, not by ``load_config``: loading must stay possible while the adapter runs.
  Files named by the configuration (TLS certificates and keys) are read and checked
  by ``load_config``: a server that would fail its first handshake must not start.
- Relative file paths (``store.path``, ``http.tls_*``, ``sip.tls_*``,
  ``xcap.tls_ca``) are relative to the working
  directory, as ``store.path`` always was.
- TLS towards the presence server is never dropped silently: a ``sips:`` server or
  ``sip.transport = "tls"`` needs ``sip.tls_ca``, and the certificate files are
  loaded at load time (:func:`sip_tls_context`), so a file that is missing or not
  PEM stops start-up with one line naming its key.  TLS keys without TLS are an
  error too: whoever wrote them believes the link is protected.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from adapter.passwords import hash_problem
from sip.errors import SipError
from sip.uri import SipURI
from sip.useragent import server_destination

__all__ = [
    "BAYEUX_KEYS",
    "Account",
    "Config",
    "ConfigError",
    "HostPort",
    "HttpConfig",
    "LogConfig",
    "MetricsConfig",
    "RateLimit",
    "SipConfig",
    "StoreConfig",
    "XcapConfig",
    "check_ports",
    "load_config",
    "sip_tls_context",
    "xcap_tls_context",
]

logger = logging.getLogger(__name__)

Transport = Literal["udp", "tcp", "tls"]
TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp", "tls")


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


# -- values -------------------------------------------------------------------------

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


@dataclass(frozen=True)
class HostPort:
    """``host:port``, IPv6 hosts in brackets (``[::1]:5080``), as in RFC 3986 §3.2.2."""

    host: str
    port: int

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

    @property
    def bind_host(self) -> str:
        """The host as socket functions want it (no brackets around IPv6)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _sip_uri_problem(text: str, *, need_user: bool) -> str | None:
    """Why ``text`` is not a usable SIP URI (parsed by the SIP stack itself), or None."""
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
    if need_user and not uri.user:
        return f"{_show(text)} has no user part (expected sip:user@host)"
    return None


def _http_url_problem(text: str) -> str | None:
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


# -- the configuration -------------------------------------------------------------


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    #: One line per HTTP request at INFO on the ``adapter.access`` logger.
    access_log: bool = True
    #: PEM files: with both, REST and Bayeux are served over HTTPS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA certificates: when set, every client must present a certificate they sign.
    tls_client_ca: Path | None = None
    #: Browser origins (``https://app.example``) allowed by CORS; empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()

    @property
    def address(self) -> HostPort:
        return HostPort(f"[{self.host}]" if ":" in self.host else self.host, self.port)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"


@dataclass(frozen=True)
class SipConfig:
    #: The presence server every request goes to (outbound proxy), a sip:/sips: URI.
    server: str
    #: Our own SIP address, bound for both UDP and TCP.
    listen: HostPort
    transport: Transport
    #: Seconds between OPTIONS probes of the server (0: none); a server found
    #: down and back, or restarted, makes the adapter re-create its state there.
    keepalive: float = 5.0
    #: Longest a REST call waits for the presence server before answering 504.
    request_timeout: float = 10.0
    #: CA certificates (PEM) the server's certificate is verified against (TLS only).
    tls_ca: Path | None = None
    #: Our certificate chain and its key (PEM), for mutual TLS; both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Digest credentials answering the server's 401/407 challenges (RFC 3261 §22).
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: When set, only challenges of this realm are answered.
    realm: str | None = None

    @property
    def tls(self) -> bool:
        """Whether requests go to the server over TLS: transport "tls", a sips:
        server or a server URI with transport=tls (the SIP stack's own rule)."""
        return server_destination(SipURI.parse(self.server), self.transport).transport == "tls"


@dataclass(frozen=True)
class XcapConfig:
    #: Without a trailing slash: documents live at ``{root}/pres-rules/users/...``.
    root: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: CA certificates (PEM) for an https:// root; default: ``sip.tls_ca`` when
    #: TLS is used towards the SIP server, else the system's trust store.
    tls_ca: Path | None = None


#: When a commit of the store reaches the disk (SQLite ``PRAGMA synchronous``, WAL
#: journal): "normal" survives a crash of the process (kill -9), "full" also a
#: power cut or a crash of the operating system, at an fsync per commit.
Synchronous = Literal["normal", "full"]
SYNCHRONOUS: tuple[Synchronous, ...] = ("normal", "full")


@dataclass(frozen=True)
class StoreConfig:
    #: Absolute: a relative ``store.path`` is resolved against the working directory.
    path: Path
    synchronous: Synchronous = "normal"


@dataclass(frozen=True)
class Account:
    """An application instance account: who may call the REST API and as whom.

    Its secret is either ``password`` (plain text: given in the file, or read from
    the environment variable ``password_env`` names) or ``password_hash`` (an
    Argon2 PHC string, adapter.passwords); exactly one of the two is set.
    """

    #: The appInstanceID; also the root of its Bayeux channels, /bayeux/<id>/**.
    id: str
    password: str | None = field(repr=False)
    #: The SIP identities the application may act as; the first is its default.
    addresses: tuple[str, ...]
    password_hash: str | None = field(default=None, repr=False)
    # The same addresses as a set: asked on every request that names one, and
    # an account may hold thousands.
    _address_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.password_hash is None):
            raise ValueError(f"account {self.id}: give exactly one of password, password_hash")
        object.__setattr__(self, "_address_set", frozenset(self.addresses))

    @property
    def default_address(self) -> str:
        return self.addresses[0]

    def may_act_as(self, address: str) -> bool:
        return address in self._address_set


@dataclass(frozen=True)
class NotificationPolicy:
    """Limits on Start Presence Notification (optional ``[notifications]`` table)."""

    #: Shortest allowed ``frequency`` (seconds); below it: POL0009.
    min_frequency: float = 0.0
    #: Longest allowed ``duration`` (seconds); also the duration when none is given.
    max_duration: float = 86400.0
    #: Largest allowed ``count``; beyond it: POL0005.
    max_count: int = 100000
    #: Whether ``count`` 0 (no limit) is accepted; if not: POL0004.
    allow_unlimited_count: bool = True


@dataclass(frozen=True)
class RateLimit:
    """``[limits]``: a token bucket per application (account id) for its REST requests."""

    #: Tokens added per second: the sustained rate.
    requests_per_second: float
    #: Tokens the bucket holds: how many requests may come at once after a quiet spell.
    burst: int


#: ``[log] level`` values, as the command line's ``--log-level`` takes them.
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: how much the adapter logs, and in which form."""

    #: None: not in the file (``--log-level``, else "info", decides).
    level: str | None = None
    #: "text": one human line per record; "json": one JSON object per line.
    format: str = "text"
    #: Every SIP message in and out on the ``sip.trace`` logger (at INFO).
    sip_trace: bool = False


#: The ``[bayeux]`` keys and their kinds: the Bayeux server's limits, each
#: optional.  Their meaning and defaults are adapter.bayeux.BayeuxLimits's
#: (tests/adapter/test_config.py holds the names alike); the configuration
#: keeps plain values, so reading it needs nothing of the server.
BAYEUX_KEYS: dict[str, type[int] | type[float]] = {
    "connect_timeout": float,
    "interval": float,
    "max_interval": float,
    "queue_size": int,
    "backlog_size": int,
    "backlog_ttl": float,
    "max_body": int,
    "max_sessions_per_app": int,
    "max_subscriptions_per_session": int,
}


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: who may read ``GET /metrics``."""

    #: When set, /metrics answers only ``Authorization: Bearer <token>``.
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Config:
    #: The file the configuration was read from, as given (used in messages).
    source: str
    http: HttpConfig
    sip: SipConfig
    xcap: XcapConfig
    store: StoreConfig
    accounts: tuple[Account, ...]
    #: Key paths present in the file that this version does not know.
    unknown_keys: tuple[str, ...] = ()
    #: Optional ``[bayeux]`` table: the limits it sets, by BAYEUX_KEYS name
    #: (the Bayeux server's defaults for the others).
    bayeux: Mapping[str, int | float] = field(default_factory=dict)
    #: Optional ``[notifications]`` table: limits on notification requests.
    notifications: NotificationPolicy = field(default_factory=NotificationPolicy)
    #: Optional ``[limits]`` table; None: no limit on any application's request rate.
    limits: RateLimit | None = None
    #: Optional ``[log]`` table.
    log: LogConfig = field(default_factory=LogConfig)
    #: Optional ``[metrics]`` table.
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def account(self, account_id: str) -> Account | None:
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None


# -- reading -----------------------------------------------------------------------

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


class _Table:
    """One TOML table being read: typed getters that know their key path."""

    def __init__(self, data: dict[str, Any], path: str, source: str) -> None:
        self.data = data
        self.path = path
        self.source = source
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str | None, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name) if name else self.path or None, problem)

    def get(self, name: str, expected: type, article: str, *, required: bool = True) -> Any:
        self.read.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing (required)")
            return None
        value = self.data[name]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise self.error(name, f"must be {article}, not {_type_name(value)}")
        return value

    def string(self, name: str, *, required: bool = True) -> str | None:
        value = self.get(name, str, "a string", required=required)
        if value is not None and not value.strip():
            raise self.error(name, "must not be empty")
        return cast("str | None", value)

    def required_string(self, name: str) -> str:
        value = self.string(name)
        assert value is not None
        return value

    def integer(self, name: str) -> int:
        return cast(int, self.get(name, int, "an integer"))

    def table(self, name: str) -> _Table:
        value = self.get(name, dict, "a table")
        return _Table(value, self.key(name), self.source)

    def tables(self, name: str) -> Iterator[_Table]:
        value = self.get(name, list, "an array of tables ([[" + self.key(name) + "]])")
        for index, item in enumerate(value):
            where = f"{self.key(name)}[{index}]"
            if not isinstance(item, dict):
                raise ConfigError(self.source, where, f"must be a table, not {_type_name(item)}")
            yield _Table(item, where, self.source)

    def unknown(self) -> list[str]:
        return [self.key(name) for name in self.data if name not in self.read]


def _read_http(table: _Table, cwd: Path) -> HttpConfig:
    host = table.required_string("host")
    if not _valid_host(f"[{host}]" if ":" in host else host):
        raise table.error("host", f"{_show(host)} is not a host name or IP address")
    port = table.integer("port")
    if not _valid_port(port):
        raise table.error("port", f"{port} is outside 1-65535")
    access_log = table.get("access_log", bool, "a boolean", required=False)
    cert, key, client_ca = (_path(table, name, cwd) for name in _TLS_FILES)
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_cert"
        raise table.error(missing, "missing (tls_cert and tls_key go together)")
    if client_ca is not None and cert is None:
        raise table.error(
            "tls_client_ca", "needs tls_cert and tls_key (client certificates come over TLS)"
        )
    if cert is not None and key is not None:
        _check_tls_files(table, cert, key, client_ca)
    return HttpConfig(
        host,
        port,
        True if access_log is None else access_log,
        cert,
        key,
        client_ca,
        _read_origins(table),
    )


_TLS_FILES = ("tls_cert", "tls_key", "tls_client_ca")


def _path(table: _Table, name: str, cwd: Path) -> Path | None:
    text = table.string(name, required=False)
    if text is None:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else cwd / path


def _readable(table: _Table, name: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise table.error(name, f"cannot read {path}: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    # An encrypted key would make OpenSSL prompt on the terminal; refuse it instead.
    raise ValueError("encrypted")


def _check_tls_files(table: _Table, cert: Path, key: Path, client_ca: Path | None) -> None:
    """Load the files as the server will, naming the key whose file is at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, path in (("tls_cert", cert), ("tls_client_ca", client_ca)):
        if path is None:
            continue
        _readable(table, name, path)
        try:
            # The certificates alone first, so that a bad one is not blamed on the key.
            context.load_verify_locations(cafile=path)
        except ssl.SSLError:
            raise table.error(name, f"{path} holds no PEM certificate") from None
    _readable(table, "tls_key", key)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ValueError:
        raise table.error("tls_key", f"{key} is encrypted (give an unencrypted key)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problem = ("tls_key", f"{key} does not match the certificate of tls_cert")
        elif exc.reason in ("EE_KEY_TOO_SMALL", "CA_MD_TOO_WEAK", "CA_KEY_TOO_SMALL"):
            problem = ("tls_cert", f"{cert} is too weak for OpenSSL ({exc.reason})")
        else:
            problem = ("tls_key", f"{key} holds no PEM private key")
        raise table.error(*problem) from None


def _read_origins(table: _Table) -> tuple[str, ...]:
    origins = table.get("cors_origins", list, "an array of origins", required=False) or []
    for index, origin in enumerate(origins):
        where = f"cors_origins[{index}]"
        if not isinstance(origin, str):
            raise table.error(where, f"must be a string, not {_type_name(origin)}")
        if _origin_problem(origin):
            raise table.error(
                where,
                f"{_show(origin)} is not an origin: scheme://host[:port] in lower case, "
                "no path (RFC 6454 §6.2, as browsers send it)",
            )
    return tuple(origins)


def _origin_problem(text: str) -> bool:
    # Browsers send the serialised origin (RFC 6454 §6.2) and CORS compares it as
    # a string, so only that exact form can ever match.
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return True
    return (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or "@" in parts.netloc
        or port == 0
        or bool(parts.path or parts.query or parts.fragment or text.endswith(("?", "#")))
        or text != text.lower()
    )


def _client_context(
    source: str, prefix: str, ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS client context that verifies the server with ``ca`` (and may present ``cert``).

    RFC 3261 §26.3.1 (and §26.2 for sips): the server's certificate is
    checked, its name included; problems are a :class:`ConfigError` naming the key.
    """
    try:
        context = ssl.create_default_context(cafile=os.fspath(ca))
    except (OSError, ValueError) as exc:
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


def _read_sip(table: _Table, cwd: Path) -> SipConfig:
    server = table.required_string("server")
    problem = _sip_uri_problem(server, need_user=False)
    if problem:
        raise table.error("server", problem)
    listen_text = table.required_string("listen")
    try:
        listen = HostPort.parse(listen_text)
    except ValueError as exc:
        raise table.error("listen", f"{_show(listen_text)} {exc}") from None
    transport = table.required_string("transport")
    if transport not in TRANSPORTS:
        raise table.error("transport", f'{_show(transport)} must be "udp", "tcp" or "tls"')
    if server.lower().startswith("sips:") and transport == "udp":
        # RFC 5630 §3.1.3: sips demands TLS on the hop, which UDP cannot carry.
        raise table.error(
            "transport", f'"udp" with the sips: server {_show(server)}: sips means TLS; use "tls"'
        )
    timing: dict[str, float] = {}
    for name in ("keepalive", "request_timeout"):
        value = table.get(name, (int, float), "a number", required=False)  # type: ignore[arg-type]
        if value is not None:
            if value < 0 or (value == 0 and name == "request_timeout"):
                raise table.error(name, "must be positive")
            timing[name] = float(value)
    tls_files = {name: _path(table, name, cwd) for name in ("tls_ca", "tls_cert", "tls_key")}
    username = table.string("username", required=False)
    password = table.get("password", str, "a string", required=False)
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise table.error(missing, "missing (username and password go together)")
    realm = table.string("realm", required=False)
    if realm is not None and username is None:
        raise table.error("realm", "needs sip.username and sip.password")
    config = SipConfig(
        server, listen, transport, **timing,
        tls_ca=tls_files["tls_ca"], tls_cert=tls_files["tls_cert"], tls_key=tls_files["tls_key"],
        username=username, password=password, realm=realm,
    )
    if (config.tls_cert is None) != (config.tls_key is None):
        missing = "tls_key" if config.tls_key is None else "tls_cert"
        raise table.error(missing, "missing (tls_cert and tls_key go together)")
    if config.tls:
        if config.tls_ca is None:
            raise table.error(
                "tls_ca",
                "missing (required for TLS: the CA certificates, PEM, that the presence "
                "server's certificate is verified against)",
            )
    else:
        given = next((name for name, path in tls_files.items() if path is not None), None)
        if given is not None:
            raise table.error(
                given, 'is set but TLS is not used (sip.transport "tls" or a sips: server)'
            )
    return config


def _read_xcap(table: _Table, cwd: Path) -> XcapConfig:
    root = table.required_string("root")
    problem = _http_url_problem(root)
    if problem:
        raise table.error("root", problem)
    username = table.string("username", required=False)
    password = table.get("password", str, "a string", required=False)
    if (username is None) != (password is None):
        missing = "password" if password is None else "username"
        raise table.error(missing, "missing (username and password go together)")
    tls_ca = _path(table, "tls_ca", cwd)
    if tls_ca is not None and not root.startswith("https:"):
        raise table.error("tls_ca", "is set but xcap.root is not an https:// URL")
    return XcapConfig(root.rstrip("/"), username, password, tls_ca)


def _read_store(table: _Table, cwd: Path) -> StoreConfig:
    path = Path(table.required_string("path")).expanduser()
    synchronous = table.string("synchronous", required=False) or "normal"
    if synchronous not in SYNCHRONOUS:
        raise table.error("synchronous", f'{_show(synchronous)} must be "normal" or "full"')
    absolute = path if path.is_absolute() else cwd / path
    return StoreConfig(absolute, synchronous)


# Bayeux 1.0 §2.2.1: a channel segment is 1*( ALPHA / DIGIT / mark ), with
# mark = "-" / "_" / "!" / "~" / "(" / ")" / "$" / "@". The id is such a segment
# (/bayeux/<id>); it also excludes ":", which HTTP Basic user-ids cannot contain
# (RFC 7617 §2).
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9_!~()$@-]+")


def _read_account(table: _Table) -> Account:
    account_id = table.required_string("id")
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise table.error(
            "id",
            f"{_show(account_id)} must be letters, digits and - _ ! ~ ( ) $ @ only "
            "(it names the Bayeux channel /bayeux/<id>)",
        )
    password, password_hash = _read_secret(table)
    addresses = table.get("addresses", list, "an array of SIP URIs")
    if not addresses:
        raise table.error("addresses", "must list at least one SIP address")
    seen: set[str] = set()
    for index, address in enumerate(addresses):
        where = f"addresses[{index}]"
        if not isinstance(address, str):
            raise table.error(where, f"must be a string, not {_type_name(address)}")
        problem = _sip_uri_problem(address, need_user=True)
        if problem:
            raise table.error(where, problem)
        if address in seen:
            raise table.error(where, f"{_show(address)} is listed twice")
        seen.add(address)
    return Account(account_id, password, tuple(addresses), password_hash)


_SECRETS = ("password", "password_hash", "password_env")


def _read_secret(table: _Table) -> tuple[str | None, str | None]:
    """(password, password_hash) from exactly one of ``password``, ``password_hash``,
    ``password_env`` (the name of an environment variable holding the password)."""
    given = [name for name in _SECRETS if name in table.data]
    if not given:
        raise table.error("password", "missing (give password, password_hash or password_env)")
    if len(given) > 1:
        raise table.error(given[1], f"give only one of {', '.join(_SECRETS)}, not also {given[0]}")
    name = given[0]
    value = table.required_string(name)
    if name == "password":
        return value, None
    if name == "password_hash":
        problem = hash_problem(value)
        if problem:
            raise table.error(name, problem)
        return None, value
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise table.error(name, f"{_show(value)} is not an environment variable name")
    secret = os.environ.get(value)
    if secret is None:
        raise table.error(name, f"environment variable {value} is not set")
    if not secret:
        raise table.error(name, f"environment variable {value} is empty")
    return secret, None


def _read_bayeux(table: _Table) -> dict[str, int | float]:
    """``[bayeux]``: any of BAYEUX_KEYS, each optional (seconds, counts, bytes)."""
    values: dict[str, int | float] = {}
    for name, kind in BAYEUX_KEYS.items():
        article = "an integer" if kind is int else "a number"
        expected: type | tuple[type, ...] = int if kind is int else (int, float)
        value = table.get(name, expected, article, required=False)  # type: ignore[arg-type]
        if value is None:
            continue
        if value < 0 or (value == 0 and name != "interval"):
            raise table.error(name, "must be positive")
        values[name] = value
    return values


def _read_notifications(table: _Table) -> NotificationPolicy:
    default = NotificationPolicy()
    values: dict[str, Any] = {}
    for name in ("min_frequency", "max_duration"):
        value = table.get(name, (int, float), "a number", required=False)  # type: ignore[arg-type]
        if value is not None:
            if value < 0 or (name == "max_duration" and value == 0):
                raise table.error(name, "must be positive")
            values[name] = float(value)
    max_count = table.get("max_count", int, "an integer", required=False)
    if max_count is not None:
        if max_count < 1:
            raise table.error("max_count", "must be positive")
        values["max_count"] = max_count
    unlimited = table.get("allow_unlimited_count", bool, "a boolean", required=False)
    if unlimited is not None:
        values["allow_unlimited_count"] = unlimited
    return NotificationPolicy(**{**default.__dict__, **values})


def _read_limits(table: _Table) -> RateLimit:
    rate = table.get("requests_per_second", (int, float), "a number")  # type: ignore[arg-type]
    if not (rate > 0 and math.isfinite(rate)):
        raise table.error("requests_per_second", "must be positive")
    burst = table.get("burst", int, "an integer", required=False)
    if burst is None:
        burst = max(1, math.ceil(rate))  # a second's worth
    elif burst < 1:
        raise table.error("burst", "must be positive")
    return RateLimit(float(rate), burst)


def _read_log(table: _Table) -> LogConfig:
    level = table.string("level", required=False)
    if level is not None and level.lower() not in LOG_LEVELS:
        raise table.error("level", f"{_show(level)} must be one of {', '.join(LOG_LEVELS)}")
    form = table.string("format", required=False) or "text"
    if form not in LOG_FORMATS:
        raise table.error("format", f'{_show(form)} must be "text" or "json"')
    sip_trace = table.get("sip_trace", bool, "a boolean", required=False)
    return LogConfig(level.lower() if level is not None else None, form, bool(sip_trace))


def _read_metrics(table: _Table) -> MetricsConfig:
    token = table.string("token", required=False)
    token_env = table.string("token_env", required=False)
    if token is not None and token_env is not None:
        raise table.error("token_env", "give token or token_env, not both")
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise table.error("token_env", f"environment variable {token_env} is not set")
    return MetricsConfig(token)


def _overlap(a: HostPort, b: HostPort) -> bool:
    wildcard = {"0.0.0.0", "[::]"}
    return a.port == b.port and (a.host == b.host or a.host in wildcard or b.host in wildcard)


def load_config(path: str | os.PathLike[str], *, cwd: Path | None = None) -> Config:
    """Read and validate the configuration file at ``path``.

    ``cwd`` (default: the process's working directory) anchors a relative store path.
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

    root = _Table(data, "", source)
    sections = [root.table(name) for name in ("http", "sip", "xcap", "store")]
    http_table, sip_table, xcap_table, store_table = sections
    cwd = Path.cwd() if cwd is None else cwd
    http = _read_http(http_table, cwd)
    sip = _read_sip(sip_table, cwd)
    xcap = _read_xcap(xcap_table, cwd)
    store = _read_store(store_table, cwd)

    account_tables = list(root.tables("accounts"))
    if not account_tables:
        raise ConfigError(source, "accounts", "at least one [[accounts]] entry is required")
    accounts: list[Account] = []
    first_index: dict[str, int] = {}
    for index, table in enumerate(account_tables):
        account = _read_account(table)
        if account.id in first_index:
            raise table.error(
                "id", f"{_show(account.id)} duplicates accounts[{first_index[account.id]}].id"
            )
        first_index[account.id] = index
        accounts.append(account)

    if _overlap(http.address, sip.listen):
        raise ConfigError(
            source, "sip.listen", f"{sip.listen} is also http.host/http.port (both use TCP)"
        )

    bayeux_table = root.table("bayeux") if "bayeux" in data else None
    bayeux = _read_bayeux(bayeux_table) if bayeux_table is not None else {}
    policy_table = root.table("notifications") if "notifications" in data else None
    policy = (
        _read_notifications(policy_table) if policy_table is not None else NotificationPolicy()
    )

    limits_table = root.table("limits") if "limits" in data else None
    limits = _read_limits(limits_table) if limits_table is not None else None

    log_table = root.table("log") if "log" in data else None
    log = _read_log(log_table) if log_table is not None else LogConfig()
    metrics_table = root.table("metrics") if "metrics" in data else None
    metrics = _read_metrics(metrics_table) if metrics_table is not None else MetricsConfig()

    unknown = root.unknown()
    extra = [
        t
        for t in (bayeux_table, policy_table, limits_table, log_table, metrics_table)
        if t is not None
    ]
    for table in [*sections, *account_tables, *extra]:
        unknown += table.unknown()
    if unknown:
        logger.warning("%s: unknown keys ignored: %s", source, ", ".join(unknown))
    config = Config(
        source,
        http,
        sip,
        xcap,
        store,
        tuple(accounts),
        tuple(unknown),
        bayeux,
        policy,
        limits,
        log,
        metrics,
    )
    # Loaded now, so that an unusable certificate stops start-up here, in one line.
    sip_tls_context(config)
    xcap_tls_context(config)
    return config


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
