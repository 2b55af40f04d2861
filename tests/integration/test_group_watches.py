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
from tests.integration.test_useragent import put_rules
from tests.presence_server import PresenceServer
from tests.rawsip import new_token
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
SCENARIOS = ("mixed", "edited", "durable", "xcap")
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
    # Checks of the lists every 2 s (not 30): what the server does not tell
    # (a removal, a block or allow written to XCAP) is seen within the tests.
    "sip": {"keepalive": 0.5, "request_timeout": 10.0, "list_check": 2.0},
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
def people(adapter: AdapterProcess) -> Iterator[Callable[[type[Any], str], Any]]:
    """``people(Member, uri)`` / ``people(Watcher, uri)``: their HTTP clients closed after."""
    made: list[Any] = []

    def make(kind: type[Any], uri: str) -> Any:
        made.append(kind(adapter, uri))
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
    adapter: AdapterProcess, presence_server: PresenceServer, listen: Any, people: Any,
    sip_phone: Callable[[str], SipPhone],
) -> None:
    w = people(Watcher, watcher("mixed"))
    service = group("mixed")
    active_a, active_b, pending, blocked = (member("mixed", n) for n in range(4))
    phones = {uri: sip_phone(uri) for uri in (active_a, active_b, pending, blocked)}
    phones[active_a].publish("online", "busy", "on a call")
    phones[active_b].publish("online", "away", "out")
    phones[pending].publish("online", "busy", "secret")
    phones[blocked].publish("online", "busy", "secret too")
    people(Member, active_a).allow(w.uri)
    people(Member, active_b).allow(w.uri)
    people(Member, blocked).block(w.uri)
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
    people(Member, active_a).block(w.uri)
    for name in ("g-sub", "g-n"):
        (ended,) = bayeux.wait_for(kind(w.channel(name), "subscriptionEnded", active_a),
                                   timeout=30)
        assert ended["data"]["subscriptionEnded"]["reason"] == "Blocked"
    # The group goes on: the other active phone's news still comes.
    phones[pending].publish("online", "away", "still pending")  # never shown
    people(Member, pending).allow(w.uri)
    bayeux.wait_for(status(channel, pending, "Away"), timeout=30)
    assert not bayeux.matching(kind(channel, "statusEnd"))
    assert not bayeux.matching(kind(channel, "subscriptionEnded", service))


def test_a_list_edited_on_the_server_while_watched(
    adapter: AdapterProcess, presence_server: PresenceServer, listen: Any, people: Any,
) -> None:
    w = people(Watcher, watcher("edited"))
    service = group("edited")
    kept, dropped, added = (member("edited", n) for n in range(3))
    for uri, activity in ((kept, "Busy"), (dropped, "Away"), (added, "Meeting")):
        people(Member, uri).publish(activity)
        people(Member, uri).allow(w.uri)
    make_list(presence_server, w.uri, service, [kept, dropped])
    bayeux = listen(adapter)
    started = w.start(service, "e-n", checkImmediate=True)
    assert started.status_code == 201, started.text
    # A member whose state the RLS has not sent within the settling time is
    # not subscribed yet (a busy server): only listed members may be named.
    assert set(started.json()["result"]) <= {kept, dropped}, started.text
    channel = w.channel("e-n")
    bayeux.wait_for(status(channel, kept, "Busy"), timeout=30)
    bayeux.wait_for(status(channel, dropped, "Away"), timeout=30)

    make_list(presence_server, w.uri, service, [kept, added])
    bayeux.wait_for(status(channel, added, "Meeting"), timeout=30)
    left(bayeux, channel, people, (dropped, "Busy"), (kept, "Meeting"))

    # A removal alone: Kamailio sends nothing (tests/data/rls/server-edits-*);
    # the list check reads the list document and subscribes the list again.
    make_list(presence_server, w.uri, service, [kept])
    left(bayeux, channel, people, (added, "Away"), (kept, "Busy"))
    assert not bayeux.matching(kind(channel, "subscriptionEnded", kept))


def left(
    bayeux: BayeuxListener, channel: str, people: Any, gone: tuple[str, str],
    kept: tuple[str, str],
) -> None:
    """``gone`` hears subscriptionEnded Removed, and then its change (the
    activity given) is not told while ``kept``'s is (a barrier)."""
    (ended,) = bayeux.wait_for(kind(channel, "subscriptionEnded", gone[0]), timeout=60)
    assert ended["data"]["subscriptionEnded"]["reason"] == "Removed"
    people(Member, gone[0]).publish(gone[1])
    people(Member, kept[0]).publish(kept[1])
    bayeux.wait_for(status(channel, *kept), timeout=30)
    assert not bayeux.matching(status(channel, *gone))


def test_a_block_and_an_allow_written_to_xcap_by_the_member_itself(
    adapter: AdapterProcess, presence_server: PresenceServer, listen: Any, people: Any,
) -> None:
    """Not through this adapter: Kamailio tells the list subscriber nothing
    of either (tests/data/rls/server-edits-*); the list check reads the
    member's rules, and after the allow refreshes the list."""
    w = people(Watcher, watcher("xcap"))
    service = group("xcap")
    steady, member_ = member("xcap", 0), member("xcap", 1)
    for uri, activity in ((steady, "Busy"), (member_, "Away")):
        people(Member, uri).publish(activity)
        people(Member, uri).allow(w.uri)
    make_list(presence_server, w.uri, service, [steady, member_])
    bayeux = listen(adapter)
    response = w.subscribe(service, "x-sub")
    assert response.status_code == 204, response.text
    # A member's decisions are told once it is active: then Start finds both
    # subscribed, however long the RLS takes to send their states.
    for uri in (steady, member_):
        bayeux.wait_for(kind(w.channel("x-sub"), "notifySubscription", uri), timeout=30)
    started = w.start(service, "x-n", checkImmediate=True)
    assert started.status_code == 201 and started.json()["result"] == [], started.text
    channel = w.channel("x-n")
    bayeux.wait_for(status(channel, member_, "Away"), timeout=30)

    write_rules(presence_server, member_, w.uri, "block")
    for name in ("x-sub", "x-n"):
        (ended,) = bayeux.wait_for(kind(w.channel(name), "subscriptionEnded", member_),
                                   timeout=60)
        assert ended["data"]["subscriptionEnded"]["reason"] == "Blocked"

    write_rules(presence_server, member_, w.uri, "allow")
    # Back without a restart: its decisions and its state (unchanged, told in full).
    bayeux.wait_for(kind(w.channel("x-sub"), "notifySubscription", member_), count=2,
                    timeout=60)
    bayeux.wait_for(status(channel, member_, "Away"), count=2, timeout=60)
    people(Member, member_).publish("Meeting")
    bayeux.wait_for(status(channel, member_, "Meeting"), timeout=30)
    assert not bayeux.matching(kind(channel, "subscriptionEnded", steady))


def write_rules(server: PresenceServer, presentity: str, who: str, handling: str) -> None:
    """The member's pres-rules written straight to XCAP, by-passing the adapter."""
    asyncio.run(put_rules(server, SipURI.parse(presentity), SipURI.parse(who), handling))


def watched_group(
    adapter: AdapterProcess, server: PresenceServer, listener: BayeuxListener,
    firsts: dict[str, str], correlator: str,
) -> str:
    """``firsts``: member -> its first Activity, published and granted to the
    "durable" watcher through ``adapter``; Start on the group, every member's
    state received.  The notification channel."""
    w = Watcher(adapter, watcher("durable"))
    for uri, activity in firsts.items():
        person = Member(adapter, uri)
        person.publish(activity)
        person.allow(w.uri)
        person.http.close()
    service = group(correlator)
    make_list(server, w.uri, service, list(firsts))
    started = w.start(service, correlator, checkImmediate=True)
    w.http.close()
    # Members whose states the RLS has not sent yet (a busy server) are named;
    # their states are awaited below.
    assert started.status_code == 201, started.text
    assert set(started.json()["result"]) <= set(firsts), started.text
    channel = w.channel(correlator)
    for uri, activity in firsts.items():
        listener.wait_for(status(channel, uri, activity), timeout=30)
    return channel


def publish_as(adapter: AdapterProcess, uri: str, activity: str) -> None:
    person = Member(adapter, uri)
    person.publish(activity)
    person.http.close()


def test_a_group_watch_survives_kill_9_and_is_subscribed_again_as_a_list(
    adapter_factory: AdapterFactory, presence_server: PresenceServer,
    bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    own = adapter_factory(accounts(), settings=SETTINGS)
    first, second = member("durable", 0), member("durable", 1)
    bayeux = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD)
    channel = watched_group(own, presence_server, bayeux, {first: "Busy", second: "Away"}, "d-n")

    own.kill()
    again = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD, wait=False)
    again.wait_unreachable()
    own.restart(healthy=True)
    again.wait_subscribed()
    publish_as(own, first, "Meeting")
    # The schedule and its group came back, subscribed again as a list: the
    # member's change is told under the group's correlator, naming the member.
    (message,) = again.wait_for(status(channel, first, "Meeting"), timeout=60)
    assert message["data"]["statusChanged"]["correlator"] == "d-n"
    w = Watcher(own, watcher("durable"))
    refused = w.presence(group("d-n"))
    w.http.close()
    assert refused.status_code == 400, refused.text  # still known as a group


def test_a_group_watch_is_subscribed_again_as_a_list_after_a_server_restart(
    kamailio: PresenceServer, tmp_path: Path, bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    own = AdapterProcess.for_server(tmp_path, kamailio, accounts(), settings=SETTINGS)
    own.start(healthy=True)
    try:
        first, second = member("durable", 2), member("durable", 3)
        bayeux = bayeux_listener(own.url + "/cometd", "watch-app", PASSWORD)
        channel = watched_group(own, kamailio, bayeux, {first: "Busy", second: "Away"}, "r-n")

        kamailio.restart()  # same port and database: every dialog forgotten
        publish_as(own, first, "Meeting")
        (message,) = bayeux.wait_for(status(channel, first, "Meeting"), timeout=60)
        assert message["data"]["statusChanged"]["correlator"] == "r-n"
        assert not bayeux.matching(lambda m: "subscriptionEnded" in m["data"])
    finally:
        own.stop()
