"""Keyed absolute deadlines: a heap, and a calendar of instants.

Every stateful object of the stack (transaction, publication, subscription)
has at most one pending deadline, its ``get_timer()``.  The user agent files
each under a key (its owners' in a :class:`TimerCalendar`, its client
transactions' in a :class:`TimerHeap`), asks for the earliest deadline to arm
a single event-loop timer, and on expiry pops the keys that are due and calls
their ``handle_timer(now)``.

In a :class:`TimerHeap`, re-scheduling or cancelling does not search the heap:
the entry stays where it is and is recognised as stale when it surfaces (lazy
deletion, as the ``heapq`` documentation describes).  A key moved *later* is
not even pushed again: its entry keeps its place and its sequence number, the
key's live entry says the new deadline, and when the old entry surfaces the
live one takes its place in the heap.  A subscription's deadline moves later
two or three times per refresh (the answer, the NOTIFY), and only the first of
those moves costs a push, when its entry comes up.  Each live key maps to its
one valid entry (the tuple in the heap, or for a key moved later the tuple
that will replace it, of the same sequence number: a user agent holds one per
subscription, by the hundred thousand), and a re-armed key's entries share the
key object first filed.  When stale entries reach a quarter of the live ones
the heap is rebuilt, so memory stays proportional to the number of keys
however often they are re-armed.  All operations are O(log n) amortised.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from .errors import LocalProtocolError

__all__ = ["TimerCalendar", "TimerHeap"]

K = TypeVar("K", bound=Hashable)

# Rebuilding below this size is not worth the bother.
_MIN_COMPACT = 64
# Stale entries kept, per live key, before the heap is rebuilt: each costs
# a heap tuple, and rebuilding (O(n)) once per n/4 re-arms is O(1) amortised.
_STALE_SHARE = 0.25


class _Keyed(Generic[K]):
    """What both kinds share: each live key's entry, (deadline, sequence,
    the key object first filed); the sequence breaks ties in scheduling
    order and keeps keys (which need not be orderable) out of comparisons."""

    def __init__(self) -> None:
        self._live: dict[K, tuple[float, int, K]] = {}
        self._sequence = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def deadline(self, key: K) -> float | None:
        entry = self._live.get(key)
        return entry[0] if entry is not None else None


class TimerHeap(_Keyed[K]):
    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, K]] = []  # the live entries, and stale ones

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


class TimerCalendar(_Keyed[K]):
    """Keyed deadlines filed by instant: :class:`TimerHeap`'s interface and
    order (deadline, then scheduling sequence), for deadlines that coincide.

    The user agent's refreshes are moved onto a grid of whole seconds
    (:class:`~sip.publication.RefreshPolicy`), so its hundred thousand
    subscriptions fall due at a few hundred instants.  Here each instant
    holds the keys due then, and only the instants are kept in a heap: filing
    and moving a key is dictionary work, and a refresh costs no walk down a
    heap of every subscription (two per refresh in :class:`TimerHeap`: its
    entry coming up, and the stale one its move left).  Keys due at an
    instant of their own each cost an instant, so deadlines that seldom
    coincide belong in a :class:`TimerHeap`.

    An instant left empty by a move or a cancel stays in the heap until it
    surfaces; the heap is rebuilt from the live instants when such stale
    ones reach a quarter of them, as :class:`TimerHeap` does.
    """

    def __init__(self) -> None:
        super().__init__()
        # deadline -> {key: sequence}: the keys due at that instant
        self._due: dict[float, dict[K, int]] = {}
        self._instants: list[float] = []  # heap; may hold stale instants

    def schedule(self, deadline: float, key: K) -> None:
        """Arm ``key`` for ``deadline``, replacing any deadline it had."""
        if math.isnan(deadline):
            raise LocalProtocolError("a timer deadline cannot be NaN")
        live = self._live
        old = live.get(key)
        if old is not None:
            if deadline == old[0]:
                return
            key = old[2]  # equal, and already kept: one object per key
            self._unfile(old)
            # Moved later, it keeps its place among keys of equal deadline,
            # as in TimerHeap, where its entry keeps its sequence number.
            sequence = old[1] if deadline > old[0] else self._next()
        else:
            sequence = self._next()
        live[key] = (deadline, sequence, key)
        due = self._due.get(deadline)
        if due is None:
            due = self._due[deadline] = {}
            heapq.heappush(self._instants, deadline)
            instants = len(self._instants)
            if instants > _MIN_COMPACT and instants > (1 + _STALE_SHARE) * len(self._due):
                self._compact()
        due[key] = sequence

    def cancel(self, key: K) -> None:
        """Disarm ``key``; unknown keys are ignored."""
        old = self._live.pop(key, None)
        if old is not None:
            self._unfile(old)

    def next_deadline(self) -> float | None:
        instants = self._instants
        due = self._due
        while instants:
            if instants[0] in due:
                return instants[0]
            heapq.heappop(instants)  # left empty
        return None

    def pop_expired(self, now: float) -> list[K]:
        """Disarm and return the keys whose deadline is ``<= now``, earliest first."""
        instants = self._instants
        due = self._due
        live = self._live
        expired: list[K] = []
        while instants and instants[0] <= now:
            keys = due.pop(heapq.heappop(instants), None)
            if keys is None:
                continue  # left empty, or its duplicate already popped
            if len(keys) > 1:
                # Filed in sequence but for keys moved later, which kept theirs.
                expired.extend(sorted(keys, key=keys.__getitem__))
            else:
                expired.extend(keys)
            for key in keys:
                del live[key]
        return expired

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def _unfile(self, entry: tuple[float, int, K]) -> None:
        keys = self._due[entry[0]]
        del keys[entry[2]]
        if not keys:
            del self._due[entry[0]]

    def _compact(self) -> None:
        self._instants = list(self._due)
        heapq.heapify(self._instants)
