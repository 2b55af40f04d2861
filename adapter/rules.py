"""Presentities' pres-rules as read over XCAP, cached, sans-IO.

Theory of operation
-------------------
A presentity's rules are one document for all its watchers, so a read is made
once per presentity and serves every watch that needs it (single flight).  The
cache performs no read itself: :meth:`RulesCache.request` says whether a read
must begin — a :class:`RulesRead` the caller performs and hands back with
:meth:`RulesCache.read_done` or :meth:`RulesCache.read_failed`.

Reads are numbered in the order they begin (``serial``).  A read asked for
is *queued* until the caller begins it (:meth:`RulesCache.begin`: it takes
its serial and start then, when its GET is sent); until then it serves every
need that arises, since whatever it reads is newer than all of them — a burst
of activations asks for one read per presentity, however long the reads wait
for their turn.  Two kinds of need:

* *after a mark*: an activation or a change made by this adapter must be
  followed by a read begun after it (:meth:`mark`, :meth:`changed`); a read
  already under way, begun before, does not count — the need waits for it to
  end and then asks again, so a presentity has one read under way at a time;
* *within the age limit*: decisions that merely aged may come from any read
  begun within :func:`decisions_ttl` of ``now``.

A change made here stores a placeholder that older reads landing later do not
overwrite, so they cannot bring back what was just withdrawn.  Entries older
than :data:`DECISIONS_TTL` serve no need and are swept, once per TTL at most,
when a read ends or :meth:`RulesCache.expire` is called (the watch machine
does on every NOTIFY): a presentity's rules name each of its watchers, and a
gateway whose reads have stopped would otherwise keep every document it ever
read.  ``now`` is passed in; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from pidf.presrules import PresRules

__all__ = ["DECISIONS_TTL", "RulesCache", "RulesRead", "decisions_ttl"]

#: Longest decisions are used before the rules are read again.  Each
#: presentity's own age limit lies between half of it and all of it, spread by
#: the presentity's address: watches started together (an adapter's restart,
#: a burst of subscriptions) otherwise age together, and their reads would
#: come in one burst every TTL that holds NOTIFYs back.
DECISIONS_TTL = 30.0


def decisions_ttl(presentity: str) -> float:
    """Between half :data:`DECISIONS_TTL` and all of it, the same for all the
    watches of ``presentity`` (they share its reads) within one process."""
    return DECISIONS_TTL * (1.0 - 0.5 * (hash(presentity) % 1024) / 1024)


@dataclass(frozen=True, slots=True)
class RulesRead:
    """One read of a presentity's rules: begun at ``started``, ``serial``-th."""

    presentity: str
    serial: int
    started: float

    def serves(self, after: int | None, since: float) -> bool:
        """Whether this read meets a need (see the module's docstring)."""
        return self.serial > after if after is not None else self.started >= since


class RulesCache:
    def __init__(self) -> None:
        self._serial = 0
        #: The latest read per presentity and its rules; None as rules marks a
        #: change made here, which older reads must not hide.
        self._known: dict[str, tuple[RulesRead, PresRules | None]] = {}
        #: The read asked for and not begun yet per presentity, and the one
        #: under way (begun).
        self._queued: dict[str, RulesRead] = {}
        self._reading: dict[str, RulesRead] = {}
        #: When the entries are next looked at for ones older than the TTL.
        self._sweep_due = float("-inf")

    def __len__(self) -> int:
        return len(self._known)

    def mark(self) -> int:
        """A mark that only reads begun from now on are after."""
        return self._serial

    def changed(self, presentity: str, now: float) -> int:
        """This adapter changed the rules: the mark that reads must be after."""
        self._serial += 1
        self._known[presentity] = (RulesRead(presentity, self._serial, now), None)
        # The read under way began before the change; a queued one begins after.
        self._reading.pop(presentity, None)
        return self._serial

    def cached(
        self, presentity: str, after: int | None, since: float
    ) -> tuple[RulesRead, PresRules] | None:
        """Rules already read that meet the need, with their read."""
        entry = self._known.get(presentity)
        if entry is None or entry[1] is None or not entry[0].serves(after, since):
            return None
        return entry[0], entry[1]

    def request(
        self, presentity: str, after: int | None, since: float, now: float
    ) -> RulesRead | None:
        """A read to perform (to :meth:`begin` when its turn comes), or None when
        one queued or under way meets the need."""
        if presentity in self._queued:
            return None  # it begins after this need arose: it meets it
        reading = self._reading.get(presentity)
        if reading is not None and (reading.serves(after, since) or after is not None):
            # A need after a mark that the read under way does not meet is
            # met by the one read begun when it ends (the watches waiting for
            # it ask again then): one read at a time per presentity, however
            # many watches of it activate meanwhile (a member of many lists).
            return None
        self._serial += 1
        read = RulesRead(presentity, self._serial, now)
        self._queued[presentity] = read
        return read

    def begin(self, read: RulesRead, now: float) -> RulesRead:
        """The queued ``read`` begins now: the read to hand back when it ends,
        numbered after every mark made while it waited."""
        if self._queued.get(read.presentity) == read:
            del self._queued[read.presentity]
        self._serial += 1
        begun = RulesRead(read.presentity, self._serial, now)
        self._reading[read.presentity] = begun
        return begun

    def read_done(self, read: RulesRead, rules: PresRules, now: float) -> None:
        self._finish(read)
        known = self._known.get(read.presentity)
        if known is None or known[0].serial < read.serial:  # not older than what is known
            self._known[read.presentity] = (read, rules)
        self.expire(now)

    def read_failed(self, read: RulesRead) -> None:
        self._finish(read)

    def _finish(self, read: RulesRead) -> None:
        for table in (self._reading, self._queued):
            if table.get(read.presentity) == read:
                del table[read.presentity]

    def expire(self, now: float) -> None:
        """Forget the rules no watch may use any more (older than the TTL),
        unless that was done less than a TTL ago."""
        if now < self._sweep_due:
            return
        self._sweep_due = now + DECISIONS_TTL
        oldest = now - DECISIONS_TTL
        if any(e[0].started < oldest for e in self._known.values()):
            self._known = {p: e for p, e in self._known.items() if e[0].started >= oldest}
