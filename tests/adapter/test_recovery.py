"""recover(): every item started, paced with jitter, bounded, logged, failures contained."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import pytest

from adapter.recovery import RecoveryPace, recover

FAST = RecoveryPace(rate=1_000_000.0, concurrency=3, jitter=0.5)
real_sleep = asyncio.sleep


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


class Starts:
    """A start function that counts what is in flight at once."""

    def __init__(self, hold: float = 0.002, fail: set[int] | None = None) -> None:
        self.hold = hold
        self.fail = fail or set()
        self.started: list[int] = []
        self.finished: list[int] = []
        self.in_flight = 0
        self.most = 0

    async def __call__(self, item: int) -> None:
        self.started.append(item)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await real_sleep(self.hold)
            if item in self.fail:
                raise RuntimeError(f"item {item} broke")
            self.finished.append(item)
        finally:
            self.in_flight -= 1


def test_every_item_is_started_and_the_bound_is_kept() -> None:
    async def scenario() -> None:
        starts = Starts()
        ok = await recover("subscriptions", list(range(20)), starts, pace=FAST)
        assert ok == 20
        assert starts.started == list(range(20))  # started in the given order
        assert sorted(starts.finished) == list(range(20))
        assert starts.most == FAST.concurrency  # used, and never exceeded

    run(scenario)


def test_a_bound_of_one_starts_one_at_a_time() -> None:
    async def scenario() -> None:
        starts = Starts(hold=0.0005)
        pace = RecoveryPace(rate=1_000_000.0, concurrency=1)
        assert await recover("publications", list(range(5)), starts, pace=pace) == 5
        assert starts.most == 1
        assert starts.finished == list(range(5))

    run(scenario)


def test_nothing_to_recover_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        starts = Starts()
        assert await recover("subscriptions", [], starts, pace=FAST) == 0
        assert starts.started == []

    with caplog.at_level(logging.INFO, logger="adapter.recovery"):
        run(scenario)
    assert caplog.records == []


def test_progress_is_logged_n_of_total(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        await recover("subscriptions", list(range(25)), Starts(hold=0), pace=FAST)

    with caplog.at_level(logging.INFO, logger="adapter.recovery"):
        run(scenario)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "recovering 25 subscriptions"
    # A line every tenth (rounded down) and one at the end.
    assert lines[1:] == [f"recovered {n} of 25 subscriptions" for n in (*range(2, 25, 2), 25)]


def test_one_failing_item_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        starts = Starts(fail={3, 7})
        ok = await recover("publications", list(range(10)), starts, pace=FAST)
        assert ok == 8
        assert starts.started == list(range(10))
        assert sorted(starts.finished) == [0, 1, 2, 4, 5, 6, 8, 9]

    with caplog.at_level(logging.INFO, logger="adapter.recovery"):
        run(scenario)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)  # which item, with its traceback
    assert {str(r.exc_info[1]) for r in failures if r.exc_info} == {
        "item 3 broke",
        "item 7 broke",
    }
    assert caplog.records[-1].getMessage() == "recovered 10 of 10 publications"


def test_starts_are_spaced_by_the_rate_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        pauses.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)
    pace = RecoveryPace(rate=50.0, concurrency=4, jitter=0.5)

    async def scenario() -> None:
        starts = Starts(hold=0)
        await recover("subscriptions", list(range(8)), starts, pace=pace, rng=random.Random(7))

    run(scenario)
    draws = random.Random(7)
    assert pauses == [pytest.approx(0.02 * (1 + 0.5 * draws.random())) for _ in range(8)]
    assert all(0.02 <= p <= 0.03 for p in pauses)
    assert len(set(pauses)) == 8  # jittered, not in lockstep


def test_cancelling_recovery_cancels_what_it_started() -> None:
    # Shutdown cancels recovery; nothing it started may go on behind it.
    async def scenario() -> None:
        starts = Starts(hold=0.05)
        pace = RecoveryPace(rate=1_000_000.0, concurrency=2)
        task = asyncio.create_task(recover("subscriptions", list(range(10)), starts, pace=pace))
        await real_sleep(0.01)
        assert starts.started == [0, 1]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await real_sleep(0.1)
        assert starts.finished == []
        assert starts.started == [0, 1]
        assert starts.in_flight == 0

    run(scenario)
