"""Bayeux across two adapter nodes (tests/cluster_nodes.py): notifications made on the
node holding the watch reach the application's session on the other, in order; a
long-polling client needs no stickiness; a Redis restart loses nothing.

The watch is always made through node a (which then holds its SIP subscription
and makes its notifications), the application's Bayeux session lives on node b,
and alice publishes through node b: three nodes' worth of paths on two.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.adapter_process import AdapterProcess
from tests.cluster_nodes import ClusterNodes
from tests.integration.conftest import BayeuxListener
from tests.integration.test_cluster import People, authorize, publish
from tests.integration.test_durability import activities, status_changed
from tests.postgres_server import PostgresCluster
from tests.presence_server import PresenceServer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CHANGES = ["Away", "Meeting", "Busy", "Holiday", "Meal", "Travel"]
NOTES = "/bayeux/bob-app/notes"


@pytest.fixture
def people() -> People:
    return People()


@pytest.fixture
def cluster(
    tmp_path: Path, postgres: PostgresCluster, presence_server: PresenceServer, people: People
) -> Iterator[ClusterNodes]:
    """Two nodes on the session's PostgreSQL and Kamailio, and a Redis of their own
    (a test restarts it)."""
    nodes = ClusterNodes(tmp_path, people.accounts, postgres=postgres, presence=presence_server)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


def watch_through(node: AdapterProcess, people: People, correlator: str) -> None:
    """bob watches alice through ``node``: authorised, alice Available, a schedule."""
    authorize(node, people.bob)
    assert publish(node, "Available").status_code == 204
    body = {
        "presentity": people.alice,
        "attributes": ["Activity"],
        "count": 50,
        "reference": {"correlator": correlator, "endpoint": NOTES},
    }
    with node.client("bob-app") as http:
        answer = http.post("/rest/presence/notification", json=body)
    assert answer.status_code == 201, answer.text


def published(node: AdapterProcess, values: list[str]) -> None:
    for value in values:
        answer = publish(node, value)
        assert answer.status_code == 204, answer.text


def test_notifications_made_on_one_node_reach_the_session_on_the_other_in_order(
    cluster: ClusterNodes, people: People, bayeux_listener: Callable[..., BayeuxListener]
) -> None:
    a, b = cluster.nodes
    listener = bayeux_listener(f"{b.base_url}/cometd", "bob-app", "bob-secret", "long-polling")
    watch_through(a, people, "across")
    published(b, CHANGES)
    listener.wait_for(status_changed("across"), count=len(CHANGES), timeout=30)
    assert activities(listener.matching(status_changed("across"))) == CHANGES


def test_a_long_polling_client_needs_no_stickiness(cluster: ClusterNodes, people: People) -> None:
    """Each request of one session to whichever node: the other passes it on."""
    a, b = cluster.nodes
    auth = ("bob-app", "bob-secret")

    def post(node: AdapterProcess, message: dict[str, Any]) -> list[dict[str, Any]]:
        with httpx.Client(base_url=node.base_url, auth=auth, timeout=60) as http:
            answer = http.post("/cometd", json=[message])
        assert answer.status_code == 200, answer.text
        replies: list[dict[str, Any]] = answer.json()
        return replies

    (handshake,) = post(
        a, {"channel": "/meta/handshake", "version": "1.0", "ext": {"ack": True},
            "supportedConnectionTypes": ["long-polling"]},
    )
    client_id = handshake["clientId"]
    assert handshake["successful"] and client_id.startswith("a.")
    (subscribed,) = post(
        b, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": NOTES}
    )
    assert subscribed["successful"], subscribed
    batch = 0

    def connect(node: AdapterProcess) -> list[dict[str, Any]]:
        nonlocal batch
        replies = post(
            node, {"channel": "/meta/connect", "clientId": client_id,
                   "connectionType": "long-polling", "ext": {"ack": batch}},
        )
        (reply,) = [r for r in replies if r["channel"] == "/meta/connect"]
        assert reply["successful"], reply
        batch = reply["ext"]["ack"]
        return [r for r in replies if r["channel"] != "/meta/connect"]

    assert connect(b) == []  # the first connect, answered at once
    watch_through(a, people, "roaming")
    received: list[dict[str, Any]] = []
    for node, value in zip([b, a, b], CHANGES[:3], strict=True):
        published(b, [value])
        # Each connect is answered when a message comes (or after the connect timeout).
        deadline = time.monotonic() + 60
        while value not in activities_of(received):
            assert time.monotonic() < deadline, f"{value} not received through {node.base_url}"
            received.extend(connect(node))
    assert activities_of(received) == CHANGES[:3]


def activities_of(messages: list[dict[str, Any]]) -> list[str]:
    return activities([{"data": m["data"]} for m in messages if "statusChanged" in m["data"]])


def test_after_a_redis_restart_delivery_resumes_and_nothing_is_lost(
    cluster: ClusterNodes, people: People, bayeux_listener: Callable[..., BayeuxListener]
) -> None:
    a, b = cluster.nodes
    redis = cluster.redis
    assert isinstance(redis, RedisServer)
    listener = bayeux_listener(f"{b.base_url}/cometd", "bob-app", "bob-secret", "long-polling")
    watch_through(a, people, "restart")
    published(b, CHANGES[:1])
    listener.wait_for(status_changed("restart"), count=1, timeout=30)
    redis.stop()  # no persistence: it comes back empty
    published(b, CHANGES[1:2])  # made while Redis is down
    redis.start()
    published(b, CHANGES[2:4])
    listener.wait_for(status_changed("restart"), count=4, timeout=30)
    assert activities(listener.matching(status_changed("restart"))) == CHANGES[:4]
    assert "Redis answers again" in a.log_tail()
