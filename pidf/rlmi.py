"""Resource lists: RLMI documents (RFC 4662 §5) and the state of one list.

A resource list server sends each NOTIFY as a multipart/related body whose
root is an RLMI document: the list's URI, a ``version`` that grows by one per
NOTIFY, whether it carries full or partial state, and per resource its
instances (the server's back-end subscriptions), each with a state and the
Content-ID of the part holding its document.

:class:`ListState` is the subscriber's picture of one list, sans I/O: feed it
each NOTIFY's RLMI document and parts in arrival order, and it says, per
member, what changed. Member documents are decoded with :func:`pidf.decode`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from lxml import etree

from pidf.document import Presence, decode
from pidf.errors import RemoteProtocolError
from pidf.parser import parse_document

__all__ = [
    "RLMI_NS",
    "Change",
    "Instance",
    "InstanceState",
    "ListState",
    "ListUpdate",
    "Member",
    "MemberChange",
    "Resource",
    "RlmiList",
    "parse_rlmi",
]

RLMI_NS = "urn:ietf:params:xml:ns:rlmi"
_LIST = f"{{{RLMI_NS}}}list"
_RESOURCE = f"{{{RLMI_NS}}}resource"
_INSTANCE = f"{{{RLMI_NS}}}instance"
_NAME = f"{{{RLMI_NS}}}name"
#: RFC 4662 §5.2: version is an unsigned integer; bounded so it stays an int we can compare.
_VERSION_MAX = 2**32 - 1
PIDF_TYPE = "application/pidf+xml"


class InstanceState(enum.Enum):
    """RFC 4662 §5.2: the state of one back-end subscription."""

    ACTIVE = "active"
    PENDING = "pending"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    state: InstanceState
    #: The reason of a terminated instance (RFC 6665 §4.2.2 tokens).
    reason: str | None
    #: Content-ID of the part with this instance's document, without ``<>``.
    cid: str | None


@dataclass(frozen=True, slots=True)
class Resource:
    uri: str
    names: tuple[str, ...]
    instances: tuple[Instance, ...]


@dataclass(frozen=True, slots=True)
class RlmiList:
    uri: str
    version: int
    full_state: bool
    names: tuple[str, ...]
    resources: tuple[Resource, ...]


def parse_rlmi(data: bytes) -> RlmiList:
    """Parse an RLMI document (RFC 4662 §5); RemoteProtocolError if it is not one."""
    root = parse_document(data)
    if root.tag != _LIST:
        raise RemoteProtocolError(f"not an RLMI document (root element {root.tag!r})")
    uri = _required(root, "uri")
    version_text = _required(root, "version")
    if not version_text.isascii() or not version_text.isdigit() or len(version_text) > 10:
        raise RemoteProtocolError(f"bad RLMI version: {version_text!r}")
    version = int(version_text)
    if version > _VERSION_MAX:
        raise RemoteProtocolError(f"RLMI version out of range: {version}")
    full_text = _required(root, "fullState")
    # XML Schema boolean: true/false/1/0.
    if full_text not in ("true", "false", "1", "0"):
        raise RemoteProtocolError(f"bad RLMI fullState: {full_text!r}")
    resources: list[Resource] = []
    seen: set[str] = set()
    for element in root.iterchildren(_RESOURCE):
        resource = _resource(element)
        if resource.uri in seen:
            raise RemoteProtocolError(f"resource listed twice: {resource.uri!r}")
        seen.add(resource.uri)
        resources.append(resource)
    return RlmiList(
        uri=uri,
        version=version,
        full_state=full_text in ("true", "1"),
        names=_names(root),
        resources=tuple(resources),
    )


def _required(element: etree._Element, name: str) -> str:
    value = element.get(name)
    if value is None or not value.strip():
        raise RemoteProtocolError(f"RLMI <{etree.QName(element).localname}> without {name}")
    return value.strip()


def _names(element: etree._Element) -> tuple[str, ...]:
    return tuple((n.text or "").strip() for n in element.iterchildren(_NAME))


def _resource(element: etree._Element) -> Resource:
    instances: list[Instance] = []
    ids: set[str] = set()
    for child in element.iterchildren(_INSTANCE):
        instance_id = _required(child, "id")
        if instance_id in ids:
            raise RemoteProtocolError(f"instance id listed twice: {instance_id!r}")
        ids.add(instance_id)
        state_text = _required(child, "state")
        try:
            state = InstanceState(state_text)
        except ValueError:
            raise RemoteProtocolError(f"bad instance state: {state_text!r}") from None
        cid = child.get("cid")
        if cid is not None:
            cid = cid.strip()
            if cid[:1] == "<" and cid[-1:] == ">":
                cid = cid[1:-1]
            cid = cid or None
        reason = child.get("reason")
        instances.append(Instance(instance_id, state, reason.strip() if reason else None, cid))
    return Resource(_required(element, "uri"), _names(element), tuple(instances))


# -- the state of one list ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """What the subscriber knows of one member of the list.

    ``state`` is None while the server lists the member with no instance —
    no back-end subscription state yet, or one the server does not show
    (Kamailio shows a pending or blocked member this way). ``presence`` is the
    decoded PIDF of the member's active instance, None when it has none.
    """

    uri: str
    names: tuple[str, ...] = ()
    state: InstanceState | None = None
    reason: str | None = None
    presence: Presence | None = None
    #: The PIDF bytes as received, to tell a new document from a repeated one.
    document: bytes | None = None


class Change(enum.Enum):
    ADDED = "added"
    REMOVED = "removed"
    STATE_CHANGED = "state-changed"
    DOCUMENT_CHANGED = "document-changed"


@dataclass(frozen=True, slots=True)
class MemberChange:
    """One member's change: ``changes`` says what, ``member`` is its new state
    (for REMOVED, its last state)."""

    uri: str
    changes: frozenset[Change]
    member: Member


@dataclass(frozen=True, slots=True)
class ListUpdate:
    """The outcome of one NOTIFY's RLMI document.

    ``ignored``: an older or repeated version, nothing applied. ``gap``: at
    least one NOTIFY was missed (RFC 4662 §5.2); the subscriber should refresh
    the subscription. ``errors`` name the member parts that could not be used
    (a missing or malformed part): those members keep their previous state.
    """

    version: int
    ignored: bool = False
    gap: bool = False
    changes: tuple[MemberChange, ...] = ()
    errors: tuple[str, ...] = ()


@dataclass
class ListState:
    """The subscriber's state of one resource list (RFC 4662 §5)."""

    uri: str | None = None
    version: int | None = None
    members: dict[str, Member] = field(default_factory=dict)
    #: A full-state document has been applied since the start or the last gap.
    complete: bool = False

    def apply(self, document: RlmiList, parts: Mapping[str, tuple[str, bytes]]) -> ListUpdate:
        """Apply one NOTIFY: its RLMI ``document`` and its other ``parts``
        (Content-ID without ``<>`` -> (media type, bytes)).

        RFC 4662 §5.2: a version not above the last one seen is ignored;
        full state replaces the member set, partial state updates only the
        resources it lists; a version more than one above the last means a
        lost NOTIFY, reported as ``gap``, as is partial state first (partial
        state is still applied: it is newer than what we hold for those
        members). Kamailio answers a refresh with partial state only, so a
        gap there is healed by a new subscription, not a refresh.
        """
        if self.uri is not None and document.uri != self.uri:
            raise RemoteProtocolError(f"RLMI for {document.uri!r}, expected {self.uri!r}")
        if self.version is not None and document.version <= self.version:
            return ListUpdate(document.version, ignored=True)
        if self.version is None:
            # RFC 4662 §5.2: the first NOTIFY carries full state; a partial
            # one first means the full state was lost.
            gap = not document.full_state
        else:
            gap = document.version > self.version + 1
        self.uri = document.uri
        self.version = document.version
        if document.full_state:
            self.complete = True
        elif gap:
            self.complete = False

        changes: list[MemberChange] = []
        errors: list[str] = []
        listed = set()
        for resource in document.resources:
            listed.add(resource.uri)
            old = self.members.get(resource.uri)
            new, error = _member(resource, old, parts)
            if error is not None:
                errors.append(error)
            kinds: set[Change] = set()
            if old is None:
                kinds.add(Change.ADDED)
            else:
                if (old.state, old.reason) != (new.state, new.reason):
                    kinds.add(Change.STATE_CHANGED)
                if old.document != new.document:
                    kinds.add(Change.DOCUMENT_CHANGED)
            self.members[resource.uri] = new
            if kinds:
                changes.append(MemberChange(resource.uri, frozenset(kinds), new))
        if document.full_state:
            for uri in [u for u in self.members if u not in listed]:
                gone = self.members.pop(uri)
                changes.append(MemberChange(uri, frozenset({Change.REMOVED}), gone))
        return ListUpdate(document.version, gap=gap, changes=tuple(changes), errors=tuple(errors))


def _member(
    resource: Resource, old: Member | None, parts: Mapping[str, tuple[str, bytes]]
) -> tuple[Member, str | None]:
    """The member a resource element describes, and an error for a part we could not use."""
    if not resource.instances:
        # Listed with no instance: no state for it (RFC 4662 §5.2 allows a
        # resource element with no instances).
        return Member(resource.uri, resource.names), None
    # Several instances (several back-end subscriptions) are rare; an active
    # one with a document wins, then any active, then the first.
    ranked = sorted(
        resource.instances,
        key=lambda i: (i.state is not InstanceState.ACTIVE, i.cid is None),
    )
    instance = ranked[0]
    member = Member(resource.uri, resource.names, instance.state, instance.reason)
    if instance.cid is None:
        return member, None
    part = parts.get(instance.cid)
    if part is None:
        return _keep(member, old), f"{resource.uri}: no part with Content-ID {instance.cid!r}"
    media, body = part
    if media != PIDF_TYPE:
        return _keep(member, old), f"{resource.uri}: part of type {media!r}, not PIDF"
    if old is not None and old.document == body:
        return Member(
            member.uri, member.names, member.state, member.reason, old.presence, body
        ), None
    try:
        presence = decode(body)
    except RemoteProtocolError as exc:
        return _keep(member, old), f"{resource.uri}: {exc}"
    return Member(member.uri, member.names, member.state, member.reason, presence, body), None


def _keep(member: Member, old: Member | None) -> Member:
    """``member`` with the old document kept (its new one could not be read)."""
    if old is None:
        return member
    return Member(member.uri, member.names, member.state, member.reason, old.presence, old.document)
