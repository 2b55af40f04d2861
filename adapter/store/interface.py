"""The store's interface: what the services call, whatever the backend."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

__all__ = [
    "KINDS",
    "BacklogRow",
    "LeaseKey",
    "StaleLease",
    "Store",
    "StoreError",
    "StoreUnreachable",
    "encode",
    "retrieved",
    "settle",
]

KINDS = ("publication", "watch", "schedule")

#: The SIP work a record belongs to, as a node of a cluster leases it: the
#: (kind, key) of that work's own record (adapter.cluster.leases).
LeaseKey = tuple[str, str]


def _plain(value: object) -> object:
    """A subclass of str, int or float (a configuration's AppId, say) as json
    writes it: as its base type.  Anything else is no JSON, as for json."""
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_JSON = msgspec.json.Encoder(enc_hook=_plain)
# The standard library's, for what msgspec refuses: a lone surrogate in a
# string (UTF-8 cannot carry it; json escapes it).
_ESCAPING = json.JSONEncoder(separators=(",", ":")).encode


def encode(value: Any) -> str:
    """The stored JSON text of ``value``, compact (msgspec: every Publish
    writes its record twice, and json is several times slower at it)."""
    try:
        return _JSON.encode(value).decode()
    except UnicodeEncodeError:
        return _ESCAPING(value)


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

    def put(
        self, kind: str, key: str, value: Any, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        """Insert or replace one record; the future completes once it is durable.

        ``lease``: the SIP work the record is part of when it is not that work's
        own record (a schedule: its watch's); a node of a cluster writes it
        only under that work's lease.  Stores without leases ignore it."""

    def update(
        self, kind: str, key: str, fields: dict[str, Any], *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        """Set the top-level ``fields`` of a stored record, keeping the rest as
        it is; no record: nothing is written.  The future completes once it
        is durable.  For a few fields of a larger record written often (a
        publication's entity tag, on every refresh), which then need not be
        encoded whole.  No value may be None.  ``lease`` as for :meth:`put`."""

    def delete(
        self, kind: str, key: str, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        """Remove one record (absent is fine); ``lease`` as for :meth:`put`."""

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
