"""The one timer of a driver of a sans-IO machine.

A machine (the user agent here, the watch and publisher machines and the
Bayeux server in adapter/) says when it next wants ``handle_timer`` through
``get_timer()``; its asyncio driver keeps one :class:`Alarm` and sets it to
that deadline after every input.  Setting the deadline it already has costs
nothing, so a driver may set it after every input without churning the loop's
timer heap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Alarm"]


class Alarm:
    """One ``loop.call_at``/``call_later``, re-armed only when its deadline moves
    earlier.

    A deadline moved later keeps the loop's timer where it is: when that
    fires, the alarm arms it again for the deadline it has by then, and the
    callback runs no earlier than that.  A user agent's deadline moves
    earlier and back with every request it sends and every answer (a
    transaction's Timer E, RFC 3261 §17.1.2.2, then the next refresh), and
    a loop's timer cancelled and made again each time costs more than one
    wake-up in vain.

    ``clock``: the clock deadlines are read on, when it is not the event
    loop's (a machine driven by wall-clock time, or a test's manual clock);
    the alarm then fires after ``deadline - clock()`` seconds of the loop.
    """

    __slots__ = ("_armed", "_callback", "_clock", "_handle", "deadline")

    def __init__(
        self, callback: Callable[[], None], clock: Callable[[], float] | None = None
    ) -> None:
        self._callback = callback
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        #: The deadline the loop's timer was set for (at most ``deadline``).
        self._armed: float | None = None
        #: When it fires (None: not armed).
        self.deadline: float | None = None

    def set(self, deadline: float | None) -> None:
        """Fire ``callback`` at ``deadline`` (None: not at all), instead of as before."""
        if deadline == self.deadline:
            return
        if deadline is None:
            self.cancel()
            return
        armed = self._armed
        if self._handle is not None and armed is not None and armed <= deadline:
            self.deadline = deadline  # the timer set for earlier will see to it
            return
        self.cancel()
        self.deadline = deadline
        self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self._armed = deadline
        if self._clock is None:
            self._handle = loop.call_at(deadline, self._fire)
        else:
            self._handle = loop.call_later(max(deadline - self._clock(), 0.0), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed = None
        self.deadline = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self.deadline
        if deadline is not None and self._armed is not None and deadline > self._armed:
            self._arm(deadline)  # moved later since it was set
            return
        self._armed = None
        self.deadline = None
        self._callback()
