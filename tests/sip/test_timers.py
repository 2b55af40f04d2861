"""sip.timers: TimerHeap, the keyed deadline heap of the user agent and the
Bayeux server, and TimerCalendar, the same by instant for the user agent's
refreshes on their grid.  The behaviour tests run on both."""

import random
from collections.abc import Callable
from typing import Any

import pytest

from sip.errors import LocalProtocolError
from sip.timers import TimerCalendar, TimerHeap

Timers = TimerHeap[Any] | TimerCalendar[Any]


@pytest.fixture(params=[TimerHeap, TimerCalendar])
def make(request: pytest.FixtureRequest) -> Callable[[], Timers]:
    return request.param  # type: ignore[no-any-return]


def test_empty(make: Callable[[], Timers]) -> None:
    heap = make()
    assert heap.next_deadline() is None
    assert heap.pop_expired(1e9) == []
    assert len(heap) == 0


def test_pops_in_deadline_order_up_to_now_inclusive(make: Callable[[], Timers]) -> None:
    heap = make()
    heap.schedule(3.0, "c")
    heap.schedule(1.0, "a")
    heap.schedule(2.0, "b")
    heap.schedule(4.0, "d")
    assert heap.next_deadline() == 1.0
    assert heap.pop_expired(0.5) == []
    assert heap.pop_expired(3.0) == ["a", "b", "c"]
    assert heap.next_deadline() == 4.0
    assert "c" not in heap and "d" in heap
    assert len(heap) == 1


def test_equal_deadlines_pop_in_scheduling_order(make: Callable[[], Timers]) -> None:
    heap = make()
    for key in "qwerty":
        heap.schedule(5.0, key)
    assert heap.pop_expired(5.0) == list("qwerty")


def test_reschedule_replaces_deadline(make: Callable[[], Timers]) -> None:
    heap = make()
    heap.schedule(1.0, "a")
    heap.schedule(2.0, "b")
    heap.schedule(10.0, "a")  # later
    assert heap.next_deadline() == 2.0
    assert heap.deadline("a") == 10.0
    assert heap.pop_expired(5.0) == ["b"]
    heap.schedule(0.5, "a")  # earlier
    assert heap.next_deadline() == 0.5
    assert heap.pop_expired(20.0) == ["a"]  # once, not twice
    assert heap.pop_expired(20.0) == []


def test_cancel(make: Callable[[], Timers]) -> None:
    heap = make()
    heap.schedule(1.0, "a")
    heap.schedule(2.0, "b")
    heap.cancel("a")
    heap.cancel("never scheduled")
    assert heap.deadline("a") is None
    assert heap.next_deadline() == 2.0
    assert heap.pop_expired(3.0) == ["b"]
    heap.schedule(4.0, "a")  # a cancelled key can be armed again
    assert heap.pop_expired(4.0) == ["a"]


def test_keys_need_not_be_orderable(make: Callable[[], Timers]) -> None:
    class Key:
        pass

    heap = make()
    k1, k2 = Key(), Key()
    heap.schedule(1.0, k1)
    heap.schedule(1.0, k2)
    assert heap.pop_expired(1.0) == [k1, k2]


def test_matches_a_naive_model(make: Callable[[], Timers]) -> None:
    rng = random.Random(20240601)
    heap = make()
    model: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        op = rng.random()
        key = rng.randrange(300)
        if op < 0.55:
            deadline = now + rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 50)])
            heap.schedule(deadline, key)
            model[key] = deadline
        elif op < 0.75:
            heap.cancel(key)
            model.pop(key, None)
        else:
            now += rng.uniform(0, 5)
            expected = sorted((d, k) for k, d in model.items() if d <= now)
            got = heap.pop_expired(now)
            # Equal deadlines pop in scheduling order, which the model does not
            # record: compare deadlines in order and the keys as sets.
            assert [model[k] for k in got] == [d for d, _ in expected]
            assert set(got) == {k for _, k in expected}
            for k in got:
                del model[k]
        assert heap.next_deadline() == (min(model.values()) if model else None)
        assert len(heap) == len(model)


def test_rescheduling_does_not_grow_memory() -> None:
    heap: TimerHeap[int] = TimerHeap()
    for key in range(1_000):
        heap.schedule(float(key), key)
    for round_ in range(50):
        for key in range(1_000):
            heap.schedule(float(key + round_), key)
    # Stale entries are at most a quarter of the live keys.
    assert len(heap._heap) <= 1.25 * len(heap) + 1
    assert heap.next_deadline() == 49.0


def test_a_re_armed_key_is_kept_once_whatever_equal_key_re_arms_it() -> None:
    heap: TimerHeap[tuple[str, int]] = TimerHeap()
    first = ("subscription", 1_000_000)
    heap.schedule(5.0, first)
    for deadline in (7.0, 6.0, 8.0):
        heap.schedule(deadline, ("subscription", 1_000_000))  # equal, another object
    # The live entry and every stale one hold the key filed first.
    assert all(entry[2] is first for entry in heap._heap)
    assert heap.deadline(first) == 8.0
    assert heap.pop_expired(8.0) == [first]
    assert len(heap) == 0


def test_hundred_thousand_keys() -> None:
    heap: TimerHeap[int] = TimerHeap()
    rng = random.Random(7)
    n = 100_000
    deadlines = [rng.uniform(0, 1000) for _ in range(n)]
    for key, deadline in enumerate(deadlines):
        heap.schedule(deadline, key)
    for key in range(0, n, 2):  # re-arm half, cancel a quarter
        heap.schedule(deadlines[key] + 1000, key)
    for key in range(1, n, 4):
        heap.cancel(key)
    first = heap.pop_expired(1000.0)
    rest = heap.pop_expired(3000.0)
    assert len(first) == n // 4 and len(rest) == n // 2
    assert all(key % 4 == 3 for key in first)
    assert len(heap) == 0 and heap.next_deadline() is None
    # Re-arming and cancelling left no stale entries behind.
    assert heap._heap == []


def test_nan_deadline_is_a_local_protocol_error(make: Callable[[], Timers]) -> None:
    heap = make()
    heap.schedule(2.0, "b")
    with pytest.raises(LocalProtocolError):
        heap.schedule(float("nan"), "a")
    assert heap.next_deadline() == 2.0
    assert heap.pop_expired(2.0) == ["b"]


def test_a_key_moved_later_keeps_its_entry_until_it_surfaces() -> None:
    heap: TimerHeap[str] = TimerHeap()
    heap.schedule(1.0, "a")
    heap.schedule(2.0, "b")
    for deadline in (3.0, 4.0, 5.0):
        heap.schedule(deadline, "a")
    assert len(heap._heap) == 2  # no entry pushed for the moves
    assert heap.deadline("a") == 5.0
    assert heap.next_deadline() == 2.0  # "a" filed at 5.0 as its old entry came up
    assert heap.pop_expired(4.9) == ["b"]
    assert heap.next_deadline() == 5.0
    assert heap.pop_expired(5.0) == ["a"]
    assert heap.pop_expired(99.0) == [] and heap.next_deadline() is None


def test_a_key_moved_later_then_earlier_or_cancelled(make: Callable[[], Timers]) -> None:
    heap = make()
    heap.schedule(1.0, "a")
    heap.schedule(9.0, "a")
    heap.schedule(3.0, "a")  # earlier than 9, later than the entry at 1
    heap.schedule(2.0, "b")
    heap.schedule(1.0, "c")
    heap.schedule(8.0, "c")
    heap.cancel("c")
    assert heap.pop_expired(2.5) == ["b"]
    assert heap.pop_expired(8.5) == ["a"]
    assert heap.pop_expired(99.0) == []
    assert len(heap) == 0


def test_a_moved_key_that_is_due_pops_with_the_others_in_deadline_order(
    make: Callable[[], Timers],
) -> None:
    heap = make()
    heap.schedule(1.0, "a")
    heap.schedule(2.0, "b")
    heap.schedule(3.0, "a")
    heap.schedule(2.5, "c")
    assert heap.pop_expired(10.0) == ["b", "c", "a"]


def test_the_calendar_pops_as_the_heap_does_ties_and_moves_included() -> None:
    # Deadlines on a grid of whole seconds, as the user agent's refreshes
    # are, so ties are the rule; moves later, earlier and cancels mixed.
    rng = random.Random(20261208)
    heap: TimerHeap[int] = TimerHeap()
    calendar: TimerCalendar[int] = TimerCalendar()
    now = 0.0
    for _ in range(30_000):
        op = rng.random()
        key = rng.randrange(500)
        if op < 0.6:
            deadline = float(int(now) + rng.randrange(0, 40))
            if rng.random() < 0.2:
                deadline = now + rng.uniform(0, 40)  # off the grid
            heap.schedule(deadline, key)
            calendar.schedule(deadline, key)
        elif op < 0.75:
            heap.cancel(key)
            calendar.cancel(key)
        else:
            now += rng.uniform(0, 3)
            assert calendar.pop_expired(now) == heap.pop_expired(now)
        assert calendar.next_deadline() == heap.next_deadline()
        assert calendar.deadline(key) == heap.deadline(key)
        assert len(calendar) == len(heap)
    assert calendar.pop_expired(1e9) == heap.pop_expired(1e9)


def test_the_calendar_keeps_the_key_filed_first_and_no_empty_instant() -> None:
    calendar: TimerCalendar[tuple[str, int]] = TimerCalendar()
    first = ("subscription", 1_000_000)
    calendar.schedule(5.0, first)
    for deadline in (7.0, 6.0, 8.0):
        calendar.schedule(deadline, ("subscription", 1_000_000))  # equal, another object
    assert list(calendar._due) == [8.0]
    assert next(iter(calendar._due[8.0])) is first
    assert calendar.next_deadline() == 8.0  # the instants 5, 6 and 7 passed over
    popped = calendar.pop_expired(8.0)
    assert popped == [first] and popped[0] is first
    assert len(calendar) == 0 and calendar._due == {} and calendar._instants == []


def test_the_calendars_instants_stay_bounded_by_the_live_ones() -> None:
    calendar: TimerCalendar[int] = TimerCalendar()
    for key in range(1_000):
        calendar.schedule(1_000.0 + key % 10, key)  # ten instants in use
    for round_ in range(200):
        # Each a short deadline of its own, then back on the grid: an
        # instant made and left empty each time, as a refresh in flight does.
        key = round_ % 1_000
        calendar.schedule(500.0 + round_ / 7, key)
        calendar.schedule(1_000.0 + key % 10, key)
    # Stale instants are at most a quarter of the live ones, past the floor.
    assert len(calendar._instants) <= max(64, 1.25 * len(calendar._due)) + 1
    assert calendar.next_deadline() == 1_000.0
    # Keys moved earlier took a new place in the order, then kept it moving later.
    assert calendar.pop_expired(1_000.0) == [*range(200, 1_000, 10), *range(0, 200, 10)]


def test_a_hundred_thousand_keys_on_a_few_hundred_instants() -> None:
    calendar: TimerCalendar[int] = TimerCalendar()
    n = 100_000
    for key in range(n):
        calendar.schedule(float(450 + key % 90), key)
    assert len(calendar._due) == 90
    for key in range(0, n, 2):  # re-arm half, later; cancel a quarter
        calendar.schedule(float(1_000 + key % 90), key)
    for key in range(1, n, 4):
        calendar.cancel(key)
    first = calendar.pop_expired(999.0)
    rest = calendar.pop_expired(2_000.0)
    assert len(first) == n // 4 and len(rest) == n // 2
    assert all(key % 4 == 3 for key in first)
    assert len(calendar) == 0 and calendar.next_deadline() is None
    assert calendar._due == {} and calendar._instants == []
