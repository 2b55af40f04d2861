"""WatcherService with fakes at its seams: the SIP endpoint, the XCAP client, Bayeux.

The fake endpoint behaves as sip.aio.SipEndpoint does where it matters: a
subscription's handle is made before anything is answered, every event of the
subscription reaches its ``on_event`` by id — including the
SubscriptionTerminated of an initial SUBSCRIBE that was refused, which fails
``accepted`` first.  The time is a manual clock; the service's one timer is
run by hand (:meth:`World.advance`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from adapter import watch as watch_module
from adapter.notification import Criterion, Schedule
from adapter.presence_json import attribute_to_json
from adapter.store import MemoryStore
from adapter.watcher import (
    DECISIONS_TTL,
    DuplicateCorrelator,
    NoSubscription,
    NotAuthorized,
    Reference,
    UnknownCorrelator,
    WatcherService,
    decisions_ttl,
)
from adapter.xcap import CONNECTIONS, POOL_WAIT, RulesDocument, XcapError
from pidf import (
    Activity,
    AttributeType,
    Place,
    PresenceAttribute,
    PresRules,
    Sphere,
    SubHandling,
    encode,
)
from sip import NotifyReceived, SubscriptionAccepted, SubscriptionTerminated
from sip.aio import RequestFailed
from sip.headers import SubscriptionState
from tests.adapter.test_group_watch import GROUP, M0, M1, rlmi_notify

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
APP = "bob-app"
REF_CHANNEL = f"/bayeux/{APP}/subscription"
EPOCH = 1_700_000_000.0
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
A, P, PR, S = (AttributeType.ACTIVITY, AttributeType.PLACE, AttributeType.PRIVACY,
               AttributeType.SPHERE)


# -- fakes ---------------------------------------------------------------------


class FakeHandle:
    """As sip.aio.SubscriptionHandle: its futures made at once, its events to on_event."""

    def __init__(self, endpoint: FakeEndpoint, subscription_id: int,
                 on_event: Callable[[Any], None] | None) -> None:
        loop = asyncio.get_running_loop()
        self.endpoint = endpoint
        self.id = subscription_id
        self.on_event = on_event
        self.accepted: asyncio.Future[SubscriptionAccepted] = loop.create_future()
        self.ended: asyncio.Future[SubscriptionTerminated] = loop.create_future()

    def end(self) -> asyncio.Future[SubscriptionTerminated]:
        # As the endpoint: a subscription the user agent no longer has (a
        # refused one) is not ended again.
        if self.id in self.endpoint.live:
            self.endpoint.live.discard(self.id)
            self.endpoint.unsubscribed.append(self.id)
            self.endpoint.emit(SubscriptionTerminated(self.id, "unsubscribed"))
        return self.ended

    def receive(self, event: Any) -> None:
        if isinstance(event, SubscriptionAccepted) and not self.accepted.done():
            self.accepted.set_result(event)
        elif isinstance(event, SubscriptionTerminated):
            if not self.accepted.done():
                self.accepted.set_exception(RequestFailed("SUBSCRIBE", event.status, event.reason))
                self.accepted.add_done_callback(lambda f: f.exception())
            if not self.ended.done():
                self.ended.set_result(event)
        if self.on_event is not None:
            self.on_event(event)


class FakeEndpoint:
    def __init__(self) -> None:
        self.subscribed: list[tuple[str, str, int]] = []
        self.live: set[int] = set()
        self.handles: dict[int, FakeHandle] = {}
        self._next = 100
        self.refuse = 0  # how many of the next initial SUBSCRIBEs are refused
        self.unsubscribed: list[int] = []  # ended by us (Expires: 0), in order
        self.gate: asyncio.Event | None = None  # holds the 2xx back while set
        self.eventlist = False  # the 2xx says Require: eventlist (a list)
        # Per SUBSCRIBE: whether the SIP window may refuse it (a caller's) or
        # it waits its turn (a re-subscription).
        self.refusable: list[bool] = []

    def subscribe(self, subscriber: Any, target: Any, *,
                  on_event: Callable[[Any], None] | None = None,
                  eventlist: bool = False, refusable: bool = True) -> FakeHandle:
        assert eventlist  # every watch asks for a list (RFC 4662)
        self.refusable.append(refusable)
        self._next += 1
        self.subscribed.append((str(subscriber), str(target), self._next))
        self.live.add(self._next)
        handle = self.handles[self._next] = FakeHandle(self, self._next, on_event)
        asyncio.get_running_loop().create_task(self._answer(handle))
        return handle

    async def _answer(self, handle: FakeHandle) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if handle.id not in self.live:
            return
        if self.refuse:
            self.refuse -= 1
            self.live.discard(handle.id)
            self.emit(SubscriptionTerminated(handle.id, "failed", status=403))
        else:
            self.emit(SubscriptionAccepted(handle.id, 3600, self.eventlist))

    def emit(self, event: Any) -> None:
        """An event of the user agent, routed by id to its handle (as the endpoint does)."""
        handle = self.handles.get(event.subscription_id)
        if handle is None:
            return
        if isinstance(event, SubscriptionTerminated):
            del self.handles[event.subscription_id]
        handle.receive(event)

    @property
    def last_id(self) -> int:
        return self.subscribed[-1][2]


class FakeXcap:
    def __init__(self) -> None:
        self.rules = PresRules()
        self.error: XcapError | None = None
        self.reads = 0
        self.gate: asyncio.Event | None = None  # holds the answer back while set
        self.members: dict[str, PresRules] = {}  # a group's members' rules

    async def get(self, presentity: str) -> RulesDocument:
        self.reads += 1
        # The document as the server read it; the answer may lag.
        rules = self.rules if presentity == ALICE else self.members[presentity]
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return RulesDocument(rules, '"etag"')


class FakeBayeux:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def deliver(self, app_id: str, channel: str, data: Any) -> int:
        self.sent.append((app_id, channel, data))
        return 1

    def kinds(self) -> list[str]:
        return [next(iter(data)) for _, _, data in self.sent]

    def take(self) -> list[tuple[str, str, Any]]:
        out, self.sent = self.sent, []
        return out


class Clock:
    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    """A MemoryStore that keeps every record written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[tuple[str, str, Any]] = []

    def put(self, kind: str, key: str, value: Any, **options: Any) -> asyncio.Future[None]:
        self.puts.append((kind, key, value))
        return super().put(kind, key, value, **options)

    def schedule_puts(self) -> list[Any]:
        return [value for kind, _, value in self.puts if kind == "schedule"]


class World:
    def __init__(self, xcap: FakeXcap | None = None, **options: Any) -> None:
        self.sip = FakeEndpoint()
        self.xcap = xcap or FakeXcap()
        self.bayeux = FakeBayeux()
        self.clock = Clock()
        self.store = CountingStore()
        self.service = WatcherService(
            self.sip, self.xcap, self.bayeux,  # type: ignore[arg-type]
            store=self.store, clock=self.clock, **options,
        )

    async def subscribe(self, attributes: frozenset[AttributeType] = frozenset()) -> int:
        await self.service.subscribe(
            APP, BOB, ALICE, application="bob's app", attributes=attributes,
            reference=Reference("ref-1", REF_CHANNEL, "presence"),
        )
        return self.sip.last_id

    async def start(self, correlator: str, *, check_immediate: bool = False,
                    **kwargs: Any) -> bool:
        """Start Presence Notification; whether its ``result`` is empty."""
        schedule = Schedule(correlator=correlator, app_id=APP,
                            endpoint=f"/bayeux/{APP}/{correlator}", watcher=BOB,
                            presentity=ALICE, **kwargs)
        return not await self.service.start_notification(
            APP, BOB, ALICE, schedule, check_immediate=check_immediate
        )

    async def notify(self, state: str, *attributes: PresenceAttribute,
                     body: bytes | None = None, subscription_id: int | None = None) -> None:
        if body is None:
            body = encode(attributes, entity=ALICE, now=T0) if attributes else b""
        self.sip.emit(NotifyReceived(
            subscription_id or self.sip.last_id, SubscriptionState.parse(state), body,
            "application/pidf+xml" if body else None,
        ))
        await settle()

    async def opened(self) -> None:
        """The new dialog's first NOTIFY (RFC 6665 §4.2.1.2): ALICE has not
        allowed BOB yet, so a Start's baseline is that nothing may be seen."""
        await self.notify("pending;expires=3600")

    async def terminate(self, reason: str) -> None:
        self.sip.live.discard(self.sip.last_id)
        self.sip.emit(SubscriptionTerminated(self.sip.last_id, reason))
        await settle()


    async def advance(self, seconds: float) -> None:
        """The manual clock moves on; the service's timer runs at once."""
        self.clock.now += seconds
        self.service._on_timer()
        await settle()

    def watch(self, watcher: str = BOB) -> Any:
        return self.service.machine.watches[(watcher, ALICE)]


async def turns(n: int = 10) -> None:
    """Let the event loop run ``n`` turns (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def settle() -> None:
    """Run every task the service spawned until none is left."""
    for _ in range(100):
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return
        await asyncio.gather(*tasks, return_exceptions=True)
    raise AssertionError("the watcher service keeps spawning tasks")


def run(scenario: Callable[[World], Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        world = World(**options)
        try:
            await scenario(world)
            await settle()
        finally:
            await world.service.close()

    asyncio.run(main())


@pytest.fixture(autouse=True)
def no_failed_tasks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO, logger="adapter.watcher")
    yield
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


def busy(t: int = 0) -> PresenceAttribute:
    return PresenceAttribute(Activity.BUSY, datetime(2024, 5, 1, 12, 0, t, tzinfo=UTC))


def office(t: int = 0) -> PresenceAttribute:
    return PresenceAttribute(Place.OFFICE, datetime(2024, 5, 1, 12, 0, t, tzinfo=UTC))


def work(t: int = 0) -> PresenceAttribute:
    return PresenceAttribute(Sphere.SPHERE_WORK, datetime(2024, 5, 1, 12, 0, t, tzinfo=UTC))


def decisions_message(**granted: bool) -> dict[str, Any]:
    return {"notifySubscription": {"presentity": ALICE, "decisions": [
        {"presenceAttribute": name, "decision": value} for name, value in granted.items()
    ]}}


# -- notifySubscription ---------------------------------------------------------


def test_a_pending_subscription_sends_nothing() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        assert w.sip.subscribed == [(BOB, ALICE, w.sip.last_id)]
        await w.notify("pending;expires=3600")
        assert w.bayeux.sent == []
        with pytest.raises(NotAuthorized):
            w.service.presence(BOB, ALICE, frozenset())

    run(scenario)


def test_active_sends_the_decision_per_requested_attribute_from_the_rules() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True, P: True, PR: False})
        await w.subscribe(frozenset({A, P, PR}))
        await w.notify("active;expires=3600", busy())
        assert w.bayeux.sent == [(APP, REF_CHANNEL, decisions_message(
            Activity=True, Place=True, Privacy=False))]

    run(scenario)


def test_no_attributes_asked_means_a_decision_for_every_attribute() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {S: True})
        await w.subscribe()
        await w.notify("active;expires=3600")
        assert w.bayeux.sent == [(APP, REF_CHANNEL, decisions_message(
            Activity=False, Place=False, Privacy=False, Sphere=True, Communication=False,
            Other=False))]

    run(scenario)


def test_unreadable_rules_show_nothing_until_read_again_on_the_timer() -> None:
    async def scenario(w: World) -> None:
        w.xcap.error = XcapError("GET", 503, "busy")
        w.xcap.rules = PresRules().allow(BOB, {A: True, S: False})
        await w.subscribe(frozenset({A, S}))
        assert await w.start("n1", check_immediate=True)  # answered, not held up
        await w.notify("active;expires=3600", busy(), office(), work())
        assert w.bayeux.sent == [] and w.xcap.reads == 1
        # Get User Presence answers at once, and shows nothing.
        seen = await w.service.user_presence(BOB, ALICE, frozenset())
        assert seen is not None and seen.attributes == () and not seen.open
        assert w.xcap.reads == 1
        w.xcap.error = None
        await w.advance(watch_module.REREAD_DELAYS[0])
        assert w.xcap.reads == 2
        assert w.bayeux.kinds() == ["notifySubscription", "statusChanged"]
        assert w.bayeux.sent[0][2] == decisions_message(Activity=True, Sphere=False)
        changed = w.bayeux.sent[1][2]["statusChanged"]["changedAttributes"]
        assert changed == [attribute_to_json(busy())]
        seen = await w.service.user_presence(BOB, ALICE, frozenset())
        assert seen is not None and {a.type for a in seen.attributes} == {A}

    run(scenario)


@pytest.mark.parametrize("handling", [SubHandling.POLITE_BLOCK, SubHandling.CONFIRM])
def test_a_rule_that_does_not_allow_denies_everything(handling: SubHandling) -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True}).set_handling(BOB, handling)
        await w.subscribe(frozenset({A, P}))
        await w.notify("active;expires=3600", busy())
        assert w.bayeux.sent == [(APP, REF_CHANNEL, decisions_message(Activity=False,
                                                                       Place=False))]
        seen = w.service.presence(BOB, ALICE, frozenset())
        assert seen is not None and seen.attributes == () and not seen.open

    run(scenario)


def test_unchanged_decisions_are_not_sent_again() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A}))
        await w.notify("active;expires=3600", busy(0))
        await w.notify("active;expires=3600", busy(1))
        reads = w.xcap.reads
        w.service.rules_changed(ALICE)
        await settle()
        assert w.xcap.reads == reads + 1  # read again, found the same
        assert w.bayeux.kinds() == ["notifySubscription"]

    run(scenario)


def test_rules_changed_sends_new_decisions_when_they_changed() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A, P}))
        await w.notify("active;expires=3600", busy())
        w.xcap.rules = PresRules().allow(BOB, {A: True, P: True})
        w.service.rules_changed("sip:carol@example.com")  # someone else's rules
        await settle()
        w.service.rules_changed(ALICE)
        await settle()
        assert [data for _, _, data in w.bayeux.sent] == [
            decisions_message(Activity=True, Place=False),
            decisions_message(Activity=True, Place=True),
        ]

    run(scenario)


def test_rules_changed_reaches_a_watch_made_again_after_an_unsubscribe() -> None:
    # The watches are found by presentity; the index must follow a watch
    # ended and a new one made for the same watcher and presentity.
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A, P}))
        await w.notify("active;expires=3600", busy())
        await w.service.unsubscribe(BOB, ALICE)
        assert w.service.machine.by_presentity == {}  # an ended watch is not held on to
        await w.subscribe(frozenset({A, P}))
        await w.notify("active;expires=3600", busy())
        w.xcap.rules = PresRules().allow(BOB, {A: True, P: True})
        w.service.rules_changed(ALICE)
        await settle()
        assert [data for _, _, data in w.bayeux.sent] == [
            decisions_message(Activity=True, Place=False),
            decisions_message(Activity=True, Place=False),
            decisions_message(Activity=True, Place=True),
        ]

    run(scenario)


def test_a_notify_before_the_2xx_is_not_lost() -> None:
    async def scenario(w: World) -> None:
        w.sip.gate = asyncio.Event()
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        subscribing = asyncio.ensure_future(w.subscribe(frozenset({A})))
        while not w.sip.subscribed:
            await asyncio.sleep(0)
        w.sip.emit(NotifyReceived(w.sip.last_id, SubscriptionState.parse("active;expires=60"),
                                  encode([busy()], entity=ALICE, now=T0), "application/pidf+xml"))
        for _ in range(10):
            await asyncio.sleep(0)
        w.sip.gate.set()
        await subscribing
        await settle()
        assert w.bayeux.sent == [(APP, REF_CHANNEL, decisions_message(Activity=True))]
        seen = w.service.presence(BOB, ALICE, frozenset())
        assert seen is not None and seen.attributes == (busy(),)

    run(scenario)


# -- Get User Presence -----------------------------------------------------------


def test_get_user_presence_without_a_subscription() -> None:
    async def scenario(w: World) -> None:
        with pytest.raises(NoSubscription):
            w.service.presence(BOB, ALICE, frozenset())

    run(scenario)


def test_get_user_presence_is_filtered_to_asked_and_granted() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True, P: True})
        await w.subscribe()
        await w.notify("active;expires=3600", busy(), office(), work())
        everything = w.service.presence(BOB, ALICE, frozenset())
        assert everything is not None and everything.attributes == (busy(), office())
        asked = w.service.presence(BOB, ALICE, frozenset({P, S}))
        assert asked is not None and asked.attributes == (office(),)
        # The basic status comes with anything visible, as SIP watchers see it;
        # asked for nothing granted, nothing at all.
        assert asked.open
        ungranted = w.service.presence(BOB, ALICE, frozenset({S}))
        assert ungranted is not None and ungranted.attributes == () and not ungranted.open

    run(scenario)


# -- statusChanged privacy -------------------------------------------------------


def test_status_changed_only_carries_granted_attributes() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        assert await w.start("n1")
        await w.opened()
        await w.notify("active;expires=3600", busy(), office(), work())
        ((app, channel, data),) = w.bayeux.take()
        assert (app, channel) == (APP, f"/bayeux/{APP}/n1")
        assert data == {"statusChanged": {
            "correlator": "n1", "presentity": ALICE,
            "changedAttributes": [attribute_to_json(busy())],
        }}
        # A change of an attribute not granted is no change for the watcher.
        await w.notify("active;expires=3600", busy(), office(5), work(5))
        assert w.bayeux.sent == []

    run(scenario)


def test_check_immediate_sends_the_current_granted_state() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {P: True})
        await w.subscribe(frozenset({P}))
        await w.notify("active;expires=3600", busy(), office())
        w.bayeux.take()
        assert await w.start("n1", check_immediate=True, remaining=1)
        assert w.bayeux.sent == [
            (APP, f"/bayeux/{APP}/n1", {"statusChanged": {
                "correlator": "n1", "presentity": ALICE,
                "changedAttributes": [attribute_to_json(office())]}}),
            (APP, f"/bayeux/{APP}/n1", {"statusEnd": {"correlator": "n1"}}),
        ]
        assert w.sip.unsubscribed == []  # the Subscribe Presence reference still needs it

    run(scenario)


def test_a_malformed_pidf_body_is_logged_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        await w.notify("active;expires=3600", body=b"<presence><unclosed></presence>")
        await w.notify("active;expires=3600", body=b"<not-pidf xmlns='urn:x'/>")
        assert w.bayeux.sent == []
        assert w.sip.unsubscribed == []
        seen = w.service.presence(BOB, ALICE, frozenset())
        assert seen is not None and seen.attributes == (busy(),)
        # Still subscribed and delivering.
        await w.notify("active;expires=3600", busy(7))
        assert w.bayeux.kinds() == ["statusChanged"]

    run(scenario)
    assert any("unreadable PIDF" in r.getMessage() for r in caplog.records)


def test_a_malformed_body_on_activation_still_tells_the_decisions() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A}))
        await w.notify("active;expires=3600", body=b"<presence><unclosed></presence>")
        assert w.bayeux.kinds() == ["notifySubscription"]

    run(scenario)


# -- subscription endings ---------------------------------------------------------


def test_rejected_ends_with_blocked_to_every_endpoint_and_no_status_end() -> None:
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        assert await w.start("n2", deadline=EPOCH + 60)
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        await w.terminate("rejected")
        blocked = {"subscriptionEnded": {"presentity": ALICE, "reason": "Blocked"}}
        assert sorted(w.bayeux.sent) == sorted([
            (APP, REF_CHANNEL, blocked),
            (APP, f"/bayeux/{APP}/n1", blocked),
            (APP, f"/bayeux/{APP}/n2", blocked),
        ])
        assert len(w.sip.subscribed) == 1  # a block is not answered by subscribing again
        with pytest.raises(NotAuthorized):
            w.service.presence(BOB, ALICE, frozenset())
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "n1")
        # A NOTIFY straggling after the block changes nothing.
        await w.notify("active;expires=3600", busy(9))
        assert len(w.bayeux.sent) == 3

    run(scenario)


@pytest.mark.parametrize("reason", ["probation", "deactivated", "timeout", "dialog-gone"])
def test_an_unexpected_end_subscribes_again_without_a_message(
    reason: str,
) -> None:

    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        first = w.sip.last_id
        await w.terminate(reason)
        assert len(w.sip.subscribed) == 2 and w.sip.last_id != first
        assert w.sip.refusable == [True, False]
        assert w.bayeux.sent == []
        # The new subscription carries on: same decisions (not repeated), and
        # the schedule keeps going.
        await w.notify("active;expires=3600", busy(3))
        assert w.bayeux.kinds() == ["statusChanged"]
        # NOTIFYs of the old dialog are no longer ours.
        await w.notify("active;expires=3600", busy(4), subscription_id=first)
        assert len(w.bayeux.sent) == 1

    run(scenario, resubscribe_delays=(0, 0, 0))


def test_when_every_resubscribe_fails_the_application_hears_timeout_once() -> None:

    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        w.sip.refuse = 100
        await w.terminate("timeout")
        # One attempt at once, one per RESUBSCRIBE_DELAYS entry: bounded.
        assert len(w.sip.subscribed) == 1 + 1 + 3
        timeout = {"subscriptionEnded": {"presentity": ALICE, "reason": "Timeout"}}
        assert sorted(w.bayeux.sent) == sorted([
            (APP, REF_CHANNEL, timeout),
            (APP, f"/bayeux/{APP}/n1", timeout),
        ])
        with pytest.raises(NoSubscription):
            w.service.presence(BOB, ALICE, frozenset())
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "n1")

    run(scenario, resubscribe_delays=(0, 0, 0))


def test_our_own_unsubscribe_is_no_unexpected_end() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        first = w.sip.last_id
        await w.service.unsubscribe(BOB, ALICE)
        assert w.sip.unsubscribed == [first]
        assert len(w.sip.subscribed) == 1
        assert w.bayeux.sent == []
        with pytest.raises(NoSubscription):
            w.service.presence(BOB, ALICE, frozenset())

    run(scenario)


def test_ending_ones_own_subscription_forgets_its_schedules_in_the_store() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        await w.notify("active;expires=3600", busy())
        assert await w.start("n1", remaining=5)
        assert len(w.store.load("schedule")) == 1 and len(w.store.load("watch")) == 1
        await w.service.unsubscribe(BOB, ALICE)
        assert w.store.load("schedule") == {} and w.store.load("watch") == {}
        assert all("statusEnd" not in data for _, _, data in w.bayeux.sent)

    run(scenario)


def test_a_refused_subscribe_raises_and_is_not_retried_behind_the_callers_back() -> None:
    async def scenario(w: World) -> None:
        w.sip.refuse = 1
        with pytest.raises(RequestFailed):
            await w.subscribe(frozenset({A}))
        await settle()
        assert len(w.sip.subscribed) == 1
        assert w.bayeux.sent == []
        with pytest.raises(NoSubscription):
            w.service.presence(BOB, ALICE, frozenset())

    run(scenario)


def test_start_notification_reports_a_presentity_it_could_not_subscribe() -> None:
    async def scenario(w: World) -> None:
        w.sip.refuse = 1
        assert await w.start("n1") is False
        await settle()
        assert len(w.sip.subscribed) == 1
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "n1")
        assert w.bayeux.sent == []

    run(scenario)


# -- Start / End Presence Notification -------------------------------------------------


def test_a_notification_reuses_the_watchers_subscription() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        assert await w.start("n2")
        assert len(w.sip.subscribed) == 1

    run(scenario)


def test_end_notification_unsubscribes_when_nothing_else_needs_the_watch() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1")
        assert await w.start("n2")
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        await w.service.end_notification(APP, "n1")
        assert w.sip.unsubscribed == []  # n2 still needs it
        await w.service.end_notification(APP, "n2")
        assert w.sip.unsubscribed == [w.sip.last_id]
        assert w.bayeux.sent == []  # no statusEnd for End Presence Notification

    run(scenario)


def test_end_notification_keeps_a_subscription_the_watcher_subscribed() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        assert await w.start("n1")
        await w.service.end_notification(APP, "n1")
        assert w.sip.unsubscribed == []

    run(scenario)


def test_count_reached_ends_the_schedule_and_a_subscription_nothing_needs() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", remaining=2)
        await w.notify("active;expires=3600", busy(0))
        await w.notify("active;expires=3600", busy(1))
        await w.notify("active;expires=3600", busy(2))
        assert w.bayeux.kinds() == ["statusChanged", "statusChanged", "statusEnd"]
        assert w.sip.unsubscribed == [w.sip.last_id]
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "n1")

    run(scenario)


def test_duplicate_and_unknown_correlators() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1")
        with pytest.raises(DuplicateCorrelator):
            await w.start("n1")
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "nope")
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification("other-app", "n1")
        await w.service.end_notification(APP, "n1")
        with pytest.raises(UnknownCorrelator):
            await w.service.end_notification(APP, "n1")

    run(scenario)


def test_coalesced_state_is_sent_when_the_interval_ends() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", frequency=0.02, check_immediate=True)
        await w.notify("active;expires=3600", busy(0))
        w.clock.now += 0.005
        await w.notify("active;expires=3600", busy(1), office(1))
        await w.notify("active;expires=3600", busy(2), office(1))
        assert w.bayeux.kinds() == ["statusChanged"]
        await w.advance(0.015)
        assert [data["statusChanged"]["changedAttributes"] for _, _, data in w.bayeux.sent] == [
            [attribute_to_json(busy(0))],
            [attribute_to_json(busy(2)), attribute_to_json(office(1))],
        ]

    run(scenario)


def test_without_check_immediate_the_first_state_waits_for_the_end_of_the_period() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", frequency=0.02)
        await w.notify("active;expires=3600", busy(0))
        await w.notify("active;expires=3600", busy(1), office(1))
        assert w.bayeux.sent == []
        await w.advance(0.02)
        assert [data["statusChanged"]["changedAttributes"] for _, _, data in w.bayeux.sent] == [
            [attribute_to_json(busy(1)), attribute_to_json(office(1))],
        ]

    run(scenario)


def test_the_state_in_the_notify_that_follows_the_start_s_2xx_is_no_change() -> None:
    # The fake answers the SUBSCRIBE without its NOTIFY: the order a busy
    # machine may read them in, the Start begun before the state is known.
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(BOB, {A: True})
        assert await w.start("n1")
        await w.notify("active;expires=3600", busy(0))
        assert w.bayeux.sent == []
        await w.notify("active;expires=3600", busy(1))
        assert [data["statusChanged"]["changedAttributes"] for _, _, data in w.bayeux.sent] == [
            [attribute_to_json(busy(1))],
        ]

    run(scenario)


# -- going away -------------------------------------------------------------------


def test_a_notify_without_a_body_ends_what_get_user_presence_shows() -> None:
    async def scenario(w: World) -> None:
        await w.subscribe()
        await w.notify("active;expires=3600", busy(), office())
        shown = w.service.presence(BOB, ALICE, frozenset())
        assert shown is not None and shown.attributes == (busy(), office())
        await w.notify("active;expires=3600")  # the publication ended
        shown = w.service.presence(BOB, ALICE, frozenset())
        assert shown is not None and shown.attributes == () and not shown.open

    run(scenario)


def test_a_notify_without_a_body_is_told_as_withdrawals_and_unreachable() -> None:
    async def scenario(w: World) -> None:
        reachability = frozenset({Criterion.REACHABLE, Criterion.UNREACHABLE})
        assert await w.start("n1", criteria=reachability)
        await w.opened()
        await w.notify("active;expires=3600", busy(), office())
        assert w.bayeux.kinds() == ["statusChanged"]  # Reachable
        w.bayeux.take()
        await w.notify("active;expires=3600")  # UnReachable
        ((_, _, data),) = w.bayeux.take()
        entries = data["statusChanged"]["changedAttributes"]
        assert [e["typeAndValue"] for e in entries] == [
            {"unionElement": "Activity", "activity": "ActivityNone"},
            {"unionElement": "Place", "place": "PlaceNone"},
        ]
        await w.notify("active;expires=3600")  # said once
        assert w.bayeux.sent == []

    run(scenario)


def test_duration_ends_with_status_end_and_unsubscribes() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", deadline=EPOCH + 0.02)
        await w.opened()
        await w.notify("active;expires=3600", busy(0))
        await w.advance(0.02)
        assert w.bayeux.kinds() == ["statusChanged", "statusEnd"]
        assert w.sip.unsubscribed == [w.sip.last_id]

    run(scenario)


def test_an_ending_reaches_each_schedule_in_its_own_application() -> None:
    # Two application accounts may act as the same SIP address: they share the
    # watch, but each hears the ending under its own /bayeux/<appInstanceID>.
    async def scenario(w: World) -> None:
        await w.subscribe(frozenset({A}))
        other = Schedule(correlator="n9", app_id="carol-app", endpoint="/bayeux/carol-app/n9",
                         watcher=BOB, presentity=ALICE)
        assert await w.service.start_notification("carol-app", BOB, ALICE, other,
                                                  check_immediate=False) == []
        await w.notify("active;expires=3600", busy())
        w.bayeux.take()
        await w.terminate("rejected")
        blocked = {"subscriptionEnded": {"presentity": ALICE, "reason": "Blocked"}}
        assert sorted(w.bayeux.sent) == [
            (APP, REF_CHANNEL, blocked),
            ("carol-app", "/bayeux/carol-app/n9", blocked),
        ]

    run(scenario)


# -- taking NOTIFYs, writing schedules ----------------------------------------------


def test_a_notify_on_an_active_watch_is_taken_at_once_without_a_task() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1")
        await w.notify("active;expires=3600", busy(0))
        w.bayeux.take()
        tasks = len(asyncio.all_tasks())
        w.sip.emit(NotifyReceived(
            w.sip.last_id, SubscriptionState.parse("active;expires=3600"),
            encode([busy(1)], entity=ALICE, now=T0), "application/pidf+xml",
        ))
        # Delivered inside the listener call: nothing awaited, no task spawned.
        assert w.bayeux.kinds() == ["statusChanged"]
        assert len(asyncio.all_tasks()) == tasks

    run(scenario)


def test_notifies_arriving_while_the_rules_are_read_keep_their_order() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1")
        await w.opened()
        w.xcap.gate = asyncio.Event()
        # Becoming active reads the rules (held back); the next NOTIFYs come
        # meanwhile and must not overtake the first.
        for t in range(3):
            w.sip.emit(NotifyReceived(
                w.sip.last_id, SubscriptionState.parse("active;expires=3600"),
                encode([busy(t)], entity=ALICE, now=T0), "application/pidf+xml",
            ))
        await turns()
        assert w.bayeux.sent == []
        w.xcap.gate.set()
        await settle()
        assert [data["statusChanged"]["changedAttributes"] for _, _, data in w.bayeux.sent] == [
            [attribute_to_json(busy(i))] for i in range(3)
        ]
        # Later ones, with nothing queued and fresh decisions, are taken at once.
        w.bayeux.take()
        w.sip.emit(NotifyReceived(
            w.sip.last_id, SubscriptionState.parse("active;expires=3600"),
            encode([busy(3)], entity=ALICE, now=T0), "application/pidf+xml",
        ))
        assert w.bayeux.kinds() == ["statusChanged"]

    run(scenario)


def test_a_schedules_progress_is_written_once_per_save_delay() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", remaining=10)
        await w.opened()
        assert [p["remaining"] for p in w.store.schedule_puts()] == [10]  # before the 201
        for t in range(4):
            await w.notify("active;expires=3600", busy(t))
        assert w.bayeux.kinds() == ["statusChanged"] * 4
        assert len(w.store.schedule_puts()) == 1  # not yet: within the delay
        await w.advance(0.1)
        assert [p["remaining"] for p in w.store.schedule_puts()] == [10, 6]
        assert w.store.load("schedule")[next(iter(w.store.load("schedule")))]["sent"] == [
            attribute_to_json(busy(3))
        ]

    run(scenario, schedule_save_delay=0.1)


def test_close_writes_the_progress_not_yet_written() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", remaining=10)
        await w.opened()
        await w.notify("active;expires=3600", busy(0))
        await w.notify("active;expires=3600", busy(1))
        await w.service.close()
        (record,) = w.store.load("schedule").values()
        assert record["remaining"] == 8

    run(scenario, schedule_save_delay=60)


def test_an_ended_schedule_is_not_written_back_after_its_deletion() -> None:
    async def scenario(w: World) -> None:
        assert await w.start("n1", remaining=3)
        await w.opened()
        await w.notify("active;expires=3600", busy(0))  # progress due in 0.05 s
        await w.notify("active;expires=3600", busy(1))
        await w.notify("active;expires=3600", busy(2))  # the last: statusEnd
        assert w.bayeux.kinds() == ["statusChanged"] * 3 + ["statusEnd"]
        await w.advance(0.05)
        assert w.store.load("schedule") == {}
        assert len(w.store.schedule_puts()) == 1  # only the one before the 201

    run(scenario, schedule_save_delay=0.05)


def test_many_schedules_due_are_written_a_chunk_per_loop_turn() -> None:
    async def scenario(w: World) -> None:
        for n in range(5):
            assert await w.start(f"n{n}", remaining=10)
        await w.opened()
        await w.notify("active;expires=3600", busy(0))
        assert w.bayeux.kinds() == ["statusChanged"] * 5
        # One ends while the others wait to be written: it is not written back.
        await w.service.end_notification(APP, "n4")
        turns = 0
        written: list[tuple[int, str]] = []  # (loop turn, correlator)
        put = w.store.put

        def spy(kind: str, key: str, value: Any, **options: Any) -> asyncio.Future[None]:
            written.append((turns, value["correlator"]))
            return put(kind, key, value, **options)

        w.store.put = spy  # type: ignore[method-assign]
        w.clock.now += 0.05  # the progress is due: the timer writes the first chunk
        w.service._on_timer()
        for _ in range(10):
            turns += 1
            await asyncio.sleep(0)  # one loop turn
        chunks: dict[int, list[str]] = {}
        for turn, correlator in written:
            chunks.setdefault(turn, []).append(correlator)
        assert list(chunks.values()) == [["n0", "n1"], ["n2", "n3"]]
        await settle()
        assert {r["correlator"]: r["remaining"] for r in w.store.load("schedule").values()} == {
            "n0": 9, "n1": 9, "n2": 9, "n3": 9
        }

    run(scenario, schedule_save_delay=0.05, save_chunk=2)


# -- one read of a presentity's rules for all its watches --------------------------

WATCHERS = [f"sip:w{i}@example.com" for i in range(10)]


async def ten_active_watchers(w: World) -> list[int]:
    """Ten watchers of ALICE, each allowed Activity, all active with their decisions."""
    rules = PresRules()
    for watcher in WATCHERS:
        rules = rules.allow(watcher, {A: True})
    w.xcap.rules = rules
    ids = []
    for i, watcher in enumerate(WATCHERS):
        await w.service.subscribe(
            APP, watcher, ALICE, application="app", attributes=frozenset({A}),
            reference=Reference(f"ref-{i}", REF_CHANNEL, "presence"),
        )
        ids.append(w.sip.last_id)
        await w.notify("active;expires=3600", busy(), subscription_id=ids[-1])
    return ids


def age_decisions(w: World) -> None:
    """The decisions, and the rules read last, become older than the TTL."""
    w.clock.now += DECISIONS_TTL + 1


def test_decisions_that_aged_are_read_again_once_for_all_watchers_of_a_presentity() -> None:
    async def scenario(w: World) -> None:
        ids = await ten_active_watchers(w)
        # The first activation reads; the others, within the age limit of that
        # read and allowed by it, take it.
        assert w.xcap.reads == 1
        w.bayeux.take()
        age_decisions(w)
        w.xcap.gate = asyncio.Event()  # the read takes a while
        for sid in ids:
            w.sip.emit(NotifyReceived(
                sid, SubscriptionState.parse("active;expires=3600"),
                encode([busy(1)], entity=ALICE, now=T0), "application/pidf+xml",
            ))
        await turns()
        # The NOTIFYs did not wait for it: taken under the decisions held.
        for watcher in WATCHERS:
            seen = w.service.presence(watcher, ALICE, frozenset())
            assert seen is not None and seen.get(A) == busy(1)
        assert w.xcap.reads == 2  # one read for the ten, under way
        assert not any(w.service.machine.watches[(v, ALICE)].decisions_fresh(w.clock.now)
                       for v in WATCHERS)
        w.xcap.gate.set()
        await settle()
        assert w.xcap.reads == 2
        assert all(w.service.machine.watches[(v, ALICE)].decisions_fresh(w.clock.now)
                   for v in WATCHERS)
        assert w.bayeux.sent == []  # the same decisions are not told again
        # One watch's decisions aged alone: the read of the others, within
        # the TTL, serves it.
        w.service.machine.watches[(WATCHERS[0], ALICE)].read_at = w.clock.now - 1000
        await w.notify("active;expires=3600", busy(2), subscription_id=ids[0])
        await settle()
        assert w.xcap.reads == 2
        assert w.service.machine.watches[(WATCHERS[0], ALICE)].decisions_fresh(w.clock.now)

    run(scenario)


def test_an_activation_takes_a_read_within_the_age_limit_only_if_it_allows_the_watcher() -> None:
    # w0 and w1 were allowed when the rules were read; w2 was not (allowed
    # since, elsewhere, which is why the server activates it): its decisions
    # need a read begun after its activation.  Past the age limit, so does w3's.
    async def scenario(w: World) -> None:
        w.xcap.rules = PresRules().allow(WATCHERS[0], {A: True}).allow(WATCHERS[1], {A: True})
        for i in range(3):
            if i == 2:
                w.xcap.rules = w.xcap.rules.allow(WATCHERS[2], {A: True})
            await w.service.subscribe(
                APP, WATCHERS[i], ALICE, application="app", attributes=frozenset({A}),
                reference=Reference(f"ref-{i}", REF_CHANNEL, "presence"),
            )
            await w.notify("active;expires=3600", busy(), subscription_id=w.sip.last_id)
        assert w.xcap.reads == 2
        told = [data["notifySubscription"]["decisions"] for _, _, data in w.bayeux.take()
                if "notifySubscription" in data]
        assert told == [[{"presenceAttribute": A.value, "decision": True}]] * 3
        w.xcap.rules = w.xcap.rules.allow(WATCHERS[3], {A: True})
        age_decisions(w)
        await w.service.subscribe(
            APP, WATCHERS[3], ALICE, application="app", attributes=frozenset({A}),
            reference=Reference("ref-3", REF_CHANNEL, "presence"),
        )
        await w.notify("active;expires=3600", busy(), subscription_id=w.sip.last_id)
        assert w.xcap.reads == 3

    run(scenario)


def test_the_age_limit_of_decisions_is_spread_over_presentities() -> None:
    # Watches started together must not all read their rules again together.
    limits = [decisions_ttl(f"sip:p{i}@example.com") for i in range(1_000)]
    assert all(DECISIONS_TTL / 2 <= limit <= DECISIONS_TTL for limit in limits)
    assert min(limits) < 0.55 * DECISIONS_TTL and max(limits) > 0.95 * DECISIONS_TTL
    assert len({round(limit, 3) for limit in limits}) > 500
    assert decisions_ttl(ALICE) == decisions_ttl("".join(ALICE))  # not by object: by address


def test_aged_decisions_read_again_tell_the_application_what_changed() -> None:
    # The presentity withdrew Activity from w0 by another way than this
    # adapter (no rules_changed): the revalidation finds it out, tells the
    # reference, and the next NOTIFY shows w0 nothing of it.
    async def scenario(w: World) -> None:
        ids = await ten_active_watchers(w)
        w.bayeux.take()
        age_decisions(w)
        w.xcap.rules = w.xcap.rules.allow(WATCHERS[0], {A: False})
        await w.notify("active;expires=3600", busy(1), subscription_id=ids[0])
        await settle()
        told = w.bayeux.take()
        assert [data["notifySubscription"]["decisions"] for _, _, data in told] == [
            [{"presenceAttribute": A.value, "decision": False}]
        ]
        await w.notify("active;expires=3600", busy(2), subscription_id=ids[0])
        seen = w.service.presence(WATCHERS[0], ALICE, frozenset())
        assert seen is None or seen.get(A) is None

    run(scenario)


def test_a_notify_that_repeats_the_state_does_not_read_aged_decisions_again() -> None:
    # The NOTIFY answering a refresh repeats the state held: nothing is
    # delivered, so the aged decisions need no read (one per refresh cost the
    # adapter more than the refresh itself).  A change does read them.
    async def scenario(w: World) -> None:
        ids = await ten_active_watchers(w)
        reads = w.xcap.reads
        age_decisions(w)
        await w.notify("active;expires=3600", busy(), subscription_id=ids[0])
        await settle()
        assert w.xcap.reads == reads
        assert not w.service.machine.watches[(WATCHERS[0], ALICE)].decisions_fresh(w.clock.now)
        await w.notify("active;expires=3600", busy(1), subscription_id=ids[0])
        await settle()
        assert w.xcap.reads == reads + 1
        assert w.service.machine.watches[(WATCHERS[0], ALICE)].decisions_fresh(w.clock.now)

    run(scenario)


def test_the_same_pidf_body_again_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    real = watch_module.decode

    def counting(body: bytes) -> Any:
        decoded.append(body)
        return real(body)

    monkeypatch.setattr(watch_module, "decode", counting)

    async def scenario(w: World) -> None:
        ids = await ten_active_watchers(w)
        decoded.clear()
        same = encode([busy()], entity=ALICE, now=T0)
        for _ in range(3):  # as the NOTIFYs answering refreshes bring it
            w.sip.emit(NotifyReceived(
                ids[0], SubscriptionState.parse("active;expires=3600"), bytes(same),
                "application/pidf+xml",
            ))
        await settle()
        assert decoded == []
        await w.notify("active;expires=3600", busy(1), subscription_id=ids[0])
        assert len(decoded) == 1
        seen = w.service.presence(WATCHERS[0], ALICE, frozenset())
        assert seen is not None and seen.get(A) == busy(1)
        # Another watch of the same presentity given the same body shares the
        # document decoded for the first; a different body is decoded.
        await w.notify("active;expires=3600", busy(1), subscription_id=ids[1])
        assert len(decoded) == 1
        watches = w.service.machine.watches
        first, second = watches[(WATCHERS[0], ALICE)], watches[(WATCHERS[1], ALICE)]
        assert second.presence is first.presence
        await w.notify("active;expires=3600", busy(2), subscription_id=ids[1])
        assert len(decoded) == 2
        assert second.presence is not first.presence
        assert first.presence is not None and first.presence.get(A) == busy(1)

    run(scenario)


def test_a_change_made_here_is_not_hidden_by_a_read_begun_before_it() -> None:
    async def scenario(w: World) -> None:
        ids = await ten_active_watchers(w)
        reads = w.xcap.reads
        w.bayeux.take()
        age_decisions(w)
        w.xcap.gate = asyncio.Event()
        w.sip.emit(NotifyReceived(
            ids[0], SubscriptionState.parse("active;expires=3600"),
            encode([busy(1)], entity=ALICE, now=T0), "application/pidf+xml",
        ))
        await turns()  # that read is under way, held back ...
        # ... when this adapter withdraws Activity from every watcher.
        withdrawn = PresRules()
        for watcher in WATCHERS:
            withdrawn = withdrawn.allow(watcher, {A: False})
        w.xcap.rules = withdrawn
        w.service.rules_changed(ALICE)
        w.xcap.gate.set()
        await settle()
        assert w.xcap.reads > reads + 1  # the read begun before the change was not enough
        for watcher in WATCHERS:
            assert w.service.machine.watches[(watcher, ALICE)].granted == frozenset()
        for watcher in WATCHERS:
            seen = w.service.presence(watcher, ALICE, frozenset())
            assert seen is not None and seen.get(A) is None

    run(scenario)


def test_start_on_a_group_waits_for_its_state_and_lists_the_members_not_active() -> None:
    async def scenario(w: World) -> None:
        w.sip.eventlist = True
        w.xcap.members = {M0: PresRules().allow(BOB, {AttributeType.ACTIVITY: True})}
        schedule = Schedule(correlator="g1", app_id=APP, endpoint=f"/bayeux/{APP}/g1",
                            watcher=BOB, presentity=GROUP)
        start = asyncio.create_task(
            w.service.start_notification(APP, BOB, GROUP, schedule, check_immediate=True)
        )
        await turns()
        assert not start.done()  # the list's first full state is awaited
        sid = w.sip.last_id
        w.sip.emit(rlmi_notify(sid, 1, True, {M0: None, M1: None}))
        await turns()
        assert not start.done()  # and its members' states, for a while
        busy = PresenceAttribute(Activity.BUSY, T0)
        w.sip.emit(rlmi_notify(sid, 2, False, {M0: (busy,)}))
        assert await start == [M1]  # m1 never got a state: not subscribed
        assert w.bayeux.sent == [(APP, f"/bayeux/{APP}/g1", {"statusChanged": {
            "correlator": "g1", "presentity": M0, "changedAttributes": [attribute_to_json(busy)],
        }})]
        assert w.service.machine.watches[(BOB, GROUP)].is_list

    run(scenario, list_settle=0.05)


def test_held_watches_keep_no_task_of_their_own() -> None:
    async def scenario(w: World) -> None:
        await ten_active_watchers(w)
        for _ in range(10):  # what the calls started has run its course
            await asyncio.sleep(0)
        # Ten held subscriptions: no task waits for any of them (their
        # timers are the service's one Alarm, their events come by callback).
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert all(w.service.machine.watches[(watcher, ALICE)].held is None
                   for watcher in WATCHERS)

    run(scenario)


class CountingXcap(FakeXcap):
    """Each presentity's rules allow BOB; counts the reads under way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.under_way = 0
        self.most = 0
        self.read: list[str] = []

    async def get(self, presentity: str) -> RulesDocument:
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        try:
            if self.gate is not None:
                await self.gate.wait()
            self.read.append(presentity)
            if self.error is not None:
                raise self.error
            return RulesDocument(PresRules().allow(BOB, {A: True}), '"etag"')
        finally:
            self.under_way -= 1


PRESENTITIES = [f"sip:p{i}@example.com" for i in range(3 * CONNECTIONS + 5)]


async def activate_many(w: World) -> dict[str, int]:
    """BOB watches every presentity of PRESENTITIES; each becomes active (a read each)."""
    ids = {}
    for presentity in PRESENTITIES:
        await w.service.subscribe(APP, BOB, presentity, application="bob's app",
                                  attributes=frozenset(),
                                  reference=Reference(f"r-{presentity}", REF_CHANNEL, "p"))
        ids[presentity] = w.sip.last_id
    for presentity, sid in ids.items():
        w.sip.emit(NotifyReceived(
            sid, SubscriptionState.parse("active;expires=3600"),
            encode([busy(1)], entity=presentity, now=T0), "application/pidf+xml",
        ))
    return ids


def test_rules_reads_are_taken_by_as_many_readers_as_connections_and_none_is_lost() -> None:
    async def scenario(w: World) -> None:
        w.xcap.gate = asyncio.Event()
        await activate_many(w)
        await turns()
        # A read per presentity asked for; only CONNECTIONS of them under way,
        # each in one of CONNECTIONS tasks (not a task per read waiting its turn).
        assert w.xcap.under_way == CONNECTIONS
        assert len(w.service._rules_reads) == len(PRESENTITIES) - CONNECTIONS
        assert len(w.service._tasks) == CONNECTIONS
        w.xcap.gate.set()
        await settle()
        assert w.xcap.most == CONNECTIONS
        assert sorted(w.xcap.read) == sorted(PRESENTITIES)  # every one, once
        assert w.service._readers == 0 and not w.service._rules_reads
        for presentity in PRESENTITIES:  # and each watch got its decisions
            seen = w.service.presence(BOB, presentity, frozenset())
            assert seen is not None and seen.get(A) == busy(1)

    run(scenario, xcap=CountingXcap())  # type: ignore[arg-type]


def test_a_read_waiting_its_turn_serves_a_change_made_meanwhile() -> None:
    async def scenario(w: World) -> None:
        w.xcap.gate = asyncio.Event()
        await activate_many(w)
        await turns()
        queued = PRESENTITIES[-1]
        w.service.rules_changed(queued)  # its read is asked for, not begun
        w.xcap.gate.set()
        await settle()
        assert sorted(w.xcap.read) == sorted(PRESENTITIES)  # once each: no read for the change
        seen = w.service.presence(BOB, queued, frozenset())
        assert seen is not None and seen.get(A) == busy(1)

    run(scenario, xcap=CountingXcap())  # type: ignore[arg-type]


def test_rules_reads_that_waited_their_turn_too_long_fail_and_are_read_again() -> None:
    async def scenario(w: World) -> None:
        w.xcap.gate = asyncio.Event()
        await activate_many(w)
        await turns()
        assert w.xcap.under_way == CONNECTIONS
        # The reads under way take longer than a read may wait for its turn.
        w.clock.now += POOL_WAIT
        w.xcap.gate.set()
        await settle()
        # The CONNECTIONS under way were read; those queued behind failed as
        # not read, all in one go (none sent), and their watches show nothing yet.
        assert sorted(w.xcap.read) == sorted(PRESENTITIES[:CONNECTIONS])
        assert not w.service._rules_reads and w.service._readers == 0
        for presentity in PRESENTITIES[CONNECTIONS:]:
            seen = w.service.presence(BOB, presentity, frozenset())
            assert seen is not None and seen.attributes == ()
        # Their back-off ends: they are read again, and show what was held.
        await w.advance(watch_module.REREAD_DELAYS[0])
        await settle()
        assert sorted(w.xcap.read) == sorted(PRESENTITIES)
        for presentity in PRESENTITIES:
            seen = w.service.presence(BOB, presentity, frozenset())
            assert seen is not None and seen.get(A) == busy(1)

    run(scenario, xcap=CountingXcap())  # type: ignore[arg-type]

