"""The asyncio driver of the SIP user agent (the only part of sip/ that does I/O)."""

from .endpoint import RequestFailed, RequestTimedOut, SipEndpoint

__all__ = ["RequestFailed", "RequestTimedOut", "SipEndpoint"]
