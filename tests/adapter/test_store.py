"""The store: SqliteStore on a real file, MemoryStore."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from adapter.notification import Criterion, Schedule, schedule_from_record, schedule_to_record
from adapter.presence_json import attribute_to_json
from adapter.store import BacklogRow, MemoryStore, SqliteStore, Store, StoreError
from adapter.watcher import Reference, Watch, watch_from_record, watch_to_record
from pidf import Activity, AttributeType, Other, Place, Presence, PresenceAttribute

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
        state="blocked",
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


# -- SqliteStore on a real file ------------------------------------------------------


def test_everything_survives_close_and_reopen(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        await store.put("publication", ALICE, a_publication())
        await store.put("watch", "w1", watch_to_record(a_watch()))
        await store.put("schedule", "s1", schedule_to_record(a_schedule()))
        seqs = [
            store.backlog_add("alice-app", "/bayeux/alice-app/p", {"n": 1}, EPOCH + 10),
            store.backlog_add("bob-app", "/bayeux/bob-app/p", {"n": 2}, EPOCH + 11),
            store.backlog_add("alice-app", "/bayeux/alice-app/p", {"n": 3}, EPOCH + 12),
        ]
        await store.close()

        store = SqliteStore(path)
        assert store.load("publication") == {ALICE: a_publication()}
        assert same_watch(watch_from_record(store.load("watch")["w1"]), a_watch())
        assert schedule_from_record(store.load("schedule")["s1"]) == a_schedule()
        assert store.backlog_load() == [
            BacklogRow(seqs[0], "alice-app", "/bayeux/alice-app/p", {"n": 1}, EPOCH + 10),
            BacklogRow(seqs[1], "bob-app", "/bayeux/bob-app/p", {"n": 2}, EPOCH + 11),
            BacklogRow(seqs[2], "alice-app", "/bayeux/alice-app/p", {"n": 3}, EPOCH + 12),
        ]
        assert seqs == sorted(seqs)
        await store.close()

    run(scenario)


def test_an_awaited_write_is_on_disk_when_the_future_completes(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        seen_at_completion: list[Any] = []
        future = store.put("publication", ALICE, a_publication())
        future.add_done_callback(lambda _: seen_at_completion.extend(rows_on_disk(path)))
        await future
        assert [(k, key) for k, key, _ in seen_at_completion] == [("publication", ALICE)]
        await store.delete("publication", ALICE)
        assert rows_on_disk(path) == []
        await store.close()

    run(scenario)


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
    monkeypatch.setattr("adapter.store.CHECKPOINT_INTERVAL", 0.05)
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


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_put_after_delete_and_delete_of_an_absent_key(path: Path, kind: str) -> None:
    async def scenario() -> None:
        store: Store = SqliteStore(path) if kind == "sqlite" else MemoryStore()
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


def test_backlog_sequence_numbers_keep_increasing_across_reopen(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        first = [store.backlog_add("a", "/bayeux/a/x", n, EPOCH) for n in range(3)]
        store.backlog_remove([first[1]])
        await store.close()

        store = SqliteStore(path)
        assert [row.data for row in store.backlog_load()] == [0, 2]
        second = store.backlog_add("a", "/bayeux/a/x", 3, EPOCH)
        assert second > max(first)
        # Everything delivered: the next process must still not hand out an
        # old number again (restored messages are named after it).
        store.backlog_remove([first[0], first[2], second])
        await store.close()

        store = SqliteStore(path)
        assert store.backlog_load() == []
        third = store.backlog_add("a", "/bayeux/a/x", 4, EPOCH)
        assert third > second
        await store.close()

    run(scenario)


def test_a_failing_write_fails_its_future_and_the_writer_goes_on(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        with sqlite3.connect(path) as other:
            # A write the database itself refuses, as a full disk or a
            # corrupted page would.
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON records WHEN NEW.key = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        other.close()
        with pytest.raises(StoreError) as info:
            await store.put("watch", "bad", {})
        assert "refused by the test" in str(info.value)
        assert str(path) in str(info.value)
        assert store.failures == 1
        await store.put("watch", "good", {"v": 1})
        store.backlog_add("a", "/bayeux/a/x", 1, EPOCH)
        await store.close()
        assert rows_on_disk(path) == [("watch", "good", '{"v":1}')]
        assert len(rows_on_disk(path, "SELECT * FROM backlog")) == 1

    run(scenario)


def test_a_waiter_that_gave_up_does_not_stop_the_writer(path: Path) -> None:
    # A REST call cancelled while its write is queued (client gone, timeout):
    # the write still happens, and later writes must still complete.
    async def scenario() -> None:
        store = SqliteStore(path)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        abandoned = [store.put("watch", f"gone{n}", {}) for n in range(2)]
        for future in abandoned:
            future.cancel()
        await asyncio.sleep(0.05)
        blocker.execute("COMMIT")
        blocker.close()
        await asyncio.wait_for(store.put("watch", "later", {}), 5)
        assert sorted(store.load("watch")) == ["gone0", "gone1", "later"]
        await store.close()

    run(scenario)


def test_the_event_loop_runs_while_a_write_waits_for_the_disk(path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(path)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        future = store.put("publication", ALICE, ["x" * 1_000_000])
        assert not future.done()
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)  # the loop keeps serving others
            ticks += 1
        assert ticks == 5 and not future.done()
        blocker.execute("COMMIT")
        blocker.close()
        await future
        assert future.done() and future.exception() is None
        await store.close()

    run(scenario)


def test_reads_and_writes_need_no_event_loop_for_the_backlog(path: Path) -> None:
    # The Bayeux core journals from plain method calls: no future to await.
    store = SqliteStore(path)
    seq = store.backlog_add("a", "/bayeux/a/x", {"n": 1}, EPOCH)
    asyncio.run(store.close())
    assert rows_on_disk(path, "SELECT seq, data FROM backlog") == [(seq, '{"n":1}')]


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


def test_another_schema_version_is_refused(path: Path) -> None:
    asyncio.run(SqliteStore(path).close())
    with sqlite3.connect(path) as other:
        other.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    other.close()
    with pytest.raises(StoreError) as info:
        SqliteStore(path)
    assert str(info.value) == f"{path}: schema version 99, expected 1"


def test_a_missing_file_is_created_with_its_folder(path: Path) -> None:
    assert not path.parent.exists()
    asyncio.run(SqliteStore(path).close())
    assert rows_on_disk(path, "SELECT value FROM meta WHERE key = 'schema'") == [("1",)]


def test_a_store_path_under_a_file_is_store_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreError) as info:
        SqliteStore(tmp_path / "plain" / "adapter.sqlite")
    assert "\n" not in str(info.value)
