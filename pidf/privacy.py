"""Strip decoded presence to what a watcher has been granted.

The adapter filters on its own side because the presence server does not
always do it: Kamailio 5.6 applies pres-rules transformations to
PUBLISH-triggered and initial NOTIFYs only, while NOTIFYs triggered by an XCAP
PUT or an in-dialog re-SUBSCRIBE carry the full unfiltered body (measured; see
docs/kamailio.md).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from pidf.document import Presence
from pidf.model import AttributeType, PresenceAttribute


def granted_types(decisions: Mapping[AttributeType, bool]) -> frozenset[AttributeType]:
    return frozenset(kind for kind, granted in decisions.items() if granted)


def filter_attributes(
    attributes: Collection[PresenceAttribute], granted: Collection[AttributeType]
) -> tuple[PresenceAttribute, ...]:
    """The attributes whose type is in `granted`, in their original order."""
    allowed = frozenset(granted)
    return tuple(a for a in attributes if a.type in allowed)


def filter_presence(presence: Presence, decisions: Mapping[AttributeType, bool]) -> Presence:
    """`presence` as the watcher with `decisions` may see it.

    The basic open/closed status (RFC 3863 §4.1.4) is kept for a watcher
    granted anything, as the presence server gives it: every rule that allows
    a watcher provides the status tuple (pidf.presrules), so that a SIP phone
    granted only Place still sees its buddy online.  Notes travel with their
    attribute.
    """
    granted = granted_types(decisions)
    return Presence(
        entity=presence.entity,
        attributes=filter_attributes(presence.attributes, granted),
        open=presence.open and bool(granted),
    )
