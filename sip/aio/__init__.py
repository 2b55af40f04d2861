"""The asyncio driver of the SIP user agent (the only part of sip/ that does I/O)."""

from .endpoint import AuthenticationFailed, RequestFailed, RequestTimedOut, SipEndpoint

__all__ = ["AuthenticationFailed", "RequestFailed", "RequestTimedOut", "SipEndpoint"]
