"""One heap of absolute deadlines for a whole user agent.

Every stateful object of the stack (transaction, publication, subscription)
has at most one pending deadline, its ``get_timer()``.  The user agent files
each under a key in one :class:`TimerHeap`, asks it for the earliest deadline
to arm a single event-loop timer, and on expiry pops the keys that are due
and calls their ``handle_timer(now)``.  The heap itself is the one the other
sans-IO cores use (:mod:`timerheap`); here a NaN deadline is a local error of
the SIP layer.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TypeVar

import timerheap

from .errors import LocalProtocolError

__all__ = ["TimerHeap"]

K = TypeVar("K", bound=Hashable)


class TimerHeap(timerheap.TimerHeap[K]):
    nan_error = LocalProtocolError
