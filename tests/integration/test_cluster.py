"""Two adapter nodes on one PostgreSQL store and one Redis (tests/cluster_nodes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapter_process import AppAccount
from tests.cluster_nodes import ClusterNodes
from tests.postgres_server import PostgresCluster
from tests.presence_server import PresenceServer
from tests.redis_server import RedisServer

ALICE = "sip:alice-cl@example.com"
BOB = "sip:bob-cl@example.com"
ACCOUNTS = (
    AppAccount("alice-app", "alice-secret", (ALICE,)),
    AppAccount("bob-app", "bob-secret", (BOB,)),
)


@pytest.fixture
def cluster(
    tmp_path: Path,
    postgres: PostgresCluster,
    redis_server: RedisServer,
    presence_server: PresenceServer,
) -> Iterator[ClusterNodes]:
    nodes = ClusterNodes(
        tmp_path, ACCOUNTS, postgres=postgres, redis=redis_server, presence=presence_server
    )
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


def test_two_nodes_start_on_one_store(cluster: ClusterNodes) -> None:
    a, b = cluster.nodes
    for node in (a, b):
        with node.client() as client:
            assert client.get("/livez").status_code == 200
