"""The PostgreSQL store: the same records and backlog, in a database (``[store] url``).

The driver is psycopg 3, with psycopg_pool, rather than asyncpg:

* one driver has both a blocking and an asyncio interface.  Opening the store
  (checking, creating or migrating its schema, and reading what it holds for
  the reads at start, in one transaction) runs before serving and blocks, as
  :class:`~adapter.store.sqlite.SqliteStore`'s does, so that a store that
  cannot be used stops start-up with one line from ``make_app``; the writes
  run on the event loop and never block it;
* psycopg_pool checks a connection before handing it out and replaces a
  broken one (a restarted server) on its own, with back-off;
* pipeline mode sends a whole group of writes and its COMMIT in one round
  trip;
* the URL is libpq's own: every parameter libpq documents (``sslmode``,
  ``options``, ``connect_timeout``, ``PGPASSWORD``…) works.

asyncpg's speed at decoding large results buys nothing here: the adapter
writes a few small rows at a time and reads everything once, at start.

Writes keep :class:`~adapter.store.Store`'s promise: they are committed in
the order of the calls, by one writer task on one connection, each commit
taking every write queued meanwhile (a group commit); a write's future
completes once its transaction is committed.  A group that meets a broken
connection is written once more on a new one (every statement is an upsert,
a delete or an insert that ignores a row already there, so a group that did
commit before the connection broke may be written twice).  A group that
cannot be written because the server is unreachable (stopped, restarting)
fails its futures at once — a REST call answers 503 rather than wait — but is
kept, at the head of the queue, and written again with back-off until the
server is back: nothing written in the background (an entity tag, a
decision told, a Bayeux message kept) is lost to a restart of the server.  A
caller that takes back what it asked for after such a failure writes that
too, and it is committed after, in order.  Any other failure fails the
group's futures, is logged, and the writer goes on.

Fencing (a node of a cluster, adapter.cluster.leases): a record of the SIP
work a node owns (a publication, a watch), and a record that is part of it
(a schedule, part of its watch: ``lease=``), is written only with the
lease's fencing token the node holds, in the statement itself — the write
does nothing, and its future fails with :class:`StaleLease`, when another
node has taken the work over since.  Deleting the work's own record ends
the work: its lease row is deleted in the same statement.

Values are stored as their JSON text, as SQLite stores them, not as jsonb:
jsonb refuses some JSON that Python writes (``\\u0000`` in a string), and a
store must keep whatever the services hand it.

The schema's version is the ``meta`` table's ``schema`` row (adapter.store.schema).

The nodes of a cluster without ``[cluster] secret`` share the key of their
calls to each other through the store (:meth:`PostgresStore.cluster_secret`):
the first node to ask makes it, every node reads it, none overwrites it.

One adapter at a time, or the nodes of one cluster: the store holds a
session-level advisory lock for as long as it is open — exclusive for a
single adapter, shared for a node of a cluster (``node``) — and an adapter
that cannot take it within :data:`OWNER_WAIT` refuses to start.  Two single
adapters on one store would both re-publish and re-subscribe everything; the
nodes of a cluster share the work through leases (adapter.cluster.leases),
which a single adapter knows nothing of, so the two kinds never mix.  The
wait covers an adapter restarted at once after ``kill -9``: the server
notices the dead process's connection close and lets go of its lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from adapter.metrics import STORE_BUCKETS, Histogram
from adapter.store import schema
from adapter.store.interface import (
    KINDS,
    BacklogRow,
    LeaseKey,
    StaleLease,
    StoreError,
    StoreUnreachable,
    encode,
    retrieved,
    settle,
)
from adapter.store.sql import Upserts, Write

__all__ = ["FENCED", "MIGRATIONS", "SCHEMA_VERSION", "PostgresStore", "StaleLease"]

logger = logging.getLogger(__name__)

#: The schema this adapter writes.
SCHEMA_VERSION = 4
#: Seconds to connect, unless the URL says (libpq's ``connect_timeout``).
CONNECT_TIMEOUT = 10
#: Seconds a write waits for a connection (the server unreachable) before it
#: fails, unless given (the adapter gives ``[sip] request_timeout``, the bound
#: on a REST call's wait).
WRITE_TIMEOUT = 10.0
#: The advisory lock an open store holds ("pres").
OWNER_LOCK = 0x70726573
#: Held while a store's tables are checked, made or migrated: the nodes of a
#: cluster, which share OWNER_LOCK, may start together on a new database.
SCHEMA_LOCK = OWNER_LOCK + 1
#: Seconds to wait for it (libpq's lock_timeout syntax).
OWNER_WAIT = "5s"

_TABLES = (
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE records ("
    " kind text NOT NULL, key text NOT NULL, value text NOT NULL, PRIMARY KEY (kind, key))",
    "CREATE TABLE backlog ("
    " seq bigint PRIMARY KEY, app_id text NOT NULL, channel text NOT NULL,"
    " data text NOT NULL, expires_at double precision NOT NULL)",
)

#: The cluster's tables (adapter.cluster): the nodes and their heartbeats, and
#: one lease per piece of SIP work (a record of kind publication or watch).
_CLUSTER_TABLES = (
    "CREATE TABLE nodes ("
    " name text PRIMARY KEY, http text NOT NULL, sip text NOT NULL,"
    " last_seen timestamptz NOT NULL)",
    "CREATE TABLE leases ("
    " kind text NOT NULL, key text NOT NULL, owner text NOT NULL, token bigint NOT NULL,"
    " expires timestamptz NOT NULL, PRIMARY KEY (kind, key))",
    "CREATE INDEX leases_owner ON leases (owner)",
    "CREATE INDEX leases_expires ON leases (expires)",
)

#: Each node's process is told apart by a random instance id written with its
#: heartbeat: a second process under a live node's name is refused
#: (adapter.cluster.nodes.claim).
_NODE_INSTANCES = ("ALTER TABLE nodes ADD COLUMN instance text NOT NULL DEFAULT ''",)

#: The key the nodes of a cluster sign their calls to each other with, when
#: their configuration gives none (adapter.cluster.peer): one row at most.
_SECRET_TABLE = (
    "CREATE TABLE cluster_secret ("
    " id boolean PRIMARY KEY DEFAULT true CHECK (id), secret bytea NOT NULL)",
)
#: Bytes of a cluster secret made here (256 bits, as HMAC-SHA256's key).
SECRET_BYTES = 32

#: Version -> the statements that bring a store of that version to the next.
MIGRATIONS: schema.Migrations = {1: _CLUSTER_TABLES, 2: _NODE_INSTANCES, 3: _SECRET_TABLE}

#: The snapshot's key for the backlog (not a kind of record).
_BACKLOG = "backlog"
_LOAD_BACKLOG = "SELECT seq, app_id, channel, data, expires_at FROM backlog ORDER BY seq"
_PUT_SCHEMA = (
    "INSERT INTO meta VALUES ('schema', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_DELETE_RECORD = "DELETE FROM records WHERE kind = %s AND key = %s"
# Some fields of a record set in place by the server (jsonb concatenation
# replaces the top-level keys the right side has).
_SET_FIELDS = "value = (value::jsonb || %s::jsonb)::text WHERE kind = %s AND key = %s"
_UPDATE_RECORD = "UPDATE records SET " + _SET_FIELDS
_ADD_BACKLOG = "INSERT INTO backlog VALUES (%s, %s, %s, %s, %s) ON CONFLICT (seq) DO NOTHING"
_REMOVE_BACKLOG = "DELETE FROM backlog WHERE seq = ANY(%s)"
_UPSERT = Upserts.with_placeholder("%s")

#: The kinds of record that are a node's SIP work, written under its lease.
FENCED = ("publication", "watch")
#: Seconds between attempts to write a group while the server is unreachable
#: (doubling up to the last).
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)


class _Fenced(str):
    """A statement that writes only under the lease it names, and answers one
    row: how many leases allowed it (1, or 0 when the token is stale)."""


# The lease row is locked (FOR SHARE) until the write commits, so that a
# takeover (an UPDATE of that row) comes wholly before or wholly after it.
_FENCE = (
    "WITH fence AS (SELECT 1 FROM leases"
    " WHERE kind = %s AND key = %s AND owner = %s AND token = %s FOR SHARE)"
)
# A group's fenced writes first lock their lease rows in (kind, key) order, the
# order a renewal (adapter.cluster.leases.RENEW) locks them in: two lockers in
# one order cannot deadlock.  Rows are locked as the sort emits them.
_LOCK_LEASES = (
    "SELECT 1 FROM leases l JOIN unnest(%s::text[], %s::text[]) AS w(kind, key)"
    " ON l.kind = w.kind AND l.key = w.key ORDER BY l.kind, l.key FOR SHARE OF l"
)
_FENCED_PUT = _Fenced(
    _FENCE + ", done AS (INSERT INTO records SELECT %s, %s, %s FROM fence"
    " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value)"
    " SELECT count(*) FROM fence"
)
_FENCED_UPDATE = _Fenced(
    _FENCE + ", done AS (UPDATE records SET " + _SET_FIELDS
    + " AND EXISTS (SELECT 1 FROM fence)) SELECT count(*) FROM fence"
)
_FENCED_DELETE = _Fenced(
    _FENCE + ", done AS (DELETE FROM records WHERE kind = %s AND key = %s"
    " AND EXISTS (SELECT 1 FROM fence)) SELECT count(*) FROM fence"
)
# The end of a piece of work: its record and its lease go in one statement, so
# that no takeover finds a lease of work that is over.  The DELETE of the
# lease row is the fence (it locks the row, as FOR SHARE does).
_FENCED_END = _Fenced(
    "WITH fence AS (DELETE FROM leases"
    " WHERE kind = %s AND key = %s AND owner = %s AND token = %s RETURNING 1),"
    " done AS (DELETE FROM records WHERE kind = %s AND key = %s"
    " AND EXISTS (SELECT 1 FROM fence)) SELECT count(*) FROM fence"
)
# The end of work this node holds no lease for (a withdrawal of nothing
# published): nobody's work has no lease, so it is allowed when none exists.
_UNLEASED_END = _Fenced(
    "WITH fence AS (SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM leases"
    " WHERE kind = %s AND key = %s)), done AS (DELETE FROM records"
    " WHERE kind = %s AND key = %s AND EXISTS (SELECT 1 FROM fence))"
    " SELECT count(*) FROM fence"
)


def _line(exc: BaseException) -> str:
    """An error of psycopg or libpq on one line (libpq's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def describe(url: str) -> str:
    """``url`` without its password, for messages: ``postgresql://user@host:port/db``."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://?"
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql://{user}{params.get('host', '')}{port}/{params.get('dbname', '')}"


class PostgresStore:
    """A store in a PostgreSQL database: the tables are created in the
    connection's current schema (``search_path``) when the database has none."""

    def __init__(
        self, url: str, *, write_timeout: float | None = None, node: str | None = None
    ) -> None:
        self.url = url
        #: This adapter's name as a node of a cluster; None: a single adapter.
        self.node = node
        self.write_timeout = WRITE_TIMEOUT if write_timeout is None else write_timeout
        #: How messages name the store (no password).
        self.where = describe(url)
        try:
            params = conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None
        self._options: dict[str, Any] = {
            "connect_timeout": params.get("connect_timeout", CONNECT_TIMEOUT),
            "application_name": params.get("application_name", "presence-adapter"),
        }
        #: What the store held when opened, by kind (and _BACKLOG), until read or
        #: written: the reads at start then ask nothing of the server.
        self._snapshot: dict[str, list[tuple[Any, ...]]] = {}
        self._seq = self._open()
        self._pending: list[Write] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._pool: AsyncConnectionPool | None = None
        self._closing = False
        #: The last group failed for want of a connection (the server unreachable).
        self._unreachable = False
        #: Failed attempts in a row at writing the group at the head of the queue.
        self._attempts = 0
        #: A node's fencing: the token it holds for a record of FENCED kinds, None
        #: when it holds none (adapter.cluster sets it; unset: no fencing).
        self.fence: Callable[[str, str], int | None] | None = None
        #: Told of a write refused for a stale token (kind, key).
        self.on_stale: Callable[[str, str], None] = lambda kind, key: None
        #: Told when the end of a piece of work (kind, key) is queued, with the
        #: write's future: its lease goes with the record.
        self.on_end: Callable[[str, str, asyncio.Future[None]], None] = (
            lambda kind, key, done: None
        )
        #: Reads (and the cluster's statements) while serving, beside the writer.
        self._reads: AsyncConnectionPool | None = None
        self._reads_opening = asyncio.Lock()
        self.failures = 0
        #: Seconds from the first statement of a commit to its COMMIT (for /metrics).
        self.commit_seconds = Histogram(STORE_BUCKETS)

    # -- opening and reads (before serving: blocking) ----------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, **self._options)

    def _open(self) -> int:
        """Check the database holds our store, creating or migrating it; the last backlog
        number."""
        try:
            db = self._connect()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None
        try:
            seq = self._prepare(db)
        except BaseException:
            db.close()
            raise
        #: Holds OWNER_LOCK while the store is open.
        self._owner = db
        return seq

    def _prepare(self, db: psycopg.Connection[Any]) -> int:
        try:
            db.execute(f"SET lock_timeout = '{OWNER_WAIT}'")
            lock = "pg_advisory_lock" if self.node is None else "pg_advisory_lock_shared"
            try:
                db.execute(f"SELECT {lock}(%s)", (OWNER_LOCK,))
            except psycopg.errors.LockNotAvailable:
                raise StoreError(
                    f"{self.where}: another adapter is using this store"
                    + (" as a single adapter (not a node of a cluster)" if self.node else
                       " (one adapter per store, or the nodes of a cluster, each with [cluster])")
                ) from None
            db.execute("RESET lock_timeout")
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                found = self._version(db)
                if found != SCHEMA_VERSION:
                    if found:
                        statements = schema.steps(self.where, found, SCHEMA_VERSION, MIGRATIONS)
                        logger.warning(
                            "store %s: schema version %d, migrating to %d",
                            self.where, found, SCHEMA_VERSION,
                        )
                    else:
                        statements = [
                            *_TABLES, *_CLUSTER_TABLES, *_NODE_INSTANCES, *_SECRET_TABLE]
                    for sql in statements:
                        db.execute(sql)
                    db.execute(_PUT_SCHEMA, (str(SCHEMA_VERSION),))
                (last,) = db.execute("SELECT max(seq) FROM backlog").fetchone() or (None,)
                mark = db.execute("SELECT value FROM meta WHERE key = 'backlog_seq'").fetchone()
                self._snapshot = {kind: [] for kind in KINDS}
                for kind, key, value in db.execute("SELECT kind, key, value FROM records"):
                    self._snapshot.setdefault(kind, []).append((key, value))
                self._snapshot[_BACKLOG] = db.execute(_LOAD_BACKLOG).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None
        # The high-water mark outlives the rows: restored messages are named
        # after their number, so a number must not come back once used.
        return max(last or 0, int(mark[0]) if mark else 0)

    def _version(self, db: psycopg.Connection[Any]) -> int:
        """The store's schema version; 0 for a database without tables (a new store)."""
        tables = {
            name
            for (name,) in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
        if not tables:
            return 0
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is not None and str(row[0]).isdigit():
                return int(row[0])
        raise StoreError(f"{self.where}: not a store of this adapter (it has other tables)")

    def cluster_secret(self) -> bytes:
        """The cluster's secret kept in the store, made here by the first node to ask
        (before serving: blocking; a failure is one line of StoreError).

        The insert does nothing when a row is there, so that nodes starting together
        agree on the first one committed and a restarted node never changes it.
        """
        try:
            self._owner.execute(
                "INSERT INTO cluster_secret (secret) VALUES (%s) ON CONFLICT (id) DO NOTHING",
                (secrets.token_bytes(SECRET_BYTES),),
            )
            row = self._owner.execute("SELECT secret FROM cluster_secret").fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None
        assert row is not None  # inserted, or there already
        return bytes(row[0])

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._connect() as db:
                return db.execute(sql, args).fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None

    def run_locked(
        self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """One statement on the connection that holds the store's lock, blocking
        (before serving): a session lock it takes is held while the store is open."""
        try:
            cursor = self._owner.execute(sql, args)
            return cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:
            raise StoreError(f"{self.where}: {_line(exc)}") from None

    def load(self, kind: str) -> dict[str, Any]:
        # Read at open, when nothing of that kind was written since: the
        # services read at start while the server already serves, and a read
        # over the network would hold the event loop.
        rows = self._snapshot.pop(kind, None)
        if rows is None:
            rows = self._query("SELECT key, value FROM records WHERE kind = %s", (kind,))
        return {key: json.loads(value) for key, value in rows}

    def backlog_load(self) -> list[BacklogRow]:
        rows = self._snapshot.pop(_BACKLOG, None)
        if rows is None:
            rows = self._query(_LOAD_BACKLOG)
        return [BacklogRow(s, a, c, json.loads(d), e) for s, a, c, d, e in rows]

    # -- writes ------------------------------------------------------------------

    def put(
        self, kind: str, key: str, value: Any, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        self._snapshot.pop(kind, None)
        if self.fence is not None:
            under = lease or ((kind, key) if kind in FENCED else None)
            if under is not None:
                return self._fenced(_FENCED_PUT, under, (kind, key, encode(value)))
        return self._submit([(_UPSERT.record, (kind, key, encode(value)))])

    def update(
        self, kind: str, key: str, fields: dict[str, Any], *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        self._snapshot.pop(kind, None)
        args = (encode(fields), kind, key)
        if self.fence is not None:
            under = lease or ((kind, key) if kind in FENCED else None)
            if under is not None:
                return self._fenced(_FENCED_UPDATE, under, args)
        return self._submit([(_UPDATE_RECORD, args)])

    def delete(
        self, kind: str, key: str, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        self._snapshot.pop(kind, None)
        if self.fence is not None:
            if lease is not None:
                return self._fenced(_FENCED_DELETE, lease, (kind, key))
            if kind in FENCED:
                return self._end(kind, key)
        return self._submit([(_DELETE_RECORD, (kind, key))])

    def _end(self, kind: str, key: str) -> asyncio.Future[None]:
        """The work's record is deleted, and its lease with it (the work is over)."""
        assert self.fence is not None
        if self.fence(kind, key) is None:
            return self._submit([(_UNLEASED_END, (kind, key, kind, key))])
        done = self._fenced(_FENCED_END, (kind, key), (kind, key))
        self.on_end(kind, key, done)
        return done

    def _fenced(
        self, sql: _Fenced, lease: LeaseKey, args: tuple[Any, ...]
    ) -> asyncio.Future[None]:
        assert self.fence is not None and self.node is not None
        token = self.fence(*lease)
        if token is None:
            # Not ours (any more): nothing is written, nothing is queued.
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            kind, key = lease
            done.set_exception(StaleLease(f"{self.where}: {kind} {key} is not this node's"))
            retrieved(done)
            return done
        return self._submit([(sql, (*lease, self.node, token, *args))])

    async def query(
        self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own (autocommit), beside the
        writer; its rows.  Raises StoreError when the server cannot be reached
        within the write timeout or refuses it."""
        async with self._reads_opening:  # one pool, whoever asks first
            if self._reads is None:
                self._reads = await self._open_pool("presence-adapter-reads", 2)
        try:
            async with self._reads.connection() as connection:
                cursor = await connection.execute(sql, args)
                return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.Error as exc:  # psycopg_pool's PoolTimeout is one too
            raise StoreError(f"{self.where}: {_line(exc)}") from None

    async def get(self, kind: str, key: str) -> Any | None:
        """One record as stored now, or None (a read while serving)."""
        rows = await self.query("SELECT value FROM records WHERE kind = %s AND key = %s",
                                (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def backlog_add(self, app_id: str, channel: str, data: Any, expires_at: float) -> int:
        self._snapshot.pop(_BACKLOG, None)
        self._seq += 1
        row = (self._seq, app_id, channel, encode(data), expires_at)
        self._write(([(_ADD_BACKLOG, row), (_UPSERT.mark, (str(self._seq),))], None))
        return self._seq

    def backlog_remove(self, seqs: Iterable[int]) -> None:
        rows = list(seqs)
        if rows:
            self._snapshot.pop(_BACKLOG, None)
            self._write(([(_REMOVE_BACKLOG, (rows,))], None))

    def probe(self) -> asyncio.Future[None]:
        # A row of its own in meta, rewritten in place.
        return self._submit([(_UPSERT.probe, (repr(time.time()),))])

    async def close(self) -> None:
        self._closing = True
        if self._pending:
            self._start_writer()  # writes made with no event loop running
        if self._writer is not None:
            assert self._wake is not None
            self._wake.set()
            await self._writer
        if self._pool is not None:
            await self._pool.close()
        if self._reads is not None:
            await self._reads.close()
        self._owner.close()  # lets go of OWNER_LOCK

    def _submit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write((statements, done))
        return done

    def _write(self, write: Write) -> None:
        self._pending.append(write)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # A plain call with no loop (the Bayeux core's journal): committed
            # with the next write made on the loop, or at close.
            return
        self._start_writer()
        assert self._wake is not None
        self._wake.set()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._wake = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(
                self._write_all(), name="store-writer"
            )

    async def _open_pool(self, name: str, size: int) -> AsyncConnectionPool:
        """Autocommit connections, checked before use and replaced when broken; a
        caller waits at most write_timeout for one."""
        pool = AsyncConnectionPool(
            self.url,
            kwargs={"autocommit": True, **self._options},
            min_size=1,
            max_size=size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self.write_timeout,
            name=name,
        )
        await pool.open(wait=False)
        return pool

    async def _write_all(self) -> None:
        """Commit what is queued, a group at a time, until closed."""
        assert self._wake is not None
        # One connection: one writer, so the order of commits is the order of
        # the calls.
        self._pool = await self._open_pool("presence-adapter-store", 1)
        while True:
            await self._wake.wait()
            self._wake.clear()
            writes, self._pending = self._pending, []
            if writes:
                error = await self._commit(writes)
                if error is not None and self._unreachable:
                    # Those queued while this group waited in vain for a
                    # connection would wait as long again: they fail with it,
                    # so that no call waits much more than write_timeout.
                    writes += self._pending
                    self._pending = []
                settle([done for _, done in writes if done is not None], error)
                if error is not None and self._unreachable:
                    if await self._write_again(writes):
                        continue
            if self._closing and not self._pending:
                return

    async def _write_again(self, writes: list[Write]) -> bool:
        """Keep a group the server could not be reached for, ahead of what came
        since, and wait before the next attempt.  False when closing: what is
        left is lost (logged), rather than hold the stop for ever."""
        assert self._wake is not None
        self._attempts += 1
        if self._closing and self._attempts > 1:
            logger.error("store %s: stopping with %d writes not written (server unreachable)",
                         self.where, len(writes))
            return False
        # Their waiters have their answer (the error): what is kept is the data.
        self._pending = [(statements, None) for statements, _ in writes] + self._pending
        delay = RETRY_DELAYS[min(self._attempts, len(RETRY_DELAYS)) - 1]
        logger.warning("store %s: %d writes kept, writing again in %g s",
                       self.where, len(self._pending), delay)
        await asyncio.sleep(delay)
        self._wake.set()
        return True

    def _stale(self, writes: list[Write], index: int, kind: str, key: str) -> None:
        """A fenced write did nothing: its waiter learns why, the node lets the work go."""
        statements, done = writes[index]
        logger.warning("store %s: %s %s written under a stale lease: not written",
                       self.where, kind, key)
        if done is not None and not done.done():
            done.set_exception(StaleLease(f"{self.where}: {kind} {key} is another node's now"))
            retrieved(done)
        self.on_stale(kind, key)

    async def _commit(self, writes: list[Write]) -> StoreError | None:
        """``writes`` in one transaction: None once committed, else the error."""
        assert self._pool is not None
        tries = 2  # a connection that broke under the group: once more, on a new one
        self._unreachable = False
        while True:
            tries -= 1
            connection: psycopg.AsyncConnection[Any] | None = None
            try:
                async with self._pool.connection() as connection:
                    started = time.perf_counter()
                    fenced: list[tuple[int, str, str, psycopg.AsyncCursor[Any]]] = []
                    async with connection.pipeline(), connection.transaction():
                        async with connection.cursor() as cursor:
                            leases = sorted({
                                (args[0], args[1])
                                for statements, _ in writes
                                for sql, args in statements
                                if isinstance(sql, _Fenced)
                            })
                            if leases:
                                await cursor.execute(_LOCK_LEASES, (
                                    [kind for kind, _ in leases], [key for _, key in leases]
                                ))
                            for index, (statements, _) in enumerate(writes):
                                for sql, args in statements:
                                    if isinstance(sql, _Fenced):
                                        # A cursor of its own: its one row is read
                                        # once the pipeline has run.
                                        own = connection.cursor()
                                        await own.execute(sql, args)
                                        fenced.append((index, args[0], args[1], own))
                                    else:
                                        await cursor.execute(sql, args)
                    self.commit_seconds.observe(time.perf_counter() - started)
                    self._attempts = 0
                    for index, kind, key, own in fenced:
                        row = await own.fetchone()
                        await own.close()
                        if row is None or row[0] != 1:
                            self._stale(writes, index, kind, key)
                return None
            except psycopg.Error as exc:
                if tries and connection is not None and connection.broken:
                    logger.warning(
                        "store %s: connection lost (%s); writing again on a new one",
                        self.where, _line(exc),
                    )
                    continue
                self.failures += 1
                self._unreachable = connection is None or connection.broken
                logger.error("store %s: write failed: %s", self.where, _line(exc))
                if self._unreachable:
                    return StoreUnreachable(f"{self.where}: {_line(exc)}")
                return StoreError(f"{self.where}: {_line(exc)}")
