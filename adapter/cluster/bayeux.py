"""A cluster node's Bayeux server: a shared hub fed by the relay, and the forwarder.

Made by ``make_app`` when the configuration has ``[cluster]``; without it the
adapter imports nothing of this package (nor of Redis).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from adapter.bayeux import BayeuxLimits, Hub
from adapter.bayeux.server import Authenticator
from adapter.cluster.bus import Bus
from adapter.cluster.forward import Forwarder
from adapter.cluster.peer import peer_client
from adapter.cluster.relay import Relay
from adapter.config import Config

__all__ = ["ClusterBayeux"]

#: Seconds a request passed on to another node may take beyond the connect timeout.
FORWARD_MARGIN = 10.0


class ClusterBayeux:
    def __init__(
        self,
        config: Config,
        limits: BayeuxLimits,
        authenticate: Authenticator,
        prepare: Callable[[str, str], Awaitable[object]],
        secret: bytes,
    ) -> None:
        """``secret`` signs the requests passed to other nodes (adapter.cluster.peer)."""
        assert config.cluster is not None
        node = config.cluster.node
        self.bus = Bus(config.cluster.redis, node, maxlen=limits.backlog_size)

        def new_client_id() -> str:
            # The node first: another node passes the session's requests here
            # (adapter.cluster.forward).  192 random bits, as a single adapter's.
            return f"{node}.{secrets.token_urlsafe(24)}"

        self.hub = Hub(
            authenticate, limits, prepare=prepare, shared=True, new_client_id=new_client_id
        )
        self.relay = Relay(self.bus, self.hub, ttl=limits.backlog_ttl)
        self.forward = Forwarder(
            node,
            client=peer_client(config, secret, timeout=limits.connect_timeout + FORWARD_MARGIN),
        )

    def start(self) -> None:
        self.relay.start()

    async def close(self) -> None:
        await self.forward.close()
        await self.relay.close()
