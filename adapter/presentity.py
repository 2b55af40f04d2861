"""The presentity side: publish, see who asks, authorise, block, list watchers.

One :class:`PresentityService` serves every presentity address of every
application.  It is the asyncio driver of the :class:`~adapter.publisher.Publisher`
machine, which decides what to publish, save and withdraw: the service feeds
it the REST calls, the publications' events and its timer, all with the one
wall clock, and performs the actions it returns — the store, and the SIP
publications through their :class:`~sip.aio.PublicationHandle` (RFC 3903: one
per address; later publishes modify it with SIP-If-Match).  A REST call's
answer is the outcome future of the handle the call's action made.

Per presentity it also keeps a presence.winfo subscription (RFC 3857), opened
on first need and kept, whose NOTIFYs say which watchers have a subscription
and in what state.

Who is *authorised* is decided by the presentity's pres-rules document, which
the adapter reads and writes over XCAP.  Kamailio 5.6 does not send a new
watcherinfo NOTIFY when only the rules change (measured, docs/kamailio.md), so the
answers combine both sources: the winfo says who has a live subscription, the
rules say what the presentity decided:

* open subscriptions = watchers pending/waiting in winfo for whom no rule has
  decided yet (no rule, or ``confirm``);
* my watchers = watchers with a live subscription whose rule allows them, or
  — when no rule names them (a wildcard rule written by another tool) — whom
  the server reports active.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from adapter.liveness import ServerLiveness, bounded
from adapter.logs import bind
from adapter.metrics import RecoveryProgress
from adapter.presence_json import attributes_from_json, attributes_to_json
from adapter.publisher import (
    Forget,
    Modify,
    Publish,
    PublishAction,
    Publisher,
    Save,
    SaveTag,
)
from adapter.recovery import RecoveryPace, recover
from adapter.store import MemoryStore, Store, StoreError, StoreUnreachable, retrieved
from adapter.xcap import XcapClient
from pidf import (
    AttributeType,
    Outcome,
    PidfError,
    PresenceAttribute,
    Rule,
    SubHandling,
    WatcherInfo,
    WatcherInfoState,
    WatcherStatus,
    validate_publication,
)
from pidf.watcherinfo import CONTENT_TYPE as WATCHERINFO
from sip import (
    NotifyReceived,
    PublicationConfirmed,
    PublicationFailed,
    SipError,
    SipURI,
    SubscriptionTerminated,
)
from sip.aio import (
    Alarm,
    PublicationHandle,
    RequestFailed,
    SipEndpoint,
    SubscriptionEvent,
    SubscriptionHandle,
)
from sip.publication import PublicationEvent

__all__ = ["OpenSubscription", "PresentityService", "WatcherDirectory"]

logger = logging.getLogger(__name__)

#: How long a first Get Open Subscriptions waits for the winfo subscription's
#: first NOTIFY (Kamailio sends it right after the 200).
WINFO_READY_TIMEOUT = 3.0

#: Store kind: presentity -> {"attributes": REST JSON, "etag", "etag_expires" (epoch)}.
PUBLICATION = "publication"

_LIVE = (WatcherStatus.PENDING, WatcherStatus.WAITING, WatcherStatus.ACTIVE)
_UNDECIDED = (None, SubHandling.CONFIRM)


@dataclass(frozen=True)
class OpenSubscription:
    """A watcher waiting for the presentity's decision."""

    watcher: str
    application: str
    attributes: tuple[AttributeType, ...]  # empty = all


#: What the adapter knows about a watcher that subscribed through it:
#: (watcher, presentity) -> (application name, attributes asked for).
WatcherDirectory = Callable[[str, str], tuple[str, tuple[AttributeType, ...]] | None]
#: The same asked of the store, for a watch another node of a cluster holds.
StoredDirectory = Callable[[str, str], Awaitable[tuple[str, tuple[AttributeType, ...]] | None]]


@dataclass(slots=True)
class _Presentity:
    """What the driver holds per presentity: the machine holds the rest."""

    aor: SipURI
    address: str
    # One action sequence at a time: a store write finishes before the
    # PUBLISH it guards goes out, and a re-publication comes wholly before
    # or wholly after a Publish or a withdrawal.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    publication: PublicationHandle | None = None
    # The store write of the latest confirmed entity tag, while it is under
    # way or failed (a written one is let go: ten thousand publications
    # would each keep a settled future).
    etag_saved: asyncio.Future[None] | None = None
    # The presence.winfo subscription and what its NOTIFYs told; made on the
    # first question about the presentity's watchers (most presentities are
    # never asked, and an Event with its queue of waiters is large).
    winfo: SubscriptionHandle | None = None
    winfo_state: WatcherInfoState | None = None
    winfo_ready: asyncio.Event | None = None


class _PublicationEvents:
    """A publication's events to the service with its presentity: a partial of
    the service's method, in a fifth of the size (one per publication)."""

    __slots__ = ("entry", "service")

    def __init__(self, service: PresentityService, entry: _Presentity) -> None:
        self.service = service
        self.entry = entry

    def __call__(self, event: PublicationEvent) -> None:
        self.service._on_publication(self.entry, event)


#: A stored publication, read: its presentity, attributes, entity tag and expiry.
_Restored = tuple[_Presentity, tuple[PresenceAttribute, ...], Any, Any]


class PresentityService:
    def __init__(
        self,
        sip: SipEndpoint,
        xcap: XcapClient,
        *,
        store: Store | None = None,
        liveness: ServerLiveness | None = None,
        request_timeout: float = 10.0,
        directory: WatcherDirectory | None = None,
        rules_changed: Callable[[str], None] | None = None,
        stored_directory: StoredDirectory | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sip = sip
        self._xcap = xcap
        self._store: Store = store or MemoryStore()
        self._liveness = liveness
        self._timeout = request_timeout
        self._directory = directory or (lambda watcher, presentity: None)
        self._rules_changed = rules_changed or (lambda presentity: None)
        self._stored_directory = stored_directory
        self._clock = clock
        self._publisher = Publisher()
        self._presentities: dict[str, _Presentity] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer = Alarm(self._on_timer, lambda: self._clock().timestamp())

    async def close(self) -> None:
        """Stop the re-publications still waiting (the publications stay)."""
        self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _presentity(self, address: str) -> _Presentity:
        entry = self._presentities.get(address)
        if entry is None:
            entry = self._presentities[address] = _Presentity(SipURI.parse(address), address)
        return entry

    # -- Publish -----------------------------------------------------------

    async def publish(self, presentity: str, attributes: tuple[PresenceAttribute, ...]) -> None:
        """Publish ``attributes``; those not named keep their published value.

        Raises ValidationError for a bad set, RequestFailed when the presence
        server refuses or does not answer.  The state is kept either way: the
        publication retries in the background until the server takes it.
        Raises StoreError when the store cannot write the new state: then
        nothing was sent and nothing changed.  (If it is the confirmed entity
        tag that cannot be written, the PUBLISH did go out: a retried Publish
        of the same attributes is harmless.)
        """
        bind(presentity=presentity)
        validate_publication(attributes)
        await self._request(
            presentity, lambda: self._publisher.publish(presentity, attributes, self._clock())
        )

    async def withdraw(
        self, presentity: str, kinds: frozenset[AttributeType] = frozenset()
    ) -> None:
        """Withdraw the published attributes of ``kinds`` (empty: all of them).

        What remains is published as a modification of the publication;
        when nothing remains the publication ends (PUBLISH with Expires 0,
        RFC 3903 §4.5), and the presence server tells the watchers the
        presentity has no presence.  Durable like :meth:`publish`: the store
        says "nothing published" before the un-PUBLISH is sent (a restart
        never brings back what was withdrawn; it ends the server's
        publication if the un-PUBLISH did not), and the record goes once
        the publication is over.  Withdrawing what is not published is no
        error.
        """
        await self._request(
            presentity, lambda: self._publisher.withdraw(presentity, kinds, self._clock())
        )

    async def _request(self, presentity: str, request: Callable[[], list[PublishAction]]) -> None:
        """Perform a caller's request under the presentity's lock and wait for its
        answer; when its Save fails (StoreError) nothing was sent, and the machine
        is put back as it was: the call fails whole."""
        entry = self._presentity(presentity)
        async with entry.lock:
            mark = self._publisher.mark(entry.address)
            try:
                outcome = await self._perform(entry, request())
            except StoreError as exc:
                self._publisher.undo(mark)
                if isinstance(exc, StoreUnreachable):
                    # The failed write is written once the store is back:
                    # this one, after it, puts the record back as it was.
                    record = self._publisher.record(entry.address)
                    if isinstance(record, Save):
                        retrieved(self._save(entry, record))
                    else:
                        retrieved(self._store.delete(PUBLICATION, record.address))
                raise
            await self._answer(entry, outcome)

    async def _answer(self, entry: _Presentity, outcome: Awaitable[object] | None) -> None:
        """Wait (within the REST timeout) for the outcome a REST call's actions made."""
        if outcome is None:
            return
        await bounded(outcome, "PUBLISH", self._liveness, self._timeout)
        # The confirmation's new entity tag is written as it comes
        # (_on_publication); the 204 waits for it too.  A process killed
        # right after the answer would otherwise come back with the previous
        # tag (or none), and publish afresh beside the server's publication
        # (RFC 3903 §4.4: only its entity tag modifies it).
        saved = entry.etag_saved
        if saved is None:
            return
        if saved.done():  # usually: the write was queued before this call woke
            saved.result()  # its StoreError, if it failed
        else:
            # Shielded: a caller that gives up must not cancel the write.
            await asyncio.shield(saved)

    async def resync(self, why: str, pace: RecoveryPace = RecoveryPace()) -> None:
        """The server came back or restarted: refresh every publication now."""
        entries = [e for e in self._presentities.values() if e.publication is not None]
        for entry in self._presentities.values():
            self._forget_winfo(entry)

        async def start(entry: _Presentity) -> None:
            async with entry.lock:
                outcome = await self._perform(
                    entry, self._publisher.resync(entry.address, self._clock())
                )
            await self._logged(outcome, f"refreshing {entry.aor} after the server {why}")

        await recover("publications", entries, start, pace=pace)

    async def restore(
        self, pace: RecoveryPace = RecoveryPace(), progress: RecoveryProgress | None = None
    ) -> None:
        """Publish again what the store kept (at start, paced)."""
        records = []
        for presentity, record in self._store.load(PUBLICATION).items():
            item = await self._restorable(presentity, record)
            if item is not None:
                records.append(item)
        await recover("publications", records, self._restore_one, pace=pace, progress=progress)

    async def adopt(self, presentity: str, record: Any) -> None:
        """Take over a publication another node of the cluster kept (its stored
        record): modify the server's publication with the stored entity tag; a
        server that no longer knows it answers 412, and the state goes out in
        a fresh PUBLISH (RFC 3903 §6)."""
        item = await self._restorable(presentity, record)
        if item is not None:
            await self._restore_one(item)

    def release(self, presentity: str) -> None:
        """Another node owns the publication now (adapter.cluster): stop
        refreshing it here, sending nothing — an un-PUBLISH would remove the
        state the new owner keeps alive under the same entity tag chain."""
        entry = self._presentities.get(presentity)
        if entry is None:
            return
        if entry.publication is not None:
            entry.publication.abandon()
            entry.publication = None
        entry.etag_saved = None
        self._publisher.release(presentity)
        self._arm()

    async def _restorable(self, presentity: str, record: Any) -> _Restored | None:
        try:
            entry = self._presentity(presentity)
            attributes = attributes_from_json(record["attributes"])
        except (PidfError, SipError, KeyError, TypeError) as exc:
            logger.error("stored publication of %s unusable, dropped: %s", presentity, exc)
            await self._store.delete(PUBLICATION, presentity)
            return None
        return entry, attributes, record.get("etag"), record.get("etag_expires")

    async def _restore_one(self, item: _Restored) -> None:
        entry, attributes, etag, etag_expires = item
        async with entry.lock:
            outcome = await self._perform(entry, self._publisher.restore(
                entry.address, attributes, etag, etag_expires, self._clock()
            ))
        await self._logged(outcome, f"re-publishing {entry.aor} (keeps retrying)")

    async def _logged(self, outcome: Awaitable[object] | None, what: str) -> None:
        if outcome is None:
            return
        try:
            await outcome
        except RequestFailed as exc:
            logger.info("%s: %s", what, exc)

    # -- the machine's actions -----------------------------------------------

    async def _perform(
        self, entry: _Presentity, actions: list[PublishAction]
    ) -> asyncio.Future[Any] | None:
        """Carry out ``actions`` in order; the outcome of the last SIP one, if any."""
        outcome: asyncio.Future[Any] | None = None
        for action in actions:
            if isinstance(action, Save):
                await self._save(entry, action)
            elif isinstance(action, SaveTag):
                await self._save_tag(action)
            elif isinstance(action, Forget):
                await self._store.delete(PUBLICATION, action.address)
            elif isinstance(action, Publish):
                outcome = self._start_publication(entry, action)
            elif isinstance(action, Modify):
                assert entry.publication is not None
                outcome = entry.publication.modify(action.body, retry_until=self._retry_until())
            else:
                assert entry.publication is not None
                outcome = entry.publication.unpublish()
        return outcome

    def _retry_until(self) -> float:
        # A failure the publication retries by itself before the REST call's
        # wait is over (a 500 "database is locked" from a busy server, say)
        # is not yet its answer: the retry's outcome is.
        return self._sip.now() + self._timeout

    def _start_publication(self, entry: _Presentity, action: Publish) -> asyncio.Future[Any]:
        """A new SIP publication, resuming the server's one when its tag is alive."""
        resume_until = None
        if action.etag_left is not None:
            resume_until = self._sip.now() + action.etag_left
        handle = entry.publication = self._sip.publish(
            entry.aor,
            action.body,
            etag=action.etag if resume_until is not None else None,
            etag_expires_at=resume_until,
            retry_until=self._retry_until(),
            on_event=_PublicationEvents(self, entry),
        )
        return handle.outcome

    def _save(self, entry: _Presentity, action: Save) -> asyncio.Future[None]:
        record = {
            "attributes": attributes_to_json(action.attributes),
            "etag": action.etag,
            "etag_expires": action.etag_expires,
        }
        return self._store.put(PUBLICATION, entry.address, record)

    def _save_tag(self, action: SaveTag) -> asyncio.Future[None]:
        fields = {"etag": action.etag, "etag_expires": action.etag_expires}
        return self._store.update(PUBLICATION, action.address, fields)

    def _on_publication(self, entry: _Presentity, event: PublicationEvent) -> None:
        """An event of one of ``entry``'s publications (the current one counts)."""
        handle = entry.publication
        if handle is None or handle.id != event.publication_id:
            return
        address = entry.address
        if isinstance(event, PublicationConfirmed):
            for action in self._publisher.confirmed(
                address, event.etag, event.expires, self._clock()
            ):
                assert isinstance(action, SaveTag)
                saved = entry.etag_saved = self._save_tag(action)
                saved.add_done_callback(partial(_written, entry))
        elif isinstance(event, PublicationFailed):
            self._publisher.failed(address)
        else:
            # The end of a withdrawal (un-PUBLISH answered, or given up).
            entry.publication = None
            for action in self._publisher.removed(address):
                assert isinstance(action, Forget)
                self._store.delete(PUBLICATION, address)
            self._arm()

    # -- re-publication after a rules change ---------------------------------

    async def _republish(self, address: str) -> None:
        entry = self._presentity(address)
        # Under the lock, so that a Publish or a withdrawal of the same
        # presentity comes wholly before or wholly after: what goes out is
        # the latest state, and an ended publication is not revived.
        async with entry.lock:
            outcome = await self._perform(
                entry, self._publisher.republish(address, self._clock())
            )
            if outcome is not None:
                try:
                    await bounded(outcome, "PUBLISH", self._liveness, self._timeout)
                except RequestFailed as exc:
                    # The publication retries by itself, with its body.
                    logger.info("re-publishing %s after a rules change: %s", entry.aor, exc)

    def _arm(self) -> None:
        """Re-arm the one timer at the machine's next deadline (rules changes are rare)."""
        self._timer.set(self._publisher.get_timer())

    def _on_timer(self) -> None:
        for due in self._publisher.handle_timer(self._clock()):
            self._spawn(self._republish(due.address))
        self._arm()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- watchers ----------------------------------------------------------

    async def open_subscriptions(self, presentity: str) -> list[OpenSubscription]:
        out = []
        for uri, status, rule in await self._watchers_and_rules(presentity):
            if status is WatcherStatus.ACTIVE:
                continue
            if (rule.sub_handling if rule is not None else None) not in _UNDECIDED:
                continue
            found = self._directory(uri, presentity)
            if found is None and self._stored_directory is not None:
                found = await self._stored_directory(uri, presentity)
            application, attributes = found or ("", ())
            out.append(OpenSubscription(uri, application, attributes))
        return out

    async def watchers(self, presentity: str) -> list[str]:
        """The watchers currently authorised and subscribed."""
        out = []
        for uri, status, rule in await self._watchers_and_rules(presentity):
            if status is WatcherStatus.WAITING:
                # RFC 3857 §3.2: its subscription ended before it was decided
                # on; it may be asked about again, but it watches nothing.
                continue
            if rule is None:
                if status is WatcherStatus.ACTIVE:
                    out.append(uri)
            elif rule.sub_handling is SubHandling.ALLOW:
                out.append(uri)
        return out

    async def authorize(self, presentity: str, watcher: str,
                        decisions: Mapping[AttributeType, bool]) -> None:
        """Decide, attribute by attribute, what ``watcher`` may see (RFC 5025 §3.2).

        The attributes not named keep their earlier decision (one
        read-modify-write of the pres-rules, guarded by the entity tag); nothing
        left granted politely blocks the watcher.  The watcher need not have
        subscribed yet: the rule applies from its first NOTIFY.
        """
        await self._xcap.update(presentity, lambda rules: rules.decide(watcher, decisions))
        self._rules_done(presentity)

    async def block(self, presentity: str, watcher: str) -> None:
        """Block ``watcher``: the server terminates its subscription (rejected),
        or refuses it when it comes."""
        await self._xcap.update(
            presentity, lambda rules: rules.set_handling(watcher, SubHandling.BLOCK)
        )
        self._rules_done(presentity)

    def _rules_done(self, presentity: str) -> None:
        self._rules_changed(presentity)
        self.rules_changed_elsewhere(presentity)

    def rules_changed_elsewhere(self, presentity: str) -> None:
        """The presentity's rules changed (here, or through another node of the
        cluster): its publication, if this node carries it, goes out again."""
        self._publisher.rules_changed(presentity, self._clock())
        self._arm()

    async def _watchers_and_rules(
        self, presentity: str
    ) -> list[tuple[str, WatcherStatus, Rule | None]]:
        """Each watcher the server lists for ``presentity``, its status, and the
        pres-rules' rule for it (None: none names it)."""
        watchers = await self._live_watchers(presentity)
        rules = (await self._xcap.get(presentity)).rules
        return [(uri, status, rules.rule_for(uri)) for uri, status in watchers.items()]

    async def _live_watchers(self, presentity: str) -> dict[str, WatcherStatus]:
        """Watcher URI -> the best status of its live presence subscriptions."""
        entry = self._presentity(presentity)
        winfo = await self._ensure_winfo(entry)
        found: dict[str, WatcherStatus] = {}
        for resource, package in winfo.resources():
            if package != "presence" or _aor(resource) != entry.aor.aor:
                continue
            for watcher in winfo.watchers(resource, package):
                if watcher.status not in _LIVE:
                    continue
                if found.get(watcher.uri) is not WatcherStatus.ACTIVE:
                    found[watcher.uri] = watcher.status
        return found

    async def _ensure_winfo(self, entry: _Presentity) -> WatcherInfoState:
        async with entry.lock:
            if entry.winfo is None:
                entry.winfo_state = WatcherInfoState()
                entry.winfo_ready = asyncio.Event()
                winfo = entry.winfo = self._sip.subscribe(
                    entry.aor, entry.aor, event="presence.winfo", accept=(WATCHERINFO,),
                    on_event=partial(self._on_winfo, entry),
                )
                try:
                    await bounded(winfo.accepted, "SUBSCRIBE", self._liveness, self._timeout)
                except RequestFailed:
                    if entry.winfo is winfo:
                        entry.winfo = None
                    winfo.end()  # it may still be answered
                    raise
        state, ready = entry.winfo_state, entry.winfo_ready
        assert state is not None and ready is not None
        try:
            await asyncio.wait_for(ready.wait(), WINFO_READY_TIMEOUT)
        except TimeoutError:
            logger.warning("no watcherinfo for %s within %.0f s", entry.aor, WINFO_READY_TIMEOUT)
        return state

    def _on_winfo(self, entry: _Presentity, event: SubscriptionEvent) -> None:
        if entry.winfo is None or entry.winfo.id != event.subscription_id:
            return  # one let go already
        if isinstance(event, NotifyReceived):
            if not event.body:
                return
            try:
                document = WatcherInfo.parse(event.body)
            except PidfError as exc:
                logger.warning("unreadable watcherinfo for %s: %s", entry.aor, exc)
                return
            state, ready = entry.winfo_state, entry.winfo_ready
            assert state is not None and ready is not None  # made with the subscription
            outcome = state.apply(document)
            if state.synchronised:
                ready.set()
            if outcome is Outcome.GAP:
                logger.info("watcherinfo gap for %s; subscribing afresh", entry.aor)
                self._forget_winfo(entry)
        elif isinstance(event, SubscriptionTerminated):
            logger.info("winfo subscription of %s ended (%s)", entry.aor, event.reason)
            entry.winfo = None
            if entry.winfo_ready is not None:
                entry.winfo_ready.clear()

    def _forget_winfo(self, entry: _Presentity) -> None:
        if entry.winfo is not None:
            entry.winfo.end()
        entry.winfo = None
        if entry.winfo_ready is not None:
            entry.winfo_ready.clear()


def _written(entry: _Presentity, saved: asyncio.Future[None]) -> None:
    """A confirmed entity tag's write is over: a written one need not be kept."""
    if entry.etag_saved is saved and not saved.cancelled() and saved.exception() is None:
        entry.etag_saved = None


def _aor(text: str) -> str:
    try:
        return SipURI.parse(text).aor
    except SipError:
        return text
