"""A node's side of the cluster: its heartbeat, its leases, takeovers, and REST calls
about work another node owns.

:class:`Ownership` runs one loop, every half lease period:

1. heartbeat (adapter.cluster.nodes) and renewal of every lease in this
   node's name (adapter.cluster.leases.RENEW) — work it held and did not get
   back is let go (:meth:`Ownership.release`); leases in its name it did not
   hold (a restart under the same name) are taken up;
2. the sweep: expired leases of dead nodes, this node's share, are claimed
   and their work taken up from the records (:meth:`Ownership.adopt`):
   publications re-published with their stored entity tag, watches
   subscribed in new dialogs with their schedules.

When a renewal fails (the database unreachable) the leases that are no
longer valid are let go (LeaseBook.expired), and for two lease periods (at
least :data:`QUIET_AFTER_OUTAGE`) after the database is back this node takes
no other node's work, by sweep or by request, so that every node renews
what it still holds before any node takes another's.

A REST call names the work it is about (:meth:`Ownership.route`): held here,
or nobody's (new work: taken here), it is served here; owned by another live
node, it is passed to that node over HTTP, whole (method, path, query,
headers, body), and that node's answer is the answer.  A call passed on is
marked (:data:`FORWARDED`) and is never passed on again: a node that finds
it no longer owns the work answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapter.cluster.leases import (
    ACQUIRE,
    DROP,
    GIVE_UP,
    OWNER,
    RENEW,
    SWEEP,
    UNLEASED,
    LeaseBook,
    LeaseKey,
)
from adapter.cluster.nodes import NameTaken, Node, NodeRegistry
from adapter.cluster.peer import forwarded_by
from adapter.errors import FaultCode, PolicyError, ServiceError
from adapter.metrics import RecoveryProgress
from adapter.presentity import PUBLICATION, PresentityService, StoredDirectory
from adapter.records import SCHEDULE, WATCH
from adapter.recovery import RecoveryPace, recover
from adapter.store import StoreError
from adapter.store.postgres import PostgresStore
from adapter.watcher import WatcherService
from pidf import AttributeType

__all__ = [
    "FORWARDED", "RULES_PATH", "Ownership", "groups_of", "rules_endpoint", "stored_directory",
]

logger = logging.getLogger(__name__)

#: The header marking a REST call one node passed to another (its value: the
#: node that passed it).
FORWARDED = "X-Presence-Forwarded-By"
#: Seconds at least, after an outage of the store, before a node takes another
#: node's expired work (two lease periods when longer): the others' pools
#: reconnect with back-off, and must first renew what they hold.
QUIET_AFTER_OUTAGE = 10.0
#: Leases claimed by one sweep at most (the rest at the next).
SWEEP_LIMIT = 2000
#: Seconds a client is told to wait while the work it names changes owner.
MOVING_RETRY_AFTER = 1
# Hop-by-hop headers (RFC 9110 §7.6.1), the framing httpx sets itself, and
# what the answering server adds of its own.
_NOT_PASSED = frozenset({
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "content-length", "proxy-connection", "content-encoding", "date", "server",
})


def _moving(what: str) -> ServiceError:
    return ServiceError(
        FaultCode.SERVICE_ERROR,
        [f"{what}, retry later"],
        status=503,
        headers={"Retry-After": str(MOVING_RETRY_AFTER)},
    )


class Ownership:
    """This node's leases and what follows from them (see the module docstring)."""

    def __init__(
        self,
        store: PostgresStore,
        me: Node,
        lease: float,
        *,
        presentities: PresentityService,
        watchers: WatcherService,
        request_timeout: float,
        pace: RecoveryPace = RecoveryPace(),
        http: httpx.AsyncClient | None = None,
        stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.me = me
        self.lease = lease
        self.nodes = NodeRegistry(store, me, lease)
        self.book = LeaseBook(lease)
        self.presentities = presentities
        self.watchers = watchers
        self.pace = pace
        #: Work being taken up: a call about it waits until it is.
        self._adopting: dict[LeaseKey, asyncio.Future[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renew_failed = False
        self._sweep_after = float("-inf")
        #: Adoptions under way (beside the loop), and the wait for the first ones.
        self._adoptions: set[asyncio.Task[None]] = set()
        self._recovering: asyncio.Future[None] | None = None
        self._first = True
        #: Calls to the other nodes (adapter.cluster.peer.peer_client: signed).
        self._http = http or httpx.AsyncClient(timeout=request_timeout + 5)
        #: Set once the first round (renewal, sweep, taking up) is done.
        self.ready = asyncio.Event()
        #: For /metrics: work taken from other nodes, work let go, calls passed on.
        self.taken_over = 0
        self.let_go = 0
        self.forwarded = 0
        #: Stops the process (another one took this node's name).
        self._stop = stop
        self._name_lost = False
        #: Work whose end (its record and lease deleted) is being written.
        self._ending: dict[LeaseKey, asyncio.Future[None]] = {}
        store.fence = self._token
        store.on_stale = lambda kind, key: self.release((kind, key))
        store.on_end = self._ends

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _token(self, kind: str, key: str) -> int | None:
        return self.book.token((kind, key), self._now())

    # -- the loop ------------------------------------------------------------

    def start(self, progress: RecoveryProgress | None = None) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(
            self._run(progress), name="cluster-ownership"
        )

    async def close(self) -> None:
        """A clean stop: the leases expire now and the node leaves the registry, so
        that the others take its work at their next sweep."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        tasks: list[asyncio.Future[Any]] = [*self._tasks, *self._adoptions]
        if self._recovering is not None:
            tasks.append(self._recovering)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if not self._name_lost:  # else the leases and the row are the other's
                await self.store.query(GIVE_UP, {"me": self.me.name})
                await self.nodes.leave()
        except StoreError as exc:
            logger.warning("cluster: leases not handed over at stop (they expire): %s", exc)
        await self._http.aclose()

    async def _run(self, progress: RecoveryProgress | None) -> None:
        while not self._name_lost:
            try:
                await self.tick()
            except StoreError as exc:
                logger.warning("cluster: round failed: %s", exc)
            except NameTaken as exc:
                self._lose_name(exc)
                return
            if self._recovering is None and not self._renew_failed and not self._first:
                # The first round is done: ready once what it took is taken up.
                self._recovering = asyncio.ensure_future(
                    self._recovered(list(self._adoptions), progress)
                )
            await asyncio.sleep(self.lease / 2)

    def _lose_name(self, exc: NameTaken) -> None:
        """Another process runs under this node's name (started while this one
        seemed dead, say): both would renew the same leases, so this one lets
        all its work go, sending nothing it need not, and stops."""
        logger.error("cluster: %s: this node lets its work go and stops", exc)
        self._name_lost = True
        for lease in self.book.keys():
            self.book.drop(lease)
            self._let_go(lease, "the node's name is another process's")
        self._stop()

    async def _recovered(
        self, adoptions: list[asyncio.Task[None]], progress: RecoveryProgress | None
    ) -> None:
        await asyncio.gather(*adoptions, return_exceptions=True)
        self.ready.set()
        if progress is not None:
            progress.finished = True
        logger.info("recovery finished (node %s holds %d leases)", self.me.name, len(self.book))

    async def tick(self) -> None:
        """One round: heartbeat, renewal, sweep (see the module docstring)."""
        began = self._now()
        try:
            await self.nodes.heartbeat()
            rows = await self.store.query(RENEW, self._args())
        except StoreError as exc:
            if not self._renew_failed:
                logger.warning("cluster: cannot renew leases: %s", exc)
            self._renew_failed = True
            for lease in self.book.expired(self._now()):
                self._let_go(lease, "not renewed in time")
            return
        lost, found = self.book.renewed(rows, began)
        for lease in lost:
            self._let_go(lease, "taken by another node")
        if found:
            # One whose record is gone is work that ended (its end written
            # after this renewal read the lease): dropped, not taken up.
            self._take_up(found, own=True, drop_unrecorded=True)
        if self._renew_failed:
            # Back after an outage: every node gets two periods to renew what
            # it still holds before this one takes another's.
            self._renew_failed = False
            self._sweep_after = began + max(2 * self.lease, QUIET_AFTER_OUTAGE)
        if self._quiet(began):
            return
        live = await self.nodes.live()
        names = [node.name for node in live]
        index = names.index(self.me.name) if self.me.name in names else 0
        claimed = await self.store.query(SWEEP, self._args(
            count=max(len(names), 1), index=index, grace=self.lease / 2, limit=SWEEP_LIMIT,
        ))
        if self._first:
            self._first = False
            claimed += await self.store.query(UNLEASED, self._args())
        new = self.book.took(claimed, began)
        self.taken_over += len(new)
        if new:
            logger.info("cluster: taking over %d pieces of work", len(new))
            self._take_up(new, own=False, drop_unrecorded=True)

    def _take_up(self, leases: list[LeaseKey], **how: bool) -> None:
        """Adopt beside the loop: taking thousands up, paced, takes longer than
        a lease lasts, and the renewals must go on meanwhile."""
        task = asyncio.ensure_future(self.adopt(leases, **how))
        self._adoptions.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[None]) -> None:
        self._adoptions.discard(task)
        if not task.cancelled():
            task.exception()  # a StoreError: logged by adopt, taken up at the next renewal

    def _quiet(self, now: float) -> bool:
        """Whether this node leaves others' expired work alone now (just back
        from an outage of the store: see the module docstring)."""
        return self._renew_failed or now < self._sweep_after

    def _args(self, **more: Any) -> Any:
        return {"me": self.me.name, "ttl": 2 * self.lease, **more}

    # -- taking work up, letting it go ------------------------------------------

    async def adopt(
        self, leases: list[LeaseKey], *, own: bool, drop_unrecorded: bool = False
    ) -> None:
        """Take up the work of ``leases`` (held here now) from its records.
        ``own``: this node's before (let go during an outage, or a restart);
        ``drop_unrecorded``: a lease whose record is gone is dropped (taken
        from a dead node: that work was over)."""
        waiting: dict[LeaseKey, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        for lease in leases:
            if lease not in self._adopting:
                waiting[lease] = self._adopting[lease] = loop.create_future()
        try:
            await self._adopt(list(waiting), own, drop_unrecorded)
        except StoreError as exc:
            # Not taken up: not held either, so that the next renewal finds
            # them in this node's name and they are taken up then.
            logger.warning("cluster: %d pieces of work not taken up yet: %s", len(waiting), exc)
            for lease in waiting:
                self.book.drop(lease)
            raise
        finally:
            for lease, future in waiting.items():
                del self._adopting[lease]
                future.set_result(None)

    async def _adopt(self, leases: list[LeaseKey], own: bool, drop_unrecorded: bool) -> None:
        if not leases:
            return
        if own:
            # This node's own work, let go during an outage: what it wrote
            # meanwhile (a newer entity tag) is still queued; the records are
            # read once the store has it all.
            await self._caught_up()
        records = await self._records(leases)
        for lease in leases:
            if lease not in records and drop_unrecorded:
                token = self.book.drop(lease)
                await self.store.query(
                    DROP, self._args(kind=lease[0], key=lease[1], token=token)
                )
        publications = [(k[1], v) for k, v in records.items() if k[0] == PUBLICATION]
        watches = [v for k, v in records.items() if k[0] == WATCH]
        schedules: dict[tuple[str, str], list[Any]] = {}
        if watches:
            wanted = {(w.get("watcher"), w.get("presentity")) for w in watches}
            for (value,) in await self.store.query(
                "SELECT value FROM records WHERE kind = %s", (SCHEDULE,)
            ):
                schedule = json.loads(value)
                pair = (schedule.get("watcher"), schedule.get("presentity"))
                if pair in wanted:
                    schedules.setdefault(pair, []).append(schedule)

        async def publish(item: tuple[str, Any]) -> None:
            await self.presentities.adopt(*item)

        async def subscribe(record: Any) -> None:
            pair = (record.get("watcher"), record.get("presentity"))
            await self.watchers.adopt(record, schedules.get(pair, []))

        await asyncio.gather(
            recover("publications", publications, publish, pace=self.pace),
            recover("subscriptions", watches, subscribe, pace=self.pace),
        )

    async def _caught_up(self) -> None:
        """Until a write queued now commits: every write before it has (the store
        keeps writes that failed for an unreachable server, in order)."""
        while True:
            try:
                await self.store.probe()
                return
            except StoreError:
                await asyncio.sleep(self.lease / 2)

    async def _records(self, leases: list[LeaseKey]) -> dict[LeaseKey, Any]:
        out: dict[LeaseKey, Any] = {}
        for kind in (PUBLICATION, WATCH):
            keys = [key for k, key in leases if k == kind]
            if keys:
                for key, value in await self.store.query(
                    "SELECT key, value FROM records WHERE kind = %s AND key = ANY(%s)",
                    (kind, keys),
                ):
                    out[(kind, key)] = json.loads(value)
        return out

    def _ends(self, kind: str, key: str, done: asyncio.Future[None]) -> None:
        """The work's end is queued, its lease deleted with its record: the lease is
        no longer this node's to write under, and a call that starts the same
        work again waits for the end to be written, then takes a new lease."""
        lease = (kind, key)
        self.book.drop(lease)
        self._ending[lease] = done

        def written(_: asyncio.Future[None]) -> None:
            if self._ending.get(lease) is done:
                del self._ending[lease]

        done.add_done_callback(written)

    def release(self, lease: LeaseKey) -> None:
        """A write found the lease stale: another node owns that work now."""
        if self.book.drop(lease) is not None:
            self._let_go(lease, "another node's now")

    def held(self) -> dict[str, int]:
        """How many leases this node holds, by kind."""
        return self.book.kinds()

    def _let_go(self, lease: LeaseKey, why: str) -> None:
        self.let_go += 1
        kind, key = lease
        logger.warning("cluster: letting %s %s go (%s)", kind, key, why)
        if kind == PUBLICATION:
            self.presentities.release(key)
        elif kind == WATCH:
            watcher, presentity = json.loads(key)
            self.watchers.release(watcher, presentity)

    # -- REST calls ---------------------------------------------------------------

    async def owner(
        self, kind: str, key: str, *, create: bool, forwarded: bool = False
    ) -> Node | None:
        """Where a call about (kind, key) is served: None here — held here, taken
        here now from a dead node, or new work (``create``: taken here; else,
        for a read of work nobody has, nothing is taken) — else the live node
        that owns it.

        Raises a 503 ServiceError when the work is changing hands, StoreError
        when the store cannot be asked.
        """
        if self._name_lost:
            raise _moving("this node is stopping")
        lease = (kind, key)
        ending = self._ending.get(lease)
        if ending is not None:
            await asyncio.wait([ending])
        adopting = self._adopting.get(lease)
        if adopting is not None:
            await asyncio.shield(adopting)
        if self.book.token(lease, self._now()) is not None:
            return None
        began = self._now()
        rows = await self.store.query(OWNER, self._args(kind=kind, key=key))
        if rows and rows[0][0] != self.me.name:
            if rows[0][1] and self._quiet(began):
                # Expired in an outage: its owner may yet renew it.
                raise _moving(f"{kind} is changing hands between nodes")
            if not rows[0][1]:
                node = await self.nodes.find(rows[0][0])
                if node is None or forwarded:
                    raise _moving(f"{kind} is changing hands between nodes")
                return node
        if not rows and not create:
            return None
        taken = await self.store.query(ACQUIRE, self._args(kind=kind, key=key))
        if not taken:
            raise _moving(f"{kind} is changing hands between nodes")  # another was quicker
        if rows and rows[0][0] != self.me.name:
            self.taken_over += 1
        if self.book.took([(kind, key, taken[0][0])], began):
            # New here: a dead node's work (or this node's own, let go in an
            # outage) is taken up before the call goes on; new work has no
            # record yet, and nothing to take up.
            await self.adopt([lease], own=bool(rows) and rows[0][0] == self.me.name)
        return None

    async def route(
        self, request: Request, kind: str, key: str, *, create: bool = True
    ) -> Response | None:
        """None: serve the call here; else the owner node's answer to it."""
        forwarded = forwarded_by(request) is not None
        node = await self.owner(kind, key, create=create, forwarded=forwarded)
        if node is None:
            return None
        return await self.forward(request, node)

    async def forward(self, request: Request, node: Node) -> Response:
        self.forwarded += 1
        headers = [(k, v) for k, v in request.headers.items() if k not in _NOT_PASSED]
        headers.append((FORWARDED, self.me.name))
        # The path and query as they came, byte for byte: a SIP URI in the
        # path keeps its escapes (decoding and encoding again could change it).
        raw = request.scope.get("raw_path") or request.url.path.encode()
        if request.scope.get("query_string"):
            raw += b"?" + request.scope["query_string"]
        url = httpx.URL(node.http).copy_with(raw_path=raw)
        try:
            answer = await self._http.request(
                request.method, url, headers=headers, content=await request.body()
            )
        except httpx.HTTPError as exc:
            logger.info("cluster: node %s unreachable for %s %s: %s",
                        node.name, request.method, request.url.path, exc)
            error = _moving(f"node {node.name} unreachable")
            return JSONResponse(error.body(), error.status, dict(error.headers))
        passed = {k: v for k, v in answer.headers.items() if k not in _NOT_PASSED}
        return Response(answer.content, answer.status_code, passed)

    async def route_member(
        self, request: Request, watcher: str, presentity: str
    ) -> Response | None:
        """Get User Presence of ``presentity`` as a member of one of ``watcher``'s
        groups, which another node watches: that node's answer (None: serve
        the call here).  The groups' records list their members."""
        if request.headers.get(FORWARDED) is not None:
            return None
        for key, _ in await groups_of(self.store, watcher, presentity):
            node = await self.owner(WATCH, key, create=False)
            if node is not None:
                return await self.forward(request, node)
        return None

    async def schedule_owner(self, app_id: str, correlator: str) -> str | None:
        """The watch key (for :meth:`route`) of a schedule kept in the store, None
        when there is none."""
        record = await self.store.get(SCHEDULE, json.dumps((app_id, correlator)))
        if record is None:
            return None
        return json.dumps((record.get("watcher"), record.get("presentity")))

    # -- rules changed through this node -----------------------------------------

    def rules_changed(self, presentity: str) -> None:
        """Tell the other live nodes: their watches of ``presentity`` read the
        rules again, and its publication's owner re-publishes."""
        self._spawn(self._tell_rules_changed(presentity))

    async def _tell_rules_changed(self, presentity: str) -> None:
        for node in await self.nodes.live():
            if node.name == self.me.name:
                continue
            try:
                await self._http.post(
                    node.http + RULES_PATH, params={"presentity": presentity},
                    headers={FORWARDED: self.me.name},
                )
            except httpx.HTTPError as exc:
                logger.info("cluster: node %s not told of rules of %s: %s",
                            node.name, presentity, exc)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def groups_of(store: PostgresStore, watcher: str, presentity: str) -> list[tuple[str, Any]]:
    """``watcher``'s groups that list ``presentity``: their watch keys and records."""
    prefix = json.dumps([watcher])[:-1] + ", "  # a watch key: [watcher, presentity]
    rows = await store.query(
        "SELECT key, value FROM records WHERE kind = %s AND starts_with(key, %s)"
        " ORDER BY key", (WATCH, prefix),
    )
    groups = []
    for key, value in rows:
        record = json.loads(value)
        if record.get("list") and presentity in (record.get("members") or {}):
            groups.append((key, record))
    return groups


def stored_directory(store: PostgresStore, watchers: WatcherService) -> StoredDirectory:
    """What a watch another node holds says of its application, read from its
    record — the watcher's own watch of the presentity, else a group of the
    watcher's listing it — so that Get Open Subscriptions answers alike on
    every node."""

    async def lookup(watcher: str, presentity: str) -> tuple[str, tuple[AttributeType, ...]] | None:
        try:
            record = await store.get(WATCH, json.dumps((watcher, presentity)))
            if record is None:
                groups = await groups_of(store, watcher, presentity)
                record = groups[0][1] if groups else None
        except StoreError:
            return None
        return watchers.stored_directory(record) if record is not None else None

    return lookup


#: Where a node tells the others that a presentity's rules changed.
RULES_PATH = "/cluster/rules"


async def rules_endpoint(request: Request) -> Response:
    """POST /cluster/rules?presentity=URI → 204: the rules changed through another node.

    Only from another node (its signature checked by adapter.cluster.peer.PeerGate).
    """
    if forwarded_by(request) is None:
        raise PolicyError.policy_error("not a call from a node of this cluster")
    presentity = request.query_params.get("presentity")
    if not presentity:
        return Response(status_code=400)
    watchers: WatcherService = request.state.watcher
    presentities: PresentityService = request.state.presentity
    watchers.rules_changed(presentity)
    presentities.rules_changed_elsewhere(presentity)
    return Response(status_code=204)

