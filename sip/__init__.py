"""A SIP user agent for presence: sans-IO core (everything but ``sip.aio``).

See docs/sip-stack.md for the layers and how they fit together.
"""

from .digest import Challenge, Credentials
from .errors import LocalProtocolError, RemoteProtocolError, SipError
from .headers import CSeq, Event, RetryAfter, SubscriptionState, Via
from .message import Headers, Request, Response, StreamParser, parse_message
from .publication import (
    PublicationConfirmed,
    PublicationFailed,
    PublicationRemoved,
    RefreshPolicy,
)
from .subscription import NotifyReceived, SubscriptionAccepted, SubscriptionTerminated
from .transaction import TransactionTimings
from .uri import AbsoluteURI, NameAddr, SipURI
from .useragent import (
    BUSY,
    EVENTLIST_ACCEPT,
    Destination,
    MessageDropped,
    OptionsAnswered,
    OptionsFailed,
    RequestRefused,
    UserAgent,
    UserAgentEvent,
    Window,
)

__all__ = [
    "BUSY",
    "EVENTLIST_ACCEPT",
    "AbsoluteURI",
    "CSeq",
    "Challenge",
    "Credentials",
    "Destination",
    "Event",
    "Headers",
    "LocalProtocolError",
    "MessageDropped",
    "NameAddr",
    "NotifyReceived",
    "OptionsAnswered",
    "OptionsFailed",
    "PublicationConfirmed",
    "PublicationFailed",
    "PublicationRemoved",
    "RefreshPolicy",
    "RemoteProtocolError",
    "Request",
    "RequestRefused",
    "Response",
    "RetryAfter",
    "SipError",
    "SipURI",
    "StreamParser",
    "SubscriptionAccepted",
    "SubscriptionState",
    "SubscriptionTerminated",
    "TransactionTimings",
    "UserAgent",
    "UserAgentEvent",
    "Via",
    "Window",
    "parse_message",
]
