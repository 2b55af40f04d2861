"""Going away is news: withdrawals, ended publications and offline phones, end to end.

One adapter process in front of the session's Kamailio.  ``alice-app`` holds the
REST presentities (and the phones' addresses, to write their rules);
``bob-app`` holds the watchers, whose notifications the CometD JavaScript
client receives.  Each test has SIP addresses, channels and correlators of its
own.  What a watcher is told of an attribute that went away is its withdrawal
form (README, "Semantics worth knowing"): ActivityNone, PlaceNone, …, a
Communication without means, an Other with an empty value.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pidf import Activity, AttributeType, PresenceAttribute, PresRules, encode
from pidf.presrules import CONTENT_TYPE as PRES_RULES
from sip.aio import SipEndpoint
from sip.uri import SipURI
from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory, BayeuxListener
from tests.polling import eventually
from tests.presence_server import PresenceServer
from tests.rawsip import new_token
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
SCENARIOS = ("withdraw", "unpublish", "restart", "expiry", "phone", "period")
ALL = ("Activity", "Place", "Privacy", "Sphere", "Communication", "Other")
WAIT = 15.0


def presentity(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def watcher(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


def phone_uri(scenario: str) -> str:
    return f"sip:phone-{scenario}-{RUN}@example.com"


@pytest.fixture(scope="module")
def adapter(adapter_factory: AdapterFactory) -> AdapterProcess:
    return adapter_factory(
        [
            AppAccount(
                "alice-app", PASSWORD,
                tuple(presentity(s) for s in SCENARIOS) + (phone_uri("phone"),),
            ),
            AppAccount("bob-app", PASSWORD, tuple(watcher(s) for s in SCENARIOS)),
        ]
    )


@pytest.fixture
def channels(adapter: AdapterProcess, bayeux_listener: Callable[..., Any]) -> BayeuxListener:
    listener: BayeuxListener = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    return listener


@pytest.fixture
def clients(adapter: AdapterProcess) -> Iterator[Callable[[str, str], httpx.Client]]:
    made: list[httpx.Client] = []

    def client(account: str, address: str) -> httpx.Client:
        made.append(adapter.client(account, address))
        return made[-1]

    yield client
    for http in made:
        http.close()


def tav(kind: str, value: Any) -> dict[str, Any]:
    return {"unionElement": kind, kind.lower(): value}


def item(kind: str, value: Any) -> dict[str, Any]:
    return {"typeAndValue": tav(kind, value)}


def gone(kind: str, value: Any) -> dict[str, Any]:
    return tav(kind, value)


def values(attributes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((a["typeAndValue"] for a in attributes), key=lambda t: t["unionElement"])


def on(channel: str, kind: str, correlator: str) -> Callable[[dict[str, Any]], bool]:
    def matches(message: dict[str, Any]) -> bool:
        data = message["data"]
        return (
            message["channel"] == channel
            and kind in data
            and data[kind].get("correlator") == correlator
        )

    return matches


def changed(message: dict[str, Any]) -> list[dict[str, Any]]:
    return values(message["data"]["statusChanged"]["changedAttributes"])


def publish(http: httpx.Client, *attributes: dict[str, Any]) -> None:
    response = http.post("/rest/presence", json={"presence": list(attributes)})
    assert response.status_code == 204, response.text


def withdraw(http: httpx.Client, attributes: str | None = None) -> None:
    params = {"attributes": attributes} if attributes is not None else None
    response = http.delete("/rest/presence", params=params)
    assert response.status_code == 204, response.text


def seen(http: httpx.Client, who: str) -> list[dict[str, Any]] | None:
    """Get User Presence: the typeAndValues, or None while not (yet) authorised
    (or, right after a restart, not yet subscribed again)."""
    query = json.dumps({"presentity": who, "attributes": []})
    response = http.get("/rest/presence", params={"query": query})
    if response.status_code in (403, 404):
        return None
    assert response.status_code == 200, response.text
    return values(response.json()["result"])


def open_watchers(http: httpx.Client) -> list[str]:
    response = http.get("/rest/presence/subscription", params={"status": "open"})
    assert response.status_code == 200, response.text
    return [s["watcher"] for s in response.json()["result"]]


def authorize(http: httpx.Client, who: str) -> None:
    body = {"watcher": who,
            "decisions": [{"presenceAttribute": k, "decision": True} for k in ALL]}
    response = http.put("/rest/presence/subscription", json=body)
    assert response.status_code == 204, response.text


def subscribe(watching: httpx.Client, who: str, channel: str, correlator: str) -> None:
    response = watching.post(
        "/rest/presence/subscription",
        json={"application": "going away", "presentity": who, "attributes": [],
              "reference": {"correlator": correlator, "endpoint": channel}},
    )
    assert response.status_code == 204, response.text


def subscribe_authorised(watching: httpx.Client, owner: httpx.Client, who: str,
                         watcher_uri: str, channel: str) -> None:
    """Subscribe Presence, and the presentity's application authorises everything."""
    subscribe(watching, who, channel, f"{channel}-sub")
    eventually(lambda: watcher_uri in open_watchers(owner), what="the watcher asking")
    authorize(owner, watcher_uri)
    eventually(lambda: seen(watching, who) is not None, what="the watcher authorised")


def start(watching: httpx.Client, who: str, channel: str, correlator: str,
          **fields: Any) -> None:
    body = {"presentity": who, "reference": {"correlator": correlator, "endpoint": channel},
            **fields}
    response = watching.post("/rest/presence/notification", json=body)
    assert response.status_code == 201, response.text
    assert response.json() == {"result": []}


# -- a REST presentity withdraws ------------------------------------------------------


def test_a_withdrawn_attribute_is_told_and_no_longer_shown(clients, channels) -> None:
    alice, bob = presentity("withdraw"), watcher("withdraw")
    owner, watching = clients("alice-app", alice), clients("bob-app", bob)
    channel = "/bayeux/bob-app/withdraw"
    publish(owner, item("Activity", "Busy"), item("Place", "Office"),
            item("Other", {"name": "mood", "value": "focused"}))
    subscribe_authorised(watching, owner, alice, bob, channel)
    start(watching, alice, channel, "withdraw-n", checkImmediate=True)
    (first,) = channels.wait_for(on(channel, "statusChanged", "withdraw-n"))
    assert len(changed(first)) == 3

    withdraw(owner, "Place")
    (_, second) = channels.wait_for(on(channel, "statusChanged", "withdraw-n"), count=2)
    assert changed(second) == [gone("Place", "PlaceNone")]
    assert seen(watching, alice) == values([
        item("Activity", "Busy"), item("Other", {"name": "mood", "value": "focused"})
    ])

    withdraw(owner, "Other")
    third = channels.wait_for(on(channel, "statusChanged", "withdraw-n"), count=3)[2]
    assert changed(third) == [gone("Other", {"name": "mood", "value": ""})]
    assert seen(watching, alice) == values([item("Activity", "Busy")])

    # Withdrawing what is not published is no error; a bad name is.
    withdraw(owner, "Sphere")
    bad = owner.delete("/rest/presence", params={"attributes": "Mood"})
    assert bad.status_code == 400, bad.text
    assert bad.json()["requestError"]["serviceException"]["messageId"] == "SVC0002"


def test_an_ended_publication_is_unreachable_and_shows_nothing(clients, channels) -> None:
    alice, bob = presentity("unpublish"), watcher("unpublish")
    owner, watching = clients("alice-app", alice), clients("bob-app", bob)
    channel = "/bayeux/bob-app/unpublish"
    means = {"means": [{"contact": "tel:+15550100", "priority": 0.5, "type": "Phone"}]}
    publish(owner, item("Activity", "Busy"), item("Place", "Office"),
            item("Communication", means))
    subscribe_authorised(watching, owner, alice, bob, channel)
    start(watching, alice, channel, "unpublish-all", checkImmediate=True)
    start(watching, alice, channel, "unpublish-unreachable", criteria="UnReachable",
          attributes=["Place"])
    channels.wait_for(on(channel, "statusChanged", "unpublish-all"))

    withdraw(owner)  # the publication ends: un-PUBLISH
    (_, told) = channels.wait_for(on(channel, "statusChanged", "unpublish-all"), count=2)
    assert changed(told) == [
        gone("Activity", "ActivityNone"),
        gone("Communication", {"means": []}),
        gone("Place", "PlaceNone"),
    ]
    (unreachable,) = channels.wait_for(on(channel, "statusChanged", "unpublish-unreachable"))
    assert changed(unreachable) == [gone("Place", "PlaceNone")]
    assert seen(watching, alice) == []

    # Published again: news for the first schedule, not for UnReachable.
    publish(owner, item("Activity", "Away"))
    third = channels.wait_for(on(channel, "statusChanged", "unpublish-all"), count=3)[2]
    assert changed(third) == [tav("Activity", "Away")]
    assert seen(watching, alice) == [tav("Activity", "Away")]
    assert len(channels.matching(on(channel, "statusChanged", "unpublish-unreachable"))) == 1


def test_a_withdrawal_survives_a_restart(adapter: AdapterProcess, clients) -> None:
    alice, bob = presentity("restart"), watcher("restart")
    owner, watching = clients("alice-app", alice), clients("bob-app", bob)
    publish(owner, item("Activity", "Busy"), item("Place", "Office"),
            item("Sphere", "SphereWork"))
    subscribe_authorised(watching, owner, alice, bob, "/bayeux/bob-app/restart")
    withdraw(owner, "Place")
    eventually(lambda: seen(watching, alice) == values(
        [item("Activity", "Busy"), item("Sphere", "SphereWork")]), what="Place withdrawn")

    adapter.kill()  # a crash: only what was stored before the 204 counts
    adapter.restart(healthy=True)
    # A Publish after the restart is merged with what the store kept: Place
    # must not come back.
    publish(owner, item("Privacy", "PrivacyPublic"))
    expected = values([item("Activity", "Busy"), item("Sphere", "SphereWork"),
                       item("Privacy", "PrivacyPublic")])
    eventually(lambda: seen(watching, alice) == expected, what="the state after the restart")

    withdraw(owner)
    eventually(lambda: seen(watching, alice) == [], what="the publication ended")
    adapter.kill()
    adapter.restart(healthy=True)
    publish(owner, item("Place", "Home"))
    eventually(lambda: seen(watching, alice) == [tav("Place", "Home")],
               what="only what was published after the withdrawal")


# -- a SIP publication expires --------------------------------------------------------


async def publish_briefly(server: PresenceServer, who: str, expires: int) -> None:
    """PUBLISH Activity Busy for ``expires`` seconds and never refresh it."""
    endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse(server.sip_uri))
    await endpoint.start()
    try:
        body = encode([PresenceAttribute(Activity.BUSY)], entity=who, now=datetime.now(UTC))
        await endpoint.publish(SipURI.parse(who), body, expires=expires).outcome
    finally:
        await endpoint.close()


def test_an_expired_publication_is_told_as_gone(
    presence_server: PresenceServer, clients, channels
) -> None:
    carol, bob = f"sip:carol-expiry-{RUN}@example.com", watcher("expiry")
    watching = clients("bob-app", bob)
    channel = "/bayeux/bob-app/expiry"
    rules = PresRules().allow(bob, {kind: True for kind in AttributeType})
    written = httpx.put(f"{presence_server.xcap_root}/pres-rules/users/{carol}/index",
                        content=rules.to_xml(), headers={"Content-Type": PRES_RULES})
    assert written.status_code in (200, 201), written.text
    subscribe(watching, carol, channel, "expiry-sub")
    eventually(lambda: seen(watching, carol) is not None, what="the watcher authorised")
    start(watching, carol, channel, "expiry-n", criteria="Reachable,UnReachable")

    asyncio.run(publish_briefly(presence_server, carol, expires=2))
    (reachable,) = channels.wait_for(on(channel, "statusChanged", "expiry-n"))
    assert changed(reachable) == [tav("Activity", "Busy")]
    # Kamailio notices the expiry on its clean timer (clean_period 30 s) and
    # sends a NOTIFY without a body (tests/data/pidf/README.md).
    (_, expired) = channels.wait_for(on(channel, "statusChanged", "expiry-n"), count=2,
                                     timeout=60)
    assert changed(expired) == [gone("Activity", "ActivityNone")]
    assert seen(watching, carol) == []


# -- a SIP phone goes offline -----------------------------------------------------------


def test_a_phone_going_offline_fires_unreachable(
    clients, channels, sip_phone: Callable[[str], SipPhone]
) -> None:
    phone = sip_phone(phone_uri("phone"))
    bob = watcher("phone")
    rules, watching = clients("alice-app", phone.uri), clients("bob-app", bob)
    channel = "/bayeux/bob-app/phone"
    phone.publish("online", "busy", "On a call")
    subscribe_authorised(watching, rules, phone.uri, bob, channel)
    start(watching, phone.uri, channel, "phone-n", criteria="UnReachable")
    # Notifications that carry only Place, which a phone never publishes:
    # reachability alone is the news.
    start(watching, phone.uri, channel, "phone-place", criteria="Reachable,UnReachable",
          attributes=["Place"])
    eventually(lambda: seen(watching, phone.uri) == [tav("Activity", "Busy")],
               what="the phone busy")

    phone.publish("offline")
    (told,) = channels.wait_for(on(channel, "statusChanged", "phone-n"))
    assert changed(told) == [gone("Activity", "ActivityNone")]
    assert seen(watching, phone.uri) == []
    (unreachable,) = channels.wait_for(on(channel, "statusChanged", "phone-place"))
    assert changed(unreachable) == []

    phone.publish("online")
    (_, reachable) = channels.wait_for(on(channel, "statusChanged", "phone-place"), count=2)
    assert changed(reachable) == []
    eventually(lambda: seen(watching, phone.uri) == [tav("Activity", "Available")],
               what="the phone online")
    assert len(channels.matching(on(channel, "statusChanged", "phone-n"))) == 1


# -- checkImmediate false ----------------------------------------------------------------


def test_without_check_immediate_the_first_notification_ends_the_first_period(
    clients, channels
) -> None:
    alice, bob = presentity("period"), watcher("period")
    owner, watching = clients("alice-app", alice), clients("bob-app", bob)
    channel = "/bayeux/bob-app/period"
    publish(owner, item("Activity", "Busy"))
    subscribe_authorised(watching, owner, alice, bob, channel)
    started = time.monotonic()
    start(watching, alice, channel, "period-n", checkImmediate=False,
          frequency={"metric": "Second", "units": 3})
    publish(owner, item("Activity", "Away"))
    publish(owner, item("Activity", "Meal"))
    (first,) = channels.wait_for(on(channel, "statusChanged", "period-n"))
    # Not sooner than the period after the start (a lower bound: a busy
    # machine only delays), and the latest state of the period.
    assert first["at"] - started >= 3.0
    assert changed(first) == [tav("Activity", "Meal")]
