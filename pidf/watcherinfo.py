"""Watcher information documents (RFC 3858) and the state they describe.

A presence.winfo subscription (RFC 3857) delivers ``application/watcherinfo+xml``:
a full state first, then possibly partial updates. `WatcherInfoState` applies
them and tells the caller when a version was missed so it can refetch (by
re-subscribing, which yields a new full state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from lxml import etree

from pidf.errors import RemoteProtocolError
from pidf.parser import parse_document

WATCHERINFO_NS = "urn:ietf:params:xml:ns:watcherinfo"
CONTENT_TYPE = "application/watcherinfo+xml"


class WatcherStatus(Enum):
    """RFC 3858 §3: the status of a watcher's subscription."""

    PENDING = "pending"
    ACTIVE = "active"
    WAITING = "waiting"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Watcher:
    id: str
    uri: str
    status: WatcherStatus
    event: str
    display_name: str | None = None
    expiration: int | None = None
    duration_subscribed: int | None = None


@dataclass(frozen=True)
class WatcherList:
    """The watchers of one resource for one event package."""

    resource: str
    package: str
    watchers: tuple[Watcher, ...]


@dataclass(frozen=True)
class WatcherInfo:
    """One parsed watcherinfo document."""

    version: int
    full: bool
    lists: tuple[WatcherList, ...]

    @classmethod
    def parse(cls, body: bytes) -> WatcherInfo:
        root = parse_document(body)
        if root.tag != f"{{{WATCHERINFO_NS}}}watcherinfo":
            raise RemoteProtocolError(f"not a watcherinfo document (root {root.tag!r})")
        version = _non_negative(root.get("version"), "version")
        if version is None:
            raise RemoteProtocolError("watcherinfo without a version")
        state = root.get("state")
        if state not in ("full", "partial"):
            raise RemoteProtocolError(f"watcherinfo state {state!r} is neither full nor partial")
        lists = []
        for list_el in root.iterchildren(f"{{{WATCHERINFO_NS}}}watcher-list"):
            resource, package = list_el.get("resource"), list_el.get("package")
            if not resource or not package:
                raise RemoteProtocolError("watcher-list needs resource and package")
            watchers = tuple(
                _parse_watcher(w) for w in list_el.iterchildren(f"{{{WATCHERINFO_NS}}}watcher")
            )
            lists.append(WatcherList(resource, package, watchers))
        return cls(version=version, full=state == "full", lists=tuple(lists))


def _non_negative(text: str | None, what: str) -> int | None:
    if text is None:
        return None
    if not text.strip().isdigit():
        raise RemoteProtocolError(f"{what} {text!r} is not a non-negative integer")
    return int(text)


def _parse_watcher(el: etree._Element) -> Watcher:
    watcher_id, status, event = el.get("id"), el.get("status"), el.get("event")
    if not watcher_id or not status or not event:
        raise RemoteProtocolError("watcher needs id, status and event")
    try:
        parsed_status = WatcherStatus(status)
    except ValueError:
        raise RemoteProtocolError(f"unknown watcher status {status!r}") from None
    uri = (el.text or "").strip()
    if not uri:
        raise RemoteProtocolError(f"watcher {watcher_id!r} has no URI")
    return Watcher(
        id=watcher_id,
        uri=uri,
        status=parsed_status,
        event=event,
        display_name=el.get("display-name"),
        expiration=_non_negative(el.get("expiration"), "expiration"),
        duration_subscribed=_non_negative(el.get("duration-subscribed"), "duration-subscribed"),
    )


class Outcome(Enum):
    """What `WatcherInfoState.apply` did with a document."""

    APPLIED = "applied"
    #: An old or repeated version; ignored.
    STALE = "stale"
    #: A version was skipped (or a partial document came before any full
    #: one): the state is unknown until the next full document — refetch.
    GAP = "gap"


@dataclass
class WatcherInfoState:
    """The watchers of every resource, kept current from full and partial documents."""

    version: int | None = None
    _tables: dict[tuple[str, str], dict[str, Watcher]] = field(default_factory=dict)

    def apply(self, doc: WatcherInfo) -> Outcome:
        # RFC 3858 §4: a full document replaces everything; a partial one is
        # applied only on top of the version just before it, otherwise a
        # notification was lost and the table can no longer be trusted.
        if doc.full:
            if self.version is not None and doc.version <= self.version:
                return Outcome.STALE
            self._tables = {}
            self._merge(doc)
            self.version = doc.version
            return Outcome.APPLIED
        if self.version is None:
            return Outcome.GAP
        if doc.version <= self.version:
            return Outcome.STALE
        if doc.version != self.version + 1:
            self.version = None
            self._tables = {}
            return Outcome.GAP
        self._merge(doc)
        self.version = doc.version
        return Outcome.APPLIED

    def _merge(self, doc: WatcherInfo) -> None:
        for watcher_list in doc.lists:
            table = self._tables.setdefault((watcher_list.resource, watcher_list.package), {})
            for watcher in watcher_list.watchers:
                # A terminated subscription is no longer a watcher; it is
                # reported once so the subscriber learns that it went away.
                if watcher.status is WatcherStatus.TERMINATED:
                    table.pop(watcher.id, None)
                else:
                    table[watcher.id] = watcher

    @property
    def synchronised(self) -> bool:
        return self.version is not None

    def watchers(self, resource: str, package: str = "presence") -> tuple[Watcher, ...]:
        return tuple(self._tables.get((resource, package), {}).values())

    def resources(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._tables)
