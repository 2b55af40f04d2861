"""Groups end to end: the REST watcher side on a resource list (RFC 4662) of
the session's Kamailio acting as an RLS, members publishing from pjsua2 phones
or through the adapter, notifications read by the CometD client.

One adapter process: ``members-app`` holds every member's address (it is how
members authorise and block the watcher, through the adapter, and publish
where no phone is used); ``watch-app`` holds the watchers.  Each test owns
its watcher, list and members (random names), so they share the server.  The
lists live in each watcher's own rls-services document (docs/kamailio.md,
"Resource lists").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sip.uri import SipURI
from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory, BayeuxListener
from tests.integration.test_resource_lists import put_list
from tests.presence_server import PresenceServer
from tests.rawsip import new_token
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
SCENARIOS = ("mixed", "edited", "durable")
MEMBERS = 4


def watcher(scenario: str) -> str:
    return f"sip:w-{scenario}-{RUN}@example.com"


def group(scenario: str) -> str:
    return f"sip:friends-{scenario}-{RUN}@example.com"


def member(scenario: str, n: int) -> str:
    return f"sip:m{n}-{scenario}-{RUN}@example.com"


def accounts() -> list[AppAccount]:
    members = tuple(member(s, n) for s in SCENARIOS for n in range(MEMBERS))
    return [
        AppAccount("members-app", PASSWORD, members),
        AppAccount("watch-app", PASSWORD, tuple(watcher(s) for s in SCENARIOS)),
    ]


SETTINGS: dict[str, dict[str, object]] = {
    "notifications": {"min_frequency": 0.0},
    "sip": {"keepalive": 0.5, "request_timeout": 10.0},
}


@pytest.fixture(scope="module")
def adapter(adapter_factory: AdapterFactory) -> AdapterProcess:
    return adapter_factory(accounts(), settings=SETTINGS)


@pytest.fixture
def listen(bayeux_listener: Callable[..., BayeuxListener]) -> Callable[[AdapterProcess], Any]:
    return lambda adapter: bayeux_listener(adapter.url + "/cometd", "watch-app", PASSWORD)


def make_list(server: PresenceServer, owner: str, service: str, members: list[str]) -> None:
    asyncio.run(put_list(server, SipURI.parse(owner), SipURI.parse(service),
                         [SipURI.parse(m) for m in members]))


class Member:
    """A member's own application: authorises, blocks and publishes through the adapter."""

    def __init__(self, adapter: AdapterProcess, uri: str) -> None:
        self.uri = uri
        self.http = adapter.client("members-app", uri)

    def allow(self, who: str) -> None:
        body = {"watcher": who, "decisions": [{"presenceAttribute": "Activity",
                                               "decision": True}]}
        response = self.http.put("/rest/presence/subscription", json=body)
        assert response.status_code == 204, response.text

    def block(self, who: str) -> None:
        response = self.http.delete(f"/rest/presence/subscription/{who}")
        assert response.status_code == 204, response.text

    def publish(self, activity: str) -> None:
        body = {"presence": [
            {"typeAndValue": {"unionElement": "Activity", "activity": activity}}
        ]}
        response = self.http.post("/rest/presence", json=body)
        assert response.status_code == 204, response.text


@pytest.fixture
def members(adapter: AdapterProcess) -> Iterator[Callable[[str], Member]]:
    made: list[Member] = []

    def make(uri: str) -> Member:
        made.append(Member(adapter, uri))
        return made[-1]

    yield make
    for m in made:
        m.http.close()


class Watcher:
    """watch-app acting as one watcher address."""

    def __init__(self, adapter: AdapterProcess, uri: str) -> None:
        self.uri = uri
        self.http = adapter.client("watch-app", uri)

    def channel(self, name: str) -> str:
        return f"/bayeux/watch-app/{name}"

    def subscribe(self, presentity: str, correlator: str) -> httpx.Response:
        return self.http.post("/rest/presence/subscription", json={
            "application": "group test", "presentity": presentity, "attributes": ["Activity"],
            "reference": {"correlator": correlator, "endpoint": self.channel(correlator),
                          "interfaceName": "PresenceNotification"},
        })

    def start(self, presentity: str, correlator: str, **fields: Any) -> httpx.Response:
        return self.http.post("/rest/presence/notification", json={
            "presentity": presentity, "attributes": ["Activity"],
            "reference": {"correlator": correlator, "endpoint": self.channel(correlator)},
            "count": 50, **fields,
        })

    def presence(self, presentity: str) -> httpx.Response:
        query = {"presentity": presentity, "attributes": ["Activity"]}
        return self.http.get("/rest/presence", params={"query": json.dumps(query)})


@pytest.fixture
def watchers(adapter: AdapterProcess) -> Iterator[Callable[[str], Watcher]]:
    made: list[Watcher] = []

    def make(uri: str) -> Watcher:
        made.append(Watcher(adapter, uri))
        return made[-1]

    yield make
    for one in made:
        one.http.close()


def status(channel: str, presentity: str, activity: str) -> Callable[[dict[str, Any]], bool]:
    """A statusChanged on ``channel`` naming ``presentity`` with that Activity."""

    def matches(message: dict[str, Any]) -> bool:
        data = message["data"].get("statusChanged")
        if message["channel"] != channel or data is None or data["presentity"] != presentity:
            return False
        return any(
            a["typeAndValue"].get("activity") == activity for a in data["changedAttributes"]
        )

    return matches


def kind(channel: str, name: str, presentity: str | None = None) -> Callable[[dict[str, Any]],
                                                                            bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message["data"].get(name)
        return (
            message["channel"] == channel and data is not None
            and (presentity is None or data.get("presentity") == presentity)
        )

    return matches


def test_a_group_of_active_pending_and_blocked_members_then_changes_offline_and_a_block(
    adapter: AdapterProcess, presence_server: PresenceServer, listen: Any, members: Any,
    watchers: Any, sip_phone: Callable[[str], SipPhone],
) -> None:
    w = watchers(watcher("mixed"))
    service = group("mixed")
    active_a, active_b, pending, blocked = (member("mixed", n) for n in range(4))
    phones = {uri: sip_phone(uri) for uri in (active_a, active_b, pending, blocked)}
    phones[active_a].publish("online", "busy", "on a call")
    phones[active_b].publish("online", "away", "out")
    phones[pending].publish("online", "busy", "secret")
    phones[blocked].publish("online", "busy", "secret too")
    members(active_a).allow(w.uri)
    members(active_b).allow(w.uri)
    members(blocked).block(w.uri)
    make_list(presence_server, w.uri, service, [active_a, active_b, pending, blocked])
    bayeux = listen(adapter)

    # Subscribe Presence: one notifySubscription per member as it is decided.
    response = w.subscribe(service, "g-sub")
    assert response.status_code == 204, response.text
    told = bayeux.wait_for(kind(w.channel("g-sub"), "notifySubscription"), count=2, timeout=30)
    assert sorted(m["data"]["notifySubscription"]["presentity"] for m in told) == sorted(
        [active_a, active_b]
    )
    assert all(
        m["data"]["notifySubscription"]["decisions"]
        == [{"presenceAttribute": "Activity", "decision": True}]
        for m in told
    )

    # Start: the members not subscribed are the result; the others' states at once.
    started = w.start(service, "g-n", checkImmediate=True)
    assert started.status_code == 201, started.text
    assert sorted(started.json()["result"]) == sorted([pending, blocked])
    channel = w.channel("g-n")
    bayeux.wait_for(status(channel, active_a, "Busy"), timeout=30)
    bayeux.wait_for(status(channel, active_b, "Away"), timeout=30)

    # A member changing.
    phones[active_a].publish("online", "away", "back soon")
    bayeux.wait_for(status(channel, active_a, "Away"), timeout=30)

    # A member's phone going offline (un-PUBLISH): its Activity withdrawn.
    phones[active_b].stop()
    bayeux.wait_for(status(channel, active_b, "ActivityNone"), timeout=30)

    # Get User Presence: a member answers from the group; the group itself cannot.
    seen = w.presence(active_a)
    assert seen.status_code == 200, seen.text
    assert [a["typeAndValue"]["activity"] for a in seen.json()["result"]] == ["Away"]
    refused = w.presence(service)
    assert refused.status_code == 400, refused.text
    error = refused.json()["requestError"]["serviceException"]
    assert error["messageId"] == "SVC0002" and error["variables"][0] == "presentity"

    # A member blocks the watcher later: subscriptionEnded for that member only.
    members(active_a).block(w.uri)
    for name in ("g-sub", "g-n"):
        (ended,) = bayeux.wait_for(kind(w.channel(name), "subscriptionEnded", active_a),
                                   timeout=30)
        assert ended["data"]["subscriptionEnded"]["reason"] == "Blocked"
    # The group goes on: the other active phone's news still comes.
    phones[pending].publish("online", "away", "still pending")  # never shown
    members(pending).allow(w.uri)
    bayeux.wait_for(status(channel, pending, "Away"), timeout=30)
    assert not bayeux.matching(kind(channel, "statusEnd"))
    assert not bayeux.matching(kind(channel, "subscriptionEnded", service))


def test_a_list_edited_on_the_server_while_watched(
    adapter: AdapterProcess, presence_server: PresenceServer, listen: Any, members: Any,
    watchers: Any,
) -> None:
    w = watchers(watcher("edited"))
    service = group("edited")
    kept, dropped, added = (member("edited", n) for n in range(3))
    for uri, activity in ((kept, "Busy"), (dropped, "Away"), (added, "Meeting")):
        members(uri).publish(activity)
        members(uri).allow(w.uri)
    make_list(presence_server, w.uri, service, [kept, dropped])
    bayeux = listen(adapter)
    started = w.start(service, "e-n", checkImmediate=True)
    assert started.status_code == 201, started.text
    assert started.json()["result"] == []
    channel = w.channel("e-n")
    bayeux.wait_for(status(channel, kept, "Busy"), timeout=30)
    bayeux.wait_for(status(channel, dropped, "Away"), timeout=30)

    make_list(presence_server, w.uri, service, [kept, added])
    bayeux.wait_for(status(channel, added, "Meeting"), timeout=30)
    (ended,) = bayeux.wait_for(kind(channel, "subscriptionEnded", dropped), timeout=30)
    assert ended["data"]["subscriptionEnded"]["reason"] == "Removed"

    # The member that left is no longer told; the others still are (a barrier).
    members(dropped).publish("Busy")
    members(kept).publish("Meeting")
    bayeux.wait_for(status(channel, kept, "Meeting"), timeout=30)
    assert not bayeux.matching(status(channel, dropped, "Busy"))


def test_a_group_watch_survives_kill_9_and_is_subscribed_again_as_a_list(
    adapter_factory: AdapterFactory, presence_server: PresenceServer,
    bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    own = adapter_factory(accounts(), settings=SETTINGS)
    w = Watcher(own, watcher("durable"))
    service = group("durable")
    first, second = member("durable", 0), member("durable", 1)
    people = {uri: Member(own, uri) for uri in (first, second)}
    for uri, activity in ((first, "Busy"), (second, "Away")):
        people[uri].publish(activity)
        people[uri].allow(w.uri)
    make_list(presence_server, w.uri, service, [first, second])
    bayeux = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD)
    started = w.start(service, "d-n", checkImmediate=True)
    assert started.status_code == 201 and started.json()["result"] == []
    channel = w.channel("d-n")
    bayeux.wait_for(status(channel, first, "Busy"), timeout=30)
    bayeux.wait_for(status(channel, second, "Away"), timeout=30)
    for one in people.values():
        one.http.close()
    w.http.close()

    own.kill()
    again = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD, wait=False)
    again.wait_unreachable()
    own.restart(healthy=True)
    again.wait_subscribed()
    with own.client("members-app", first) as http:
        body = {"presence": [{"typeAndValue": {"unionElement": "Activity",
                                               "activity": "Meeting"}}]}
        assert http.post("/rest/presence", json=body).status_code == 204
    # The schedule and its group came back, subscribed again as a list: the
    # member's change is told under the group's correlator, naming the member.
    (message,) = again.wait_for(status(channel, first, "Meeting"), timeout=60)
    assert message["data"]["statusChanged"]["correlator"] == "d-n"
    with own.client("watch-app", w.uri) as http:
        query = json.dumps({"presentity": service, "attributes": ["Activity"]})
        refused = http.get("/rest/presence", params={"query": query})
    assert refused.status_code == 400, refused.text  # still known as a group


def test_a_group_watch_is_subscribed_again_as_a_list_after_a_server_restart(
    kamailio: PresenceServer, tmp_path: Path, bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    own = AdapterProcess.for_server(tmp_path, kamailio, accounts(), settings=SETTINGS)
    own.start(healthy=True)
    try:
        w = own.client("watch-app", watcher("durable"))
        service = group("durable")
        first, second = member("durable", 2), member("durable", 3)
        for uri, activity in ((first, "Busy"), (second, "Away")):
            with own.client("members-app", uri) as http:
                body = {"presence": [{"typeAndValue": {"unionElement": "Activity",
                                                       "activity": activity}}]}
                assert http.post("/rest/presence", json=body).status_code == 204
                allow = {"watcher": watcher("durable"), "decisions": [
                    {"presenceAttribute": "Activity", "decision": True}]}
                assert http.put("/rest/presence/subscription", json=allow).status_code == 204
        make_list(kamailio, watcher("durable"), service, [first, second])
        bayeux = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD)
        channel = "/bayeux/watch-app/r-n"
        started = w.post("/rest/presence/notification", json={
            "presentity": service, "attributes": ["Activity"], "checkImmediate": True,
            "count": 50, "reference": {"correlator": "r-n", "endpoint": channel},
        })
        assert started.status_code == 201 and started.json()["result"] == []
        bayeux.wait_for(status(channel, first, "Busy"), timeout=30)

        kamailio.restart()  # same port and database: every dialog forgotten
        with own.client("members-app", first) as http:
            body = {"presence": [{"typeAndValue": {"unionElement": "Activity",
                                                   "activity": "Meeting"}}]}
            assert http.post("/rest/presence", json=body).status_code == 204
        (message,) = bayeux.wait_for(status(channel, first, "Meeting"), timeout=60)
        assert message["data"]["statusChanged"]["correlator"] == "r-n"
        assert not bayeux.matching(lambda m: "subscriptionEnded" in m["data"])
        w.close()
    finally:
        own.stop()
