"""The edges of a cluster (tests/cluster_nodes.py): who may call a node as another node,
nodes calling each other over HTTPS with client certificates, and Redis seen in
/readyz and /metrics while it stops and starts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from adapter.cluster.peer import NodeAuth
from tests.adapter_process import AdapterProcess
from tests.certificates import TestCA
from tests.cluster_nodes import ClusterNodes
from tests.integration import test_cluster
from tests.integration.conftest import BayeuxListener
from tests.integration.test_cluster import (
    People,
    activity_seen,
    authorize,
    metric_values,
    owners,
    publish,
    subscribe,
)
from tests.integration.test_cluster_bayeux import NOTES, activities_of, published, watch_through
from tests.integration.test_durability import activities, status_changed
from tests.polling import eventually
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

FORWARDED = "X-Presence-Forwarded-By"
SIGNATURE = "X-Presence-Node-Signature"


# Alice and Bob, and nodes on the session's PostgreSQL, Redis and Kamailio.
people = test_cluster.people
start_cluster = test_cluster.start_cluster


def refused(answer: httpx.Response) -> bool:
    """403 with the REST error body of a policy error."""
    if answer.status_code != 403:
        return False
    exception = answer.json()["requestError"]["policyException"]
    return bool(exception["messageId"] == "POL0001")


# -- who may call a node as another node -------------------------------------------------


def secrets_in_store(cluster: ClusterNodes) -> int:
    with psycopg.connect(cluster.store_url, autocommit=True) as db:
        (count,) = db.execute("SELECT count(*) FROM cluster_secret").fetchone() or (0,)
    return int(count)


@pytest.mark.parametrize("secret", ["kept in the store", "configured"])
def test_only_signed_calls_from_nodes_pass_as_such(
    start_cluster: Callable[..., ClusterNodes], people: People, secret: str
) -> None:
    cluster = start_cluster(secret=secret == "configured")
    a, b = cluster.nodes
    # The contract's configuration (no [cluster] secret): the nodes made one
    # key in the store; with one configured, they leave the store alone.
    assert secrets_in_store(cluster) == (1 if cluster.secret is None else 0)
    assert publish(a, "Busy").status_code == 204  # alice's publication: node a's
    subscribe(a, people)  # bob's watch: node a's

    # From outside: /cluster/rules, bare, with a made-up signature, or signed
    # now in the right form under a key that is not the cluster's.
    forged = {FORWARDED: "a", SIGNATURE: "t=1700000000,v1=" + "0" * 64}
    with b.client() as anyone:
        for headers in ({}, {FORWARDED: "a"}, forged):
            answer = anyone.post("/cluster/rules", params={"presentity": people.alice},
                                 headers=headers)
            assert refused(answer), answer.text
    with b.client(auth=NodeAuth("a", secrets.token_bytes(32))) as stranger:
        answer = stranger.post("/cluster/rules", params={"presentity": people.alice})
        assert refused(answer), answer.text
    # A REST call about node a's work, claiming to come from node a (so that
    # node b would serve it itself), and a Bayeux request so marked.
    with b.client("alice-app") as alice:
        answer = alice.post("/rest/presence", headers={FORWARDED: "a"}, json={"presence": [
            {"typeAndValue": {"unionElement": "Activity", "activity": "Away"}}]})
        assert refused(answer), answer.text
        answer = alice.post("/cometd", headers=forged, json=[
            {"channel": "/meta/handshake", "version": "1.0",
             "supportedConnectionTypes": ["long-polling"]}])
        assert refused(answer), answer.text
    metrics = metric_values(b)
    assert metrics['presence_adapter_cluster_peer_calls_refused_total{reason="unsigned"}'] == 3
    assert metrics['presence_adapter_cluster_peer_calls_refused_total{reason="stale"}'] == 2
    assert metrics[
        'presence_adapter_cluster_peer_calls_refused_total{reason="bad-signature"}'] == 1
    assert "refused POST /cluster/rules from 127.0.0.1:" in b.log_tail(200)

    # The same calls without the marks, as a load balancer sends them: node b
    # passes alice's Publish to node a, and tells node a that alice's rules
    # changed (bob's watch there reads them again and sees her presence).
    authorize(b, people.bob)
    assert publish(b, "Meal").status_code == 204
    eventually(lambda: activity_seen(a, people, "Meal"), timeout=30, what="Meal through node b")
    assert owners(cluster)[("publication", people.alice)] == "a"
    assert metric_values(b)["presence_adapter_cluster_forwarded_requests_total"] >= 1
    assert '"POST /cluster/rules?presentity=' in a.log_tail(400)
    assert not any(name.startswith("presence_adapter_cluster_peer_calls_refused_total")
                   for name in metric_values(a))


# -- HTTPS with client certificates between the nodes ------------------------------------


@pytest.mark.parametrize("client_certificate", ["its own", "the server's"])
def test_nodes_pass_calls_to_each_other_when_client_certificates_are_required(
    start_cluster: Callable[..., ClusterNodes], people: People, tmp_path: Path,
    client_certificate: str,
) -> None:
    ca = TestCA(tmp_path / "pki")
    application = ca.client("application")
    stranger = TestCA(tmp_path / "stranger", name="another CA").client("stranger")
    cluster_keys: dict[str, object] = {"tls_ca": str(ca.cert)}
    if client_certificate == "its own":
        server = ca.server("node-server")
        node = ca.client("node-client")
        cluster_keys |= {"tls_cert": str(node.cert), "tls_key": str(node.key)}
    else:
        # One certificate for both ends: [http] tls_cert, shown to the other nodes too.
        server = ca.server_and_client("node")
    http = {"tls_cert": str(server.cert), "tls_key": str(server.key),
            "tls_client_ca": str(ca.cert)}
    cluster = start_cluster(tls=ca.client_context(application),
                            settings={"http": http, "cluster": cluster_keys})
    a, b = cluster.nodes
    assert a.url.startswith("https://")
    # Without a certificate the CA issued, a client gets no answer at all.
    with pytest.raises(httpx.TransportError):
        httpx.get(a.url + "/readyz", verify=ca.client_context(stranger), timeout=10)

    # A REST call passed from node b to node a, which owns alice's publication.
    assert publish(a, "Busy").status_code == 204
    subscribe(a, people)
    authorize(b, people.bob)  # node b tells node a, over HTTPS
    assert publish(b, "Meal").status_code == 204
    eventually(lambda: activity_seen(a, people, "Meal"), timeout=30, what="Meal through node b")
    assert owners(cluster)[("publication", people.alice)] == "a"
    assert metric_values(b)["presence_adapter_cluster_forwarded_requests_total"] >= 1

    # A Bayeux session on node a, its long-polls sent to node b and passed on.
    assert a.tls is not None
    with httpx.Client(auth=("bob-app", "bob-secret"), verify=a.tls, timeout=60) as bayeux:
        def post(node: AdapterProcess, message: dict[str, Any]) -> list[dict[str, Any]]:
            answer = bayeux.post(node.url + "/cometd", json=[message])
            assert answer.status_code == 200, answer.text
            replies: list[dict[str, Any]] = answer.json()
            return replies

        (handshake,) = post(a, {"channel": "/meta/handshake", "version": "1.0",
                                "supportedConnectionTypes": ["long-polling"]})
        client_id = handshake["clientId"]
        assert handshake["successful"] and client_id.startswith("a.")
        (subscribed,) = post(
            b, {"channel": "/meta/subscribe", "clientId": client_id, "subscription": NOTES})
        assert subscribed["successful"], subscribed
        connect = {"channel": "/meta/connect", "clientId": client_id,
                   "connectionType": "long-polling"}
        assert [r["channel"] for r in post(b, connect)] == ["/meta/connect"]  # the first
        watch_through(a, people, "over-tls")
        published(b, ["Holiday"])
        received: list[dict[str, Any]] = []
        # Each connect is held until a message comes (or the connect timeout).
        while "Holiday" not in activities_of(received):
            assert len(received) < 10, received
            received.extend(r for r in post(b, connect) if r["channel"] == NOTES)
    assert a.log_tail(400).count('"POST /cometd HTTP/1.1" 200') >= 3  # handshake, passed on


# -- Redis in /readyz and /metrics ---------------------------------------------------------


def readyz(node: AdapterProcess) -> tuple[int, dict[str, Any]]:
    with node.client() as http:
        answer = http.get("/readyz")
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


def test_a_redis_outage_degrades_a_node_and_its_end_is_seen(
    start_cluster: Callable[..., ClusterNodes], people: People,
    bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    cluster = start_cluster(redis=None)  # its own Redis: stopped here
    a, b = cluster.nodes
    redis = cluster.redis
    assert isinstance(redis, RedisServer)
    status, body = readyz(a)
    assert (status, body["status"], body["redis"]["reachable"]) == (200, "ready", True)
    assert metric_values(a)["presence_adapter_cluster_redis_up"] == 1
    errors_before = metric_values(a)["presence_adapter_cluster_redis_errors_total"]
    listener = bayeux_listener(f"{b.base_url}/cometd", "bob-app", "bob-secret", "long-polling")
    watch_through(a, people, "outage")
    published(a, ["Away"])
    listener.wait_for(status_changed("outage"), count=1, timeout=30)

    redis.stop()
    try:
        # Still ready (REST is served), degraded: node a's notification waits in
        # its memory for Redis.
        published(a, ["Meeting"])

        def degraded() -> dict[str, Any] | None:
            status, body = readyz(a)
            assert status == 200, body
            waiting = body["redis"]["waiting_messages"] >= 1
            return body if body["status"] == "degraded" and waiting else None

        body = eventually(degraded, timeout=30, what="node a degraded, a message waiting")
        assert body["redis"]["reachable"] is False and body["redis"]["reason"]
        assert "reasons" not in body
        metrics = metric_values(a)
        assert metrics["presence_adapter_cluster_redis_up"] == 0
        assert metrics["presence_adapter_cluster_relay_waiting_messages"] >= 1
        assert metrics["presence_adapter_cluster_redis_errors_total"] > errors_before
        assert publish(b, "Meal").status_code == 204  # REST goes on
    finally:
        redis.start()
    eventually(lambda: readyz(a)[1]["status"] == "ready", timeout=30, what="node a ready again")
    eventually(lambda: metric_values(a)["presence_adapter_cluster_redis_up"] == 1, timeout=30,
               what="Redis up in node a's metrics")
    listener.wait_for(status_changed("outage"), count=3, timeout=30)
    assert activities(listener.matching(status_changed("outage"))) == ["Away", "Meeting", "Meal"]
    assert metric_values(a)["presence_adapter_cluster_relay_waiting_messages"] == 0
    status, body = readyz(b)
    assert (status, body["redis"]) == (200, {"reachable": True, "waiting_messages": 0})
    print(json.dumps(body))
