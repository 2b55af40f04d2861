"""Tunable limits of the Bayeux server.

The adapter builds them from its configuration's ``[bayeux]`` table
(adapter.config.BayeuxSettings: the same names and kinds, each optional).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class BayeuxLimits:
    """Times are in seconds; Bayeux advice carries them in milliseconds."""

    # advice.timeout: how long a /meta/connect is held when nothing is queued.
    connect_timeout: float = 30.0
    # advice.interval: how long a client waits after a connect reply before the next.
    interval: float = 0.0
    # A session with no /meta/connect for this long (after its last reply) is expired.
    max_interval: float = 10.0
    # Messages queued per session (sent-but-unacknowledged ones included);
    # beyond it the oldest are dropped and counted.
    queue_size: int = 1000
    # Messages kept per application while no session of it subscribes to their channel.
    backlog_size: int = 1000
    backlog_ttl: float = 3600.0
    # Largest HTTP body or WebSocket frame accepted, in bytes.
    max_body: int = 256 * 1024
    # Bound on what one authenticated application can make the adapter hold.
    max_sessions_per_app: int = 64
    max_subscriptions_per_session: int = 256

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            zero_ok = field.name == "interval"
            if value < 0 or (value == 0 and not zero_ok):
                raise ValueError(f"BayeuxLimits.{field.name} must be positive, got {value!r}")
