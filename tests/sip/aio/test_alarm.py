"""The one timer of a driver (sip/aio/alarm.py) on a real event loop."""

from __future__ import annotations

import asyncio

from sip.aio import Alarm

WAIT = 5.0


def test_fires_once_at_a_deadline_of_the_loop_clock() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[None] = loop.create_future()
        alarm = Alarm(lambda: fired.set_result(None))
        deadline = loop.time() + 0.01
        alarm.set(deadline)
        assert alarm.deadline == deadline
        await asyncio.wait_for(fired, WAIT)
        assert alarm.deadline is None  # fired: not armed any more

    asyncio.run(scenario())


def test_setting_the_same_deadline_keeps_the_armed_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        alarm = Alarm(lambda: None)
        alarm.set(loop.time() + 60)
        handle = alarm._handle
        alarm.set(alarm.deadline)
        assert alarm._handle is handle and handle is not None and not handle.cancelled()
        alarm.set(loop.time() + 30)
        assert handle.cancelled() and alarm._handle is not handle
        # A later deadline keeps the timer set for the earlier one.
        handle = alarm._handle
        alarm.set(loop.time() + 90)
        assert alarm._handle is handle and not handle.cancelled()
        alarm.set(None)
        assert alarm.deadline is None and alarm._handle is None

    asyncio.run(scenario())


def test_a_cancelled_alarm_does_not_fire() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: list[None] = []
        alarm = Alarm(lambda: fired.append(None))
        alarm.set(loop.time())
        alarm.cancel()
        later: asyncio.Future[None] = loop.create_future()
        Alarm(lambda: later.set_result(None)).set(loop.time() + 0.02)
        await asyncio.wait_for(later, WAIT)
        assert fired == []

    asyncio.run(scenario())


def test_a_deadline_on_another_clock_fires_after_the_difference() -> None:
    # A machine on its own clock (here a manual one, far from the loop's):
    # the alarm waits deadline - clock() seconds of the loop.
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        now = [1_000_000.0]
        fired: asyncio.Future[None] = loop.create_future()
        alarm = Alarm(lambda: fired.set_result(None), lambda: now[0])
        alarm.set(now[0] + 0.01)
        await asyncio.wait_for(fired, WAIT)
        # A deadline already past fires at once (not with a negative delay).
        past: asyncio.Future[None] = loop.create_future()
        Alarm(lambda: past.set_result(None), lambda: now[0]).set(now[0] - 100)
        await asyncio.wait_for(past, WAIT)

    asyncio.run(scenario())


def test_a_deadline_moved_later_does_not_fire_at_the_earlier_one() -> None:
    # On a manual clock that stands still: the loop's timer set for the
    # first deadline wakes after 0.01 s of the loop, and the alarm, moved
    # far later since, arms again for that instead of firing.
    async def scenario() -> None:
        now = [1_000_000.0]
        fired: list[None] = []
        alarm = Alarm(lambda: fired.append(None), lambda: now[0])
        alarm.set(now[0] + 0.01)
        first = alarm._handle
        alarm.set(now[0] + 1000)
        assert alarm._handle is first
        await asyncio.sleep(0.1)  # the first timer is due before this sleep ends
        assert fired == []
        assert alarm.deadline == now[0] + 1000
        assert alarm._handle is not None and alarm._handle is not first
        alarm.cancel()
        # Moved later and back to the earlier deadline: it fires then.
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        alarm = Alarm(lambda: done.set_result(None), lambda: now[0])
        alarm.set(now[0] + 0.01)
        alarm.set(now[0] + 1000)
        alarm.set(now[0] + 0.01)
        await asyncio.wait_for(done, WAIT)

    asyncio.run(scenario())
