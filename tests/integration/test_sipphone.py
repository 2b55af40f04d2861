"""A real SIP phone (PJSIP's pjsua2, tests/sipphone.py) on the other side of the adapter.

One adapter process in front of the session's Kamailio.  ``alice-app`` holds
REST presentities and, for each phone, the phone's own address too (a web
application managing the phone user's rules); ``bob-app`` holds REST watchers.
The phones talk to Kamailio directly, as SIP phones do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pidf import Activity, decode
from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory
from tests.polling import eventually
from tests.rawsip import new_token
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
SCENARIOS = ("rest-to-phone", "phone-to-rest")
ALL_ATTRIBUTES = ("Activity", "Place", "Privacy", "Sphere", "Communication", "Other")


def presentity(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def phone_uri(scenario: str) -> str:
    return f"sip:phone-{scenario}-{RUN}@example.com"


def watcher(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


@pytest.fixture(scope="module")
def adapter(adapter_factory: AdapterFactory) -> AdapterProcess:
    presentities = tuple(presentity(s) for s in SCENARIOS) + tuple(phone_uri(s) for s in SCENARIOS)
    return adapter_factory(
        [
            AppAccount("alice-app", PASSWORD, presentities),
            AppAccount("bob-app", PASSWORD, tuple(watcher(s) for s in SCENARIOS)),
        ]
    )


def authorize(http: httpx.Client, who: str, **decisions: bool) -> None:
    body = {
        "watcher": who,
        "decisions": [{"presenceAttribute": k, "decision": v} for k, v in decisions.items()],
    }
    response = http.put("/rest/presence/subscription", json=body)
    assert response.status_code == 204, response.text


def open_watchers(http: httpx.Client) -> list[str]:
    response = http.get("/rest/presence/subscription", params={"status": "open"})
    assert response.status_code == 200, response.text
    return [s["watcher"] for s in response.json()["result"]]


def test_a_rest_presentity_is_seen_online_by_a_pjsua2_buddy(
    adapter: AdapterProcess, sip_phone: Callable[[str], SipPhone]
) -> None:
    alice = presentity("rest-to-phone")
    phone = sip_phone(phone_uri("rest-to-phone"))
    with adapter.client("alice-app", alice) as http:
        published = http.post(
            "/rest/presence",
            json={
                "presence": [
                    {
                        "typeAndValue": {"unionElement": "Activity", "activity": "Busy"},
                        "note": "in a meeting",
                    }
                ]
            },
        )
        assert published.status_code == 204, published.text
        phone.subscribe(alice)
        phone.wait_buddy(alice, lambda s: s["sub_state"] == "PENDING")
        eventually(lambda: phone.uri in open_watchers(http), what="the phone asking")
        authorize(http, phone.uri, **{kind: True for kind in ALL_ATTRIBUTES})

    seen = phone.wait_buddy(alice, lambda s: s["sub_state"] == "ACTIVE" and s["status"] == "online")
    assert seen["activity"] == "busy"
    assert seen["note"] == "in a meeting"
    # What pjsua2 made of it is what Kamailio sent: our PIDF, decoded the same.
    (notify, *_) = [n for n in phone.notifies(alice) if n["state"].startswith("active")]
    (sent,) = decode(notify["body"].encode()).attributes
    assert (sent.value, sent.note) == (Activity.BUSY, "in a meeting")

    mark = phone.mark()
    phone.unsubscribe(alice)
    phone.wait_buddy(alice, lambda s: s["sub_state"] == "TERMINATED", since=mark)


def test_a_pjsua2_publication_is_seen_by_a_rest_watcher(
    adapter: AdapterProcess, sip_phone: Callable[[str], SipPhone]
) -> None:
    phone = sip_phone(phone_uri("phone-to-rest"))
    phone.publish("online", "busy", "On a call")
    bob = watcher("phone-to-rest")
    with adapter.client("bob-app", bob) as watching, adapter.client(
        "alice-app", phone.uri
    ) as rules:
        subscribed = watching.post(
            "/rest/presence/subscription",
            json={
                "application": "buddy list",
                "presentity": phone.uri,
                "attributes": [],
                "reference": {
                    "correlator": f"phone-{RUN}",
                    "endpoint": "/bayeux/bob-app/phone",
                    "interfaceName": "PresenceNotification",
                },
            },
        )
        assert subscribed.status_code == 204, subscribed.text
        eventually(lambda: bob in open_watchers(rules), what="the REST watcher asking")
        authorize(rules, bob, **{kind: True for kind in ALL_ATTRIBUTES})

        def activity() -> list[dict[str, Any]]:
            query = json.dumps({"presentity": phone.uri, "attributes": ["Activity"]})
            response = watching.get("/rest/presence", params={"query": query})
            if response.status_code != 200:
                return []
            result: list[dict[str, Any]] = response.json()["result"]
            return result

        (seen,) = eventually(activity, what="the phone's activity")
    assert seen["typeAndValue"] == {"unionElement": "Activity", "activity": "Busy"}
    assert seen["note"] == "On a call"

