"""When to tell the log about messages dropped from a full queue or backlog.

A full backlog drops one message per delivery; a warning each would bury the
log. The first drop for a place is told at once, the next ones counted and
told together at the end of each interval that had some; an interval with
none ends the counting, so the next drop is told at once again. Reads no
clock: the driver passes ``now`` and fires `handle_timer` at `get_timer`, as
for `BayeuxServer`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DropReport:
    """One log line: `count` messages dropped for `app_id` at `where`.

    `span` is the interval they were counted over, None when told at once
    (the first drop) or at `flush`.
    """

    app_id: str
    where: str
    count: int
    span: float | None


class DropLog:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._counting: dict[tuple[str, str], int] = {}  # drops not told yet
        self._heap: list[tuple[float, tuple[str, str]]] = []  # one entry per counting place

    def dropped(self, app_id: str, where: str, count: int, now: float) -> DropReport | None:
        key = (app_id, where)
        if key in self._counting:
            self._counting[key] += count  # told when the interval ends
            return None
        self._start(key, now)
        return DropReport(app_id, where, count, None)

    def get_timer(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> list[DropReport]:
        reports = []
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            count = self._counting.pop(key)
            if count:  # drops go on: the next ones are told at the end of the next interval
                reports.append(DropReport(*key, count, self.interval))
                self._start(key, now)
        return reports

    def flush(self) -> list[DropReport]:
        """Everything counted and not told yet (at shutdown)."""
        reports = [DropReport(*key, count, None) for key, count in self._counting.items() if count]
        self._counting.clear()
        self._heap.clear()
        return reports

    def _start(self, key: tuple[str, str], now: float) -> None:
        self._counting[key] = 0
        heapq.heappush(self._heap, (now + self.interval, key))
