"""Node names: one process each (adapter.cluster.nodes.claim), on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from adapter.cluster.nodes import NameInUse, NameTaken, Node, NodeRegistry, claim
from adapter.store.postgres import PostgresStore

LEASE = 1.0


def node(instance: str) -> Node:
    return Node("a", "http://127.0.0.1:8081", "127.0.0.1:5081", instance)


class Clock:
    """claim's clock and sleep: time passes only when it sleeps."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now = 0.0
        self.on_sleep = on_sleep
        self.slept = 0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1
        if self.on_sleep is not None:
            self.on_sleep()


@pytest.fixture
def stores(postgres_url: str) -> Iterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    yield opened
    for store in opened:
        asyncio.run(store.close())


def run(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(sql, args)
        return cursor.fetchall() if cursor.description is not None else []


def instance_of(url: str) -> str | None:
    rows = run(url, "SELECT instance FROM nodes WHERE name = 'a'")
    return rows[0][0] if rows else None


def opened(url: str, stores: list[PostgresStore]) -> PostgresStore:
    stores.append(PostgresStore(url, node="a"))
    return stores[-1]


def claimed(url: str, stores: list[PostgresStore]) -> PostgresStore:
    """A store of a process that has claimed the name "a" as instance "one"."""
    first = opened(url, stores)
    claim(first.run_locked, node("one"), LEASE, sleep=Clock().sleep)
    assert instance_of(url) == "one"
    return first


def test_a_live_node_s_name_is_refused_and_its_row_left_alone(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    claimed(postgres_url, stores)
    second = opened(postgres_url, stores)

    def heartbeat() -> None:  # node "one" is alive: its row is written meanwhile
        run(postgres_url, "UPDATE nodes SET last_seen = now() WHERE name = 'a'")

    clock = Clock(heartbeat)
    with pytest.raises(NameInUse, match="'a' is the name of a live node .http://127.0.0.1:8081"):
        claim(second.run_locked, node("two"), LEASE, sleep=clock.sleep, clock=clock)
    assert instance_of(postgres_url) == "one"


def test_a_name_whose_process_is_gone_is_taken_at_once(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    first = claimed(postgres_url, stores)
    stores.remove(first)
    asyncio.run(first.close())  # its session, and the lock on the name, end
    second = opened(postgres_url, stores)
    clock = Clock()
    claim(second.run_locked, node("two"), LEASE, sleep=clock.sleep, clock=clock)
    assert clock.slept == 0 and instance_of(postgres_url) == "two"


def test_a_name_whose_row_stopped_being_written_is_taken_after_two_periods(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    # The process's session is still open (its machine lost, say), but its
    # row is not written any more.
    claimed(postgres_url, stores)
    second = opened(postgres_url, stores)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # real time: the server's clock ages the row
        slept.append(seconds)
        time.sleep(seconds)

    claim(second.run_locked, node("two"), 0.2, sleep=sleep)
    assert slept and instance_of(postgres_url) == "two"  # waited, then taken


def test_a_heartbeat_finding_another_instance_in_its_row_says_so(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, node="a")

    async def scenario() -> None:
        old = NodeRegistry(store, node("one"), LEASE)
        await old.heartbeat()  # no row yet: written
        run(postgres_url, "UPDATE nodes SET instance = 'two' WHERE name = 'a'")
        with pytest.raises(NameTaken):
            await old.heartbeat()
        await old.leave()  # not its row: left alone
        assert instance_of(postgres_url) == "two"
        await NodeRegistry(store, node("two"), LEASE).leave()
        assert instance_of(postgres_url) is None
        await store.close()

    asyncio.run(scenario())
