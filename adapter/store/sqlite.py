"""The default store: one SQLite file.

A missing file is created at the current schema version; an older one is
migrated in one transaction, after a copy of it is kept beside it
(``<file>.schema-<version>.bak``); a newer one, or a file that is not a store,
stops start-up with one line and is left as it was (:mod:`adapter.store.schema`).
The version is the file's ``PRAGMA user_version``, which SQLite reads from the
file's header: it is known before any table is touched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adapter.metrics import STORE_BUCKETS, Histogram
from adapter.store import schema
from adapter.store.interface import BacklogRow, LeaseKey, StoreError, settle
from adapter.store.interface import encode as _encode
from adapter.store.sql import Upserts, Write

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteStore"]

logger = logging.getLogger(__name__)

#: The schema this adapter writes.  1 kept its number in meta's "schema" row;
#: 2 has STRICT tables (SQLite refuses a value of the wrong type rather than
#: storing it) and keeps its number in the file header (``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: Seconds the writer thread waits after a write before committing, for others to join it.
GROUP_COMMIT_WAIT = 0.0005
#: Seconds between the writer thread's WAL checkpoints while the loop commits.
CHECKPOINT_INTERVAL = 1.0

_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT",
    "CREATE TABLE records ("
    " kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)"
    ") STRICT",
    "CREATE TABLE backlog ("
    " seq INTEGER PRIMARY KEY, app_id TEXT NOT NULL, channel TEXT NOT NULL,"
    " data TEXT NOT NULL, expires_at REAL NOT NULL"
    ") STRICT",
)

#: Version -> the statements that bring a store of that version to the next.
#: A table is renamed aside and made again, not altered, so that a migrated
#: store has exactly the schema of a new one.
MIGRATIONS: schema.Migrations = {
    1: (
        "ALTER TABLE meta RENAME TO meta_1",
        "ALTER TABLE records RENAME TO records_1",
        "ALTER TABLE backlog RENAME TO backlog_1",
        *_TABLES,
        "INSERT INTO meta SELECT key, value FROM meta_1 WHERE key <> 'schema'",
        "INSERT INTO records SELECT kind, key, value FROM records_1",
        "INSERT INTO backlog SELECT seq, app_id, channel, data, expires_at FROM backlog_1",
        "DROP TABLE meta_1",
        "DROP TABLE records_1",
        "DROP TABLE backlog_1",
    ),
}

# A record or the backlog mark rewritten in place, not INSERT OR REPLACE, which
# deletes the row and inserts it again — a new rowid, the old row's page, the
# new row's page and the key's index entry all rewritten.
_UPSERT = Upserts.with_placeholder("?")
# Some fields of a record set in place by SQLite (RFC 7396 merge patch,
# https://sqlite.org/json1.html#jpatch): the rest of its text is copied, not
# decoded and encoded again in Python.
_UPDATE = "UPDATE records SET value = json_patch(value, ?) WHERE kind = ? AND key = ?"
_IDLE: Any = object()  # the writer thread woke with nothing queued


class SqliteStore:
    """The default store: one SQLite file in WAL mode, committed in groups.

    A missing file (and its folder) is created empty: a first start needs no
    preparation step.  An older store is migrated (the module's docstring); a
    file that is not a store, or a newer one, is never overwritten: opening it
    raises :class:`StoreError` with one line.

    Where a commit runs depends on what it may wait for.  With
    ``synchronous="normal"`` a commit writes its WAL frames into the operating
    system's page cache and syncs nothing (https://sqlite.org/wal.html,
    https://sqlite.org/pragma.html#pragma_synchronous): the writes of one
    event-loop turn are committed together on the loop at the end of the turn,
    with no thread hand-off.  Everything that
    can wait goes to the writer thread, with its own connection: every commit
    with ``synchronous="full"`` (an fsync each), a commit that found the file
    locked (another process holding it: the loop never waits for a lock), and
    the WAL checkpoints, which sync the file and are never run on the loop.
    Once the thread has writes in hand, later ones queue behind them, so the
    order of writes is the order of the calls.

    A hand-off to the thread waits for the loop's thread to let go of the GIL,
    which under load costs far more latency than the commit on the loop.
    """

    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be normal or full, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create its folder: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None
        try:
            self._seq = self._open()
            self._writer_db = self._connect_writer()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"{path}: {exc}") from None
        except OSError as exc:  # the copy kept before a migration
            self._db.close()
            raise StoreError(f"{path}: cannot keep a copy before migrating: {exc}") from None
        except StoreError:
            self._db.close()
            raise
        # Writes of this loop turn, committed by _flush at its end.
        self._pending: list[Write] = []
        # Writes handed to the thread and writes it has committed (or failed):
        # each counter is written by one thread only.
        self._handed = 0
        self._finished = 0
        self._inline_commits = 0
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._writer, name="store-writer", daemon=True)
        self._thread.start()
        self.failures = 0
        #: Seconds from the first statement of a commit to its COMMIT (for /metrics).
        self.commit_seconds = Histogram(STORE_BUCKETS)

    def _open(self) -> int:
        """Check the file is our store, creating or migrating it; the last backlog number."""
        found = self._version()
        if found != SCHEMA_VERSION:
            # Raises for a newer store before anything is written to it.
            statements = (
                schema.steps(str(self.path), found, SCHEMA_VERSION, MIGRATIONS)
                if found
                else list(_TABLES)
            )
        self._db.execute("PRAGMA journal_mode=WAL")
        # The loop's connection never syncs and never checkpoints (a
        # checkpoint syncs the WAL and the database file): the writer thread
        # checkpoints, after its own commits as SQLite does by default and
        # every CHECKPOINT_INTERVAL for the loop's.  It never waits for a lock
        # either (busy_timeout 0, set once the file is checked): a busy file
        # sends the commit to the thread.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        if found != SCHEMA_VERSION:
            if found:
                self._keep_copy(found)
            self._migrate(found, statements)
        self._db.execute("SELECT count(*) FROM records").fetchone()
        (last_row,) = self._db.execute("SELECT max(seq) FROM backlog").fetchone()
        # The high-water mark outlives the rows: restored messages are named
        # after their number, so a number must not come back once used.
        mark = self._db.execute("SELECT value FROM meta WHERE key = 'backlog_seq'").fetchone()
        self._db.execute("PRAGMA busy_timeout=0")
        return max(last_row or 0, int(mark[0]) if mark else 0)

    def _version(self) -> int:
        """The file's schema version; 0 for an empty file (a new store)."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version:
            return int(version)
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return 0
        if "meta" in tables:  # version 1 kept its number in a row
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and str(row[0]).isdigit():
                return int(row[0])
        raise StoreError(f"{self.path}: not a store of this adapter (it has other tables)")

    def _keep_copy(self, version: int) -> None:
        """Copy the file as it is, before migrating it, to ``<file>.schema-<version>.bak``.

        The copy is written under another name, synced, and renamed into
        place: a crash leaves either no copy or a whole one.
        """
        copy = self.path.with_name(f"{self.path.name}.schema-{version}.bak")
        partial = copy.with_name(copy.name + ".partial")
        target = sqlite3.connect(partial)
        try:
            # The backup API copies a consistent state, the WAL's content included.
            self._db.backup(target)
        finally:
            target.close()
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, copy)
        logger.warning(
            "store %s: schema version %d, migrating to %d; the file as it was is kept as %s",
            self.path, version, SCHEMA_VERSION, copy,
        )

    def _migrate(self, found: int, statements: list[str]) -> None:
        """Run ``statements`` and set the new version, all in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._version() != found:
                raise StoreError(f"{self.path}: changed by another process while being opened")
            for sql in statements:
                self._db.execute(sql)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # In WAL mode, NORMAL writes each commit to the WAL file before the
        # commit returns and syncs it only at checkpoints: a commit survives
        # the process being killed (the data is in the operating system's
        # hands), not a power cut or an OS crash; FULL also syncs the WAL at
        # every commit (https://sqlite.org/pragma.html#pragma_synchronous),
        # at a cost on every write.  The README's "What survives what" says
        # which.
        db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        return db

    # -- reads (at start, before the writer has anything to do) ---------------

    def load(self, kind: str) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM records WHERE kind = ?", (kind,))
        return {key: json.loads(value) for key, value in rows.fetchall()}

    def backlog_load(self) -> list[BacklogRow]:
        rows = self._db.execute(
            "SELECT seq, app_id, channel, data, expires_at FROM backlog ORDER BY seq"
        ).fetchall()
        return [BacklogRow(s, a, c, json.loads(d), e) for s, a, c, d, e in rows]

    # -- writes ----------------------------------------------------------------

    def put(
        self, kind: str, key: str, value: Any, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        return self._submit([(_UPSERT.record, (kind, key, _encode(value)))])

    def update(
        self, kind: str, key: str, fields: dict[str, Any], *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        return self._submit([(_UPDATE, (_encode(fields), kind, key))])

    def delete(
        self, kind: str, key: str, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        return self._submit([("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))])

    def backlog_add(self, app_id: str, channel: str, data: Any, expires_at: float) -> int:
        self._seq += 1
        text = _encode(data)
        self._write(
            (
                [
                    ("INSERT INTO backlog VALUES (?, ?, ?, ?, ?)",
                     (self._seq, app_id, channel, text, expires_at)),
                    (_UPSERT.mark, (str(self._seq),)),
                ],
                None,
            )
        )
        return self._seq

    def backlog_remove(self, seqs: Iterable[int]) -> None:
        statements = [("DELETE FROM backlog WHERE seq = ?", (seq,)) for seq in seqs]
        if statements:
            self._write((statements, None))

    def probe(self) -> asyncio.Future[None]:
        # A row of its own in meta, rewritten in place: the file does not grow.
        return self._submit([(_UPSERT.probe, (repr(time.time()),))])

    async def close(self) -> None:
        self._flush()
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._writer_db.close()
        self._db.close()

    def _submit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write((statements, done))
        return done

    def _write(self, write: Write) -> None:
        if self._pending:
            self._pending.append(write)  # this turn's flush is already due
            return
        if self.synchronous == "normal" and self._handed == self._finished:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass  # a plain call with no loop (the Bayeux core's journal): the thread
            else:
                self._pending.append(write)
                loop.call_soon(self._flush)
                return
        self._hand_off([write])

    def _hand_off(self, writes: list[Write]) -> None:
        self._handed += len(writes)
        for write in writes:
            self._queue.put(write)

    def _flush(self) -> None:
        """Commit this turn's writes on the loop, or hand them to the thread."""
        writes, self._pending = self._pending, []
        if not writes:
            return
        if self._handed != self._finished:
            self._hand_off(writes)  # behind what the thread holds, in order
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            # Locked by another connection: the thread waits for it, not the loop.
            self._hand_off(writes)
            return
        self._inline_commits += 1
        settle(_waiters(writes), self._run(self._db, writes))

    def _run(self, db: sqlite3.Connection, writes: list[Write]) -> StoreError | None:
        """The statements of ``writes`` and COMMIT, in the transaction just begun."""
        started = time.perf_counter()
        try:
            for statements, _ in writes:
                for sql, args in statements:
                    db.execute(sql, args)
            db.execute("COMMIT")
            self.commit_seconds.observe(time.perf_counter() - started)
        except sqlite3.Error as exc:
            self.failures += 1
            logger.error("store %s: write failed: %s", self.path, exc)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            return StoreError(f"{self.path}: {exc}")
        return None

    def _writer(self) -> None:
        """Commit whatever is queued in one transaction, in order, until closed;
        checkpoint the WAL the loop's commits wrote."""
        checkpointed = (0, time.monotonic())
        while True:
            try:
                item = self._queue.get(timeout=CHECKPOINT_INTERVAL)
            except queue.Empty:
                item = _IDLE
            if item is not _IDLE:
                batch = [item]
                if item is not None:
                    # Group commit: let the writes that follow closely join
                    # this one, since a commit costs much the same for one
                    # row as for several.
                    time.sleep(GROUP_COMMIT_WAIT)
                while True:  # take everything already waiting
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                writes = [w for w in batch if w is not None]
                if writes:
                    self._commit(writes)
                if None in batch:
                    self._checkpoint()
                    return
            commits, at = checkpointed
            now = time.monotonic()
            if self._inline_commits != commits and now - at >= CHECKPOINT_INTERVAL:
                checkpointed = (self._inline_commits, now)
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file and start it over.

        RESTART, not PASSIVE: it holds the write lock while it runs, so the
        loop's commits meanwhile go to this thread (they queue behind it)
        instead of appending to a WAL that a checkpoint never catches up with
        and that would then grow without end (https://sqlite.org/wal.html,
        "Avoiding Excessively Large WAL Files";
        https://sqlite.org/c3ref/wal_checkpoint_v2.html).
        """
        try:
            self._writer_db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.Error as exc:
            logger.warning("store %s: checkpoint failed: %s", self.path, exc)

    def _commit(self, writes: list[Write]) -> None:
        try:
            self._writer_db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.failures += 1
            logger.error("store %s: write failed: %s", self.path, exc)
            error: StoreError | None = StoreError(f"{self.path}: {exc}")
        else:
            error = self._run(self._writer_db, writes)
        self._finished += len(writes)
        # The waiters are told on their event loop, one wake-up per batch and
        # loop: a future per write handed across threads (wrap_future) cost a
        # loop wake-up and two callbacks for every write of a group commit.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for done in _waiters(writes):
            by_loop.setdefault(done.get_loop(), []).append(done)
        for loop, waiters in by_loop.items():
            try:
                loop.call_soon_threadsafe(settle, waiters, error)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more


def _waiters(writes: list[Write]) -> list[asyncio.Future[None]]:
    return [done for _, done in writes if done is not None]
