"""A store that forgets everything on exit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from adapter.store.interface import KINDS, BacklogRow, LeaseKey

__all__ = ["MemoryStore"]


class MemoryStore:
    """A store that forgets everything on exit (tests, and deployments that want that)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self._backlog: dict[int, BacklogRow] = {}
        self._seq = 0

    def _done(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def put(
        self, kind: str, key: str, value: Any, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        self._records[kind][key] = json.loads(json.dumps(value))
        return self._done()

    def update(
        self, kind: str, key: str, fields: dict[str, Any], *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        record = self._records[kind].get(key)
        if record is not None:
            record.update(json.loads(json.dumps(fields)))
        return self._done()

    def delete(
        self, kind: str, key: str, *, lease: LeaseKey | None = None
    ) -> asyncio.Future[None]:
        self._records[kind].pop(key, None)
        return self._done()

    def load(self, kind: str) -> dict[str, Any]:
        return dict(self._records[kind])

    def backlog_add(self, app_id: str, channel: str, data: Any, expires_at: float) -> int:
        self._seq += 1
        self._backlog[self._seq] = BacklogRow(self._seq, app_id, channel, data, expires_at)
        return self._seq

    def backlog_remove(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            self._backlog.pop(seq, None)

    def backlog_load(self) -> list[BacklogRow]:
        return [self._backlog[seq] for seq in sorted(self._backlog)]

    def probe(self) -> asyncio.Future[None]:
        return self._done()

    async def close(self) -> None:
        return None
