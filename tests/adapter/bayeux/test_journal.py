"""BacklogJournal: the Bayeux backlog mirrored in the adapter's store (MemoryStore, SqliteStore)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from adapter.bayeux.backlog import Backlog
from adapter.bayeux.channels import Channel
from adapter.bayeux.journal import BacklogJournal
from adapter.bayeux.message import Delivery
from adapter.store import MemoryStore, SqliteStore, Store

EPOCH = 1_700_000_000.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "var" / "adapter.sqlite"


class WallClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def delivery(n: int, app: str = "a", leaf: str = "x") -> Delivery:
    return Delivery(Channel.parse(f"/bayeux/{app}/{leaf}"), {"n": n}, str(n))


def stored(store: Store) -> list[tuple[str, int]]:
    return [(row.app_id, row.data["n"]) for row in store.backlog_load()]


async def settled(store: Store) -> None:
    """Wait until every write queued so far is on disk (one writer, in order)."""
    await store.delete("publication", "no such key")


def test_journal_follows_add_take_overflow_and_expiry() -> None:
    store = MemoryStore()
    wall = WallClock(EPOCH)
    backlog = Backlog(size=3, ttl=60, journal=BacklogJournal(store, wall))
    # Loop time (monotonic) and wall time differ by an arbitrary offset.
    backlog.add("a", delivery(1), now=100.0)
    assert store.backlog_load()[0].expires_at == EPOCH + 60
    backlog.add("a", delivery(2, leaf="y"), now=110.0)
    backlog.add("b", delivery(3, app="b"), now=110.0)
    assert stored(store) == [("a", 1), ("a", 2), ("b", 3)]

    taken = backlog.take("a", [Channel.parse("/bayeux/a/y")], now=120.0)
    assert [d.data["n"] for d in taken] == [2]
    assert stored(store) == [("a", 1), ("b", 3)]

    for n in (4, 5, 6):  # a holds 1, 4, 5; 6 pushes 1 out
        backlog.add("a", delivery(n), now=130.0)
    assert stored(store) == [("b", 3), ("a", 4), ("a", 5), ("a", 6)]

    backlog.expire(now=170.0)  # b's message was kept at 110 for 60 s
    assert stored(store) == [("a", 4), ("a", 5), ("a", 6)]
    backlog.expire(now=190.0)
    assert stored(store) == []


def test_restore_brings_back_live_rows_in_order_with_their_remaining_ttl(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        wall = WallClock(EPOCH)
        backlog = Backlog(size=10, ttl=60, journal=BacklogJournal(store, wall))
        # Loop time (monotonic) and wall time differ by an arbitrary offset.
        backlog.add("a", delivery(1), now=500.0)  # wall expiry EPOCH + 60
        wall.now = EPOCH + 20
        backlog.add("b", delivery(2, app="b"), now=520.0)  # EPOCH + 80
        wall.now = EPOCH + 40
        backlog.add("a", delivery(3), now=540.0)  # EPOCH + 100
        await store.close()

        # The adapter is down for 70 s of wall time; its new loop clock starts anywhere.
        store = SqliteStore(path)
        assert [row.expires_at for row in store.backlog_load()] == [
            EPOCH + 60, EPOCH + 80, EPOCH + 100
        ]
        wall = WallClock(EPOCH + 70)
        restored = Backlog(size=10, ttl=60, journal=BacklogJournal(store, wall))
        assert BacklogJournal(store, wall).restore(restored, now=7.0) == 2
        assert restored.count("a") == 1 and restored.count("b") == 1
        assert restored.next_expiry() == pytest.approx(7.0 + 10)  # b: 10 s left
        await settled(store)
        assert stored(store) == [("b", 2), ("a", 3)]  # the expired one is forgotten too

        restored.expire(now=17.5)  # b's 10 s are over, a has 30 s
        taken = restored.take("a", [Channel.parse("/bayeux/a/**")], now=36.9)
        assert [(str(d.channel), d.data) for d in taken] == [("/bayeux/a/x", {"n": 3})]
        assert taken[0].id.startswith("r")
        await settled(store)
        assert stored(store) == []
        await store.close()

        store = SqliteStore(path)
        assert store.backlog_load() == []
        await store.close()

    run(scenario)


def test_restore_keeps_the_order_of_many_rows(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        wall = WallClock(EPOCH)
        backlog = Backlog(size=100, ttl=60, journal=BacklogJournal(store, wall))
        for n in range(50):
            backlog.add("a", delivery(n), now=float(n) / 10)
        await store.close()

        store = SqliteStore(path)
        restored = Backlog(size=100, ttl=60, journal=BacklogJournal(store, wall))
        assert BacklogJournal(store, wall).restore(restored, now=0.0) == 50
        taken = restored.take("a", [Channel.parse("/bayeux/a/x")], now=0.0)
        assert [d.data["n"] for d in taken] == list(range(50))
        assert len({d.id for d in taken}) == 50
        await store.close()

    run(scenario)
