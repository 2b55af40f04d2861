"""Bayeux channel names, wildcard patterns and the subscription index.

Bayeux 1.0 §2.2: "Channel names consist of an initial "/" followed by an
optional sequence of path segments separated by a single slash "/" character."
§2.2.1: "A channel name may have a wildcard character '*' as the last segment"
(one segment) and "'**' ... matches multiple segments". §2.2.2: channels under
/meta/ are protocol channels, never broadcast; /service/ channels are
request/response and never broadcast either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from adapter.bayeux.errors import RemoteProtocolError

# Bayeux 1.0 §2.2: segments are tokens of alphanumerics and the marks
# "-" "_" "!" "~" "(" ")" "$" "@"; "." is accepted too because application
# instance IDs (the second segment of /bayeux/<id>) commonly contain it.
_SEGMENT = re.compile(r"[A-Za-z0-9\-_!~()$@.]+")
_MAX_SEGMENTS = 32
_MAX_LENGTH = 512

SINGLE = "*"
DEEP = "**"


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel name or (when the last segment is `*` / `**`) a pattern."""

    segments: tuple[str, ...]
    # Worked out once: a delivery channel is hashed (the subscription index)
    # and written out (the message) for every message published on it.
    name: str = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", "/" + "/".join(self.segments))
        object.__setattr__(self, "_hash", hash(self.segments))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def parse(cls, text: str) -> Channel:
        if not isinstance(text, str) or not text.startswith("/") or len(text) > _MAX_LENGTH:
            raise RemoteProtocolError(f"invalid channel name {text!r}")
        segments = tuple(text[1:].split("/"))
        if len(segments) > _MAX_SEGMENTS:
            raise RemoteProtocolError(f"invalid channel name {text!r}")
        for position, segment in enumerate(segments):
            is_last = position == len(segments) - 1
            if segment in (SINGLE, DEEP) and is_last:
                continue
            if not _SEGMENT.fullmatch(segment):
                raise RemoteProtocolError(f"invalid channel name {text!r}")
        return cls(segments)

    def __str__(self) -> str:
        return self.name

    @property
    def is_meta(self) -> bool:
        return self.segments[0] == "meta"

    @property
    def is_service(self) -> bool:
        return self.segments[0] == "service"

    @property
    def is_wild(self) -> bool:
        return self.segments[-1] in (SINGLE, DEEP)

    def matches(self, channel: Channel) -> bool:
        """Whether this pattern (or plain name) matches the concrete `channel`."""
        last = self.segments[-1]
        if last == DEEP:
            prefix = self.segments[:-1]
            return len(channel.segments) > len(prefix) and channel.segments[: len(prefix)] == prefix
        if last == SINGLE:
            prefix = self.segments[:-1]
            return (
                len(channel.segments) == len(self.segments)
                and channel.segments[: len(prefix)] == prefix
            )
        return self == channel

    def patterns(self) -> Iterator[Channel]:
        """Every name or pattern that matches this concrete channel.

        For /a/b/c: /a/b/c, /a/b/*, /a/b/**, /a/**, /**. Looking these up in
        an index costs O(depth) per delivery instead of a scan of all
        subscriptions.
        """
        yield self
        segments = self.segments
        yield Channel(segments[:-1] + (SINGLE,))
        for length in range(len(segments) - 1, -1, -1):
            yield Channel(segments[:length] + (DEEP,))

    def is_within(self, root: Channel) -> bool:
        """Whether every channel this name/pattern can match lies at or under `root`."""
        if len(self.segments) < len(root.segments):
            return False
        if self.segments[: len(root.segments)] != root.segments:
            return False
        # A wildcard must not stand in for a segment of the root itself:
        # /bayeux/* is not "within" /bayeux/alice.
        return not any(s in (SINGLE, DEEP) for s in self.segments[: len(root.segments)])


def application_root(app_id: str) -> Channel:
    """The channel subtree an application owns: /bayeux/<appInstanceID>."""
    return Channel(("bayeux", app_id))


# Concrete channels whose subscribers are remembered between changes of the
# index; past this many the memory starts again from empty.
_RESOLVED_MAX = 10_000


class SubscriptionIndex:
    """Which sessions subscribe to which channel names and patterns.

    The subscribers of a concrete channel are worked out once and remembered
    until the next subscribe or unsubscribe: subscriptions change at the pace
    of clients (re)connecting, deliveries at the pace of presence changes.
    """

    def __init__(self) -> None:
        self._by_pattern: dict[Channel, set[str]] = {}
        # By name: a str keeps its hash, a Channel's is a Python call per lookup.
        self._resolved: dict[str, frozenset[str]] = {}

    def add(self, pattern: Channel, client_id: str) -> None:
        self._by_pattern.setdefault(pattern, set()).add(client_id)
        self._resolved.clear()

    def discard(self, pattern: Channel, client_id: str) -> None:
        members = self._by_pattern.get(pattern)
        if members is None:
            return
        members.discard(client_id)
        if not members:
            del self._by_pattern[pattern]
        self._resolved.clear()

    def discard_all(self, patterns: Iterable[Channel], client_id: str) -> None:
        for pattern in patterns:
            self.discard(pattern, client_id)

    def subscribers(self, channel: Channel) -> frozenset[str]:
        found = self._resolved.get(channel.name)
        if found is not None:
            return found
        members: set[str] = set()
        for pattern in channel.patterns():
            matching = self._by_pattern.get(pattern)
            if matching:
                members |= matching
        if len(self._resolved) >= _RESOLVED_MAX:
            self._resolved.clear()
        found = self._resolved[channel.name] = frozenset(members)
        return found

    def __len__(self) -> int:
        return len(self._by_pattern)
