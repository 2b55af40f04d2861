"""What the adapter must not forget across a restart, behind one small interface.

The services keep their working state in memory and write through to a
:class:`Store`: publications, watches (watcher subscriptions with their
reference and known decisions), notification schedules, and the Bayeux
backlog.  On start the adapter loads everything and re-creates the SIP side
from it.

The interface speaks of *records* — a kind, a key, a JSON-able value — plus
an ordered backlog, and nothing else, so that every backend implements it
without the callers changing.  Writes are queued in order to one writer; a
caller that must not answer before the data is durable (a REST call's 204)
awaits the write, others let it go.

Backends: :class:`~adapter.store.sqlite.SqliteStore`, the default (one file),
and :class:`~adapter.store.postgres.PostgresStore` (a PostgreSQL database,
``[store] url``); :class:`MemoryStore` forgets everything.  Each keeps a schema
version and migrates an older store when it opens it (:mod:`adapter.store.schema`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapter.store.interface import (
    KINDS,
    BacklogRow,
    LeaseKey,
    StaleLease,
    Store,
    StoreError,
    StoreUnreachable,
    retrieved,
)
from adapter.store.memory import MemoryStore
from adapter.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from adapter.config import StoreConfig

__all__ = [
    "KINDS",
    "BacklogRow",
    "LeaseKey",
    "MemoryStore",
    "SqliteStore",
    "StaleLease",
    "Store",
    "StoreError",
    "StoreUnreachable",
    "open_store",
    "retrieved",
]


def open_store(
    config: StoreConfig, *, write_timeout: float | None = None, node: str | None = None
) -> Store:
    """The store ``[store]`` names: PostgreSQL for ``url``, else the SQLite file ``path``.

    ``write_timeout``: the longest a PostgreSQL write waits for the server
    (default :data:`~adapter.store.postgres.WRITE_TIMEOUT`; SQLite's fail at once).
    ``node``: this adapter is that node of a cluster (PostgreSQL only).

    Raises StoreError (one line) when it cannot be opened.
    """
    if config.url is not None:
        # psycopg is imported only by an adapter that uses it.
        from adapter.store.postgres import PostgresStore

        return PostgresStore(config.url, write_timeout=write_timeout, node=node)
    assert config.path is not None  # StoreConfig holds one or the other
    return SqliteStore(config.path, synchronous=config.synchronous)
