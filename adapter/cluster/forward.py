"""A Bayeux request for a session another node holds is passed on to that node.

A session lives in one node's memory, and its clientId names that node
(``<node>.<random>``).  A long-polling request that reaches another node (a
load balancer with no stickiness) is sent on, as it came, to the node the
clientId names, whose answer is returned as is: a held /meta/connect is held
there, and this node only waits.  So a load balancer needs no stickiness
for Bayeux; with it, requests skip the extra hop.

A WebSocket is not passed on: it stays on the node it was opened to, and its
frames are answered there.  A connect over it for a session held elsewhere
gets ``402 unknown client`` with advice to handshake, which the client does
over the same WebSocket, on this node (the new session then receives the
application's backlog from its stream: nothing unconfirmed is lost).

Requests passed on are marked and signed (adapter.cluster.peer), and one
that was passed on once is never passed on again; one whose node cannot be
reached (dead, or not in the node registry) is answered here: ``402``,
handshake again.  Where a node listens is the node registry's
(adapter.cluster.nodes), as for the REST calls passed to an owner node.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import httpx
from starlette.requests import Request
from starlette.responses import Response

from adapter.bayeux import Message
from adapter.cluster.peer import FORWARDED, forwarded_by

__all__ = ["FORWARDED", "Forwarder", "node_of"]

logger = logging.getLogger(__name__)


class Located(Protocol):
    @property
    def http(self) -> str:
        """The node's HTTP base URL."""


#: A live node by its name (NodeRegistry.find), None when dead or unknown.
Locate = Callable[[str], Awaitable[Located | None]]


def node_of(client_id: str) -> str | None:
    """The node a clientId names (``<node>.<random>``), if it names one."""
    node, dot, _ = client_id.partition(".")
    return node if dot else None


class Forwarder:
    def __init__(self, node: str, *, client: httpx.AsyncClient) -> None:
        self._node = node
        #: Set once the node registry runs (before the first request is served).
        self.locate: Locate | None = None
        # Signed (adapter.cluster.peer.peer_client), with a timeout past the
        # connect timeout: a held connect is answered within it, plus the hop.
        self._client = client

    async def __call__(
        self, request: Request, body: bytes, messages: Sequence[Message]
    ) -> Response | None:
        """The owner node's answer to this request, or None: answer it here."""
        if forwarded_by(request) is not None or self.locate is None:
            return None
        client_id = next((m.client_id for m in messages if m.client_id), None)
        node = node_of(client_id) if client_id else None
        if node is None or node == self._node:
            return None
        found = await self.locate(node)
        if found is None:
            return None
        headers = {FORWARDED: self._node, "content-type": "application/json"}
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers["authorization"] = authorization
        target = found.http.rstrip("/") + request.url.path
        try:
            answer = await self._client.post(target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("cluster: Bayeux request for node %s not passed on: %s", node, exc)
            return None
        return Response(
            answer.content,
            answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    async def close(self) -> None:
        await self._client.aclose()
