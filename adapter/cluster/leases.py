"""One owner for each piece of SIP work: leases with expiry and fencing tokens.

Theory of operation
-------------------
A piece of SIP work is what a store record of kind ``publication`` (one
presentity's publication) or ``watch`` (one watcher's subscription to one
presentity, with its schedules) describes.  Each has a row in the store's
``leases`` table, named like the record, ``(kind, key)``: the node that owns
it, a fencing token, and when the lease expires.

* **New work** is owned by the node that was asked for it: a REST call about
  work nobody holds inserts the row (token 1) before anything is written or
  sent.
* **Renewal**: every half lease period each node pushes the expiry of all its
  leases to two periods ahead, in one statement (:data:`RENEW`).  The rows it
  gets back are what it owns; one it held and did not get back was taken from
  it: it lets that work go.
* **Takeover**: a lease not renewed for two periods has expired — its node is
  dead (adapter.cluster.nodes says so at the same moment).  Every node sweeps
  (:data:`SWEEP`) for expired leases and claims its share: those whose key
  hashes to its place among the live nodes, and, half a period later,
  whatever is still unclaimed (a share whose node died too).  A claim adds
  one to the token.  The claimant re-publishes and re-subscribes the work
  from its records.
* **Fencing**: a node writes a record of its work — and a schedule, part of
  its watch's work — only with the token it holds (adapter.store.postgres,
  ``_FENCED_PUT``), in the same statement as the write; after a takeover
  the old owner's writes do nothing and fail with StaleLease, and it lets
  the work go.
* **End**: the delete of a work's record deletes its lease in the same
  statement (``_FENCED_END``), fenced alike: no lease outlives its work, so
  a takeover never claims work that is over.  A node that cannot renew (the
  database unreachable) lets its work go *before* its leases can expire:
  :class:`LeaseBook` counts a lease valid only until ``renewal began + 2
  periods - a half period``, on the node's own monotonic clock, so that two
  nodes never refresh the same work.  When the database is back the node
  renews the leases still in its name and takes that work up again.

Times in the table are the database server's clock (``now()``).

:class:`LeaseBook` is the node's own view (no I/O, ``now`` passed in: unit
tested alone); the statements below are run by
:class:`~adapter.cluster.ownership.Ownership`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ACQUIRE",
    "DROP",
    "GIVE_UP",
    "OWNER",
    "RENEW",
    "SWEEP",
    "UNLEASED",
    "LeaseBook",
    "LeaseKey",
]

#: A lease's name: the kind and key of the record of its work.
LeaseKey = tuple[str, str]

# %(ttl)s: seconds a lease lasts from now (two lease periods).
_UNTIL = "now() + make_interval(secs => %(ttl)s)"

#: Take (kind, key) unless a live lease of another node holds it; the owner and
#: token (no row: another node's lease is alive).  Taking it from a dead node
#: adds one to the token.
ACQUIRE = (
    "INSERT INTO leases AS l VALUES (%(kind)s, %(key)s, %(me)s, 1, " + _UNTIL + ")"
    " ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner,"
    " token = l.token + CASE WHEN l.owner = excluded.owner THEN 0 ELSE 1 END,"
    " expires = excluded.expires"
    " WHERE l.owner = excluded.owner OR l.expires < now()"
    " RETURNING token"
)
#: Who owns (kind, key), and whether the lease has expired.
OWNER = "SELECT owner, expires < now() FROM leases WHERE kind = %(kind)s AND key = %(key)s"
#: Push every lease of this node two periods ahead: what it owns.
RENEW = (
    "UPDATE leases l SET expires = " + _UNTIL + " FROM (SELECT kind, key FROM leases"
    " WHERE owner = %(me)s ORDER BY kind, key FOR NO KEY UPDATE) AS mine"
    " WHERE l.kind = mine.kind AND l.key = mine.key RETURNING l.kind, l.key, l.token"
)
#: Claim expired leases of other nodes: this node's share (the key's hash
#: modulo the live nodes), and any expired for longer than ``grace`` seconds.
SWEEP = (
    "UPDATE leases AS l SET owner = %(me)s, token = l.token + 1, expires = " + _UNTIL +
    " WHERE (l.kind, l.key) IN (SELECT kind, key FROM leases"
    "  WHERE expires < now() AND owner <> %(me)s"
    "  AND (mod(abs(hashtext(kind || ' ' || key)::bigint), %(count)s) = %(index)s"
    "       OR expires < now() - make_interval(secs => %(grace)s))"
    "  ORDER BY expires LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " AND l.expires < now()"
    " RETURNING l.kind, l.key, l.token"
)
#: Records of SIP work with no lease (a store a single adapter wrote before it
#: became a cluster's): this node takes them.
UNLEASED = (
    "INSERT INTO leases SELECT kind, key, %(me)s, 1, " + _UNTIL +
    " FROM records r WHERE kind IN ('publication', 'watch') AND NOT EXISTS"
    " (SELECT 1 FROM leases l WHERE l.kind = r.kind AND l.key = r.key)"
    " ON CONFLICT (kind, key) DO NOTHING RETURNING kind, key, token"
)
#: The work is over (its record is gone): the lease goes too.
DROP = (
    "DELETE FROM leases WHERE kind = %(kind)s AND key = %(key)s"
    " AND owner = %(me)s AND token = %(token)s"
)
#: A clean stop: this node's leases expire now, for the others to take at once.
GIVE_UP = "UPDATE leases SET expires = now() - interval '1 day' WHERE owner = %(me)s"


@dataclass
class _Held:
    token: int
    valid_until: float  # on the node's monotonic clock
    since: float  # when the statement that took it began


class LeaseBook:
    """The leases this node holds, as it last saw them, and until when it may
    act on each (see the module docstring).  ``lease``: the period, seconds."""

    def __init__(self, lease: float) -> None:
        self.lease = lease
        self._held: dict[LeaseKey, _Held] = {}
        # The leases held by kind, counted as they come and go: /metrics
        # reads it instead of walking every lease.
        self._kinds: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def keys(self) -> list[LeaseKey]:
        return list(self._held)

    def kinds(self) -> dict[str, int]:
        """How many leases are held, by kind."""
        return {kind: count for kind, count in self._kinds.items() if count}

    @property
    def validity(self) -> float:
        """How long after a renewal *began* the node may act on what it renewed:
        short of the table's two periods by half a period (the statement's own
        time, the gap before the next renewal is noticed)."""
        return 1.5 * self.lease

    def token(self, key: LeaseKey, now: float) -> int | None:
        """The fencing token to write ``key``'s record with, None when not held
        (or no longer valid at ``now``)."""
        held = self._held.get(key)
        if held is None or now >= held.valid_until:
            return None
        return held.token

    def took(self, rows: Iterable[tuple[str, str, int]], began: float) -> list[LeaseKey]:
        """Leases acquired or claimed by a statement begun at ``began``; those
        that are new here (or came back with a new token): their work must be
        taken up from its records."""
        new: list[LeaseKey] = []
        for kind, key, token in rows:
            lease = (kind, key)
            held = self._held.get(lease)
            if held is None or held.token != token:
                new.append(lease)
            if held is None:
                self._kinds[kind] += 1
            self._held[lease] = _Held(token, began + self.validity, began)
        return new

    def renewed(
        self, rows: Iterable[tuple[str, str, int]], began: float
    ) -> tuple[list[LeaseKey], list[LeaseKey]]:
        """The node's renewal (begun at ``began``) answered ``rows``: what it owns.

        Returns (lost, found): leases held here that another node took (let
        that work go), and leases in this node's name not held here (a node
        restarted under the same name, or work let go while the database was
        unreachable: take it up again).
        """
        owned = {(kind, key): token for kind, key, token in rows}
        # A lease taken after the renewal began (a request's, on another
        # connection) may not be in its answer: it is not judged by it.
        lost = [lease for lease, held in self._held.items()
                if held.since < began and owned.get(lease) != held.token]
        for lease in lost:
            del self._held[lease]
            self._kinds[lease[0]] -= 1
        found = [lease for lease in owned if lease not in self._held]
        for lease, token in owned.items():
            held = self._held.get(lease)
            if held is None or held.token == token:
                if held is None:
                    self._kinds[lease[0]] += 1
                self._held[lease] = _Held(token, began + self.validity, began)
        return lost, found

    def expired(self, now: float) -> list[LeaseKey]:
        """Leases that may no longer be acted on (not renewed in time): dropped
        here; the node lets their work go."""
        gone = [lease for lease, held in self._held.items() if now >= held.valid_until]
        for lease in gone:
            del self._held[lease]
            self._kinds[lease[0]] -= 1
        return gone

    def drop(self, key: LeaseKey) -> int | None:
        """Forget ``key``; the token it had."""
        held = self._held.pop(key, None)
        if held is None:
            return None
        self._kinds[key[0]] -= 1
        return held.token
