"""The asyncio driver of the SIP user agent (the only part of sip/ that does I/O)."""

from .alarm import Alarm
from .endpoint import (
    AuthenticationFailed,
    Busy,
    EndpointStats,
    RequestFailed,
    RequestTimedOut,
    SipEndpoint,
)
from .handles import PublicationHandle, SubscriptionEvent, SubscriptionHandle

__all__ = [
    "Alarm",
    "AuthenticationFailed",
    "Busy",
    "EndpointStats",
    "PublicationHandle",
    "RequestFailed",
    "RequestTimedOut",
    "SipEndpoint",
    "SubscriptionEvent",
    "SubscriptionHandle",
]
