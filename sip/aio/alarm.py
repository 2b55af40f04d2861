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
    """One ``loop.call_at``/``call_later``, re-armed only when its deadline moves.

    ``clock``: the clock deadlines are read on, when it is not the event
    loop's (a machine driven by wall-clock time, or a test's manual clock);
    the alarm then fires after ``deadline - clock()`` seconds of the loop.
    """

    __slots__ = ("_callback", "_clock", "_handle", "deadline")

    def __init__(
        self, callback: Callable[[], None], clock: Callable[[], float] | None = None
    ) -> None:
        self._callback = callback
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        #: When it fires (None: not armed).
        self.deadline: float | None = None

    def set(self, deadline: float | None) -> None:
        """Fire ``callback`` at ``deadline`` (None: not at all), instead of as before."""
        if deadline == self.deadline:
            return
        self.cancel()
        self.deadline = deadline
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        if self._clock is None:
            self._handle = loop.call_at(deadline, self._fire)
        else:
            self._handle = loop.call_later(max(deadline - self._clock(), 0.0), self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.deadline = None

    def _fire(self) -> None:
        self._handle = None
        self.deadline = None
        self._callback()
