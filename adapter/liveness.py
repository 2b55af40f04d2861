"""Is the presence server there, and does it still know our dialogs?

Every ``keepalive`` seconds the adapter probes the server.  Two things make it
re-create its state there — publications refreshed (a server that forgot an
entity tag answers 412 and the publication is sent afresh, RFC 3903 §6) and
subscriptions made again in new dialogs:

* the server was unreachable (no answer to OPTIONS) and answers again;
* the server lost its subscriptions — it restarted between two probes.  SIP
  has no boot counter, and Kamailio's OPTIONS replies look the same after a
  restart (its To-tag prefix is a hash of its address: measured,
  tests/data/kamailio/README.md).  So the adapter keeps one *canary*
  subscription of its own and refreshes it at every probe: a 481 to the
  refresh (RFC 6665 §4.1.2.2: the notifier does not know the dialog) means
  every other dialog is gone too.

While the server is known to be down, REST calls answer 504 at once instead
of waiting for a SIP transaction to time out (:attr:`ServerLiveness.reachable`
and :func:`bounded`).

Under a burst (thousands of NOTIFYs at once) the adapter itself can be the
slow side: the probe's 200 waits behind the NOTIFYs in the socket buffer, or
is dropped there and retransmitted too late.  Declaring the server down then
would be wrong twice over — REST calls would get 504 while it works, and the
"came back" that follows would re-create every subscription on top of the
burst.  So a probe that gets no answer counts as "unreachable" only when
nothing else came from the server during it either; and the canary's
subscription ending for want of an answer (our transaction timed out, which
is the same evidence as a silent probe) is not taken for a restart — only an
answer from the server that it no longer knows the dialog is.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sip import BUSY, SipURI, SubscriptionAccepted, SubscriptionTerminated
from sip.aio import (
    RequestFailed,
    RequestTimedOut,
    SipEndpoint,
    SubscriptionEvent,
    SubscriptionHandle,
)

__all__ = ["CANARY_USER", "ServerLiveness", "bounded"]

logger = logging.getLogger(__name__)

Resync = Callable[[str], Awaitable[None]]
T = TypeVar("T")

#: The user part of the canary's address (subscriber and target alike).
CANARY_USER = "presence-adapter-canary"

#: Ways a subscription ends that are ours, not the server's word: the
#: transaction got no answer or could not be sent (RFC 3261 §17.1.2.2 Timer F),
#: or was never sent for want of room in the window.
#: A canary ending so proves nothing about the server's dialogs.
_UNANSWERED = frozenset({"timeout", "transport-error", BUSY})


class ServerLiveness:
    def __init__(self, sip: SipEndpoint, interval: float) -> None:
        self._sip = sip
        self._interval = interval
        self._resyncs: list[Resync] = []
        self._task: asyncio.Task[None] | None = None
        self._canary: SubscriptionHandle | None = None
        self._canary_accepted = False
        self._canary_lost = False
        self._canary_refusal_told = False
        self.reachable = True  # until a probe says otherwise
        self.resyncs = 0
        self._busy_told = False

    def on_resync(self, callback: Resync) -> None:
        self._resyncs.append(callback)

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def check(self) -> None:
        """One probe; re-create the server-side state if it came back or forgot us."""
        started = self._sip.now()
        try:
            # Not wait_for: on Python 3.11 it swallows a cancel that lands just
            # after the probe ended, and close() would then wait on this task forever.
            async with asyncio.timeout(self._interval or 5.0):
                await self._sip.probe()
        except (RequestFailed, TimeoutError) as exc:
            silent = isinstance(exc, RequestTimedOut | TimeoutError)
            if silent and self.reachable and self._sip.heard_at >= started:
                # The server spoke during the probe: it is there, we are slow.
                if not self._busy_told:
                    self._busy_told = True
                    logger.warning(
                        "presence server did not answer a probe in time but its messages "
                        "arrive (the adapter is busy): still treated as reachable"
                    )
                return
            if self.reachable:
                logger.warning("presence server unreachable: %s", exc or "no answer")
            self.reachable = False
            return
        came_back = not self.reachable
        self.reachable = True
        forgot = self._canary_lost
        if came_back or forgot:
            why = "came back" if came_back else "lost its subscriptions (restarted?)"
            logger.warning("presence server %s: re-creating publications and subscriptions", why)
            self.resyncs += 1
            self._new_canary()
            for resync in self._resyncs:
                try:
                    await resync(why)
                except Exception:
                    # One service's failure must neither keep the others
                    # from re-creating their state nor end the probing.
                    logger.exception("re-creating state after the server %s failed", why)
        elif self._canary is None:
            self._new_canary()
        else:
            self._canary.refresh()

    def _new_canary(self) -> None:
        if self._canary is not None:
            self._canary.end()
        uri = SipURI("sip", CANARY_USER, self._sip.server.host)
        self._canary = self._sip.subscribe(uri, uri, on_event=self._on_canary)
        self._canary_accepted = False
        self._canary_lost = False

    def _on_canary(self, event: SubscriptionEvent) -> None:
        if self._canary is None or event.subscription_id != self._canary.id:
            return  # a canary let go already
        if isinstance(event, SubscriptionAccepted):
            self._canary_accepted = True
        elif isinstance(event, SubscriptionTerminated):
            self._canary = None
            if event.reason == "unsubscribed":
                return
            if event.reason in _UNANSWERED and event.status is None:
                # No answer is no news about the server's dialogs: a new
                # canary at the next probe, and the probe judges reachability.
                logger.info("canary subscription ended unanswered (%s)", event.reason)
                return
            if self._canary_accepted:
                logger.info("canary subscription ended: %s", event.reason)
                self._canary_lost = True
            elif not self._canary_refusal_told:
                # Never established, so it proves nothing was lost: counting
                # it would re-create everything at every probe.  It is
                # tried again at the next probe.
                self._canary_refusal_told = True
                logger.warning(
                    "presence server did not accept the canary subscription (%s %s): "
                    "its restarts go unnoticed until it does",
                    event.reason,
                    event.status or "",
                )

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)


async def bounded(
    outcome: Awaitable[T], what: str, liveness: ServerLiveness | None, timeout: float
) -> T:
    """Wait for a SIP outcome on behalf of a REST call: never longer than ``timeout``,
    and not at all while the server is known to be down.

    The SIP side goes on either way (a publication keeps retrying, a
    subscription keeps trying): only the REST caller stops waiting.
    """
    if liveness is not None and not liveness.reachable:
        if isinstance(outcome, asyncio.Future | asyncio.Task):
            outcome.cancel()
        elif asyncio.iscoroutine(outcome):
            outcome.close()
        raise RequestTimedOut(what, None, "presence server unreachable")
    # Awaited in this task, not wrapped in a new one (as wait_for does on
    # Python 3.11): one task fewer on the hot path.  The handles' outcome
    # futures exist from the call that sent the request, so no answer can
    # come before they do.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task(loop)
    wait = None if task is None else _Deadlines.of(loop).add(task, timeout)
    if wait is None:
        try:
            async with asyncio.timeout(timeout):
                return await outcome
        except TimeoutError:
            raise RequestTimedOut(what, None, f"no answer within {timeout:g} s") from None
    assert task is not None
    try:
        return await outcome
    except asyncio.CancelledError:
        # Ours (as asyncio.timeout tells): the cancellation the deadline
        # asked for, and no other one pending.
        if wait.expired and task.uncancel() <= wait.cancelling:
            raise RequestTimedOut(what, None, f"no answer within {timeout:g} s") from None
        raise
    finally:
        wait.task = None


class _Wait:
    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task: asyncio.Task[object] | None = task  # None once it is over
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False


class _Deadlines:
    """The bounded waits of one event loop in the order of their deadlines, and
    one timer for all of them.

    The waits of REST calls share one timeout (``[sip] request_timeout``), so a
    new one ends after every one before it: filing it is an append, with no
    timer armed and cancelled per call (asyncio.timeout's cost).  A wait that
    would end before one already filed is not taken (``add`` returns None).
    """

    __slots__ = ("__weakref__", "_handle", "_loop", "_waits")

    _of_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waits: deque[_Wait] = deque()
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        deadlines = cls._of_loop.get(loop)
        if deadlines is None:
            deadlines = cls._of_loop[loop] = cls(loop)
        return deadlines

    def add(self, task: asyncio.Task[object], timeout: float) -> _Wait | None:
        deadline = self._loop.time() + timeout
        waits = self._waits
        while waits and waits[0].task is None:
            waits.popleft()  # over already (most end long before their deadline)
        if waits and waits[-1].deadline > deadline:
            return None
        wait = _Wait(task, deadline)
        waits.append(wait)
        if self._handle is None:
            self._handle = self._loop.call_at(deadline, self._expire)
        return wait

    def _expire(self) -> None:
        self._handle = None
        now = self._loop.time()
        waits = self._waits
        while waits and (waits[0].deadline <= now or waits[0].task is None):
            wait = waits.popleft()
            if wait.task is not None:
                wait.expired = True
                wait.task.cancel()
        if waits:
            self._handle = self._loop.call_at(waits[0].deadline, self._expire)
