"""The adapter as its users run it: ``presence-adapter serve --config PATH``, in a subprocess.

For tests that need a real process — end to end through HTTP, killed with
SIGKILL, started again with the same configuration and store, or expected to
exit.  Each instance owns a directory (configuration, store, log) and HTTP/SIP
ports chosen free at run time; ``start()`` returns once the HTTP server answers
(or, with ``healthy=True``, once ``/health`` says the presence server does).

Two ways to configure one: a TOML template of your own (``AdapterProcess(directory,
config, **values)``), or :meth:`AdapterProcess.for_server` with the application
accounts and a presence server, which writes the configuration and then hands
out HTTP clients per account (:meth:`AdapterProcess.client`).

An adapter serving HTTPS (``[http] tls_cert``) is reached with ``tls``, the
client's TLS context (trusting the test's CA, presenting a client certificate
when the adapter asks for one): :attr:`url` is then ``https://``.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Self

import httpx

from tests.presence_server import PresenceServer, free_ports
from tests.processes import end

IDENTITY_HEADER = "X-Presence-Identity"  # adapter/auth.py: which address a request acts as


class AdapterProcessError(Exception):
    """The adapter did not start, or did not stop."""


@dataclass(frozen=True)
class AppAccount:
    """One ``[[accounts]]`` entry: an application and the SIP addresses it may act as."""

    id: str
    password: str  # what its clients send
    addresses: tuple[str, ...]
    #: Written to the configuration instead of ``password`` when given: a hash of
    #: it, or the name of the environment variable the adapter reads it from.
    password_hash: str | None = None
    password_env: str | None = None

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError(f"account {self.id} needs at least one address")


def _toml(value: object) -> str:
    """A TOML value for the scalars and lists a configuration holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _literal(text: str) -> str:
    """``text`` protected from ``str.format`` (the template fills only its placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def config_template(
    accounts: Iterable[AppAccount],
    *,
    sip_server: str,
    xcap_root: str,
    transport: str = "udp",
    settings: Mapping[str, Mapping[str, object]] | None = None,
    extra: str = "",
) -> str:
    """A configuration template for :class:`AdapterProcess` (ports and store left open).

    ``settings`` adds or overrides keys of tables (``{"sip": {"request_timeout": 1}}``,
    ``{"store": {"url": "postgresql://…"}}`` instead of the SQLite file, or whole
    new tables); ``extra`` is TOML text written after them, before the
    accounts.
    """
    tables: dict[str, dict[str, object]] = {
        "http": {"host": "127.0.0.1"},
        "sip": {"server": sip_server, "transport": transport},
        "xcap": {"root": xcap_root},
        "store": {},
    }
    for table, keys in (settings or {}).items():
        tables.setdefault(table, {}).update(keys)
    placeholders = {
        ("http", "port"): "{http_port}",
        ("sip", "listen"): '"127.0.0.1:{sip_port}"',
        ("store", "path"): '"{store}"',
    }
    lines: list[str] = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        for (where, key), placeholder in placeholders.items():
            # A store given by url (PostgreSQL) has no path.
            if where == table and key not in keys and not (key == "path" and "url" in keys):
                lines.append(f"{key} = {placeholder}")
        lines.extend(f"{key} = {_literal(_toml(value))}" for key, value in keys.items())
        lines.append("")
    if extra:
        lines.extend([_literal(extra.strip()), ""])
    for account in accounts:
        if account.password_hash is not None:
            secret = f"password_hash = {_literal(_toml(account.password_hash))}"
        elif account.password_env is not None:
            secret = f"password_env = {_literal(_toml(account.password_env))}"
        else:
            secret = f"password = {_literal(_toml(account.password))}"
        lines.extend(
            [
                "[[accounts]]",
                f"id = {_literal(_toml(account.id))}",
                secret,
                f"addresses = {_literal(_toml(list(account.addresses)))}",
                "",
            ]
        )
    return "\n".join(lines)


class AdapterProcess:
    """One adapter process at a time, on fixed ports, restartable with the same store.

    ``config`` is the TOML text with ``{http_port}``, ``{sip_port}`` and
    ``{store}`` placeholders, plus any given as ``values`` (filled once:
    restarts reuse ports and store).
    """

    # Every instance whose process runs, so that a failing test can be shown
    # their logs (tests/integration/conftest.py) whoever holds them.
    _running: ClassVar[set[AdapterProcess]] = set()

    @classmethod
    def running(cls) -> list[AdapterProcess]:
        return list(cls._running)

    def __init__(
        self,
        directory: Path,
        config: str,
        host: str = "127.0.0.1",
        *,
        tls: ssl.SSLContext | None = None,
        env: Mapping[str, str] | None = None,
        **values: object,
    ) -> None:
        self.directory = directory
        self.host = host
        #: The client side of HTTPS, for an adapter that serves it.
        self.tls = tls
        #: Added to the environment the process starts with.
        self.env = dict(env or {})
        self.http_port, self.sip_port = free_ports(host, 2)
        self.store_path = directory / "adapter.sqlite"
        self.config_path = directory / "adapter.toml"
        self.log_path = directory / "adapter.log"
        self.config_path.write_text(
            config.format(
                http_port=self.http_port, sip_port=self.sip_port, store=self.store_path, **values
            )
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        #: The accounts, by id, when known (:meth:`for_server`): what :meth:`client` uses.
        self.accounts: dict[str, AppAccount] = {}

    @classmethod
    def for_server(
        cls,
        directory: Path,
        server: PresenceServer,
        accounts: Iterable[AppAccount],
        *,
        sip_server: str | None = None,
        xcap_root: str | None = None,
        transport: str = "udp",
        settings: Mapping[str, Mapping[str, object]] | None = None,
        extra: str = "",
        tls: ssl.SSLContext | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Self:
        """An adapter (not started) for ``accounts`` in front of ``server``.

        ``sip_server`` / ``xcap_root`` replace the server's own addresses (to
        point the adapter at a port where nothing listens, say).
        """
        accounts = tuple(accounts)
        template = config_template(
            accounts,
            sip_server=sip_server or server.sip_uri,
            xcap_root=xcap_root or server.xcap_root,
            transport=transport,
            settings=settings,
            extra=extra,
        )
        adapter = cls(directory, template, tls=tls, env=env)
        adapter.accounts = {account.id: account for account in accounts}
        return adapter

    @property
    def url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.http_port}"

    @property
    def base_url(self) -> str:
        return self.url

    def _client_options(
        self, account: str | None, address: str | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        headers = dict(options.pop("headers", None) or {})
        if address is not None:
            headers[IDENTITY_HEADER] = address
        if account is not None:
            known = self.accounts[account]
            options.setdefault("auth", (known.id, known.password))
        options.setdefault("timeout", 10)
        if self.tls is not None:
            options.setdefault("verify", self.tls)
        return {"base_url": self.url, "headers": headers, **options}

    def client(
        self, account: str | None = None, address: str | None = None, **options: Any
    ) -> httpx.Client:
        """An HTTP client authenticated as ``account`` (none: no credentials),
        acting as ``address`` when given (else the account's first address)."""
        return httpx.Client(**self._client_options(account, address, options))

    def async_client(
        self, account: str | None = None, address: str | None = None, **options: Any
    ) -> httpx.AsyncClient:
        """As :meth:`client`, for asyncio tests."""
        return httpx.AsyncClient(**self._client_options(account, address, options))

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "adapter", "serve",
            "--config", str(self.config_path), "--log-level", "info",
        ]

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 15.0, *, healthy: bool = False) -> None:
        """Spawn the adapter; return once HTTP answers (any status: /health is 503
        while the presence server is down, and that is a state tests want) —
        with ``healthy``, once /health answers 200."""
        if self.process is not None:
            raise AdapterProcessError("already running")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        self._running.add(self)
        deadline = time.monotonic() + timeout
        while True:
            try:
                verify = self.tls if self.tls is not None else True
                status = httpx.get(self.url + "/health", timeout=3, verify=verify).status_code
                if status == 200 or not healthy:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._reap()
                what = "did not start" if not healthy else "did not become healthy"
                raise AdapterProcessError(f"adapter {what}:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is None:
            raise AdapterProcessError("not running")
        self.process.send_signal(signal.SIGKILL)
        self._reap()

    def restart(self, timeout: float = 15.0, *, healthy: bool = False) -> None:
        """Start again after :meth:`kill` or :meth:`stop`: same config, ports and store."""
        self.start(timeout, healthy=healthy)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``); safe to call when not running."""
        self._reap(grace=timeout)

    def _reap(self, grace: float = 0.0) -> None:
        self._running.discard(self)
        end(self.process, self._log, grace)
        self.process, self._log = None, None

    def run_to_exit(self, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """Run the command in the foreground and return its exit status and output
        (for start-ups that must fail)."""
        if self.process is not None:
            raise AdapterProcessError("already running")
        return subprocess.run(
            self.command(), cwd=self.directory, capture_output=True, text=True,
            timeout=timeout, check=False, env={**os.environ, **self.env},
        )
