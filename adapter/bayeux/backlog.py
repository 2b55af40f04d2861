"""Messages kept for an application while none of its sessions subscribes to them.

Bounded per application (oldest dropped and counted) and by age. The core
talks to it only through `BacklogStore`, so a durable store (SQLite,
PostgreSQL) can take the place of this in-memory one without touching the
protocol code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery


@dataclass(frozen=True, slots=True)
class Kept:
    delivery: Delivery
    expires_at: float
    token: int | None = None  # the journal's handle for this message


class Journal(Protocol):
    """Where a durable backlog writes what it keeps and forgets (see journal.py)."""

    def added(self, app_id: str, delivery: Delivery, expires_at: float, now: float) -> int:
        """Record a kept message; returns its token."""

    def removed(self, tokens: Iterable[int]) -> None:
        """Forget kept messages (delivered, dropped or expired)."""


class BacklogStore(Protocol):
    def add(self, app_id: str, delivery: Delivery, now: float) -> int:
        """Keep `delivery`; return how many older messages were dropped to make room."""

    def take(self, app_id: str, patterns: Iterable[Channel], now: float) -> list[Delivery]:
        """Remove and return (oldest first) the live messages matching any pattern."""

    def expire(self, now: float) -> None: ...

    def next_expiry(self) -> float | None: ...


class Backlog:
    """In-memory `BacklogStore`."""

    def __init__(self, size: int, ttl: float, journal: Journal | None = None) -> None:
        self._size = size
        self._ttl = ttl
        self._kept: dict[str, deque[Kept]] = {}
        self._journal = journal

    def restore(self, app_id: str, delivery: Delivery, expires_at: float, token: int) -> None:
        """Put back a message the journal kept (at start, oldest first)."""
        self._kept.setdefault(app_id, deque()).append(Kept(delivery, expires_at, token))

    def add(self, app_id: str, delivery: Delivery, now: float) -> int:
        self._expire_app(app_id, now)
        kept = self._kept.setdefault(app_id, deque())
        dropped: list[Kept] = []
        while len(kept) >= self._size:
            dropped.append(kept.popleft())
        expires_at = now + self._ttl
        token = None
        if self._journal is not None:
            token = self._journal.added(app_id, delivery, expires_at, now)
        kept.append(Kept(delivery, expires_at, token))
        self._forget(dropped)
        return len(dropped)

    def _forget(self, items: Iterable[Kept]) -> None:
        if self._journal is not None:
            tokens = [item.token for item in items if item.token is not None]
            if tokens:
                self._journal.removed(tokens)

    def take(self, app_id: str, patterns: Iterable[Channel], now: float) -> list[Delivery]:
        if app_id not in self._kept:
            return []
        self._expire_app(app_id, now)
        kept = self._kept.get(app_id)
        if not kept:
            return []
        wanted = list(patterns)
        taken: list[Kept] = []
        remaining: deque[Kept] = deque()
        for item in kept:
            if any(p.matches(item.delivery.channel) for p in wanted):
                taken.append(item)
            else:
                remaining.append(item)
        if remaining:
            self._kept[app_id] = remaining
        else:
            del self._kept[app_id]
        self._forget(taken)
        return [item.delivery for item in taken]

    def expire(self, now: float) -> None:
        for app_id in list(self._kept):
            self._expire_app(app_id, now)

    def next_expiry(self) -> float | None:
        # Entries are appended in time order with one TTL, so each deque's
        # head expires first.
        heads = [kept[0].expires_at for kept in self._kept.values() if kept]
        return min(heads, default=None)

    def count(self, app_id: str) -> int:
        return len(self._kept.get(app_id, ()))

    def _expire_app(self, app_id: str, now: float) -> None:
        kept = self._kept.get(app_id)
        if kept is None:
            return
        expired: list[Kept] = []
        while kept and kept[0].expires_at <= now:
            expired.append(kept.popleft())
        self._forget(expired)
        if not kept:
            del self._kept[app_id]
