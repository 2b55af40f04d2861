"""The watches of the watcher side, as one sans-IO machine.

Theory of operation
-------------------
A :class:`Watch` is one watcher address watching one presentity through one
SIP presence subscription (RFC 6665).  Subscribe Presence creates it and keeps
it until the application ends it; Start Presence Notification reuses it, or
creates one that lives as long as its notification schedules.
:class:`WatchMachine` holds all of them with their indexes.  It performs no
I/O and reads no clock: API calls and events come in with ``now`` (wall-clock
seconds: schedule deadlines must mean the same after a restart), and each
call returns the actions to perform — :class:`Subscribe`,
:class:`Unsubscribe`, :class:`ReadRules`, :class:`Deliver`, store writes, and
:class:`Settled` when a watch stops waiting for its rules.  Its deadlines
(notification schedules, re-subscription back-off, the write-behind of
schedules' progress) share one :class:`~sip.timers.TimerHeap`;
:meth:`WatchMachine.get_timer` is the earliest and
:meth:`WatchMachine.handle_timer` runs them.  ``adapter/watcher.py`` is the
asyncio driver.

Two states per watch.  ``state`` is what the application sees, moved by
NOTIFYs (table ``_ON_NOTIFY``) and by endings; ``dialog`` is where the SIP
subscription is (table ``_DIALOG``)::

    dialog       sent      accepted  refused  lost         blocked  back   gave up  dropped
    -----------  --------  --------  -------  -----------  -------  -----  -------  -------
    NONE         STARTING  ·         ·        BACKING_OFF  ·        ·      ·        NONE
    STARTING     ·         LIVE      NONE     ·            ·        NONE   ·        NONE
    LIVE         ·         LIVE      ·        BACKING_OFF  NONE     ·      ·        NONE
    BACKING_OFF  STARTING  ·         ·        ·            ·        ·      NONE     NONE

(``·``: no such step.)  A subscription that ends while STARTING is left to
whoever awaits the outcome of its SUBSCRIBE; one that is LIVE ends in a
block (``rejected`` → ``subscriptionEnded`` "Blocked") or is subscribed again
after :data:`RESUBSCRIBE_DELAYS`; a re-subscription the driver does not send
because the server is down goes ``back`` to NONE (the liveness probe
re-subscribes it when the server returns).  When every attempt fails the
application hears ``subscriptionEnded`` "Timeout".

What the watcher may see is what the presentity granted it.  Kamailio 5.6
sends unfiltered bodies on some NOTIFYs (after an XCAP change, on in-dialog
re-SUBSCRIBE — docs/kamailio.md), so every state is filtered here with
decisions from the presentity's pres-rules (:mod:`adapter.rules`): exact when
the rules are readable and name the watcher; when they are readable and do
not name it, every requested attribute is taken as granted.  A failed read
never widens the decisions: a watch whose rules were readable before keeps
its decisions (or shows nothing while a change made here is unread), and one
whose rules were never read shows nothing — it goes on waiting, holding what
comes, and the rules are read again after :data:`REREAD_DELAYS` (a back-off
per presentity, so that an XCAP outage is no storm of reads).

One path for every NOTIFY: its state and body are taken at once, then offered
to the schedules — unless the watch *waits* for its rules: after it became
active, after this adapter changed the presentity's rules, or while a REST
call needs decisions that are not fresh.  A waiting watch holds what comes
(NOTIFYs, schedule starts) and takes it in order once the read is in.
Decisions that merely aged are read again *beside* the NOTIFYs, not before
them, and only for a NOTIFY that changes the state (the one answering a
refresh repeats it).  A Start made before a new dialog's first NOTIFY waits
for it: that NOTIFY tells the state the server had when it accepted the
subscription (RFC 6665 §4.2.1.2), the Start's own, however late it comes.

Groups (RFC 4662 resource lists).  Every watch subscribes with
``Supported: eventlist``; a server that is a resource list server for the
URI answers with ``Require: eventlist`` and multipart/related NOTIFYs of an
RLMI document and a PIDF part per member (:mod:`pidf.rlmi`).  Such a watch is
a *group watch* (``is_list``): it holds one SIP subscription, its schedules
and reference, and a *member watch* per listed URI (``listed``).  A member
watch is a :class:`Watch` of its own for everything a presentity needs — its
state moved by its RLMI instance (active, pending, or none yet), its decisions
from the member's pres-rules for the watcher, its waiting and held news — but
it has no dialog: its states go to the group's schedules as the member's
(:meth:`adapter.notification.Schedule.offer` ``member=``) and its decisions to
the group's reference as a notifySubscription naming the member.  A member
whose instance is terminated "rejected", or whose rules turn out to block the
watcher, hears subscriptionEnded "Blocked" for that member; one that a full
state no longer lists hears subscriptionEnded "Removed".  A URI that is not a
list (a plain PIDF answer) is a single watch, as it always was.

What Kamailio's rls does not tell — a member removed from the list, a
member's block or allow written to XCAP, a change its notifier left out —
a live list's periodic check (:data:`LIST_CHECK`) finds: :class:`ReadList`
compares the watcher's rls-services document with the list (a difference
re-subscribes it), the members' rules are read again (shared with the
member's other lists; a blocked member allowed again is pending once more),
and :class:`RefreshList`, once the list is quiet, makes the RLS send every
member's state again.
"""

from __future__ import annotations

import enum
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from adapter.notification import Delivery, Schedule
from adapter.rules import RulesCache, RulesRead, decisions_ttl
from pidf import AttributeType, PidfError, Presence, decode, filter_presence
from pidf.presrules import PresRules, SubHandling
from pidf.rlmi import InstanceState, ListState, parse_rlmi
from pidf.rlmi import Member as ListMember
from sip import NotifyReceived, SubscriptionTerminated
from sip.errors import LocalProtocolError
from sip.errors import RemoteProtocolError as SipProtocolError
from sip.multipart import parse_multipart
from sip.timers import TimerHeap

__all__ = [
    "LIST_CHECK",
    "LIST_HEAL_AFTER",
    "LIST_QUIET",
    "REREAD_DELAYS",
    "RESUBSCRIBE_DELAYS",
    "SCHEDULE_SAVE_DELAY",
    "Deliver",
    "Dialog",
    "DuplicateCorrelator",
    "ForgetSchedule",
    "GroupPresentity",
    "ForgetWatch",
    "Member",
    "NoSubscription",
    "NotAuthorized",
    "ReadList",
    "ReadRules",
    "Reference",
    "RefreshList",
    "SaveProgress",
    "SaveSchedule",
    "SaveWatch",
    "Settled",
    "Subscribe",
    "UnknownCorrelator",
    "Unsubscribe",
    "Watch",
    "WatchAction",
    "WatchMachine",
    "WatchState",
]

logger = logging.getLogger("adapter.watcher")

#: Re-subscribe attempts after an unexpected end, and the waits between them.
RESUBSCRIBE_DELAYS = (0.5, 2.0, 5.0)
#: Waits before a presentity's rules are read again after a failed read left
#: watches that never had decisions holding their news; the last repeats.
REREAD_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0, 60.0)
#: Waits between a list's re-subscriptions (to heal a gap or see an edit)
#: that follow each other, and the quiet time after which one is at once again.
RELIST_DELAYS = (0.0, 1.0, 5.0, 30.0, 120.0)
RELIST_QUIET = 300.0
#: How long after a list's full state its members may come without state
#: before the list is subscribed again, once, for the RLS to send them
#: (Kamailio's rls can leave members out of its NOTIFYs for good:
#: tests/data/rls/README.md).
LIST_HEAL_AFTER = 30.0
#: Seconds between the checks of a group watch's list (``[sip] list_check``;
#: 0: none): the owner's rls-services document is read for an edit the RLS
#: did not tell, the members' rules for a block or an allow it did not tell,
#: and the list subscription is refreshed, for the RLS to send every member's
#: state again (Kamailio's rls can leave a change out of its NOTIFYs:
#: tests/data/rls/README.md).
LIST_CHECK = 30.0
#: How long a list must have sent nothing before a check refreshes it.  The
#: refresh makes Kamailio ask every member's state anew, and rls takes those
#: answers and the NOTIFYs of changes in whatever order its workers finish:
#: a change under way then can be overtaken by the state before it
#: (tests/data/rls/README.md).  A busy list is refreshed once quiet.
LIST_QUIET = 5.0
#: How long after a refresh a member's document may be an answer to it.  One
#: that goes back to an earlier document of the member's may be that race's
#: older state: it is held, and the list refreshed once more; told only if
#: the second refresh sends it again (it was the member's own change back).
REFRESH_WINDOW = 15.0
#: Longest a schedule's progress after a notification — remaining count,
#: last-sent instant and state, a coalesced state — waits to be written: a
#: schedule is written once per period whatever its notifications (README
#: "What survives what"), not once per notification.
SCHEDULE_SAVE_DELAY = 1.0
#: News a watch keeps while its rules are read (or unreadable: an XCAP
#: outage).  Past it a document replaces the last one held in the same
#: state, so a long outage keeps each watch's latest state, not its history.
HELD_LIMIT = 32
ALL_ATTRIBUTES = tuple(AttributeType)


class NoSubscription(LookupError):
    """The watcher has no subscription to that presentity."""


class NotAuthorized(PermissionError):
    """The subscription exists but the presentity has not authorised it (or blocked it)."""


class GroupPresentity(ValueError):
    """The presentity is a group (a resource list): it has no presence of its own."""


class DuplicateCorrelator(ValueError):
    pass


class UnknownCorrelator(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Reference:
    """Where an application wants its notifications (the spec's ``reference``)."""

    correlator: str
    endpoint: str
    interface_name: str = ""


class WatchState(enum.Enum):
    PENDING = "pending"  # not authorised (yet), or not subscribed yet
    ACTIVE = "active"
    BLOCKED = "blocked"
    ENDED = "ended"


class Dialog(enum.Enum):
    NONE = "none"
    STARTING = "starting"  # the initial SUBSCRIBE has no final answer yet
    LIVE = "live"
    BACKING_OFF = "backing-off"  # ended unexpectedly; a re-subscribe is due


class _Step(enum.Enum):
    SENT = enum.auto()
    ACCEPTED = enum.auto()
    REFUSED = enum.auto()
    LOST = enum.auto()
    BLOCKED = enum.auto()
    BACK = enum.auto()  # the server is down: wait for the liveness probe
    GAVE_UP = enum.auto()
    DROPPED = enum.auto()


_DIALOG: dict[tuple[Dialog, _Step], Dialog] = {
    (Dialog.NONE, _Step.SENT): Dialog.STARTING,
    # A refused SUBSCRIBE made by the recovery is retried like a lost one.
    (Dialog.NONE, _Step.LOST): Dialog.BACKING_OFF,
    (Dialog.STARTING, _Step.ACCEPTED): Dialog.LIVE,
    (Dialog.STARTING, _Step.REFUSED): Dialog.NONE,
    (Dialog.STARTING, _Step.BACK): Dialog.NONE,
    (Dialog.LIVE, _Step.ACCEPTED): Dialog.LIVE,
    (Dialog.LIVE, _Step.LOST): Dialog.BACKING_OFF,
    (Dialog.LIVE, _Step.BLOCKED): Dialog.NONE,
    (Dialog.BACKING_OFF, _Step.SENT): Dialog.STARTING,
    (Dialog.BACKING_OFF, _Step.GAVE_UP): Dialog.NONE,
    **{(dialog, _Step.DROPPED): Dialog.NONE for dialog in Dialog},
}

#: A NOTIFY's Subscription-State (RFC 6665 §4.1.3) moves the watch; a
#: ``terminated`` one moves nothing (SubscriptionTerminated follows), and a
#: blocked or ended watch takes none.
_ON_NOTIFY: dict[tuple[WatchState, str], WatchState] = {
    (WatchState.PENDING, "pending"): WatchState.PENDING,
    (WatchState.PENDING, "active"): WatchState.ACTIVE,
    (WatchState.ACTIVE, "pending"): WatchState.PENDING,
    (WatchState.ACTIVE, "active"): WatchState.ACTIVE,
}


def _index_key(watch: Watch) -> Any:
    # A member watch beside the watcher's own watch of the same URI.
    return watch.watcher if watch.group is None else (watch.watcher, watch.group.presentity)


def _is_list(event: NotifyReceived) -> bool:
    return (event.content_type or "").lower().startswith("multipart/related")


def _same_state(last: _Held, item: _HeldNotify | _MemberNews) -> bool:
    """Whether ``item`` is news of the same subscription state as ``last``,
    so that its document supersedes ``last``'s.  A list's NOTIFY never is:
    its RLMI versions follow each other (RFC 4662 §5.2)."""
    if isinstance(item, _HeldNotify):
        if not isinstance(last, _HeldNotify) or _is_list(item.event) or _is_list(last.event):
            return False
        old, new = last.event, item.event
        return (old.subscription_id == new.subscription_id
                and old.state.state.lower() == new.state.state.lower()
                and old.content_type == new.content_type)
    if not isinstance(last, _MemberNews):
        return False
    before, after = last.member, item.member
    return (before.state, before.reason, before.names) == (after.state, after.reason, after.names)


def _document(item: _Held) -> bytes | None:
    if isinstance(item, _HeldNotify):
        return item.event.body
    assert isinstance(item, _MemberNews)
    return item.member.document


def _take_document(member: Member, item: ListMember) -> bool:
    """A list member's document (decoded by :class:`pidf.rlmi.ListState`) into
    the member watch's state; whether a new state was read."""
    if item.document is None:
        # Active with no document: nothing published (as a NOTIFY without a body).
        member.presence = Presence(member.presentity, (), False)
        member.body_digest = None
        return True
    if item.presence is None:
        return False  # unreadable: ListState logged it and kept nothing new
    digest = hash(item.document)
    if digest != member.body_digest or member.presence is None:
        if member.body_digest is not None and member.body_digest != digest:
            member.earlier = (*member.earlier[-3:], member.body_digest)
        member.presence, member.body_digest = item.presence, digest
    return True


def _allows(rules: PresRules, watcher: str) -> bool:
    rule = rules.rule_for(watcher)
    return rule is not None and rule.sub_handling is SubHandling.ALLOW


def _step(dialog: Dialog, step: _Step) -> Dialog:
    try:
        return _DIALOG[dialog, step]
    except KeyError:
        raise LocalProtocolError(f"watch dialog {dialog.name} cannot take {step.name}") from None


class _Empty(dict[Any, Any]):
    """The empty dict every watch shares until it has an entry (most never
    have: only a group has members listed, only a Start adds a schedule).
    Changing it in place is a bug: it raises instead of reaching every watch."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the shared empty dict is not to be changed; give the watch its own")

    __setitem__ = __delitem__ = setdefault = update = pop = popitem = clear = _refuse


_EMPTY: dict[Any, Any] = _Empty()


def _own(table: dict[str, Any]) -> dict[str, Any]:
    """A dict of the watch's own in place of the shared empty one."""
    return {} if table is _EMPTY else table


@dataclass(eq=False, slots=True)
class Member:
    """One presentity's state as the watch last heard it."""

    presentity: str
    presence: Presence | None = None
    #: hash() of the PIDF body ``presence`` was decoded from: the NOTIFY that
    #: answers a refresh repeats it, and is not decoded again.
    body_digest: int | None = None
    #: The digests of the documents before it, the latest last (a few).
    earlier: tuple[int, ...] = ()


# -- what waits for the rules ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Offer:
    """A NOTIFY taken, its state still to be offered to the schedules."""

    fresh: bool
    received: float


@dataclass(frozen=True, slots=True)
class _HeldNotify:
    event: NotifyReceived
    received: float


@dataclass(frozen=True, slots=True)
class _Start:
    schedule: Schedule
    check_immediate: bool


@dataclass(frozen=True, slots=True)
class _MemberNews:
    """A member's new RLMI state (instance and document), for its member watch."""

    member: ListMember
    received: float


_Held = _Offer | _HeldNotify | _Start | _MemberNews

_T = TypeVar("_T")
_NEVER = float("-inf")


class _Rare(Generic[_T]):
    """A field of :class:`Watch` that few watches set (a group's list, a
    re-subscription's back-off, what waits for the rules).  Its value lives
    in the watch's ``rare`` dict, made when one such field is set and dropped
    when all are back to their defaults: a held single watch, the usual one,
    keeps one empty slot for them all.  A value is its default when it *is*
    the default object (an own empty dict in place of the shared one is not)."""

    __slots__ = ("default", "name")

    def __init__(self, default: _T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, watch: None, owner: type | None = None) -> _Rare[_T]: ...
    @overload
    def __get__(self, watch: Watch, owner: type | None = None) -> _T: ...
    def __get__(self, watch: Watch | None, owner: type | None = None) -> _T | _Rare[_T]:
        if watch is None:
            return self
        rare = watch.rare
        if rare is None:
            return self.default
        return rare.get(self.name, self.default)  # type: ignore[no-any-return]

    def __set__(self, watch: Watch, value: _T) -> None:
        rare = watch.rare
        if value is self.default:
            if rare is not None and self.name in rare:
                del rare[self.name]
                if not rare:
                    watch.rare = None
            return
        if rare is None:
            rare = watch.rare = {}
        rare[self.name] = value


@dataclass(eq=False, slots=True)
class Watch:
    watcher: str
    presentity: str
    app_id: str
    application: str = ""
    attributes: frozenset[AttributeType] = frozenset()  # asked for; empty = all
    reference: Reference | None = None  # from Subscribe Presence
    state: WatchState = WatchState.PENDING
    dialog: Dialog = Dialog.NONE
    subscription_id: int | None = None
    #: The watched presentity's state as last heard (None: nothing yet).
    #: A group watch's members have each their own member watch (``listed``).
    member: Member | None = None
    decisions: dict[AttributeType, bool] | None = None
    decisions_sent: tuple[tuple[AttributeType, bool], ...] | None = None
    rule_blocks: bool = False  # the presentity's rule blocks this watcher
    #: This adapter changed the presentity's rules and has not read them back:
    #: the decisions held may still grant what was just withdrawn.
    rules_unconfirmed: bool = False
    #: A read failed while the decisions are not to be trusted (a change made
    #: here is unread) or were never read: nothing is shown until a read
    #: succeeds.  A watch that never had decisions goes on waiting meanwhile
    #: (:meth:`WatchMachine.held_unread`).
    withheld: bool = False
    #: The read the decisions came from: its serial and when it began.
    read_serial: int = 0
    read_at: float = float("-inf")
    #: The decisions need a read after this mark (an activation, a change
    #: made here); None: they are confirmed and merely age.
    stale_after: int | None = 0
    #: The watch became active at the server: its decisions may come from a
    #: read within the age limit that allows the watcher (the server's
    #: activation says the same), shared with the presentity's other watches
    #: and a member's other lists.
    activated: bool = False
    #: Waiting for a read of the rules: what comes meanwhile is held.
    waiting: bool = False
    #: Aged decisions are being read again beside the NOTIFYs.
    revalidating: bool = False
    #: What came while the rules were read, in order; None when nothing
    #: waits (the usual case: a held subscription keeps no queue).  A list:
    #: a few items wait at most, and an empty deque is far larger than a list.
    held: list[_Held] | None = None
    schedules: dict[str, Schedule] = field(default_factory=lambda: _EMPTY)
    #: The state last offered to the schedules in full and the decisions
    #: it was offered and told under (None: none since the last change): a
    #: NOTIFY that repeats it is news to no one (WatchMachine._repeats).
    offered: Presence | None = None
    offered_under: dict[AttributeType, bool] | None = None
    #: The server answered as a resource list server: a group watch.
    is_list: bool = False
    #: A member watch's group watch.
    group: Watch | None = field(default=None, repr=False)
    #: The fields below that differ from their defaults (see _Rare), or None.
    rare: dict[str, Any] | None = field(default=None, repr=False)

    # Fields few watches set: a held single watch keeps them all in ``rare``.
    resume = _Rare["_Held | None"](None)
    #: Schedules added and not begun yet (they wait for the rules): no state
    #: is offered to them before their start.
    unstarted = _Rare["set[str] | None"](None)
    #: The new dialog's first NOTIFY has not come (None: it has): the Starts
    #: made meanwhile, which wait for it (:meth:`WatchMachine._start`).
    opening = _Rare["list[_Start] | None"](None)
    #: Waits before the re-subscribe attempts still to come.
    backoff = _Rare["tuple[float, ...]"](())
    why = _Rare[str]("")
    #: A group watch's list as the current dialog's RLMI documents told it.
    rlmi = _Rare["ListState | None"](None)
    #: The members that list holds with no state (no instance) yet.
    stateless = _Rare["set[str] | None"](None)
    #: A group watch's last re-subscription to heal its list (when, and how
    #: many came each within RELIST_QUIET of the one before).
    relisted = _Rare["tuple[float, int]"]((_NEVER, 0))
    #: When a group watch's last list NOTIFY arrived.
    list_news_at = _Rare[float](_NEVER)
    #: A group watch's last refresh, the members' documents held as maybe
    #: stale answers to it (URI -> digest), and whether a second refresh is
    #: to tell them apart (_stale_answer).
    refreshed_at = _Rare[float](_NEVER)
    suspects = _Rare["dict[str, int]"](_EMPTY)
    confirming = _Rare[bool](False)
    #: A group watch was subscribed again for members still without state;
    #: not again until the list has settled.
    healed = _Rare[bool](False)
    #: A group watch's member watches, by member URI.
    listed = _Rare["dict[str, Watch]"](_EMPTY)

    @property
    def key(self) -> tuple[str, str]:
        return (self.watcher, self.presentity)

    @property
    def presence(self) -> Presence | None:
        member = self.member
        return member.presence if member is not None else None

    @property
    def granted(self) -> frozenset[AttributeType]:
        decisions = self.decisions
        if self.withheld or decisions is None:
            return _NOTHING
        # Asked for by every NOTIFY offered: shared decisions know theirs.
        granted = _GRANTED.get(id(decisions))
        if granted is None:
            granted = frozenset(kind for kind, granted in decisions.items() if granted)
        return granted

    @property
    def needed(self) -> bool:
        return self.reference is not None or bool(self.schedules)

    @property
    def owner(self) -> Watch:
        """Whose schedules and reference this watch's news go to."""
        return self.group if self.group is not None else self

    def hold(self, item: _Held) -> None:
        """Keep ``item`` until the rules are in."""
        if self.held is None:
            self.held = []
        self.held.append(item)

    def member_of(self, presentity: str) -> Watch:
        """A member watch of this group watch, made if there is none."""
        member = self.listed.get(presentity)
        if member is None:
            self.listed = _own(self.listed)
            member = self.listed[presentity] = Watch(
                self.watcher, presentity, self.app_id, self.application, self.attributes,
                group=self,
            )
        return member

    def decisions_fresh(self, now: float) -> bool:
        """Whether the decisions held may be used without reading the rules again."""
        return (
            self.decisions is not None
            and self.stale_after is None
            and now - self.read_at < decisions_ttl(self.presentity)
        )


_NOTHING: frozenset[AttributeType] = frozenset()
#: Decisions shared by every watch holding the same ones, with what they grant
#: (by the dict's id: the dicts here live as long as the process).  A watch's
#: decisions are replaced, never changed in place, and however many watches
#: there are, few distinct decisions exist (at most 2 ** len(AttributeType)
#: per set of keys).
_SHARED: dict[frozenset[tuple[AttributeType, bool]], dict[AttributeType, bool]] = {}
_GRANTED: dict[int, frozenset[AttributeType]] = {}
_KINDS: dict[frozenset[AttributeType], frozenset[AttributeType]] = {}
_Sent = tuple[tuple[AttributeType, bool], ...]
_SENT: dict[_Sent, _Sent] = {}


def shared_decisions(decisions: dict[AttributeType, bool]) -> dict[AttributeType, bool]:
    """The one shared dict equal to ``decisions`` (never to be changed in place)."""
    key = frozenset(decisions.items())
    shared = _SHARED.get(key)
    if shared is None:
        shared = _SHARED[key] = decisions
        _GRANTED[id(shared)] = frozenset(kind for kind, granted in shared.items() if granted)
    return shared


def _shared_text(text: str) -> str:
    """One string for all the watches naming the same address or channel."""
    return sys.intern(text) if type(text) is str else text  # not a subclass (AppId)


def shared_kinds(kinds: frozenset[AttributeType]) -> frozenset[AttributeType]:
    """The one shared frozenset equal to ``kinds`` (the attributes a watch asked for)."""
    return _KINDS.setdefault(kinds, kinds)


def shared_sent(sent: _Sent) -> _Sent:
    """The one shared tuple equal to ``sent`` (the decisions last told)."""
    return _SENT.setdefault(sent, sent)


def _added(items: set[str] | None, item: str) -> set[str]:
    """``items`` with ``item``: a watch's sets are None while empty, as most stay."""
    if items is None:
        return {item}
    items.add(item)
    return items


def _discarded(items: set[str] | None, item: str) -> set[str] | None:
    if items:
        items.discard(item)
    return items or None


# -- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Send an initial SUBSCRIBE for the watch; ``retry``: a re-subscription."""

    watch: Watch
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """End the subscription (Expires: 0) without waiting for its end."""

    subscription_id: int


@dataclass(frozen=True, slots=True)
class ReadRules:
    read: RulesRead


@dataclass(frozen=True, slots=True)
class ReadList:
    """Read the group watch's list from its watcher's rls-services document
    (answered with :meth:`WatchMachine.list_read`)."""

    group: Watch


@dataclass(frozen=True, slots=True)
class RefreshList:
    """Refresh the list subscription (a re-SUBSCRIBE in its dialog)."""

    subscription_id: int


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for an application's channel; ``received``: when the NOTIFY
    it comes from arrived (for the latency histogram)."""

    app_id: str
    channel: str
    data: dict[str, Any]
    received: float | None = None


@dataclass(frozen=True, slots=True)
class SaveWatch:
    watch: Watch


@dataclass(frozen=True, slots=True)
class ForgetWatch:
    watch: Watch


@dataclass(frozen=True, slots=True)
class SaveSchedule:
    schedule: Schedule


@dataclass(frozen=True, slots=True)
class ForgetSchedule:
    schedule: Schedule


@dataclass(frozen=True, slots=True)
class SaveProgress:
    """Schedules whose progress is due to be written (write-behind)."""

    schedules: tuple[Schedule, ...]


@dataclass(frozen=True, slots=True)
class Settled:
    """The watch no longer waits for its rules (or ended), its read failed, or
    its list changed: wake who awaits it."""

    watch: Watch


WatchAction = (
    Subscribe | Unsubscribe | ReadRules | ReadList | RefreshList | Deliver | SaveWatch
    | ForgetWatch | SaveSchedule | ForgetSchedule | SaveProgress | Settled
)


class _Timer(enum.IntEnum):  # int-valued: hashed (in heap keys) at C speed
    SCHEDULE = enum.auto()  # a schedule's interval or deadline
    RETRY = enum.auto()  # a re-subscribe attempt
    SAVE = enum.auto()  # schedules' progress is due to be written
    RELIST = enum.auto()  # a list's re-subscription held back (_relist)
    HEAL = enum.auto()  # a list's members may still lack their state (_heal)
    CHECK = enum.auto()  # a list's periodic check (_check_list)
    QUIET = enum.auto()  # a list's refresh, once it is quiet (_refresh_when_quiet)
    CONFIRM = enum.auto()  # a refresh's window ended with documents held (_confirm)
    REREAD = enum.auto()  # a presentity's rules to read again after a failure (_reread)


_SAVE_KEY: tuple[Any, ...] = (_Timer.SAVE,)


class _Watches(Mapping[tuple[str, str], Watch]):
    """The watches by (watcher, presentity), a group's members apart: a view
    of :attr:`WatchMachine.by_presentity`, which files them by presentity,
    then watcher.  A held watch costs no key tuple and no entry in a second
    table; the machine counts them as it files and drops them, and by state
    as they change (:meth:`WatchMachine._enter`), so that /metrics reads
    the counts without a walk over every watch."""

    __slots__ = ("_by_presentity", "count", "states")

    def __init__(self, by_presentity: dict[str, dict[Any, Watch]]) -> None:
        self._by_presentity = by_presentity
        self.count = 0
        self.states: Counter[WatchState] = Counter()

    def get(self, key: tuple[str, str], default: None = None) -> Watch | None:  # type: ignore[override]
        table = self._by_presentity.get(key[1])
        return None if table is None else table.get(key[0])

    def __getitem__(self, key: tuple[str, str]) -> Watch:
        watch = self.get(key)
        if watch is None:
            raise KeyError(key)
        return watch

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for presentity, table in self._by_presentity.items():
            for key in table:
                if not isinstance(key, tuple):  # a member's key is (watcher, group)
                    yield key, presentity

    def __len__(self) -> int:
        return self.count


class WatchMachine:
    def __init__(
        self,
        *,
        save_delay: float = SCHEDULE_SAVE_DELAY,
        resubscribe_delays: tuple[float, ...] = RESUBSCRIBE_DELAYS,
        list_check: float = LIST_CHECK,
    ) -> None:
        #: The watches by presentity, then watcher, and the member watches of
        #: groups by member, then (watcher, group) (_index, _unindex).
        self.by_presentity: dict[str, dict[Any, Watch]] = {}
        #: The same watches (members apart) by (watcher, presentity).
        self.watches = _Watches(self.by_presentity)
        #: The document last decoded per watched presentity, by the digest of
        #: its body: its watchers' NOTIFYs carry the same body, and share it.
        self._documents: dict[str, tuple[int, Presence]] = {}
        self.schedules: dict[tuple[str, str], tuple[Watch, Schedule]] = {}
        self.rules = RulesCache()
        self._timers: TimerHeap[tuple[Any, ...]] = TimerHeap()
        self._save_delay = save_delay
        self._resubscribe_delays = resubscribe_delays
        self._list_check = list_check
        #: What a group watch's own timers run.
        self._list_timers: dict[_Timer, Callable[[Watch, float], None]] = {
            _Timer.HEAL: self._heal,
            _Timer.CHECK: self._check_list,
            _Timer.QUIET: self._refresh_when_quiet,
            _Timer.CONFIRM: self._confirm,
        }
        #: Presentities whose rules are to be read again after a failed read,
        #: with the back-off step of the next failure (_reread).
        self._rereads: dict[str, int] = {}
        #: Schedules whose progress is not written yet.
        self._unsaved: dict[tuple[str, str], Schedule] = {}
        #: News dropped while held: a document replaced by a later one at
        #: :data:`HELD_LIMIT` (for /metrics; a repeat dropped is not counted).
        self.superseded = 0
        self._out: list[WatchAction] = []

    # -- registry ---------------------------------------------------------------

    def get(self, watcher: str, presentity: str) -> Watch | None:
        return self.watches.get((watcher, presentity))

    def add(self, watch: Watch) -> Watch:
        """File a new (or restored) watch; its decisions need a read from now on."""
        if watch.stale_after is not None:
            watch.stale_after = self.rules.mark()
        # The same addresses come back in thousands of watches: one string each.
        watch.watcher = _shared_text(watch.watcher)
        watch.presentity = _shared_text(watch.presentity)
        watch.application = _shared_text(watch.application)
        watch.attributes = shared_kinds(watch.attributes)
        filed = self.watches.get(watch.key)
        if filed is not watch:
            if filed is None:
                self.watches.count += 1
            else:
                self.watches.states[filed.state] -= 1
            self.watches.states[watch.state] += 1
        self._index(watch)
        for member in watch.listed.values():
            self._index(member)
        return watch

    def _index(self, watch: Watch) -> None:
        self.by_presentity.setdefault(watch.presentity, {})[_index_key(watch)] = watch

    def _unindex(self, watch: Watch) -> None:
        others = self.by_presentity.get(watch.presentity)
        if others is not None and others.get(_index_key(watch)) is watch:
            del others[_index_key(watch)]
            if not others:
                del self.by_presentity[watch.presentity]
                self._documents.pop(watch.presentity, None)

    def states(self) -> dict[str, int]:
        """How many watches (a group's members apart) there are in each state."""
        return {state.value: count for state, count in self.watches.states.items() if count}

    def _enter(self, watch: Watch, state: WatchState) -> None:
        """Every change of a watch's state goes through here, to keep
        :meth:`states` exact: a filed watch's count moves with it."""
        if state is watch.state:
            return
        if watch.group is None and self.watches.get(watch.key) is watch:
            self.watches.states[watch.state] -= 1
            self.watches.states[state] += 1
        watch.state = state

    def schedule_live(self, schedule: Schedule) -> bool:
        entry = self.schedules.get((schedule.app_id, schedule.correlator))
        return entry is not None and entry[1] is schedule

    def presence(
        self, watcher: str, presentity: str, attributes: frozenset[AttributeType]
    ) -> Presence | None:
        watch = self.watches.get((watcher, presentity)) or self._as_member(watcher, presentity)
        if watch is None or watch.state is WatchState.ENDED:
            raise NoSubscription(presentity)
        if watch.is_list:
            raise GroupPresentity(presentity)
        if watch.state is not WatchState.ACTIVE:
            raise NotAuthorized(presentity)
        presence = watch.presence
        if presence is None:
            return None
        granted = watch.granted
        if watch.attributes:
            granted &= watch.attributes
        if attributes:
            granted &= attributes
        return filter_presence(presence, {kind: True for kind in granted})

    def answers(self, watcher: str, presentity: str) -> bool:
        """Whether :meth:`presence` answers from a watch held here: the watcher's
        own of ``presentity``, or an active member watch in one of its groups."""
        return (watcher, presentity) in self.watches or (
            self._as_member(watcher, presentity) is not None
        )

    def watching(self, watcher: str, presentity: str) -> Watch | None:
        """The watcher's own watch of ``presentity``, else a member watch of it in
        one of the watcher's groups: whose application asks (Get Open
        Subscriptions)."""
        own = self.watches.get((watcher, presentity))
        if own is not None:
            return own
        members = self.by_presentity.get(presentity, {})
        return next((w for w in members.values() if w.watcher == watcher), None)

    def _as_member(self, watcher: str, presentity: str) -> Watch | None:
        """The watcher's active member watch of ``presentity`` in one of its groups."""
        for watch in self.by_presentity.get(presentity, {}).values():
            if watch.watcher == watcher and watch.state is WatchState.ACTIVE:
                return watch
        return None

    def unsubscribed_members(self, watch: Watch) -> list[str]:
        """A group's members that are not active: pending, blocked, ended, or
        listed with no state (Start Presence Notification's ``result``)."""
        return sorted(
            uri for uri, member in watch.listed.items() if member.state is not WatchState.ACTIVE
        )

    def list_complete(self, watch: Watch) -> bool:
        """Whether the group's first full state is in (a list, it is not one, or it ended)."""
        if watch.state is WatchState.ENDED or not watch.is_list:
            return True
        return watch.rlmi is not None and watch.rlmi.complete

    def list_settled(self, watch: Watch) -> bool:
        """Whether every member of the group has a state from the server."""
        if not self.list_complete(watch):
            return False
        return not watch.stateless

    def get_timer(self) -> float | None:
        return self._timers.next_deadline()

    # -- API calls ------------------------------------------------------------------

    def subscribe(
        self,
        app_id: str,
        watcher: str,
        presentity: str,
        application: str,
        attributes: frozenset[AttributeType],
        reference: Reference,
    ) -> tuple[Watch, list[WatchAction]]:
        """Subscribe Presence: the watch, written before it is subscribed."""
        watch = self.watches.get((watcher, presentity))
        if watch is None:
            watch = self.add(Watch(watcher, presentity, app_id))
        watch.app_id = app_id
        watch.application = _shared_text(application)
        watch.attributes = attributes = shared_kinds(attributes)
        watch.reference = Reference(reference.correlator, _shared_text(reference.endpoint),
                                    _shared_text(reference.interface_name))
        watch.decisions_sent = None  # a new reference hears the decisions again
        for member in watch.listed.values():
            member.application, member.attributes = watch.application, attributes
            member.decisions_sent = None
        self._out.append(SaveWatch(watch))
        return watch, self._take()

    def watch_for(self, app_id: str, watcher: str, presentity: str) -> Watch:
        """The watch a notification schedule will use, made if there is none."""
        watch = self.watches.get((watcher, presentity))
        return watch if watch is not None else self.add(Watch(watcher, presentity, app_id))

    def ensure_subscribed(self, watch: Watch, *, keep_state: bool = False) -> list[WatchAction]:
        """Subscribe the watch unless it is (or is being) subscribed."""
        if watch.dialog is not Dialog.NONE and watch.state in (
            WatchState.PENDING, WatchState.ACTIVE
        ):
            return []
        self._send_subscribe(watch, keep_state=keep_state, retry=False)
        return self._take()

    def subscription_sent(self, watch: Watch, subscription_id: int) -> None:
        """The SUBSCRIBE went out under ``subscription_id``: the watch's
        events carry it; those of its earlier dialogs are no news."""
        watch.subscription_id = subscription_id

    def subscription_accepted(
        self, watch: Watch, subscription_id: int, eventlist: bool = False
    ) -> list[WatchAction]:
        """The 2xx came; ``eventlist``: it says the URI is a list (a group watch)."""
        if watch.subscription_id == subscription_id and watch.dialog is Dialog.STARTING:
            watch.dialog = _step(watch.dialog, _Step.ACCEPTED)
            self._became_list(watch, eventlist)
        return self._take()

    def _became_list(self, watch: Watch, is_list: bool) -> None:
        if is_list == watch.is_list:
            return
        watch.is_list = is_list
        if not is_list:
            # The server no longer has the list: its members left with it.
            for uri in list(watch.listed):
                self._member_left(watch, uri)
            watch.rlmi = None
            watch.stateless = None
        self._out.append(SaveWatch(watch))

    def subscription_refused(self, watch: Watch, subscription_id: int) -> list[WatchAction]:
        """The initial SUBSCRIBE failed (or its caller stopped waiting)."""
        if watch.subscription_id == subscription_id:
            watch.subscription_id = None
            if watch.dialog is Dialog.STARTING:
                watch.dialog = _step(watch.dialog, _Step.REFUSED)
        self._out.append(Unsubscribe(subscription_id))  # it may still be answered
        return self._take()

    def reference_refused(self, watch: Watch) -> list[WatchAction]:
        """Subscribe Presence could not subscribe: the reference is not kept."""
        if not watch.schedules:
            self._drop(watch)
        else:
            watch.reference = None
            self._out.append(SaveWatch(watch))
        return self._take()

    def drop_unneeded(self, watch: Watch) -> list[WatchAction]:
        if not watch.needed:
            self._drop(watch)
        return self._take()

    def unsubscribe(self, watcher: str, presentity: str) -> list[WatchAction]:
        """The watcher ends its own subscription (an extension of the spec)."""
        watch = self.watches.get((watcher, presentity))
        if watch is None:
            raise NoSubscription(presentity)
        for schedule in list(watch.schedules.values()):
            schedule.end_quietly()
            self._remove_schedule(watch, schedule)
        watch.reference = None
        self._end(watch)
        return self._take()

    def add_schedule(self, watch: Watch, schedule: Schedule) -> list[WatchAction]:
        """Start Presence Notification, once subscribed: the schedule is written."""
        key = (schedule.app_id, schedule.correlator)
        if key in self.schedules:
            raise DuplicateCorrelator(schedule.correlator)
        watch.schedules = _own(watch.schedules)
        watch.schedules[schedule.correlator] = schedule
        watch.unstarted = _added(watch.unstarted, schedule.correlator)
        self.schedules[key] = (watch, schedule)
        self._out += (SaveWatch(watch), SaveSchedule(schedule))
        return self._take()

    def start_schedule(
        self, watch: Watch, schedule: Schedule, *, check_immediate: bool, now: float
    ) -> list[WatchAction]:
        """The schedule begins, under fresh decisions when the watch is active."""
        self._start(watch, _Start(schedule, check_immediate), now)
        return self._take()

    def start_pending(self, watch: Watch, schedule: Schedule) -> bool:
        """Whether the schedule still waits for its watch's rules to begin
        (not for rules that could not be read: it begins once they are)."""
        if watch.state is WatchState.ENDED or not self.schedule_live(schedule):
            return False
        for one in (watch, *watch.listed.values()):
            if self.held_unread(one):
                continue
            waiting = [one.resume, *(one.held or ())]
            if any(isinstance(item, _Start) and item.schedule is schedule for item in waiting):
                return True
        return False

    def end_notification(self, app_id: str, correlator: str) -> list[WatchAction]:
        entry = self.schedules.get((app_id, correlator))
        if entry is None:
            raise UnknownCorrelator(correlator)
        watch, schedule = entry
        schedule.end_quietly()
        self._remove_schedule(watch, schedule)
        if not watch.needed:
            self._end(watch)
        return self._take()

    def rules_changed(self, presentity: str, now: float) -> list[WatchAction]:
        """This adapter changed ``presentity``'s rules: re-read the decisions."""
        mark = self.rules.changed(presentity, now)
        # The presentity's watches only: a walk over all of them grows with
        # every watch the adapter holds.
        for watch in list(self.by_presentity.get(presentity, {}).values()):
            if watch.is_list:
                continue  # a group has no rules of its own; its members have
            watch.rules_unconfirmed = True
            watch.stale_after = mark
            watch.activated = False
            if watch.state is WatchState.ACTIVE and self._need_rules(watch, now):
                watch.waiting = True
            elif self._blocked_member(watch) and self._need_rules(watch, now):
                watch.revalidating = True  # an allow brings it back (_take_rules)
        return self._take()

    def recheck(self, watch: Watch, now: float) -> list[WatchAction]:
        """Subscribe Presence on a watch: its reference hears the decisions
        (of a group: each active member's)."""
        for one in (watch, *watch.listed.values()):
            if one.state is WatchState.ACTIVE and not one.waiting and not one.is_list:
                if self._need_rules(one, now):
                    one.waiting = True
                else:
                    self._tell_decisions(one)
        return self._take()

    def refresh_decisions(self, watch: Watch, now: float) -> list[WatchAction]:
        """Get User Presence: decisions that are not stale before it answers."""
        if watch.is_list:
            return []
        if watch.state is WatchState.ACTIVE and not watch.waiting and self._need_rules(watch, now):
            watch.waiting = True
        return self._take()

    # -- SIP events ------------------------------------------------------------------

    def notify(self, watch: Watch, event: NotifyReceived, now: float) -> list[WatchAction]:
        # Every held subscription's refresh brings a NOTIFY: the cache's
        # documents are swept on those even when no read comes any more.
        self.rules.expire(now)
        if event.subscription_id != watch.subscription_id:
            return []  # of a dialog the watch left (re-subscribed, ended)
        opening = watch.opening
        if opening is not None:
            watch.opening = None
        if watch.waiting:
            self._hold(watch, _HeldNotify(event, now))
        elif not self._repeats(watch, event):
            self._take_notify(watch, event, now, now)
        for start in opening or ():
            self._start(watch, start, now)  # behind the NOTIFY, held with it if it waits
        return self._take()

    def _repeats(self, watch: Watch, event: NotifyReceived) -> bool:
        """Whether ``event`` only repeats what the watch last offered, under
        the decisions it holds, so that taking it in would change nothing.

        The notifier sends the whole state again on every refresh of the
        subscription (RFC 6665 §4.2.1.2) and, in Kamailio, to every watcher on
        every refresh of a publication: in a held gateway these are almost all
        of its NOTIFYs.  The same state token and the same document, on an
        active single watch whose decisions are settled, go through the
        general path as a series of no-ops: the member keeps its document
        (same digest), the decisions were told, and a schedule offered the
        state it already has sends nothing.  A schedule whose deadline has
        passed ends on its own timer.
        """
        offered = watch.offered
        member = watch.member
        return (
            offered is not None
            and member is not None
            and member.presence is offered
            and watch.offered_under is watch.decisions
            and watch.state is WatchState.ACTIVE
            and watch.stale_after is None
            and not watch.revalidating
            and not watch.withheld
            and watch.group is None
            and not watch.is_list
            and bool(event.body)
            and event.state.state.lower() == "active"
            and hash(event.body) == member.body_digest
            and not _is_list(event)
        )

    def terminated(
        self, watch: Watch, event: SubscriptionTerminated, now: float
    ) -> list[WatchAction]:
        if event.subscription_id != watch.subscription_id or watch.dialog is Dialog.STARTING:
            # An earlier dialog's end is no news.  And while STARTING the
            # initial SUBSCRIBE failed: whoever awaits its outcome decides;
            # re-subscribing from here as well would act behind its back.
            return []
        watch.subscription_id = None
        if event.reason == "unsubscribed" or watch.state is WatchState.ENDED:
            return []
        if event.reason == "rejected":
            watch.dialog = _step(watch.dialog, _Step.BLOCKED)
            self._enter(watch, WatchState.BLOCKED)
            self._out.append(SaveWatch(watch))
            self._ended(watch, "Blocked")
            return self._take()
        return self.lost(watch, event.reason, event.retry_after or 0, now)

    def lost(self, watch: Watch, why: str, first_delay: float, now: float) -> list[WatchAction]:
        """Subscribe again, a bounded number of times; subscriptionEnded Timeout if all fail."""
        watch.dialog = _step(watch.dialog, _Step.LOST)
        watch.backoff = (first_delay, *self._resubscribe_delays)
        watch.why = why
        self._next_attempt(watch, now)
        return self._take()

    def attempt_failed(self, watch: Watch, now: float) -> list[WatchAction]:
        """A re-subscribe attempt was refused (its subscription_refused came first)."""
        if watch.state is not WatchState.ENDED and watch.dialog is Dialog.NONE:
            watch.dialog = _step(watch.dialog, _Step.LOST)
            self._next_attempt(watch, now)
        return self._take()

    def server_down(self, watch: Watch) -> None:
        """The server is down: nothing to count against the watch.  It stays
        pending and is subscribed again when the server is back (resync)."""
        watch.dialog = _step(watch.dialog, _Step.BACK)
        self._enter(watch, WatchState.PENDING)
        watch.subscription_id = None
        watch.backoff = ()

    def release(self, watch: Watch) -> list[WatchAction]:
        """Another node owns the watch now (adapter.cluster): forget it and its
        schedules here, telling no application and writing nothing (the
        records are the new owner's), and end its dialog (the new owner
        subscribes in one of its own)."""
        if self.watches.get(watch.key) is not watch:
            return []
        self._leave_dialog(watch)
        for schedule in list(watch.schedules.values()):
            key = (schedule.app_id, schedule.correlator)
            self.schedules.pop(key, None)
            self._unsaved.pop(key, None)
            self._timers.cancel((_Timer.SCHEDULE, *key))
        watch.schedules = _EMPTY
        watch.unstarted = None
        mark = len(self._out)
        self._drop(watch)
        self._out[mark:] = [
            action for action in self._out[mark:]
            if not isinstance(action, ForgetWatch | ForgetSchedule | SaveWatch | SaveSchedule
                              | Deliver)
        ]
        return self._take()

    def restart(self, watch: Watch) -> list[WatchAction]:
        """The server came back or restarted: the watch's old dialog is no news."""
        self._leave_dialog(watch)
        return self._take()

    def _leave_dialog(self, watch: Watch) -> None:
        self._timers.cancel((_Timer.RETRY, *watch.key))
        self._timers.cancel((_Timer.RELIST, *watch.key))
        self._timers.cancel((_Timer.HEAL, *watch.key))
        self._timers.cancel((_Timer.CHECK, *watch.key))
        self._timers.cancel((_Timer.QUIET, *watch.key))
        self._timers.cancel((_Timer.CONFIRM, *watch.key))
        watch.suspects = _EMPTY
        watch.confirming = False
        old = watch.subscription_id
        if old is not None:
            self._out.append(Unsubscribe(old))
            watch.subscription_id = None
        watch.dialog = _step(watch.dialog, _Step.DROPPED)

    # -- rules read ---------------------------------------------------------------

    def read_begun(self, read: RulesRead, now: float) -> RulesRead:
        """A :class:`ReadRules` is sent now: the read to hand back to
        :meth:`rules_read` or :meth:`rules_failed`.  It serves every need that
        arose while it waited its turn (:mod:`adapter.rules`)."""
        return self.rules.begin(read, now)

    def rules_read(self, read: RulesRead, rules: PresRules, now: float) -> list[WatchAction]:
        self.rules.read_done(read, rules, now)
        self._rereads.pop(read.presentity, None)  # readable again: the back-off starts over
        for watch in self._interested(read, now, rules):
            self._take_rules(watch, read, rules.rule_for(watch.watcher), now)
            self._settle(watch, now)
        return self._take()

    def rules_failed(self, read: RulesRead, error: Exception, now: float) -> list[WatchAction]:
        self.rules.read_failed(read)
        unread = 0
        for watch in self._interested(read, now):
            if watch.decisions is not None:
                # The rules were readable before: a failed read must not widen
                # what the watcher sees to "all asked" (a privacy leak right
                # after the presentity narrowed its grants).  Keep what is
                # known, or show nothing while a change made here is unread;
                # the decisions stay stale, so the next need reads again.
                watch.withheld = watch.rules_unconfirmed
                logger.warning("rules of %s unreadable (%s): %s", watch.presentity, error,
                               "attributes withheld" if watch.withheld else "decisions kept")
                self._settle(watch, now)
            elif watch.waiting:
                # Never read: the presentity may grant fewer than asked (and
                # Kamailio sends unfiltered bodies on some NOTIFYs), so nothing
                # is shown.  The watch goes on holding what comes until a read
                # succeeds, and that read comes on its own (_reread): a
                # presentity that never changes again sends no NOTIFY to ask it.
                watch.withheld = True
                unread += 1
                self._out.append(Settled(watch))  # a REST call does not wait for it
            else:
                # A blocked member's check: it stays blocked until a read allows it.
                self._settle(watch, now)
        if unread:
            step = self._rereads.get(read.presentity, 0)
            delay = REREAD_DELAYS[min(step, len(REREAD_DELAYS) - 1)]
            self._rereads[read.presentity] = step + 1
            key = (_Timer.REREAD, read.presentity)
            if key not in self._timers:
                self._timers.schedule(now + delay, key)
            logger.info("rules of %s unreadable (%s): %d watches show nothing, "
                        "read again in %g s", read.presentity, error, unread, delay)
        elif (_Timer.REREAD, read.presentity) not in self._timers:
            self._rereads.pop(read.presentity, None)
        return self._take()

    def held_unread(self, watch: Watch) -> bool:
        """Whether the watch holds what comes because its rules were never
        read and reading them failed: it shows nothing, and the rules are read
        again on their own (a REST call does not wait for that)."""
        return watch.waiting and watch.withheld and watch.decisions is None

    def _reread(self, presentity: str, now: float) -> None:
        """Read again the rules of a presentity whose watches never had
        decisions and hold their news after a failed read."""
        held = [w for w in self.by_presentity.get(presentity, {}).values() if self.held_unread(w)]
        if not held:
            self._rereads.pop(presentity, None)
            return
        for watch in held:
            if not self._need_rules(watch, now):  # read meanwhile for another need
                self._settle(watch, now)
        if not any(self.held_unread(w) for w in held):
            self._rereads.pop(presentity, None)

    # -- time --------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[WatchAction]:
        for key in self._timers.pop_expired(now):
            kind = key[0]
            if kind is _Timer.SCHEDULE:
                entry = self.schedules.get(key[1:])
                if entry is not None:
                    watch, schedule = entry
                    self._deliver(watch, schedule, schedule.handle_timer(now), now)
                    self._file(schedule)
            elif kind is _Timer.RELIST:
                group = self.watches.get(key[1:])
                if group is not None and group.is_list and group.dialog is Dialog.LIVE:
                    self._resubscribe_list(group, now)
            elif kind in self._list_timers:
                group = self.watches.get(key[1:])
                if group is not None:
                    self._list_timers[kind](group, now)
            elif kind is _Timer.RETRY:
                retrying = self.watches.get(key[1:])
                if retrying is not None and retrying.dialog is Dialog.BACKING_OFF:
                    self._attempt(retrying)
            elif kind is _Timer.REREAD:
                self._reread(key[1], now)
            else:
                self._out.append(SaveProgress(tuple(self._unsaved.values())))
                self._unsaved = {}
        return self._take()

    def unsaved(self) -> list[Schedule]:
        """The progress not written yet (at a clean stop)."""
        self._timers.cancel(_SAVE_KEY)
        out, self._unsaved = list(self._unsaved.values()), {}
        return out

    # -- restore -----------------------------------------------------------------

    def restore_schedule(self, schedule: Schedule, now: float) -> list[WatchAction]:
        """A stored schedule back, with what its deadline did meanwhile."""
        owner = self.watch_for(schedule.app_id, schedule.watcher, schedule.presentity)
        owner.schedules = _own(owner.schedules)
        owner.schedules[schedule.correlator] = schedule
        self.schedules[(schedule.app_id, schedule.correlator)] = (owner, schedule)
        self._deliver(owner, schedule, schedule.handle_timer(now), now)
        self._file(schedule)
        return self._take()

    def restored(self) -> tuple[list[Watch], list[WatchAction]]:
        """The watches to subscribe after a restore; those nothing needs are dropped."""
        live = [w for w in self.watches.values() if w.needed and w.state is not WatchState.BLOCKED]
        for watch in [w for w in self.watches.values() if not w.needed]:
            self._drop(watch)
        return live, self._take()

    def to_resync(self) -> list[Watch]:
        return [
            w for w in self.watches.values()
            if w.needed and w.state in (WatchState.PENDING, WatchState.ACTIVE)
        ]

    # -- internals ------------------------------------------------------------------

    def _take(self) -> list[WatchAction]:
        out = self._out
        if out:
            self._out = []
        return out

    def _send_subscribe(self, watch: Watch, *, keep_state: bool, retry: bool) -> None:
        if not keep_state:
            self._enter(watch, WatchState.PENDING)
            watch.member = None
            if watch.opening is None:  # Starts waiting for an earlier dialog's go on waiting
                watch.opening = []
            for member in watch.listed.values():
                if member.state is WatchState.ACTIVE:
                    self._enter(member, WatchState.PENDING)
                member.member = None
        # A new dialog numbers its RLMI versions afresh (RFC 4662 §5.2).
        watch.rlmi = None
        watch.stateless = None
        watch.subscription_id = None
        watch.dialog = _step(watch.dialog, _Step.SENT)
        self._out.append(Subscribe(watch, retry))

    def _next_attempt(self, watch: Watch, now: float) -> None:
        if not watch.backoff:
            watch.dialog = _step(watch.dialog, _Step.GAVE_UP)
            self._ended(watch, "Timeout")
            return
        delay, watch.backoff = watch.backoff[0], watch.backoff[1:]
        if delay:
            self._timers.schedule(now + delay, (_Timer.RETRY, *watch.key))
        else:
            self._attempt(watch)

    def _attempt(self, watch: Watch) -> None:
        if watch.state is WatchState.ENDED or not watch.needed:
            watch.dialog = _step(watch.dialog, _Step.GAVE_UP)
            return
        self._send_subscribe(watch, keep_state=False, retry=True)

    def _take_notify(
        self, watch: Watch, event: NotifyReceived, received: float, now: float
    ) -> None:
        if _is_list(event):
            self._take_list(watch, event, received, now)
            return
        if watch.is_list:
            # A list's NOTIFY with no RLMI (none carries state of its own).
            state = _ON_NOTIFY.get((watch.state, event.state.state.lower()))
            if state is not None:
                self._enter(watch, state)
            return
        self._take_state(watch, event.state.state.lower(),
                         lambda member: self._take_body(member, event.body), received, now)

    def _take_state(
        self, watch: Watch, name: str, read: Callable[[Member], bool], received: float,
        now: float,
    ) -> None:
        """A new subscription state ``name`` (RFC 6665 §4.1.3 tokens), and
        with an active one the document ``read`` puts into the member."""
        state = _ON_NOTIFY.get((watch.state, name))
        if state is None:
            return
        if state is WatchState.PENDING:
            self._enter(watch, state)
            return
        became_active = watch.state is not WatchState.ACTIVE
        self._enter(watch, state)
        member = watch.member
        if member is None:
            member = watch.member = Member(watch.presentity)
        held = member.presence
        fresh = read(member)
        if became_active:
            watch.stale_after = self.rules.mark()  # a read begun before is not one after it
            # Decisions within the age limit serve an activation as they
            # serve any active watch, when the rules they come from allow the
            # watcher: a presentity's watchers that activate one after another
            # share its reads instead of each asking for one.
            watch.activated = True
        if watch.stale_after is not None:
            if self._need_rules(watch, now):
                watch.waiting = True
                watch.resume = _Offer(fresh, received)
                return
        elif (
            fresh
            and member.presence != held
            and not watch.revalidating
            and not watch.decisions_fresh(now)
            and self._need_rules(watch, now)
        ):
            watch.revalidating = True
        if watch.state is WatchState.ACTIVE:  # a member's rules may have just blocked it
            self._offer(watch, fresh, received, now)

    # -- groups ------------------------------------------------------------------------

    def _take_list(
        self, group: Watch, event: NotifyReceived, received: float, now: float
    ) -> None:
        """A NOTIFY of a list subscription: each member's news to its member watch."""
        settled = group.is_list and self.list_settled(group)
        group.list_news_at = received
        try:
            body = parse_multipart(event.content_type or "", event.body)
            document = parse_rlmi(body.root.body)
            if group.rlmi is None:
                group.rlmi = ListState()
            update = group.rlmi.apply(document, body.by_content_id())
        except (SipProtocolError, PidfError) as exc:
            logger.warning("unreadable list NOTIFY for %s: %s", group.presentity, exc)
            return
        self._became_list(group, True)
        for error in update.errors:
            logger.warning("list %s: %s", group.presentity, error)
        if update.ignored:
            return
        state = _ON_NOTIFY.get((group.state, event.state.state.lower()))
        if state is not None:
            self._enter(group, state)
        if document.full_state:
            # RFC 4662 §5.2: full state lists every member; the others left.
            listed = {resource.uri for resource in document.resources}
            for uri in [u for u in group.listed if u not in listed]:
                self._member_left(group, uri)
        edited = added = False
        for change in update.changes:
            if change.member.state is None and change.uri in group.rlmi.members:
                group.stateless = _added(group.stateless, change.uri)
            else:
                group.stateless = _discarded(group.stateless, change.uri)
            if change.uri not in group.rlmi.members:
                continue  # removed: handled by the full state above
            member = group.listed.get(change.uri)
            if member is None:
                # New in a partial state with an instance: the list was edited
                # on the server (Kamailio tells an added member with its
                # state).  A bare one is the rest of a full state the server
                # split over several NOTIFYs (tests/data/rls/split-full-*).
                edited = edited or (not document.full_state and change.member.state is not None)
                member = group.member_of(change.uri)
                member.stale_after = self.rules.mark()
                self._index(member)
                added = True
            if self._stale_answer(group, member, change.member, now):
                continue
            news = _MemberNews(change.member, received)
            if member.waiting:
                self._hold(member, news)
            else:
                self._take_member(member, news, now)
        if added:
            # The record lists the members: a node of a cluster that does not
            # hold the group finds there which group a member is watched in.
            self._out.append(SaveWatch(group))
        check = (_Timer.CHECK, *group.key)
        if document.full_state and self._list_check and check not in self._timers:
            self._timers.schedule(now + self._list_check, check)
        if group.stateless and document.full_state and not group.healed:
            self._timers.schedule(now + LIST_HEAL_AFTER, (_Timer.HEAL, *group.key))
        elif not group.stateless:
            group.healed = False
        if update.gap or edited:
            # A NOTIFY was lost, or the list was edited: Kamailio answers a
            # refresh with partial state only and tells no removed member, so
            # a new dialog's full state is what shows the whole list.
            self._relist(group, "version gap" if update.gap else "members added", now)
        elif not settled:
            self._out.append(Settled(group))  # a Start may await the list's state

    def _relist(self, group: Watch, why: str, now: float) -> None:
        """Subscribe the list again for a new dialog's full state — at once the
        first time, then no sooner than a back-off after the last one, so that
        no server behaviour can make the adapter re-subscribe a list in a loop."""
        key = (_Timer.RELIST, *group.key)
        if key in self._timers:
            return  # one is due already
        last, streak = group.relisted
        delay = RELIST_DELAYS[min(streak, len(RELIST_DELAYS) - 1)]
        if now - last >= RELIST_QUIET:
            streak, delay = 0, 0.0
        group.relisted = (last, streak + 1)
        group.why = why  # for the driver's log of the re-subscription
        logger.info("list %s: %s, subscribing again%s", group.presentity, why,
                    f" in {delay:g} s" if delay else "")
        if delay:
            self._timers.schedule(max(now, last + delay), key)
        else:
            self._resubscribe_list(group, now)

    def _heal(self, group: Watch, now: float) -> None:
        """Members a live list dialog still holds without state: subscribe the
        list again, once, for a new full state from the RLS's own table."""
        if group.healed or not group.is_list or group.dialog is not Dialog.LIVE:
            return
        # Listed bare in a later full state is no news of a member whose
        # state came: only those never heard of are lacking.
        lacking = [uri for uri in group.stateless or ()
                   if uri in group.listed and group.listed[uri].state is WatchState.PENDING
                   and group.listed[uri].presence is None]
        if lacking and self.list_complete(group):
            group.healed = True
            self._relist(group, f"{len(lacking)} members without state", now)

    def _check_list(self, group: Watch, now: float) -> None:
        """The periodic check of a live list (:data:`LIST_CHECK`): what the RLS
        may not have told — an edit, a member's block or allow, a member's
        change left out — is read or asked for again."""
        if not group.is_list or group.dialog is not Dialog.LIVE or group.state is WatchState.ENDED:
            return
        self._timers.schedule(now + self._list_check, (_Timer.CHECK, *group.key))
        if not self.list_complete(group):
            return
        self._out.append(ReadList(group))
        # Rules read within half a period serve (a member of many lists,
        # whose checks come at their own times, is read about once a period
        # for all of them); older ones are read again.
        since = now - self._list_check / 2
        for member in group.listed.values():
            if member.waiting or member.revalidating or member.read_at >= since:
                continue
            if member.state is not WatchState.ACTIVE and not self._blocked_member(member):
                continue
            hit = self.rules.cached(member.presentity, None, since)
            if hit is not None:
                self._take_rules(member, hit[0], hit[1].rule_for(member.watcher), now)
                if member.state is WatchState.ACTIVE:
                    self._tell_decisions(member)
                continue
            read = self.rules.request(member.presentity, None, since, now)
            if read is not None:
                self._out.append(ReadRules(read))
            member.revalidating = True
        self._refresh_when_quiet(group, now)

    def _refresh_when_quiet(self, group: Watch, now: float) -> None:
        if not group.is_list or group.dialog is not Dialog.LIVE:
            return
        quiet_at = group.list_news_at + LIST_QUIET
        if now >= quiet_at:
            self._refresh_list(group, now)
        else:
            self._timers.schedule(quiet_at, (_Timer.QUIET, *group.key))

    def _stale_answer(self, group: Watch, member: Watch, item: ListMember, now: float) -> bool:
        """Whether a member's document, come within a refresh's window, goes
        back to one of its earlier documents and is held (see REFRESH_WINDOW)."""
        uri = member.presentity
        suspected = group.suspects.pop(uri) if uri in group.suspects else None
        held = member.member
        if item.document is None or held is None or now > group.refreshed_at + REFRESH_WINDOW:
            return False
        digest = hash(item.document)
        if digest == held.body_digest or digest not in held.earlier:
            return False
        if group.confirming and suspected == digest:
            return False  # the second refresh sent it again: the member's own
        group.suspects = _own(group.suspects)
        group.suspects[uri] = digest
        return True

    def _confirm(self, group: Watch, now: float) -> None:
        """A refresh's window ended: documents held after the first refresh
        get a second one; those the second did not send again were stale."""
        if not group.suspects or group.confirming:
            group.suspects = _EMPTY
            group.confirming = False
            return
        group.confirming = True
        if group.rlmi is not None:
            for uri in group.suspects:
                if uri in group.rlmi.members:  # sent again, it must count as news
                    group.rlmi.members[uri] = ListMember(uri)
        logger.info("list %s: %d members went back to an earlier state after a refresh; "
                    "refreshing again to tell", group.presentity, len(group.suspects))
        self._refresh_when_quiet(group, now)

    def list_read(
        self, group: Watch, members: frozenset[str] | None, now: float
    ) -> list[WatchAction]:
        """The watcher's rls-services document says the group lists ``members``
        (None: it cannot tell, the list is by reference)."""
        state = group.rlmi
        if (
            members is not None and group.is_list and group.dialog is Dialog.LIVE
            and state is not None and state.complete and members != set(state.members)
        ):
            # Kamailio tells an added member with its state but nothing of a
            # removed one (docs/kamailio.md): a new dialog's full state shows it.
            self._relist(group, "list edited on the server", now)
        return self._take()

    def _refresh_list(self, group: Watch, now: float) -> None:
        if group.subscription_id is not None and group.dialog is Dialog.LIVE:
            group.refreshed_at = now
            self._timers.schedule(now + REFRESH_WINDOW, (_Timer.CONFIRM, *group.key))
            self._out.append(RefreshList(group.subscription_id))

    @staticmethod
    def _blocked_member(watch: Watch) -> bool:
        return watch.group is not None and watch.state is WatchState.BLOCKED

    def _resubscribe_list(self, group: Watch, now: float) -> None:
        group.relisted = (now, group.relisted[1])
        self._leave_dialog(group)
        self._send_subscribe(group, keep_state=True, retry=True)

    def _take_member(self, watch: Watch, news: _MemberNews, now: float) -> None:
        item = news.member
        if item.state is InstanceState.TERMINATED:
            if item.reason == "rejected":  # RFC 6665 §4.2.2: the member refused the watcher
                self._member_ended(watch, "Blocked")
                return
            # Ended for another reason: the RLS holds no state of it now.
            watch.member = None
            name = "pending"
        elif item.state is InstanceState.ACTIVE:
            name = "active"
        elif item.state is None and watch.state is not WatchState.PENDING:
            # Listed with no instance: no news of it (RFC 4662 §5.2) — what a
            # new dialog's full state says of every member (Kamailio).
            return
        else:
            name = "pending"  # pending, or listed with no instance yet
        self._take_state(watch, name, lambda member: _take_document(member, item),
                         news.received, now)

    def _member_left(self, group: Watch, uri: str) -> None:
        """A full state no longer lists the member: it left the group."""
        member = group.listed[uri]
        if member.state is not WatchState.BLOCKED:
            self._tell_ended(group, uri, "Removed")
        del group.listed[uri]
        for schedule in group.schedules.values():
            schedule.forget_member(uri)
        self._forget_member(member)
        self._out.append(SaveWatch(group))

    def _forget_member(self, member: Watch) -> None:
        self._enter(member, WatchState.ENDED)
        self._unindex(member)
        member.resume = None
        member.held = None
        if member.waiting or member.revalidating:
            member.waiting = member.revalidating = False
            self._out.append(Settled(member))

    def _member_ended(self, member: Watch, reason: str) -> None:
        """The member blocked the watcher: subscriptionEnded for the member;
        the group's schedules go on for the others."""
        group = member.owner
        if member.state is WatchState.BLOCKED:
            return
        self._enter(member, WatchState.BLOCKED)
        member.member = None
        member.resume = None
        member.held = None
        for schedule in group.schedules.values():
            schedule.drop_member_pending(member.presentity)
        self._tell_ended(group, member.presentity, reason)
        self._out.append(SaveWatch(group))

    def _tell_ended(self, watch: Watch, presentity: str, reason: str) -> None:
        """subscriptionEnded for ``presentity`` to every channel of the watch."""
        data = {"subscriptionEnded": {"presentity": presentity, "reason": reason}}
        # Each schedule under its own application: two accounts acting as the
        # same address share the watch, not their channels.
        targets = {(s.app_id, s.endpoint) for s in watch.schedules.values()}
        if watch.reference is not None:
            targets.add((watch.app_id, watch.reference.endpoint))
        for app_id, endpoint in sorted(targets):
            self._out.append(Deliver(app_id, endpoint, data))

    def _take_body(self, member: Member, body: bytes) -> bool:
        """A NOTIFY's body into the member; whether a new state was read."""
        if not body:
            # An active NOTIFY without a body: the server holds no document
            # for the presentity (its publications ended or expired, or it
            # never published; RFC 6665 §4.2.2 lets a NOTIFY carry no state).
            # Nothing is published, so nothing stale may be shown.
            member.presence = Presence(member.presentity, (), False)
            member.body_digest = None
            return True
        digest = hash(body)
        if digest == member.body_digest and member.presence is not None:
            return True  # a refresh's NOTIFY repeats the body: the same document
        shared = self._documents.get(member.presentity)
        if shared is not None and shared[0] == digest:
            member.body_digest, member.presence = shared
            return True
        try:
            member.presence = decode(body)
        except PidfError as exc:
            # Answered 200 all the same (the user agent did): one bad body
            # must not cost the subscription, nor hold back the decisions an
            # activation tells the application.
            logger.warning("unreadable PIDF from %s: %s", member.presentity, exc)
            return False
        member.body_digest = digest
        if member.presentity in self.by_presentity:
            self._documents[member.presentity] = (digest, member.presence)
        return True

    def _offer(self, watch: Watch, fresh: bool, received: float, now: float) -> None:
        """Tell the decisions if they changed, and offer a new state to the schedules
        (a member's to its group's, as the member's)."""
        self._tell_decisions(watch)
        presence = watch.presence
        owner = watch.owner
        if not fresh or presence is None:
            return
        whole = not watch.withheld
        if owner.schedules:
            granted = watch.granted
            member = None if watch.group is None else watch.presentity
            for schedule in list(owner.schedules.values()):
                if owner.unstarted and schedule.correlator in owner.unstarted:
                    whole = False
                    continue
                if member is not None and schedule.correlator in (watch.unstarted or ()):
                    # Held back for the member's rules across a Start: the
                    # member's held Start tells (checkImmediate) or takes as
                    # its baseline the state current then — not this offer.
                    whole = False
                    continue
                self._deliver(owner, schedule, schedule.offer(presence, granted, now, member),
                              now, received)
                self._file(schedule)
        if whole and watch.state is WatchState.ACTIVE:
            watch.offered, watch.offered_under = presence, watch.decisions
        else:
            watch.offered = None

    def _start(self, watch: Watch, start: _Start, now: float) -> None:
        if not self.schedule_live(start.schedule):
            return
        schedule = start.schedule
        if watch.is_list:
            # The group's period begins now; each member begins under its
            # own decisions (waiting for them like a single watch would).
            watch.unstarted = _discarded(watch.unstarted, schedule.correlator)
            if not start.check_immediate:
                schedule.start(None, frozenset(), now, check_immediate=False)
            for member in list(watch.listed.values()):
                self._start(member, start, now)
            self._file(schedule)
            return
        group = watch.group
        opening = watch.opening
        if opening is not None:
            # RFC 6665 §4.2.1.2: the notifier sends a NOTIFY "immediately" on
            # accepting the subscription, with the state it has then — the
            # state current at this Start (its baseline, or what checkImmediate
            # sends), not a change, even when it comes after the 2xx.
            opening.append(start)
            return
        if watch.waiting:
            # A member's state held back for its rules is its state current
            # at the Start: the held Start begins the member with it, once
            # (sent with checkImmediate, else the baseline), not _offer.
            if group is not None:
                watch.unstarted = _added(watch.unstarted, schedule.correlator)
            watch.hold(start)
            return
        active = watch.state is WatchState.ACTIVE
        if active and self._need_rules(watch, now):
            watch.waiting = True
            watch.resume = start
            return
        current = watch.presence if active else None
        if group is not None:
            watch.unstarted = _discarded(watch.unstarted, schedule.correlator)
            if current is None:
                return
            deliveries = schedule.begin_member(current, watch.granted, now, watch.presentity,
                                               check_immediate=start.check_immediate)
        else:
            watch.unstarted = _discarded(watch.unstarted, schedule.correlator)
            deliveries = schedule.start(current, watch.granted, now,
                                        check_immediate=start.check_immediate)
        self._deliver(watch.owner, schedule, deliveries, now)
        self._file(schedule)

    def _need_rules(self, watch: Watch, now: float) -> bool:
        """Whether the watch must wait for a read of its rules (one is asked
        for); False when the decisions are fresh or the cache served them."""
        if watch.decisions_fresh(now):
            return False
        after = watch.stale_after
        # Decisions that merely aged may come from any read of the last TTL;
        # after an activation or a change made here only a later read does.
        since = now - decisions_ttl(watch.presentity) if after is None else float("-inf")
        hit = self.rules.cached(watch.presentity, after, since)
        if hit is None and watch.activated:
            hit = self.rules.cached(watch.presentity, None, now - decisions_ttl(watch.presentity))
            if hit is not None and not _allows(hit[1], watch.watcher):
                hit = None
        if hit is not None:
            self._take_rules(watch, hit[0], hit[1].rule_for(watch.watcher), now)
            return False
        read = self.rules.request(watch.presentity, after, since, now)
        if read is not None:
            self._out.append(ReadRules(read))
        return True

    def _interested(
        self, read: RulesRead, now: float, rules: PresRules | None = None
    ) -> list[Watch]:
        """The presentity's watches that wait for ``read``; those that need a
        later one (begun after a change made here) get it asked for."""
        out = []
        fresh = read.started >= now - decisions_ttl(read.presentity)
        for watch in self.by_presentity.get(read.presentity, {}).values():
            if not (watch.waiting or watch.revalidating):
                continue
            if (
                watch.activated and fresh and rules is not None
                and _allows(rules, watch.watcher)
            ):
                out.append(watch)  # an activation that this read agrees with
                continue
            if watch.stale_after is not None and read.serial <= watch.stale_after:
                again = self.rules.request(read.presentity, watch.stale_after, float("-inf"), now)
                if again is not None:
                    self._out.append(ReadRules(again))
                continue
            out.append(watch)
        return out

    def _take_rules(self, watch: Watch, read: RulesRead, rule: Any, now: float) -> None:
        if read.serial < watch.read_serial:
            return  # a later read was taken meanwhile
        watch.rules_unconfirmed = watch.withheld = False
        before = watch.decisions
        watch.rule_blocks = rule is not None and rule.sub_handling is SubHandling.BLOCK
        if rule is None:
            asked = watch.attributes or frozenset(ALL_ATTRIBUTES)
            watch.decisions = shared_decisions({kind: kind in asked for kind in ALL_ATTRIBUTES})
        elif rule.sub_handling is SubHandling.ALLOW:
            watch.decisions = shared_decisions(rule.decisions())
        else:
            watch.decisions = shared_decisions({kind: False for kind in ALL_ATTRIBUTES})
        watch.read_serial, watch.read_at, watch.stale_after = read.serial, read.started, None
        watch.activated = False
        if watch.decisions != before:
            self._out.append(SaveWatch(watch.owner))
        group = watch.group
        if group is not None and watch.rule_blocks and watch.state is WatchState.ACTIVE:
            # The RLS may not tell a member's block (Kamailio sends nothing:
            # docs/kamailio.md): its rules do.
            self._member_ended(watch, "Blocked")
        elif self._blocked_member(watch) and not watch.rule_blocks and group is not None:
            # Allowed again.  Kamailio ended its own subscription to the
            # member at the block and makes a new one only when the list's is
            # refreshed (docs/kamailio.md): the member's state comes after it.
            self._enter(watch, WatchState.PENDING)
            watch.decisions_sent = None  # the reference hears the decisions again
            for schedule in group.schedules.values():
                schedule.forget_member(watch.presentity)  # its next state in full
            if group.rlmi is not None and watch.presentity in group.rlmi.members:
                # Its state, unchanged since the block, must count as news.
                group.rlmi.members[watch.presentity] = ListMember(watch.presentity)
            self._out.append(SaveWatch(group))
            logger.info("list %s: %s allows %s again", group.presentity, watch.presentity,
                        watch.watcher)
            self._refresh_list(group, now)

    def _hold(self, watch: Watch, item: _HeldNotify | _MemberNews) -> None:
        """Keep a NOTIFY's news until the rules are in.  A repeat of the last
        news held (a refresh's NOTIFY: the same state and document) adds
        nothing.  Past :data:`HELD_LIMIT` a document replaces the last one
        held in the same state: with no partial notification each carries the
        whole state (RFC 5263 §1), so the states between are lost, never the
        latest."""
        held = watch.held
        if held and _same_state(held[-1], item):
            if _document(held[-1]) == _document(item):
                return
            if len(held) >= HELD_LIMIT:
                held[-1] = item
                if self.superseded % 1000 == 0:
                    logger.warning("%s's news held for %s while its rules are read reached "
                                   "%d: later documents replace the last held (%d so far)",
                                   watch.presentity, watch.watcher, HELD_LIMIT,
                                   self.superseded + 1)
                self.superseded += 1
                return
        watch.hold(item)

    def _settle(self, watch: Watch, now: float) -> None:
        """The read is in: tell the decisions, then take what waited, in order."""
        watch.waiting = watch.revalidating = False
        self._out.append(Settled(watch))
        if watch.state is WatchState.ACTIVE:
            self._tell_decisions(watch)
        resume, watch.resume = watch.resume, None
        if resume is not None:
            self._run(watch, resume, now)
        while watch.held and not watch.waiting and watch.state is not WatchState.ENDED:
            self._run(watch, watch.held.pop(0), now)
        if not watch.held:
            watch.held = None

    def _run(self, watch: Watch, item: _Held, now: float) -> None:
        if isinstance(item, _Offer):
            if watch.state is WatchState.ACTIVE:  # not ended while the rules were read
                self._offer(watch, item.fresh, item.received, now)
        elif isinstance(item, _HeldNotify):
            self._take_notify(watch, item.event, item.received, now)
        elif isinstance(item, _MemberNews):
            self._take_member(watch, item, now)
        else:
            self._start(watch, item, now)

    def _tell_decisions(self, watch: Watch) -> None:
        owner = watch.owner
        if owner.reference is None or watch.decisions is None or watch.rule_blocks:
            # A block is told by subscriptionEnded "Blocked" once the server
            # ends the subscription, not by a notifySubscription of refusals.
            return
        asked = [a for a in ALL_ATTRIBUTES if not watch.attributes or a in watch.attributes]
        decisions = tuple((kind, watch.decisions.get(kind, False)) for kind in asked)
        if decisions == watch.decisions_sent:
            return
        watch.decisions_sent = shared_sent(decisions)
        # Kept with the watch: after a restart the re-made subscription's first
        # NOTIFY must not tell the application the same decisions again.
        self._out.append(SaveWatch(owner))
        self._out.append(Deliver(owner.app_id, owner.reference.endpoint, {
            "notifySubscription": {
                "presentity": watch.presentity,
                "decisions": [
                    {"presenceAttribute": kind.value, "decision": granted}
                    for kind, granted in decisions
                ],
            }
        }))

    def _deliver(
        self, watch: Watch, schedule: Schedule, deliveries: list[Delivery], now: float,
        received: float | None = None,
    ) -> None:
        for delivery in deliveries:
            self._out.append(Deliver(schedule.app_id, schedule.endpoint, delivery.data, received))
        if schedule.ended:
            self._remove_schedule(watch, schedule)
            if not watch.needed:
                self._end(watch)
        elif deliveries or schedule.has_pending:
            # Remaining count, last-sent instant, coalesced state: a restart
            # resumes where this left off (written within the save delay).
            self._unsaved[(schedule.app_id, schedule.correlator)] = schedule
            if _SAVE_KEY not in self._timers:
                self._timers.schedule(now + self._save_delay, _SAVE_KEY)

    def _file(self, schedule: Schedule) -> None:
        key = (_Timer.SCHEDULE, schedule.app_id, schedule.correlator)
        deadline = schedule.get_timer()
        if deadline is None or key[1:] not in self.schedules:
            self._timers.cancel(key)
        elif self._timers.deadline(key) != deadline:
            self._timers.schedule(deadline, key)

    def _remove_schedule(self, watch: Watch, schedule: Schedule) -> None:
        key = (schedule.app_id, schedule.correlator)
        if schedule.correlator in watch.schedules:
            del watch.schedules[schedule.correlator]
        watch.unstarted = _discarded(watch.unstarted, schedule.correlator)
        self.schedules.pop(key, None)
        # Its record is deleted: a write still due must not bring it back.
        self._unsaved.pop(key, None)
        self._timers.cancel((_Timer.SCHEDULE, *key))
        self._out.append(ForgetSchedule(schedule))

    def _ended(self, watch: Watch, reason: str) -> None:
        """Tell the application, end the schedules (no statusEnd: RFC says error)."""
        self._tell_ended(watch, watch.presentity, reason)
        for schedule in list(watch.schedules.values()):
            schedule.end_quietly()
            self._remove_schedule(watch, schedule)
        if reason != "Blocked":
            self._drop(watch)

    def _end(self, watch: Watch) -> None:
        """Nothing needs the watch: forget it and end its subscription."""
        subscription_id = watch.subscription_id
        self._drop(watch)
        if subscription_id is not None:
            # Not awaited to the end: the final NOTIFY (or its absence, when
            # the server is down) is no concern of the REST caller.
            self._out.append(Unsubscribe(subscription_id))

    def _drop(self, watch: Watch) -> None:
        self._enter(watch, WatchState.ENDED)
        watch.dialog = _step(watch.dialog, _Step.DROPPED)
        self._timers.cancel((_Timer.RETRY, *watch.key))
        self._timers.cancel((_Timer.CHECK, *watch.key))
        self._timers.cancel((_Timer.QUIET, *watch.key))
        self._timers.cancel((_Timer.CONFIRM, *watch.key))
        watch.suspects = _EMPTY
        watch.confirming = False
        for member in watch.listed.values():
            self._forget_member(member)
        if self.watches.get(watch.key) is watch:
            self.watches.count -= 1
            self.watches.states[watch.state] -= 1
            self._unindex(watch)
            self._out.append(ForgetWatch(watch))
        watch.resume = None
        watch.held = None
        if watch.waiting or watch.revalidating:
            watch.waiting = watch.revalidating = False
            self._out.append(Settled(watch))
