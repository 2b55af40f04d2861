"""Schedule: Start Presence Notification driven by hand (offers, timers, a manual clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.notification import (
    BUSY_ACTIVITIES,
    Criterion,
    Schedule,
    matches_criteria,
    schedule_from_record,
    schedule_to_record,
)
from adapter.presence_json import attribute_to_json
from pidf import (
    Activity,
    AttributeType,
    Communication,
    CommunicationMeans,
    MeansType,
    Other,
    Place,
    Presence,
    PresenceAttribute,
    Privacy,
    Sphere,
    filter_presence,
)

ALICE = "sip:alice@example.com"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
ALL = frozenset(AttributeType)
EPOCH = 1_700_000_000.0  # wall-clock seconds; any value works


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def state(*attributes: PresenceAttribute, open: bool = True) -> Presence:
    return Presence(ALICE, tuple(attributes), open)


def activity(value: Activity, t: float = 0, note: str | None = None) -> PresenceAttribute:
    return PresenceAttribute(value, at(t), note)


def place(value: Place, t: float = 0) -> PresenceAttribute:
    return PresenceAttribute(value, at(t))


def schedule(**kwargs: Any) -> Schedule:
    defaults: dict[str, Any] = dict(
        correlator="c1",
        app_id="bob-app",
        endpoint="/bayeux/bob-app/presence",
        watcher="sip:bob@example.com",
        presentity=ALICE,
    )
    defaults.update(kwargs)
    return Schedule(**defaults)


def changed(deliveries: list[Any]) -> list[list[dict[str, Any]]]:
    """The changedAttributes of each statusChanged, in order."""
    return [d.data["statusChanged"]["changedAttributes"] for d in deliveries]


def kinds(deliveries: list[Any]) -> list[str]:
    return [next(iter(d.data)) for d in deliveries]


def tav(attribute: PresenceAttribute) -> dict[str, Any]:
    return attribute_to_json(attribute)["typeAndValue"]  # type: ignore[no-any-return]


# -- message shapes ------------------------------------------------------------


def test_first_change_after_start_is_sent_at_once_in_the_spec_shape() -> None:
    s = schedule(frequency=5.0)
    assert s.start(None, ALL, EPOCH, check_immediate=True) == []
    busy = activity(Activity.BUSY, 1, note="in a call")
    out = s.offer(state(busy), ALL, EPOCH + 1)
    assert [d.data for d in out] == [
        {
            "statusChanged": {
                "correlator": "c1",
                "presentity": ALICE,
                "changedAttributes": [
                    {
                        "lastChange": "2024-05-01T12:00:01Z",
                        "typeAndValue": {"unionElement": "Activity", "activity": "Busy"},
                        "note": "in a call",
                    }
                ],
            }
        }
    ]


def test_note_is_absent_when_the_attribute_has_none() -> None:
    s = schedule()
    s.start(None, ALL, EPOCH, check_immediate=False)
    (entry,) = changed(s.offer(state(place(Place.OFFICE, 2)), ALL, EPOCH))[0]
    assert entry == {
        "lastChange": "2024-05-01T12:00:02Z",
        "typeAndValue": {"unionElement": "Place", "place": "Office"},
    }


def test_count_reached_sends_status_end_right_after_and_nothing_more() -> None:
    s = schedule(remaining=2)
    s.start(None, ALL, EPOCH, check_immediate=False)
    assert kinds(s.offer(state(activity(Activity.BUSY, 1)), ALL, EPOCH + 1)) == ["statusChanged"]
    out = s.offer(state(activity(Activity.AWAY, 2)), ALL, EPOCH + 2)
    assert [d.data for d in out][1:] == [{"statusEnd": {"correlator": "c1"}}]
    assert kinds(out) == ["statusChanged", "statusEnd"]
    assert s.ended and s.get_timer() is None
    assert s.offer(state(activity(Activity.MEAL, 3)), ALL, EPOCH + 3) == []
    assert s.handle_timer(EPOCH + 10_000) == []


# -- frequency and coalescing -------------------------------------------------


def test_changes_faster_than_frequency_coalesce_into_the_latest_state() -> None:
    s = schedule(frequency=1.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    first = s.offer(state(activity(Activity.BUSY, 0), place(Place.HOME, 0)), ALL, EPOCH)
    assert len(first) == 1
    # Within the interval: Place goes to Office, then back Home while the
    # Activity changes twice.  The older state (Office, Meeting) must never
    # be sent; the latest (Home unchanged, Away) is sent at last_sent + 1 s.
    assert s.offer(state(activity(Activity.MEETING, 0.2), place(Place.OFFICE, 0.2)), ALL,
                   EPOCH + 0.2) == []
    assert s.offer(state(activity(Activity.AWAY, 0.5), place(Place.HOME, 0)), ALL,
                   EPOCH + 0.5) == []
    assert s.get_timer() == EPOCH + 1.0
    assert s.handle_timer(EPOCH + 0.999) == []
    out = s.handle_timer(EPOCH + 1.0)
    assert changed(out) == [[attribute_to_json(activity(Activity.AWAY, 0.5))]]
    assert s.get_timer() is None


def test_a_burst_that_returns_to_the_delivered_state_sends_nothing() -> None:
    s = schedule(frequency=1.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    busy = activity(Activity.BUSY, 0)
    s.offer(state(busy), ALL, EPOCH)
    s.offer(state(activity(Activity.AWAY, 0.3)), ALL, EPOCH + 0.3)
    s.offer(state(busy), ALL, EPOCH + 0.6)
    assert s.get_timer() == EPOCH + 1.0
    assert s.handle_timer(EPOCH + 1.0) == []
    assert s.get_timer() is None


def test_a_change_after_the_interval_is_sent_at_once() -> None:
    s = schedule(frequency=1.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    out = s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1.0)
    assert changed(out) == [[attribute_to_json(activity(Activity.AWAY, 1))]]


def test_a_later_offer_supersedes_a_pending_state_whose_timer_has_not_fired() -> None:
    s = schedule(frequency=1.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    s.offer(state(activity(Activity.MEETING, 0.5)), ALL, EPOCH + 0.5)
    # The timer is late: the next offer comes after the interval has ended.
    out = s.offer(state(activity(Activity.MEAL, 1.5)), ALL, EPOCH + 1.5)
    assert changed(out) == [[attribute_to_json(activity(Activity.MEAL, 1.5))]]
    assert s.get_timer() is None
    assert s.handle_timer(EPOCH + 2.0) == []


def test_only_changed_attributes_are_carried() -> None:
    s = schedule()
    s.start(None, ALL, EPOCH, check_immediate=False)
    home = place(Place.HOME, 0)
    s.offer(state(activity(Activity.BUSY, 0), home), ALL, EPOCH)
    out = s.offer(state(activity(Activity.AWAY, 1), home), ALL, EPOCH + 1)
    assert changed(out) == [[attribute_to_json(activity(Activity.AWAY, 1))]]


def test_unchanged_state_sends_nothing() -> None:
    s = schedule()
    s.start(None, ALL, EPOCH, check_immediate=False)
    busy = state(activity(Activity.BUSY, 0))
    assert len(s.offer(busy, ALL, EPOCH)) == 1
    assert s.offer(busy, ALL, EPOCH + 5) == []


# -- what the watcher may see ---------------------------------------------------


def test_a_change_the_watcher_may_not_see_sends_nothing() -> None:
    granted = frozenset({AttributeType.ACTIVITY})
    s = schedule()
    s.start(None, granted, EPOCH, check_immediate=False)
    busy = activity(Activity.BUSY, 0)
    s.offer(state(busy, place(Place.HOME, 0)), granted, EPOCH)
    assert s.offer(state(busy, place(Place.OFFICE, 1)), granted, EPOCH + 1) == []


def test_an_attribute_not_granted_never_appears_even_when_the_body_carries_it() -> None:
    granted = frozenset({AttributeType.ACTIVITY, AttributeType.SPHERE})
    full = state(
        activity(Activity.BUSY, 0),
        place(Place.OFFICE, 0),
        PresenceAttribute(Privacy.PRIVACY_PRIVATE, at(0)),
        PresenceAttribute(Sphere.SPHERE_WORK, at(0)),
        PresenceAttribute(Other("mood", "fine"), at(0)),
    )
    for check_immediate in (True, False):
        s = schedule()
        out = s.start(full, granted, EPOCH, check_immediate=check_immediate)
        out += s.offer(state(*(PresenceAttribute(a.value, at(9)) for a in full.attributes)),
                       granted, EPOCH + 9)
        seen = {e["typeAndValue"]["unionElement"] for batch in changed(out) for e in batch}
        assert seen == {"Activity", "Sphere"}


def test_attributes_filter_restricts_changed_attributes() -> None:
    s = schedule(attributes=frozenset({AttributeType.PLACE}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(Activity.BUSY, 0), place(Place.HOME, 0)), ALL, EPOCH)
    assert changed(out) == [[attribute_to_json(place(Place.HOME, 0))]]
    # A change of an attribute outside the filter is no change for this schedule.
    assert s.offer(state(activity(Activity.AWAY, 1), place(Place.HOME, 0)), ALL, EPOCH + 1) == []


def test_empty_attributes_filter_means_every_granted_attribute() -> None:
    attrs = (
        activity(Activity.BUSY, 0),
        place(Place.HOME, 0),
        PresenceAttribute(Privacy.PRIVACY_QUIET, at(0)),
        PresenceAttribute(Sphere.SPHERE_HOME, at(0)),
        PresenceAttribute(
            Communication((CommunicationMeans("sip:alice@192.0.2.1", 0.5, MeansType.PHONE),)),
            at(0),
        ),
        PresenceAttribute(Other("mood", "fine"), at(0)),
        PresenceAttribute(Other("colour", "blue"), at(0)),
    )
    s = schedule()
    s.start(None, ALL, EPOCH, check_immediate=False)
    assert changed(s.offer(state(*attrs), ALL, EPOCH)) == [[attribute_to_json(a) for a in attrs]]


def test_other_attributes_are_told_apart_by_name() -> None:
    s = schedule()
    s.start(None, ALL, EPOCH, check_immediate=False)
    mood = PresenceAttribute(Other("mood", "fine"), at(0))
    s.offer(state(mood, PresenceAttribute(Other("colour", "blue"), at(0))), ALL, EPOCH)
    red = PresenceAttribute(Other("colour", "red"), at(1))
    assert changed(s.offer(state(mood, red), ALL, EPOCH + 1)) == [[attribute_to_json(red)]]


# -- criteria -------------------------------------------------------------------


@pytest.mark.parametrize("value", list(Activity))
def test_busy_criterion_is_busy_on_the_phone_meeting_or_do_not_disturb(value: Activity) -> None:
    s = schedule(criteria=frozenset({Criterion.BUSY}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(value, 0)), ALL, EPOCH)
    busy = {Activity.BUSY, Activity.ON_THE_PHONE, Activity.MEETING, Activity.DO_NOT_DISTURB}
    assert BUSY_ACTIVITIES == busy
    assert len(out) == (1 if value in busy else 0)


@pytest.mark.parametrize(
    ("criterion", "is_open", "sent"),
    [
        (Criterion.REACHABLE, True, True),
        (Criterion.REACHABLE, False, False),
        (Criterion.UNREACHABLE, True, False),
        (Criterion.UNREACHABLE, False, True),
    ],
)
def test_reachable_and_unreachable_follow_the_basic_status(
    criterion: Criterion, is_open: bool, sent: bool
) -> None:
    s = schedule(criteria=frozenset({criterion}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(Activity.AWAY, 0), open=is_open), ALL, EPOCH)
    assert len(out) == (1 if sent else 0)


def test_several_criteria_match_when_any_does() -> None:
    s = schedule(criteria=frozenset({Criterion.BUSY, Criterion.UNREACHABLE}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    assert len(s.offer(state(activity(Activity.MEETING, 0), open=True), ALL, EPOCH)) == 1
    assert len(s.offer(state(activity(Activity.AWAY, 1), open=False), ALL, EPOCH + 1)) == 1
    assert s.offer(state(activity(Activity.MEAL, 2), open=True), ALL, EPOCH + 2) == []


def test_a_state_failing_the_criteria_does_not_become_the_delivered_one() -> None:
    s = schedule(criteria=frozenset({Criterion.BUSY}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    home = place(Place.HOME, 0)
    assert s.offer(state(activity(Activity.AWAY, 0), home), ALL, EPOCH) == []
    # Now busy: Place was never delivered, so it is part of the change.
    out = s.offer(state(activity(Activity.BUSY, 1), home), ALL, EPOCH + 1)
    assert changed(out) == [
        [attribute_to_json(activity(Activity.BUSY, 1)), attribute_to_json(home)]
    ]


def test_matches_criteria_without_a_document() -> None:
    assert matches_criteria(None, [])
    assert matches_criteria(None, [Criterion.UNREACHABLE])
    assert not matches_criteria(None, [Criterion.REACHABLE])
    assert not matches_criteria(None, [Criterion.BUSY])


def test_reachability_is_judged_on_what_the_watcher_may_see() -> None:
    # The basic status is presence information (RFC 3863 §4.1.4): a watcher
    # granted nothing must not learn it, not even through whether a
    # Reachable notification arrives; one granted anything sees it, as a SIP
    # phone granted only Place sees its buddy online (pidf.presrules).
    nothing: frozenset[AttributeType] = frozenset()
    s = schedule(criteria=frozenset({Criterion.REACHABLE}))
    s.start(None, nothing, EPOCH, check_immediate=False)
    assert s.offer(state(place(Place.HOME, 0), open=True), nothing, EPOCH) == []
    granted = frozenset({AttributeType.PLACE})
    s = schedule(criteria=frozenset({Criterion.REACHABLE}))
    s.start(None, granted, EPOCH, check_immediate=False)
    out = s.offer(state(place(Place.HOME, 0), open=True), granted, EPOCH)
    assert changed(out) == [[attribute_to_json(place(Place.HOME, 0))]]


@pytest.mark.parametrize("is_open", [True, False])
@pytest.mark.parametrize("grants", [frozenset(), frozenset({AttributeType.PLACE})])
def test_without_criteria_the_reachability_kept_is_what_the_watcher_may_see(
    is_open: bool, grants: frozenset[AttributeType]
) -> None:
    # With no criteria the state as seen is not built (only its basic
    # status is kept, for the record); it must be filter_presence's.
    s = schedule()
    s.start(None, grants, EPOCH, check_immediate=False)
    current = state(place(Place.HOME, 0), open=is_open)
    s.offer(current, grants, EPOCH)
    seen = filter_presence(current, {kind: True for kind in grants})
    assert s.reachable is seen.open


def test_busy_is_judged_on_granted_activity_even_when_not_asked_for() -> None:
    # attributes filters what is carried; criteria filters which states are
    # notified — an application may want Place updates while Alice is busy.
    s = schedule(criteria=frozenset({Criterion.BUSY}), attributes=frozenset({AttributeType.PLACE}))
    s.start(None, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(Activity.ON_THE_PHONE, 0), place(Place.TRAIN, 0)), ALL, EPOCH)
    assert changed(out) == [[attribute_to_json(place(Place.TRAIN, 0))]]
    assert s.offer(state(activity(Activity.AWAY, 1), place(Place.HOME, 1)), ALL, EPOCH + 1) == []


def test_busy_is_not_judged_on_an_activity_the_watcher_may_not_see() -> None:
    granted = frozenset({AttributeType.PLACE})
    s = schedule(criteria=frozenset({Criterion.BUSY}))
    s.start(None, granted, EPOCH, check_immediate=False)
    assert s.offer(state(activity(Activity.BUSY, 0), place(Place.HOME, 0)), granted, EPOCH) == []


# -- duration -------------------------------------------------------------------


def test_duration_ends_with_status_end_at_the_deadline() -> None:
    s = schedule(deadline=EPOCH + 10)
    s.start(None, ALL, EPOCH, check_immediate=False)
    assert s.get_timer() == EPOCH + 10
    assert s.handle_timer(EPOCH + 9.99) == []
    assert [d.data for d in s.handle_timer(EPOCH + 10)] == [{"statusEnd": {"correlator": "c1"}}]
    assert s.ended and s.get_timer() is None
    assert s.handle_timer(EPOCH + 11) == []


def test_a_pending_state_is_flushed_before_status_end_at_the_deadline() -> None:
    s = schedule(frequency=1.0, deadline=EPOCH + 10)
    s.start(None, ALL, EPOCH, check_immediate=False)
    s.offer(state(activity(Activity.BUSY, 9.5)), ALL, EPOCH + 9.5)
    s.offer(state(activity(Activity.AWAY, 9.8)), ALL, EPOCH + 9.8)
    assert s.get_timer() == EPOCH + 10  # the deadline comes before 10.5
    out = s.handle_timer(EPOCH + 10)
    assert kinds(out) == ["statusChanged", "statusEnd"]
    assert changed(out[:1]) == [[attribute_to_json(activity(Activity.AWAY, 9.8))]]


def test_an_offer_after_the_deadline_ends_without_sending_it() -> None:
    s = schedule(deadline=EPOCH + 10)
    s.start(None, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(Activity.BUSY, 11)), ALL, EPOCH + 11)
    assert [d.data for d in out] == [{"statusEnd": {"correlator": "c1"}}]


def test_get_timer_is_the_earliest_of_deadline_and_interval_end() -> None:
    s = schedule(frequency=3.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    assert s.get_timer() is None
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    assert s.get_timer() is None  # nothing pending, no deadline
    s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1)
    assert s.get_timer() == EPOCH + 3.0

    s = schedule(frequency=3.0, deadline=EPOCH + 2)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    assert s.get_timer() == EPOCH + 2
    s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1)
    assert s.get_timer() == EPOCH + 2

    s = schedule(frequency=3.0, deadline=EPOCH + 100)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    assert s.get_timer() == EPOCH + 100
    s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1)
    assert s.get_timer() == EPOCH + 3.0


# -- checkImmediate ---------------------------------------------------------------


def test_check_immediate_sends_the_current_visible_state_and_counts() -> None:
    granted = frozenset({AttributeType.ACTIVITY, AttributeType.PLACE})
    current = state(activity(Activity.BUSY, 0), place(Place.HOME, 0),
                    PresenceAttribute(Sphere.SPHERE_WORK, at(0)))
    s = schedule(remaining=1)
    out = s.start(current, granted, EPOCH, check_immediate=True)
    assert kinds(out) == ["statusChanged", "statusEnd"]
    assert changed(out[:1]) == [[attribute_to_json(activity(Activity.BUSY, 0)),
                                 attribute_to_json(place(Place.HOME, 0))]]


def test_check_immediate_starts_the_frequency_interval() -> None:
    s = schedule(frequency=2.0)
    s.start(state(activity(Activity.BUSY, 0)), ALL, EPOCH, check_immediate=True)
    assert s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1) == []
    assert s.get_timer() == EPOCH + 2.0


def test_check_immediate_without_a_state_yet_sends_nothing() -> None:
    s = schedule()
    assert s.start(None, ALL, EPOCH, check_immediate=True) == []
    assert len(s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH + 1)) == 1


def test_without_check_immediate_the_current_state_is_the_baseline() -> None:
    home = place(Place.HOME, 0)
    current = state(activity(Activity.BUSY, 0), home)
    s = schedule()
    assert s.start(current, ALL, EPOCH, check_immediate=False) == []
    assert s.offer(current, ALL, EPOCH + 1) == []
    out = s.offer(state(activity(Activity.AWAY, 2), home), ALL, EPOCH + 2)
    assert changed(out) == [[attribute_to_json(activity(Activity.AWAY, 2))]]


def test_without_check_immediate_the_first_notification_comes_at_the_end_of_the_period() -> None:
    s = schedule(frequency=5.0)
    assert s.start(state(activity(Activity.BUSY, 0)), ALL, EPOCH, check_immediate=False) == []
    assert s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1) == []
    assert s.offer(state(activity(Activity.MEAL, 2)), ALL, EPOCH + 2) == []
    assert s.get_timer() == EPOCH + 5.0
    assert s.handle_timer(EPOCH + 4.9) == []
    out = s.handle_timer(EPOCH + 5.0)
    assert changed(out) == [[attribute_to_json(activity(Activity.MEAL, 2))]]
    # The next interval runs from that notification.
    assert s.offer(state(activity(Activity.BUSY, 6)), ALL, EPOCH + 6) == []
    assert s.get_timer() == EPOCH + 10.0


def test_without_check_immediate_a_change_after_the_first_period_goes_at_once() -> None:
    s = schedule(frequency=5.0)
    s.start(None, ALL, EPOCH, check_immediate=False)
    assert s.get_timer() is None  # nothing waits: no timer for an empty period
    out = s.offer(state(activity(Activity.BUSY, 7)), ALL, EPOCH + 7)
    assert changed(out) == [[attribute_to_json(activity(Activity.BUSY, 7))]]


def test_without_check_immediate_a_period_that_ends_where_it_began_sends_nothing() -> None:
    busy = state(activity(Activity.BUSY, 0))
    s = schedule(frequency=5.0)
    s.start(busy, ALL, EPOCH, check_immediate=False)
    s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1)
    s.offer(busy, ALL, EPOCH + 2)
    assert s.handle_timer(EPOCH + 5) == []
    assert s.remaining is None and s.last_sent == EPOCH


def test_without_check_immediate_and_frequency_zero_changes_go_at_once() -> None:
    s = schedule(frequency=0.0)
    s.start(state(activity(Activity.BUSY, 0)), ALL, EPOCH, check_immediate=False)
    out = s.offer(state(activity(Activity.AWAY, 0)), ALL, EPOCH)
    assert changed(out) == [[attribute_to_json(activity(Activity.AWAY, 0))]]


def test_the_deferred_first_notification_counts_and_a_short_duration_flushes_it() -> None:
    s = schedule(frequency=5.0, remaining=1)
    s.start(None, ALL, EPOCH, check_immediate=False)
    s.offer(state(activity(Activity.BUSY, 1)), ALL, EPOCH + 1)
    assert kinds(s.handle_timer(EPOCH + 5)) == ["statusChanged", "statusEnd"]

    # Duration shorter than the period: the change is flushed at the
    # deadline, just before statusEnd (the last change is never dropped).
    s = schedule(frequency=5.0, deadline=EPOCH + 2)
    s.start(None, ALL, EPOCH, check_immediate=False)
    s.offer(state(activity(Activity.BUSY, 1)), ALL, EPOCH + 1)
    assert s.get_timer() == EPOCH + 2
    out = s.handle_timer(EPOCH + 2)
    assert kinds(out) == ["statusChanged", "statusEnd"]
    assert changed(out[:1]) == [[attribute_to_json(activity(Activity.BUSY, 1))]]


def test_the_first_period_survives_a_restart() -> None:
    s = schedule(frequency=5.0)
    s.start(state(activity(Activity.BUSY, 0)), ALL, EPOCH, check_immediate=False)
    s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 1)
    again = schedule_from_record(schedule_to_record(s))
    assert again.get_timer() == EPOCH + 5
    assert again.reachable is True
    away = attribute_to_json(activity(Activity.AWAY, 1))
    assert changed(again.handle_timer(EPOCH + 5)) == [[away]]


# -- going away -------------------------------------------------------------------

WHEN = "2023-11-14T22:13:30Z"  # EPOCH + 10, as an instant


def test_every_attribute_that_goes_away_is_told_in_its_withdrawal_form() -> None:
    means = CommunicationMeans("tel:+15550100", 0.5, MeansType.PHONE)
    everything = state(
        activity(Activity.BUSY, 0),
        place(Place.OFFICE, 0),
        PresenceAttribute(Privacy.PRIVACY_PUBLIC, at(0)),
        PresenceAttribute(Sphere.SPHERE_WORK, at(0)),
        PresenceAttribute(Communication((means,)), at(0)),
        PresenceAttribute(Other("mood", "happy"), at(0)),
    )
    s = schedule()
    s.start(everything, ALL, EPOCH, check_immediate=False)
    out = s.offer(state(open=False), ALL, EPOCH + 10)
    assert changed(out) == [[
        {"lastChange": WHEN,
         "typeAndValue": {"unionElement": "Activity", "activity": "ActivityNone"}},
        {"lastChange": WHEN, "typeAndValue": {"unionElement": "Place", "place": "PlaceNone"}},
        {"lastChange": WHEN, "typeAndValue": {"unionElement": "Privacy", "privacy": "PrivacyNone"}},
        {"lastChange": WHEN, "typeAndValue": {"unionElement": "Sphere", "sphere": "SphereNone"}},
        {"lastChange": WHEN,
         "typeAndValue": {"unionElement": "Communication", "communication": {"means": []}}},
        {"lastChange": WHEN,
         "typeAndValue": {"unionElement": "Other", "other": {"name": "mood", "value": ""}}},
    ]]
    assert s.sent == {}
    assert s.offer(state(open=False), ALL, EPOCH + 11) == []  # told once


def test_a_withdrawal_comes_with_the_changes_and_the_attribute_may_come_back() -> None:
    s = schedule()
    s.start(state(activity(Activity.BUSY, 0), place(Place.OFFICE, 0)), ALL, EPOCH,
            check_immediate=False)
    out = s.offer(state(activity(Activity.AWAY, 1)), ALL, EPOCH + 10)
    assert changed(out) == [[
        attribute_to_json(activity(Activity.AWAY, 1)),
        {"lastChange": WHEN, "typeAndValue": {"unionElement": "Place", "place": "PlaceNone"}},
    ]]
    back = s.offer(state(activity(Activity.AWAY, 1), place(Place.OFFICE, 0)), ALL, EPOCH + 12)
    assert changed(back) == [[attribute_to_json(place(Place.OFFICE, 0))]]


def test_an_attribute_no_longer_granted_or_asked_is_not_withdrawn() -> None:
    both = frozenset({AttributeType.ACTIVITY, AttributeType.PLACE})
    s = schedule()
    s.start(state(activity(Activity.BUSY, 0), place(Place.OFFICE, 0)), both, EPOCH,
            check_immediate=False)
    # Place is no longer granted: the grant changed, the presentity withdrew
    # nothing (notifySubscription tells the grant).
    only_activity = frozenset({AttributeType.ACTIVITY})
    assert s.offer(state(activity(Activity.BUSY, 0)), only_activity, EPOCH + 1) == []
    asked = schedule(attributes=frozenset({AttributeType.ACTIVITY}))
    asked.start(state(activity(Activity.BUSY, 0), place(Place.OFFICE, 0)), both, EPOCH,
                check_immediate=False)
    assert asked.offer(state(activity(Activity.BUSY, 0)), both, EPOCH + 1) == []


def test_a_withdrawal_waits_for_the_interval_like_any_change() -> None:
    s = schedule(frequency=2.0)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0), place(Place.OFFICE, 0)), ALL, EPOCH)
    assert s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH + 1) == []
    out = s.handle_timer(EPOCH + 2)
    assert [e["typeAndValue"] for e in changed(out)[0]] == [
        {"unionElement": "Place", "place": "PlaceNone"}
    ]


def test_unreachable_fires_when_the_presentity_goes_offline_without_a_change_in_view() -> None:
    # The schedule carries Place only; the basic status is seen through the
    # Activity grant, and that is what UnReachable is about.
    s = schedule(criteria=frozenset({Criterion.UNREACHABLE}),
                 attributes=frozenset({AttributeType.PLACE}))
    office = place(Place.OFFICE, 0)
    s.start(state(activity(Activity.AVAILABLE, 0), office), ALL, EPOCH, check_immediate=False)
    out = s.offer(state(office, open=False), ALL, EPOCH + 1)
    assert changed(out) == [[]]
    # Still unreachable, nothing in view changed: no news.
    assert s.offer(state(office, open=False), ALL, EPOCH + 2) == []
    # Back (not notified: it does not meet UnReachable) and away again: news again.
    assert s.offer(state(activity(Activity.AVAILABLE, 3), office), ALL, EPOCH + 3) == []
    assert changed(s.offer(state(office, open=False), ALL, EPOCH + 4)) == [[]]


def test_reachable_fires_when_the_presentity_comes_back() -> None:
    s = schedule(criteria=frozenset({Criterion.REACHABLE}),
                 attributes=frozenset({AttributeType.PLACE}))
    office = place(Place.OFFICE, 0)
    s.start(state(office, open=False), ALL, EPOCH, check_immediate=False)
    assert changed(s.offer(state(activity(Activity.BUSY, 1), office), ALL, EPOCH + 1)) == [[]]
    assert s.offer(state(activity(Activity.AWAY, 2), office), ALL, EPOCH + 2) == []


def test_a_phone_going_offline_is_unreachable_with_its_activity_gone() -> None:
    s = schedule(criteria=frozenset({Criterion.UNREACHABLE}))
    s.start(state(activity(Activity.AVAILABLE, 0)), ALL, EPOCH, check_immediate=False)
    out = s.offer(state(open=False), ALL, EPOCH + 10)
    assert changed(out) == [[
        {"lastChange": WHEN,
         "typeAndValue": {"unionElement": "Activity", "activity": "ActivityNone"}}
    ]]


def test_a_reachability_change_alone_is_no_news_without_those_criteria() -> None:
    for criteria in (frozenset(), frozenset({Criterion.BUSY})):
        s = schedule(criteria=criteria, attributes=frozenset({AttributeType.PLACE}))
        office = place(Place.OFFICE, 0)
        s.start(state(activity(Activity.BUSY, 0), office), ALL, EPOCH, check_immediate=False)
        assert s.offer(state(activity(Activity.BUSY, 0), office, open=False), ALL,
                       EPOCH + 1) == []


def test_reachability_news_is_judged_on_what_the_watcher_may_see() -> None:
    # With nothing granted the status is not revealed (pidf.filter_presence):
    # always unreachable, so no change of it.  Under any grant it is, as a
    # SIP phone granted only Place sees its buddy go offline.
    nothing: frozenset[AttributeType] = frozenset()
    s = schedule(criteria=frozenset({Criterion.UNREACHABLE}))
    office = place(Place.OFFICE, 0)
    s.start(state(office), nothing, EPOCH, check_immediate=False)
    assert s.offer(state(office, open=False), nothing, EPOCH + 1) == []
    only_place = frozenset({AttributeType.PLACE})
    s = schedule(criteria=frozenset({Criterion.UNREACHABLE}))
    s.start(state(office), only_place, EPOCH, check_immediate=False)
    assert changed(s.offer(state(office, open=False), only_place, EPOCH + 1)) == [[]]


def test_check_immediate_tells_an_unreachable_presentity_at_once() -> None:
    s = schedule(criteria=frozenset({Criterion.UNREACHABLE}))
    out = s.start(state(open=False), ALL, EPOCH, check_immediate=True)
    assert changed(out) == [[]]


# -- End Presence Notification ------------------------------------------------------


def test_end_quietly_sends_nothing_more_and_no_status_end() -> None:
    s = schedule(frequency=1.0, deadline=EPOCH + 5)
    s.start(None, ALL, EPOCH, check_immediate=True)
    s.offer(state(activity(Activity.BUSY, 0)), ALL, EPOCH)
    s.offer(state(activity(Activity.AWAY, 0.5)), ALL, EPOCH + 0.5)  # pending
    s.end_quietly()
    assert s.get_timer() is None
    assert s.handle_timer(EPOCH + 1) == []
    assert s.handle_timer(EPOCH + 5) == []
    assert s.offer(state(activity(Activity.MEAL, 6)), ALL, EPOCH + 6) == []


# -- property ---------------------------------------------------------------------

ACTIVITIES = [Activity.AVAILABLE, Activity.BUSY, Activity.AWAY, Activity.MEETING]
PLACES = [Place.HOME, Place.OFFICE]


@st.composite
def presences(draw: st.DrawFn) -> Presence:
    attrs: list[PresenceAttribute] = []
    if draw(st.booleans()):
        attrs.append(PresenceAttribute(draw(st.sampled_from(ACTIVITIES)),
                                       at(draw(st.integers(0, 2)))))
    if draw(st.booleans()):
        attrs.append(PresenceAttribute(draw(st.sampled_from(PLACES)), T0))
    if draw(st.booleans()):
        attrs.append(PresenceAttribute(Other("mood", draw(st.sampled_from(["a", "b"]))), T0))
    return Presence(ALICE, tuple(attrs), draw(st.booleans()))


# Multiples of 1/4 s: exact in binary floating point, so interval arithmetic
# in the test and in the schedule agree to the last bit.
steps = st.integers(0, 12).map(lambda n: n / 4)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), steps, presences()),
        st.tuples(st.just("timer"), steps, st.none()),
    ),
    max_size=30,
)


def _key(entry: dict[str, Any]) -> object:
    value = entry["typeAndValue"]
    if value["unionElement"] == "Other":
        return ("Other", value["other"]["name"])
    return value["unionElement"]


def _withdrawn(entry: dict[str, Any]) -> bool:
    value = entry["typeAndValue"]
    if value["unionElement"] == "Other":
        return bool(value["other"]["value"] == "")
    return bool(value[value["unionElement"].lower()] == value["unionElement"] + "None")


@settings(max_examples=300, deadline=None)
@given(
    ops=operations,
    frequency=st.sampled_from([0.0, 0.5, 1.0, 2.5]),
    count=st.one_of(st.none(), st.integers(1, 5)),
    duration=st.one_of(st.none(), st.integers(1, 40).map(lambda n: n / 4)),
    granted=st.frozensets(st.sampled_from([AttributeType.ACTIVITY, AttributeType.PLACE,
                                           AttributeType.OTHER])),
    asked=st.frozensets(st.sampled_from([AttributeType.ACTIVITY, AttributeType.OTHER])),
    current=st.one_of(st.none(), presences()),
    check_immediate=st.booleans(),
)
def test_schedule_properties(
    ops: list[tuple[str, float, Presence | None]],
    frequency: float,
    count: int | None,
    duration: float | None,
    granted: frozenset[AttributeType],
    asked: frozenset[AttributeType],
    current: Presence | None,
    check_immediate: bool,
) -> None:
    deadline = EPOCH + duration if duration is not None else None
    s = schedule(frequency=frequency, remaining=count, deadline=deadline, attributes=asked)
    log: list[tuple[float, dict[str, Any]]] = []
    now = EPOCH

    def record(deliveries: list[Any]) -> None:
        log.extend((now, d.data) for d in deliveries)

    def fire_due_timers(until: float) -> None:
        # What the watcher service does: handle_timer exactly at get_timer().
        nonlocal now
        while (timer := s.get_timer()) is not None and timer <= until:
            now = max(now, timer)
            record(s.handle_timer(now))

    def visible(presence: Presence) -> dict[object, dict[str, Any]]:
        allowed = granted & asked if asked else granted
        entries = [attribute_to_json(a) for a in presence.attributes if a.type in allowed]
        return {_key(entry): entry for entry in entries}

    record(s.start(current, granted, now, check_immediate=check_immediate))
    known: dict[object, dict[str, Any]] = {}  # what the application was told (or the baseline)
    if current is not None and not check_immediate:
        known.update(visible(current))
    last_offer: tuple[float, Presence] | None = None
    for kind, step, presence in ops:
        target = now + step
        fire_due_timers(target)
        now = target
        if kind == "offer":
            assert presence is not None
            record(s.offer(presence, granted, now))
            last_offer = (now, presence)
        else:
            record(s.handle_timer(now))  # a spurious or late timer call changes nothing wrong
    if last_offer is not None:
        fire_due_timers(last_offer[0] + frequency)
        now = max(now, last_offer[0] + frequency)

    messages = [kind for _, data in log for kind in data]
    changes = [(t, data["statusChanged"]) for t, data in log if "statusChanged" in data]
    for _, change in changes:
        assert change["correlator"] == "c1" and change["presentity"] == ALICE
        assert change["changedAttributes"], "a statusChanged always carries a change"
        for entry in change["changedAttributes"]:
            known[_key(entry)] = entry
            element = entry["typeAndValue"]["unionElement"]
            assert AttributeType(element) in granted
            assert not asked or AttributeType(element) in asked
    if count is not None:
        assert len(changes) <= count
    assert messages.count("statusEnd") <= 1
    if "statusEnd" in messages:
        assert messages[-1] == "statusEnd"
        assert s.ended and s.get_timer() is None
        ended_by_count = count is not None and len(changes) == count
        assert ended_by_count or (deadline is not None and log[-1][0] >= deadline)
    if changes and not check_immediate:
        # The first interval runs from the start ("start at the end of the
        # time period"), with the same exception at the deadline.
        first = changes[0][0]
        assert first >= EPOCH + frequency or (deadline is not None and first >= deadline)
    for (t1, _), (t2, _) in zip(changes, changes[1:], strict=False):
        # The one exception: a coalesced state flushed at the deadline, just
        # before statusEnd — the last change is never dropped.
        flushed_at_end = deadline is not None and t2 >= deadline and messages[-1] == "statusEnd"
        assert t2 - t1 >= frequency or flushed_at_end
    if last_offer is not None and not s.ended:
        assert deadline is None or last_offer[0] + frequency < deadline
        now_visible = visible(last_offer[1])
        for key, entry in now_visible.items():
            assert known.get(key) == entry
        for key, entry in known.items():
            if key not in now_visible:
                assert _withdrawn(entry), f"{key} went away untold: {entry}"
