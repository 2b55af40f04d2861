"""The presentity side of the REST API end to end: HTTP, the adapter process, the real Kamailio.

One adapter process (``presence-adapter serve``, tests/adapter_process.py) in
front of the session's presence server, with one application, ``alice-app``,
that holds a presentity address per scenario (the ``X-Presence-Identity``
header picks it).  The other party is a watcher the adapter knows nothing
about: our own SIP user agent (``sip.aio.SipEndpoint``) subscribing straight
to Kamailio — so what it receives is what any SIP client would.  SIP user
names carry a token of this run: the presence server is shared.

State that only a NOTIFY changes is waited for by polling with a timeout,
never by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest

from adapter.presence_json import attribute_to_json
from pidf import AttributeType, Presence, decode, filter_presence
from sip import NotifyReceived, SubscriptionTerminated, UserAgentEvent
from sip.aio import SipEndpoint, SubscriptionHandle
from sip.uri import SipURI
from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory
from tests.presence_server import PresenceServer, free_port
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

T = TypeVar("T")

RUN = new_token()[:8]
PASSWORD = "secret"
APP = "alice-app"
BURST = tuple(f"burst-{i}" for i in range(8))
SCENARIOS = (
    "publish", "authorize", "decline", "leave", "crowd", "block-0", "block-1", "errors", "down",
    *BURST,
)
PATHS = ("/rest/presence/subscription", "/rest/presence/subscriptions")
WAIT = 5.0  # seconds: NOTIFYs come within milliseconds of their cause


def alice(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def bob(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


@pytest.fixture(scope="module")
def adapter(adapter_factory: AdapterFactory) -> AdapterProcess:
    return adapter_factory([AppAccount(APP, PASSWORD, tuple(alice(s) for s in SCENARIOS))])


# -- the JSON the application sends --------------------------------------------


def activity(value: str, note: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"typeAndValue": {"unionElement": "Activity", "activity": value}}
    if note is not None:
        item["note"] = note
    return item


def place(value: str) -> dict[str, Any]:
    return {"typeAndValue": {"unionElement": "Place", "place": value}}


EVERYTHING = [
    activity("Busy", "in a meeting"),
    place("Office"),
    {"typeAndValue": {"unionElement": "Privacy", "privacy": "PrivacyQuiet"}},
    {"typeAndValue": {"unionElement": "Sphere", "sphere": "SphereWork"}},
    {
        "typeAndValue": {
            "unionElement": "Communication",
            "communication": {
                "means": [{"contact": "sip:alice-desk@example.com", "priority": 0.8,
                           "type": "Phone"}]
            },
        }
    },
    {"typeAndValue": {"unionElement": "Other", "other": {"name": "mood", "value": "calm"}}},
]


def decisions(**granted: bool) -> list[dict[str, Any]]:
    return [{"presenceAttribute": kind, "decision": value} for kind, value in granted.items()]


def seen(presence: Presence) -> list[dict[str, Any]]:
    """The attributes a watcher received, as the application's JSON without lastChange
    (the adapter stamps it), in a stable order."""
    out = []
    for item in (attribute_to_json(a) for a in presence.attributes):
        item.pop("lastChange", None)
        out.append(item)
    return ordered(out)


def ordered(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["typeAndValue"]["unionElement"])


def request_error(
    response: httpx.Response, kind: str = "serviceException"
) -> tuple[int, str, list[str]]:
    """(status, messageId, variables), checking the rest of the requestError shape."""
    body = response.json()
    assert list(body) == ["requestError"], body
    assert list(body["requestError"]) == [kind], body
    fault = body["requestError"][kind]
    assert set(fault) == {"messageId", "text", "variables"}, body
    return response.status_code, fault["messageId"], fault["variables"]


# -- waiting ----------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = WAIT
) -> T:
    """Poll ``check`` until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {result!r})")
        await asyncio.sleep(0.02)


class SipWatcher:
    """A watcher outside the adapter: our SIP user agent, talking to Kamailio directly."""

    def __init__(self, server: PresenceServer, uri: str) -> None:
        self.uri = uri
        self.events: list[UserAgentEvent] = []
        self._endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse(server.sip_uri))
        self._subscription: SubscriptionHandle | None = None

    async def __aenter__(self) -> SipWatcher:
        await self._endpoint.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._endpoint.close()

    async def subscribe(self, presentity: str) -> None:
        self._subscription = self._endpoint.subscribe(
            SipURI.parse(self.uri), SipURI.parse(presentity), on_event=self.events.append
        )
        await self._subscription.accepted

    async def unsubscribe(self) -> None:
        assert self._subscription is not None
        await self._subscription.end()

    def mark(self) -> int:
        """A position in the events: later waits look only at what comes after it."""
        return len(self.events)

    def _mine(self, since: int) -> list[UserAgentEvent]:
        assert self._subscription is not None
        return [
            e for e in self.events[since:]
            if getattr(e, "subscription_id", None) == self._subscription.id
        ]

    async def notify(
        self, state: str, since: int = 0, match: Callable[[NotifyReceived], bool] | None = None
    ) -> NotifyReceived:
        """The first NOTIFY after ``since`` in ``state`` that satisfies ``match``."""

        def wanted(e: UserAgentEvent) -> bool:
            return (
                isinstance(e, NotifyReceived)
                and e.state.state == state
                and (match is None or match(e))
            )

        async def found() -> NotifyReceived | None:
            return next((e for e in self._mine(since) if wanted(e)), None)  # type: ignore[misc]

        return await eventually(found, f"{self.uri}: a NOTIFY {state}")

    async def presence(
        self, since: int = 0, match: Callable[[Presence], bool] = lambda p: True
    ) -> Presence:
        """The first presence document after ``since`` that satisfies ``match``."""
        notify = await self.notify(
            "active", since, lambda n: bool(n.body) and match(decode(n.body))
        )
        return decode(notify.body)

    async def terminated(self) -> SubscriptionTerminated:
        async def found() -> SubscriptionTerminated | None:
            ends = [e for e in self._mine(0) if isinstance(e, SubscriptionTerminated)]
            return ends[0] if ends else None

        return await eventually(found, f"{self.uri}: the end of its subscription")


class Presentity:
    """The application acting as one presentity address, over HTTP."""

    def __init__(self, http: httpx.AsyncClient, path: str = PATHS[0]) -> None:
        self.http = http
        self.path = path

    async def publish(self, *items: dict[str, Any]) -> None:
        response = await self.http.post("/rest/presence", json={"presence": list(items)})
        assert response.status_code == 204, response.text

    async def open_subscriptions(self) -> list[dict[str, Any]]:
        response = await self.http.get(self.path, params={"status": "open"})
        assert response.status_code == 200, response.text
        return list(response.json()["result"])

    async def watchers(self) -> list[str]:
        response = await self.http.get(self.path, params={"filter": "watcher"})
        assert response.status_code == 200, response.text
        return list(response.json()["result"])

    async def authorize(self, watcher: str, **granted: bool) -> None:
        body = {"watcher": watcher, "decisions": decisions(**granted)}
        response = await self.http.put(self.path, json=body)
        assert response.status_code == 204, response.text

    async def block(self, watcher: str) -> None:
        response = await self.http.delete(f"{self.path}/{quote(watcher, safe='')}")
        assert response.status_code == 204, response.text

    async def until_asked_by(self, watcher: str) -> list[dict[str, Any]]:
        async def asked() -> list[dict[str, Any]] | None:
            found = await self.open_subscriptions()
            return found if any(s["watcher"] == watcher for s in found) else None

        return await eventually(asked, f"{watcher} among the open subscriptions")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


# -- the operations, with a watcher on the other side -----------------------------


def test_publish_reaches_a_sip_watcher_and_a_later_subset_keeps_the_rest(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    me, watcher = alice("publish"), bob("publish")

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http, PATHS[1])
            await alice_app.publish(*EVERYTHING)
            await bob_ua.subscribe(me)
            await alice_app.until_asked_by(watcher)
            await alice_app.authorize(watcher, **{k.value: True for k in AttributeType})

            first = await bob_ua.presence()
            assert seen(first) == ordered(EVERYTHING)

            mark = bob_ua.mark()
            await alice_app.publish(activity("Away"))
            later = await bob_ua.presence(
                mark, lambda p: any(a.type is AttributeType.ACTIVITY and a.value.value == "Away"
                                    for a in p.attributes)
            )
            assert seen(later) == ordered([activity("Away"), *EVERYTHING[1:]])

    run(scenario)


def test_an_outside_watcher_waits_then_sees_only_the_activity_it_was_granted(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    me, watcher = alice("authorize"), bob("authorize")

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http, PATHS[0])
            await alice_app.publish(activity("Busy"), place("Office"))
            await bob_ua.subscribe(me)
            pending = await bob_ua.notify("pending")
            assert pending.body == b""

            # It subscribed outside the adapter: no application name, all attributes.
            asked = await alice_app.until_asked_by(watcher)
            assert asked == [{"application": "", "attributes": [], "watcher": watcher}]
            assert await alice_app.watchers() == []

            await alice_app.authorize(watcher, Activity=True, Place=False)
            # Kamailio sends no watcherinfo NOTIFY for a rule change: the
            # answers must be right at once, without waiting for one.
            assert await alice_app.watchers() == [watcher]
            assert await alice_app.open_subscriptions() == []

            # The NOTIFY an XCAP change triggers carries the unfiltered document
            # (DESIGN: Kamailio applies transformations only to PUBLISH-triggered
            # and initial NOTIFYs); what the grant lets the watcher see:
            active = await bob_ua.presence()
            granted = {AttributeType.ACTIVITY: True, AttributeType.PLACE: False}
            assert seen(filter_presence(active, granted)) == [activity("Busy")]

            # A publish-triggered NOTIFY is filtered by the server itself, by the
            # rule the adapter wrote: activity, and no place.
            # The rules-change NOTIFY (the old document, unfiltered) may come
            # after the mark on a loaded machine: the one carrying Meeting counts.
            mark = bob_ua.mark()
            await alice_app.publish(activity("Meeting"), place("Home"))
            later = await bob_ua.presence(mark, lambda p: activity("Meeting") in seen(p))
            assert seen(later) == [activity("Meeting")]

    run(scenario)


def test_all_decisions_false_takes_the_watcher_off_my_watchers(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    me, watcher = alice("decline"), bob("decline")

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http, PATHS[1])
            await alice_app.publish(activity("Busy"))
            await bob_ua.subscribe(me)
            await alice_app.until_asked_by(watcher)
            await alice_app.authorize(watcher, Activity=True)
            await bob_ua.presence()
            assert await alice_app.watchers() == [watcher]

            mark = bob_ua.mark()
            await alice_app.authorize(watcher, Activity=False, Place=False)
            assert await alice_app.watchers() == []
            assert await alice_app.open_subscriptions() == []
            # Politely blocked (RFC 5025 §3.2.1): the subscription stays
            # active and is told nothing of the presentity any more.
            told = await bob_ua.notify("active", mark, lambda n: not n.body)
            assert told.body == b""

    run(scenario)


def test_a_watcher_that_unsubscribes_leaves_my_watchers(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    me, watcher = alice("leave"), bob("leave")

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http)
            await alice_app.publish(activity("Busy"))
            await bob_ua.subscribe(me)
            await alice_app.until_asked_by(watcher)
            await alice_app.authorize(watcher, Activity=True)
            assert await alice_app.watchers() == [watcher]

            await bob_ua.unsubscribe()

            async def gone() -> bool:
                return await alice_app.watchers() == []

            await eventually(gone, "the watcher off Get My Watchers")
            assert await alice_app.open_subscriptions() == []

    run(scenario)


def test_decisions_about_several_watchers_at_once_are_all_kept(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    """Concurrent updates of one pres-rules document: none may be lost (the
    bundled server ignores If-None-Match and answers 500 to concurrent writes)."""
    me = alice("crowd")
    watchers = [bob(f"crowd-{i}") for i in range(4)]

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http:
            alice_app = Presentity(http, PATHS[1])
            await alice_app.publish(activity("Busy"))
            uas = [SipWatcher(presence_server, w) for w in watchers]
            try:
                for ua in uas:
                    await ua.__aenter__()
                    await ua.subscribe(me)

                async def all_asked() -> bool:
                    asked = {s["watcher"] for s in await alice_app.open_subscriptions()}
                    return asked == set(watchers)

                await eventually(all_asked, "every watcher among the open subscriptions")
                answers = await asyncio.gather(
                    *(
                        http.put(alice_app.path,
                                 json={"watcher": w, "decisions": decisions(Activity=True)})
                        for w in watchers
                    )
                )
                assert [r.status_code for r in answers] == [204] * len(watchers), [
                    r.text for r in answers
                ]
                assert sorted(await alice_app.watchers()) == sorted(watchers)
                assert await alice_app.open_subscriptions() == []
                for ua in uas:
                    await ua.presence()
            finally:
                for ua in uas:
                    await ua.__aexit__()

    run(scenario)


@pytest.mark.parametrize(
    ("path", "watcher"),
    [
        (PATHS[0], bob("block-0")),
        # An escaped user part (RFC 3261 §19.1.2) travels percent-encoded once
        # more in the path, and must come out as it went in.
        (PATHS[1], f"sip:bob%20block-1-{RUN}@example.com"),
    ],
    ids=["plain", "escaped"],
)
def test_block_ends_the_watchers_subscription(
    adapter: AdapterProcess, presence_server: PresenceServer, path: str, watcher: str
) -> None:
    me = alice(f"block-{PATHS.index(path)}")

    async def scenario() -> None:
        async with adapter.async_client(APP, me) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http, path)
            await alice_app.publish(activity("Busy"))
            await bob_ua.subscribe(me)
            await alice_app.until_asked_by(watcher)
            await alice_app.authorize(watcher, Activity=True)
            await bob_ua.presence()
            assert await alice_app.watchers() == [watcher]

            await alice_app.block(watcher)
            ended = await bob_ua.terminated()
            assert ended.reason == "rejected"
            assert await alice_app.watchers() == []
            assert await alice_app.open_subscriptions() == []

    run(scenario)


# -- errors ---------------------------------------------------------------------------

ME = alice("errors")
KNOWN_NOBODY = f"sip:nobody-{RUN}@example.com"
GOOD_DECISIONS = decisions(Activity=True)

Case = tuple[str, str, dict[str, Any], int, str, list[str]]

BODY_CASES: list[Case] = [
    # (method, path, request options, status, messageId, variables)
    ("POST", "/rest/presence", {"content": b"{nope"}, 400, "SVC0002", ["body (not JSON)"]),
    ("POST", "/rest/presence", {"json": ["presence"]}, 400, "SVC0002",
     ["body (not a JSON object)"]),
    ("POST", "/rest/presence", {"json": {}}, 400, "SVC0002", ["presence"]),
    ("POST", "/rest/presence", {"json": {"presence": []}}, 400, "SVC0002", ["presence"]),
    ("POST", "/rest/presence", {"json": {"presence": [activity("Bogus")]}}, 400, "SVC0002",
     ["presence[0].typeAndValue.activity"]),
    ("POST", "/rest/presence",
     {"json": {"presence": [place("Home"), {"typeAndValue": {
         "unionElement": "Communication",
         "communication": {"means": [{"contact": "sip:a@example.com", "priority": 1.5,
                                      "type": "Phone"}]}}}]}},
     400, "SVC0002", ["presence[1].typeAndValue.communication.means[0].priority"]),
]


def subscription_cases(path: str) -> list[Case]:
    return [
        ("PUT", path, {"content": b"[nope"}, 400, "SVC0002", ["body (not JSON)"]),
        ("PUT", path, {"json": "watcher"}, 400, "SVC0002", ["body (not a JSON object)"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": "Activity"}},
         400, "SVC0002", ["decisions"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": []}},
         400, "SVC0002", ["decisions"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": ["Activity"]}},
         400, "SVC0002", ["decisions[0]"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": [
            {"presenceAttribute": "Activity", "decision": True},
            {"presenceAttribute": "Mood", "decision": True}]}},
         400, "SVC0002", ["decisions[1].presenceAttribute"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": [
            {"presenceAttribute": 7, "decision": True}]}},
         400, "SVC0002", ["decisions[0].presenceAttribute"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": [
            {"presenceAttribute": "Activity", "decision": "maybe"}]}},
         400, "SVC0002", ["decisions[0].decision"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": [
            {"presenceAttribute": "Activity", "decision": 1}]}},
         400, "SVC0002", ["decisions[0].decision"]),
        ("PUT", path, {"json": {"watcher": KNOWN_NOBODY, "decisions": [
            {"presenceAttribute": "Activity"}]}},
         400, "SVC0002", ["decisions[0].decision"]),
        ("PUT", path, {"json": {"watcher": "bob", "decisions": GOOD_DECISIONS}},
         400, "SVC0002", ["watcher"]),
        ("PUT", path, {"json": {"watcher": 42, "decisions": GOOD_DECISIONS}},
         400, "SVC0002", ["watcher"]),
        ("PUT", path, {"json": {"decisions": GOOD_DECISIONS}}, 400, "SVC0002", ["watcher"]),
        ("DELETE", f"{path}/bob", {}, 400, "SVC0002", ["watcher"]),
        ("DELETE", f"{path}/{quote('sip:a b@example.com', safe='')}", {}, 400, "SVC0002",
         ["watcher"]),
        ("GET", path, {"params": {"status": "closed"}}, 400, "SVC0003", ["status", "open"]),
        ("GET", path, {"params": {"filter": "watchers"}}, 400, "SVC0003", ["filter", "watcher"]),
    ]


ERROR_CASES = BODY_CASES + [c for p in PATHS for c in subscription_cases(p)]


@pytest.fixture(scope="module")
def alice_http(adapter: AdapterProcess) -> Iterator[httpx.Client]:
    with adapter.client(APP, ME) as http:
        yield http


@pytest.mark.parametrize(
    ("method", "path", "options", "status", "message_id", "variables"),
    ERROR_CASES,
    ids=[f"{c[0]} {c[1].removeprefix('/rest/presence')} {c[5]}" for c in ERROR_CASES],
)
def test_bad_input_gets_the_request_error_naming_the_part(
    alice_http: httpx.Client, method: str, path: str, options: dict[str, Any], status: int,
    message_id: str, variables: list[str],
) -> None:
    response = alice_http.request(method, path, **options)
    assert request_error(response) == (status, message_id, variables), response.text


def test_a_rejected_publish_changes_nothing(
    adapter: AdapterProcess, presence_server: PresenceServer
) -> None:
    """A publish with one bad item publishes none of it (the good ones neither)."""
    watcher = bob("errors")

    async def scenario() -> None:
        async with adapter.async_client(APP, ME) as http, SipWatcher(
            presence_server, watcher
        ) as bob_ua:
            alice_app = Presentity(http)
            await alice_app.publish(activity("Busy"))
            bad = await http.post(
                "/rest/presence", json={"presence": [place("Home"), activity("Bogus")]}
            )
            assert bad.status_code == 400, bad.text
            await bob_ua.subscribe(ME)
            await alice_app.until_asked_by(watcher)
            await alice_app.authorize(watcher, Activity=True, Place=True)
            assert seen(await bob_ua.presence()) == [activity("Busy")]

    run(scenario)


@pytest.mark.parametrize("path", ["/rest/presence", *PATHS])
def test_wrong_or_missing_credentials_get_401_with_a_basic_challenge(
    adapter: AdapterProcess, path: str
) -> None:
    for auth in [(APP, "not-the-password"), ("nobody-app", PASSWORD), None]:
        with adapter.client(auth=auth) as http:
            response = http.request("POST" if path == "/rest/presence" else "GET", path,
                                    json={"presence": [activity("Busy")]},
                                    params={"status": "open"})
        assert request_error(response, "policyException") == (
            401, "POL0001", ["authentication required"]
        ), auth
        assert response.headers["WWW-Authenticate"].startswith("Basic realm="), auth


def test_acting_as_an_address_the_account_lacks_is_a_policy_error(
    adapter: AdapterProcess,
) -> None:
    eve = f"sip:eve-{RUN}@example.com"
    with adapter.client(APP, eve) as http:
        for method, path, options in [
            ("POST", "/rest/presence", {"json": {"presence": [activity("Busy")]}}),
            ("GET", PATHS[0], {"params": {"filter": "watcher"}}),
            ("GET", PATHS[1], {"params": {"status": "open"}}),
            ("PUT", PATHS[1], {"json": {"watcher": KNOWN_NOBODY, "decisions": GOOD_DECISIONS}}),
            ("DELETE", f"{PATHS[0]}/{quote(KNOWN_NOBODY, safe='')}", {}),
        ]:
            response = http.request(method, path, **options)
            assert request_error(response, "policyException") == (
                403, "POL0001", [f"account {APP} may not act as {eve}"]
            ), (method, path)


# -- the servers behind the adapter failing --------------------------------------------

REQUEST_TIMEOUT = 2  # [sip] request_timeout of the adapter whose presence server is absent


def test_publish_answers_504_when_the_presence_server_does_not_answer(
    adapter_factory: AdapterFactory,
) -> None:
    # Nothing listens there: the PUBLISH goes unanswered.
    nowhere = f"sip:127.0.0.1:{free_port('127.0.0.1')}"
    me = alice("down")
    lonely = adapter_factory(
        [AppAccount(APP, PASSWORD, (me,))],
        healthy=False,
        sip_server=nowhere,
        settings={"sip": {"request_timeout": REQUEST_TIMEOUT}},
    )
    with lonely.client(APP) as http:
        for _ in range(2):  # unanswered, then known to be down
            started = time.monotonic()
            response = http.post("/rest/presence", json={"presence": [activity("Busy")]})
            assert time.monotonic() - started < REQUEST_TIMEOUT + 1.5
            status, message_id, (reason,) = request_error(response)
            assert (status, message_id) == (504, "SVC0001")
            assert reason in (
                f"presence server: PUBLISH failed: no answer within {REQUEST_TIMEOUT} s",
                "presence server: PUBLISH failed: presence server unreachable",
            )
        response = http.get(PATHS[1], params={"filter": "watcher"})
        assert request_error(response) == (
            504, "SVC0001", ["presence server: SUBSCRIBE failed: presence server unreachable"]
        )


def test_update_authorization_answers_502_when_xcap_is_unreachable(
    adapter_factory: AdapterFactory,
) -> None:
    closed = f"http://127.0.0.1:{free_port('127.0.0.1')}/xcap-root"
    me = alice("down")
    without_rules = adapter_factory([AppAccount(APP, PASSWORD, (me,))], xcap_root=closed)
    # The XCAP root is the operator's business: it goes to the log, not to
    # the application.
    reason = "presence rules: XCAP GET failed: XCAP server unreachable"
    with without_rules.client(APP) as http:
        response = http.put(
            PATHS[0], json={"watcher": bob("down"), "decisions": GOOD_DECISIONS}
        )
        assert request_error(response) == (502, "SVC0001", [reason])
        response = http.delete(f"{PATHS[1]}/{quote(bob('down'), safe='')}")
        assert request_error(response) == (502, "SVC0001", [reason])


def test_presentities_publishing_at_once_all_get_204(adapter: AdapterProcess) -> None:
    # The bundled sqlite-backed Kamailio answers many of a burst of concurrent
    # PUBLISHes with 500 "database is locked" (docs/kamailio.md).  The publications
    # retry with jittered backoff, and Publish waits for a retry that falls
    # within [sip] request_timeout, so the applications see 204s.
    async def scenario() -> list[int]:
        async def one(scenario: str) -> int:
            async with adapter.async_client(APP, alice(scenario)) as http:
                reply = await http.post("/rest/presence", json={"presence": [activity("Busy")]})
                return reply.status_code

        return list(await asyncio.gather(*(one(s) for s in BURST)))

    for _round in range(2):
        assert asyncio.run(scenario()) == [204] * len(BURST)
