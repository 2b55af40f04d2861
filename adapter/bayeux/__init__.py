"""The Bayeux (CometD) server the adapter hosts at /cometd.

`server.py` is the sans-IO protocol core; `hub.py` drives it on asyncio and is
what the adapter uses (`Hub.deliver`); `endpoints.py` serves the long-polling
and WebSocket transports.
"""

from adapter.bayeux.channels import Channel
from adapter.bayeux.endpoints import bayeux_routes
from adapter.bayeux.errors import BayeuxError, LocalProtocolError, RemoteProtocolError
from adapter.bayeux.events import ConnectReleased, MessagesDropped, SessionExpired
from adapter.bayeux.hub import Hub
from adapter.bayeux.limits import BayeuxLimits
from adapter.bayeux.message import Delivery, Message, parse_batch
from adapter.bayeux.server import Authenticator, BayeuxServer, Counters, Received

__all__ = [
    "Authenticator",
    "BayeuxError",
    "BayeuxLimits",
    "BayeuxServer",
    "Channel",
    "ConnectReleased",
    "Counters",
    "Delivery",
    "Hub",
    "LocalProtocolError",
    "Message",
    "MessagesDropped",
    "Received",
    "RemoteProtocolError",
    "SessionExpired",
    "bayeux_routes",
    "parse_batch",
]
