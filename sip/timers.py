"""One heap of absolute deadlines for a whole user agent.

Every stateful object of the stack (transaction, publication, subscription)
has at most one pending deadline, its ``get_timer()``.  The user agent files
each under a key in one :class:`TimerHeap`, asks it for the earliest deadline
to arm a single event-loop timer, and on expiry pops the keys that are due
and calls their ``handle_timer(now)``.

Re-scheduling or cancelling does not search the heap: the entry stays where it
is and is recognised as stale when it surfaces (lazy deletion, as the
``heapq`` documentation describes).  A key moved *later* is not even pushed
again: its entry keeps its place and its sequence number, the key's live
entry says the new deadline, and when the old entry surfaces the live one
takes its place in the heap.  A subscription's deadline moves later two or
three times per refresh (the answer, the NOTIFY), and only the first of
those moves costs a push, when its entry comes up.  Each live key maps to its
one valid entry (the tuple in the heap, or for a key moved later the tuple
that will replace it, of the same sequence number: a user agent holds one per
subscription, by the hundred thousand), and a re-armed key's entries share
the key object first filed.  When stale entries reach a quarter of the live ones the heap is
rebuilt, so memory stays proportional to the number of keys however often
they are re-armed.  All operations are O(log n) amortised.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from .errors import LocalProtocolError

__all__ = ["TimerHeap"]

K = TypeVar("K", bound=Hashable)

# Rebuilding below this size is not worth the bother.
_MIN_COMPACT = 64
# Stale entries kept, per live key, before the heap is rebuilt: each costs
# a heap tuple, and rebuilding (O(n)) once per n/4 re-arms is O(1) amortised.
_STALE_SHARE = 0.25


class TimerHeap(Generic[K]):
    def __init__(self) -> None:
        # (deadline, sequence, key); the sequence breaks ties in scheduling
        # order and keeps keys (which need not be orderable) out of comparisons.
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, tuple[float, int, K]] = {}
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def deadline(self, key: K) -> float | None:
        entry = self._live.get(key)
        return entry[0] if entry is not None else None

    def schedule(self, deadline: float, key: K) -> None:
        """Arm ``key`` for ``deadline``, replacing any deadline it had."""
        if math.isnan(deadline):
            raise LocalProtocolError("a timer deadline cannot be NaN")
        live = self._live
        old = live.get(key)
        if old is not None:
            key = old[2]  # equal, and already kept: one object per key
            if deadline >= old[0]:
                # Its entry in the heap, of the same sequence number, is due
                # no later than this: it stands for the key until it surfaces.
                if deadline != old[0]:
                    live[key] = (deadline, old[1], key)
                return
        self._sequence += 1
        entry = live[key] = (deadline, self._sequence, key)
        heapq.heappush(self._heap, entry)
        if len(self._heap) > _MIN_COMPACT and len(self._heap) > (1 + _STALE_SHARE) * len(live):
            self._compact()

    def cancel(self, key: K) -> None:
        """Disarm ``key``; unknown keys are ignored."""
        self._live.pop(key, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        live = self._live
        while heap:
            top = heap[0]
            current = live.get(top[2])
            if current is top:
                return top[0]
            if current is not None and current[1] == top[1]:
                heapq.heapreplace(heap, current)  # moved later: filed now
            else:
                heapq.heappop(heap)  # cancelled or filed again earlier
        return None

    def pop_expired(self, now: float) -> list[K]:
        """Disarm and return the keys whose deadline is ``<= now``, earliest first."""
        heap = self._heap
        live = self._live
        expired: list[K] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            current = live.get(entry[2])
            if current is entry:
                del live[entry[2]]
                expired.append(entry[2])
            elif current is not None and current[1] == entry[1]:
                heapq.heappush(heap, current)  # moved later: filed now
        return expired

    def _compact(self) -> None:
        self._heap = list(self._live.values())
        heapq.heapify(self._heap)
