"""The pidf layer's one error hierarchy.

Two kinds of fault, kept apart so the adapter's edge can map them once:
a document that came from the network and cannot be understood
(`RemoteProtocolError`), and a value that came from our own caller — the REST
side — and breaks the model (`ValidationError`).
"""

from __future__ import annotations


class PidfError(Exception):
    """Base of every error raised by the pidf package."""


class RemoteProtocolError(PidfError):
    """A document received from the network is malformed, hostile or too large."""


class ValidationError(PidfError, ValueError):
    """A value handed to us (typically REST JSON) does not fit the model.

    `field` names the offending member in the JSON shape (e.g.
    ``"typeAndValue.communication.means[0].priority"``) so the REST layer can put
    it in the ``variables`` of an SVC0002 error.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
