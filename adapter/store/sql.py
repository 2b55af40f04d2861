"""What the two SQL stores (SQLite and PostgreSQL) write alike."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = ["Upserts", "Write"]

#: One queued write: the statements (SQL, parameters) to run in order, and who
#: waits for them (a future of the event loop that queued the write).
Write = tuple[list[tuple[str, tuple[Any, ...]]], "asyncio.Future[None] | None"]


@dataclass(frozen=True)
class Upserts:
    """The rows rewritten in place: a record, the backlog mark, the probe.

    An upsert updates the row where it stands; both SQLite
    (https://sqlite.org/lang_upsert.html) and PostgreSQL spell it
    ``INSERT ... ON CONFLICT ... DO UPDATE``, with their own placeholders.
    """

    record: str
    mark: str
    probe: str

    @classmethod
    def with_placeholder(cls, p: str) -> Upserts:
        """The statements with ``p`` (``?`` or ``%s``) for each parameter."""
        return cls(
            record=f"INSERT INTO records VALUES ({p}, {p}, {p})"
            " ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value",
            mark=f"INSERT INTO meta VALUES ('backlog_seq', {p})"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            probe=f"INSERT INTO meta VALUES ('probe', {p})"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
