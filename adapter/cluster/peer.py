"""Calls between the nodes of a cluster, and how a node knows that a call came from one.

A node passes a REST call to the node owning its work (adapter.cluster.ownership),
a Bayeux request to the node holding its session (adapter.cluster.forward), and
tells the others when a presentity's rules changed (``POST /cluster/rules``).
Each such call carries two headers, added by :class:`NodeAuth` (an httpx auth
flow, so that every client of a node signs alike):

``X-Presence-Forwarded-By: <node>``
    the node that sent it;
``X-Presence-Node-Signature: t=<unix seconds>,v1=<hex>``
    HMAC-SHA256 under the cluster's secret (:func:`cluster_secret`) of the
    method, the path and query as sent, the sending node, the time and the
    SHA-256 of the body.

:class:`PeerGate` (ASGI middleware, outermost) checks every request that carries
either header or goes to ``/cluster/`` before anything else sees it: one that
is not signed, or not signed right, or whose time is more than
:data:`MAX_SKEW` from this node's clock, is answered 403 POL0001 and counted
(``cluster_peer_calls_refused_total{reason}``); one that is signed right goes
on with its node's name in the scope (:func:`forwarded_by`).  Only then is a
call treated as passed on (never passed on again) or may it use
``/cluster/rules``.  So the nodes' clocks must agree within MAX_SKEW (NTP).

Over TLS (``[http] tls_cert``) a node calls the others at their https:// URL
with :func:`peer_client`'s context: it checks their certificates against
``[cluster] tls_ca`` and shows its own client certificate, for nodes whose
``[http] tls_client_ca`` asks for one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.config import Config, cluster_tls_context
from adapter.errors import PolicyError

if TYPE_CHECKING:
    from adapter.store.postgres import PostgresStore

__all__ = [
    "FORWARDED",
    "MAX_SKEW",
    "SIGNATURE",
    "NodeAuth",
    "PeerCheck",
    "PeerGate",
    "cluster_secret",
    "forwarded_by",
    "peer_client",
]

logger = logging.getLogger(__name__)

#: The sending node's name (adapter.cluster.ownership and .forward use it too).
FORWARDED = "X-Presence-Forwarded-By"
SIGNATURE = "X-Presence-Node-Signature"
#: Seconds a signature's time may be off this node's clock, either way.
MAX_SKEW = 60.0
#: Where a checked call's node is kept in the ASGI scope.
PEER = "presence.peer"
#: What a node-to-node path begins with (they are all checked).
CLUSTER_PATHS = "/cluster/"

_FORWARDED = FORWARDED.lower().encode()
_SIGNATURE = SIGNATURE.lower().encode()
_FORM = re.compile(r"t=(\d{1,12}),v1=([0-9a-f]{64})")
_NODE = re.compile(r"[A-Za-z0-9_-]{1,32}")  # config.NodeName's form


def _mac(secret: bytes, method: str, target: bytes, node: str, when: str, body: bytes) -> str:
    # An HMAC of the request rather than the secret itself in a header: a call seen
    # on the wire (plain HTTP between nodes) gives away neither the secret nor
    # a credential for another call, and can be replayed only within MAX_SKEW.
    message = b"\n".join((
        method.encode(), target, node.encode(), when.encode(),
        hashlib.sha256(body).hexdigest().encode(),
    ))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class NodeAuth(httpx.Auth):
    """Marks and signs each request a node sends another (the module docstring)."""

    requires_request_body = True

    def __init__(self, node: str, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self._secret = secret
        self._clock = clock

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        when = str(int(self._clock()))
        mac = _mac(self._secret, request.method, request.url.raw_path, self.node, when,
                   request.content)
        request.headers[FORWARDED] = self.node
        request.headers[SIGNATURE] = f"t={when},v1={mac}"
        yield request


class PeerCheck:
    """Checks a signature; counts the calls refused, by reason (for /metrics)."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock
        self.refused: dict[str, int] = {}

    def node(
        self, method: str, target: bytes, node: str | None, signature: str | None, body: bytes
    ) -> str:
        """The sending node when ``signature`` is right, else the reason it is not
        as a :class:`ValueError`."""
        if signature is None or node is None:
            raise ValueError("unsigned")
        found = _FORM.fullmatch(signature)
        if found is None or _NODE.fullmatch(node) is None:
            raise ValueError("malformed")
        when, mac = found.groups()
        if abs(self._clock() - int(when)) > MAX_SKEW:
            raise ValueError("stale")
        if not hmac.compare_digest(mac, _mac(self._secret, method, target, node, when, body)):
            raise ValueError("bad-signature")
        return node

    def count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class PeerGate:
    """Lets a call marked as coming from a node, or to /cluster/, through only when
    signed right (the module docstring)."""

    def __init__(self, app: ASGIApp, check: PeerCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        node = signature = None
        for name, value in scope["headers"]:
            if name == _FORWARDED:
                node = value.decode("latin-1")
            elif name == _SIGNATURE:
                signature = value.decode("latin-1")
        if node is None and signature is None and not scope["path"].startswith(CLUSTER_PATHS):
            await self.app(scope, receive, send)
            return
        body, more = await _body(receive)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        try:
            peer = self.check.node(scope["method"], target, node, signature, body)
        except ValueError as exc:
            reason = str(exc)
            self.check.count(reason)
            client = scope.get("client")
            logger.warning(
                "cluster: refused %s %s from %s as a call between nodes (%s)",
                scope["method"], scope["path"], f"{client[0]}:{client[1]}" if client else "-",
                reason,
            )
            error = PolicyError.policy_error("not a call from a node of this cluster")
            answer = JSONResponse(error.body(), error.status, dict(error.headers))
            await answer(scope, receive, send)
            return
        await self.app({**scope, PEER: peer}, _replay(body, more, receive), send)


async def _body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The request's body, and any message read past it (a disconnect)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), [message]
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), []


def _replay(body: bytes, more: list[Message], receive: Receive) -> Receive:
    """The body once, then the connection's own messages (a held Bayeux connect
    waits for its disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *more]

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def forwarded_by(request: Request) -> str | None:
    """The node that passed this call on, when it was checked to be one."""
    node: str | None = request.scope.get(PEER)
    return node


def cluster_secret(config: Config, store: PostgresStore) -> bytes:
    """The key the nodes sign their calls with: ``[cluster] secret`` when given
    (then the same on every node), else the one the nodes share in the store.

    Every node already trusts the store with everything (accounts' state,
    leases), so a secret kept there adds no party to trust; it only keeps out
    whoever reaches a node's HTTP port but not the store.
    """
    assert config.cluster is not None
    if config.cluster.secret is not None:
        return config.cluster.secret.encode()
    return store.cluster_secret()


def peer_client(config: Config, secret: bytes, *, timeout: float) -> httpx.AsyncClient:
    """An HTTP client for calls to the other nodes: signed with ``secret``, and over
    TLS with the cluster's certificates when the nodes serve HTTPS."""
    assert config.cluster is not None
    tls = cluster_tls_context(config)
    return httpx.AsyncClient(
        timeout=timeout,
        auth=NodeAuth(config.cluster.node, secret),
        verify=tls if tls is not None else True,
    )
