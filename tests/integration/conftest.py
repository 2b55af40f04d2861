"""Fixtures for the integration tests (the real presence server is in tests/conftest.py)."""

from __future__ import annotations

import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.adapter_process import AdapterProcess, AppAccount
from tests.linepeer import LinePeer
from tests.presence_server import PresenceServer
from tests.sipphone import SipPhone

INTEROP = Path(__file__).resolve().parent.parent / "interop"

Message = dict[str, Any]


class BayeuxListener(LinePeer):
    """The CometD JavaScript client (tests/interop/cometd_listen.mjs) on an application's channels.

    A real third-party Bayeux client, run by node in its own process: it
    handshakes with the account's credentials, subscribes to
    ``/bayeux/<account>/**`` with the ack extension and reports every message.
    ``messages`` holds what arrived, in order, as ``{"channel", "data", "at"}``
    (``at``: ``time.monotonic()`` when the line was read).
    """

    title = "Bayeux client"

    def __init__(self, url: str, user: str, password: str, transport: str | None = None) -> None:
        self.url = url
        self.user = user
        self.messages: list[Message] = []
        self.unreachable = 0  # handshakes that got no answer (and were retried)
        self._subscribed = False
        args = [url, user, password] + ([transport] if transport else [])
        super().__init__(["node", str(INTEROP / "cometd_listen.mjs"), *args], cwd=INTEROP)

    def _on_event(self, event: Message) -> None:
        if event["event"] == "subscribed":
            self._subscribed = True
        elif event["event"] == "unreachable":
            self.unreachable += 1  # the client retries by itself
        elif event["event"] == "message":
            self.messages.append(
                {"channel": event["channel"], "data": event["data"], "at": time.monotonic()}
            )
        else:
            self.errors.append(str(event.get("error")))

    def _received(self) -> object:
        return self.messages

    def wait_subscribed(self, timeout: float = 10) -> None:
        self._wait(lambda: self._subscribed, timeout, "subscription")

    def wait_unreachable(self, timeout: float = 10) -> None:
        """Until a handshake went unanswered (the server is down; the client retries)."""
        self._wait(lambda: self.unreachable, timeout, "unanswered handshake")

    def matching(self, predicate: Callable[[Message], bool]) -> list[Message]:
        """The messages received so far that satisfy ``predicate``."""
        with self._changed:
            return [m for m in self.messages if predicate(m)]

    def wait_for(
        self, predicate: Callable[[Message], bool], count: int = 1, timeout: float = 10
    ) -> list[Message]:
        """Once at least ``count`` messages satisfy ``predicate``: all of them."""

        def ready() -> list[Message]:
            found = [m for m in self.messages if predicate(m)]
            return found if len(found) >= count else []

        return list(self._wait(ready, timeout, f"{count} matching message(s)"))


@pytest.fixture
def bayeux_listener() -> Iterator[Callable[..., BayeuxListener]]:
    """Start CometD clients on an adapter (``listen(url, user, password)``); stopped afterwards."""
    if shutil.which("node") is None or not (INTEROP / "node_modules").is_dir():
        pytest.fail("node and tests/interop/node_modules are required (scripts/setup runs npm ci)")
    started: list[BayeuxListener] = []

    def listen(
        url: str, user: str, password: str, transport: str | None = None, *, wait: bool = True
    ) -> BayeuxListener:
        """``wait=False``: return at once (the client keeps trying until the server answers)."""
        listener = BayeuxListener(url, user, password, transport)
        started.append(listener)
        if wait:
            listener.wait_subscribed()
        return listener

    yield listen
    for listener in started:
        listener.stop()


@pytest.fixture
def sip_phone(
    presence_server: PresenceServer, tmp_path: Path
) -> Iterator[Callable[[str], SipPhone]]:
    """Start PJSIP phones (tests/sipphone.py): ``sip_phone(uri)`` is a pjsua2 account for
    ``uri`` using the session's presence server as outbound proxy; all stopped afterwards."""
    started: list[SipPhone] = []

    def start(uri: str) -> SipPhone:
        log = tmp_path / f"sipphone-{len(started)}.log"
        phone = SipPhone(uri, presence_server.sip_uri, log_path=log)
        started.append(phone)
        return phone

    yield start
    for phone in started:
        phone.stop()


@pytest.fixture
def kamailio() -> Iterator[PresenceServer]:
    """A presence server of the test's own, for tests that stop, halt or restart it."""
    server = PresenceServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class AdapterFactory(Protocol):
    def __call__(
        self,
        accounts: list[AppAccount],
        *,
        healthy: bool = True,
        sip_server: str | None = None,
        xcap_root: str | None = None,
        transport: str = "udp",
        settings: dict[str, dict[str, object]] | None = None,
        extra: str = "",
        tls: ssl.SSLContext | None = None,
        env: dict[str, str] | None = None,
    ) -> AdapterProcess: ...


@pytest.fixture(scope="module")
def adapter_factory(
    presence_server: PresenceServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdapterFactory]:
    """Start adapter processes (tests/adapter_process.py) in front of the session's
    presence server, each in a directory of its own; all stopped after the module.

    ``healthy`` (the default) waits until /health is 200; pass False for an adapter
    pointed at a presence server that is not there. ``tls`` is the clients' side
    of an adapter serving HTTPS, ``env`` added to its environment.
    """
    started: list[AdapterProcess] = []

    def start(
        accounts: list[AppAccount],
        *,
        healthy: bool = True,
        sip_server: str | None = None,
        xcap_root: str | None = None,
        transport: str = "udp",
        settings: dict[str, dict[str, object]] | None = None,
        extra: str = "",
        tls: ssl.SSLContext | None = None,
        env: dict[str, str] | None = None,
    ) -> AdapterProcess:
        adapter = AdapterProcess.for_server(
            tmp_path_factory.mktemp("adapter"),
            presence_server,
            accounts,
            sip_server=sip_server,
            xcap_root=xcap_root,
            transport=transport,
            settings=settings,
            extra=extra,
            tls=tls,
            env=env,
        )
        started.append(adapter)
        adapter.start(healthy=healthy)
        return adapter

    yield start
    for adapter in started:
        adapter.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failure, append the tail of the log of every adapter process running,
    and the errors and warnings of every presence server (a Kamailio on sqlite
    may fail a write after it has answered: "database is locked")."""
    report = yield
    if report.failed:
        for adapter in AdapterProcess.running():
            report.sections.append((f"adapter log {adapter.log_path}", adapter.log_tail()))
        for server in PresenceServer.running():
            report.sections.append(
                (f"presence server errors {server.log_path}", server.log_problems())
            )
    return report
