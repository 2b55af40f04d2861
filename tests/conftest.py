"""Fixtures shared by the whole test suite."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import TEST_SETTINGS, PostgresCluster
from tests.presence_server import PresenceServer
from tests.redis_server import RedisServer

#: A tmpfs for the test servers' scratch files, as PostgreSQL's TEST_SETTINGS
#: turn fsync off: the suite's servers hold nothing worth a disk's durability.
_TMPFS = Path("/dev/shm")


def pytest_configure(config: pytest.Config) -> None:
    if _TMPFS.is_dir() and os.access(_TMPFS, os.W_OK):
        PresenceServer.scratch = _TMPFS


@pytest.fixture(scope="session")
def presence_server() -> Iterator[PresenceServer]:
    """The bundled Kamailio presence server, private to this test session.

    Never skipped: scripts/test installs Kamailio, so its absence is a broken
    environment and fails loudly (PresenceServerError says how to fix it).
    It also listens for TLS (``sips_uri``, ``https_xcap_root``; its CA in
    ``certificates``), so that tests can run over either.
    """
    server = PresenceServer(tls=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for this test session, started when a test first
    asks for it.

    Never skipped, like the presence server: scripts/setup installs PostgreSQL
    for the tests, so its absence fails loudly (PostgresError says how to fix it).
    """
    cluster = PostgresCluster(settings=TEST_SETTINGS)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    """The URL of a new, empty database of the session's PostgreSQL, the test's own."""
    return postgres.url(postgres.create_database())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private Redis for this test session (no persistence), started when a test
    first asks for it; never skipped (scripts/setup installs redis-server)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
