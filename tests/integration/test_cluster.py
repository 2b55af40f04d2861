"""Two adapter nodes on one PostgreSQL store, one Redis and one Kamailio (tests/cluster_nodes.py).

What a load balancer in front would see: any node answers any call alike; a
node killed with -9 has its publications and watches taken over by the
other; a PostgreSQL restart costs 503s while it is down and loses nothing.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pidf import Activity, decode
from tests.adapter_process import AdapterProcess, AppAccount
from tests.cluster_nodes import ClusterNodes
from tests.groups import put_pres_rules, put_rls_services
from tests.integration.test_durability import publications, winfo_watchers
from tests.polling import eventually
from tests.postgres_server import PostgresCluster
from tests.presence_server import PresenceServer
from tests.rawsip import new_token
from tests.redis_server import RedisServer
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

ALL_ATTRIBUTES = ("Activity", "Place", "Privacy", "Sphere", "Communication", "Other")


class People:
    """Fresh SIP addresses per test: the session's Kamailio keeps state between tests."""

    def __init__(self) -> None:
        run = new_token()[:8]
        self.alice = f"sip:alice-{run}@example.com"
        self.bob = f"sip:bob-{run}@example.com"
        self.phone = f"sip:phone-{run}@example.com"
        self.group = f"sip:friends-{run}@example.com"
        self.accounts = (
            AppAccount("alice-app", "alice-secret", (self.alice,)),
            AppAccount("bob-app", "bob-secret", (self.bob,)),
        )


@pytest.fixture
def people() -> People:
    return People()


@pytest.fixture
def start_cluster(
    tmp_path: Path,
    postgres: PostgresCluster,
    redis_server: RedisServer,
    presence_server: PresenceServer,
    people: People,
) -> Iterator[Callable[..., ClusterNodes]]:
    started: list[ClusterNodes] = []

    def start(**options: Any) -> ClusterNodes:
        options.setdefault("redis", redis_server)  # None: a Redis of the cluster's own
        nodes = ClusterNodes(
            tmp_path, people.accounts, postgres=postgres, presence=presence_server, **options
        )
        started.append(nodes)
        nodes.start()
        return nodes

    yield start
    for nodes in started:
        nodes.stop()


def publish(node: AdapterProcess, activity: str, note: str = "") -> httpx.Response:
    item: dict[str, Any] = {"typeAndValue": {"unionElement": "Activity", "activity": activity}}
    if note:
        item["note"] = note
    with node.client("alice-app") as http:
        return http.post("/rest/presence", json={"presence": [item]})


def authorize(node: AdapterProcess, watcher: str) -> None:
    body = {
        "watcher": watcher,
        "decisions": [{"presenceAttribute": k, "decision": True} for k in ALL_ATTRIBUTES],
    }
    with node.client("alice-app") as http:
        answer = http.put("/rest/presence/subscription", json=body)
    assert answer.status_code == 204, answer.text


def subscribe(node: AdapterProcess, people: People) -> None:
    body = {
        "application": "buddies",
        "presentity": people.alice,
        "attributes": [],
        "reference": {"correlator": "c1", "endpoint": "/bayeux/bob-app/subscription",
                      "interfaceName": "PresenceNotification"},
    }
    with node.client("bob-app") as http:
        answer = http.post("/rest/presence/subscription", json=body)
    assert answer.status_code == 204, answer.text


def user_presence(node: AdapterProcess, people: People) -> httpx.Response:
    with node.client("bob-app") as http:
        return http.get("/rest/presence", params={"presentity": people.alice})


def activity_seen(node: AdapterProcess, people: People, activity: str) -> bool:
    answer = user_presence(node, people)
    if answer.status_code != 200:
        return False
    return any(item["typeAndValue"].get("activity") == activity
               for item in answer.json()["result"])


def get(node: AdapterProcess, account: str, path: str, **params: str) -> Any:
    with node.client(account) as http:
        answer = http.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def owners(cluster: ClusterNodes) -> dict[tuple[str, str], str]:
    with psycopg.connect(cluster.store_url, autocommit=True) as db:
        rows = db.execute("SELECT kind, key, owner FROM leases").fetchall()
    return {(kind, key): owner for kind, key, owner in rows}


def metric_values(node: AdapterProcess) -> dict[str, float]:
    """The node's /metrics samples, ``name{labels}`` -> value."""
    with node.client() as http:
        text = http.get("/metrics").text
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line and not line.startswith("#")
    }


def watch_lease(people: People) -> tuple[str, str]:
    return ("watch", json.dumps((people.bob, people.alice)))


def test_any_node_answers_about_work_done_through_the_other(
    start_cluster: Callable[..., ClusterNodes], people: People
) -> None:
    cluster = start_cluster()
    a, b = cluster.nodes
    assert publish(a, "Busy", "on node a").status_code == 204
    subscribe(b, people)
    # Alice's watchers, asked of either node: the same, with bob's application
    # (his watch is node b's; node a reads it from the store).
    for node in (a, b):
        opened = eventually(lambda node=node: get(
            node, "alice-app", "/rest/presence/subscription", status="open")["result"],
            what="bob asking")
        assert opened == [{"application": "buddies", "attributes": [], "watcher": people.bob}]
    authorize(a, people.bob)
    for node in (a, b):
        eventually(lambda node=node: activity_seen(node, people, "Busy"),
                   what="Busy through either node")
        watchers = eventually(lambda node=node: get(
            node, "alice-app", "/rest/presence/subscription", filter="watcher")["result"])
        assert watchers == [people.bob]
    # Through node b, alice's publication (node a's) changes at node a.
    assert publish(b, "Meal").status_code == 204
    for node in (a, b):
        eventually(lambda node=node: activity_seen(node, people, "Meal"), what="Meal")
    leases = owners(cluster)
    assert leases[("publication", people.alice)] == "a"
    assert leases[watch_lease(people)] == "b"
    assert metric_values(b)["presence_adapter_cluster_forwarded_requests_total"] >= 1
    # A notification started through node a is node b's (bob's watch is);
    # it is ended through either.
    start = {
        "presentity": people.alice, "checkImmediate": True,
        "reference": {"correlator": "n1", "endpoint": "/bayeux/bob-app/n",
                      "interfaceName": "PresenceNotification"},
    }
    with a.client("bob-app") as http:
        started = http.post("/rest/presence/notification", json=start)
        assert started.status_code == 201, started.text
        assert started.headers["Location"] == f"{a.url}/cometd"  # as the caller asked it
        assert http.post("/rest/presence/notification", json=start).status_code == 409
        # Unique across the nodes, whatever the presentity (whose watch may be
        # another node's).
        other = {**start, "presentity": people.phone}
        with b.client("bob-app") as on_b:
            assert on_b.post("/rest/presence/notification", json=other).status_code == 409
        assert http.delete("/rest/presence/notification/n1").status_code == 204
        assert http.delete("/rest/presence/notification/n1").status_code == 404
    # Ending the subscription through node a ends node b's watch.
    with a.client("bob-app") as http:
        ended = http.delete("/rest/presence/subscription", params={"presentity": people.alice})
    assert ended.status_code == 204, ended.text
    assert user_presence(b, people).status_code == 404


def test_a_killed_node_s_work_is_taken_over(
    start_cluster: Callable[..., ClusterNodes],
    people: People,
    sip_phone: Callable[[str], SipPhone],
) -> None:
    cluster = start_cluster()
    a, b = cluster.nodes
    phone = sip_phone(people.phone)
    assert publish(a, "Busy", "before the crash").status_code == 204
    subscribe(a, people)
    phone.subscribe(people.alice)
    eventually(lambda: people.phone in [s["watcher"] for s in get(
        b, "alice-app", "/rest/presence/subscription", status="open")["result"]],
        what="the phone asking")
    authorize(b, people.phone)
    authorize(b, people.bob)
    phone.wait_buddy(people.alice, lambda s: s["sub_state"] == "ACTIVE" and s["activity"] == "busy")
    eventually(lambda: activity_seen(b, people, "Busy"), what="bob sees Busy")
    assert set(owners(cluster).values()) == {"a"}
    server = cluster.presence
    assert server is not None
    (etag,) = publications(server, people.alice)
    assert [w for w, _ in winfo_watchers(server, people.alice)].count(people.bob) == 1

    mark = phone.mark()
    a.kill()
    killed = time.monotonic()
    # Within about two lease periods node b holds everything node a did ...
    eventually(lambda: set(owners(cluster).values()) == {"b"}, timeout=30,
               what="node b owning node a's work")
    taken = time.monotonic()
    metrics = metric_values(b)
    assert metrics['presence_adapter_cluster_leases{kind="publication"}'] == 1
    assert metrics['presence_adapter_cluster_leases{kind="watch"}'] == 1
    assert metrics["presence_adapter_cluster_taken_over_total"] >= 2
    # ... re-published alice's publication (the phone hears it again) ...
    phone.wait_for(lambda e: e["event"] == "notify" and e["buddy"] == people.alice
                   and e["state"].startswith("active"), since=mark, timeout=30)
    # ... and subscribed bob again: his Get User Presence answers at node b.
    eventually(lambda: activity_seen(b, people, "Busy"), timeout=30, what="bob's watch back")
    # The server holds one publication of alice's still: node a's, refreshed
    # by node b with its stored entity tag (the tag changed: it was modified).
    (after,) = publications(server, people.alice)
    assert after != etag
    # Node a's dialog for bob is left on the server beside node b's; the
    # NOTIFY the re-publication sent it went unanswered, and the server
    # dropped it (it would otherwise last until its Expires).
    eventually(lambda: [w for w, _ in winfo_watchers(server, people.alice)].count(people.bob) == 1,
               timeout=60, interval=1, what="node a's dialog gone from the server")
    print(f"takeover {taken - killed:.1f} s after kill -9; node a's dialog gone "
          f"{time.monotonic() - killed:.1f} s after it")
    # Node b modifies the very publication node a made (its stored entity
    # tag): the phone sees one state, the new one, not two aggregated.
    mark = phone.mark()
    assert publish(b, "Meal").status_code == 204
    phone.wait_buddy(people.alice, lambda s: s["activity"] != "busy", since=mark, timeout=15)
    (notify, *_) = [n for n in phone.notifies(people.alice, since=mark)
                    if n["state"].startswith("active") and n["body"]]
    attributes = decode(notify["body"].encode()).attributes
    assert [a.value for a in attributes] == [Activity.MEAL]
    eventually(lambda: activity_seen(b, people, "Meal"), what="bob sees Meal")


def test_a_postgresql_restart_costs_503s_and_loses_nothing(
    start_cluster: Callable[..., ClusterNodes], people: People, postgres: PostgresCluster
) -> None:
    # Leases long enough to outlast the restart: no work changes hands.
    cluster = start_cluster(lease=5.0, settings={"sip": {"request_timeout": 2}})
    a, b = cluster.nodes
    assert publish(a, "Busy").status_code == 204
    subscribe(b, people)
    postgres.halt()
    try:
        refused = publish(a, "Away")
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert refused.json()["requestError"]["serviceException"]["messageId"] == "SVC0001"
        # Written in the background while the store is down: bob's watch
        # learns the decisions (its record keeps what it was told).
        authorize(a, people.bob)
        eventually(lambda: activity_seen(b, people, "Busy"), what="Busy while PostgreSQL is down")
    finally:
        postgres.resume()
    # What was written meanwhile reaches the store once it is back.
    with psycopg.connect(cluster.store_url, autocommit=True) as db:
        def told() -> bool:
            row = db.execute("SELECT value FROM records WHERE kind = 'watch' AND key = %s",
                             (watch_lease(people)[1],)).fetchone()
            return row is not None and json.loads(row[0])["decisions_sent"] is not None
        eventually(told, timeout=30, what="the watch's decisions written")
    eventually(lambda: publish(a, "Away").status_code == 204, timeout=30, what="Publish again")
    eventually(lambda: activity_seen(a, people, "Away"), what="Away through node a")
    leases = owners(cluster)
    assert leases[("publication", people.alice)] == "a"
    assert leases[watch_lease(people)] == "b"


def test_a_postgresql_outage_longer_than_the_leases_pauses_the_work_and_resumes_it(
    start_cluster: Callable[..., ClusterNodes], people: People, postgres: PostgresCluster
) -> None:
    cluster = start_cluster(settings={"sip": {"request_timeout": 2}})
    a, b = cluster.nodes
    assert publish(a, "Busy").status_code == 204
    subscribe(b, people)
    authorize(a, people.bob)
    eventually(lambda: activity_seen(a, people, "Busy"), what="Busy through node a")
    server = cluster.presence
    assert server is not None
    postgres.halt()
    try:
        # Its leases may have expired: node b no longer acts on bob's watch,
        # and cannot ask who does.
        eventually(lambda: user_presence(b, people).status_code == 503, timeout=30,
                   what="node b letting bob's watch go")
    finally:
        postgres.resume()
    # Back: the work is taken up again, each piece by one node.
    eventually(lambda: activity_seen(a, people, "Busy"), timeout=30, what="bob's watch back")
    assert sorted(owners(cluster)) == sorted([("publication", people.alice), watch_lease(people)])
    eventually(lambda: publish(b, "Meal").status_code == 204, timeout=30, what="Publish again")
    eventually(lambda: activity_seen(b, people, "Meal"), what="Meal through node b")
    assert len(publications(server, people.alice)) == 1


def test_ended_work_leaves_no_lease_and_a_takeover_finds_only_live_work(
    start_cluster: Callable[..., ClusterNodes], people: People
) -> None:
    cluster = start_cluster()
    a, b = cluster.nodes
    assert publish(a, "Busy").status_code == 204
    subscribe(a, people)
    with a.client("bob-app") as http:
        item = {"typeAndValue": {"unionElement": "Activity", "activity": "Meal"}}
        assert http.post("/rest/presence", json={"presence": [item]}).status_code == 204
    bob_publication = ("publication", people.bob)
    assert owners(cluster) == {
        ("publication", people.alice): "a", watch_lease(people): "a", bob_publication: "a",
    }
    # Alice withdraws everything (un-PUBLISH); bob ends his subscription.
    with a.client("alice-app") as http:
        assert http.delete("/rest/presence").status_code == 204
    with a.client("bob-app") as http:
        ended = http.delete("/rest/presence/subscription", params={"presentity": people.alice})
    assert ended.status_code == 204, ended.text
    eventually(lambda: owners(cluster) == {bob_publication: "a"}, what="ended work's leases gone")
    with psycopg.connect(cluster.store_url, autocommit=True) as db:
        kinds = db.execute("SELECT kind, key FROM records ORDER BY kind").fetchall()
    assert kinds == [bob_publication]
    # Started again at once, the same work takes a new lease.
    assert publish(a, "Away").status_code == 204
    with a.client("alice-app") as http:
        assert http.delete("/rest/presence").status_code == 204
    # Withdrawing what is not published (its lease gone with it) is fine.
    with a.client("alice-app") as http:
        assert http.delete("/rest/presence").status_code == 204
    eventually(lambda: owners(cluster) == {bob_publication: "a"}, what="ended again")

    a.kill()
    eventually(lambda: owners(cluster) == {bob_publication: "b"}, timeout=30,
               what="node b taking node a's live work")
    # Node b claimed the one piece of live work, nothing that had ended.
    assert metric_values(b)["presence_adapter_cluster_taken_over_total"] == 1
    assert metric_values(b)["presence_adapter_cluster_let_go_total"] == 0


def duplicate(cluster: ClusterNodes, name: str, directory: Path) -> AdapterProcess:
    """A process of its own (its own ports) under the node name ``name``."""
    assert cluster.presence is not None and cluster.redis is not None
    directory.mkdir()
    settings: dict[str, dict[str, object]] = {
        "store": {"url": cluster.store_url},
        "cluster": {"node": name, "redis": cluster.redis.url, "lease": cluster.lease},
    }
    return AdapterProcess.for_server(directory, cluster.presence, cluster.accounts,
                                     settings=settings)


def node_row(cluster: ClusterNodes, name: str) -> tuple[Any, ...] | None:
    with psycopg.connect(cluster.store_url, autocommit=True) as db:
        return db.execute("SELECT http, instance FROM nodes WHERE name = %s",
                          (name,)).fetchone()


def test_a_second_process_under_a_live_node_s_name_is_refused(
    start_cluster: Callable[..., ClusterNodes], people: People, tmp_path: Path
) -> None:
    cluster = start_cluster()
    a, b = cluster.nodes
    assert publish(a, "Busy").status_code == 204
    before = node_row(cluster, "a")
    assert before is not None and before[0] == a.url and before[1]

    second = duplicate(cluster, "a", tmp_path / "second-a")
    refused = second.run_to_exit(timeout=60)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "cluster.node" in lines[0] and "live node" in lines[0] and a.url in lines[0]
    # The live node is undisturbed: its row, its lease, its work.
    assert node_row(cluster, "a") == before
    assert owners(cluster)[("publication", people.alice)] == "a"
    assert publish(b, "Meal").status_code == 204  # passed to node a, which answers
    with a.client() as http:
        assert http.get("/readyz").status_code == 200

    # Stopped cleanly, node a starts again at once, as a new instance.
    a.stop()
    assert node_row(cluster, "a") is None
    a.restart(healthy=True)
    again = node_row(cluster, "a")
    assert again is not None and again[1] != before[1]
    # Killed, it starts again at once too: its process's session (and the
    # lock it held on the name) ended with it.
    a.kill()
    a.restart(timeout=30, healthy=True)
    after = node_row(cluster, "a")
    assert after is not None and after[1] != again[1]
    # Node b took alice's publication when node a stopped; the new node a
    # passes her Publish to it.
    assert publish(a, "Away").status_code == 204
    assert owners(cluster)[("publication", people.alice)] == "b"


def test_a_member_of_a_group_watched_through_one_node_reads_alike_through_the_other(
    start_cluster: Callable[..., ClusterNodes],
    people: People,
    sip_phone: Callable[[str], SipPhone],
) -> None:
    cluster = start_cluster()
    a, b = cluster.nodes
    server = cluster.presence
    assert server is not None
    phone = sip_phone(people.phone)
    phone.publish("online", "busy", "on a call")
    # Bob's group lists the phone, which allows him (docs/kamailio.md,
    # "Resource lists"), and alice, who has not decided yet.
    put_pres_rules(server.xcap_root, people.phone, [people.bob])
    put_rls_services(server.xcap_root, people.bob, people.group, [people.phone, people.alice])
    body = {
        "application": "buddies", "presentity": people.group, "attributes": [],
        "reference": {"correlator": "g1", "endpoint": "/bayeux/bob-app/group",
                      "interfaceName": "PresenceNotification"},
    }
    with a.client("bob-app") as http:
        answer = http.post("/rest/presence/subscription", json=body)
    assert answer.status_code == 204, answer.text
    group_lease = ("watch", json.dumps((people.bob, people.group)))
    assert owners(cluster) == {group_lease: "a"}

    def member(node: AdapterProcess) -> httpx.Response:
        with node.client("bob-app") as http:
            return http.get("/rest/presence", params={"presentity": people.phone})

    def shows(node: AdapterProcess, activity: str) -> bool:
        answer = member(node)
        return answer.status_code == 200 and any(
            item["typeAndValue"].get("activity") == activity for item in answer.json()["result"])

    eventually(lambda: shows(a, "Busy"), timeout=30, what="the phone Busy through node a")
    forwarded = metric_values(b)["presence_adapter_cluster_forwarded_requests_total"]
    # Node b holds no watch of the phone: it passes the call to node a.
    through_b = member(b)
    assert through_b.status_code == 200, through_b.text
    assert through_b.json() == member(a).json()
    assert metric_values(b)["presence_adapter_cluster_forwarded_requests_total"] == forwarded + 1
    # The phone changes: both nodes tell the new state.
    phone.publish("online", "away", "out")
    eventually(lambda: shows(a, "Away"), timeout=30, what="the phone Away through node a")
    assert member(b).json() == member(a).json()
    # Alice, pending in the group, sees bob asking with his group's
    # application, through either node.
    for node in (a, b):
        opened = eventually(lambda node=node: get(
            node, "alice-app", "/rest/presence/subscription", status="open")["result"],
            timeout=30, what="bob asking")
        assert opened == [{"application": "buddies", "attributes": [], "watcher": people.bob}]
    # A member not active in the group (as one adapter answers: no
    # subscription of it), and someone in no group: alike on either node.
    for presentity in (people.alice, "sip:nobody@example.com"):
        answers = []
        for node in (a, b):
            with node.client("bob-app") as http:
                answers.append(http.get("/rest/presence", params={"presentity": presentity}))
        assert [r.status_code for r in answers] == [404, 404], answers[1].text
        assert answers[0].json() == answers[1].json()


def test_a_node_that_finds_its_name_taken_while_it_was_paused_stops(
    start_cluster: Callable[..., ClusterNodes], people: People, tmp_path: Path
) -> None:
    cluster = start_cluster()
    a, _ = cluster.nodes
    server = cluster.presence
    assert server is not None and a.process is not None
    assert publish(a, "Busy").status_code == 204
    first = node_row(cluster, "a")
    second = duplicate(cluster, "a", tmp_path / "second-a")
    a.process.send_signal(signal.SIGSTOP)  # its session stays open, its row goes stale
    try:
        second.start(timeout=60, healthy=True)  # the row is a dead node's after two periods
        row = node_row(cluster, "a")
        assert row is not None and first is not None and row[1] != first[1]
        a.process.send_signal(signal.SIGCONT)
        # Node a's next heartbeat finds the other instance in its row: it
        # stops, leaving the row to the new process (alice's publication was
        # node b's by then: node a's lease had expired while it was paused).
        a.process.wait(timeout=30)
        assert "this node lets its work go and stops" in a.log_tail(200)
        assert node_row(cluster, "a") == row
        eventually(lambda: publish(second, "Away").status_code == 204, timeout=30,
                   what="Publish through the new a")
        assert len(publications(server, people.alice)) == 1
    finally:
        if a.process is not None:
            a.process.send_signal(signal.SIGCONT)
        second.stop()
