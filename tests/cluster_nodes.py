"""Several adapter nodes of one cluster, as an operator runs them, for integration tests.

:class:`ClusterNodes` puts together what a cluster needs — a PostgreSQL store
(tests/postgres_server.py), a Redis (tests/redis_server.py), one Kamailio
(tests/presence_server.py) — and N adapter processes
(tests/adapter_process.py) sharing the accounts and the store, each with its
own HTTP and SIP listen addresses and its own ``[cluster] node`` name
(``a``, ``b``, …).  Whatever is handed in (the session's PostgreSQL, Redis or
Kamailio) is used and left running; what is not is started here and stopped
by :meth:`ClusterNodes.stop`.  Each cluster gets a database of its own.

    with ClusterNodes(tmp_path, ACCOUNTS, postgres=postgres, redis=redis_server,
                      presence=presence_server) as cluster:
        a, b = cluster.nodes
        a.client("alice-app").post(...)

The nodes' configuration is the contract's (issue 19): no ``[cluster] secret``,
so they sign their calls to each other with the one they share in the store;
``secret=True`` gives each the same ``[cluster] secret``, made here
(:attr:`ClusterNodes.secret`).  ``tls`` is the client side of HTTPS for nodes
that serve it (``[http] tls_cert`` in ``settings``).

Every node is an :class:`~tests.adapter_process.AdapterProcess`: ``kill()``
(SIGKILL), ``restart()``, ``client(account)``, ``log_tail()`` as for one.
"""

from __future__ import annotations

import secrets
import ssl
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Self

from tests.adapter_process import AdapterProcess, AppAccount
from tests.postgres_server import TEST_SETTINGS, PostgresCluster
from tests.presence_server import PresenceServer
from tests.redis_server import RedisServer

__all__ = ["ClusterNodes", "node_names"]

#: Seconds between heartbeats in tests: a dead node's work moves within a few.
TEST_LEASE = 1.0


def node_names(count: int) -> list[str]:
    """``a``, ``b``, … — the ``[cluster] node`` names of ``count`` nodes."""
    if not 1 <= count <= len(string.ascii_lowercase):
        raise ValueError(f"between 1 and 26 nodes, not {count}")
    return list(string.ascii_lowercase[:count])


class ClusterNodes:
    """``count`` adapter nodes on one store, one Redis and one presence server.

    ``lease`` is ``[cluster] lease``; ``settings`` adds keys to every node's
    configuration (``{"sip": {"request_timeout": 2}}``), as for
    :meth:`AdapterProcess.for_server`; ``env`` is added to every node's
    environment (``PYTHONPATH`` of another source tree, for a benchmark's
    reference side).
    """

    def __init__(
        self,
        directory: Path,
        accounts: Iterable[AppAccount],
        *,
        count: int = 2,
        lease: float = TEST_LEASE,
        postgres: PostgresCluster | None = None,
        redis: RedisServer | None = None,
        presence: PresenceServer | None = None,
        settings: Mapping[str, Mapping[str, object]] | None = None,
        tls: ssl.SSLContext | None = None,
        env: Mapping[str, str] | None = None,
        secret: bool = False,
    ) -> None:
        self.directory = directory
        self.env = dict(env or {})
        self.accounts = tuple(accounts)
        self.names = node_names(count)
        self.lease = lease
        self.settings = {table: dict(keys) for table, keys in (settings or {}).items()}
        self.postgres = postgres
        self.redis = redis
        self.presence = presence
        self.tls = tls
        #: ``[cluster] secret``, the same for every node; None: none configured.
        self.secret = secrets.token_hex(32) if secret else None
        #: What was started here (and is stopped here).
        self._own: list[PostgresCluster | RedisServer | PresenceServer] = []
        #: The store's URL, once started.
        self.store_url = ""
        #: The nodes, in the order of their names.
        self.nodes: list[AdapterProcess] = []

    def node(self, name: str) -> AdapterProcess:
        return self.nodes[self.names.index(name)]

    def start(self, *, healthy: bool = True) -> None:
        """Start what is missing, then every node in turn (each answering HTTP, and
        with ``healthy`` its /health 200)."""
        try:
            self._start_engines()
            for name in self.names:
                node = self._make_node(name)
                self.nodes.append(node)
                node.start(healthy=healthy)
        except BaseException:
            self.stop()
            raise

    def _start_engines(self) -> None:
        if self.postgres is None:
            self.postgres = PostgresCluster(settings=TEST_SETTINGS)
            self.postgres.start()
            self._own.append(self.postgres)
        if self.redis is None:
            self.redis = RedisServer()
            self.redis.start()
            self._own.append(self.redis)
        if self.presence is None:
            self.presence = PresenceServer()
            self.presence.start()
            self._own.append(self.presence)
        self.store_url = self.postgres.url(self.postgres.create_database())

    def _make_node(self, name: str) -> AdapterProcess:
        assert self.presence is not None and self.redis is not None
        directory = self.directory / f"node-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        settings: dict[str, dict[str, object]] = {
            table: dict(keys) for table, keys in self.settings.items()
        }
        settings.setdefault("store", {})["url"] = self.store_url
        cluster = settings.setdefault("cluster", {})
        cluster.update({"node": name, "redis": self.redis.url, "lease": self.lease})
        if self.secret is not None:
            cluster.setdefault("secret", self.secret)
        return AdapterProcess.for_server(
            directory, self.presence, self.accounts, settings=settings, tls=self.tls,
            env=self.env,
        )

    def running(self) -> list[AdapterProcess]:
        """The nodes whose process runs."""
        return [node for node in self.nodes if node.process is not None]

    def logs(self, lines: int = 40) -> str:
        """Every node's log tail, for a failing test's message."""
        return "\n".join(
            f"--- node {name}:\n{node.log_tail(lines)}"
            for name, node in zip(self.names, self.nodes, strict=False)
        )

    def stop(self) -> None:
        """Stop every node (SIGTERM), then what was started here; safe to repeat."""
        for node in self.nodes:
            node.stop()
        for engine in reversed(self._own):
            engine.stop()
        self._own.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
