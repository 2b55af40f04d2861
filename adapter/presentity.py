"""The presentity side: publish, see who asks, authorise, block, list watchers.

One :class:`PresentityService` serves every presentity address of every
application.  Per presentity it keeps

* the published attributes and the SIP publication that carries them (one
  per address, RFC 3903: later publishes modify it with SIP-If-Match);
* a presence.winfo subscription (RFC 3857), opened on first need and kept,
  whose NOTIFYs say which watchers have a subscription and in what state.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from adapter.liveness import ServerLiveness, bounded
from adapter.logs import bind
from adapter.metrics import RecoveryProgress
from adapter.presence_json import attributes_from_json, attributes_to_json
from adapter.recovery import RecoveryPace, recover
from adapter.store import MemoryStore, Store
from adapter.xcap import XcapClient
from pidf import (
    AttributeType,
    Other,
    Outcome,
    PidfError,
    PresenceAttribute,
    SubHandling,
    WatcherInfo,
    WatcherInfoState,
    WatcherStatus,
    encode,
    validate_publication,
)
from pidf.watcherinfo import CONTENT_TYPE as WATCHERINFO
from sip import (
    NotifyReceived,
    PublicationConfirmed,
    PublicationRemoved,
    SipError,
    SipURI,
    SubscriptionTerminated,
    UserAgentEvent,
)
from sip.aio import RequestFailed, SipEndpoint
from sip.publication import PublicationState

__all__ = ["OpenSubscription", "PresentityService", "WatcherDirectory"]

logger = logging.getLogger(__name__)

#: How long a first Get Open Subscriptions waits for the winfo subscription's
#: first NOTIFY (Kamailio sends it right after the 200).
WINFO_READY_TIMEOUT = 3.0

#: How long after a rules change the presentity's publication goes out again
#: (seconds).  Kamailio's XCAP server answers the PUT before it re-sends the
#: document to the SIP watchers (conf/kamailio/kamailio.cfg, RULES_CHANGED);
#: a PUBLISH handled by another worker meanwhile could be notified first, and
#: the unfiltered re-send would be what the phones keep.  Changes within this
#: pause share one re-publication.
REPUBLISH_DELAY = 0.2

#: Store kind: presentity -> {"attributes": REST JSON, "etag", "etag_expires" (epoch)}.
PUBLICATION = "publication"

_LIVE = (WatcherStatus.PENDING, WatcherStatus.WAITING, WatcherStatus.ACTIVE)
_UNDECIDED = (None, SubHandling.CONFIRM)
#: Publication states in which a re-publication modifies a live publication
#: (others are retrying with their body anyway, or are over).
_REPUBLISHABLE = (PublicationState.PUBLISHED, PublicationState.SENDING)


@dataclass(frozen=True)
class OpenSubscription:
    """A watcher waiting for the presentity's decision."""

    watcher: str
    application: str
    attributes: tuple[AttributeType, ...]  # empty = all


#: What the adapter knows about a watcher that subscribed through it:
#: (watcher, presentity) -> (application name, attributes asked for).
WatcherDirectory = Callable[[str, str], tuple[str, tuple[AttributeType, ...]] | None]


@dataclass
class _Presentity:
    aor: SipURI
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    attributes: tuple[PresenceAttribute, ...] = ()
    publication_id: int | None = None
    # The server's entity tag for our publication and when it expires (epoch
    # seconds), kept so that a restarted adapter modifies that publication
    # instead of adding a second one beside it (RFC 3903 §4.4).
    etag: str | None = None
    etag_expires: float | None = None
    # The store write of the latest confirmed entity tag.
    etag_saved: asyncio.Future[None] | None = None
    winfo_id: int | None = None
    winfo: WatcherInfoState = field(default_factory=WatcherInfoState)
    winfo_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # A rules change asks for the publication to go out again (see
    # PresentityService._republish); one task per presentity does it.
    republish_due: bool = False
    republishing: asyncio.Task[None] | None = None
    # The stored JSON form of ``attributes`` and the tuple it was made from:
    # every publish is written twice (before the PUBLISH, then with the new
    # entity tag once it is confirmed), and the second write need not
    # rebuild it.  The tuple and its attributes are immutable, so identity
    # tells whether the form is current.
    _json_of: tuple[PresenceAttribute, ...] | None = field(default=None, repr=False)
    _json: list[Any] = field(default_factory=list, repr=False)

    @cached_property
    def address(self) -> str:
        """The address as text: the store's key for this presentity."""
        return str(self.aor)

    def attributes_json(self) -> list[Any]:
        if self._json_of is not self.attributes:
            self._json = attributes_to_json(self.attributes)
            self._json_of = self.attributes
        return self._json


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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sip = sip
        self._xcap = xcap
        self._store: Store = store or MemoryStore()
        self._liveness = liveness
        self._timeout = request_timeout
        self._directory = directory or (lambda watcher, presentity: None)
        self._rules_changed = rules_changed or (lambda presentity: None)
        self._clock = clock
        self._presentities: dict[str, _Presentity] = {}
        self._by_publication: dict[int, _Presentity] = {}
        self._by_winfo: dict[int, _Presentity] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        sip.add_listener(self._on_sip_event)

    async def close(self) -> None:
        """Stop the re-publications still waiting (the publications stay)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _presentity(self, address: str) -> _Presentity:
        entry = self._presentities.get(address)
        if entry is None:
            entry = self._presentities[address] = _Presentity(SipURI.parse(address))
        return entry

    # -- Publish -----------------------------------------------------------

    async def publish(self, presentity: str, attributes: tuple[PresenceAttribute, ...]) -> None:
        """Publish ``attributes``; those not named keep their published value.

        Raises ValidationError for a bad set, RequestFailed when the presence
        server refuses or does not answer.  The state is kept either way: the
        publication retries in the background until the server takes it.
        """
        bind(presentity=presentity)
        validate_publication(attributes)
        entry = self._presentity(presentity)
        now = self._clock()
        # Stamp what changes now, so that the attributes kept from earlier
        # publishes keep their own lastChange (watchers diff on it).
        stamped = tuple(
            a if a.last_change is not None else PresenceAttribute(a.value, now, a.note)
            for a in attributes
        )
        async with entry.lock:
            await self._publish_locked(entry, _merge(entry.attributes, stamped), now)

    async def _publish_locked(
        self, entry: _Presentity, attributes: tuple[PresenceAttribute, ...], now: datetime
    ) -> None:
        """Publish exactly ``attributes`` for ``entry`` (its lock held)."""
        body = encode(attributes, entity=entry.address, now=now)
        # Durable before anything is answered: after a crash the
        # publication comes back from the store.
        entry.attributes = attributes
        await self._save(entry)
        ua = self._sip.ua
        publication_id = entry.publication_id
        if publication_id is None or ua.publication(publication_id) is None:
            # Keep the id before waiting: a failed first PUBLISH still
            # leaves a publication that retries, and later publishes
            # must modify it rather than start a second one.
            publication_id = self._start_publication(entry, body)
        else:
            ua.modify(publication_id, body, self._sip.now())
        await self._confirmed(publication_id)
        # The confirmation's new entity tag is written by _on_sip_event;
        # the 204 waits for it too.  A process killed right after the
        # answer would otherwise come back with the previous tag (or
        # none), and publish afresh beside the server's publication
        # (RFC 3903 §4.4: only its entity tag modifies it).
        if entry.etag_saved is not None:
            # Shielded: a caller that gives up must not cancel the write.
            await asyncio.shield(entry.etag_saved)

    # -- withdrawal (an extension: DELETE /rest/presence) -------------------

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
        entry = self._presentity(presentity)
        async with entry.lock:
            kept = tuple(a for a in entry.attributes if kinds and a.type not in kinds)
            if kept:
                if kept != entry.attributes:
                    await self._publish_locked(entry, kept, self._clock())
                return
            entry.attributes = ()
            publication_id = entry.publication_id
            if publication_id is None or self._sip.ua.publication(publication_id) is None:
                entry.publication_id = None
                await self._store.delete(PUBLICATION, entry.address)
                return
            await self._save(entry)
            self._sip.ua.unpublish(publication_id, self._sip.now())
            # The record goes when the publication is over (_on_sip_event);
            # the REST caller waits for that within its timeout only.
            await bounded(self._sip.unpublish(publication_id), "PUBLISH", self._liveness,
                          self._timeout)

    async def _confirmed(self, publication_id: int) -> None:
        """Wait (within the REST timeout) until the server takes the publication.

        A failure the publication retries by itself before the wait is over —
        a 500 "database is locked" from a busy server, say — is not yet an
        answer: the retry's outcome is.  Nor is the 200 to a PUBLISH sent
        before this one (still outstanding when this one came, RFC 3903 §4.1):
        when it comes, ours goes out, and its own answer is awaited.
        """
        deadline = self._sip.now() + self._timeout

        async def outcome() -> None:
            while True:
                try:
                    await self._sip.publication_outcome(publication_id)
                except RequestFailed:
                    publication = self._sip.ua.publication(publication_id)
                    if publication is None or publication.state is not PublicationState.RETRY_WAIT:
                        raise
                    retry_at = publication.get_timer()
                    if retry_at is None or retry_at >= deadline:
                        raise
                    continue
                publication = self._sip.ua.publication(publication_id)
                if publication is None or publication.state is not PublicationState.SENDING:
                    return

        # One bounded wait around the retries: its own refusal (the server is
        # known to be down) is final.  Retried, it raised again without ever
        # yielding, and the event loop never ran again.
        await bounded(outcome(), "PUBLISH", self._liveness, self._timeout)

    async def resync(self, why: str, pace: RecoveryPace = RecoveryPace()) -> None:
        """The server came back or restarted: refresh every publication now.

        A modify with SIP-If-Match; a server that forgot the entity tag answers
        412 and the publication is sent afresh (RFC 3903 §6).  Watcher info
        subscriptions are dropped and re-opened on next need.
        """
        entries = [e for e in self._presentities.values() if e.publication_id is not None]
        for entry in self._presentities.values():
            self._forget_winfo(entry)

        async def start(entry: _Presentity) -> None:
            async with entry.lock:
                if entry.publication_id is None or not entry.attributes:
                    return  # none, or being withdrawn: not published again
                body = encode(entry.attributes, entity=entry.address, now=self._clock())
                if self._sip.ua.publication(entry.publication_id) is None:
                    self._start_publication(entry, body)
                else:
                    self._sip.ua.modify(entry.publication_id, body, self._sip.now())
                publication_id = entry.publication_id
            try:
                await self._sip.publication_outcome(publication_id)
            except RequestFailed as exc:
                logger.info("refreshing %s after the server %s: %s", entry.aor, why, exc)

        await recover("publications", entries, start, pace=pace)

    async def restore(
        self, pace: RecoveryPace = RecoveryPace(), progress: RecoveryProgress | None = None
    ) -> None:
        """Publish again what the store kept (at start, paced)."""
        stored = self._store.load(PUBLICATION)
        entries = []
        for presentity, record in stored.items():
            try:
                entry = self._presentity(presentity)
                entry.attributes = attributes_from_json(record["attributes"])
                entry.etag = record.get("etag")
                entry.etag_expires = record.get("etag_expires")
            except (PidfError, SipError, KeyError, TypeError) as exc:
                logger.error("stored publication of %s unusable, dropped: %s", presentity, exc)
                await self._store.delete(PUBLICATION, presentity)
                continue
            entries.append(entry)

        async def start(entry: _Presentity) -> None:
            async with entry.lock:
                if entry.publication_id is not None:
                    return  # published again by a request meanwhile
                body = encode(entry.attributes, entity=entry.address, now=self._clock())
                if not entry.attributes:
                    # A withdrawal the adapter stopped in the middle of: the
                    # server's publication (if its tag is still alive) is
                    # ended, nothing is published again.
                    left = (entry.etag_expires or 0.0) - self._clock().timestamp()
                    if entry.etag is None or left <= 0:
                        await self._store.delete(PUBLICATION, entry.address)
                        return
                    publication_id = self._start_publication(entry, body)
                    self._sip.ua.unpublish(publication_id, self._sip.now())
                    await self._sip.unpublish(publication_id)
                    return
                publication_id = self._start_publication(entry, body)
            try:
                await self._sip.publication_outcome(publication_id)
            except RequestFailed as exc:
                logger.info("re-publishing %s: %s (keeps retrying)", entry.aor, exc)

        await recover("publications", entries, start, pace=pace, progress=progress)

    def _start_publication(self, entry: _Presentity, body: bytes) -> int:
        """A new SIP publication for ``entry``, resuming the server's one if known."""
        now = self._sip.now()
        resume_until = None
        if entry.etag is not None and entry.etag_expires is not None:
            left = entry.etag_expires - self._clock().timestamp()
            if left > 0:
                resume_until = now + left
        publication_id = self._sip.ua.publish(
            entry.aor,
            body,
            now,
            etag=entry.etag if resume_until is not None else None,
            etag_expires_at=resume_until,
        )
        if entry.publication_id is not None:
            self._by_publication.pop(entry.publication_id, None)
        entry.publication_id = publication_id
        self._by_publication[publication_id] = entry
        return publication_id

    def _save(self, entry: _Presentity) -> asyncio.Future[None]:
        record = {
            "attributes": entry.attributes_json(),
            "etag": entry.etag,
            "etag_expires": entry.etag_expires,
        }
        return self._store.put(PUBLICATION, entry.address, record)

    # -- watchers ----------------------------------------------------------

    async def open_subscriptions(self, presentity: str) -> list[OpenSubscription]:
        watchers = await self._live_watchers(presentity)
        rules = (await self._xcap.get(presentity)).rules
        out = []
        for uri, status in watchers.items():
            if status is WatcherStatus.ACTIVE:
                continue
            rule = rules.rule_for(uri)
            if (rule.sub_handling if rule is not None else None) not in _UNDECIDED:
                continue
            application, attributes = self._directory(uri, presentity) or ("", ())
            out.append(OpenSubscription(uri, application, attributes))
        return out

    async def watchers(self, presentity: str) -> list[str]:
        """The watchers currently authorised and subscribed."""
        watchers = await self._live_watchers(presentity)
        rules = (await self._xcap.get(presentity)).rules
        out = []
        for uri, status in watchers.items():
            if status is WatcherStatus.WAITING:
                # RFC 3857 §3.2: its subscription ended before it was decided
                # on; it may be asked about again, but it watches nothing.
                continue
            rule = rules.rule_for(uri)
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
        self._rules_changed(presentity)
        self._republish(presentity)

    async def block(self, presentity: str, watcher: str) -> None:
        """Block ``watcher``: the server terminates its subscription (rejected),
        or refuses it when it comes."""
        await self._xcap.update(
            presentity, lambda rules: rules.set_handling(watcher, SubHandling.BLOCK)
        )
        self._rules_changed(presentity)
        self._republish(presentity)

    # -- re-publication after a rules change ---------------------------------

    def _republish(self, presentity: str) -> None:
        """Publish ``presentity``'s current state again, soon, in the background.

        After a pres-rules change Kamailio 5.6 re-sends the presence document
        to every SIP watcher unfiltered (docs/kamailio.md, "Privacy"); only
        the NOTIFYs a PUBLISH causes pass through the rules.  So the
        publication is modified with the body it already carries (RFC 3903
        §4.4), and every SIP watcher gets a filtered document right after the
        unfiltered one.  A modification rather than a body-less refresh: a
        refresh only extends the publication's lifetime (§4.2), and a state
        agent need not notify anyone for it.
        """
        entry = self._presentities.get(presentity)
        if entry is None or entry.publication_id is None:
            return  # nothing published through this adapter
        entry.republish_due = True
        if entry.republishing is None:
            task = asyncio.get_running_loop().create_task(self._republishing(entry))
            entry.republishing = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _republishing(self, entry: _Presentity) -> None:
        try:
            # A rules change that comes while a re-publication is under way
            # asks for one more: its unfiltered NOTIFY may follow ours.
            while entry.republish_due:
                await asyncio.sleep(REPUBLISH_DELAY)
                # Under the lock, so that a Publish or a withdrawal of the
                # same presentity comes wholly before or wholly after: what
                # goes out is the latest state, and an ended publication is
                # not revived.
                async with entry.lock:
                    entry.republish_due = False
                    publication_id = entry.publication_id
                    publication = (
                        self._sip.ua.publication(publication_id)
                        if publication_id is not None else None
                    )
                    if (publication is None or publication.body is None or not entry.attributes
                            or publication.state not in _REPUBLISHABLE):
                        continue
                    assert publication_id is not None
                    self._sip.ua.modify(publication_id, publication.body, self._sip.now())
                    try:
                        await self._confirmed(publication_id)
                    except RequestFailed as exc:
                        # The publication retries by itself, with its body.
                        logger.info("re-publishing %s after a rules change: %s", entry.aor, exc)
        finally:
            entry.republishing = None

    async def _live_watchers(self, presentity: str) -> dict[str, WatcherStatus]:
        """Watcher URI -> the best status of its live presence subscriptions."""
        entry = self._presentity(presentity)
        await self._ensure_winfo(entry)
        found: dict[str, WatcherStatus] = {}
        for resource, package in entry.winfo.resources():
            if package != "presence" or _aor(resource) != entry.aor.aor:
                continue
            for watcher in entry.winfo.watchers(resource, package):
                if watcher.status not in _LIVE:
                    continue
                if found.get(watcher.uri) is not WatcherStatus.ACTIVE:
                    found[watcher.uri] = watcher.status
        return found

    async def _ensure_winfo(self, entry: _Presentity) -> None:
        async with entry.lock:
            if entry.winfo_id is None:
                entry.winfo = WatcherInfoState()
                entry.winfo_ready.clear()
                # Filed before the answer: the first NOTIFY may come first.
                winfo_id = self._sip.ua.subscribe(
                    entry.aor, entry.aor, self._sip.now(),
                    event="presence.winfo", accept=(WATCHERINFO,),
                )
                entry.winfo_id = winfo_id
                self._by_winfo[winfo_id] = entry
                try:
                    outcome = self._sip.subscription_outcome(winfo_id)
                    await bounded(outcome, "SUBSCRIBE", self._liveness, self._timeout)
                except RequestFailed:
                    self._by_winfo.pop(winfo_id, None)
                    entry.winfo_id = None
                    raise
        try:
            await asyncio.wait_for(entry.winfo_ready.wait(), WINFO_READY_TIMEOUT)
        except TimeoutError:
            logger.warning("no watcherinfo for %s within %.0f s", entry.aor, WINFO_READY_TIMEOUT)

    # -- SIP events --------------------------------------------------------

    def _on_sip_event(self, event: UserAgentEvent) -> None:
        if isinstance(event, PublicationConfirmed):
            entry = self._by_publication.get(event.publication_id)
            if entry is not None:
                entry.etag = event.etag
                entry.etag_expires = self._clock().timestamp() + event.expires
                entry.etag_saved = self._save(entry)
            return
        if isinstance(event, PublicationRemoved):
            # The end of a withdrawal (un-PUBLISH answered, or given up).
            entry = self._by_publication.pop(event.publication_id, None)
            if entry is not None and entry.publication_id == event.publication_id:
                entry.publication_id = None
                entry.etag = entry.etag_expires = None
                if not entry.attributes:
                    self._store.delete(PUBLICATION, entry.address)
            return
        if isinstance(event, NotifyReceived):
            entry = self._by_winfo.get(event.subscription_id)
            if entry is None or not event.body:
                return
            try:
                document = WatcherInfo.parse(event.body)
            except PidfError as exc:
                logger.warning("unreadable watcherinfo for %s: %s", entry.aor, exc)
                return
            outcome = entry.winfo.apply(document)
            if entry.winfo.synchronised:
                entry.winfo_ready.set()
            if outcome is Outcome.GAP:
                logger.info("watcherinfo gap for %s; subscribing afresh", entry.aor)
                self._forget_winfo(entry)
        elif isinstance(event, SubscriptionTerminated):
            entry = self._by_winfo.get(event.subscription_id)
            if entry is not None:
                logger.info("winfo subscription of %s ended (%s)", entry.aor, event.reason)
                self._forget_winfo(entry)

    def _forget_winfo(self, entry: _Presentity) -> None:
        if entry.winfo_id is not None:
            self._by_winfo.pop(entry.winfo_id, None)
            self._sip.end_subscription(entry.winfo_id)
        entry.winfo_id = None
        entry.winfo_ready.clear()


def _aor(text: str) -> str:
    try:
        return SipURI.parse(text).aor
    except SipError:
        return text


def _merge(
    current: tuple[PresenceAttribute, ...], update: tuple[PresenceAttribute, ...]
) -> tuple[PresenceAttribute, ...]:
    """``update`` replaces attributes of the same type (Other: of the same name)."""

    def key(attribute: PresenceAttribute) -> object:
        if isinstance(attribute.value, Other):
            return (attribute.type, attribute.value.name)
        return attribute.type

    replaced = {key(a) for a in update}
    return tuple(a for a in current if key(a) not in replaced) + tuple(update)
