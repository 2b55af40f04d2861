"""The store: every backend (SQLite on a real file, PostgreSQL on a real private
server) through the same tests, then what is SQLite's own; MemoryStore; schema
versions and migrations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapter.notification import Criterion, Schedule, schedule_from_record, schedule_to_record
from adapter.presence_json import attribute_to_json
from adapter.records import watch_from_record, watch_to_record
from adapter.store import BacklogRow, MemoryStore, SqliteStore, Store, StoreError, StoreUnreachable
from adapter.store import postgres as postgres_store
from adapter.store import sqlite as sqlite_store
from adapter.store.interface import encode
from adapter.store.postgres import PostgresStore, describe
from adapter.store.sqlite import MIGRATIONS, SCHEMA_VERSION
from adapter.watch import Reference, Watch, WatchState
from pidf import Activity, AttributeType, Other, Place, Presence, PresenceAttribute
from tests.postgres_server import TEST_SETTINGS, PostgresCluster

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
EPOCH = 1_700_000_000.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def rows_on_disk(path: Path, sql: str = "SELECT kind, key, value FROM records") -> list[Any]:
    """What another process reading the file would see now."""
    with sqlite3.connect(path) as other:
        rows = other.execute(sql).fetchall()
    other.close()
    return rows


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "var" / "adapter.sqlite"


# -- the records the services keep ---------------------------------------------------


def a_publication() -> list[dict[str, Any]]:
    return [
        attribute_to_json(PresenceAttribute(Activity.BUSY, T0, "in a call")),
        attribute_to_json(PresenceAttribute(Place.OFFICE, T0)),
    ]


def a_watch() -> Watch:
    return Watch(
        watcher=BOB,
        presentity=ALICE,
        app_id="bob-app",
        application="Bob's phone book",
        attributes=frozenset({AttributeType.ACTIVITY, AttributeType.PLACE}),
        reference=Reference("c7", "/bayeux/bob-app/subs", "PresenceNotification"),
        state=WatchState.BLOCKED,
        decisions={AttributeType.ACTIVITY: True, AttributeType.PLACE: False},
    )


def a_schedule() -> Schedule:
    busy = PresenceAttribute(Activity.BUSY, T0, "in a call")
    other = PresenceAttribute(Other("mood", "cheerful"), T0)
    return Schedule(
        correlator="c1",
        app_id="bob-app",
        endpoint="/bayeux/bob-app/presence",
        watcher=BOB,
        presentity=ALICE,
        interface_name="PresenceNotification",
        attributes=frozenset({AttributeType.ACTIVITY, AttributeType.OTHER}),
        criteria=frozenset({Criterion.BUSY, Criterion.REACHABLE}),
        frequency=30.0,
        remaining=4,
        deadline=EPOCH + 3600,
        last_sent=EPOCH - 5,
        sent={AttributeType.ACTIVITY: busy, (AttributeType.OTHER, "mood"): other},
        pending=(
            Presence(ALICE, (PresenceAttribute(Activity.AWAY, T0),), False),
            frozenset({AttributeType.ACTIVITY}),
        ),
    )


def same_watch(a: Watch, b: Watch) -> bool:
    # Watch holds a lock and runtime state; these are the fields a record keeps.
    fields = ("watcher", "presentity", "app_id", "application", "attributes", "reference")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and (
        a.state,
        a.decisions,
    ) == (b.state, b.decisions)


def test_schedule_record_round_trips() -> None:
    schedule = a_schedule()
    assert schedule_from_record(schedule_to_record(schedule)) == schedule
    unlimited = Schedule("c2", "bob-app", "/bayeux/bob-app/p", BOB, ALICE)
    assert schedule_from_record(schedule_to_record(unlimited)) == unlimited


def test_watch_record_round_trips() -> None:
    watch = a_watch()
    assert same_watch(watch_from_record(watch_to_record(watch)), watch)
    bare = Watch(BOB, ALICE, "bob-app")
    again = watch_from_record(watch_to_record(bare))
    assert same_watch(again, bare)
    assert again.reference is None and again.decisions is None


# -- every backend: SqliteStore on a real file, PostgresStore on a real database -------


class SqliteBackend:
    """An SQLite store file, and another process's view of it."""

    name = "sqlite"
    module = sqlite_store

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def open(self) -> SqliteStore:
        return SqliteStore(self.path)

    def rows(self, sql: str) -> list[Any]:
        return rows_on_disk(self.path, sql)

    def refuse(self, key: str) -> None:
        """Make the database itself refuse a record of ``key``, as a full disk would."""
        self.rows(
            f"CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = '{key}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )

    @contextlib.contextmanager
    def writes_held(self) -> Iterator[None]:
        """Another connection holds the write lock meanwhile."""
        blocker = sqlite3.connect(self.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            blocker.execute("COMMIT")
            blocker.close()

    def version(self) -> int:
        return int(self.rows("PRAGMA user_version")[0][0])

    def set_version(self, version: int) -> None:
        self.rows(f"PRAGMA user_version = {version}")

    def indexes(self) -> list[str]:
        return [n for (n,) in self.rows("SELECT name FROM sqlite_master WHERE type = 'index'")]

    def tables(self) -> list[str]:
        return [n for (n,) in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")]


class PostgresBackend:
    """A database of the session's private PostgreSQL, and another client's view of it."""

    name = "postgresql"
    module = postgres_store

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = describe(url)

    def open(self) -> PostgresStore:
        return PostgresStore(self.url)

    def rows(self, sql: str) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True) as db:
            cursor = db.execute(sql)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description else []

    def refuse(self, key: str) -> None:
        self.rows(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused by the test'; END $$"
        )
        self.rows(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON records FOR EACH ROW "
            f"WHEN (NEW.key = '{key}') EXECUTE FUNCTION refuse()"
        )

    @contextlib.contextmanager
    def writes_held(self) -> Iterator[None]:
        blocker = psycopg.connect(self.url)
        blocker.execute("LOCK TABLE meta, records, backlog IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            blocker.commit()
            blocker.close()

    def version(self) -> int:
        return int(self.rows("SELECT value FROM meta WHERE key = 'schema'")[0][0])

    def set_version(self, version: int) -> None:
        self.rows(f"UPDATE meta SET value = '{version}' WHERE key = 'schema'")

    def indexes(self) -> list[str]:
        return [n for (n,) in self.rows("SELECT indexname FROM pg_indexes")]

    def tables(self) -> list[str]:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        return [n for (n,) in self.rows(sql)]


Backend = SqliteBackend | PostgresBackend


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(path)
    return PostgresBackend(request.getfixturevalue("postgres_url"))


def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await store.put("publication", ALICE, a_publication())
        await store.put("watch", "w1", watch_to_record(a_watch()))
        await store.put("schedule", "s1", schedule_to_record(a_schedule()))
        seqs = [
            store.backlog_add("alice-app", "/bayeux/alice-app/p", {"n": 1}, EPOCH + 10),
            store.backlog_add("bob-app", "/bayeux/bob-app/p", {"n": 2}, EPOCH + 11),
            store.backlog_add("alice-app", "/bayeux/alice-app/p", {"n": 3}, EPOCH + 12.25),
        ]
        await store.close()

        store = backend.open()
        assert store.load("publication") == {ALICE: a_publication()}
        assert same_watch(watch_from_record(store.load("watch")["w1"]), a_watch())
        assert schedule_from_record(store.load("schedule")["s1"]) == a_schedule()
        assert store.backlog_load() == [
            BacklogRow(seqs[0], "alice-app", "/bayeux/alice-app/p", {"n": 1}, EPOCH + 10),
            BacklogRow(seqs[1], "bob-app", "/bayeux/bob-app/p", {"n": 2}, EPOCH + 11),
            BacklogRow(seqs[2], "alice-app", "/bayeux/alice-app/p", {"n": 3}, EPOCH + 12.25),
        ]
        assert seqs == sorted(seqs)
        await store.close()

    run(scenario)


def test_an_awaited_write_is_stored_when_the_future_completes(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        seen_at_completion: list[Any] = []
        future = store.put("publication", ALICE, a_publication())
        future.add_done_callback(
            lambda _: seen_at_completion.extend(backend.rows("SELECT kind, key FROM records"))
        )
        await future
        assert seen_at_completion == [("publication", ALICE)]
        await store.delete("publication", ALICE)
        assert backend.rows("SELECT kind, key FROM records") == []
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
def test_put_after_delete_and_delete_of_an_absent_key(
    request: pytest.FixtureRequest, path: Path, kind: str
) -> None:
    async def scenario() -> None:
        store: Store
        if kind == "memory":
            store = MemoryStore()
        elif kind == "sqlite":
            store = SqliteStore(path)
        else:
            store = PostgresStore(request.getfixturevalue("postgres_url"))
        await store.delete("watch", "never-there")
        await store.put("watch", "w", {"v": 1})
        await store.delete("watch", "w")
        assert store.load("watch") == {}
        await store.put("watch", "w", {"v": 2})
        await store.put("schedule", "w", {"other": "kind"})
        assert store.load("watch") == {"w": {"v": 2}}
        assert store.load("schedule") == {"w": {"other": "kind"}}
        await store.close()

    run(scenario)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "memory"])
def test_an_update_sets_some_fields_of_a_record_and_keeps_the_rest(
    request: pytest.FixtureRequest, path: Path, kind: str
) -> None:
    # A publication's new entity tag on each refresh: the attributes stay as
    # the last put wrote them, through a reopen too.
    record = {"attributes": a_publication(), "etag": "e1", "etag_expires": EPOCH + 0.25,
              "note": "caf\u00e9 \u4e2d"}

    def open_store() -> Store:
        if kind == "memory":
            return memory
        if kind == "sqlite":
            return SqliteStore(path)
        return PostgresStore(request.getfixturevalue("postgres_url"))

    memory = MemoryStore()

    async def scenario() -> None:
        store = open_store()
        await store.put("publication", ALICE, record)
        await store.update("publication", ALICE, {"etag": "e2", "etag_expires": EPOCH + 600.5})
        # No record: nothing is written.
        await store.update("publication", "sip:nobody@example.com", {"etag": "e9"})
        # Queued one after the other, they apply in order.
        store.put("publication", BOB, record)
        store.update("publication", BOB, {"etag": "e3"})
        await store.update("publication", BOB, {"etag": "e4", "etag_expires": 1})
        await store.close()
        store = open_store()
        assert store.load("publication") == {
            ALICE: {**record, "etag": "e2", "etag_expires": EPOCH + 600.5},
            BOB: {**record, "etag": "e4", "etag_expires": 1},
        }
        await store.close()

    run(scenario)


def test_any_json_a_service_hands_over_comes_back_the_same(backend: Backend) -> None:
    # Whatever JSON the REST side accepted: control characters, NUL included,
    # any script, large and precise numbers; and a lone surrogate, which
    # json.loads makes of "\\ud800" (a Bayeux message) and UTF-8 cannot carry.
    value = {"note": "a\u0000b\u001fc \u00e9\u4e2d\U0001f600", "n": 2**53 + 1, "f": 0.1 + 0.2,
             "nested": [None, True, {"": []}], "lone": "x\ud800y"}

    async def scenario() -> None:
        store = backend.open()
        await store.put("publication", ALICE, value)
        await store.close()
        store = backend.open()
        assert store.load("publication") == {ALICE: value}
        await store.close()

    run(scenario)


class _Name(str):
    """A str subclass, as the configuration's AppId and SipAddress are."""


class _Count(int):
    pass


def test_values_of_subclassed_json_types_are_stored_as_json_writes_them() -> None:
    # Records carry the configuration's typed strings (an account's AppId, a
    # SipAddress): the stored text is json's for the same value.
    value = {"app": _Name("alice-app"), _Name("key"): [_Count(3), 1.5, (1, 2)],
             "numbered": {1: "one"}, "none": None}
    assert encode(value) == json.dumps(value, separators=(",", ":"))
    with pytest.raises(TypeError):
        encode({"not json": object()})


def test_backlog_sequence_numbers_keep_increasing_across_reopen(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        first = [store.backlog_add("a", "/bayeux/a/x", n, EPOCH) for n in range(3)]
        store.backlog_remove([first[1]])
        await store.close()

        store = backend.open()
        assert [row.data for row in store.backlog_load()] == [0, 2]
        second = store.backlog_add("a", "/bayeux/a/x", 3, EPOCH)
        assert second > max(first)
        # Everything delivered: the next process must still not hand out an
        # old number again (restored messages are named after it).
        store.backlog_remove([first[0], first[2], second])
        await store.close()

        store = backend.open()
        assert store.backlog_load() == []
        third = store.backlog_add("a", "/bayeux/a/x", 4, EPOCH)
        assert third > second
        await store.close()

    run(scenario)


def test_a_failing_write_fails_its_future_and_the_writer_goes_on(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        backend.refuse("bad")
        with pytest.raises(StoreError) as info:
            await store.put("watch", "bad", {})
        assert "refused by the test" in str(info.value)
        assert str(info.value).startswith(f"{backend.where}: ")
        assert "\n" not in str(info.value)
        assert store.failures == 1
        await store.put("watch", "good", {"v": 1})
        store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
        await store.close()
        assert backend.rows("SELECT kind, key, value FROM records") == [
            ("watch", "good", '{"v":1}')
        ]
        assert len(backend.rows("SELECT * FROM backlog")) == 1

    run(scenario)


def test_writes_held_up_keep_their_order_and_the_loop_runs_meanwhile(backend: Backend) -> None:
    async def scenario() -> None:
        store = backend.open()
        await store.probe()  # connected
        with backend.writes_held():
            first = store.put("publication", ALICE, ["first"])
            await asyncio.sleep(0.02)
            second = store.put("publication", ALICE, ["x" * 1_000_000])
            third = store.delete("publication", BOB)
            fourth = store.put("publication", ALICE, ["last"])
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.01)  # the loop keeps serving others
                ticks += 1
            assert ticks == 5
            assert not any(f.done() for f in (first, second, third, fourth))
        await asyncio.gather(first, second, third, fourth)
        assert store.load("publication") == {ALICE: ["last"]}
        await store.close()

    run(scenario)


def test_a_waiter_that_gave_up_does_not_stop_the_writer(backend: Backend) -> None:
    # A REST call cancelled while its write is queued (client gone, timeout):
    # the write still happens, and later writes must still complete.
    async def scenario() -> None:
        store = backend.open()
        await store.probe()
        with backend.writes_held():
            abandoned = [store.put("watch", f"gone{n}", {}) for n in range(2)]
            for future in abandoned:
                future.cancel()
            await asyncio.sleep(0.05)
        await asyncio.wait_for(store.put("watch", "later", {}), 5)
        assert sorted(store.load("watch")) == ["gone0", "gone1", "later"]
        await store.close()

    run(scenario)


def test_reads_and_writes_need_no_event_loop_for_the_backlog(backend: Backend) -> None:
    # The Bayeux core journals from plain method calls: no future to await.
    store = backend.open()
    seq = store.backlog_add("a", "/bayeux/a/x", {"n": 1}, EPOCH)
    asyncio.run(store.close())
    assert backend.rows("SELECT seq, data FROM backlog") == [(seq, '{"n":1}')]


def test_a_new_store_is_made_at_the_current_version(backend: Backend) -> None:
    asyncio.run(backend.open().close())
    assert backend.version() == backend.module.SCHEMA_VERSION
    asyncio.run(backend.open().close())  # and opened again as it is
    assert backend.version() == backend.module.SCHEMA_VERSION


@pytest.mark.parametrize("ahead", [1, 97])
def test_a_newer_store_is_refused_with_one_line_and_left_as_it_was(
    backend: Backend, ahead: int
) -> None:
    async def fill() -> None:
        store = backend.open()
        await store.put("watch", "w", {"v": 1})
        await store.close()

    asyncio.run(fill())
    current = backend.module.SCHEMA_VERSION
    backend.set_version(current + ahead)
    before = backend.rows("SELECT * FROM records"), backend.rows("SELECT * FROM meta")
    with pytest.raises(StoreError) as info:
        backend.open()
    assert str(info.value) == (
        f"{backend.where}: store schema version {current + ahead} is newer than {current}, "
        "the newest this adapter supports; run the adapter version that wrote it, or a newer one"
    )
    assert (backend.rows("SELECT * FROM records"), backend.rows("SELECT * FROM meta")) == before


def test_a_database_that_is_not_a_store_is_refused(backend: Backend) -> None:
    if isinstance(backend, SqliteBackend):
        backend.path.parent.mkdir(parents=True)
    backend.rows("CREATE TABLE customers (name TEXT)")
    with pytest.raises(StoreError) as info:
        backend.open()
    assert str(info.value) == f"{backend.where}: not a store of this adapter (it has other tables)"
    assert backend.tables() == ["customers"]  # nothing created beside it


def test_a_later_migration_runs_on_a_current_store(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next schema change is one more entry in MIGRATIONS and a new number.
    async def fill() -> None:
        store = backend.open()
        await store.put("watch", "w", {"v": 1})
        store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
        await store.close()

    asyncio.run(fill())
    current = backend.module.SCHEMA_VERSION
    monkeypatch.setattr(backend.module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(
        backend.module.MIGRATIONS,  # type: ignore[arg-type]
        current,
        ("CREATE INDEX backlog_by_app ON backlog (app_id)",),
    )
    store = backend.open()
    assert store.load("watch") == {"w": {"v": 1}}
    assert [row.data for row in store.backlog_load()] == [1]
    asyncio.run(store.close())
    assert backend.version() == current + 1
    assert "backlog_by_app" in backend.indexes()


def test_a_migration_that_fails_half_way_leaves_the_store_as_it_was(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Everything a migration does is one transaction with the version's
    # change: its first statements are undone when a later one fails.
    async def fill() -> None:
        store = backend.open()
        await store.put("watch", "w", {"v": 1})
        await store.close()

    asyncio.run(fill())
    before = backend.rows("SELECT * FROM records")
    current = backend.module.SCHEMA_VERSION
    monkeypatch.setattr(backend.module, "SCHEMA_VERSION", current + 1)
    monkeypatch.setitem(
        backend.module.MIGRATIONS,  # type: ignore[arg-type]
        current,
        (
            "CREATE INDEX backlog_by_app ON backlog (app_id)",
            "DELETE FROM records",
            "INSERT INTO records SELECT no_such_column FROM backlog",
        ),
    )
    with pytest.raises(StoreError) as info:
        backend.open()
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{backend.where}: ")
    assert "no_such_column" in str(info.value)
    assert backend.rows("SELECT * FROM records") == before
    assert backend.version() == current
    assert "backlog_by_app" not in backend.indexes()
    monkeypatch.undo()
    asyncio.run(backend.open().close())  # the adapter of this version still opens it


# -- SqliteStore on a real file ------------------------------------------------------


def commits_by_connection(store: SqliteStore) -> dict[str, list[str]]:
    """The COMMITs each of the store's two connections runs from now on."""
    seen: dict[str, list[str]] = {"loop": [], "writer": []}
    for name, db in (("loop", store._db), ("writer", store._writer_db)):
        db.set_trace_callback(lambda sql, name=name: sql == "COMMIT" and seen[name].append(sql))
    return seen


@pytest.mark.parametrize(("synchronous", "pragma"), [("normal", 1), ("full", 2)])
def test_the_store_commits_in_wal_mode_at_the_synchronous_level_asked(
    path: Path, synchronous: str, pragma: int
) -> None:
    # "normal" syncs nothing at a commit, which is then made on the event
    # loop; "full" syncs at every commit, which is only ever the writer
    # thread's (the loop never waits for the disk).
    async def scenario() -> None:
        store = SqliteStore(path, synchronous=synchronous)
        assert store._writer_db.execute("PRAGMA synchronous").fetchone() == (pragma,)
        assert store._db.execute("PRAGMA synchronous").fetchone() == (1,)
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        commits = commits_by_connection(store)
        await store.put("publication", ALICE, a_publication())
        if synchronous == "normal":
            assert (len(commits["loop"]), len(commits["writer"])) == (1, 0)
        else:
            assert (len(commits["loop"]), len(commits["writer"])) == (0, 1)
        await store.close()
        assert [key for _, key, _ in rows_on_disk(path)] == [ALICE]

    run(scenario)


def test_the_writes_of_one_loop_turn_commit_together_at_its_end(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        commits = commits_by_connection(store)
        first = [store.put("watch", f"w{n}", {"n": n}) for n in range(50)]
        store.backlog_add("a", "/bayeux/a/x", {"n": 1}, EPOCH)
        assert not any(f.done() for f in first)  # nothing committed inside the turn
        await asyncio.gather(*first)
        second = [store.put("watch", f"w{n}", {"n": -n}) for n in range(3)]
        second.append(store.delete("watch", "w49"))
        await asyncio.gather(*second)
        assert (len(commits["loop"]), len(commits["writer"])) == (2, 0)
        assert rows_on_disk(path, "SELECT count(*) FROM records") == [(49,)]
        assert rows_on_disk(path, "SELECT value FROM records WHERE key = 'w2'") == [('{"n":-2}',)]
        assert len(rows_on_disk(path, "SELECT * FROM backlog")) == 1
        await store.close()

    run(scenario)


def test_writes_behind_a_locked_file_keep_their_order(path: Path) -> None:
    # Another connection holds the write lock: the loop does not wait for it;
    # the thread does, and what is written meanwhile queues behind it.
    async def scenario() -> None:
        store = SqliteStore(path)
        commits = commits_by_connection(store)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        first = store.put("publication", ALICE, ["first"])
        await asyncio.sleep(0.02)
        second = store.put("publication", ALICE, ["second"])
        third = store.delete("publication", BOB)
        await asyncio.sleep(0.02)
        assert not any(f.done() for f in (first, second, third))
        blocker.execute("COMMIT")
        blocker.close()
        await asyncio.gather(first, second, third)
        assert store.load("publication") == {ALICE: ["second"]}
        assert commits["writer"] and not commits["loop"]
        # The thread has caught up: the next write is the loop's again.
        await store.put("publication", BOB, ["later"])
        assert len(commits["loop"]) == 1
        await store.close()

    run(scenario)


def test_the_wal_the_loop_writes_is_checkpointed_and_started_over(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop's connection never checkpoints; without the thread's
    # checkpoints its WAL would grow by every commit (here 1,000 commits of
    # about 12 KB each: some 12 MB).  Started over, it holds about the commits
    # between two checkpoints (at most some 200 here).
    monkeypatch.setattr("adapter.store.sqlite.CHECKPOINT_INTERVAL", 0.05)
    wal = Path(f"{path}-wal")

    async def scenario() -> None:
        store = SqliteStore(path)
        for n in range(1_000):
            await store.put("watch", f"w{n}", {"pad": "x" * 2_000})
            if n % 100 == 99:
                await asyncio.sleep(0.12)  # a checkpoint is due meanwhile
        assert wal.stat().st_size < 5_000_000, wal.stat().st_size
        assert len(store.load("watch")) == 1_000
        await store.close()
        assert rows_on_disk(path, "SELECT count(*) FROM records") == [(1_000,)]

    run(scenario)


def test_an_unknown_synchronous_level_is_refused(path: Path) -> None:
    with pytest.raises(ValueError, match="normal or full"):
        SqliteStore(path, synchronous="off")


def test_writes_queued_together_commit_together_in_order(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        statements: list[str] = []
        store._writer_db.set_trace_callback(statements.append)  # the writer thread's SQL
        blocker = sqlite3.connect(path, isolation_level=None)
        # Holding the write lock keeps the writer busy with whatever it took
        # first, so everything queued meanwhile goes in one later batch.
        blocker.execute("BEGIN IMMEDIATE")
        futures = [store.put("publication", "k", [{"n": n}]) for n in range(100)]
        futures += [store.put("watch", f"w{n}", {"n": n}) for n in range(100)]
        futures.append(store.delete("watch", "w50"))
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in futures)
        blocker.execute("COMMIT")
        blocker.close()
        await asyncio.gather(*futures)
        commits = [s for s in statements if s == "COMMIT"]
        assert 1 <= len(commits) <= 2  # at most the first write alone, then the rest
        assert store.load("publication") == {"k": [{"n": 99}]}  # the last put wins
        watches = store.load("watch")
        assert sorted(watches) == sorted(f"w{n}" for n in range(100) if n != 50)
        await store.close()

    run(scenario)


def test_a_record_written_again_is_updated_where_it_stands(path: Path) -> None:
    # A Publish writes its record twice; a rewrite must not delete and
    # re-insert the row (a new rowid, three pages rewritten instead of one).
    async def scenario() -> None:
        store = SqliteStore(path)
        await store.put("publication", ALICE, {"etag": "a"})
        await store.put("publication", BOB, {"etag": "b"})
        before = dict(rows_on_disk(path, "SELECT key, rowid FROM records"))
        await store.put("publication", ALICE, {"etag": "a2"})
        await store.put("publication", ALICE, {"etag": "a3", "attributes": a_publication()})
        assert dict(rows_on_disk(path, "SELECT key, rowid FROM records")) == before
        assert store.load("publication")[ALICE] == {"etag": "a3", "attributes": a_publication()}
        assert store.load("publication")[BOB] == {"etag": "b"}
        await store.close()

    run(scenario)


# -- files that are not our store ----------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"this is not a database\nbut a text file\n" * 50],
    ids=["random bytes", "text file"],
)
def test_a_file_that_is_not_a_database_is_one_line_store_error(
    path: Path, content: bytes
) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        SqliteStore(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert path.read_bytes() == content  # nothing overwritten


def test_a_missing_file_is_created_with_its_folder(path: Path) -> None:
    assert not path.parent.exists()
    asyncio.run(SqliteStore(path).close())
    assert rows_on_disk(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert not list(path.parent.glob("*.bak"))  # nothing to keep a copy of


def test_a_store_path_under_a_file_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreError) as info:
        SqliteStore(tmp_path / "plain" / "adapter.sqlite")
    assert "\n" not in str(info.value)


# -- schema versions and migrations ---------------------------------------------------

V1_DUMP = Path(__file__).parent.parent / "data" / "store" / "schema-1.sql"


def v1_store(path: Path) -> Path:
    """A store file of schema version 1, as the adapter before versioned migrations wrote it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(V1_DUMP.read_text())
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    return path


def everything(path: Path) -> dict[str, list[Any]]:
    """Every row of the store, by table, as another process reads it."""
    return {
        "records": rows_on_disk(path, "SELECT kind, key, value FROM records ORDER BY kind, key"),
        "backlog": rows_on_disk(path, "SELECT * FROM backlog ORDER BY seq"),
        "meta": rows_on_disk(
            path, "SELECT key, value FROM meta WHERE key NOT IN ('schema') ORDER BY key"
        ),
    }


def shape(path: Path) -> list[Any]:
    return rows_on_disk(path, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")


def test_a_version_1_store_is_migrated_and_keeps_every_record(path: Path) -> None:
    v1_store(path)
    before = everything(path)
    assert len(before["records"]) == 3 and len(before["backlog"]) == 3

    async def scenario() -> None:
        store = SqliteStore(path)
        # What the services read back is what version 1 held.
        assert sorted(store.load("publication")) == [ALICE]
        schedules = store.load("schedule")
        assert schedule_from_record(schedules["bob-app c1"]) == a_schedule()
        (watch,) = store.load("watch").values()
        assert same_watch(watch_from_record(watch), a_watch())
        assert [row.seq for row in store.backlog_load()] == [1, 2, 3]
        # Version 1's high-water mark (4, its last row delivered) still holds.
        assert store.backlog_add("bob-app", "/bayeux/bob-app/presence", {}, EPOCH) == 5
        await store.close()

    run(scenario)
    assert rows_on_disk(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    after = everything(path)
    assert after["records"] == before["records"]
    assert after["backlog"][:3] == before["backlog"]
    assert dict(after["meta"])["backlog_seq"] == "5"


def test_a_migrated_store_has_the_schema_of_a_new_one(path: Path, tmp_path: Path) -> None:
    asyncio.run(SqliteStore(v1_store(path)).close())
    fresh = tmp_path / "fresh.sqlite"
    asyncio.run(SqliteStore(fresh).close())
    assert shape(path) == shape(fresh)
    assert "STRICT" in dict((name, sql) for _, name, _, sql in shape(path))["records"]


def test_the_file_as_it_was_is_kept_beside_the_migrated_one(path: Path) -> None:
    v1_store(path)
    before = everything(path)
    asyncio.run(SqliteStore(path).close())
    copy = path.with_name("adapter.sqlite.schema-1.bak")
    assert [p.name for p in sorted(path.parent.iterdir()) if "bak" in p.name] == [copy.name]
    # An older adapter could be put back on it: version 1, every row.
    assert rows_on_disk(copy, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]
    assert everything(copy) == before
    # Opened again, the store is current: no second migration, no second copy.
    copy.unlink()
    asyncio.run(SqliteStore(path).close())
    assert not copy.exists()


def test_a_store_with_strict_tables_refuses_a_value_of_the_wrong_type(path: Path) -> None:
    asyncio.run(SqliteStore(path).close())
    with pytest.raises(sqlite3.IntegrityError):
        rows_on_disk(path, "INSERT INTO backlog VALUES (1, 'a', '/bayeux/a', '{}', 'soon')")


def test_a_version_1_file_claiming_a_newer_version_is_refused(path: Path) -> None:
    v1_store(path)
    rows_on_disk(path, "UPDATE meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(StoreError, match=r"store schema version 99 is newer than"):
        SqliteStore(path)


def test_a_version_no_migration_starts_from_is_refused(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1_store(path)
    monkeypatch.delitem(MIGRATIONS, 1)
    with pytest.raises(StoreError) as info:
        SqliteStore(path)
    assert str(info.value) == (
        f"{path}: store schema version 1 cannot be migrated to {SCHEMA_VERSION}"
    )


# -- PostgresStore's own ---------------------------------------------------------------


def test_an_unreachable_server_is_one_line_without_the_password() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StoreError) as info:
        PostgresStore(f"postgresql://adapter:s3cret@127.0.0.1:{port}/presence")
    message = str(info.value)
    assert message.startswith(f"postgresql://adapter@127.0.0.1:{port}/presence: ")
    assert "refused" in message
    assert "\n" not in message and "s3cret" not in message


def test_an_unknown_database_is_one_line(postgres: PostgresCluster) -> None:
    with pytest.raises(StoreError) as info:
        PostgresStore(postgres.url("no_such_database"))
    assert str(info.value).startswith(f"{postgres.url('no_such_database')}: ")
    assert 'database "no_such_database" does not exist' in str(info.value)


def writer_ended(store: PostgresStore) -> str:
    """SQL that ends the store's writing connection (not the one holding its lock)."""
    return (
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'presence-adapter' AND pid <> pg_backend_pid()"
        f" AND pid <> {store._owner.info.backend_pid}"
    )


def test_a_connection_the_server_dropped_is_replaced_and_nothing_is_lost(
    postgres_url: str,
) -> None:
    # What a restarted server, or a proxy that closed an idle connection,
    # leaves behind: the writer's connection is dead when the next write comes.
    backend = PostgresBackend(postgres_url)

    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.put("watch", "before", {})
        assert backend.rows(writer_ended(store)) == [(True,)]
        await asyncio.wait_for(store.put("watch", "after", {}), 30)
        store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
        await store.close()
        assert store.failures == 0

    run(scenario)
    assert sorted(k for (k,) in backend.rows("SELECT key FROM records")) == ["after", "before"]
    assert len(backend.rows("SELECT * FROM backlog")) == 1


def test_a_second_adapter_on_one_store_is_refused_with_one_line(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two single adapters would both re-publish everything: one at a time,
    # or the nodes of a cluster (which share the work through leases).
    monkeypatch.setattr("adapter.store.postgres.OWNER_WAIT", "200ms")
    first = PostgresStore(postgres_url)
    with pytest.raises(StoreError) as info:
        PostgresStore(postgres_url)
    assert str(info.value) == (
        f"{describe(postgres_url)}: another adapter is using this store "
        "(one adapter per store, or the nodes of a cluster, each with [cluster])"
    )
    with pytest.raises(StoreError) as info:
        PostgresStore(postgres_url, node="a")
    assert str(info.value) == (
        f"{describe(postgres_url)}: another adapter is using this store "
        "as a single adapter (not a node of a cluster)"
    )
    asyncio.run(first.close())
    asyncio.run(PostgresStore(postgres_url).close())  # free again once the first closed


def test_the_nodes_of_a_cluster_share_a_store_and_keep_a_single_adapter_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapter.store.postgres.OWNER_WAIT", "200ms")
    a, b = PostgresStore(postgres_url, node="a"), PostgresStore(postgres_url, node="b")
    with pytest.raises(StoreError) as info:
        PostgresStore(postgres_url)
    assert "another adapter is using this store (one adapter per store" in str(info.value)
    asyncio.run(a.close())
    asyncio.run(b.close())


def test_nodes_starting_together_on_a_new_database_make_one_store(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def attempt(name: str) -> PostgresStore:
        return PostgresStore(postgres_url, node=name)

    async def scenario() -> None:
        stores = await asyncio.gather(*(asyncio.to_thread(attempt, n) for n in "abcd"))
        for store in stores:
            await store.close()

    run(scenario)
    backend = PostgresBackend(postgres_url)
    assert backend.version() == postgres_store.SCHEMA_VERSION


def test_adapters_starting_together_on_a_new_database_make_one_store(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapter.store.postgres.OWNER_WAIT", "200ms")

    def attempt() -> PostgresStore | StoreError:
        try:
            return PostgresStore(postgres_url)
        except StoreError as exc:
            return exc

    async def scenario() -> None:
        results = await asyncio.gather(*(asyncio.to_thread(attempt) for _ in range(4)))
        opened = [r for r in results if isinstance(r, PostgresStore)]
        assert len(opened) == 1, results
        assert all("another adapter" in str(r) for r in results if isinstance(r, StoreError))
        await opened[0].put("watch", "w", {})
        await opened[0].close()

    run(scenario)
    backend = PostgresBackend(postgres_url)
    assert backend.version() == postgres_store.SCHEMA_VERSION
    assert sorted(backend.tables()) == [
        "backlog", "cluster_secret", "leases", "meta", "nodes", "records"]
    assert backend.rows("SELECT key FROM records") == [("w",)]


def test_nodes_starting_together_share_one_cluster_secret_made_by_the_first(
    postgres_url: str,
) -> None:
    # Nodes configured without [cluster] secret: the first to ask makes the
    # key, the others read that one, even asking at the same moment.
    def ask(name: str) -> tuple[PostgresStore, bytes]:
        store = PostgresStore(postgres_url, node=name)
        return store, store.cluster_secret()

    async def scenario() -> None:
        answers = await asyncio.gather(*(asyncio.to_thread(ask, n) for n in "abcd"))
        assert len({secret for _, secret in answers}) == 1
        for store, _ in answers:
            await store.close()

    backend = PostgresBackend(postgres_url)
    asyncio.run(PostgresStore(postgres_url, node="a").close())
    assert backend.rows("SELECT count(*) FROM cluster_secret") == [(0,)]  # made when asked
    run(scenario)
    ((kept,),) = backend.rows("SELECT secret FROM cluster_secret")
    assert len(kept) == postgres_store.SECRET_BYTES
    # A node started later, or again, reads it and never makes another.
    store = PostgresStore(postgres_url, node="e")
    assert store.cluster_secret() == bytes(kept) == store.cluster_secret()
    asyncio.run(store.close())
    assert backend.rows("SELECT secret FROM cluster_secret") == [(kept,)]


def test_each_cluster_store_has_a_secret_of_its_own(postgres: PostgresCluster) -> None:
    stores = [PostgresStore(postgres.url(postgres.create_database()), node="a")
              for _ in range(2)]
    first, second = (store.cluster_secret() for store in stores)
    assert first != second
    for store in stores:
        asyncio.run(store.close())


def test_a_version_3_store_is_migrated_to_keep_the_cluster_secret(postgres_url: str) -> None:
    # Version 3 is version 4 without the cluster_secret table.
    async def fill() -> None:
        store = PostgresStore(postgres_url, node="a")
        await store.put("watch", "w", {"v": 1})
        await store.close()

    asyncio.run(fill())
    backend = PostgresBackend(postgres_url)
    backend.rows("DROP TABLE cluster_secret")
    backend.set_version(3)
    store = PostgresStore(postgres_url, node="a")
    assert store.load("watch") == {"w": {"v": 1}}
    secret = store.cluster_secret()
    asyncio.run(store.close())
    assert backend.version() == postgres_store.SCHEMA_VERSION == 4
    assert backend.rows("SELECT secret FROM cluster_secret") == [(secret,)]


def test_an_unreadable_cluster_secret_is_one_line_store_error(postgres_url: str) -> None:
    store = PostgresStore(postgres_url, node="a")
    PostgresBackend(postgres_url).rows("DROP TABLE cluster_secret")
    with pytest.raises(StoreError) as info:
        store.cluster_secret()
    assert str(info.value).startswith(f"{describe(postgres_url)}: ")
    assert "cluster_secret" in str(info.value) and "\n" not in str(info.value)
    asyncio.run(store.close())


def test_a_store_left_by_a_killed_adapter_opens_at_once(postgres_url: str) -> None:
    # The store never closed, its connection gone: the server lets go of the
    # lock at once (the adapter killed with -9 and restarted:
    # tests/integration/test_durability.py).
    PostgresStore(postgres_url)._owner.close()
    asyncio.run(PostgresStore(postgres_url).close())


def test_writes_fail_while_the_server_is_down_and_succeed_once_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A cluster of the test's own: the session's is shared with other tests.
    monkeypatch.setattr("adapter.store.postgres.WRITE_TIMEOUT", 1.0)
    with PostgresCluster(settings=TEST_SETTINGS) as cluster:
        url = cluster.url(cluster.create_database())

        async def scenario() -> None:
            store = PostgresStore(url)
            await store.put("watch", "before", {})
            cluster.halt()
            with pytest.raises(StoreError) as info:
                await asyncio.wait_for(store.put("watch", "during", {}), 30)
            assert str(info.value).startswith(f"{describe(url)}: ")
            assert "\n" not in str(info.value)
            with pytest.raises(StoreError):
                await asyncio.wait_for(store.probe(), 30)  # what /readyz asks
            # A write made while another waits for the server fails with it,
            # rather than waiting as long again in a group of its own.
            failures = store.failures
            waiting = store.put("watch", "a", {})
            while store._pending:  # the writer took it and waits for a connection
                await asyncio.sleep(0)
            queued = store.put("watch", "b", {})
            both = asyncio.gather(waiting, queued, return_exceptions=True)
            assert [type(e) for e in await asyncio.wait_for(both, 30)] == [StoreUnreachable] * 2
            assert store.failures == failures + 1
            cluster.resume()
            # The pool reconnects on its own: no restart of the adapter.
            await eventually_async(lambda: store.put("watch", "after", {}))
            await store.close()
            assert store.failures >= 2

        run(scenario)
        rows = PostgresBackend(url).rows("SELECT key FROM records ORDER BY key")
    # What failed while the server was down was kept and written once it was back.
    assert rows == [("a",), ("after",), ("b",), ("before",), ("during",)]


def test_writes_kept_while_the_server_is_down_are_written_in_order_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("adapter.store.postgres.WRITE_TIMEOUT", 0.5)
    with PostgresCluster(settings=TEST_SETTINGS) as cluster:
        url = cluster.url(cluster.create_database())

        async def scenario() -> None:
            store = PostgresStore(url)
            await store.put("watch", "w", {"n": 0})
            cluster.halt()
            # Background writes nobody waits for (an entity tag, a backlog
            # message), and a caller that takes its write back after the error.
            store.put("watch", "w", {"n": 1})
            store.backlog_add("app", "/bayeux/app", {"m": 1}, 2e9)
            taken_back = store.put("watch", "x", {})
            with pytest.raises(StoreError):
                await asyncio.wait_for(taken_back, 30)
            store.delete("watch", "x")
            store.put("watch", "w", {"n": 2})
            cluster.resume()
            await eventually_async(store.probe)
            await store.close()

        run(scenario)
        backend = PostgresBackend(url)
        assert backend.rows("SELECT key, value FROM records ORDER BY key") == [("w", '{"n":2}')]
        assert len(backend.rows("SELECT * FROM backlog")) == 1


async def eventually_async(write: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    """``write()`` until it succeeds, within ``timeout`` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await write()
            return
        except StoreError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_a_group_whose_connection_breaks_under_it_is_written_again_on_a_new_one(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = PostgresBackend(postgres_url)

    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.probe()
        with backend.writes_held():
            # The group waits for the lock, inside its transaction, when its
            # connection is ended.
            first = store.put("watch", "w", {"n": 1})
            seq = store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
            await asyncio.sleep(0.2)
            assert not first.done()
            assert backend.rows(writer_ended(store)) == [(True,)]
            await asyncio.sleep(0.2)
            assert not first.done()  # written again, waiting for the lock again
        await asyncio.wait_for(first, 30)
        await store.close()
        assert store.failures == 0
        assert backend.rows("SELECT seq FROM backlog") == [(seq,)]

    with caplog.at_level(logging.WARNING, "adapter.store.postgres"):
        run(scenario)
    assert backend.rows("SELECT key, value FROM records") == [("w", '{"n":1}')]
    assert any("writing again on a new one" in r.getMessage() for r in caplog.records)


def test_the_reads_at_start_are_made_when_the_store_is_opened(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The services read while the server already serves: a read then must not
    # hold the event loop on the network.
    async def fill() -> None:
        store = PostgresStore(postgres_url)
        await store.put("watch", "w", {"v": 1})
        store.backlog_add("a", "/bayeux/a/x", {"n": 1}, EPOCH)
        await store.close()

    asyncio.run(fill())
    store = PostgresStore(postgres_url)

    def unreachable() -> None:
        raise psycopg.OperationalError("the test made the server unreachable")

    monkeypatch.setattr(store, "_connect", unreachable)
    assert store.load("watch") == {"w": {"v": 1}}
    assert store.load("publication") == {} and store.load("schedule") == {}
    assert [row.data for row in store.backlog_load()] == [{"n": 1}]
    # Read once: later reads ask the database (a write since would change them).
    with pytest.raises(StoreError, match="the test made the server unreachable"):
        store.load("watch")
    monkeypatch.undo()
    asyncio.run(store.close())


def test_a_read_after_a_write_of_its_kind_sees_the_write(postgres_url: str) -> None:
    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.put("watch", "w", {"v": 1})
        store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
        await store.probe()
        assert store.load("watch") == {"w": {"v": 1}}
        assert [row.data for row in store.backlog_load()] == [1]
        assert store.load("schedule") == {}
        await store.close()

    run(scenario)
