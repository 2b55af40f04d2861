"""adapter/rest.py: the forms each operation accepts, and the error bodies it answers.

The services are stand-ins that record what the REST edge asked of them (or
raise the services' own lookup errors); the app is the adapter's own.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapter import rest
from adapter.app import create_app
from adapter.auth import Accounts
from adapter.config import Config, load_config
from adapter.presentity import OpenSubscription
from adapter.watcher import NoSubscription, UnknownCorrelator
from pidf import AttributeType

REPO = Path(__file__).resolve().parents[2]
ALICE, BOB = "sip:alice@example.com", "sip:bob@example.com"
A = AttributeType


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AS_ALICE = basic("alice-app", "alice-secret")
AS_BOB = basic("bob-app", "bob-secret")


class Presentities:
    """Bob waits on alice's decision; carol is her watcher."""

    def __init__(self) -> None:
        self.decided: list[dict[AttributeType, bool]] = []

    async def open_subscriptions(self, presentity: str) -> list[OpenSubscription]:
        return [OpenSubscription(BOB, "board", (A.ACTIVITY,))]

    async def watchers(self, presentity: str) -> list[str]:
        return ["sip:carol@example.com"]

    async def authorize(self, presentity: str, watcher: str, decisions: Any) -> None:
        self.decided.append(dict(decisions))

    async def block(self, presentity: str, watcher: str) -> None:
        pass


class Watchers:
    """Bob watches alice only, and has no notification."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, frozenset[AttributeType]]] = []

    async def user_presence(
        self, watcher: str, presentity: str, attributes: frozenset[AttributeType]
    ) -> None:
        if presentity != ALICE:
            raise NoSubscription(presentity)
        self.asked.append((presentity, attributes))

    async def unsubscribe(self, watcher: str, presentity: str) -> None:
        raise NoSubscription(presentity)

    async def end_notification(self, app_id: str, correlator: str) -> None:
        raise UnknownCorrelator(correlator)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


@pytest.fixture
def services() -> tuple[Presentities, Watchers]:
    return Presentities(), Watchers()


@pytest.fixture
def client(config: Config, services: tuple[Presentities, Watchers]) -> Iterator[TestClient]:
    presentities, watchers = services

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"accounts": Accounts(config.accounts), "presentity": presentities,
               "watcher": watchers, "notification_policy": config.notifications}

    class Probe:
        async def ping(self) -> float:
            return 0.001

    app = create_app(config, sip_probe=Probe(), routes=rest.routes(), lifespan=lifespan,
                     exception_handlers=rest.EXCEPTION_HANDLERS)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


def fault(response: Any) -> tuple[int, str, list[str]]:
    (exception,) = response.json()["requestError"].values()
    return response.status_code, exception["messageId"], exception["variables"]


# -- Get User Presence: the forms clients send --------------------------------------

QUERY = json.dumps({"presentity": ALICE, "attributes": ["Activity", "Place"]})


def query(**members: Any) -> str:
    return "query=" + json.dumps(members)


ACCEPTED = {
    "query": f"query={QUERY}",
    "query in double quotes (OCSG's examples)": f'query="{QUERY}"',
    "query, attributes as a comma list": query(presentity=ALICE, attributes="Activity, Place"),
    "repeated attributes": f"presentity={ALICE}&attributes=Activity&attributes=Place",
    "a comma list": f"presentity={ALICE}&attributes=Activity,Place",
    "both": f"presentity={ALICE}&attributes=Activity&attributes=Place,%20Activity",
}


@pytest.mark.parametrize("form", list(ACCEPTED))
def test_get_user_presence_reads_every_form_whole(
    client: TestClient, services: tuple[Presentities, Watchers], form: str
) -> None:
    response = client.get(f"/rest/presence?{ACCEPTED[form]}", headers=AS_BOB)
    assert (response.status_code, response.json()) == (200, {"result": []}), response.text
    assert services[1].asked == [(ALICE, frozenset({A.ACTIVITY, A.PLACE}))]


@pytest.mark.parametrize(
    "query", [f"presentity={ALICE}", f"presentity={ALICE}&attributes=",
              query(presentity=ALICE, attributes=[]), query(presentity=ALICE, attributes=None)],
)
def test_no_attributes_or_an_empty_list_asks_for_all(
    client: TestClient, services: tuple[Presentities, Watchers], query: str
) -> None:
    assert client.get(f"/rest/presence?{query}", headers=AS_BOB).status_code == 200
    assert services[1].asked == [(ALICE, frozenset())]


REFUSED = {
    "nothing": ("", ["presentity"]),
    "query twice": (f"query={QUERY}&query={QUERY}", ["query (repeated)"]),
    "presentity twice": (f"presentity={ALICE}&presentity={BOB}", ["presentity (repeated)"]),
    "query beside presentity": (f"query={QUERY}&presentity={ALICE}",
                                ["presentity (beside query)"]),
    "query beside attributes": (f"query={QUERY}&attributes=Sphere",
                                ["attributes (beside query)"]),
    "an unknown attribute in a list": (f"presentity={ALICE}&attributes=Activity,Mood",
                                       ["attributes[1]"]),
    "an unknown attribute repeated": (f"presentity={ALICE}&attributes=Place&attributes=Mood",
                                      ["attributes[1]"]),
    "a misspelt parameter": (f"presentity={ALICE}&attribute=Place",
                             ["attribute (unknown parameter)"]),
    "query not JSON": ("query={presentity:alice}", ["query (not JSON)"]),
    "query quoted, not JSON": ('query="nope"', ["query (not JSON)"]),
    "query not an object": (f'query=["{ALICE}"]', ["query (not a JSON object)"]),
    "query nested too deeply": ("query=" + "[" * 5_000, ["query (nested too deeply)"]),
    "query without presentity": ('query={"attributes":[]}', ["query.presentity"]),
    "query with a bad attribute": (query(presentity=ALICE, attributes=["Mood"]),
                                   ["query.attributes[0]"]),
    "presentity not a URI": ("presentity=alice", ["presentity"]),
}


@pytest.mark.parametrize("form", list(REFUSED))
def test_get_user_presence_refuses_what_it_would_read_in_part(
    client: TestClient, services: tuple[Presentities, Watchers], form: str
) -> None:
    query, variables = REFUSED[form]
    response = client.get(f"/rest/presence?{query}", headers=AS_BOB)
    assert fault(response) == (400, "SVC0002", variables), response.text
    assert services[1].asked == []


# -- Get Open Subscriptions / Get My Watchers ------------------------------------------

SUBSCRIPTIONS = {
    "status=open": [{"application": "board", "attributes": ["Activity"], "watcher": BOB}],
    "filter=watcher": ["sip:carol@example.com"],
    "": ["sip:carol@example.com"],
    "status=open&filter=watcher": [BOB],
}


@pytest.mark.parametrize("query", list(SUBSCRIPTIONS))
def test_status_and_filter_choose_the_set_and_the_shape(client: TestClient, query: str) -> None:
    response = client.get(f"/rest/presence/subscription?{query}", headers=AS_ALICE)
    assert (response.status_code, response.json()) == (200, {"result": SUBSCRIPTIONS[query]})


def test_subscription_query_values_and_unknown_parameters_are_refused(client: TestClient) -> None:
    path = "/rest/presence/subscription"
    cases = {
        "status=closed": (400, "SVC0003", ["status", "open"]),
        "filter=watchers": (400, "SVC0003", ["filter", "watcher"]),
        "status=open&state=open": (400, "SVC0002", ["state (unknown parameter)"]),
    }
    for query, expected in cases.items():
        assert fault(client.get(f"{path}?{query}", headers=AS_ALICE)) == expected, query


# -- in order: the later of two items on one attribute counts ----------------------------


def test_decisions_apply_in_order(
    client: TestClient, services: tuple[Presentities, Watchers]
) -> None:
    decisions = [{"presenceAttribute": "Activity", "decision": True},
                 {"presenceAttribute": "Place", "decision": True},
                 {"presenceAttribute": "Activity", "decision": "false"}]
    response = client.put("/rest/presence/subscription", headers=AS_ALICE,
                          json={"watcher": BOB, "decisions": decisions})
    assert response.status_code == 204, response.text
    assert services[0].decided == [{A.PLACE: True, A.ACTIVITY: False}]


# -- 404s name what they did not find ------------------------------------------------------


def test_an_unknown_correlator_is_named(client: TestClient) -> None:
    response = client.delete("/rest/presence/notification/board%2F7", headers=AS_BOB)
    assert fault(response) == (404, "SVC0002", ["correlator", "board/7"])


def test_an_unknown_subscription_is_named(client: TestClient) -> None:
    carol = "sip:carol@example.com"
    response = client.get("/rest/presence", params={"presentity": carol}, headers=AS_BOB)
    assert fault(response) == (404, "SVC0002", ["presentity", carol])
    response = client.delete("/rest/presence/subscription", params={"presentity": carol},
                             headers=AS_BOB)
    assert fault(response) == (404, "SVC0002", ["presentity", carol])


def test_a_watcher_not_yet_subscribed_is_decided_and_blocked(client: TestClient) -> None:
    # Decisions may come before the watcher asks (pres-rules written ahead): no 404.
    response = client.put("/rest/presence/subscription", headers=AS_ALICE, json={
        "watcher": "sip:carol@example.com",
        "decisions": [{"presenceAttribute": "Place", "decision": True}]})
    assert response.status_code == 204, response.text
    response = client.delete("/rest/presence/subscription/sip:carol@example.com",
                             headers=AS_ALICE)
    assert response.status_code == 204, response.text


# -- what the fuzzing found --------------------------------------------------------------


def test_a_metric_that_is_no_string_is_bad_input(client: TestClient) -> None:
    body = {"presentity": ALICE, "reference": {"correlator": "c", "endpoint": "/bayeux/bob-app"},
            "count": 1, "duration": {"metric": {}, "units": 2}}
    response = client.post("/rest/presence/notification", headers=AS_BOB, json=body)
    assert fault(response) == (400, "SVC0003", ["duration.metric", ", ".join(rest.METRICS)])


def test_a_body_nested_too_deeply_is_bad_input(client: TestClient) -> None:
    response = client.post("/rest/presence", headers=AS_ALICE, content=b"[" * 100_000)
    assert fault(response) == (400, "SVC0002", ["body (nested too deeply)"])


# -- what a bad body's variable names ----------------------------------------------------

REF = {"correlator": "c", "endpoint": "/bayeux/bob-app"}
CRITERIA = "Reachable, UnReachable, Busy"
BODY_PARTS = {
    "a second value in a typeAndValue": (
        "POST", "/rest/presence", AS_ALICE,
        {"presence": [{"typeAndValue": {"unionElement": "Activity", "activity": "Busy",
                                        "place": "Home"}}]},
        ("SVC0002", ["presence[0].typeAndValue.place"])),
    "a missing member, by its path": (
        "POST", "/rest/presence/subscription", AS_BOB,
        {"presentity": ALICE, "reference": {"endpoint": "/bayeux/bob-app"}},
        ("SVC0002", ["reference.correlator"])),
    "a comma list in a body, whole": (
        "POST", "/rest/presence/subscription", AS_BOB,
        {"presentity": ALICE, "reference": REF, "attributes": "Activity,Mood"},
        ("SVC0002", ["attributes"])),
    "a URI that ends in a newline": (
        "POST", "/rest/presence/subscription", AS_BOB,
        {"presentity": ALICE + "\n", "reference": REF}, ("SVC0002", ["presentity"])),
    "a quoted boolean that is none": (
        "POST", "/rest/presence/notification", AS_BOB,
        {"presentity": ALICE, "reference": REF, "checkImmediate": "true\n"},
        ("SVC0002", ["checkImmediate"])),
    "a criterion that does not exist": (
        "POST", "/rest/presence/notification", AS_BOB,
        {"presentity": ALICE, "reference": REF, "criteria": "Busy, Sleepy"},
        ("SVC0003", ["criteria", CRITERIA])),
    "one in a list": (
        "POST", "/rest/presence/notification", AS_BOB,
        {"presentity": ALICE, "reference": REF, "criteria": ["Busy", "Sleepy"]},
        ("SVC0003", ["criteria", CRITERIA])),
    "a negative count": (
        "POST", "/rest/presence/notification", AS_BOB,
        {"presentity": ALICE, "reference": REF, "count": -1}, ("SVC0002", ["count"])),
    "a decision that is no boolean": (
        "PUT", "/rest/presence/subscription", AS_ALICE,
        {"watcher": BOB, "decisions": [{"presenceAttribute": "Place", "decision": "yes"}]},
        ("SVC0002", ["decisions[0].decision"])),
}


@pytest.mark.parametrize("case", list(BODY_PARTS))
def test_a_bad_body_names_the_part(client: TestClient, case: str) -> None:
    method, path, headers, body, (message_id, variables) = BODY_PARTS[case]
    response = client.request(method, path, headers=headers, json=body)
    assert fault(response) == (400, message_id, variables), response.text
