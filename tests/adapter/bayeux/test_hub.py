"""The asyncio driver: held connects are futures, one timer, no sleeping objects."""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from adapter.bayeux.hub import Hub
from adapter.bayeux.limits import BayeuxLimits
from adapter.bayeux.message import Message

T = TypeVar("T")


class ManualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock (the one the hub reads) moves only when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run_on_manual_clock(scenario: Callable[[ManualClockLoop], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=ManualClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ManualClockLoop)
        return runner.run(scenario(loop))


async def advance(loop: ManualClockLoop, seconds: float) -> None:
    """Move the clock on and let every timer due by then run, in order."""
    loop.now += seconds
    passed = loop.create_future()
    loop.call_at(loop.now, passed.set_result, None)
    await passed


def authenticate(user: str, password: str) -> str | None:
    return user if password == "pw" else None


def subscribed_session(hub: Hub) -> str:
    (reply,) = hub.receive(
        [Message("/meta/handshake")], transport="websocket", credentials=("app", "pw")
    ).replies
    client_id = reply["clientId"]
    hub.receive(
        [Message("/meta/subscribe", client_id=client_id, subscription="/bayeux/app/**")],
        transport="websocket",
    )
    return client_id


async def held_session(hub: Hub) -> tuple[str, int]:
    client_id = subscribed_session(hub)
    hub.receive([Message("/meta/connect", client_id=client_id)], transport="websocket")
    held = hub.receive([Message("/meta/connect", client_id=client_id)], transport="websocket")
    assert held.held is not None
    return client_id, held.held


def test_a_delivery_answers_the_waiting_connect_on_the_next_loop_turn():
    async def scenario() -> list:
        hub = Hub(authenticate)
        _, token = await held_session(hub)
        waiter = asyncio.ensure_future(hub.wait(token))
        await asyncio.sleep(0)
        assert not waiter.done()
        hub.deliver("app", "/bayeux/app/x", {"n": 1})
        hub.deliver("app", "/bayeux/app/x", {"n": 2})
        return await asyncio.wait_for(waiter, 1)

    replies = asyncio.run(scenario())
    assert [r.get("data") for r in replies] == [{"n": 1}, {"n": 2}, None]


def test_the_hub_timer_releases_a_held_connect_at_the_advice_timeout():
    async def scenario(loop: ManualClockLoop) -> list:
        hub = Hub(authenticate, BayeuxLimits(connect_timeout=30))
        _, token = await held_session(hub)
        waiter = asyncio.ensure_future(hub.wait(token))
        await advance(loop, 29.9)
        assert not waiter.done()
        await advance(loop, 0.1)
        assert waiter.done()
        return waiter.result()

    replies = run_on_manual_clock(scenario)
    assert replies[-1]["successful"] is True


def test_a_hub_moves_on_to_a_new_loop_once_its_first_is_closed():
    # The hub keeps the loop it ran on (its clock is read per delivery); a
    # later loop, whose clock is far from the first one's, must be the one
    # read, even by a delivery before any request on it.
    hub = Hub(authenticate, BayeuxLimits(backlog_ttl=60))

    async def first(loop: ManualClockLoop) -> None:
        await held_session(hub)
        hub.close_application("app")

    async def second(loop: ManualClockLoop) -> list:
        loop.now = 1000.0
        hub.deliver("app", "/bayeux/app/x", {"n": 1})  # no session: kept for 60 s
        client_id = subscribed_session(hub)
        return hub.receive(
            [Message("/meta/connect", client_id=client_id)], transport="websocket"
        ).replies

    run_on_manual_clock(first)
    replies = run_on_manual_clock(second)
    # Kept at the first loop's time (0) it would have expired by 1000.
    assert [r.get("data") for r in replies] == [{"n": 1}, None]


def test_abandon_keeps_the_session_and_its_messages():
    async def scenario() -> list:
        hub = Hub(authenticate)
        client_id, token = await held_session(hub)
        hub.abandon(token)
        hub.deliver("app", "/bayeux/app/x", {"n": 1})
        again = hub.receive([Message("/meta/connect", client_id=client_id)], transport="websocket")
        hub.close()
        return again.replies

    replies = asyncio.run(scenario())
    assert [r.get("data") for r in replies] == [{"n": 1}, None]


def test_close_answers_held_connects(caplog):
    async def scenario() -> list:
        hub = Hub(authenticate, BayeuxLimits(queue_size=1))
        _, token = await held_session(hub)
        waiter = asyncio.ensure_future(hub.wait(token))
        with caplog.at_level(logging.WARNING, logger="adapter.bayeux"):
            hub.deliver("app", "/bayeux/app/x", {"n": 1})
            hub.deliver("app", "/bayeux/app/x", {"n": 2})
        hub.close()
        return await asyncio.wait_for(waiter, 1)

    replies = asyncio.run(scenario())
    assert [r.get("data") for r in replies] == [{"n": 2}, None]
    assert "dropped 1 oldest message(s) for app" in caplog.text


def test_a_full_backlog_is_told_once_then_once_per_interval_not_per_message(caplog):
    # No session: every delivery past backlog_size drops the oldest.  One
    # warning line each would bury the log; the first is told at once, the
    # rest counted and told at the end of each interval that had some.
    def told() -> list[str]:
        return [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]

    async def scenario(loop: ManualClockLoop) -> None:
        hub = Hub(authenticate, BayeuxLimits(backlog_size=2), drop_log_interval=10)
        with caplog.at_level(logging.WARNING, logger="adapter.bayeux"):
            for n in range(502):  # 500 dropped
                hub.deliver("app", "/bayeux/app/x", {"n": n})
            hub.deliver("other", "/bayeux/other/x", {"n": 0})
            await advance(loop, 9.9)
            assert len(told()) == 1  # the rest wait for the end of the interval
            await advance(loop, 0.1)  # one interval ends
            assert len(told()) == 2
            for n in range(3):
                hub.deliver("app", "/bayeux/app/x", {"n": n})
            await advance(loop, 10)  # the next one
            await advance(loop, 10)  # an interval with none: the next drop is told at once
            hub.deliver("app", "/bayeux/app/x", {"n": 9})
            hub.deliver("app", "/bayeux/app/x", {"n": 10})
            hub.close()  # what is not told yet is told now

    run_on_manual_clock(scenario)
    assert told() == [
        "bayeux: dropped 1 oldest message(s) for app (backlog full); 1 dropped in total",
        "bayeux: dropped 499 oldest message(s) for app (backlog full) in the last 10 s;"
        " 500 dropped in total",
        "bayeux: dropped 3 oldest message(s) for app (backlog full) in the last 10 s;"
        " 503 dropped in total",
        "bayeux: dropped 1 oldest message(s) for app (backlog full); 504 dropped in total",
        "bayeux: dropped 1 oldest message(s) for app (backlog full); 505 dropped in total",
    ]


def test_prepare_sees_each_handshake_credentials_before_receive():
    prepared: list[tuple[str, str]] = []

    async def prepare(user: str, password: str) -> None:
        prepared.append((user, password))

    async def scenario() -> None:
        hub = Hub(authenticate, prepare=prepare)
        ext = {"authentication": {"user": "app", "password": "pw"}}
        batch = [Message("/meta/handshake", ext=ext), Message("/meta/connect", client_id="x")]
        await hub.prepare(batch, ("basic-user", "basic-pw"))
        await hub.prepare([Message("/meta/handshake")], ("basic-user", "basic-pw"))
        await hub.prepare([Message("/meta/handshake")], None)
        await hub.prepare([Message("/meta/subscribe", client_id="x")], ("basic-user", "basic-pw"))

    asyncio.run(scenario())
    # ext.authentication wins over the transport's credentials, as in the handshake itself.
    assert prepared == [("app", "pw"), ("basic-user", "basic-pw")]
