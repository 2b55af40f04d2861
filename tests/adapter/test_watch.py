"""WatchMachine alone: events and ``now`` in, actions out; a manual clock, no event loop."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from adapter.notification import Schedule
from adapter.presence_json import attribute_to_json
from adapter.watch import (
    HELD_LIMIT,
    REREAD_DELAYS,
    Deliver,
    Dialog,
    ReadRules,
    Reference,
    SaveProgress,
    Settled,
    Subscribe,
    Unsubscribe,
    Watch,
    WatchAction,
    WatchMachine,
    WatchState,
    _Step,
    _step,
    shared_decisions,
)
from adapter.xcap import XcapError
from pidf import Activity, AttributeType, Place, PresenceAttribute, PresRules, encode
from sip import NotifyReceived, SubscriptionTerminated
from sip.errors import LocalProtocolError
from sip.headers import SubscriptionState

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
APP = "bob-app"
REF = f"/bayeux/{APP}/subscription"
NOW = 1_700_000_000.0
A, P = AttributeType.ACTIVITY, AttributeType.PLACE
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def busy(t: int = 0) -> PresenceAttribute:
    return PresenceAttribute(Activity.BUSY, datetime(2024, 5, 1, 12, 0, t, tzinfo=UTC))


def office(t: int = 0) -> PresenceAttribute:
    return PresenceAttribute(Place.OFFICE, datetime(2024, 5, 1, 12, 0, t, tzinfo=UTC))


def notify(sid: int, state: str, *attributes: PresenceAttribute) -> NotifyReceived:
    body = encode(attributes, entity=ALICE, now=T0) if attributes else b""
    return NotifyReceived(sid, SubscriptionState.parse(state), body,
                          "application/pidf+xml" if body else None)


def of(kind: type, actions: list[WatchAction]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def kinds(actions: list[WatchAction]) -> list[str]:
    return [next(iter(a.data)) for a in of(Deliver, actions)]


class Scene:
    """One machine and one watch of BOB on ALICE, subscribed under id 7."""

    def __init__(self, **options: Any) -> None:
        self.now = NOW
        self.machine = WatchMachine(**options)
        self.watch, _ = self.machine.subscribe(
            APP, BOB, ALICE, "app", frozenset({A}), Reference("r1", REF)
        )
        self.subscribe(7)

    def subscribe(self, sid: int) -> None:
        actions = self.machine.ensure_subscribed(self.watch)
        assert of(Subscribe, actions) == [Subscribe(self.watch)]
        self.machine.subscription_sent(self.watch, sid)
        self.machine.subscription_accepted(self.watch, sid)

    def notify(self, state: str, *attributes: PresenceAttribute,
               sid: int = 7) -> list[WatchAction]:
        return self.machine.notify(self.watch, notify(sid, state, *attributes), self.now)

    def opened(self) -> None:
        """The dialog's first NOTIFY (RFC 6665 §4.2.1.2): ALICE has not allowed BOB yet."""
        assert self.notify("pending;expires=60") == []

    def terminate(self, reason: str, sid: int = 7, **kwargs: Any) -> list[WatchAction]:
        event = SubscriptionTerminated(sid, reason, **kwargs)
        return self.machine.terminated(self.watch, event, self.now)

    def schedule(self, correlator: str, **kwargs: Any) -> Schedule:
        schedule = Schedule(correlator, APP, f"/bayeux/{APP}/{correlator}", BOB, ALICE, **kwargs)
        self.machine.add_schedule(self.watch, schedule)
        self.machine.start_schedule(self.watch, schedule, check_immediate=False, now=self.now)
        return schedule

    def read(self, actions: list[WatchAction], rules: PresRules) -> list[WatchAction]:
        (read,) = of(ReadRules, actions)
        return self.machine.rules_read(read.read, rules, self.now)


def test_notifies_while_the_rules_are_read_wait_and_keep_their_order() -> None:
    scene = Scene()
    scene.opened()
    scene.schedule("n1")
    activation = scene.notify("active;expires=60", busy(0))
    assert kinds(activation) == []  # nothing offered before the decisions
    assert scene.watch.waiting and scene.watch.state is WatchState.ACTIVE
    assert scene.notify("active;expires=60", busy(1)) == []  # held
    assert scene.notify("active;expires=60", busy(2)) == []
    actions = scene.read(activation, PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription"] + ["statusChanged"] * 3
    changed = [a.data["statusChanged"]["changedAttributes"] for a in of(Deliver, actions)[1:]]
    assert changed == [[attribute_to_json(busy(t))] for t in range(3)]
    assert of(Settled, actions) == [Settled(scene.watch)]
    # Decisions fresh: the next one is taken at once, without a read.
    following = scene.notify("active;expires=60", busy(3))
    assert kinds(following) == ["statusChanged"] and of(ReadRules, following) == []


def test_a_change_made_here_during_a_read_needs_a_read_begun_after_it() -> None:
    scene = Scene()
    activation = scene.notify("active;expires=60", busy())
    (asked,) = of(ReadRules, activation)
    first = scene.machine.read_begun(asked.read, scene.now)
    changed = scene.machine.rules_changed(ALICE, scene.now)
    (second,) = of(ReadRules, changed)
    assert second.read.serial > first.serial
    # The first read lands with the grant the change withdrew: not taken.
    landed = scene.machine.rules_read(first, PresRules().allow(BOB, {A: True}), scene.now)
    assert kinds(landed) == [] and scene.watch.waiting
    done = scene.machine.rules_read(second.read, PresRules().allow(BOB, {A: False}), scene.now)
    assert [a.data for a in of(Deliver, done)] == [{"notifySubscription": {
        "presentity": ALICE, "decisions": [{"presenceAttribute": "Activity", "decision": False}],
    }}]
    assert scene.watch.granted == frozenset()


def test_a_change_made_here_while_the_read_waits_its_turn_is_served_by_it() -> None:
    scene = Scene()
    (asked,) = of(ReadRules, scene.notify("active;expires=60", busy()))
    # The read has not begun: whatever it reads is newer than the change.
    assert of(ReadRules, scene.machine.rules_changed(ALICE, scene.now)) == []
    read = scene.machine.read_begun(asked.read, scene.now + 1)
    done = scene.machine.rules_read(read, PresRules().allow(BOB, {A: False}), scene.now + 1)
    assert of(ReadRules, done) == [] and not scene.watch.waiting
    assert [a.data for a in of(Deliver, done)] == [{"notifySubscription": {
        "presentity": ALICE, "decisions": [{"presenceAttribute": "Activity", "decision": False}],
    }}]


def test_activations_while_the_read_waits_its_turn_take_that_one_read() -> None:
    # The rules do not name the watchers (a rule for them written after the
    # read began would be missed): only a read begun after an activation
    # serves it, and one waiting its turn begins after all of them.
    machine = WatchMachine()
    watchers = [f"sip:w{k}@example.com" for k in range(5)]
    reads = []
    for sid, watcher in enumerate(watchers, start=1):
        watch, _ = machine.subscribe(APP, watcher, ALICE, "app", frozenset({A}),
                                     Reference(f"r{sid}", REF))
        machine.ensure_subscribed(watch)
        machine.subscription_sent(watch, sid)
        machine.subscription_accepted(watch, sid)
        reads += of(ReadRules, machine.notify(watch, notify(sid, "active;expires=60", busy()),
                                              NOW + sid))
    assert len(reads) == 1
    read = machine.read_begun(reads[0].read, NOW + 10)
    done = machine.rules_read(read, PresRules(), NOW + 10)
    assert of(ReadRules, done) == []
    assert len(of(Settled, done)) == len(watchers)
    assert all(machine.watches[(w, ALICE)].granted == frozenset({A}) for w in watchers)


def test_aged_decisions_are_read_beside_a_changing_notify_not_before_it() -> None:
    scene = Scene()
    scene.schedule("n1")
    scene.read(scene.notify("active;expires=60", busy(0)), PresRules().allow(BOB, {A: True}))
    scene.now += 31  # older than any presentity's age limit
    same = scene.notify("active;expires=60", busy(0))
    assert same == []  # a refresh's NOTIFY repeats the state: no read
    changing = scene.notify("active;expires=60", busy(1))
    assert kinds(changing) == ["statusChanged"] and len(of(ReadRules, changing)) == 1
    assert scene.watch.revalidating and not scene.watch.waiting


def test_a_refresh_s_notify_sweeps_rules_no_watch_may_use_any_more() -> None:
    # The rules name every watcher of the presentity; once the decisions are
    # taken and aged, the document is of no use, and held subscriptions must
    # not keep it: a refresh's NOTIFY (every held subscription gets them)
    # sweeps it even when no read comes any more.
    scene = Scene()
    scene.read(scene.notify("active;expires=60", busy(0)), PresRules().allow(BOB, {A: True}))
    assert len(scene.machine.rules) == 1
    scene.now += 61
    assert scene.notify("active;expires=60", busy(0)) == []  # the refresh's repeat: no read
    assert len(scene.machine.rules) == 0
    assert scene.watch.granted == frozenset({A})  # the decisions are the watch's own


BUSY = XcapError("GET", 503, "busy")


def test_a_failed_first_read_shows_nothing_and_holds_what_comes() -> None:
    scene = Scene()
    scene.schedule("n1")
    activation = scene.notify("active;expires=60", busy(0))
    (read,) = of(ReadRules, activation)
    failed = scene.machine.rules_failed(read.read, BUSY, scene.now)
    # Nothing granted, nothing told; whoever awaits the read is woken.
    assert kinds(failed) == [] and of(Settled, failed) == [Settled(scene.watch)]
    assert scene.watch.granted == frozenset() and scene.watch.decisions is None
    assert scene.watch.waiting and scene.machine.held_unread(scene.watch)
    seen = scene.machine.presence(BOB, ALICE, frozenset())
    assert seen is not None and seen.attributes == () and not seen.open
    # What comes meanwhile is held, and asks for no read of its own.
    assert scene.notify("active;expires=60", busy(1)) == []


def test_the_timer_reads_again_and_the_held_state_comes_filtered_in_order() -> None:
    scene = Scene()
    scene.machine.subscribe(APP, BOB, ALICE, "app", frozenset({A, P}), Reference("r1", REF))
    scene.opened()
    scene.schedule("n1")
    activation = scene.notify("active;expires=60", busy(0), office())
    (read,) = of(ReadRules, activation)
    scene.machine.rules_failed(read.read, BUSY, scene.now)
    assert scene.notify("active;expires=60", busy(1), office()) == []
    deadline = scene.machine.get_timer()
    assert deadline == scene.now + REREAD_DELAYS[0]
    assert scene.machine.handle_timer(deadline - 0.01) == []
    scene.now = deadline
    actions = scene.machine.handle_timer(scene.now)  # no NOTIFY needed
    done = scene.read(actions, PresRules().allow(BOB, {A: True, P: False}))
    assert kinds(done) == ["notifySubscription", "statusChanged", "statusChanged"]
    assert of(Deliver, done)[0].data["notifySubscription"]["decisions"] == [
        {"presenceAttribute": "Activity", "decision": True},
        {"presenceAttribute": "Place", "decision": False},
    ]
    changed = [a.data["statusChanged"]["changedAttributes"] for a in of(Deliver, done)[1:]]
    assert changed == [[attribute_to_json(busy(0))], [attribute_to_json(busy(1))]]
    assert not scene.watch.waiting and not scene.machine.held_unread(scene.watch)
    seen = scene.machine.presence(BOB, ALICE, frozenset())
    assert seen is not None and {a.type for a in seen.attributes} == {A}


class Taken:
    """Counts the NOTIFYs a machine takes in through its general path."""

    def __init__(self, machine: WatchMachine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        general = machine._take_notify

        def counted(*args: Any) -> None:
            self.count += 1
            general(*args)

        monkeypatch.setattr(machine, "_take_notify", counted)


def settled_scene(monkeypatch: pytest.MonkeyPatch) -> tuple[Scene, Taken]:
    """An active watch with a schedule, its decisions read and told, busy(0) offered."""
    scene = Scene()
    scene.opened()
    scene.schedule("n1")
    actions = scene.read(scene.notify("active;expires=60", busy(0)),
                         PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription", "statusChanged"]
    return scene, Taken(scene.machine, monkeypatch)


def test_a_notify_repeating_the_offered_state_is_not_taken_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene, taken = settled_scene(monkeypatch)
    for _ in range(3):
        scene.now += 20
        assert scene.notify("active;expires=60", busy(0)) == []
    assert taken.count == 0
    # Still the same watch: the next change is delivered.
    assert kinds(scene.notify("active;expires=60", busy(1))) == ["statusChanged"]
    assert taken.count == 1


def test_a_notify_with_another_document_or_state_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene, taken = settled_scene(monkeypatch)
    assert kinds(scene.notify("active;expires=60", busy(1))) == ["statusChanged"]
    assert scene.notify("pending;expires=60") == []
    assert scene.watch.state is WatchState.PENDING and taken.count == 2
    # Active again with the document offered before the pending: an
    # activation, taken in full.
    scene.notify("active;expires=60", busy(1))
    assert taken.count == 3 and scene.watch.state is WatchState.ACTIVE
    assert scene.notify("terminated;reason=deactivated") == []
    assert taken.count == 4


def test_a_repeated_notify_is_taken_when_the_decisions_changed_since_the_offer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene, taken = settled_scene(monkeypatch)
    # Decisions replaced without an offer (the watch's decisions are never
    # changed in place): the repeat tells them.
    scene.watch.decisions = {A: False}
    assert kinds(scene.notify("active;expires=60", busy(0))) == ["notifySubscription"]
    assert taken.count == 1
    assert scene.notify("active;expires=60", busy(0)) == []  # now settled again
    assert taken.count == 1


def test_a_repeated_notify_is_taken_while_the_decisions_are_withheld_or_unsettled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scene, taken = settled_scene(monkeypatch)
    scene.watch.withheld = True
    scene.notify("active;expires=60", busy(0))
    assert taken.count == 1
    scene.watch.withheld = False
    scene.watch.stale_after = scene.machine.rules.mark()
    scene.notify("active;expires=60", busy(0))
    assert taken.count == 2


def test_a_repeated_empty_notify_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # No body: nothing published (a fresh empty state each time), never a repeat.
    scene, taken = settled_scene(monkeypatch)
    scene.notify("active;expires=60")
    scene.notify("active;expires=60")
    assert taken.count == 2


def test_repeated_failures_back_off_to_a_bound_and_start_over_once_read() -> None:
    scene = Scene()
    actions = scene.notify("active;expires=60", busy())
    waits = []
    for _ in range(len(REREAD_DELAYS) + 2):
        (read,) = of(ReadRules, actions)
        assert scene.machine.rules_failed(read.read, BUSY, scene.now) != []
        deadline = scene.machine.get_timer()
        assert deadline is not None
        waits.append(deadline - scene.now)
        scene.now = deadline
        actions = scene.machine.handle_timer(scene.now)
    assert waits == [*REREAD_DELAYS, REREAD_DELAYS[-1], REREAD_DELAYS[-1]]
    assert waits[-1] <= 60
    (read,) = of(ReadRules, actions)
    scene.read(actions, PresRules().allow(BOB, {A: True}))
    assert scene.watch.granted == frozenset({A})
    assert scene.machine.get_timer() is None  # nothing more to read
    # Readable once: a later failure keeps the decisions (no back-off needed).
    changed = scene.machine.rules_changed(ALICE, scene.now)
    (again,) = of(ReadRules, changed)
    scene.machine.rules_failed(again.read, BUSY, scene.now)
    assert scene.watch.withheld and not scene.watch.waiting
    assert scene.machine.get_timer() is None


def at(minute: int) -> PresenceAttribute:
    """Busy since ``minute`` minutes past noon: a document of its own per minute."""
    return PresenceAttribute(Activity.BUSY, datetime(2024, 5, 1, 12, minute, 0, tzinfo=UTC))


def test_held_news_through_a_long_outage_keeps_state_changes_and_the_latest_document() -> None:
    scene = Scene()
    scene.opened()
    scene.schedule("n1")
    (read,) = of(ReadRules, scene.notify("active;expires=60", at(0)))
    scene.machine.rules_failed(read.read, BUSY, scene.now)
    # Each refresh's NOTIFY repeats the document: held once, however many come.
    for _ in range(3 * HELD_LIMIT):
        assert scene.notify("active;expires=60", at(1)) == []
    assert scene.watch.held is not None and len(scene.watch.held) == 1
    # Changes: held in order up to the limit, then the latest replaces the last.
    for minute in range(2, HELD_LIMIT + 12):
        assert scene.notify("active;expires=60", at(minute)) == []
    assert len(scene.watch.held) == HELD_LIMIT
    assert scene.machine.superseded == 11
    # A change of subscription state is never folded into a document.
    scene.notify("pending")
    scene.notify("active;expires=60", at(59))
    assert len(scene.watch.held) == HELD_LIMIT + 2 and scene.machine.superseded == 11

    deadline = scene.machine.get_timer()
    assert deadline is not None
    scene.now = deadline
    done = scene.read(scene.machine.handle_timer(scene.now), PresRules().allow(BOB, {A: True}))
    told = [a.data["statusChanged"]["changedAttributes"][0]["typeAndValue"]["activity"]
            for a in of(Deliver, done) if "statusChanged" in a.data]
    assert told and set(told) == {"Busy"}
    since = [a.data["statusChanged"]["changedAttributes"][0]["lastChange"]
             for a in of(Deliver, done) if "statusChanged" in a.data]
    # Minutes 0 to HELD_LIMIT - 1 as they came, then the latest before the
    # pending state (the ones between were replaced), then minute 59.
    assert since == [attribute_to_json(at(m))["lastChange"]
                     for m in [*range(HELD_LIMIT), HELD_LIMIT + 11, 59]]
    assert scene.watch.held is None and not scene.watch.waiting


def test_a_watch_ended_while_held_ends_the_rereads() -> None:
    scene = Scene()
    (read,) = of(ReadRules, scene.notify("active;expires=60", busy()))
    scene.machine.rules_failed(read.read, BUSY, scene.now)
    scene.machine.unsubscribe(BOB, ALICE)
    deadline = scene.machine.get_timer()
    assert deadline is not None
    assert of(ReadRules, scene.machine.handle_timer(deadline)) == []
    assert scene.machine.get_timer() is None


def test_a_failed_read_never_widens_decisions_once_read() -> None:
    scene = Scene()
    scene.read(scene.notify("active;expires=60", busy()), PresRules().allow(BOB, {A: True}))
    changed = scene.machine.rules_changed(ALICE, scene.now)
    (again,) = of(ReadRules, changed)
    failed = scene.machine.rules_failed(again.read, BUSY, scene.now)
    assert scene.watch.withheld and scene.watch.granted == frozenset()
    assert not scene.watch.waiting and of(Settled, failed) == [Settled(scene.watch)]
    assert scene.machine.get_timer() is None  # the next need reads again, as before


def test_readable_rules_that_do_not_name_the_watcher_grant_what_was_asked() -> None:
    scene = Scene()
    done = scene.read(scene.notify("active;expires=60", busy()), PresRules())
    assert kinds(done) == ["notifySubscription"]
    assert scene.watch.granted == frozenset({A}) and not scene.watch.withheld


def test_an_unexpected_end_backs_off_on_the_machines_timer_then_times_out() -> None:
    scene = Scene(resubscribe_delays=(0.5, 2.0))
    scene.schedule("n1")
    actions = scene.terminate("timeout")
    assert of(Subscribe, actions) == [Subscribe(scene.watch, retry=True)]  # at once
    attempts = []
    for sid in (8, 9):
        scene.machine.subscription_sent(scene.watch, sid)
        scene.machine.subscription_refused(scene.watch, sid)
        assert scene.machine.attempt_failed(scene.watch, scene.now) == []
        deadline = scene.machine.get_timer()
        assert deadline is not None
        assert scene.machine.handle_timer(deadline - 0.01) == []
        scene.now = deadline
        attempts.append(of(Subscribe, scene.machine.handle_timer(scene.now)))
        assert scene.watch.dialog is Dialog.STARTING
    assert attempts == [[Subscribe(scene.watch, retry=True)]] * 2
    scene.machine.subscription_sent(scene.watch, 10)
    scene.machine.subscription_refused(scene.watch, 10)
    ended = scene.machine.attempt_failed(scene.watch, scene.now)
    timeout = {"subscriptionEnded": {"presentity": ALICE, "reason": "Timeout"}}
    assert sorted((a.channel, str(a.data)) for a in of(Deliver, ended)) == [
        (f"/bayeux/{APP}/n1", str(timeout)), (REF, str(timeout)),
    ]
    assert scene.watch.state is WatchState.ENDED and scene.machine.watches == {}


def test_the_back_off_stops_while_the_server_is_down() -> None:
    scene = Scene()
    actions = scene.terminate("deactivated", retry_after=3)
    assert of(Subscribe, actions) == [] and scene.machine.get_timer() == scene.now + 3
    scene.now += 3
    (attempt,) = of(Subscribe, scene.machine.handle_timer(scene.now))
    scene.machine.server_down(attempt.watch)
    assert (scene.watch.state, scene.watch.dialog) == (WatchState.PENDING, Dialog.NONE)
    assert scene.machine.get_timer() is None
    assert scene.machine.to_resync() == [scene.watch]


def test_rejected_blocks_and_a_straggling_notify_changes_nothing() -> None:
    scene = Scene()
    scene.read(scene.notify("active;expires=60", busy()), PresRules().allow(BOB, {A: True}))
    actions = scene.terminate("rejected")
    assert kinds(actions) == ["subscriptionEnded"]
    assert scene.watch.state is WatchState.BLOCKED and scene.watch.dialog is Dialog.NONE
    assert scene.notify("active;expires=60", busy(5)) == []


def test_our_own_end_unsubscribes_and_its_termination_is_no_news() -> None:
    scene = Scene()
    actions = scene.machine.unsubscribe(BOB, ALICE)
    assert of(Unsubscribe, actions) == [Unsubscribe(7)]
    assert scene.terminate("unsubscribed") == []


def test_a_coalesced_state_and_the_progress_wait_on_the_one_timer() -> None:
    scene = Scene(save_delay=1.0)
    schedule = scene.schedule("n1", frequency=10.0)
    scene.read(scene.notify("active;expires=60", busy(0)), PresRules().allow(BOB, {A: True}))
    scene.notify("active;expires=60", busy(1))
    assert scene.machine.get_timer() == scene.now + 1.0  # the progress, first
    scene.now += 1.0
    (progress,) = of(SaveProgress, scene.machine.handle_timer(scene.now))
    assert progress.schedules == (schedule,)
    assert scene.machine.get_timer() == NOW + 10.0  # the end of the interval
    scene.now = NOW + 10.0
    actions = scene.machine.handle_timer(scene.now)
    assert [a.data["statusChanged"]["changedAttributes"] for a in of(Deliver, actions)] == [
        [attribute_to_json(busy(1))]
    ]


def test_a_start_waits_behind_the_notifies_held_before_it() -> None:
    scene = Scene()
    activation = scene.notify("active;expires=60", busy(0))
    schedule = Schedule("n1", APP, f"/bayeux/{APP}/n1", BOB, ALICE)
    scene.machine.add_schedule(scene.watch, schedule)
    scene.machine.start_schedule(scene.watch, schedule, check_immediate=True, now=scene.now)
    assert scene.machine.start_pending(scene.watch, schedule)
    actions = scene.read(activation, PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription", "statusChanged"]
    assert not scene.machine.start_pending(scene.watch, schedule)


def test_a_start_before_the_dialog_s_first_notify_takes_its_state_as_the_baseline() -> None:
    # The 2xx came, the NOTIFY sent with it not yet (a busy machine reads the
    # two apart): the state it carries is the one current at the Start.
    scene = Scene()
    schedule = scene.schedule("n1")
    assert not scene.machine.start_pending(scene.watch, schedule)  # the 201 waits for nothing
    activation = scene.notify("active;expires=60", busy(0))
    actions = scene.read(activation, PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription"]
    assert kinds(scene.notify("active;expires=60", busy(1))) == ["statusChanged"]


def test_a_start_with_check_immediate_before_the_first_notify_sends_its_state_once() -> None:
    scene = Scene()
    schedule = Schedule("n1", APP, f"/bayeux/{APP}/n1", BOB, ALICE)
    scene.machine.add_schedule(scene.watch, schedule)
    assert scene.machine.start_schedule(scene.watch, schedule, check_immediate=True,
                                        now=scene.now) == []
    actions = scene.read(scene.notify("active;expires=60", busy(0)),
                         PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription", "statusChanged"]
    assert of(Deliver, actions)[1].data["statusChanged"]["changedAttributes"] == [
        attribute_to_json(busy(0))
    ]


def test_a_state_first_shown_after_a_pending_first_notify_is_news() -> None:
    scene = Scene()
    scene.schedule("n1")
    scene.opened()  # the Start's baseline: nothing may be seen
    activation = scene.notify("active;expires=60", busy(0))  # ALICE allowed BOB
    actions = scene.read(activation, PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription", "statusChanged"]


def test_a_start_waiting_for_the_first_notify_waits_for_the_next_dialog_s() -> None:
    scene = Scene()
    scene.schedule("n1")
    scene.terminate("deactivated")  # before any NOTIFY: subscribed again at once
    scene.machine.subscription_sent(scene.watch, 8)
    scene.machine.subscription_accepted(scene.watch, 8)
    actions = scene.read(scene.notify("active;expires=60", busy(0), sid=8),
                         PresRules().allow(BOB, {A: True}))
    assert kinds(actions) == ["notifySubscription"]
    assert kinds(scene.notify("active;expires=60", busy(1), sid=8)) == ["statusChanged"]


def test_the_events_of_a_dialog_the_watch_left_are_no_news() -> None:
    scene = Scene()
    scene.read(scene.notify("active;expires=60", busy()), PresRules().allow(BOB, {A: True}))
    scene.terminate("deactivated")
    scene.machine.subscription_sent(scene.watch, 8)  # the re-subscription
    assert scene.notify("active;expires=60", busy(3), sid=7) == []
    assert scene.terminate("timeout") == []
    assert scene.watch.dialog is Dialog.STARTING and scene.watch.subscription_id == 8


def test_a_dialog_step_the_table_does_not_have_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        _step(Dialog.NONE, _Step.ACCEPTED)
    assert _step(Dialog.STARTING, _Step.ACCEPTED) is Dialog.LIVE


def test_a_new_watch_keeps_its_states_by_member() -> None:
    scene = Scene()
    scene.read(scene.notify("active;expires=60", busy()), PresRules().allow(BOB, {A: True}))
    assert scene.watch.member is not None and scene.watch.member.presentity == ALICE
    assert scene.machine.presence(BOB, ALICE, frozenset()) is not None
    assert isinstance(scene.watch, Watch)


def test_a_watch_released_to_another_node_ends_its_dialog_and_tells_nobody() -> None:
    scene = Scene()
    scene.schedule("n1")
    scene.read(scene.notify("active;expires=60", busy(0)), PresRules().allow(BOB, {A: True}))
    actions = scene.machine.release(scene.watch)
    # Its dialog ends; no statusEnd, no subscriptionEnded, and its records stay
    # as they are (the new owner's now).
    assert actions == [Unsubscribe(7)]
    assert scene.machine.get(BOB, ALICE) is None
    assert (APP, "n1") not in scene.machine.schedules
    # Its timers, when they come, do nothing.
    for later in (60.0, 600.0, 86400.0):
        fired = scene.machine.handle_timer(NOW + later)
        assert kinds(fired) == [] and of(Subscribe, fired) == [] and of(ReadRules, fired) == []
        assert all(not action.schedules for action in of(SaveProgress, fired))
    # What its old dialog still says is no news.
    assert scene.notify("active;expires=60", busy(1)) == []
    assert scene.terminate("unsubscribed") == []
    assert scene.machine.release(scene.watch) == []


def test_a_held_watch_keeps_no_container_of_its_own_until_it_needs_one() -> None:
    scene = Scene()
    scene.notify("active;expires=600", busy())
    other, _ = scene.machine.subscribe(APP, "sip:carol@example.com", ALICE, "app",
                                       frozenset({A}), Reference("r2", REF))
    watch = scene.watch
    # Nothing waits, nothing is listed, no schedule: no queue, no set of its own,
    # and one empty dict shared by every watch, which refuses changes.
    assert watch.held is None and watch.unstarted is None and watch.stateless is None
    assert watch.schedules is other.schedules is watch.listed is watch.suspects
    with pytest.raises(TypeError):
        watch.schedules["n0"] = Schedule("n0", APP, REF, BOB, ALICE)
    schedule = scene.schedule("n1")
    assert watch.schedules == {"n1": schedule} and other.schedules == {}
    scene.machine.end_notification(APP, "n1")
    assert watch.schedules == {} and watch.unstarted is None
    # Equal decisions are one dict, its grant one frozenset, whoever holds them.
    first, second = shared_decisions({A: True, P: False}), shared_decisions({P: False, A: True})
    assert first is second
    watch.decisions, other.decisions = first, second
    assert watch.granted == frozenset({A}) and watch.granted is other.granted


def test_a_single_watch_keeps_its_rare_fields_in_no_record_of_their_own() -> None:
    # A gateway holds single watches by the hundred thousand: the fields of
    # groups, back-offs and waits take room only while they are set.
    scene = Scene()
    activation = scene.notify("active;expires=60", busy(0))
    watch = scene.watch
    assert watch.waiting and watch.resume is not None and watch.rare is not None
    scene.read(activation, PresRules().allow(BOB, {A: True}))
    assert watch.resume is None and watch.rare is None
    assert watch.listed == {} and watch.rlmi is None and watch.backoff == ()
    scene.terminate("deactivated")  # lost: re-subscribed at once, then backs off
    assert watch.backoff and watch.why == "deactivated"
    assert watch.rare == {"backoff": watch.backoff, "why": "deactivated", "opening": []}
    scene.machine.subscription_sent(watch, 8)
    scene.notify("active;expires=60", busy(1), sid=8)  # the new dialog's first
    watch.backoff, watch.why = (), ""
    assert watch.rare is None


def test_the_watches_by_key_include_a_watcher_named_by_a_str_subclass() -> None:
    # A request acting as the account's configured address names the watcher
    # with the configuration's own str subclass: the view must list it too.
    class Address(str):
        pass

    machine = WatchMachine()
    watch, _ = machine.subscribe(APP, Address(BOB), ALICE, "app", frozenset({A}),
                                 Reference("r1", REF))
    assert dict(machine.watches) == {(BOB, ALICE): watch} and len(machine.watches) == 1
    assert machine.states() == {"pending": 1}


def recount(machine: WatchMachine) -> dict[str, int]:
    """states() the long way: every watch filed, looked at."""
    counts: dict[str, int] = {}
    for watch in machine.watches.values():
        counts[watch.state.value] = counts.get(watch.state.value, 0) + 1
    return counts


@pytest.mark.parametrize("seed", range(6))
def test_the_counts_by_state_follow_every_change_of_every_watch(seed: int) -> None:
    rng = random.Random(seed)
    machine = WatchMachine(resubscribe_delays=(1.0, 5.0))
    now = NOW
    sids = iter(range(1, 1_000_000))
    reads: list[Any] = []  # rules reads asked for and not answered yet
    keys = [(f"sip:w{i}@example.com", f"sip:p{j}@example.com") for i in range(6) for j in range(6)]
    visited: set[str] = set()
    most = 0

    def carry_out(actions: list[WatchAction]) -> None:
        for action in actions:
            if isinstance(action, Subscribe):
                machine.subscription_sent(action.watch, next(sids))
                if rng.random() < 0.8:
                    machine.subscription_accepted(action.watch, action.watch.subscription_id or 0)
            elif isinstance(action, ReadRules):
                reads.append(action.read)

    for _ in range(3000):
        watcher, presentity = rng.choice(keys)
        watch = machine.get(watcher, presentity)
        step = rng.random()
        try:
            if step < 0.2 or watch is None:
                if rng.random() < 0.1:
                    # Restored from the store: a new object, maybe for a key filed already.
                    state = rng.choice(list(WatchState)[:3])
                    watch = machine.add(Watch(watcher, presentity, APP, state=state,
                                              reference=Reference("r0", REF)))
                else:
                    watch, actions = machine.subscribe(APP, watcher, presentity, "app",
                                                       frozenset({A}), Reference("r1", REF))
                    carry_out(actions)
                carry_out(machine.ensure_subscribed(watch))
            elif step < 0.5 and watch.subscription_id is not None:
                state = rng.choice(("active;expires=60", "active;expires=60", "pending",
                                    "terminated;reason=deactivated"))
                carry_out(machine.notify(watch, notify(watch.subscription_id, state, busy()), now))
            elif step < 0.6 and watch.subscription_id is not None:
                reason = rng.choice(("rejected", "deactivated", "timeout", "unsubscribed"))
                event = SubscriptionTerminated(watch.subscription_id, reason)
                carry_out(machine.terminated(watch, event, now))
            elif step < 0.7 and reads:
                read = reads.pop(rng.randrange(len(reads)))
                if rng.random() < 0.8:
                    rules = PresRules().allow(watcher, {A: rng.random() < 0.7})
                    carry_out(machine.rules_read(read, rules, now))
                else:
                    carry_out(machine.rules_failed(read, BUSY, now))
            elif step < 0.75:
                carry_out(machine.unsubscribe(watcher, presentity))
            elif step < 0.78:
                machine.server_down(watch)
            elif step < 0.8:
                carry_out(machine.release(watch))
            elif step < 0.83:
                carry_out(machine.restart(watch))
            elif step < 0.86:
                carry_out(machine.reference_refused(watch))
            elif step < 0.88 and watch.subscription_id is not None:
                carry_out(machine.subscription_refused(watch, watch.subscription_id))
                carry_out(machine.attempt_failed(watch, now))
            else:
                now += rng.choice((0.5, 2.0, 10.0, 100.0))
                carry_out(machine.handle_timer(now))
        except LocalProtocolError:
            pass  # a step the watch's dialog does not take: the machine refuses it
        counts = machine.states()
        assert counts == recount(machine)
        visited |= set(counts)
        most = max(most, sum(counts.values()))
    assert visited == {"pending", "active", "blocked"}  # an ended watch is not filed
    assert most >= 10
