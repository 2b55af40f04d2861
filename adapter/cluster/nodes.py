"""The node registry: which nodes of the cluster are alive, and where they listen.

Each node writes its row of the store's ``nodes`` table — its name, its HTTP
base URL and SIP address, its process's instance id, and ``last_seen`` — at
every heartbeat (:class:`~adapter.cluster.ownership.Ownership` beats every
half lease).  A node whose ``last_seen`` is older than two lease periods is
dead: its leases have run out by then too (adapter.cluster.leases), and the
others take its work over.  Times are the database server's clock
(``now()``), never a node's: the nodes' clocks need not agree.

A name is one process's at a time (:func:`claim`): leases are held in a
node's name, so two live processes under one name would both renew them and
fencing could not tell them apart.  A process starting under a name claims
it before it serves, and is refused while another process keeps the name
alive; it may have it at once when the name's last process is gone — it
stopped cleanly (its row is deleted), or it died (PostgreSQL ends a dead
process's session, and with it the session lock that process held on its
name) — and otherwise once that row is older than two lease periods.

The HTTP URL is how the others reach this node to pass it a REST call about
work it owns; it is ``[http] host:port`` as configured, so that address must
be one the other nodes can reach (not ``0.0.0.0``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["NAME_LOCK", "NameInUse", "NameTaken", "Node", "NodeRegistry", "Queries", "claim"]

Rows = list[tuple[Any, ...]]


class Queries(Protocol):
    """What the registry needs of the store (PostgresStore.query)."""

    async def query(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> Rows: ...


class NameInUse(Exception):
    """Another live process is the node of that name: this one may not start."""


class NameTaken(Exception):
    """A heartbeat found the node's row written by another process (instance)."""


@dataclass(frozen=True)
class Node:
    name: str
    http: str  # base URL, http://host:port
    sip: str  # host:port
    #: This process's random id (only this node's own Node carries it).
    instance: str = ""


#: The advisory lock a process holds on its node name while it lives (the
#: two-key form: this class, the name's hash).  A hash shared by two names
#: only costs the shortcut in :func:`claim`.
NAME_LOCK = 0x70726573 + 2
_TRY_NAME_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
#: Write this process's row: a new one; or, with ``force`` (the name's last
#: process is gone), whatever was there; else only over a dead node's row.
_CLAIM = (
    "INSERT INTO nodes AS n (name, http, sip, last_seen, instance)"
    " VALUES (%(name)s, %(http)s, %(sip)s, now(), %(instance)s)"
    " ON CONFLICT (name) DO UPDATE SET http = excluded.http, sip = excluded.sip,"
    " last_seen = excluded.last_seen, instance = excluded.instance"
    " WHERE %(force)s OR n.last_seen < now() - make_interval(secs => %(dead)s)"
    " RETURNING 1"
)
_SEEN = (
    "SELECT instance, http, last_seen, extract(epoch FROM now() - last_seen)::float8"
    " FROM nodes WHERE name = %s"
)
#: A heartbeat writes the row only while it is this process's.
_HEARTBEAT = (
    "INSERT INTO nodes AS n (name, http, sip, last_seen, instance)"
    " VALUES (%s, %s, %s, now(), %s) ON CONFLICT (name) DO UPDATE"
    " SET http = excluded.http, sip = excluded.sip, last_seen = excluded.last_seen"
    " WHERE n.instance = excluded.instance RETURNING 1"
)
_LIVE = (
    "SELECT name, http, sip FROM nodes"
    " WHERE last_seen > now() - make_interval(secs => %s) ORDER BY name"
)
_LEAVE = "DELETE FROM nodes WHERE name = %s AND instance = %s"


def claim(
    run: Callable[[str, Any], Rows],
    me: Node,
    lease: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Make ``me.name`` this process's before it serves (module docstring).

    ``run`` runs a statement on the connection that stays open while the
    process lives (PostgresStore.run_locked).  Another process's row that
    is written again meanwhile is a live node: :class:`NameInUse`, within
    about half a lease period (its heartbeat).  A row that is not is dead
    after two lease periods, and taken.
    """
    dead = 2 * lease
    args = {**_row(me), "dead": dead, "force": False}
    if run(_TRY_NAME_LOCK, (NAME_LOCK, me.name))[0][0]:
        args["force"] = True  # no live session holds the name
    first: Any = None
    give_up = clock() + dead + lease
    while not run(_CLAIM, args):
        rows = run(_SEEN, (me.name,))
        if rows:
            instance, http, last_seen, age = rows[0]
            if first is None:
                first = last_seen
            elif last_seen != first or clock() > give_up:
                raise NameInUse(
                    f"{me.name!r} is the name of a live node ({http}, instance {instance},"
                    f" heard from {age:.1f} s ago): each node needs a name of its own"
                )
        sleep(min(lease / 4, 1.0))


def _row(me: Node) -> dict[str, str]:
    return {"name": me.name, "http": me.http, "sip": me.sip, "instance": me.instance}


class NodeRegistry:
    """This node's row of ``nodes``, and the live ones (``lease``: seconds)."""

    def __init__(self, store: Queries, me: Node, lease: float) -> None:
        self.store = store
        self.me = me
        self.lease = lease
        #: The live nodes as the last :meth:`live` saw them, by name.
        self.known: dict[str, Node] = {}

    async def heartbeat(self) -> None:
        """This node is alive; raises NameTaken when another process has its name."""
        me = self.me
        if not await self.store.query(_HEARTBEAT, (me.name, me.http, me.sip, me.instance)):
            raise NameTaken(f"node name {me.name!r} is another process's now")

    async def live(self) -> list[Node]:
        """The nodes alive now (heard from within two lease periods), by name."""
        rows = await self.store.query(_LIVE, (2 * self.lease,))
        nodes = [Node(name, http, sip) for name, http, sip in rows]
        self.known = {node.name: node for node in nodes}
        return nodes

    async def find(self, name: str) -> Node | None:
        """The live node called ``name``, or None when it is dead or unknown."""
        if name not in self.known:
            await self.live()
        return self.known.get(name)

    async def leave(self) -> None:
        """A clean stop: this node is no longer one of the live ones."""
        await self.store.query(_LEAVE, (self.me.name, self.me.instance))
