"""What the Bayeux core tells its driver (drained with `BayeuxServer.next_event`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapter.bayeux.channels import Channel


@dataclass(frozen=True, slots=True)
class ConnectReleased:
    """A held /meta/connect is answered: send `replies` on the transport holding `token`."""

    token: int
    replies: list[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class MessagesDropped:
    """A bounded queue overflowed; `client_id` is None for an application's backlog."""

    app_id: str
    client_id: str | None
    count: int


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """No /meta/connect arrived within maxInterval; the session is gone."""

    app_id: str
    client_id: str


@dataclass(frozen=True, slots=True)
class MessagesConfirmed:
    """Messages a session is done with: acknowledged (ack extension), sent (without
    it), or taken as read at a disconnect.  Told only by a shared server (a
    cluster node), whose messages live in Redis until confirmed."""

    app_id: str
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChannelsSubscribed:
    """A session subscribed to `patterns`.  Told only by a shared server: the
    application's backlog is in Redis, not in the server, and is fetched from there."""

    app_id: str
    patterns: tuple[Channel, ...]


Event = (
    ConnectReleased | MessagesDropped | SessionExpired | MessagesConfirmed | ChannelsSubscribed
)
