"""The store's interface: what the services call, whatever the backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "KINDS",
    "BacklogRow",
    "StaleLease",
    "Store",
    "StoreError",
    "StoreUnreachable",
    "encode",
    "retrieved",
    "settle",
]

KINDS = ("publication", "watch", "schedule")

# The stored JSON, compact; one encoder for every write (json.dumps with
# anything but its defaults builds a new encoder per call).
encode = json.JSONEncoder(separators=(",", ":")).encode


class StoreError(Exception):
    """The store cannot be opened or written (one line, naming the store)."""


class StoreUnreachable(StoreError):
    """The server could not be reached for the write: it failed now, and is kept
    and written once the server is back (adapter.store.postgres)."""


class StaleLease(StoreError):
    """A node's write of SIP work was refused: another node of the cluster owns
    that work now (adapter.cluster.leases)."""


@dataclass(frozen=True)
class BacklogRow:
    seq: int
    app_id: str
    channel: str
    data: Any
    expires_at: float  # epoch seconds


class Store(Protocol):
    """The persistence interface of the adapter."""

    def put(self, kind: str, key: str, value: Any) -> asyncio.Future[None]:
        """Insert or replace one record; the future completes once it is durable."""

    def delete(self, kind: str, key: str) -> asyncio.Future[None]:
        """Remove one record (absent is fine)."""

    def load(self, kind: str) -> dict[str, Any]:
        """Every record of ``kind``, as stored (read at start, before serving)."""

    def backlog_add(self, app_id: str, channel: str, data: Any, expires_at: float) -> int:
        """Append to an application's backlog; returns the row's sequence number."""

    def backlog_remove(self, seqs: Iterable[int]) -> None:
        """Forget backlog rows (delivered, dropped or expired)."""

    def backlog_load(self) -> list[BacklogRow]:
        """The whole backlog, oldest first (read at start)."""

    def probe(self) -> asyncio.Future[None]:
        """A small write that completes once committed (/readyz asks it)."""

    async def close(self) -> None: ...


def settle(waiters: Iterable[asyncio.Future[None]], error: Exception | None) -> None:
    """Complete a batch's waiters (on their event loop)."""
    for done in waiters:
        # A waiter may have given up (its REST call was cancelled); the write
        # stands, but completing a cancelled future raises InvalidStateError,
        # which would leave the rest of the batch waiting for ever.
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def retrieved(write: asyncio.Future[None]) -> None:
    """A write nobody waits for: its error (the store logs it) is not reported again."""

    def retrieve(future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()

    write.add_done_callback(retrieve)
