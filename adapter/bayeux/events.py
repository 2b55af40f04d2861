"""What the Bayeux core tells its driver (drained with `BayeuxServer.next_event`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


Event = ConnectReleased | MessagesDropped | SessionExpired
