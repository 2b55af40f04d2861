"""The node registry: which nodes of the cluster are alive, and where they listen.

Each node writes its row of the store's ``nodes`` table — its name, its HTTP
base URL and SIP address, and ``last_seen`` — at every heartbeat
(:class:`~adapter.cluster.ownership.Ownership` beats every half lease).  A
node whose ``last_seen`` is older than two lease periods is dead: its leases
have run out by then too (adapter.cluster.leases), and the others take its
work over.  Times are the database server's clock (``now()``), never a
node's: the nodes' clocks need not agree.

The HTTP URL is how the others reach this node to pass it a REST call about
work it owns; it is ``[http] host:port`` as configured, so that address must
be one the other nodes can reach (not ``0.0.0.0``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Node", "NodeRegistry", "Queries"]


class Queries(Protocol):
    """What the registry needs of the store (PostgresStore.query)."""

    async def query(
        self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Node:
    name: str
    http: str  # base URL, http://host:port
    sip: str  # host:port


_HEARTBEAT = (
    "INSERT INTO nodes VALUES (%s, %s, %s, now()) ON CONFLICT (name) DO UPDATE"
    " SET http = excluded.http, sip = excluded.sip, last_seen = excluded.last_seen"
)
_LIVE = (
    "SELECT name, http, sip FROM nodes"
    " WHERE last_seen > now() - make_interval(secs => %s) ORDER BY name"
)
_LEAVE = "DELETE FROM nodes WHERE name = %s"


class NodeRegistry:
    """This node's row of ``nodes``, and the live ones (``lease``: seconds)."""

    def __init__(self, store: Queries, me: Node, lease: float) -> None:
        self.store = store
        self.me = me
        self.lease = lease
        #: The live nodes as the last :meth:`live` saw them, by name.
        self.known: dict[str, Node] = {}

    async def heartbeat(self) -> None:
        await self.store.query(_HEARTBEAT, (self.me.name, self.me.http, self.me.sip))

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
        await self.store.query(_LEAVE, (self.me.name,))
