"""The backlog's :class:`~adapter.bayeux.backlog.Journal` kept in the adapter's store.

The store knows rows (an application, a channel's text, JSON data, a wall-clock
expiry), not Bayeux types: this module turns deliveries into rows and back, and
is typed against the three store methods it uses, so the store imports nothing
of Bayeux.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from adapter.bayeux.backlog import Backlog
from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery

__all__ = ["BacklogJournal", "BacklogRows", "StoredMessage"]


class StoredMessage(Protocol):
    """One kept message as the store returns it."""

    @property
    def seq(self) -> int: ...
    @property
    def app_id(self) -> str: ...
    @property
    def channel(self) -> str: ...
    @property
    def data(self) -> Any: ...
    @property
    def expires_at(self) -> float:
        """Epoch seconds."""


class BacklogRows(Protocol):
    """What the journal needs of a store (adapter.store.Store has it)."""

    def backlog_add(self, app_id: str, channel: str, data: Any, expires_at: float) -> int: ...

    def backlog_remove(self, seqs: Iterable[int]) -> None: ...

    def backlog_load(self) -> Sequence[StoredMessage]: ...


class BacklogJournal:
    """Mirrors the Bayeux backlog into a store's backlog rows.

    The Bayeux core counts time on the event loop's monotonic clock; the store
    keeps wall-clock expiry so that a restart can tell what is still alive.
    """

    def __init__(self, store: BacklogRows, wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall_clock

    def added(self, app_id: str, delivery: Delivery, expires_at: float, now: float) -> int:
        wall_expiry = self._wall() + (expires_at - now)
        return self._store.backlog_add(app_id, str(delivery.channel), delivery.data, wall_expiry)

    def removed(self, tokens: Iterable[int]) -> None:
        self._store.backlog_remove(tokens)

    def restore(self, backlog: Backlog, now: float) -> int:
        """Refill ``backlog`` from the store (at start); returns how many came back."""
        wall = self._wall()
        expired: list[int] = []
        count = 0
        for row in self._store.backlog_load():
            if row.expires_at <= wall:
                expired.append(row.seq)
                continue
            delivery = Delivery(Channel.parse(row.channel), row.data, f"r{row.seq}")
            backlog.restore(row.app_id, delivery, now + (row.expires_at - wall), row.seq)
            count += 1
        self._store.backlog_remove(expired)
        return count
