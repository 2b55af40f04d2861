"""The watcher side: subscribe, poll, and presence notifications on Bayeux.

A :class:`Watch` is one watcher address watching one presentity through one
SIP presence subscription (RFC 6665).  Subscribe Presence creates it and keeps
it until the application ends it; Start Presence Notification reuses it, or
creates one that lives as long as its notification schedules.

What the watcher may see is what the presentity granted it.  Kamailio 5.6
sends unfiltered bodies on some NOTIFYs (after an XCAP change, on in-dialog
re-SUBSCRIBE — measured, docs/kamailio.md), so the adapter filters every state
itself, with decisions read from the presentity's pres-rules over XCAP:
exact when the rules are readable and name the watcher, otherwise every
requested attribute is taken as granted; once they were readable, a failed
read never widens the decisions.  Decisions are re-read when the subscription
becomes active, when this adapter changes the presentity's rules (before Get
User Presence answers), and when they are older than :data:`DECISIONS_TTL`
(spread, for each presentity, between half of it and all of it) and a NOTIFY
changes the state — that NOTIFY does not wait for the read: it is taken
under the decisions held while the read runs beside it.
A presentity's rules are one document for all its watchers: it is read once
for all the watches that need it at the same time, and a read younger than
the presentity's age limit serves the watches whose decisions merely aged
(an activation or a change made here needs a read begun after it).

Subscription endings (RFC 6665 §4.2.2 reasons): ``rejected`` is a block →
``subscriptionEnded`` "Blocked".  Everything else that ends a subscription we
did not end ourselves (probation, deactivated, timeout, giveup, 481, 408, the
server gone) is answered by subscribing again, a bounded number of times with
backoff; only when that fails does the application get ``subscriptionEnded``
"Timeout".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapter.liveness import ServerLiveness, bounded
from adapter.logs import bind
from adapter.metrics import NOTIFY_BUCKETS, Histogram, RecoveryProgress
from adapter.notification import (
    Delivery,
    Schedule,
    schedule_from_record,
    schedule_to_record,
)
from adapter.recovery import RecoveryPace, recover
from adapter.store import MemoryStore, Store
from adapter.xcap import XcapClient, XcapError
from pidf import AttributeType, PidfError, Presence, decode, filter_presence
from pidf.presrules import PresRules, SubHandling
from sip import (
    NotifyReceived,
    SipURI,
    SubscriptionAccepted,
    SubscriptionTerminated,
    UserAgentEvent,
)
from sip.aio import RequestFailed, SipEndpoint
from sip.timers import TimerHeap

__all__ = [
    "DuplicateCorrelator",
    "NotAuthorized",
    "NoSubscription",
    "Reference",
    "UnknownCorrelator",
    "Watch",
    "WatcherService",
    "decisions_ttl",
]

logger = logging.getLogger(__name__)

#: Longest decisions are used before the rules are read again.  Each
#: presentity's own age limit lies between half of it and all of it, spread by
#: the presentity's address: watches started together (an adapter's restart,
#: a burst of subscriptions) otherwise age together, and their reads would
#: come in one burst every TTL that holds NOTIFYs back.
DECISIONS_TTL = 30.0
#: Presentities whose rules are kept before the old entries are swept.
_RULES_SWEEP_MIN = 1024
#: Longest a schedule's progress after a notification — remaining count,
#: last-sent instant and state, a coalesced state — waits to be written: a
#: schedule is written once per period whatever its notifications (README
#: "What survives what").  One write per notification would cost the event
#: loop a store hand-off each and keep the store's writer thread committing
#: beside it all the time.
SCHEDULE_SAVE_DELAY = 1.0
#: Schedules written per turn of the event loop when their progress is due,
#: so that the many schedules changed by one burst do not hold NOTIFYs back.
SAVE_CHUNK = 200
WATCH = "watch"  # store kinds
SCHEDULE = "schedule"
#: Re-subscribe attempts after an unexpected end, and the waits between them.
RESUBSCRIBE_DELAYS = (0.5, 2.0, 5.0)
ALL_ATTRIBUTES = tuple(AttributeType)


class Deliverer(Protocol):
    def deliver(self, app_id: str, channel: str, data: Any) -> int: ...


@dataclass(frozen=True)
class Reference:
    """Where an application wants its notifications (the spec's ``reference``)."""

    correlator: str
    endpoint: str
    interface_name: str = ""


class NoSubscription(LookupError):
    """The watcher has no subscription to that presentity."""


class NotAuthorized(PermissionError):
    """The subscription exists but the presentity has not authorised it (or blocked it)."""


class DuplicateCorrelator(ValueError):
    pass


class UnknownCorrelator(LookupError):
    pass


@dataclass
class Watch:
    watcher: str
    presentity: str
    app_id: str
    application: str = ""
    attributes: frozenset[AttributeType] = frozenset()  # asked for; empty = all
    reference: Reference | None = None  # from Subscribe Presence
    subscription_id: int | None = None
    state: str = "pending"  # pending | active | blocked | ended
    presence: Presence | None = None
    decisions: dict[AttributeType, bool] | None = None
    decisions_read_at: float = float("-inf")
    decisions_sent: tuple[tuple[AttributeType, bool], ...] | None = None
    #: This adapter changed the presentity's rules and has not read them back:
    #: the decisions held may still grant what was just withdrawn.
    rules_unconfirmed: bool = False
    #: Reading them back failed: nothing is shown until a read succeeds.
    withheld: bool = False
    schedules: dict[str, Schedule] = field(default_factory=dict)
    rule_blocks: bool = False  # the presentity's rule blocks this watcher
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: NOTIFYs handed to a task and not yet taken: a later one waits its turn.
    notifies_queued: int = 0
    #: Counts this adapter's changes of the presentity's rules, and the
    #: subscription becoming active: a read that one of them overtook is not
    #: taken.
    rules_epoch: int = 0
    #: Aged decisions are being read again beside the NOTIFYs (_revalidate).
    revalidating: bool = False
    #: hash() of the PIDF body ``presence`` was decoded from: the NOTIFY that
    #: answers a refresh repeats it, and is not decoded again.
    body_digest: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.watcher, self.presentity)

    @property
    def granted(self) -> frozenset[AttributeType]:
        if self.withheld:
            return frozenset()
        decisions = self.decisions or {}
        return frozenset(kind for kind, granted in decisions.items() if granted)

    @property
    def needed(self) -> bool:
        return self.reference is not None or bool(self.schedules)

    @property
    def decisions_ttl(self) -> float:
        """This presentity's age limit of decisions (see :data:`DECISIONS_TTL`)."""
        return decisions_ttl(self.presentity)

    def decisions_fresh(self, now: float) -> bool:
        """Whether the decisions held may be used without reading the rules again."""
        return self.decisions is not None and now - self.decisions_read_at < self.decisions_ttl

    @property
    def decisions_aged(self) -> bool:
        """Whether the decisions held were read and merely aged since: no
        activation and no change made here is waiting to be read."""
        return self.decisions is not None and self.decisions_read_at != float("-inf")


def decisions_ttl(presentity: str) -> float:
    """Between half :data:`DECISIONS_TTL` and all of it, the same for all the
    watches of ``presentity`` (they share its reads) within one process."""
    return DECISIONS_TTL * (1.0 - 0.5 * (hash(presentity) % 1024) / 1024)


class WatcherService:
    def __init__(
        self,
        sip: SipEndpoint,
        xcap: XcapClient,
        bayeux: Deliverer,
        *,
        store: Store | None = None,
        liveness: ServerLiveness | None = None,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        schedule_save_delay: float = SCHEDULE_SAVE_DELAY,
    ) -> None:
        self._store: Store = store or MemoryStore()
        self._liveness = liveness
        self._timeout = request_timeout
        self._sip = sip
        self._xcap = xcap
        self._bayeux = bayeux
        self._clock = clock
        self._watches: dict[tuple[str, str], Watch] = {}
        #: The same watches by presentity, then watcher (_add and _drop keep both).
        self._by_presentity: dict[str, dict[str, Watch]] = {}
        self._by_subscription: dict[int, Watch] = {}
        #: Subscriptions whose initial SUBSCRIBE has no answer yet.
        self._starting: set[int] = set()
        self._schedules: dict[tuple[str, str], tuple[Watch, Schedule]] = {}
        self._timers: TimerHeap[tuple[str, str]] = TimerHeap()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Schedules whose progress is not written yet; those being written, a
        #: chunk per loop turn; the timer (or loop turn) that writes them.
        self._unsaved: dict[tuple[str, str], Schedule] = {}
        self._writing: deque[Schedule] = deque()
        self._save_delay = schedule_save_delay
        self._save_timer: asyncio.Handle | None = None
        #: Pres-rules per presentity: (when the read began, the rules) — None
        #: as rules marks a change made here, which older reads must not hide —
        #: and the read under way, with when it began.
        self._rules: dict[str, tuple[float, PresRules | None]] = {}
        self._rules_reads: dict[str, tuple[float, asyncio.Task[PresRules]]] = {}
        self._rules_sweep_at = _RULES_SWEEP_MIN
        #: NOTIFY received -> its notifications handed to Bayeux (seconds).
        self.notify_latency = Histogram(NOTIFY_BUCKETS)
        sip.add_listener(self._on_sip_event)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        # What the schedules did since their last write is written before the
        # store closes: a clean stop loses nothing.
        # (A failed write is logged by the store; the stop goes on.)
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        self._writing.extend(self._unsaved.values())
        self._unsaved = {}
        writes = [self._write_progress(self._writing.popleft()) for _ in range(len(self._writing))]
        await asyncio.gather(*(w for w in writes if w is not None), return_exceptions=True)

    def watch_states(self) -> dict[str, int]:
        """How many watches there are in each state (for /metrics)."""
        counts: dict[str, int] = {}
        for watch in self._watches.values():
            counts[watch.state] = counts.get(watch.state, 0) + 1
        return counts

    @property
    def schedule_count(self) -> int:
        return len(self._schedules)

    # -- what the presentity side asks ---------------------------------------

    def directory(
        self, watcher: str, presentity: str
    ) -> tuple[str, tuple[AttributeType, ...]] | None:
        watch = self._watches.get((watcher, presentity))
        if watch is None:
            return None
        return watch.application, tuple(a for a in ALL_ATTRIBUTES if a in watch.attributes)

    def rules_changed(self, presentity: str) -> None:
        """This adapter changed ``presentity``'s rules: re-read the decisions."""
        self._rules[presentity] = (time.monotonic(), None)
        self._rules_reads.pop(presentity, None)  # begun before the change
        # The presentity's watches only: a walk over all of them grows with
        # every watch the adapter holds.
        for watch in list(self._by_presentity.get(presentity, {}).values()):
            watch.rules_epoch += 1
            watch.rules_unconfirmed = True
            watch.decisions_read_at = float("-inf")
            if watch.state == "active":
                self._spawn(self._recheck(watch))

    # -- Subscribe Presence ------------------------------------------------

    async def subscribe(
        self,
        app_id: str,
        watcher: str,
        presentity: str,
        *,
        application: str,
        attributes: frozenset[AttributeType],
        reference: Reference,
    ) -> None:
        bind(presentity=presentity)
        watch = self._watches.get((watcher, presentity))
        if watch is None:
            watch = self._add(Watch(watcher, presentity, app_id))
        watch.app_id = app_id
        watch.application = application
        watch.attributes = attributes
        watch.reference = reference
        watch.decisions_sent = None  # a new reference hears the decisions again
        await self._save(watch)  # durable before the 204
        try:
            await self._ensure_subscribed(watch)
        except RequestFailed:
            if not watch.schedules:
                self._drop(watch)
            else:
                watch.reference = None
                await self._save(watch)
            raise
        if watch.state == "active":
            self._spawn(self._recheck(watch))

    async def unsubscribe(self, watcher: str, presentity: str) -> None:
        """The watcher ends its own subscription (an extension of the spec)."""
        watch = self._watches.get((watcher, presentity))
        if watch is None:
            raise NoSubscription(presentity)
        for schedule in list(watch.schedules.values()):
            schedule.end_quietly()
            self._remove_schedule(watch, schedule)
            await self._store.delete(SCHEDULE, _key(schedule.app_id, schedule.correlator))
        watch.reference = None
        await self._end_subscription(watch)

    # -- Get User Presence -------------------------------------------------

    async def user_presence(
        self, watcher: str, presentity: str, attributes: frozenset[AttributeType]
    ) -> Presence | None:
        """Get User Presence: :meth:`presence` under decisions that are not stale.

        A rules change made through this adapter marks the decisions stale
        before its 204; reading them again here (instead of leaving it to the
        re-check running in the background) is what keeps an attribute just
        withdrawn out of an answer given right after that 204.
        """
        watch = self._watches.get((watcher, presentity))
        if watch is not None and watch.state == "active":
            async with watch.lock:
                if watch.state == "active":
                    await self._read_decisions(watch)
        return self.presence(watcher, presentity, attributes)

    def presence(
        self, watcher: str, presentity: str, attributes: frozenset[AttributeType]
    ) -> Presence | None:
        watch = self._watches.get((watcher, presentity))
        if watch is None or watch.state == "ended":
            raise NoSubscription(presentity)
        if watch.state != "active":
            raise NotAuthorized(presentity)
        if watch.presence is None:
            return None
        granted = watch.granted
        if watch.attributes:
            granted &= watch.attributes
        if attributes:
            granted &= attributes
        return filter_presence(watch.presence, {kind: True for kind in granted})

    # -- Start / End Presence Notification ---------------------------------

    async def start_notification(
        self,
        app_id: str,
        watcher: str,
        presentity: str,
        schedule: Schedule,
        *,
        check_immediate: bool,
    ) -> bool:
        """Start a schedule; False when the presentity could not be subscribed."""
        bind(correlator=schedule.correlator, presentity=presentity)
        if (app_id, schedule.correlator) in self._schedules:
            raise DuplicateCorrelator(schedule.correlator)
        watch = self._watches.get((watcher, presentity))
        if watch is None:
            watch = self._add(Watch(watcher, presentity, app_id))
        try:
            await self._ensure_subscribed(watch)
        except RequestFailed as exc:
            logger.info("notification %s: cannot subscribe to %s: %s",
                        schedule.correlator, presentity, exc)
            if not watch.needed:
                self._drop(watch)
            return False
        if (app_id, schedule.correlator) in self._schedules:
            raise DuplicateCorrelator(schedule.correlator)
        watch.schedules[schedule.correlator] = schedule
        self._schedules[(app_id, schedule.correlator)] = (watch, schedule)
        await self._save(watch)
        await self._save_schedule(schedule)  # durable before the 201
        async with watch.lock:
            if watch.state == "active":
                await self._read_decisions(watch)
            current = watch.presence if watch.state == "active" else None
            self._deliver(watch, schedule, schedule.start(
                current, watch.granted, self._clock(), check_immediate=check_immediate
            ))
        self._file(schedule)
        return True

    async def end_notification(self, app_id: str, correlator: str) -> None:
        bind(correlator=correlator)
        entry = self._schedules.get((app_id, correlator))
        if entry is None:
            raise UnknownCorrelator(correlator)
        watch, schedule = entry
        schedule.end_quietly()
        self._remove_schedule(watch, schedule)
        await self._store.delete(SCHEDULE, _key(app_id, correlator))
        if not watch.needed:
            await self._end_subscription(watch)

    # -- SIP subscription lifecycle -----------------------------------------

    async def _ensure_subscribed(self, watch: Watch, *, keep_state: bool = False) -> None:
        if watch.subscription_id is not None and watch.state in ("pending", "active"):
            return
        if not keep_state:
            watch.state = "pending"
            watch.presence = None
        if watch.subscription_id is not None:
            self._by_subscription.pop(watch.subscription_id, None)
        # Filed before the answer: NOTIFYs may come before the 2xx.
        subscription_id = self._sip.ua.subscribe(
            SipURI.parse(watch.watcher), SipURI.parse(watch.presentity), self._sip.now()
        )
        watch.subscription_id = subscription_id
        self._by_subscription[subscription_id] = watch
        self._starting.add(subscription_id)
        try:
            outcome = self._sip.subscription_outcome(subscription_id)
            await bounded(outcome, "SUBSCRIBE", self._liveness, self._timeout)
        except RequestFailed:
            self._by_subscription.pop(subscription_id, None)
            self._sip.end_subscription(subscription_id)  # it may still be answered
            watch.subscription_id = None
            raise
        finally:
            self._starting.discard(subscription_id)

    async def _end_subscription(self, watch: Watch) -> None:
        self._drop(watch)
        if watch.subscription_id is not None:
            # Not awaited to the end: the final NOTIFY (or its absence, when
            # the server is down) is no concern of the REST caller.
            self._sip.end_subscription(watch.subscription_id)

    def _add(self, watch: Watch) -> Watch:
        self._watches[watch.key] = watch
        self._by_presentity.setdefault(watch.presentity, {})[watch.watcher] = watch
        return watch

    def _drop(self, watch: Watch) -> None:
        watch.state = "ended"
        if self._watches.get(watch.key) is watch:
            del self._watches[watch.key]
            others = self._by_presentity[watch.presentity]
            del others[watch.watcher]
            if not others:
                del self._by_presentity[watch.presentity]
            self._store.delete(WATCH, _key(*watch.key))
        if watch.subscription_id is not None:
            self._by_subscription.pop(watch.subscription_id, None)

    def _on_sip_event(self, event: UserAgentEvent) -> None:
        if isinstance(event, NotifyReceived):
            received = time.perf_counter()
            watch = self._by_subscription.get(event.subscription_id)
            if watch is None:
                return
            if (
                watch.state == "active"
                and not watch.notifies_queued
                and not watch.lock.locked()
                and watch.decisions_aged
            ):
                # The common case needs nothing awaited (no earlier NOTIFY of
                # this watch is waiting, the decisions need no read first):
                # taken here, without a task and a loop turn per NOTIFY.
                # Decisions merely older than their TTL are read again
                # beside it, not before it: a NOTIFY waiting for an XCAP read
                # would make the latency's tail every TTL.  And only for a
                # NOTIFY that changes the state: the one that answers a
                # refresh repeats it, and a read for each would cost more
                # than the rest of the refresh.
                held = watch.presence
                fresh = self._apply_notify(watch, event)
                if fresh is None:
                    return
                if (
                    fresh
                    and watch.presence != held
                    and not watch.revalidating
                    and not watch.decisions_fresh(time.monotonic())
                ):
                    watch.revalidating = True
                    self._spawn(self._revalidate(watch))
                self._offer_notify(watch, fresh=fresh, received=received)
                return
            watch.notifies_queued += 1
            self._spawn(self._on_notify(watch, event, received))
        elif isinstance(event, SubscriptionAccepted):
            self._starting.discard(event.subscription_id)
        elif isinstance(event, SubscriptionTerminated):
            if event.subscription_id in self._starting:
                # The initial SUBSCRIBE failed.  Whoever awaits its outcome gets
                # RequestFailed and decides; re-subscribing from here as well
                # would act behind its back (and, inside a re-subscribe loop,
                # start one more loop per failed attempt).
                self._starting.discard(event.subscription_id)
                return
            watch = self._by_subscription.pop(event.subscription_id, None)
            if watch is not None and watch.subscription_id == event.subscription_id:
                self._spawn(self._on_terminated(watch, event))

    async def _on_notify(self, watch: Watch, event: NotifyReceived, received: float) -> None:
        try:
            async with watch.lock:
                fresh = self._apply_notify(watch, event)
                if fresh is None:
                    return
                await self._read_decisions(watch)
                if watch.state != "active":
                    return  # ended while the rules were read
                self._offer_notify(watch, fresh=fresh, received=received)
        finally:
            watch.notifies_queued -= 1

    def _apply_notify(self, watch: Watch, event: NotifyReceived) -> bool | None:
        """A NOTIFY's subscription state and body taken into the watch.

        None when there is nothing more to do; else whether a new presence
        state was read.
        """
        if watch.state in ("ended", "blocked"):
            return None
        state = event.state.state.lower()
        if state == "pending":
            watch.state = "pending"
            return None
        if state != "active":
            return None  # terminated: SubscriptionTerminated follows
        became_active = watch.state != "active"
        watch.state = "active"
        fresh = False
        if event.body:
            digest = hash(event.body)
            try:
                if digest != watch.body_digest or watch.presence is None:
                    # Decoding is costly and a refresh's NOTIFY repeats the
                    # body: the same bytes are the same document.
                    watch.presence = decode(event.body)
                    watch.body_digest = digest
                fresh = True
            except PidfError as exc:
                # Answered 200 all the same (the user agent did): one bad
                # body must not cost the subscription, nor hold back the
                # decisions an activation tells the application.
                logger.warning("unreadable PIDF from %s: %s", watch.presentity, exc)
        else:
            # An active NOTIFY without a body: the server holds no document
            # for the presentity (its publications ended or expired, or it
            # never published; RFC 6665 §4.2.2 lets a NOTIFY carry no state).
            # Nothing is published, so nothing stale may be shown.
            watch.presence = Presence(watch.presentity, (), False)
            watch.body_digest = None
            fresh = True
        if became_active:
            watch.decisions_read_at = float("-inf")
            watch.rules_epoch += 1  # a read begun before is not one after it
        return fresh

    def _offer_notify(self, watch: Watch, *, fresh: bool, received: float) -> None:
        """Tell the decisions if they changed, and offer a new state to the schedules."""
        self._notify_decisions(watch)
        if fresh and watch.presence is not None:
            now = self._clock()
            sent = False
            for schedule in list(watch.schedules.values()):
                deliveries = schedule.offer(watch.presence, watch.granted, now)
                self._deliver(watch, schedule, deliveries)
                self._file(schedule)
                sent = sent or bool(deliveries)
            if sent:
                self.notify_latency.observe(time.perf_counter() - received)

    async def _revalidate(self, watch: Watch) -> None:
        """Aged decisions read again while the NOTIFYs go on with them."""
        try:
            await self._read_decisions(watch)
        finally:
            watch.revalidating = False
        if watch.state == "active":
            self._notify_decisions(watch)

    async def _recheck(self, watch: Watch) -> None:
        async with watch.lock:
            if watch.state != "active":
                return
            await self._read_decisions(watch)
            if watch.state == "active":  # not ended while the rules were read
                self._notify_decisions(watch)

    async def _on_terminated(self, watch: Watch, event: SubscriptionTerminated) -> None:
        if event.reason == "unsubscribed" or watch.state == "ended":
            return
        if event.reason == "rejected":
            watch.state = "blocked"
            self._save(watch)
            self._ended(watch, "Blocked")
            return
        await self._resubscribe(watch, event.reason, event.retry_after or 0)

    async def _resubscribe(self, watch: Watch, why: str, first_delay: float) -> None:
        """Subscribe again, a bounded number of times; subscriptionEnded Timeout if all fail."""
        for delay in (first_delay, *RESUBSCRIBE_DELAYS):
            if delay:
                await asyncio.sleep(delay)
            if watch.state == "ended" or not watch.needed:
                return
            if self._liveness is not None and not self._liveness.reachable:
                # The server is down: nothing to count against the watch.  It
                # stays pending and is subscribed again when the server is back
                # (ServerLiveness -> resync).
                watch.state = "pending"
                watch.subscription_id = None
                return
            watch.subscription_id = None
            try:
                await self._ensure_subscribed(watch)
            except RequestFailed as exc:
                logger.info("re-subscribing %s to %s failed: %s",
                            watch.watcher, watch.presentity, exc)
                continue
            logger.info("re-subscribed %s to %s after %s", watch.watcher, watch.presentity, why)
            return
        self._ended(watch, "Timeout")

    def _ended(self, watch: Watch, reason: str) -> None:
        """Tell the application, end the schedules (no statusEnd: RFC says error)."""
        data = {"subscriptionEnded": {"presentity": watch.presentity, "reason": reason}}
        # Each schedule under its own application: two accounts acting as the
        # same address share the watch, not their channels.
        targets = {(s.app_id, s.endpoint) for s in watch.schedules.values()}
        if watch.reference is not None:
            targets.add((watch.app_id, watch.reference.endpoint))
        for app_id, endpoint in sorted(targets):
            self._bayeux.deliver(app_id, endpoint, data)
        for schedule in list(watch.schedules.values()):
            schedule.end_quietly()
            self._remove_schedule(watch, schedule)
            self._store.delete(SCHEDULE, _key(schedule.app_id, schedule.correlator))
        if reason != "Blocked":
            self._drop(watch)

    # -- decisions -----------------------------------------------------------

    async def _read_decisions(self, watch: Watch) -> None:
        now = time.monotonic()
        if watch.decisions_fresh(now):
            return
        asked = watch.attributes or frozenset(ALL_ATTRIBUTES)
        # Decisions that merely aged may come from any read of the last TTL;
        # after an activation or a change made here (read_at reset), only a
        # read begun from now on reflects it.
        not_before = now - watch.decisions_ttl if watch.decisions_aged else now
        try:
            for _ in range(3):
                epoch = watch.rules_epoch
                read_at, rules = await self._rules_of(watch.presentity, not_before)
                if watch.rules_epoch == epoch:
                    break
                # This adapter changed the rules while they were read.
                not_before = time.monotonic()
            else:
                raise XcapError("GET", None, "the rules kept changing while read")
        except XcapError as exc:
            if watch.decisions is not None:
                # The rules were readable before: a failed read must not widen
                # what the watcher sees to "all asked" (a privacy leak right
                # after the presentity narrowed its grants).  Keep what is
                # known, or show nothing while a change made here is unread;
                # read_at stays old, so the next need reads again.
                watch.withheld = watch.rules_unconfirmed
                logger.warning("rules of %s unreadable (%s): %s", watch.presentity, exc,
                               "attributes withheld" if watch.withheld else "decisions kept")
                return
            logger.info("rules of %s unreadable (%s): all asked attributes granted",
                        watch.presentity, exc)
            read_at, rule = now, None
        else:
            rule = rules.rule_for(watch.watcher)
        if read_at < watch.decisions_read_at:
            return  # a later read was taken meanwhile (a NOTIFY's beside a revalidation)
        watch.rules_unconfirmed = watch.withheld = False
        before = watch.decisions
        watch.rule_blocks = rule is not None and rule.sub_handling is SubHandling.BLOCK
        if rule is None:
            watch.decisions = {kind: kind in asked for kind in ALL_ATTRIBUTES}
        elif rule.sub_handling is SubHandling.ALLOW:
            watch.decisions = rule.decisions()
        else:
            watch.decisions = {kind: False for kind in ALL_ATTRIBUTES}
        watch.decisions_read_at = read_at
        if watch.decisions != before:
            self._save(watch)

    async def _rules_of(self, presentity: str, not_before: float) -> tuple[float, PresRules]:
        """The presentity's rules from a read begun at ``not_before`` or later,
        and when that read began; one read at a time per presentity."""
        cached = self._rules.get(presentity)
        if cached is not None and cached[1] is not None and cached[0] >= not_before:
            return cached[0], cached[1]
        reading = self._rules_reads.get(presentity)
        if reading is None or reading[0] < not_before:
            started = time.monotonic()
            task = asyncio.get_running_loop().create_task(self._fetch_rules(presentity, started))
            self._tasks.add(task)
            task.add_done_callback(self._fetch_done)
            reading = (started, task)
            self._rules_reads[presentity] = reading
        # Shielded: one waiter cancelled (its REST call timed out) does not
        # cancel the read the others wait for.
        return reading[0], await asyncio.shield(reading[1])

    async def _fetch_rules(self, presentity: str, started: float) -> PresRules:
        try:
            rules = (await self._xcap.get(presentity)).rules
        finally:
            reading = self._rules_reads.get(presentity)
            if reading is not None and reading[1] is asyncio.current_task():
                del self._rules_reads[presentity]
        cached = self._rules.get(presentity)
        if cached is None or cached[0] <= started:  # not older than what is known
            self._rules[presentity] = (started, rules)
            if len(self._rules) >= self._rules_sweep_at:
                self._sweep_rules()
        return rules

    def _fetch_done(self, task: asyncio.Task[PresRules]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its waiters got it; no "never retrieved"

    def _sweep_rules(self) -> None:
        """Forget the rules no watch may use any more (older than the TTL)."""
        oldest = time.monotonic() - DECISIONS_TTL
        self._rules = {p: entry for p, entry in self._rules.items() if entry[0] >= oldest}
        self._rules_sweep_at = max(_RULES_SWEEP_MIN, 2 * len(self._rules))

    def _notify_decisions(self, watch: Watch) -> None:
        if watch.reference is None or watch.decisions is None or watch.rule_blocks:
            # A block is told by subscriptionEnded "Blocked" once the server
            # ends the subscription, not by a notifySubscription of refusals.
            return
        asked = [a for a in ALL_ATTRIBUTES if not watch.attributes or a in watch.attributes]
        decisions = tuple((kind, watch.decisions.get(kind, False)) for kind in asked)
        if decisions == watch.decisions_sent:
            return
        watch.decisions_sent = decisions
        # Kept with the watch: after a restart the re-made subscription's first
        # NOTIFY must not tell the application the same decisions again.
        self._save(watch)
        self._bayeux.deliver(
            watch.app_id,
            watch.reference.endpoint,
            {
                "notifySubscription": {
                    "presentity": watch.presentity,
                    "decisions": [
                        {"presenceAttribute": kind.value, "decision": granted}
                        for kind, granted in decisions
                    ],
                }
            },
        )

    # -- persistence and recovery ----------------------------------------------

    def _save(self, watch: Watch) -> asyncio.Future[None]:
        return self._store.put(WATCH, _key(*watch.key), watch_to_record(watch))

    def _save_schedule(self, schedule: Schedule) -> asyncio.Future[None]:
        key = _key(schedule.app_id, schedule.correlator)
        return self._store.put(SCHEDULE, key, schedule_to_record(schedule))

    async def resync(self, why: str, pace: RecoveryPace = RecoveryPace()) -> None:
        """The server came back or restarted: subscribe again in new dialogs."""
        watches = [
            w for w in self._watches.values() if w.needed and w.state in ("pending", "active")
        ]

        async def start(watch: Watch) -> None:
            old = watch.subscription_id
            if old is not None:
                self._by_subscription.pop(old, None)  # its end is no news
                self._sip.end_subscription(old)
                watch.subscription_id = None
            try:
                await self._ensure_subscribed(watch, keep_state=True)
            except RequestFailed as exc:
                self._spawn(self._resubscribe(watch, f"{why} ({exc})", RESUBSCRIBE_DELAYS[0]))

        await recover("subscriptions", watches, start, pace=pace)

    async def restore(
        self, pace: RecoveryPace = RecoveryPace(), progress: RecoveryProgress | None = None
    ) -> None:
        """Bring back watches and schedules from the store (at start).

        Schedules keep their remaining count and original deadline; one whose
        deadline passed while the adapter was down ends now, with statusEnd.
        Subscriptions are made afresh (new dialogs), paced.
        """
        for key, record in self._store.load(WATCH).items():
            try:
                watch = watch_from_record(record)
            except (KeyError, ValueError) as exc:
                logger.error("stored watch %s unusable, dropped: %s", key, exc)
                await self._store.delete(WATCH, key)
                continue
            self._add(watch)
        now = self._clock()
        for key, record in self._store.load(SCHEDULE).items():
            try:
                schedule = schedule_from_record(record)
            except (KeyError, ValueError, PidfError) as exc:
                logger.error("stored schedule %s unusable, dropped: %s", key, exc)
                await self._store.delete(SCHEDULE, key)
                continue
            owner = self._watches.get((schedule.watcher, schedule.presentity))
            if owner is None:
                owner = self._add(Watch(schedule.watcher, schedule.presentity, schedule.app_id))
            owner.schedules[schedule.correlator] = schedule
            self._schedules[(schedule.app_id, schedule.correlator)] = (owner, schedule)
            self._deliver(owner, schedule, schedule.handle_timer(now))
            self._file(schedule)
        live = [w for w in self._watches.values() if w.needed and w.state != "blocked"]
        for watch in [w for w in self._watches.values() if not w.needed]:
            self._drop(watch)

        async def start(watch: Watch) -> None:
            try:
                await self._ensure_subscribed(watch)
            except RequestFailed as exc:
                self._spawn(self._resubscribe(watch, f"restart ({exc})", RESUBSCRIBE_DELAYS[0]))

        await recover("subscriptions", live, start, pace=pace, progress=progress)

    # -- schedules and their single timer -------------------------------------

    def _deliver(self, watch: Watch, schedule: Schedule, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            self._bayeux.deliver(schedule.app_id, schedule.endpoint, delivery.data)
        if schedule.ended:
            self._remove_schedule(watch, schedule)
            self._store.delete(SCHEDULE, _key(schedule.app_id, schedule.correlator))
            if not watch.needed:
                self._spawn(self._end_subscription(watch))
        elif deliveries or schedule.pending is not None:
            # Remaining count, last-sent instant, coalesced state: a restart
            # resumes where this left off (written within the save delay).
            self._save_later(schedule)

    def _save_later(self, schedule: Schedule) -> None:
        self._unsaved[(schedule.app_id, schedule.correlator)] = schedule
        if self._save_timer is None:
            loop = asyncio.get_running_loop()
            self._save_timer = loop.call_later(self._save_delay, self._save_progress)

    def _save_progress(self) -> None:
        """Write the schedules changed since their last write, a chunk per loop turn."""
        self._save_timer = None
        if not self._writing:
            self._writing.extend(self._unsaved.values())
            self._unsaved = {}
        for _ in range(min(SAVE_CHUNK, len(self._writing))):
            self._write_progress(self._writing.popleft())
        loop = asyncio.get_running_loop()
        if self._writing:
            self._save_timer = loop.call_soon(self._save_progress)
        elif self._unsaved:
            self._save_timer = loop.call_later(self._save_delay, self._save_progress)

    def _write_progress(self, schedule: Schedule) -> asyncio.Future[None] | None:
        entry = self._schedules.get((schedule.app_id, schedule.correlator))
        if entry is None or entry[1] is not schedule:
            return None  # removed meanwhile: its record is deleted, not written back
        return self._save_schedule(schedule)

    def _remove_schedule(self, watch: Watch, schedule: Schedule) -> None:
        watch.schedules.pop(schedule.correlator, None)
        self._schedules.pop((schedule.app_id, schedule.correlator), None)
        # Its record is deleted: a write still due must not bring it back.
        self._unsaved.pop((schedule.app_id, schedule.correlator), None)
        self._timers.cancel((schedule.app_id, schedule.correlator))
        self._arm()

    def _file(self, schedule: Schedule) -> None:
        key = (schedule.app_id, schedule.correlator)
        deadline = schedule.get_timer()
        if deadline is None or key not in self._schedules:
            self._timers.cancel(key)
        else:
            self._timers.schedule(deadline, key)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._timers.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(deadline - self._clock(), 0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        for key in self._timers.pop_expired(now):
            entry = self._schedules.get(key)
            if entry is None:
                continue
            watch, schedule = entry
            self._deliver(watch, schedule, schedule.handle_timer(now))
            self._file(schedule)
        self._arm()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("watcher task failed", exc_info=task.exception())


def _key(*parts: str) -> str:
    return json.dumps(parts)


def watch_to_record(watch: Watch) -> dict[str, Any]:
    reference = None
    if watch.reference is not None:
        reference = {
            "correlator": watch.reference.correlator,
            "endpoint": watch.reference.endpoint,
            "interfaceName": watch.reference.interface_name,
        }
    decisions = None
    if watch.decisions is not None:
        decisions = {kind.value: granted for kind, granted in watch.decisions.items()}
    return {
        "watcher": watch.watcher,
        "presentity": watch.presentity,
        "app_id": watch.app_id,
        "application": watch.application,
        "attributes": sorted(kind.value for kind in watch.attributes),
        "reference": reference,
        "blocked": watch.state == "blocked",
        "decisions": decisions,
        "decisions_sent": (
            None if watch.decisions_sent is None
            else [[kind.value, granted] for kind, granted in watch.decisions_sent]
        ),
    }


def watch_from_record(record: dict[str, Any]) -> Watch:
    reference = None
    if record.get("reference"):
        ref = record["reference"]
        reference = Reference(ref["correlator"], ref["endpoint"], ref.get("interfaceName", ""))
    decisions = None
    if record.get("decisions") is not None:
        decisions = {AttributeType(k): bool(v) for k, v in record["decisions"].items()}
    sent = None
    if record.get("decisions_sent") is not None:
        sent = tuple((AttributeType(k), bool(v)) for k, v in record["decisions_sent"])
    return Watch(
        watcher=record["watcher"],
        presentity=record["presentity"],
        app_id=record["app_id"],
        application=record.get("application", ""),
        attributes=frozenset(AttributeType(k) for k in record.get("attributes", [])),
        reference=reference,
        state="blocked" if record.get("blocked") else "pending",
        decisions=decisions,
        decisions_sent=sent,
    )
