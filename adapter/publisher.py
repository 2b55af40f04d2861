"""The presentities' publications, sans-IO: what to publish, save and withdraw.

Theory of operation
-------------------
:class:`Publisher` holds, per presentity address, the attributes published
through the adapter and the state of the one SIP publication that carries
them (RFC 3903: later changes modify it, with SIP-If-Match).  It does no I/O
and reads no clock: every input carries ``now`` (the service's wall clock),
and every input returns the actions to carry out, in order —
:class:`Save` / :class:`Forget` (the store record), :class:`SaveTag` (its
entity tag alone), :class:`Publish` (a new
SIP publication, resuming the server's one when its entity tag is still
alive), :class:`Modify`, :class:`Unpublish`.  Its one timer heap (the
re-publications after a rules change) is read with :meth:`Publisher.get_timer`
and fired with :meth:`Publisher.handle_timer`, as in ``sip.useragent``; what
falls due is a :class:`Republish`, which the driver turns into
:meth:`Publisher.republish` once the presentity's earlier actions are done.

The driver (adapter/presentity.py) performs the actions in order, waiting
for each :class:`Save` before what follows: the store says what is published
before the server is asked (a restart brings it back; a withdrawal is never
undone by one), and it says "nothing" before an un-PUBLISH goes out.

Phases of one presentity (rows: phase; columns: input; ``·`` = stays)

    phase        publish         withdraw all   removed              rules changed  republish
    -----------  --------------  -------------  -------------------  -------------  ----------
    UNPUBLISHED  PUBLISHED (a)   · Forget       ·                    ·              ·
    PUBLISHED    · Save, Modify  WITHDRAWING    UNPUBLISHED          · arm          · Modify
                                 (b)                                                (c)
    WITHDRAWING  PUBLISHED (d)   · Unpublish    UNPUBLISHED, Forget  ·              ·

    (a) Save, then Publish (resuming the server's publication while its
        entity tag is alive).
    (b) Save (no attributes, the entity tag kept), then Unpublish.
    (c) with the body it carries, unless its last PUBLISH failed (it is
        retrying with that body anyway) or there is nothing to publish.
    (d) Save, Modify: a publication being removed is revived by a modify
        (sip/publication.py, REMOVING).

Withdrawing some attributes is a publish of the rest.  A confirmation
(``confirmed``) in any phase saves the new entity tag: a restarted adapter
modifies (or refreshes) that publication instead of adding a second one
beside it.  It saves the entity tag alone (:class:`SaveTag`): the record's
attributes are those the request's Save wrote before its PUBLISH went out,
and a refresh, the confirmation that comes most often, changes nothing else.

A request's first action is its Save (or Forget).  When the store cannot
write it, nothing was sent: the driver puts back what the request changed
(:meth:`Publisher.mark`, then :meth:`Publisher.undo`), and the presentity is
as it was before the request, in memory, in the store and at the server.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from pidf import AttributeType, Other, PresenceAttribute, encode
from sip.timers import TimerHeap

__all__ = [
    "REPUBLISH_DELAY",
    "Forget",
    "Mark",
    "Modify",
    "Phase",
    "Publish",
    "PublishAction",
    "Publisher",
    "Republish",
    "Save",
    "SaveTag",
    "Unpublish",
]

#: How long after a rules change the presentity's publication goes out again
#: (seconds).  Kamailio's XCAP server answers the PUT before it re-sends the
#: document to the SIP watchers (conf/kamailio/kamailio.cfg, RULES_CHANGED);
#: a PUBLISH handled by another worker meanwhile could be notified first, and
#: the unfiltered re-send would be what the phones keep.  Changes within this
#: pause share one re-publication.
REPUBLISH_DELAY = 0.2


class Phase(enum.Enum):
    UNPUBLISHED = "unpublished"  # no SIP publication
    PUBLISHED = "published"  # a publication carries the attributes (or retries to)
    WITHDRAWING = "withdrawing"  # the un-PUBLISH is out; the record goes when it is over


@dataclass(frozen=True)
class Save:
    """Write the presentity's record: its attributes and the server's entity tag."""

    address: str
    attributes: tuple[PresenceAttribute, ...]
    etag: str | None
    etag_expires: float | None  # epoch seconds


@dataclass(frozen=True)
class SaveTag:
    """Write the server's new entity tag into the presentity's record, the
    rest of it as it is."""

    address: str
    etag: str
    etag_expires: float  # epoch seconds


@dataclass(frozen=True)
class Forget:
    """Delete the presentity's record: nothing of it is published."""

    address: str


@dataclass(frozen=True)
class Publish:
    """Start a SIP publication of ``body``; ``etag`` (alive ``etag_left`` seconds
    more) resumes the one the server holds (RFC 3903 §4.4)."""

    address: str
    body: bytes
    etag: str | None = None
    etag_left: float | None = None


@dataclass(frozen=True)
class Modify:
    """Replace the body of the presentity's publication (RFC 3903 §4.4)."""

    address: str
    body: bytes


@dataclass(frozen=True)
class Unpublish:
    """End the presentity's publication (PUBLISH with Expires: 0, RFC 3903 §4.5)."""

    address: str


@dataclass(frozen=True)
class Republish:
    """The re-publication after a rules change is due: ask :meth:`Publisher.republish`."""

    address: str


PublishAction = Save | SaveTag | Forget | Publish | Modify | Unpublish


@dataclass(slots=True)
class _Entry:
    address: str
    phase: Phase = Phase.UNPUBLISHED
    attributes: tuple[PresenceAttribute, ...] = ()
    body: bytes | None = None  # what the publication carries
    # The server's entity tag for our publication and when it expires (epoch).
    etag: str | None = None
    etag_expires: float | None = None
    failing: bool = False  # its last PUBLISH failed; it retries by itself
    republish_due: bool = field(default=False)

    def save(self) -> Save:
        return Save(self.address, self.attributes, self.etag, self.etag_expires)

    def copy(self) -> _Entry:
        # Field by field: dataclasses.replace is several times slower, and
        # every request takes a copy (Publisher.mark).
        return _Entry(self.address, self.phase, self.attributes, self.body, self.etag,
                      self.etag_expires, self.failing, self.republish_due)


@dataclass(frozen=True)
class Mark:
    """A presentity as it was before a request (:meth:`Publisher.mark`)."""

    address: str
    entry: _Entry | None


class Publisher:
    """Every presentity's publication; see the module docstring."""

    def __init__(self, *, republish_delay: float | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._timers: TimerHeap[str] = TimerHeap()
        self._republish_delay = republish_delay

    # -- what the driver reads -------------------------------------------------

    def phase(self, address: str) -> Phase:
        entry = self._entries.get(address)
        return entry.phase if entry is not None else Phase.UNPUBLISHED

    def attributes(self, address: str) -> tuple[PresenceAttribute, ...]:
        entry = self._entries.get(address)
        return entry.attributes if entry is not None else ()

    def addresses(self) -> list[str]:
        return list(self._entries)

    def get_timer(self) -> float | None:
        """The next deadline, epoch seconds on the ``now`` the inputs carry."""
        return self._timers.next_deadline()

    # -- a caller's requests ---------------------------------------------------

    def mark(self, address: str) -> Mark:
        """What :meth:`undo` puts back if the request made next cannot be saved."""
        entry = self._entries.get(address)
        return Mark(address, None if entry is None else entry.copy())

    def undo(self, mark: Mark) -> None:
        """The request made after ``mark`` was not saved, so nothing of it was
        sent: the presentity is as it was.  The entity tag is not put back: a
        confirmation that came meanwhile holds the server's current one."""
        before = mark.entry
        if before is None:
            # New with the request: it sent nothing, so no confirmation came.
            self._entries.pop(mark.address, None)
            return
        entry = self._entries.get(mark.address)
        if entry is None:
            self._entries[mark.address] = entry = before
        entry.phase, entry.attributes, entry.body = before.phase, before.attributes, before.body
        entry.failing = before.failing

    def record(self, address: str) -> Save | Forget:
        """The presentity's record as it stands (after :meth:`undo`, the store is
        told again: a write that failed for an unreachable store is still
        written once it is back, and this one follows it)."""
        entry = self._entries.get(address)
        return Forget(address) if entry is None else entry.save()

    def release(self, address: str) -> None:
        """Another node owns the presentity's publication now (adapter.cluster):
        forget it here, with its timer; nothing is sent, nothing is written."""
        self._entries.pop(address, None)
        self._timers.cancel(address)

    def publish(
        self, address: str, attributes: tuple[PresenceAttribute, ...], now: datetime
    ) -> list[PublishAction]:
        """Publish ``attributes``; those not named keep their published value.

        What changes now is stamped ``now``; the attributes kept keep their own
        lastChange (watchers diff on it).
        """
        stamped = tuple(
            a if a.last_change is not None else PresenceAttribute(a.value, now, a.note)
            for a in attributes
        )
        entry = self._entry(address)
        return self._publish(entry, _merge(entry.attributes, stamped), now)

    def withdraw(
        self, address: str, kinds: frozenset[AttributeType], now: datetime
    ) -> list[PublishAction]:
        """Withdraw the attributes of ``kinds`` (empty: all of them).

        What remains is published; when nothing remains the publication ends.
        Withdrawing what is not published asks for nothing.
        """
        entry = self._entries.get(address)
        if entry is None:
            return [Forget(address)]
        kept = tuple(a for a in entry.attributes if kinds and a.type not in kinds)
        if kept:
            return self._publish(entry, kept, now) if kept != entry.attributes else []
        entry.attributes = ()
        if entry.phase is Phase.UNPUBLISHED:
            del self._entries[address]
            return [Forget(address)]
        entry.body = None
        if entry.phase is Phase.WITHDRAWING:
            return [Unpublish(address)]
        entry.phase = Phase.WITHDRAWING
        return [entry.save(), Unpublish(address)]

    def restore(
        self,
        address: str,
        attributes: tuple[PresenceAttribute, ...],
        etag: str | None,
        etag_expires: float | None,
        now: datetime,
    ) -> list[PublishAction]:
        """What the store kept: publish it again, resuming the server's publication.

        A record with no attributes is a withdrawal the adapter stopped in the
        middle of: the server's publication (if its tag is still alive) is
        ended, nothing is published again.
        """
        entry = self._entry(address)
        if entry.phase is not Phase.UNPUBLISHED:
            return []  # published again by a request meanwhile
        entry.attributes, entry.etag, entry.etag_expires = attributes, etag, etag_expires
        left = (etag_expires or 0.0) - now.timestamp()
        if not attributes:
            if etag is None or left <= 0:
                del self._entries[address]
                return [Forget(address)]
            entry.phase = Phase.WITHDRAWING
            return [Publish(address, encode((), entity=address, now=now), etag, left),
                    Unpublish(address)]
        return [self._start(entry, now)]

    def resync(self, address: str, now: datetime) -> list[PublishAction]:
        """The server came back or restarted: its publication is refreshed now.

        A modify with SIP-If-Match; a server that forgot the entity tag answers
        412 and the publication is sent afresh (RFC 3903 §6).
        """
        entry = self._entries.get(address)
        if entry is None or entry.phase is not Phase.PUBLISHED or not entry.attributes:
            return []  # none, or being withdrawn: not published again
        entry.body = encode(entry.attributes, entity=address, now=now)
        return [Modify(address, entry.body)]

    def rules_changed(self, address: str, now: datetime) -> list[PublishAction]:
        """The presentity's pres-rules changed: publish its state again, soon.

        After a pres-rules change Kamailio 5.6 re-sends the presence document
        to every SIP watcher unfiltered (docs/kamailio.md, "Privacy"); only
        the NOTIFYs a PUBLISH causes pass through the rules.  So the
        publication is modified with the body it already carries (RFC 3903
        §4.4), and every SIP watcher gets a filtered document right after the
        unfiltered one.  A modification rather than a body-less refresh: a
        refresh only extends the publication's lifetime (§4.2), and a state
        agent need not notify anyone for it.
        """
        entry = self._entries.get(address)
        if entry is None or entry.phase is not Phase.PUBLISHED:
            return []  # nothing published through this adapter
        if address not in self._timers:
            delay = REPUBLISH_DELAY if self._republish_delay is None else self._republish_delay
            self._timers.schedule(now.timestamp() + delay, address)
        return []

    def handle_timer(self, now: datetime) -> list[Republish]:
        """The re-publications due at ``now``."""
        return [Republish(address) for address in self._timers.pop_expired(now.timestamp())]

    def republish(self, address: str, now: datetime) -> list[PublishAction]:
        """A due re-publication (see :meth:`rules_changed`), decided now.

        Nothing when the publication ended or is being withdrawn meanwhile, or
        its last PUBLISH failed: it is retrying with its body anyway.
        """
        entry = self._entries.get(address)
        if (entry is None or entry.phase is not Phase.PUBLISHED or entry.failing
                or entry.body is None or not entry.attributes):
            return []
        return [Modify(address, entry.body)]

    # -- what the publication did ----------------------------------------------

    def confirmed(
        self, address: str, etag: str, expires: int, now: datetime
    ) -> list[PublishAction]:
        """The server took the publication (initial, modify or refresh)."""
        entry = self._entries.get(address)
        if entry is None:
            return []
        entry.etag, entry.etag_expires = etag, now.timestamp() + expires
        entry.failing = False
        return [SaveTag(address, etag, entry.etag_expires)]

    def failed(self, address: str) -> list[PublishAction]:
        """A PUBLISH failed; the publication retries by itself (or gave up)."""
        entry = self._entries.get(address)
        if entry is not None:
            entry.failing = True
        return []

    def removed(self, address: str) -> list[PublishAction]:
        """The publication is over (its un-PUBLISH answered, or given up)."""
        entry = self._entries.get(address)
        if entry is None or entry.phase is Phase.UNPUBLISHED:
            return []
        entry.phase = Phase.UNPUBLISHED
        entry.etag = entry.etag_expires = None
        entry.failing = False
        self._timers.cancel(address)
        if entry.attributes:
            return []
        del self._entries[address]
        return [Forget(address)]

    # -- inside ------------------------------------------------------------------

    def _entry(self, address: str) -> _Entry:
        entry = self._entries.get(address)
        if entry is None:
            entry = self._entries[address] = _Entry(address)
        return entry

    def _publish(
        self, entry: _Entry, attributes: tuple[PresenceAttribute, ...], now: datetime
    ) -> list[PublishAction]:
        entry.attributes = attributes
        save = entry.save()
        if entry.phase is Phase.UNPUBLISHED:
            return [save, self._start(entry, now)]
        # A publication being withdrawn is revived by a modify: the core sends
        # it once the removal is answered (sip/publication.py, REMOVING).
        entry.phase = Phase.PUBLISHED
        entry.body = encode(attributes, entity=entry.address, now=now)
        return [save, Modify(entry.address, entry.body)]

    def _start(self, entry: _Entry, now: datetime) -> Publish:
        entry.phase = Phase.PUBLISHED
        entry.failing = False
        entry.body = encode(entry.attributes, entity=entry.address, now=now)
        left = (entry.etag_expires or 0.0) - now.timestamp()
        if entry.etag is not None and left > 0:
            return Publish(entry.address, entry.body, entry.etag, left)
        return Publish(entry.address, entry.body)


def _merge(
    current: tuple[PresenceAttribute, ...], update: tuple[PresenceAttribute, ...]
) -> tuple[PresenceAttribute, ...]:
    """``update`` replaces attributes of the same type (Other: of the same name)."""
    if not current:
        return update
    replaced = {_key(a) for a in update}
    kept = tuple(a for a in current if _key(a) not in replaced)
    return kept + update if kept else update


def _key(attribute: PresenceAttribute) -> object:
    """What two attributes share when one replaces the other."""
    value = attribute.value
    if isinstance(value, Other):
        return (attribute.type, value.name)
    return attribute.type
