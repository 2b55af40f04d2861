"""Leases and fencing: the node's own book (no I/O), then the statements on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from adapter.cluster.leases import ACQUIRE, DROP, GIVE_UP, OWNER, RENEW, SWEEP, UNLEASED, LeaseBook
from adapter.store import StaleLease
from adapter.store.postgres import PostgresStore

PUB = ("publication", "sip:alice@example.com")
WATCH = ("watch", '["sip:bob@example.com", "sip:alice@example.com"]')


# -- the book ---------------------------------------------------------------------


def test_a_lease_is_acted_on_until_a_half_period_short_of_its_expiry() -> None:
    book = LeaseBook(lease=10.0)
    assert book.took([(*PUB, 1)], began=100.0) == [PUB]
    assert book.token(PUB, 100.0) == 1
    assert book.token(PUB, 114.9) == 1
    # The table says 120 (two periods from the renewal); the node stops at 115.
    assert book.token(PUB, 115.0) is None
    assert book.token(WATCH, 100.0) is None


def test_taking_a_lease_held_with_the_same_token_is_not_new_work() -> None:
    book = LeaseBook(lease=1.0)
    book.took([(*PUB, 3)], began=0.0)
    assert book.took([(*PUB, 3)], began=0.5) == []
    assert book.took([(*PUB, 4)], began=0.6) == [PUB]  # lost and taken back meanwhile
    assert book.token(PUB, 0.7) == 4


def test_a_renewal_tells_what_was_lost_and_what_was_found() -> None:
    book = LeaseBook(lease=1.0)
    book.took([(*PUB, 1), (*WATCH, 1)], began=0.0)
    other = ("watch", '["x", "y"]')
    lost, found = book.renewed([(*PUB, 1), (*other, 7)], began=0.5)
    assert lost == [WATCH]  # taken by another node
    assert found == [other]  # in this node's name, not held here (a restart)
    assert book.token(WATCH, 0.6) is None
    assert book.token(other, 0.6) == 7
    assert book.token(PUB, 1.9) == 1  # renewed: valid from 0.5 for 1.5 s


def test_a_lease_with_a_new_token_in_the_renewal_is_lost() -> None:
    book = LeaseBook(lease=1.0)
    book.took([(*PUB, 1)], began=0.0)
    # Taken by another node and back to this one: the work was the other's meanwhile.
    lost, found = book.renewed([(*PUB, 3)], began=0.5)
    assert (lost, found) == ([PUB], [PUB])


def test_a_lease_taken_after_the_renewal_began_is_not_judged_by_it() -> None:
    book = LeaseBook(lease=1.0)
    book.took([(*PUB, 1)], began=5.0)  # a request's, on another connection
    lost, found = book.renewed([], began=4.9)
    assert (lost, found) == ([], [])
    assert book.token(PUB, 5.1) == 1


def test_leases_not_renewed_in_time_expire_in_the_book() -> None:
    book = LeaseBook(lease=2.0)
    book.took([(*PUB, 1)], began=0.0)
    book.took([(*WATCH, 1)], began=1.0)
    assert book.expired(2.9) == []
    assert book.expired(3.0) == [PUB]
    assert book.expired(4.0) == [WATCH]
    assert len(book) == 0


@pytest.mark.parametrize("seed", range(4))
def test_the_counts_by_kind_follow_every_lease_taken_renewed_expired_and_dropped(
    seed: int,
) -> None:
    rng = random.Random(seed)
    book = LeaseBook(lease=2.0)
    now = 0.0
    leases = [(kind, f"sip:u{i}@example.com") for kind in ("publication", "watch")
              for i in range(20)]

    def rows(count: int) -> list[tuple[str, str, int]]:
        return [(*rng.choice(leases), rng.choice((1, 1, 2))) for _ in range(count)]

    most = 0
    for _ in range(2000):
        step = rng.random()
        if step < 0.4:
            book.took(rows(rng.randrange(1, 4)), began=now)
        elif step < 0.6:
            # What the node still owns, less some, plus some it did not know of.
            kept = [(kind, key, book.token((kind, key), now) or 1) for kind, key in book.keys()
                    if rng.random() < 0.9]
            book.renewed(kept + rows(rng.randrange(3)), began=now - rng.choice((0.0, 0.5)))
        elif step < 0.7:
            book.expired(now)
        elif step < 0.85:
            book.drop(rng.choice(leases))
        else:
            now += rng.choice((0.1, 0.5, 2.0))
        recount: dict[str, int] = {}
        for kind, _ in book.keys():
            recount[kind] = recount.get(kind, 0) + 1
        assert book.kinds() == recount
        most = max(most, len(book))
    assert most >= 20


# -- the statements, on PostgreSQL --------------------------------------------------


class Db:
    """The store's database, with the cluster's statements run as a node would."""

    def __init__(self, url: str) -> None:
        self.url = url

    def run(self, sql: str, **args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as db:
            cursor = db.execute(sql, {"ttl": 20.0, **args})
            return cursor.fetchall() if cursor.description is not None else []

    def expire(self, owner: str) -> None:
        self.run("UPDATE leases SET expires = now() - interval '1 hour' WHERE owner = %(me)s",
                 me=owner)

    def owners(self) -> dict[tuple[str, str], tuple[str, int]]:
        rows = self.run("SELECT kind, key, owner, token FROM leases")
        return {(kind, key): (owner, token) for kind, key, owner, token in rows}


@pytest.fixture
def db(postgres_url: str) -> Db:
    asyncio.run(PostgresStore(postgres_url, node="a").close())  # makes the tables
    return Db(postgres_url)


def acquire(db: Db, me: str, lease: tuple[str, str]) -> list[tuple[Any, ...]]:
    return db.run(ACQUIRE, me=me, kind=lease[0], key=lease[1])


def test_new_work_is_the_first_asker_s_and_another_node_cannot_take_it(db: Db) -> None:
    assert acquire(db, "a", PUB) == [(1,)]
    assert acquire(db, "b", PUB) == []
    assert db.run(OWNER, kind=PUB[0], key=PUB[1]) == [("a", False)]
    assert acquire(db, "a", PUB) == [(1,)]  # its own again: the same token


def test_an_expired_lease_is_taken_with_a_new_token(db: Db) -> None:
    acquire(db, "a", PUB)
    db.expire("a")
    assert db.run(OWNER, kind=PUB[0], key=PUB[1]) == [("a", True)]
    assert acquire(db, "b", PUB) == [(2,)]
    assert db.owners() == {PUB: ("b", 2)}


def test_renewal_answers_what_the_node_owns(db: Db) -> None:
    acquire(db, "a", PUB)
    acquire(db, "b", WATCH)
    db.expire("a")  # a renewal revives its own, even expired (nobody took them)
    assert db.run(RENEW, me="a") == [(*PUB, 1)]


def test_the_sweep_shares_a_dead_node_s_leases_between_the_live_ones(db: Db) -> None:
    keys = [("watch", f'["w{i}", "p"]') for i in range(40)]
    for key in keys:
        acquire(db, "a", key)
    db.expire("a")
    mine = {"b": 0, "c": 1}
    claimed: dict[str, list[Any]] = {}
    for node, index in mine.items():
        claimed[node] = db.run(SWEEP, me=node, count=2, index=index, grace=7200, limit=1000)
    # Each took its own share, none twice, all with a new token.
    assert len(claimed["b"]) + len(claimed["c"]) == 40
    assert claimed["b"] and claimed["c"]
    assert {(k, key) for k, key, _ in claimed["b"]}.isdisjoint(
        {(k, key) for k, key, _ in claimed["c"]})
    assert all(token == 2 for _, _, token in claimed["b"] + claimed["c"])
    # Nothing is left to sweep, and live leases are never swept.
    assert db.run(SWEEP, me="b", count=2, index=0, grace=0, limit=1000) == []


def test_a_share_whose_node_died_too_is_swept_by_anyone_after_the_grace(db: Db) -> None:
    for i in range(10):
        acquire(db, "a", ("watch", f'["w{i}", "p"]'))
    db.expire("a")  # an hour ago: past any grace
    claimed = db.run(SWEEP, me="b", count=10, index=99, grace=1, limit=1000)
    assert len(claimed) == 10


def test_records_without_a_lease_are_taken_by_the_first_node(db: Db) -> None:
    db.run("INSERT INTO records VALUES ('publication', 'sip:x@h', '{}'),"
           " ('schedule', 's', '{}'), ('watch', 'w', '{}')")
    assert sorted(db.run(UNLEASED, me="a")) == [("publication", "sip:x@h", 1), ("watch", "w", 1)]
    assert db.run(UNLEASED, me="b") == []


def test_drop_and_give_up(db: Db) -> None:
    acquire(db, "a", PUB)
    acquire(db, "a", WATCH)
    db.run(DROP, me="a", kind=PUB[0], key=PUB[1], token=2)  # a stale token drops nothing
    assert PUB in db.owners()
    db.run(DROP, me="a", kind=PUB[0], key=PUB[1], token=1)
    assert PUB not in db.owners()
    db.run(GIVE_UP, me="a")
    assert db.run(OWNER, kind=WATCH[0], key=WATCH[1]) == [("a", True)]


# -- fencing: the store's writes under a lease ----------------------------------------


def fenced_store(url: str, node: str, tokens: dict[tuple[str, str], int]) -> PostgresStore:
    store = PostgresStore(url, node=node)
    store.fence = lambda kind, key: tokens.get((kind, key))
    return store


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_a_write_under_a_stale_token_does_nothing_and_fails(db: Db) -> None:
    acquire(db, "a", PUB)
    stale: list[tuple[str, str]] = []

    async def scenario() -> None:
        a = fenced_store(db.url, "a", {PUB: 1})
        a.on_stale = lambda kind, key: stale.append((kind, key))
        await a.put(*PUB, {"v": 1})
        db.expire("a")
        assert acquire(db, "b", PUB) == [(2,)]  # node b takes it over
        with pytest.raises(StaleLease):
            await a.put(*PUB, {"v": 2})
        with pytest.raises(StaleLease):
            await a.delete(*PUB)
        # In the same group as a stale write, other writes still commit.
        other = a.put("schedule", "s", {"kept": True})
        refused = a.put(*PUB, {"v": 3})
        await other
        with pytest.raises(StaleLease):
            await refused
        b = fenced_store(db.url, "b", {PUB: 2})
        await b.put(*PUB, {"v": 4})
        await a.close()
        await b.close()

    run(scenario)
    assert stale == [PUB, PUB, PUB]
    assert db.run("SELECT kind, value FROM records ORDER BY kind") == [
        ("publication", '{"v":4}'), ("schedule", '{"kept":true}')]


def test_an_update_is_fenced_like_a_put(db: Db) -> None:
    # A publication's new entity tag, written alone on each refresh: only by
    # the node that holds the publication's lease.
    acquire(db, "a", PUB)
    stale: list[tuple[str, str]] = []

    async def scenario() -> None:
        a = fenced_store(db.url, "a", {PUB: 1})
        a.on_stale = lambda kind, key: stale.append((kind, key))
        await a.put(*PUB, {"attributes": [1], "etag": "e1"})
        await a.update(*PUB, {"etag": "e2"})
        db.expire("a")
        assert acquire(db, "b", PUB) == [(2,)]  # node b takes it over
        with pytest.raises(StaleLease):
            await a.update(*PUB, {"etag": "e3"})
        b = fenced_store(db.url, "b", {PUB: 2})
        await b.update(*PUB, {"etag": "e4"})
        await a.close()
        await b.close()

    run(scenario)
    assert stale == [PUB]
    (value,) = db.run("SELECT value FROM records WHERE kind = 'publication'")
    assert json.loads(value[0]) == {"attributes": [1], "etag": "e4"}


def test_a_write_of_work_the_node_holds_no_lease_for_fails_at_once(db: Db) -> None:
    async def scenario() -> None:
        a = fenced_store(db.url, "a", {})
        with pytest.raises(StaleLease):
            await a.put(*WATCH, {})
        await a.put("schedule", "s", {})  # a record of no work: unfenced
        with pytest.raises(StaleLease):
            await a.put("schedule", "s", {"v": 2}, lease=WATCH)  # part of a watch
        await a.close()

    run(scenario)
    assert db.run("SELECT kind, value FROM records") == [("schedule", "{}")]


SCHEDULE = ("schedule", '["bob-app", "c1"]')


def test_a_schedule_s_progress_is_written_under_its_watch_s_lease(db: Db) -> None:
    acquire(db, "a", WATCH)
    stale: list[tuple[str, str]] = []

    async def scenario() -> None:
        a = fenced_store(db.url, "a", {WATCH: 1})
        a.on_stale = lambda kind, key: stale.append((kind, key))
        await a.put(*SCHEDULE, {"remaining": 5}, lease=WATCH)
        db.expire("a")
        assert acquire(db, "b", WATCH) == [(2,)]  # node b takes the watch over
        b = fenced_store(db.url, "b", {WATCH: 2})
        await b.put(*SCHEDULE, {"remaining": 4}, lease=WATCH)
        # Node a, which still holds token 1, cannot write the schedule's
        # progress, nor delete it.
        with pytest.raises(StaleLease):
            await a.put(*SCHEDULE, {"remaining": 3}, lease=WATCH)
        with pytest.raises(StaleLease):
            await a.delete(*SCHEDULE, lease=WATCH)
        await a.close()
        await b.close()

    run(scenario)
    assert stale == [WATCH, WATCH]  # node a lets the watch go
    assert db.run("SELECT kind, key, value FROM records") == [(*SCHEDULE, '{"remaining":4}')]
    assert db.owners() == {WATCH: ("b", 2)}


def test_the_end_of_work_deletes_its_lease_with_its_record(db: Db) -> None:
    acquire(db, "a", PUB)
    acquire(db, "a", WATCH)
    ended: list[tuple[str, str]] = []

    async def scenario() -> None:
        tokens = {PUB: 1, WATCH: 1}
        a = fenced_store(db.url, "a", tokens)

        def on_end(kind: str, key: str, done: object) -> None:
            ended.append((kind, key))
            del tokens[(kind, key)]  # as the node's book drops it

        a.on_end = on_end
        await a.put(*PUB, {"v": 1})
        await a.put(*WATCH, {"v": 1})
        await a.put(*SCHEDULE, {"remaining": 1}, lease=WATCH)
        # A schedule's end is not its watch's: the lease stays.
        await a.delete(*SCHEDULE, lease=WATCH)
        assert db.owners() == {PUB: ("a", 1), WATCH: ("a", 1)}
        await a.delete(*PUB)
        assert db.owners() == {WATCH: ("a", 1)}
        # Work another node took over: the end of a stale owner changes nothing.
        db.expire("a")
        acquire(db, "b", WATCH)
        with pytest.raises(StaleLease):
            await a.delete(*WATCH)
        tokens.clear()  # as the node lets it go
        with pytest.raises(StaleLease):
            await a.delete(*WATCH)
        # Work with no lease at all (a withdrawal of nothing): nothing to fence.
        await a.delete(*PUB)
        await a.close()

    run(scenario)
    assert ended == [PUB, WATCH]
    assert db.owners() == {WATCH: ("b", 2)}
    assert db.run("SELECT kind, value FROM records") == [("watch", '{"v":1}')]


def test_a_group_of_fenced_writes_and_a_renewal_lock_leases_in_one_order(db: Db) -> None:
    # A renewal holding the first lease (in key order) and then asking for the
    # second, while a group writes the second and then the first: both finish
    # (before, PostgreSQL broke the cycle with "deadlock detected").
    first, second = ("publication", "k1"), ("publication", "k2")
    acquire(db, "a", first)
    acquire(db, "a", second)

    async def waiting() -> bool:
        async with await psycopg.AsyncConnection.connect(db.url, autocommit=True) as probe:
            cursor = await probe.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            row = await cursor.fetchone()
            return row is not None and row[0] > 0

    async def scenario() -> None:
        a = fenced_store(db.url, "a", {first: 1, second: 1})
        async with await psycopg.AsyncConnection.connect(db.url) as renewal:
            await renewal.execute(
                "SELECT 1 FROM leases WHERE kind = %s AND key = %s FOR NO KEY UPDATE", first
            )
            group = asyncio.gather(a.put(*second, {"v": 2}), a.put(*first, {"v": 1}))
            for _ in range(600):  # the group waits on the renewal's lock
                if await waiting():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the group never waited for the renewal's lock")
            await renewal.execute(
                "SELECT 1 FROM leases WHERE kind = %s AND key = %s FOR NO KEY UPDATE", second
            )
            await renewal.commit()
        await group
        await a.close()

    run(scenario)
    assert db.run("SELECT key, value FROM records ORDER BY key") == [
        ("k1", '{"v":1}'), ("k2", '{"v":2}')]
