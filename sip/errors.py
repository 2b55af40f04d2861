"""The SIP layer's errors: whose fault was it?

One hierarchy, in the manner of h11's ``_util.py``: a ``LocalProtocolError``
means our own code asked for something the protocol does not allow (a bug or
bad input from above); a ``RemoteProtocolError`` means the peer sent bytes we
cannot make sense of.  Everything that parses bytes from the network raises
``RemoteProtocolError`` and nothing else, so a caller that catches it can
answer 400 (or drop the datagram) and carry on.
"""

from __future__ import annotations

__all__ = ["SipError", "LocalProtocolError", "RemoteProtocolError"]


class SipError(Exception):
    """Base class of every error raised by ``sip/``."""


class LocalProtocolError(SipError):
    """We were asked to do something SIP does not allow."""


class RemoteProtocolError(SipError):
    """The network sent something that is not valid SIP (or not valid here)."""
