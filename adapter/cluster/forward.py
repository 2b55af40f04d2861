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

A request that was passed on once is never passed on again, and one whose
node cannot be reached (gone, or no URL known) is answered here: ``402``,
handshake again.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

import httpx
from starlette.requests import Request
from starlette.responses import Response

from adapter.bayeux import Message
from adapter.cluster.bus import Bus, BusDown

__all__ = ["FORWARDED", "Forwarder", "node_of"]

logger = logging.getLogger(__name__)

#: Marks a request one node passed to another (its value: the sending node).
FORWARDED = "x-presence-adapter-node"


def node_of(client_id: str) -> str | None:
    """The node a clientId names (``<node>.<random>``), if it names one."""
    node, dot, _ = client_id.partition(".")
    return node if dot else None


class Forwarder:
    def __init__(
        self, bus: Bus, node: str, *, timeout: float, verify: ssl.SSLContext | bool = True
    ) -> None:
        self._bus = bus
        self._node = node
        self._urls: dict[str, str] = {}
        # A held connect is answered within the connect timeout; the margin
        # covers the hop and a slow node.
        self._client = httpx.AsyncClient(timeout=timeout, verify=verify)

    async def __call__(
        self, request: Request, body: bytes, messages: Sequence[Message]
    ) -> Response | None:
        """The owner node's answer to this request, or None: answer it here."""
        if FORWARDED in request.headers:
            return None
        client_id = next((m.client_id for m in messages if m.client_id), None)
        node = node_of(client_id) if client_id else None
        if node is None or node == self._node:
            return None
        url = await self._url(node)
        if url is None:
            return None
        headers = {FORWARDED: self._node, "content-type": "application/json"}
        authorization = request.headers.get("authorization")
        if authorization is not None:
            headers["authorization"] = authorization
        target = url.rstrip("/") + request.url.path
        try:
            answer = await self._client.post(target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("cluster: Bayeux request for node %s not passed on: %s", node, exc)
            self._urls.pop(node, None)
            return None
        return Response(
            answer.content,
            answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    async def _url(self, node: str) -> str | None:
        url = self._urls.get(node)
        if url is None:
            try:
                url = await self._bus.node_url(node)
            except BusDown:
                return None
            if url is not None:
                self._urls[node] = url
        return url

    async def close(self) -> None:
        await self._client.aclose()
