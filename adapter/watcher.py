"""The watcher side's asyncio driver: subscribe, poll, notifications on Bayeux.

:class:`WatcherService` is the face the REST layer and the app use.  What a
watch does is decided by :class:`adapter.watch.WatchMachine` (sans-IO; its
docstring is the theory of operation); this module performs the machine's
actions — SUBSCRIBEs through the SIP endpoint, rules reads over XCAP,
messages to Bayeux, store writes — feeds it the SIP events of its
subscriptions and the clock, and arms one event-loop timer at the machine's
earliest deadline.  Each subscription's handle (:mod:`sip.aio.handles`)
brings the events of that subscription, already routed by id by the
endpoint, to its watch.  REST calls that must see an outcome (a SUBSCRIBE's
answer, a read of the rules) wait here, bounded, never in the machine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import islice
from typing import Any, Protocol

from adapter.liveness import ServerLiveness, bounded
from adapter.logs import bind
from adapter.metrics import NOTIFY_BUCKETS, Histogram, RecoveryProgress
from adapter.notification import Schedule, schedule_from_record, schedule_to_record
from adapter.records import (
    SCHEDULE,
    WATCH,
    schedule_key,
    schedule_lease,
    watch_from_record,
    watch_key,
    watch_to_record,
)
from adapter.recovery import RecoveryPace, recover
from adapter.rules import DECISIONS_TTL, RulesRead, decisions_ttl
from adapter.store import MemoryStore, Store, StoreError, retrieved
from adapter.watch import (
    LIST_CHECK,
    RESUBSCRIBE_DELAYS,
    SCHEDULE_SAVE_DELAY,
    Deliver,
    DuplicateCorrelator,
    ForgetSchedule,
    ForgetWatch,
    GroupPresentity,
    NoSubscription,
    NotAuthorized,
    ReadList,
    ReadRules,
    Reference,
    RefreshList,
    SaveProgress,
    SaveSchedule,
    SaveWatch,
    Settled,
    Subscribe,
    UnknownCorrelator,
    Unsubscribe,
    Watch,
    WatchAction,
    WatchMachine,
    WatchState,
)
from adapter.xcap import CONNECTIONS, POOL_WAIT, XcapClient, XcapError, XcapTimeout
from pidf import AttributeType, PidfError, Presence
from pidf.rlsservices import service_members
from sip import NotifyReceived, SipURI, SubscriptionAccepted
from sip.aio import (
    Alarm,
    Busy,
    RequestFailed,
    SipEndpoint,
    SubscriptionEvent,
    SubscriptionHandle,
)

__all__ = [
    "DECISIONS_TTL",
    "DuplicateCorrelator",
    "GroupPresentity",
    "NoSubscription",
    "NotAuthorized",
    "Reference",
    "UnknownCorrelator",
    "Watch",
    "WatcherService",
    "decisions_ttl",
    "watch_from_record",
    "watch_to_record",
]

logger = logging.getLogger(__name__)

#: Schedules written per turn of the event loop when their progress is due,
#: so that the many schedules changed by one burst do not hold NOTIFYs back.
SAVE_CHUNK = 200
#: Longest Start Presence Notification on a group waits, after the list's full
#: state, for members listed with no state yet (a pending member never gets one).
LIST_SETTLE = 2.0
#: Parsed watcher and presentity addresses kept for sharing.
URIS_KEPT = 65536
ALL_ATTRIBUTES = tuple(AttributeType)


class Deliverer(Protocol):
    def deliver(self, app_id: str, channel: str, data: Any) -> int: ...


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
        resubscribe_delays: tuple[float, ...] = RESUBSCRIBE_DELAYS,
        save_chunk: int = SAVE_CHUNK,
        list_settle: float = LIST_SETTLE,
        list_check: float = LIST_CHECK,
    ) -> None:
        self._store: Store = store or MemoryStore()
        self._liveness = liveness
        self._timeout = request_timeout
        self._sip = sip
        self._xcap = xcap
        self._bayeux = bayeux
        self._clock = clock
        self.machine = WatchMachine(
            save_delay=schedule_save_delay, resubscribe_delays=resubscribe_delays,
            list_check=list_check,
        )
        self._timer = Alarm(self._on_timer, clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Rules reads waiting their turn, and how many readers take them: one
        #: task per XCAP connection, not one per read (a burst of activations
        #: asks for thousands — one per presentity at most — and a task
        #: waiting on the XCAP client's connections costs kilobytes).
        self._rules_reads: deque[RulesRead] = deque()
        self._readers = 0
        #: The handles of the subscriptions not over yet, by id: to await
        #: their answer, to end them.
        self._handles: dict[int, SubscriptionHandle] = {}
        #: Parsed addresses, shared by the subscriptions that use them (a
        #: watcher's and a presentity's come back in many); emptied when full.
        self._uris: dict[str, SipURI] = {}
        #: Who awaits a watch's Settled.
        self._settling: dict[Watch, list[asyncio.Future[None]]] = {}
        #: Schedules whose progress is being written, a chunk per loop turn.
        self._writing: dict[tuple[str, str], Schedule] = {}
        self._save_chunk = save_chunk
        self._list_settle = list_settle
        self._pump: asyncio.Handle | None = None
        #: NOTIFY received -> its notifications handed to Bayeux (seconds).
        self.notify_latency = Histogram(NOTIFY_BUCKETS)

    async def close(self) -> None:
        self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None
        for task in list(self._tasks):
            task.cancel()
        # What the schedules did since their last write is written before the
        # store closes: a clean stop loses nothing.
        # (A failed write is logged by the store; the stop goes on.)
        self._queue_progress(self.machine.unsaved())
        writes = [self._write_progress(s) for s in self._writing.values()]
        self._writing = {}
        await asyncio.gather(*(w for w in writes if w is not None), return_exceptions=True)

    def watch_states(self) -> dict[str, int]:
        """How many watches there are in each state (for /metrics)."""
        return self.machine.states()

    def xcap_requests(self) -> dict[tuple[str, str], int]:
        """XCAP requests sent by (method, document), the presentity side's too
        (they share the client): for /metrics."""
        return self._xcap.requests

    @property
    def schedule_count(self) -> int:
        return len(self.machine.schedules)

    @property
    def news_superseded(self) -> int:
        return self.machine.superseded

    # -- what the presentity side asks ---------------------------------------

    def directory(
        self, watcher: str, presentity: str
    ) -> tuple[str, tuple[AttributeType, ...]] | None:
        """Which application of this adapter watches ``presentity`` as ``watcher``
        (directly, or as a member of one of its groups), and what it asked for."""
        watch = self.machine.watching(watcher, presentity)
        if watch is None:
            return None
        return watch.application, tuple(a for a in ALL_ATTRIBUTES if a in watch.attributes)

    def rules_changed(self, presentity: str) -> None:
        """This adapter changed ``presentity``'s rules: re-read the decisions."""
        self._perform(self.machine.rules_changed(presentity, self._clock()))

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
        new = self.machine.get(watcher, presentity) is None
        watch, actions = self.machine.subscribe(
            app_id, watcher, presentity, application, attributes, reference
        )
        try:
            await self._performed(actions)  # durable before the 204
        except StoreError:
            if new:
                # Not kept, so not made: nothing was sent for it.
                self._undo(self.machine.reference_refused(watch))
            raise
        try:
            await self._subscribed(watch)
        except RequestFailed:
            await self._performed(self.machine.reference_refused(watch))
            raise
        self._perform(self.machine.recheck(watch, self._clock()))

    async def unsubscribe(self, watcher: str, presentity: str) -> None:
        """The watcher ends its own subscription (an extension of the spec)."""
        await self._performed(self.machine.unsubscribe(watcher, presentity))

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
        watch = self.machine.get(watcher, presentity)
        if watch is not None and watch.state is WatchState.ACTIVE:
            self._perform(self.machine.refresh_decisions(watch, self._clock()))
            # Not for rules that could not be read: nothing is shown until
            # they are, and they are read again on their own.
            while watch.waiting and not self.machine.held_unread(watch):
                await self._settled(watch)
        return self.presence(watcher, presentity, attributes)

    def presence(
        self, watcher: str, presentity: str, attributes: frozenset[AttributeType]
    ) -> Presence | None:
        return self.machine.presence(watcher, presentity, attributes)

    def answers(self, watcher: str, presentity: str) -> bool:
        """Whether Get User Presence is answered from a watch held here (the
        watcher's own, or an active member watch of one of its groups)."""
        return self.machine.answers(watcher, presentity)

    # -- Start / End Presence Notification ---------------------------------

    async def start_notification(
        self,
        app_id: str,
        watcher: str,
        presentity: str,
        schedule: Schedule,
        *,
        check_immediate: bool,
    ) -> list[str]:
        """Start a schedule; the presentities not subscribed (the spec's ``result``):
        the presentity itself when it could not be subscribed, and of a group
        the members that are not active once its list state is in."""
        bind(correlator=schedule.correlator, presentity=presentity)
        if (app_id, schedule.correlator) in self.machine.schedules:
            raise DuplicateCorrelator(schedule.correlator)
        watch = self.machine.watch_for(app_id, watcher, presentity)
        # Bounds on waiting are the event loop's time, as bounded()'s are.
        began = asyncio.get_running_loop().time()
        try:
            await self._subscribed(watch)
        except RequestFailed as exc:
            logger.info("notification %s: cannot subscribe to %s: %s",
                        schedule.correlator, presentity, exc)
            await self._performed(self.machine.drop_unneeded(watch))
            if isinstance(exc, Busy):
                raise  # not the presentity's failure: the caller retries (503)
            return [presentity]
        if watch.is_list and not await self._list_state(watch, began):
            logger.info("notification %s: no full state of list %s within %g s",
                        schedule.correlator, presentity, self._timeout)
        try:  # durable before the 201
            await self._performed(self.machine.add_schedule(watch, schedule))
        except StoreError:
            # Not kept, so not started: a retry must not find its correlator taken.
            self._undo(self.machine.end_notification(app_id, schedule.correlator))
            raise
        self._perform(self.machine.start_schedule(
            watch, schedule, check_immediate=check_immediate, now=self._clock()
        ))
        while self.machine.start_pending(watch, schedule):
            await self._settled(watch)
        if watch.is_list:
            if watch.rlmi is None or not watch.rlmi.complete:
                return [presentity]  # nothing is known of the members
            return self.machine.unsubscribed_members(watch)
        return []

    async def _list_state(self, watch: Watch, began: float) -> bool:
        """Wait for the group's first full state, then briefly for its members'
        states (an RLS sends them in batches after the full state: Kamailio
        ``waitn_time``), all within ``request_timeout`` of ``began``.
        Whether the full state came."""
        loop = asyncio.get_running_loop()
        deadline = began + self._timeout
        settle_by: float | None = None
        while not self.machine.list_settled(watch):
            now = loop.time()
            if settle_by is None and self.machine.list_complete(watch):
                settle_by = min(deadline, now + self._list_settle)
            remaining = (settle_by if settle_by is not None else deadline) - now
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self._settled(watch)
            except TimeoutError:
                pass
        return self.machine.list_complete(watch)

    async def end_notification(self, app_id: str, correlator: str) -> None:
        bind(correlator=correlator)
        await self._performed(self.machine.end_notification(app_id, correlator))

    # -- recovery -----------------------------------------------------------

    async def resync(self, why: str, pace: RecoveryPace = RecoveryPace()) -> None:
        """The server came back or restarted: subscribe again in new dialogs."""

        async def start(watch: Watch) -> None:
            self._perform(self.machine.restart(watch))
            try:
                await self._subscribed(watch, keep_state=True)
            except RequestFailed as exc:
                self._retry(watch, f"{why} ({exc})")

        await recover("subscriptions", self.machine.to_resync(), start, pace=pace)

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
            self.machine.add(watch)
        now = self._clock()
        for key, record in self._store.load(SCHEDULE).items():
            try:
                schedule = schedule_from_record(record)
            except (KeyError, ValueError, PidfError) as exc:
                logger.error("stored schedule %s unusable, dropped: %s", key, exc)
                await self._store.delete(SCHEDULE, key)
                continue
            self._perform(self.machine.restore_schedule(schedule, now))
        live, actions = self.machine.restored()
        self._perform(actions)

        async def start(watch: Watch) -> None:
            try:
                await self._subscribed(watch)
            except RequestFailed as exc:
                self._retry(watch, f"restart ({exc})")

        await recover("subscriptions", live, start, pace=pace, progress=progress)

    # -- a cluster's takeover -------------------------------------------------

    async def adopt(self, record: Any, schedules: list[Any]) -> None:
        """Take over a watch another node of the cluster kept (its stored record and
        its schedules' records): file it and subscribe in a new dialog."""
        try:
            watch = watch_from_record(record)
            restored = [schedule_from_record(s) for s in schedules]
        except (KeyError, ValueError, PidfError) as exc:
            logger.error("stored watch %s unusable, not taken over: %s", record, exc)
            return
        if self.machine.get(*watch.key) is not None:
            return  # here already (taken by a request meanwhile)
        self.machine.add(watch)
        now = self._clock()
        for schedule in restored:
            self._perform(self.machine.restore_schedule(schedule, now))
        if not watch.needed:
            self._perform(self.machine.drop_unneeded(watch))
            return
        if watch.state is WatchState.BLOCKED:
            return
        try:
            await self._subscribed(watch)
        except RequestFailed as exc:
            self._retry(watch, f"takeover ({exc})")

    def release(self, watcher: str, presentity: str) -> None:
        """Another node owns the watch now (adapter.cluster): forget it here and
        end its dialog; its applications hear of it from the new owner."""
        watch = self.machine.get(watcher, presentity)
        if watch is not None:
            self._perform(self.machine.release(watch))

    def stored_directory(self, record: Any) -> tuple[str, tuple[AttributeType, ...]] | None:
        """:meth:`directory` for a watch's stored record (another node's watch)."""
        try:
            watch = watch_from_record(record)
        except (KeyError, ValueError):
            return None
        return watch.application, tuple(a for a in ALL_ATTRIBUTES if a in watch.attributes)

    # -- SIP -----------------------------------------------------------------

    def _start_subscription(self, watch: Watch, *, retry: bool = False) -> SubscriptionHandle:
        """Send the watch's initial SUBSCRIBE; its handle brings its events here.

        A re-subscription (``retry``) keeps a watch alive rather than answer a
        caller: it waits its turn in the SIP window instead of being refused."""
        # Every watch asks for a list (RFC 4662): a URI that is a group on
        # the server comes back as one; any other is answered as before.
        handle = self._sip.subscribe(
            self._uri(watch.watcher), self._uri(watch.presentity),
            on_event=_Events(self, watch), eventlist=True,
            refusable=not retry,
        )
        self._handles[handle.id] = handle
        return handle

    def _uri(self, text: str) -> SipURI:
        uri = self._uris.get(text)
        if uri is None:
            if len(self._uris) >= URIS_KEPT:
                self._uris.clear()
            uri = self._uris[text] = SipURI.parse(text)
        return uri

    async def _subscribed(self, watch: Watch, *, keep_state: bool = False) -> None:
        """Subscribe the watch unless it is; wait for the SUBSCRIBE's answer."""
        actions = self.machine.ensure_subscribed(watch, keep_state=keep_state)
        self._perform(actions)
        subscription_id = watch.subscription_id
        if actions and subscription_id is not None:
            handle = self._handles[subscription_id]
            await self._outcome(watch, subscription_id, handle.accepted)

    async def _outcome(
        self, watch: Watch, subscription_id: int, outcome: Awaitable[SubscriptionAccepted]
    ) -> None:
        try:
            accepted = await bounded(outcome, "SUBSCRIBE", self._liveness, self._timeout)
        except RequestFailed:
            self._perform(self.machine.subscription_refused(watch, subscription_id))
            raise
        self._perform(
            self.machine.subscription_accepted(watch, subscription_id, accepted.eventlist)
        )

    async def _attempt(self, watch: Watch, handle: SubscriptionHandle) -> None:
        """A re-subscription's outcome (the machine's back-off timer sent it)."""
        try:
            await self._outcome(watch, handle.id, handle.accepted)
        except RequestFailed as exc:
            logger.info("re-subscribing %s to %s failed: %s", watch.watcher, watch.presentity, exc)
            self._perform(self.machine.attempt_failed(watch, self._clock()))
        else:
            logger.info("re-subscribed %s to %s after %s", watch.watcher, watch.presentity,
                        watch.why)

    def _retry(self, watch: Watch, why: str) -> None:
        if watch.state is not WatchState.ENDED:
            self._perform(self.machine.lost(watch, why, RESUBSCRIBE_DELAYS[0], self._clock()))

    def _on_subscription_event(self, watch: Watch, event: SubscriptionEvent) -> None:
        if isinstance(event, NotifyReceived):
            self._perform(self.machine.notify(watch, event, self._clock()))
        elif isinstance(event, SubscriptionAccepted):
            self._perform(self.machine.subscription_accepted(
                watch, event.subscription_id, event.eventlist
            ))
        else:
            self._handles.pop(event.subscription_id, None)
            self._perform(self.machine.terminated(watch, event, self._clock()))

    # -- performing the machine's actions ---------------------------------------

    async def _performed(self, actions: list[WatchAction]) -> None:
        """Perform, and wait until the store has what they wrote."""
        writes = self._perform(actions)
        if writes:
            await asyncio.gather(*writes)

    def _undo(self, actions: list[WatchAction]) -> None:
        """Perform what takes back a call whose write failed; its own writes may
        fail too (the store logs them), and nobody waits for them."""
        for write in self._perform(actions):
            retrieved(write)

    def _perform(self, actions: list[WatchAction]) -> list[asyncio.Future[None]]:
        writes: list[asyncio.Future[None]] = []
        latest: float | None = None
        for action in actions:
            if type(action) is Deliver:
                self._bayeux.deliver(action.app_id, action.channel, action.data)
                if action.received is not None:
                    latest = action.received
            elif isinstance(action, SaveWatch):
                writes.append(self._store.put(WATCH, watch_key(action.watch),
                                              watch_to_record(action.watch)))
            elif isinstance(action, ForgetWatch):
                writes.append(self._store.delete(WATCH, watch_key(action.watch)))
            elif isinstance(action, SaveSchedule):
                writes.append(self._save_schedule(action.schedule))
            elif isinstance(action, ForgetSchedule):
                self._writing.pop((action.schedule.app_id, action.schedule.correlator), None)
                writes.append(self._store.delete(
                    SCHEDULE, schedule_key(action.schedule), lease=schedule_lease(action.schedule)
                ))
            elif isinstance(action, SaveProgress):
                self._queue_progress(action.schedules)
            elif isinstance(action, ReadRules):
                self._queue_read(action.read)
            elif isinstance(action, ReadList):
                self._spawn(self._read_list(action.group))
            elif isinstance(action, RefreshList):
                refreshed = self._handles.get(action.subscription_id)
                if refreshed is not None:
                    refreshed.refresh()
            elif isinstance(action, Subscribe):
                self._subscribe(action)
            elif isinstance(action, Unsubscribe):
                handle = self._handles.get(action.subscription_id)
                if handle is not None:
                    handle.end()
            elif isinstance(action, Settled):
                # A member's read may be what a Start on its group waits for.
                for watch in (action.watch, action.watch.group):
                    for future in self._settling.pop(watch, ()) if watch else ():
                        if not future.done():
                            future.set_result(None)
        if latest is not None:
            self.notify_latency.observe(self._clock() - latest)
        self._arm()
        return writes

    def _subscribe(self, action: Subscribe) -> None:
        watch = action.watch
        if action.retry and self._liveness is not None and not self._liveness.reachable:
            self.machine.server_down(watch)
            return
        # Its id filed before the answer: NOTIFYs may come before the 2xx.
        handle = self._start_subscription(watch, retry=action.retry)
        self.machine.subscription_sent(watch, handle.id)
        if action.retry:
            self._spawn(self._attempt(watch, handle))

    def _queue_read(self, read: RulesRead) -> None:
        self._rules_reads.append(read)
        if self._readers < CONNECTIONS:
            self._readers += 1
            self._spawn(self._reader())

    async def _reader(self) -> None:
        """Take the queued rules reads in order until none is left.

        A read that waited :data:`~adapter.xcap.POOL_WAIT` for its turn (since
        it was asked for, ``started``) fails as one that waited as long for a
        connection: the XCAP server is not keeping up, or not answering, and
        its watches back off and read again.
        """
        reads = self._rules_reads
        try:
            while reads:
                read = reads.popleft()
                now = self._clock()
                if now - read.started >= POOL_WAIT:
                    self._expire_reads(read, now)
                    continue
                try:
                    await self._read_rules(self.machine.read_begun(read, now))
                except Exception:  # one read's bug must not stop the others
                    logger.exception("rules read of %s failed", read.presentity)
        finally:
            self._readers -= 1

    def _expire_reads(self, first: RulesRead, now: float) -> None:
        """``first`` and the reads queued behind it that waited as long: they fail."""
        expired = [first]
        reads = self._rules_reads
        while reads and now - reads[0].started >= POOL_WAIT:
            expired.append(reads.popleft())
        logger.warning("%d pres-rules reads waited %g s for their turn: not read",
                       len(expired), POOL_WAIT)
        error = XcapTimeout("GET", None, "no answer from the XCAP server")
        for read in expired:
            # As one begun now that failed: every need that arose while it
            # waited backs off with it, rather than asking again at once.
            self._perform(self.machine.rules_failed(self.machine.read_begun(read, now),
                                                    error, now))

    async def _read_rules(self, read: RulesRead) -> None:
        try:
            rules = (await self._xcap.get(read.presentity)).rules
        except XcapError as exc:
            self._perform(self.machine.rules_failed(read, exc, self._clock()))
        else:
            self._perform(self.machine.rules_read(read, rules, self._clock()))

    async def _read_list(self, group: Watch) -> None:
        try:
            document = await self._xcap.rls_services(group.watcher)
            members = (
                frozenset() if document is None
                else service_members(document, group.presentity)
            )
        except (XcapError, PidfError) as exc:
            # Read again at the next check; the list goes on meanwhile.
            logger.info("list %s: rls-services of %s unreadable: %s", group.presentity,
                        group.watcher, exc)
            return
        self._perform(self.machine.list_read(group, members, self._clock()))

    async def _settled(self, watch: Watch) -> None:
        future = asyncio.get_running_loop().create_future()
        self._settling.setdefault(watch, []).append(future)
        await future

    # -- write-behind of schedules' progress ----------------------------------------

    def _save_schedule(self, schedule: Schedule) -> asyncio.Future[None]:
        return self._store.put(
            SCHEDULE, schedule_key(schedule), schedule_to_record(schedule),
            lease=schedule_lease(schedule),
        )

    def _queue_progress(self, schedules: Any) -> None:
        for schedule in schedules:
            self._writing[(schedule.app_id, schedule.correlator)] = schedule
        if self._writing and self._pump is None:
            self._write_chunk()

    def _write_chunk(self) -> None:
        """Write the schedules whose progress is due, a chunk per loop turn."""
        self._pump = None
        for key in list(islice(self._writing, self._save_chunk)):
            self._write_progress(self._writing.pop(key))
        if self._writing:
            self._pump = asyncio.get_running_loop().call_soon(self._write_chunk)

    def _write_progress(self, schedule: Schedule) -> asyncio.Future[None] | None:
        if not self.machine.schedule_live(schedule):
            return None  # removed meanwhile: its record is deleted, not written back
        return self._save_schedule(schedule)

    # -- the one timer ---------------------------------------------------------

    def _arm(self) -> None:
        self._timer.set(self.machine.get_timer())

    def _on_timer(self) -> None:
        self._perform(self.machine.handle_timer(self._clock()))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("watcher task failed", exc_info=task.exception())


class _Events:
    """A subscription's events to its watch: a partial of the service's method
    with the watch, in a third of the size (one per held subscription)."""

    __slots__ = ("service", "watch")

    def __init__(self, service: WatcherService, watch: Watch) -> None:
        self.service = service
        self.watch = watch

    def __call__(self, event: SubscriptionEvent) -> None:
        self.service._on_subscription_event(self.watch, event)
