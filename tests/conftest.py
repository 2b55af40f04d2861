"""Fixtures shared by the whole test suite."""

from collections.abc import Iterator

import pytest

from tests.presence_server import PresenceServer


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
