"""Bayeux messages between cluster nodes, through a Redis stream per application.

Theory of operation.  A notification is made on the node that holds its SIP
subscription; the application's Bayeux session may live on any node.  So in
a cluster every message is added to the application's stream
(:mod:`adapter.cluster.bus`), also when producer and session share a node:
the stream is the application's shared backlog and holds what sessions have
not confirmed.

- **Producing** (:meth:`Relay.deliver`, what the watcher service calls in place
  of ``Hub.deliver``): the message joins an outbox; one writer task adds the
  outbox to the streams in order, in batches (one script call each).  While
  Redis is unreachable the outbox grows (up to :data:`OUTBOX_MAX`) and the
  writer retries.  A subscription is owned by one node, whose one writer keeps
  its messages in order.  The same script call adds each message to the
  inbox of every other node reading for its application, and once it
  returns, the writer hands the messages to this node's own sessions under
  their new ids: a notification that stays on its node costs one round trip
  and no read.
- **Consuming**: a node reads for the applications that have a session on it
  (it is in their ``pa:where``).  One reader task per node reads its inbox
  (``XREAD``, blocking: one stream whatever the number of applications) and
  hands each entry to the local hub under its id in the application's
  stream.  When a session subscribes, the reader first registers for the
  application and fetches its stream in one script call (the backlog: what
  no session took, or took and never confirmed), hands it oldest first, and
  only then what this node made for the application meanwhile; what other
  nodes add after the call reaches the inbox.  Fetches and reads are done by
  that one task, and an entry already handed is not handed again, so a
  session never sees a newer message of a subscription before an older one.
- **Confirming**: the hub tells which messages a session is done with (acked
  with the ack extension, else sent), and the writer deletes them from the
  stream, those of :data:`CONFIRM_DELAY` seconds at once (a deletion is no
  one's wait: one round trip for many).  Until then a message stays, so a
  session that ends, or moves to another node, leaves nothing behind: its
  next session gets it from the stream (this node's fetches skip what it
  has yet to delete; another node's may hand it again: at least once).
- **Redis restarts** (no persistence: the streams come back empty).  Each node
  keeps a *window*: the messages it added that Redis still held when it last
  looked (every :data:`PRUNE_INTERVAL`), plus those added since.  Its writer
  adds messages only while the node's alive mark exists (one script checks
  and adds); when the mark is gone, or when the reader's connection broke,
  the writer first adds the window again, under the old ids where possible,
  then sets the mark.  Readers remember what they handed, so a session that
  already had a message does not get it twice, while one that had not gets
  it now; a backlog comes back whole.  What sessions hold unconfirmed is in
  the nodes' memory and is not touched.  The ``pa:where`` sets and inboxes
  came back empty too, and nodes add their windows each at its own moment
  (not to inboxes): after its connection broke, a reader registers again and
  looks through its applications' streams a few times (:data:`RESYNC`) for
  entries it has not handed in the last :data:`RECENT` seconds and hands
  them; so does a reader whose ``pa:reading`` mark had lapsed (producers may
  have taken it out of ``pa:where``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from adapter.bayeux import Channel, Hub, LocalProtocolError
from adapter.bayeux.errors import RemoteProtocolError
from adapter.cluster.bus import Bus, BusDown, Entry, Outgoing, stream_time

__all__ = ["Relay"]

logger = logging.getLogger(__name__)

#: Messages the writer adds in one script call (one round trip).
BATCH = 256
#: Messages kept while Redis cannot be reached; beyond, the oldest are dropped.
OUTBOX_MAX = 100_000
#: Seconds between two looks at which of its messages Redis still holds.
PRUNE_INTERVAL = 5.0
#: Seconds the writer gathers confirmations before deleting them together.
CONFIRM_DELAY = 0.1
#: Seconds a blocked read waits before looking at its sessions again.
READ_BLOCK = 5.0
#: Seconds between two looks for applications that no longer have a session here.
FORGET_INTERVAL = 1.0
#: Seconds between two marks that this node reads (and trims of its inbox) ...
BEAT_INTERVAL = 2.0
#: ... and how long a mark lasts: producers skip a node whose mark is gone.
READING_TTL = 30.0
#: Entries one read takes at most.
READ_COUNT = 512
#: Seconds between tries while Redis cannot be reached (doubling up to the last).
RETRY = (0.1, 0.2, 0.5, 1.0, 2.0)
#: Seconds after Redis answers again at which a reader looks for entries it missed.
RESYNC = (0.0, 3.0, 10.0)
#: Seconds a reader remembers the ids it handed (longer than the last RESYNC
#: plus PRUNE_INTERVAL: an entry confirmed before then is not added again).
RECENT = 30.0

_encoder = msgspec.json.Encoder()
_decode = msgspec.json.decode


def _entry_order(entry: Entry) -> tuple[int, int]:
    return _entry_order_of(entry.id)


def _entry_order_of(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Relay:
    """One node's end of the Bayeux streams: it produces for every application and
    consumes for the applications whose sessions it holds."""

    def __init__(
        self,
        bus: Bus,
        hub: Hub,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._hub = hub
        self._ttl = ttl
        self._clock = clock
        hub.listener = self
        # Producing.
        self._outbox: deque[Outgoing] = deque()
        self._window: dict[str, deque[Entry]] = {}
        self._confirms: dict[str, list[str]] = {}
        self._confirms_due = False  # CONFIRM_DELAY has passed since the oldest
        self._confirm_timer: asyncio.TimerHandle | None = None
        self._deleting: dict[str, list[str]] = {}  # the confirms being deleted now
        self._check = True  # look at the alive mark before adding (at start: set it)
        self._kick = asyncio.Event()
        self._pruned_at = 0.0
        self.dropped = 0  # outbox overflow
        self.errors = 0  # calls to Redis that failed (for /metrics)
        # Consuming.
        # app -> the newest entry of its stream known here: the applications
        # this node reads for (in their pa:where).
        self._cursors: dict[str, str] = {}
        self._fetches: deque[tuple[str, tuple[Channel, ...]]] = deque()
        self._pending: dict[str, int] = {}  # app -> fetches queued
        # app -> what this node made for it while its fetch was queued.
        self._deferred: dict[str, list[Entry]] = {}
        self._strangers: set[str] = set()  # read in the inbox, not read for here
        self._inbox_cursor = "0-0"
        self._inbox_ready = False
        self._beat_at = float("-inf")
        # app -> id -> (when, whether it reached a session): what RESYNC skips.
        self._handed: dict[str, dict[str, tuple[float, bool]]] = {}
        self._resyncs: list[float] = []
        self._reading = False
        self._forgot_at = 0.0
        self._wakes: set[asyncio.Task[None]] = set()
        self._down: str | None = None  # why Redis is unreachable, while it is
        self._tasks: list[asyncio.Task[None]] = []
        # Set by close(): the loops end.  Their cancel alone is not enough: redis-py
        # may turn a cancel that meets a command in flight into a ConnectionError.
        self._closing = False

    @property
    def connected(self) -> bool:
        """Whether Redis answered the last call (for /metrics)."""
        return self._down is None

    @property
    def waiting(self) -> int:
        """Messages made here and not yet added to Redis (the outbox)."""
        return len(self._outbox)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="cluster-writer"),
            asyncio.create_task(self._read_loop(), name="cluster-reader"),
        ]

    async def close(self, flush: float = 2.0) -> None:
        """Stop; first give the writer up to `flush` seconds to add the outbox."""
        if self._tasks and (self._outbox or self._confirms):
            self._confirms_due = True
            self._kick.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush):
                    while (self._outbox or self._confirms) and self._down is None:
                        await asyncio.sleep(0.01)
        self._closing = True
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
        for task in [*self._tasks, *self._wakes]:
            task.cancel()
        # Closing the connections ends a blocked read at once (a cancel alone
        # may wait for it to return).
        await self._bus.close()
        for task in [*self._tasks, *self._wakes]:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- producing ---------------------------------------------------------------

    def deliver(self, app_id: str, channel: str, data: Any) -> int:
        """Publish `data` on `channel` for `app_id`, on whichever node its session is.

        The watcher service's ``Deliverer``; returns 1 (handed on, not yet read).
        """
        self._outbox.append(Outgoing(app_id, channel, _encoder.encode(data).decode()))
        if len(self._outbox) > OUTBOX_MAX:
            self._outbox.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "cluster: %d Bayeux message(s) dropped, Redis unreachable too long",
                    self.dropped,
                )
        self._kick.set()
        return 1

    async def _write_loop(self) -> None:
        failures = 0
        while not self._closing:
            if not (self._outbox or (self._confirms and self._confirms_due) or self._check):
                # Woken by work, or to prune.  A timer, not asyncio.timeout: on
                # 3.11 a cancel that meets the timeout's expiry can be taken for it.
                prune = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._kick.set)
                try:
                    await self._kick.wait()
                finally:
                    prune.cancel()
                self._kick.clear()
            try:
                if self._check:
                    if not await self._bus.is_alive():
                        await self._restore()
                    self._check = False
                if self._confirms and self._confirms_due:
                    await self._confirm()
                if self._outbox:
                    await self._publish()
                if self._clock() - self._pruned_at >= PRUNE_INTERVAL:
                    await self._prune()
            except BusDown as exc:
                if self._closing:
                    return
                self._lost(exc)
                self._check = True
                await asyncio.sleep(RETRY[min(failures, len(RETRY) - 1)])
                failures += 1
                continue
            failures = 0
            self._back()

    async def _publish(self) -> None:
        batch = [self._outbox[i] for i in range(min(BATCH, len(self._outbox)))]
        ids = await self._bus.publish(batch)
        if ids is None:
            self._check = True  # Redis restarted: the window goes back first
            return
        for _ in batch:
            self._outbox.popleft()
        for message, entry_id in zip(batch, ids, strict=True):
            app_id = message.app_id
            entry = Entry(app_id, entry_id, message.channel, message.data)
            kept = self._window.setdefault(app_id, deque(maxlen=self._bus.maxlen))
            kept.append(entry)
            # This node's own sessions get it from here, not through Redis
            # (the script left this node's inbox out).
            if app_id in self._pending:
                self._deferred.setdefault(app_id, []).append(entry)
            elif app_id in self._cursors:
                handed = self._handed.get(app_id)
                if handed is None or entry_id not in handed:
                    self._hand(entry)

    async def _restore(self) -> None:
        """Redis lost this node's messages: add the window again, then the mark."""
        entries = sorted((e for kept in self._window.values() for e in kept), key=_entry_order)
        oldest = self._clock() - self._ttl
        entries = [e for e in entries if stream_time(e.id) >= oldest]
        window: dict[str, deque[Entry]] = {}
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            ids = await self._bus.replay(chunk)
            for entry, entry_id in zip(chunk, ids, strict=True):
                kept = window.setdefault(entry.app_id, deque(maxlen=self._bus.maxlen))
                kept.append(Entry(entry.app_id, entry_id, entry.channel, entry.data))
        self._window = window
        await self._bus.mark_alive()
        if entries:
            logger.warning(
                "cluster: Redis had lost this node's Bayeux messages; %d added again", len(entries)
            )

    async def _prune(self) -> None:
        """Forget window entries Redis no longer holds (confirmed, trimmed or expired)."""
        self._pruned_at = now = self._clock()
        since = {app_id: kept[0].id for app_id, kept in self._window.items() if kept}
        if not since:
            self._window.clear()
            return
        present = await self._bus.present(since, now - self._ttl)
        for app_id, ids in present.items():
            kept = self._window.get(app_id)
            if kept is None:
                continue  # added meanwhile: looked at next time
            left = deque((e for e in kept if e.id in ids), kept.maxlen)
            if left:
                self._window[app_id] = left
            else:
                del self._window[app_id]

    # -- what the hub tells (SharedListener) ---------------------------------------

    def subscribed(self, app_id: str, patterns: tuple[Channel, ...]) -> None:
        self._fetches.append((app_id, patterns))
        self._pending[app_id] = self._pending.get(app_id, 0) + 1
        if self._reading:
            # The reader waits in XREAD: wake it to fetch.
            task = asyncio.create_task(self._wake())
            self._wakes.add(task)
            task.add_done_callback(self._wakes.discard)

    def confirmed(self, app_id: str, ids: tuple[str, ...]) -> None:
        self._confirms.setdefault(app_id, []).extend(ids)
        self._confirm_later()

    def _confirm_later(self) -> None:
        if self._confirm_timer is None and not self._confirms_due:
            self._confirm_timer = asyncio.get_running_loop().call_later(
                CONFIRM_DELAY, self._confirm_due
            )

    def _confirm_due(self) -> None:
        self._confirm_timer = None
        self._confirms_due = True
        self._kick.set()

    async def _wake(self) -> None:
        with contextlib.suppress(BusDown):
            await self._bus.wake()

    async def _confirm(self) -> None:
        done, self._confirms = self._confirms, {}
        self._deleting = done
        try:
            await self._bus.confirm(done)
            self._confirms_due = False
            if self._confirms:  # confirmed while these were deleted
                self._confirm_later()
        except BusDown:
            for app_id, ids in done.items():
                self._confirms.setdefault(app_id, [])[:0] = ids
            raise
        finally:
            self._deleting = {}

    # -- consuming ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        failures = 0
        while not self._closing:
            try:
                if not self._inbox_ready:
                    await self._bus.empty_inbox()
                    self._inbox_ready = True
                if self._clock() - self._beat_at >= BEAT_INTERVAL:
                    await self._beat()
                if self._resyncs and self._resyncs[0] <= self._clock():
                    self._resyncs.pop(0)
                    await self._resync()
                while self._fetches:
                    await self._fetch(*self._fetches[0])
                    app_id, _ = self._fetches.popleft()
                    self._fetched(app_id)
                if self._clock() - self._forgot_at >= FORGET_INTERVAL or self._strangers:
                    await self._forget()
                self._reading = True
                try:
                    block = min(READ_BLOCK, BEAT_INTERVAL)
                    if self._resyncs:
                        block = max(0.001, min(block, self._resyncs[0] - self._clock()))
                    entries, self._inbox_cursor = await self._bus.read(
                        self._inbox_cursor, block, READ_COUNT
                    )
                finally:
                    self._reading = False
            except BusDown as exc:
                if self._closing:
                    return
                self._lost(exc)
                if not self._check:
                    self._check = True  # the writer looks whether Redis came back empty
                    self._kick.set()
                # First thing when Redis answers: the mark (an empty Redis lost it,
                # and producers take a node without one out of pa:where).
                self._beat_at = float("-inf")
                await asyncio.sleep(RETRY[min(failures, len(RETRY) - 1)])
                failures += 1
                if failures == 1:
                    self._resyncs = []  # set when Redis answers again
                continue
            if failures:
                now = self._clock()
                self._resyncs = [now + delay for delay in RESYNC]
            failures = 0
            self._back()
            for entry in entries:
                app_id = entry.app_id
                if app_id not in self._cursors:
                    if app_id not in self._pending:
                        self._strangers.add(app_id)  # left by an earlier run of this node
                    continue
                handed = self._handed.get(app_id)
                if handed is None or entry.id not in handed:  # else the backlog had it
                    self._hand(entry)

    async def _beat(self) -> None:
        """Tell producers this node reads; trim what it read of its inbox."""
        self._beat_at = self._clock()
        kept = await self._bus.beat(READING_TTL, self._inbox_cursor)
        if not kept and self._cursors and not self._resyncs:
            # Stopped long enough for producers to take it out of pa:where:
            # register again and hand what went past it.
            self._resyncs = [self._clock()]

    async def _forget(self) -> None:
        """Stop reading for applications without a session here.

        Not after every read: a message for an application whose last
        session just went reaches no session and stays in its stream, as it
        would unread.
        """
        self._forgot_at = self._clock()
        server = self._hub.server
        gone = [a for a in self._cursors if not server.session_count(a)]
        for app_id in gone:
            del self._cursors[app_id]
            self._handed.pop(app_id, None)
        gone += [a for a in self._strangers if a not in self._cursors and a not in self._pending]
        self._strangers.clear()
        if gone:
            await self._bus.unregister(gone)

    async def _fetch(self, app_id: str, patterns: tuple[Channel, ...]) -> None:
        """A session of `app_id` subscribed to `patterns`: hand it the backlog."""
        if not self._hub.server.session_count(app_id):
            return
        # Atomic with being added to pa:where: what the stream lacks now reaches
        # the inbox, or this node's writer, later.
        entries = await self._bus.register(app_id)
        newest = entries[-1].id if entries else "0-0"
        cursor = self._cursors.get(app_id)
        if cursor is None or _entry_order_of(newest) > _entry_order_of(cursor):
            self._cursors[app_id] = newest
        # Held by a session here, or done with and not yet deleted: not backlog.
        held = self._hub.server.queued_ids(app_id).union(
            self._confirms.get(app_id, ()), self._deleting.get(app_id, ())
        )
        oldest = self._clock() - self._ttl
        for entry in entries:
            if entry.id in held or stream_time(entry.id) < oldest:
                continue
            try:
                channel = Channel.parse(entry.channel)
            except RemoteProtocolError:
                continue  # not ours to hand; _hand tells it when read live
            if any(pattern.matches(channel) for pattern in patterns):
                self._hand(entry)

    def _fetched(self, app_id: str) -> None:
        """The fetch for `app_id` is done: what this node made for it meanwhile
        goes after the backlog (unless the backlog had it)."""
        left = self._pending[app_id] - 1
        if left:
            self._pending[app_id] = left
            return
        del self._pending[app_id]
        made = self._deferred.pop(app_id, [])
        if app_id in self._cursors:
            handed = self._handed.get(app_id, {})
            for entry in made:
                if entry.id not in handed:
                    self._hand(entry)

    async def _resync(self) -> None:
        """Hand what the streams hold that this node has neither handed lately nor holds."""
        now = self._clock()
        for app_id in list(self._cursors):
            handed = self._handed.get(app_id, {})
            entries = await self._bus.register(app_id)
            if app_id not in self._cursors:
                continue  # its sessions went meanwhile
            held = self._hub.server.queued_ids(app_id)
            done: list[str] = []
            for entry in entries:
                if entry.id in held:
                    continue
                if entry.id in handed:
                    if handed[entry.id][1]:
                        # A session had it and is done with it: added again from
                        # a window that had not yet seen it go.
                        done.append(entry.id)
                elif stream_time(entry.id) >= now - self._ttl:
                    self._hand(entry)
            if done:
                self.confirmed(app_id, tuple(done))
            if entries and _entry_order(entries[-1]) > _entry_order_of(self._cursors[app_id]):
                self._cursors[app_id] = entries[-1].id

    def _hand(self, entry: Entry) -> None:
        now = self._clock()
        handed = self._handed.setdefault(entry.app_id, {})
        handed.pop(entry.id, None)  # again: to the end, in time order
        # Oldest first (insertion order): forget what is past RECENT.
        while handed and (oldest := next(iter(handed.items())))[1][0] < now - RECENT:
            del handed[oldest[0]]
        try:
            reached = self._hub.deliver_shared(
                entry.app_id, entry.channel, _decode(entry.data), entry.id
            )
            handed[entry.id] = (now, reached > 0)
        except (LocalProtocolError, msgspec.DecodeError) as exc:
            logger.error(
                "cluster: Bayeux message %s of %s dropped: %s", entry.id, entry.app_id, exc
            )
            self.confirmed(entry.app_id, (entry.id,))

    # -- Redis's state, in the log -------------------------------------------------

    def _lost(self, exc: BusDown) -> None:
        self.errors += 1
        if self._down is None:
            logger.warning("cluster: %s; Bayeux messages wait until it answers again", exc)
        self._down = str(exc)

    def _back(self) -> None:
        if self._down is not None:
            logger.warning("cluster: Redis answers again")
            self._down = None
