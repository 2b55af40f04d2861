"""ServerLiveness with a fake endpoint (probe, canary subscription) and bounded() REST waits."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adapter.liveness import CANARY_USER, ServerLiveness, bounded
from sip import NotifyReceived, SipURI, SubscriptionState, SubscriptionTerminated
from sip.aio import RequestFailed, RequestTimedOut
from sip.subscription import SubscriptionAccepted
from sip.useragent import OptionsAnswered, UserAgentEvent

SERVER = SipURI.parse("sip:127.0.0.1:5070")
CAME_BACK = "came back"
FORGOT = "lost its subscriptions (restarted?)"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


class FakeSubscription:
    """The canary's handle: what liveness sends through it is recorded."""

    def __init__(self, sip: FakeEndpoint, subscription_id: int,
                 on_event: Callable[[Any], None]) -> None:
        self.sip = sip
        self.id = subscription_id
        self.on_event = on_event

    def refresh(self) -> None:
        self.sip.refreshed.append(self.id)

    def end(self) -> None:
        self.sip.ended.append(self.id)


class FakeEndpoint:
    """The part of SipEndpoint that liveness uses; the test plays the server."""

    server = SERVER

    def __init__(self) -> None:
        #: What the next probes do: "answer", "refuse" (503), "timeout", "hang".
        self.answers = "answer"
        self.probes = 0
        self.accept_subscriptions = True
        self.started: list[tuple[int, SipURI, SipURI]] = []
        self.refreshed: list[int] = []
        self.ended: list[int] = []
        self.heard_at = float("-inf")
        self._handles: dict[int, FakeSubscription] = {}
        self._next_id = 100

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def emit(self, event: UserAgentEvent) -> None:
        """An event from the server, routed as the endpoint does: to its handle."""
        if not isinstance(event, SubscriptionTerminated) or event.status is not None:
            self.heard_at = self.now()
        handle = self._handles.get(getattr(event, "subscription_id", -1))
        if handle is not None:
            handle.on_event(event)

    async def probe(self) -> OptionsAnswered:
        self.probes += 1
        await asyncio.sleep(0)  # a round trip: whatever was due arrives meanwhile
        if self.answers == "refuse":
            raise RequestFailed("OPTIONS", 503, "Service Unavailable")
        if self.answers == "timeout":
            raise RequestTimedOut("OPTIONS", None, "timeout")
        if self.answers == "hang":
            await asyncio.Event().wait()
        return OptionsAnswered(self.probes, 200, 0.001)

    def subscribe(self, subscriber: SipURI, target: SipURI, *,
                  on_event: Callable[[Any], None]) -> FakeSubscription:
        self._next_id += 1
        self.started.append((self._next_id, subscriber, target))
        handle = self._handles[self._next_id] = FakeSubscription(self, self._next_id, on_event)
        # The server's answer comes later, as the real one does.
        answer: UserAgentEvent
        if self.accept_subscriptions:
            answer = SubscriptionAccepted(self._next_id, 600)
        else:
            answer = SubscriptionTerminated(self._next_id, "failed", 403)
        asyncio.get_running_loop().call_soon(self.emit, answer)
        return handle

    @property
    def canary(self) -> int:
        return self.started[-1][0]


class World:
    def __init__(self, interval: float = 5.0) -> None:
        self.sip = FakeEndpoint()
        self.liveness = ServerLiveness(self.sip, interval)  # type: ignore[arg-type]
        self.resyncs: list[str] = []
        self.others: list[str] = []

        async def resync(why: str) -> None:
            self.resyncs.append(why)

        async def other(why: str) -> None:
            self.others.append(why)

        self.liveness.on_resync(resync)
        self.liveness.on_resync(other)


def test_the_first_probe_starts_a_canary_and_later_probes_refresh_it() -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        ((canary, subscriber, target),) = w.sip.started
        assert subscriber == target == SipURI("sip", CANARY_USER, "127.0.0.1")
        await w.liveness.check()
        await w.liveness.check()
        assert w.sip.refreshed == [canary, canary]
        assert w.resyncs == [] and w.liveness.resyncs == 0
        assert w.liveness.reachable

    run(scenario)


@pytest.mark.parametrize("failure", ["refuse", "timeout", "hang"])
def test_unreachable_then_back_is_one_resync_came_back(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        w = World(interval=0.02)  # a hung probe waits one interval
        await w.liveness.check()
        await asyncio.sleep(0)  # the canary's 200 arrives before the outage
        first = w.sip.canary
        w.sip.answers = failure
        for _ in range(3):
            await w.liveness.check()
            assert not w.liveness.reachable
        assert w.sip.refreshed == []  # nothing sent into the void
        w.sip.answers = "answer"
        await w.liveness.check()
        assert w.liveness.reachable
        assert w.resyncs == [CAME_BACK] and w.others == [CAME_BACK]
        assert w.liveness.resyncs == 1
        # A fresh canary for the server as it is now; the old one let go.
        assert w.sip.ended == [first] and w.sip.canary != first
        await w.liveness.check()
        assert w.resyncs == [CAME_BACK]
        assert w.sip.refreshed == [w.sip.canary]

    with caplog.at_level(logging.WARNING, logger="adapter.liveness"):
        run(scenario)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "unreachable" in m]) == 1  # said once, not per probe
    assert any("came back" in m for m in messages)


def test_a_canary_that_timed_out_during_the_outage_adds_no_second_resync() -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        w.sip.answers = "timeout"
        await w.liveness.check()
        # Its own refresh found no server either.
        w.sip.emit(SubscriptionTerminated(w.sip.canary, "timeout"))
        await w.liveness.check()
        w.sip.answers = "answer"
        await w.liveness.check()
        await w.liveness.check()
        await w.liveness.check()
        assert w.resyncs == [CAME_BACK]

    run(scenario)


def test_the_canary_gone_means_the_server_forgot_and_resync_follows() -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        await w.liveness.check()
        canary = w.sip.canary
        assert w.sip.refreshed == [canary]
        # That refresh got 481 (RFC 6665 §4.1.2.2): the server restarted.
        w.sip.emit(SubscriptionTerminated(canary, "dialog-gone", 481))
        assert w.resyncs == []  # not from inside the SIP event
        await w.liveness.check()
        assert w.resyncs == [FORGOT] and w.others == [FORGOT]
        assert w.sip.canary != canary and w.sip.ended == []  # the old one is gone already
        await w.liveness.check()
        await w.liveness.check()
        assert w.resyncs == [FORGOT]
        assert w.sip.refreshed == [canary, w.sip.canary, w.sip.canary]

    run(scenario)


def test_the_canary_ended_by_us_is_no_news() -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        canary = w.sip.canary
        w.sip.emit(SubscriptionTerminated(canary, "unsubscribed"))
        await w.liveness.check()
        assert w.resyncs == []
        assert len(w.sip.started) == 2  # simply a new canary
        assert w.sip.refreshed == []

    run(scenario)


def test_other_subscriptions_ending_are_not_the_canary() -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        w.sip.emit(SubscriptionTerminated(w.sip.canary + 1, "dialog-gone", 481))
        await w.liveness.check()
        assert w.resyncs == []
        assert w.sip.refreshed == [w.sip.canary]

    run(scenario)


def test_a_refused_canary_does_not_resync_everything_at_every_probe(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A server that will not take the canary (403, 404, a challenge) has not
    # lost anything: re-publishing and re-subscribing everything each
    # keepalive would be a storm of our own making.
    async def scenario() -> None:
        w = World()
        w.sip.accept_subscriptions = False
        for _ in range(4):
            await w.liveness.check()
        assert w.resyncs == []
        assert len(w.sip.started) == 4  # tried again at each probe
        # Once the server takes it, a loss counts again.
        w.sip.accept_subscriptions = True
        await w.liveness.check()
        await w.liveness.check()
        w.sip.emit(SubscriptionTerminated(w.sip.canary, "dialog-gone", 481))
        await w.liveness.check()
        assert w.resyncs == [FORGOT]

    with caplog.at_level(logging.WARNING, logger="adapter.liveness"):
        run(scenario)
    refusals = [r for r in caplog.records if "canary" in r.getMessage()]
    assert len(refusals) == 1  # said once, not at every probe


def test_a_failing_resync_callback_does_not_stop_the_others_or_the_probes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        sip = FakeEndpoint()
        liveness = ServerLiveness(sip, 0.01)  # type: ignore[arg-type]
        calls: list[str] = []

        async def broken(why: str) -> None:
            calls.append("broken")
            raise RuntimeError("resync bug")

        async def fine(why: str) -> None:
            calls.append("fine")

        liveness.on_resync(broken)
        liveness.on_resync(fine)
        liveness.reachable = False  # as after failed probes
        liveness.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if sip.probes >= 3:
                break
        await liveness.close()
        assert calls == ["broken", "fine"]
        assert sip.probes >= 3  # the loop outlived the broken callback

    with caplog.at_level(logging.ERROR, logger="adapter.liveness"):
        run(scenario)
    assert any(r.exc_info and "resync bug" in str(r.exc_info[1]) for r in caplog.records)


def test_start_probes_every_interval_until_closed() -> None:
    async def scenario() -> None:
        sip = FakeEndpoint()
        liveness = ServerLiveness(sip, 0.01)  # type: ignore[arg-type]
        liveness.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if sip.probes >= 3:
                break
        await liveness.close()
        assert sip.probes >= 3
        seen = sip.probes
        await asyncio.sleep(0.05)
        assert sip.probes == seen

    run(scenario)


def test_an_interval_of_zero_probes_nothing() -> None:
    async def scenario() -> None:
        sip = FakeEndpoint()
        liveness = ServerLiveness(sip, 0)  # type: ignore[arg-type]
        liveness.start()
        await asyncio.sleep(0.02)
        await liveness.close()
        assert sip.probes == 0 and liveness.reachable

    run(scenario)


# -- bounded(): how long a REST call waits for the SIP side ---------------------


def down() -> ServerLiveness:
    liveness = ServerLiveness(FakeEndpoint(), 5.0)  # type: ignore[arg-type]
    liveness.reachable = False
    return liveness


async def answer(value: Any, after: float = 0.0) -> Any:
    await asyncio.sleep(after)
    return value


def test_bounded_returns_the_value_of_a_fast_answer() -> None:
    async def scenario() -> None:
        assert await bounded(answer("ok"), "PUBLISH", None, 1.0) == "ok"
        up = ServerLiveness(FakeEndpoint(), 5.0)  # type: ignore[arg-type]
        assert await bounded(answer(7, 0.001), "SUBSCRIBE", up, 1.0) == 7

    run(scenario)


def test_bounded_gives_up_after_the_timeout() -> None:
    async def scenario() -> None:
        slow = answer("late", after=10)
        with pytest.raises(RequestTimedOut) as info:
            await bounded(slow, "SUBSCRIBE", None, 0.01)
        assert info.value.status is None
        assert str(info.value) == "SUBSCRIBE failed: no answer within 0.01 s"
        assert inspect.getcoroutinestate(slow) == inspect.CORO_CLOSED

    run(scenario)


def test_bounded_errors_from_the_sip_side_pass_through() -> None:
    async def refused() -> None:
        raise RequestFailed("PUBLISH", 403, "Forbidden")

    async def scenario() -> None:
        with pytest.raises(RequestFailed) as info:
            await bounded(refused(), "PUBLISH", None, 1.0)
        assert not isinstance(info.value, RequestTimedOut)
        assert info.value.status == 403

    run(scenario)


def test_bounded_while_the_server_is_down_fails_at_once_and_closes_the_coroutine() -> None:
    async def scenario() -> None:
        waiting = answer("never", after=10)
        with pytest.raises(RequestTimedOut) as info:
            await bounded(waiting, "PUBLISH", down(), 30.0)
        assert str(info.value) == "PUBLISH failed: presence server unreachable"
        # Closed, not left for the garbage collector to warn "never awaited".
        assert inspect.getcoroutinestate(waiting) == inspect.CORO_CLOSED

    run(scenario)


def test_bounded_while_the_server_is_down_cancels_a_future() -> None:
    async def scenario() -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with pytest.raises(RequestTimedOut):
            await bounded(future, "SUBSCRIBE", down(), 30.0)
        assert future.cancelled()

    run(scenario)


@pytest.mark.parametrize("failure", ["timeout", "hang"])
def test_a_silent_probe_while_the_server_sends_notifies_is_a_busy_adapter_not_an_outage(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        w = World(interval=0.02)
        await w.liveness.check()
        canary = w.sip.canary
        w.sip.answers = failure
        original = w.sip.probe

        async def probe_under_a_burst() -> OptionsAnswered:
            # The server's NOTIFYs arrive while our probe waits for its 200.
            w.sip.emit(NotifyReceived(7, SubscriptionState.parse("active;expires=600"), b"", None))
            return await original()

        w.sip.probe = probe_under_a_burst  # type: ignore[method-assign]
        for _ in range(3):
            await w.liveness.check()
            assert w.liveness.reachable
        w.sip.probe = original  # type: ignore[method-assign]
        w.sip.answers = "answer"
        await w.liveness.check()
        assert w.resyncs == [] and w.liveness.resyncs == 0
        assert w.sip.started[-1][0] == canary  # the same canary all along

    with caplog.at_level(logging.WARNING, logger="adapter.liveness"):
        run(scenario)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "busy" in m]) == 1
    assert not any("unreachable" in m for m in messages)


def test_a_silent_probe_with_nothing_else_from_the_server_is_an_outage() -> None:
    async def scenario() -> None:
        w = World(interval=0.02)
        await w.liveness.check()
        await asyncio.sleep(0)  # the canary's 200
        # Heard from the server before this probe started: no evidence now.
        w.sip.emit(NotifyReceived(7, SubscriptionState.parse("active;expires=600"), b"", None))
        w.sip.answers = "timeout"
        await w.liveness.check()
        assert not w.liveness.reachable

    run(scenario)


def test_a_refusal_is_an_answer_and_counts_as_down_even_while_notifies_arrive() -> None:
    async def scenario() -> None:
        w = World(interval=0.02)
        await w.liveness.check()
        w.sip.answers = "refuse"
        original = w.sip.probe

        async def probe() -> OptionsAnswered:
            w.sip.emit(NotifyReceived(7, SubscriptionState.parse("active;expires=600"), b"", None))
            return await original()

        w.sip.probe = probe  # type: ignore[method-assign]
        await w.liveness.check()
        assert not w.liveness.reachable

    run(scenario)


@pytest.mark.parametrize("reason", ["timeout", "transport-error"])
def test_a_canary_refresh_unanswered_while_probes_answer_is_no_restart(reason: str) -> None:
    async def scenario() -> None:
        w = World()
        await w.liveness.check()
        canary = w.sip.canary
        # Its refresh got no answer in time (a burst); the server never said 481.
        w.sip.emit(SubscriptionTerminated(canary, reason))
        await w.liveness.check()
        assert w.resyncs == []
        assert w.sip.canary != canary  # simply a new canary
        await w.liveness.check()
        assert w.resyncs == []

    run(scenario)


def test_close_stops_the_probes_when_it_lands_just_as_a_probe_fails() -> None:
    # The adapter's shutdown cancels the probing task at any moment; a TLS link
    # that cannot be verified fails a probe within milliseconds, so the cancel
    # can land in the very turn after the probe's failure.  The cancel must
    # still end the task, or shutdown waits on it until the process is killed.
    async def scenario() -> None:
        sip = FakeEndpoint()
        sip.answers = "timeout"
        liveness = ServerLiveness(sip, 0.01)  # type: ignore[arg-type]
        closing: list[asyncio.Task[None]] = []
        probe = sip.probe

        async def probe_then_close() -> OptionsAnswered:
            if sip.probes == 2:
                closing.append(asyncio.create_task(liveness.close()))
            return await probe()

        sip.probe = probe_then_close  # type: ignore[method-assign]
        liveness.start()
        while not closing:
            await asyncio.sleep(0.01)
        done, _ = await asyncio.wait(closing, timeout=10)
        assert done, "close() still waiting for the probing task"
        stopped_at = sip.probes
        await asyncio.sleep(0.05)
        assert sip.probes == stopped_at

    run(scenario)


def test_bounded_waits_share_deadlines_and_each_gives_up_on_its_own() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()
        second: asyncio.Future[str] = loop.create_future()
        early = asyncio.ensure_future(bounded(first, "PUBLISH", None, 0.05))
        await asyncio.sleep(0.03)
        # Filed behind the first and ending long after it, so that a loop
        # slowed by a busy machine still ends the first alone.
        late = asyncio.ensure_future(bounded(second, "PUBLISH", None, 5.0))
        # A shorter wait than one already filed: timed on its own.
        short = asyncio.ensure_future(bounded(answer("x", after=10), "SUBSCRIBE", None, 0.01))
        with pytest.raises(RequestTimedOut):
            await short
        with pytest.raises(RequestTimedOut):
            await early
        assert not late.done()
        second.set_result("in time")
        assert await late == "in time"

    run(scenario)


def test_bounded_passes_on_a_cancellation_that_is_not_its_timeout() -> None:
    async def scenario() -> None:
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(bounded(waiting, "PUBLISH", None, 30.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario)


def test_a_wait_answered_before_its_deadline_is_not_cancelled_later() -> None:
    async def scenario() -> None:
        assert await bounded(answer("ok"), "PUBLISH", None, 0.02) == "ok"
        await asyncio.sleep(0.05)  # past the deadline: the task goes on unharmed
        assert await bounded(answer("again"), "PUBLISH", None, 0.02) == "again"

    run(scenario)
