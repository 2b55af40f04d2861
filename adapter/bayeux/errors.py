"""The Bayeux layer's error hierarchy.

Local vs remote fault is explicit (the h11 split): a `RemoteProtocolError` means
a client sent something that is not Bayeux (malformed JSON, wrong types, an
invalid channel name); a `LocalProtocolError` means the adapter itself asked
the Bayeux layer for something invalid (delivering to another application's
channel, non-JSON data).
"""


class BayeuxError(Exception):
    """Base of every error raised by `adapter.bayeux`."""


class LocalProtocolError(BayeuxError):
    """The adapter asked for something the Bayeux layer must not do."""


class RemoteProtocolError(BayeuxError):
    """A client sent bytes or a message that are not valid Bayeux."""
