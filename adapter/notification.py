"""Presence notification schedules (Start/End Presence Notification), sans-IO.

Theory of operation
-------------------
A :class:`Schedule` is one Start Presence Notification: a correlator, where to
deliver (the application's Bayeux channel), which attributes and criteria
matter, and the Parlay X limits — ``frequency`` (minimum time between two
notifications), ``count`` (how many at most) and ``duration`` (how long).
It is fed presence states with :meth:`Schedule.offer` and time with
:meth:`Schedule.handle_timer`, and answers with the messages to deliver.  It
reads no clock: ``now`` is wall-clock seconds (epoch), because the deadline and
the last-sent instant must mean the same thing after a restart.

Coalescing: a change that arrives sooner than ``frequency`` after the last
notification is not dropped and not queued — the schedule remembers the
*latest* state and sends it when the interval ends, so a burst of changes
becomes one notification carrying the last state.

What a notification carries: the granted attributes (those the presentity
allowed *and* the schedule asked for) that differ from what this schedule
delivered last, and those delivered before that are gone now (withdrawn,
the publication ended, the presentity offline), each in its *withdrawal form*
(:func:`withdrawal`): ActivityNone, PlaceNone, PrivacyNone, SphereNone, a
Communication without means, an Other of the same name with an empty value.
A state that changes nothing the application may see sends nothing.
``criteria`` (Reachable / UnReachable / Busy), when given, further restricts
which states are notified; it is judged on what the watcher may see.  With
Reachable or UnReachable among them, a change of reachability is news by
itself: it is notified (when the new state meets the criteria) even if no
attribute in view changed, with what did change — possibly nothing.

The first period: with ``checkImmediate`` the current state is sent at once
and the interval runs from then; without it the interval runs from the start
("start at the end of the time period"), so the first notification comes
``frequency`` after the start at the earliest, carrying the changes since the
start (coalesced to the latest state).  With ``frequency`` 0 that is at once.

End: after ``count`` notifications, or at the deadline, one ``statusEnd``.
End Presence Notification (the application's own request) sends none.

A group (an RFC 4662 resource list): the states come per member
(``member=``), each notification names its member as ``presentity``, and
what was delivered, the reachability and the coalesced state are kept per
member (:class:`Track`).  ``frequency`` and ``count`` are the schedule's, across
members: a change inside the interval waits, coalesced per member, and when
the interval ends the latest state of every member that changed is sent, one
statusChanged each, each counted.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.presence_json import attribute_to_json, attributes_from_json, attributes_to_json
from pidf import (
    Activity,
    AttributeType,
    Communication,
    Other,
    Place,
    Presence,
    PresenceAttribute,
    Privacy,
    Sphere,
    filter_presence,
    format_instant,
)

__all__ = [
    "Criterion",
    "Delivery",
    "Schedule",
    "Track",
    "matches_criteria",
    "schedule_from_record",
    "schedule_to_record",
    "withdrawal",
]


class Criterion(enum.Enum):
    REACHABLE = "Reachable"
    UNREACHABLE = "UnReachable"
    BUSY = "Busy"


#: Activities that make a presentity Busy for the criteria (docs/rest.md, Semantics).
BUSY_ACTIVITIES = frozenset(
    {Activity.BUSY, Activity.ON_THE_PHONE, Activity.MEETING, Activity.DO_NOT_DISTURB}
)


#: Criteria about reachability itself: its change is news on its own.
REACHABILITY = frozenset({Criterion.REACHABLE, Criterion.UNREACHABLE})

#: The value that says an enumerated attribute is gone (README "Semantics
#: worth knowing"): the spec's own "…None" of each.
NONE_VALUES: dict[AttributeType, Activity | Place | Privacy | Sphere] = {
    AttributeType.ACTIVITY: Activity.ACTIVITY_NONE,
    AttributeType.PLACE: Place.PLACE_NONE,
    AttributeType.PRIVACY: Privacy.PRIVACY_NONE,
    AttributeType.SPHERE: Sphere.SPHERE_NONE,
}


def withdrawal(attribute: PresenceAttribute, now: float) -> dict[str, Any]:
    """The changedAttributes entry for ``attribute`` gone at ``now`` (epoch seconds).

    One form per type, so that an application tells "gone" from a value:
    the type's None value; a Communication without means (the model refuses
    an empty means in a Publish, where it would mean nothing); an Other of
    the same name with an empty value.  ``lastChange`` is when the adapter
    learned it — a NOTIFY without a body says no more.
    """
    when = datetime.fromtimestamp(now, UTC)
    value = attribute.value
    if isinstance(value, Communication):
        return {
            "lastChange": format_instant(when),
            "typeAndValue": {"unionElement": "Communication", "communication": {"means": []}},
        }
    if isinstance(value, Other):
        return attribute_to_json(PresenceAttribute(Other(value.name, ""), when))
    return attribute_to_json(PresenceAttribute(NONE_VALUES[attribute.type], when))


@dataclass(frozen=True)
class Delivery:
    """A message for the application's channel."""

    data: dict[str, Any]


def _key(attribute: PresenceAttribute) -> object:
    if isinstance(attribute.value, Other):
        return (attribute.type, attribute.value.name)
    return attribute.type


def matches_criteria(presence: Presence | None, criteria: Iterable[Criterion]) -> bool:
    """Whether ``presence`` (as the watcher may see it) meets any of ``criteria``."""
    wanted = set(criteria)
    if not wanted:
        return True
    if Criterion.REACHABLE in wanted and presence is not None and presence.open:
        return True
    if Criterion.UNREACHABLE in wanted and (presence is None or not presence.open):
        return True
    if Criterion.BUSY in wanted and presence is not None:
        activity = presence.get(AttributeType.ACTIVITY)
        if activity is not None and activity.value in BUSY_ACTIVITIES:
            return True
    return False


@dataclass(slots=True)
class Track:
    """What a group schedule knows of one member (a single presentity's
    schedule keeps the same three on itself)."""

    #: What was delivered last for the member, per attribute key.
    sent: dict[object, PresenceAttribute] = field(default_factory=dict)
    reachable: bool | None = None
    #: The member's latest state not yet delivered, and its grants.
    pending: tuple[Presence, frozenset[AttributeType]] | None = None


_Tracked = Any  # a Track, or the Schedule itself for its own presentity


@dataclass
class Schedule:
    correlator: str
    app_id: str
    endpoint: str
    watcher: str
    presentity: str
    interface_name: str = ""
    attributes: frozenset[AttributeType] = frozenset()  # empty = all
    criteria: frozenset[Criterion] = frozenset()  # empty = every change
    frequency: float = 0.0  # seconds
    remaining: int | None = None  # notifications left; None = unlimited
    deadline: float | None = None  # epoch seconds; None = no end
    #: When the current interval began: the last notification, or the start
    #: without checkImmediate.
    last_sent: float | None = None
    ended: bool = False
    #: What this schedule delivered last, per attribute key (a withdrawal
    #: removes the key).
    sent: dict[object, PresenceAttribute] = field(default_factory=dict)
    #: Whether the last state judged was reachable as the watcher may see it
    #: (None: no state yet) — a change of it is news for Reachable/UnReachable.
    reachable: bool | None = None
    #: The latest state not yet delivered (coalescing), and its grants.
    pending: tuple[Presence, frozenset[AttributeType]] | None = None
    #: A group's members, by URI: their own sent/reachable/pending.
    members: dict[str, Track] = field(default_factory=dict)
    #: The members whose track holds a coalesced state, in the order they
    #: changed (an ordered set: a change does not walk every member).
    changed: dict[str, None] = field(default_factory=dict)

    @property
    def has_pending(self) -> bool:
        """Whether a coalesced state waits to be sent (for any member)."""
        return self.pending is not None or bool(self.changed)

    def _track(self, member: str | None) -> _Tracked:
        if member is None:
            return self
        track = self.members.get(member)
        if track is None:
            track = self.members[member] = Track()
        return track

    def forget_member(self, member: str) -> None:
        """The member left the group: nothing of it is kept or sent."""
        self.members.pop(member, None)
        self.changed.pop(member, None)

    def drop_member_pending(self, member: str) -> None:
        """The member's coalesced state is not to be sent (it blocked the watcher)."""
        track = self.members.get(member)
        if track is not None:
            track.pending = None
        self.changed.pop(member, None)

    # -- inputs ------------------------------------------------------------

    def start(
        self, current: Presence | None, granted: frozenset[AttributeType], now: float,
        *, check_immediate: bool
    ) -> list[Delivery]:
        """The schedule begins; ``checkImmediate`` sends the current state at once.

        A group's schedule begins with no state of its own, then per member
        (:meth:`begin_member`).
        """
        if check_immediate and current is not None:
            return self._send(current, granted, now, everything=True)
        if not check_immediate:
            # The spec: false "requires the status notification to start at
            # the end of the time period" — the first interval begins now.
            self.last_sent = now
        if current is not None:
            # Without checkImmediate the current state is the baseline:
            # only later changes are notified.
            self.sent = {_key(a): a for a in self._visible(current, granted)}
            self.reachable = self._seen(current, granted).open
        return []

    def begin_member(
        self, current: Presence, granted: frozenset[AttributeType], now: float, member: str,
        *, check_immediate: bool
    ) -> list[Delivery]:
        """A group's schedule begins for one member whose state is known:
        ``checkImmediate`` sends it, otherwise it is the member's baseline
        (the group's period began in :meth:`start`)."""
        if self.ended:
            return []
        if check_immediate:
            return self._send(current, granted, now, everything=True, member=member)
        track = self._track(member)
        track.sent = {_key(a): a for a in self._visible(current, granted)}
        track.reachable = self._seen(current, granted).open
        return []

    def offer(
        self, presence: Presence, granted: frozenset[AttributeType], now: float,
        member: str | None = None,
    ) -> list[Delivery]:
        """A new state of the presentity (of a group: of ``member``) arrived."""
        if self.ended:
            return []
        if self.deadline is not None and now >= self.deadline:
            return self.handle_timer(now)
        if self.last_sent is not None and now < self.last_sent + self.frequency:
            # The latest wins; sent at the interval's end.
            self._track(member).pending = (presence, granted)
            if member is not None:
                self.changed[member] = None
            return []
        return self._send(presence, granted, now, member=member)

    def get_timer(self) -> float | None:
        if self.ended:
            return None
        deadlines = [self.deadline] if self.deadline is not None else []
        if self.last_sent is not None and self.has_pending:
            deadlines.append(self.last_sent + self.frequency)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Delivery]:
        if self.ended:
            return []
        out: list[Delivery] = []
        due = self.last_sent is None or now >= self.last_sent + self.frequency
        at_end = self.deadline is not None and now >= self.deadline
        if due or at_end:
            # Every member that changed, its latest state, at the same instant.
            owners: list[tuple[str | None, _Tracked]] = [(None, self)]
            owners += [(m, self.members[m]) for m in self.changed]
            for member, track in owners:
                if self.ended:
                    break
                if track.pending is not None:
                    presence, granted = track.pending
                    out += self._send(presence, granted, now, member=member)
        if at_end and not self.ended:
            out.append(self._end())
        return out

    def end_quietly(self) -> None:
        """End Presence Notification: over, without statusEnd (the spec's rule)."""
        self.ended = True
        self._drop_pending()

    def _drop_pending(self) -> None:
        self.pending = None
        for member in self.changed:
            self.members[member].pending = None
        self.changed.clear()

    # -- internals ---------------------------------------------------------

    def _allowed(self, granted: frozenset[AttributeType]) -> frozenset[AttributeType]:
        return granted if not self.attributes else granted & self.attributes

    def _visible(
        self, presence: Presence, granted: frozenset[AttributeType]
    ) -> list[PresenceAttribute]:
        allowed = self._allowed(granted)
        return [a for a in presence.attributes if a.type in allowed]

    @staticmethod
    def _seen(presence: Presence, granted: frozenset[AttributeType]) -> Presence:
        # Criteria are judged on the state as the watcher may see it: the
        # granted attributes, and the basic status under any grant, as SIP
        # watchers see it (pidf.filter_presence, RFC 3863 §4.1.4) — not on
        # this schedule's attributes filter, which only narrows what a
        # notification carries.
        return filter_presence(presence, {kind: True for kind in granted})

    def _send(
        self, presence: Presence, granted: frozenset[AttributeType], now: float,
        *, everything: bool = False, member: str | None = None
    ) -> list[Delivery]:
        track = self._track(member)
        track.pending = None
        if member is not None:
            self.changed.pop(member, None)
        visible = self._visible(presence, granted)
        # Judged on every state, delivered or not: UnReachable fires each
        # time the presentity goes from reachable to not.  Reachable is the
        # basic status under any grant (filter_presence); only criteria need
        # the whole state as seen.
        was_reachable = track.reachable
        if self.criteria:
            seen = self._seen(presence, granted)
            track.reachable = seen.open
            if not matches_criteria(seen, self.criteria):
                return []
        else:
            track.reachable = presence.open and bool(granted)
        if everything:
            changed, gone = visible, []
        else:
            changed = [a for a in visible if track.sent.get(_key(a)) != a]
            # Gone: delivered before, in view still, absent now.  An
            # attribute no longer granted is not "gone" — the presentity did
            # not withdraw it (notifySubscription tells the grant).
            present = {_key(a) for a in visible}
            allowed = self._allowed(granted)
            gone = [k for k, a in track.sent.items() if k not in present and a.type in allowed]
        reachability_news = (
            bool(self.criteria & REACHABILITY) and track.reachable != was_reachable
        )
        if not changed and not gone and not reachability_news:
            return []
        for attribute in changed:
            track.sent[_key(attribute)] = attribute
        entries = attributes_to_json(changed)
        entries += [withdrawal(track.sent.pop(k), now) for k in gone]
        self.last_sent = now
        out = [
            Delivery(
                {
                    "statusChanged": {
                        "correlator": self.correlator,
                        "presentity": self.presentity if member is None else member,
                        "changedAttributes": entries,
                    }
                }
            )
        ]
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                out.append(self._end())
        return out

    def _end(self) -> Delivery:
        self.ended = True
        self._drop_pending()
        return Delivery({"statusEnd": {"correlator": self.correlator}})


# -- persistence: a schedule as a JSON-able record ----------------------------------


def _presence_record(presence: Presence) -> dict[str, Any]:
    return {
        "entity": presence.entity,
        "open": presence.open,
        "attributes": attributes_to_json(presence.attributes),
    }


def _presence_from_record(record: dict[str, Any]) -> Presence:
    return Presence(
        record.get("entity"), attributes_from_json(record["attributes"]), bool(record["open"])
    )


def _pending_record(
    pending: tuple[Presence, frozenset[AttributeType]] | None,
) -> dict[str, Any] | None:
    if pending is None:
        return None
    presence, granted = pending
    return {
        "presence": _presence_record(presence),
        "granted": sorted(kind.value for kind in granted),
    }


def _pending_from_record(
    record: dict[str, Any] | None,
) -> tuple[Presence, frozenset[AttributeType]] | None:
    if not record:
        return None
    return (
        _presence_from_record(record["presence"]),
        frozenset(AttributeType(k) for k in record["granted"]),
    )


def schedule_to_record(schedule: Schedule) -> dict[str, Any]:
    pending = _pending_record(schedule.pending)
    members = {
        uri: {
            "sent": attributes_to_json(track.sent.values()),
            "reachable": track.reachable,
            "pending": _pending_record(track.pending),
        }
        for uri, track in schedule.members.items()
    }
    return {
        "correlator": schedule.correlator,
        "app_id": schedule.app_id,
        "endpoint": schedule.endpoint,
        "watcher": schedule.watcher,
        "presentity": schedule.presentity,
        "interface_name": schedule.interface_name,
        "attributes": sorted(kind.value for kind in schedule.attributes),
        "criteria": sorted(c.value for c in schedule.criteria),
        "frequency": schedule.frequency,
        "remaining": schedule.remaining,
        "deadline": schedule.deadline,
        "last_sent": schedule.last_sent,
        "sent": attributes_to_json(schedule.sent.values()),
        "reachable": schedule.reachable,
        "pending": pending,
        "members": members,
    }


def schedule_from_record(record: dict[str, Any]) -> Schedule:
    sent = attributes_from_json(record.get("sent", []))
    members = {}
    for uri, track in (record.get("members") or {}).items():
        members[str(uri)] = Track(
            {_key(a): a for a in attributes_from_json(track.get("sent", []))},
            track.get("reachable"),
            _pending_from_record(track.get("pending")),
        )
    return Schedule(
        correlator=record["correlator"],
        app_id=record["app_id"],
        endpoint=record["endpoint"],
        watcher=record["watcher"],
        presentity=record["presentity"],
        interface_name=record.get("interface_name", ""),
        attributes=frozenset(AttributeType(k) for k in record.get("attributes", [])),
        criteria=frozenset(Criterion(c) for c in record.get("criteria", [])),
        frequency=float(record.get("frequency", 0.0)),
        remaining=record.get("remaining"),
        deadline=record.get("deadline"),
        last_sent=record.get("last_sent"),
        sent={_key(a): a for a in sent},
        reachable=record.get("reachable"),
        pending=_pending_from_record(record.get("pending")),
        members=members,
        changed={uri: None for uri, track in members.items() if track.pending is not None},
    )
