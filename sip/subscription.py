"""One subscription, subscriber side (RFC 6665), with its dialog (RFC 3261 §12).

Theory of operation
-------------------
A :class:`Subscription` is created by the user agent for (subscriber, target,
event package).  It sends the initial SUBSCRIBE, builds the dialog from
whichever arrives first — the 2xx or a NOTIFY (RFC 6665 §4.1.2.4: "NOTIFY
requests ... may arrive before the 2xx") — refreshes before expiry, and ends
exactly once, with one :class:`SubscriptionTerminated` telling why.

State table (rows: state, columns: what happens; ``·`` = stays)

    state        2xx      non-2xx      NOTIFY act/pend  NOTIFY term  timer             unsubscribe()
    -----------  -------  -----------  ---------------  -----------  ----------------  -------------
    SUBSCRIBING  dialog   TERMINATED   PENDING/ACTIVE   TERMINATED   N: TERMINATED     after 2xx
    PENDING      ·        (refresh)    · / ACTIVE       TERMINATED   refresh / expiry  UNSUBSCRIBING
    ACTIVE       ·        (refresh)    PENDING / ·      TERMINATED   refresh / expiry  UNSUBSCRIBING
    UNSUBSCRIB.  ·        TERMINATED   ·                TERMINATED   guard: TERMINATED ·
    TERMINATED   ignored  ignored      answered 481 by the user agent

A NOTIFY that never reached us, or reached us too late, may have cost the
dialog: a notifier whose NOTIFY transaction times out may remove the
subscription without a word (Kamailio's presence module does, on a 408 or
481 to its NOTIFY: tests/data/overload/README.md), and nothing more comes in it.
The subscriber cannot see that until its next refresh, by default close to
an hour away.  So it refreshes early when it has cause to think so
(RFC 6665 §4.1.2.2: a 481 to the refresh says the dialog is gone):

* a gap in the notifier's CSeq numbers (RFC 3261 §12.2.1.1: they increase by
  one per request) that no late NOTIFY fills before Timer N (64*T1, as long
  as a NOTIFY transaction can last, §17.1.2.2) — a NOTIFY lost for good;
* :meth:`answered_late`: the user agent saw the notifier re-send a NOTIFY
  we had answered, several times — our answer came later than it waits.

Refresh failures (RFC 6665 §4.1.2.2): "If a SUBSCRIBE request to refresh a
subscription fails with any error code other than 405 (Method Not Allowed) or
489 (Bad Event), the original subscription is still considered valid for the
duration of the most recently known 'Expires' value" — except 481, which says
the dialog is gone (RFC 6665 §4.1.2.2, RFC 5057), and a timeout, which ends it.

Nothing here performs I/O: methods take ``now`` and return actions for the
user agent — requests to send in new client transactions, and events.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass

from .errors import LocalProtocolError
from .headers import SubscriptionState
from .message import Headers, Request, Response
from .publication import RefreshPolicy
from .uri import NameAddr, SipURI

__all__ = [
    "NotifyReceived",
    "PhaseTally",
    "Subscription",
    "SubscriptionAccepted",
    "SubscriptionPhase",
    "SubscriptionTerminated",
]


class SubscriptionPhase(enum.Enum):
    SUBSCRIBING = "subscribing"
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBING = "unsubscribing"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class NotifyReceived:
    """A NOTIFY for this subscription was accepted (and answered 200)."""

    subscription_id: int
    state: SubscriptionState
    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionAccepted:
    """The notifier answered the initial SUBSCRIBE with a 2xx."""

    subscription_id: int
    expires: int
    #: The notifier is a resource list server and the subscription is to a
    #: list: its 2xx carries ``Require: eventlist`` (RFC 4662 §4.4, §5.1).
    eventlist: bool = False


@dataclass(frozen=True, slots=True)
class SubscriptionTerminated:
    """The subscription ended.

    ``reason`` is the RFC 6665 §4.2.2 reason the notifier gave (deactivated,
    probation, rejected, timeout, giveup, noresource, invariant, or another
    token), or one of ours: ``"unsubscribed"`` (the caller asked),
    ``"failed"`` (non-2xx to the initial SUBSCRIBE; ``status`` says which),
    ``"dialog-gone"`` (481 to a refresh), ``"timeout"`` (a transaction timed
    out, no NOTIFY within Timer N, or the subscription expired unrefreshed),
    ``"transport-error"``, ``"bad-response"`` (the final response to our
    SUBSCRIBE had a malformed header we needed), ``"busy"`` (the initial
    SUBSCRIBE was never sent: the user agent's window had no room).
    """

    subscription_id: int
    reason: str
    status: int | None = None
    retry_after: int | None = None


#: A refused (500/503) initial SUBSCRIBE is tried again this many times, after
#: 0.2 s, 0.4 s, 0.8 s (each stretched by up to 2x), or after its Retry-After
#: when that is at most MAX_RETRY_AFTER seconds.
INITIAL_RETRIES = 3
INITIAL_RETRY_DELAY = 0.2
MAX_RETRY_AFTER = 30
#: CSeq numbers of a gap remembered at most; a wider gap is checked all the same.
MAX_MISSING = 16
#: No CSeq number missing: one object for every subscription (each
#: ``frozenset()`` call makes a new one, and most subscriptions never miss any).
_NONE_MISSING: frozenset[int] = frozenset()

Action = Request | NotifyReceived | SubscriptionAccepted | SubscriptionTerminated
#: Subscriptions by (event package, phase), as their holder counts them.
PhaseTally = Counter[tuple[str, SubscriptionPhase]]


class Subscription:
    """The subscriber's side of one subscription and its dialog."""

    # Slotted: a gateway holds one per watch, by the hundred thousand.
    __slots__ = (
        "_accepted", "_check_at", "_deadline_n", "_guard_at", "_initial_retries", "_local_cseq",
        "_missing", "_outstanding", "_refresh_at", "_remote_cseq", "_retry_at", "_spread",
        "_timer_n", "_unsubscribe_pending", "accept", "call_id", "event", "eventlist",
        "expires_at", "id", "local_tag", "policy", "remote_tag", "remote_target",
        "requested_expires", "route_set", "state", "subscriber", "tally", "target",
    )

    def __init__(
        self,
        subscription_id: int,
        subscriber: SipURI,
        target: SipURI,
        *,
        call_id: str,
        local_tag: str,
        event: str = "presence",
        accept: tuple[str, ...] = ("application/pidf+xml",),
        eventlist: bool = False,
        expires: int = 3600,
        spread: float = 0.0,
        timer_n: float = 32.0,
        policy: RefreshPolicy = RefreshPolicy(),
        tally: PhaseTally | None = None,
    ) -> None:
        self.id = subscription_id
        self.subscriber = subscriber
        self.target = target
        self.event = event
        self.accept = accept
        self.eventlist = eventlist
        self.requested_expires = expires
        self.policy = policy
        self.state = SubscriptionPhase.SUBSCRIBING
        #: The holder's count of its subscriptions by (event, phase): the
        #: holder counts this one in it (and takes it out); every change of
        #: phase moves it (_enter), so that no one walks them all to count.
        self.tally = tally
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag: str | None = None
        self.remote_target: SipURI | None = None
        self.route_set: tuple[NameAddr, ...] = ()
        self.expires_at: float | None = None
        self._local_cseq = 0
        self._remote_cseq: int | None = None
        self._spread = spread
        self._timer_n = timer_n
        self._outstanding = False  # a SUBSCRIBE transaction is under way
        self._unsubscribe_pending = False
        self._accepted = False  # the initial SUBSCRIBE got its 2xx
        self._refresh_at: float | None = None
        self._deadline_n: float | None = None  # Timer N, RFC 6665 §4.1.2.4
        self._guard_at: float | None = None  # waiting for the final NOTIFY
        self._retry_at: float | None = None  # retrying a refused initial SUBSCRIBE
        self._initial_retries = 0
        # NOTIFY CSeq numbers skipped and not seen since, and when to ask the
        # notifier whether it still has the dialog (see the module's text).
        self._missing = _NONE_MISSING
        self._check_at: float | None = None

    # -- API ---------------------------------------------------------------

    @property
    def terminated(self) -> bool:
        return self.state is SubscriptionPhase.TERMINATED

    def start(self, now: float) -> list[Action]:
        """The initial SUBSCRIBE (RFC 6665 §4.1.2.1)."""
        if self._local_cseq != 0 or self.terminated:
            raise LocalProtocolError("subscription already started or ended")
        # RFC 6665 §4.1.2.4: "the subscriber ... starts Timer N ... when it
        # sends the SUBSCRIBE request; if no NOTIFY arrives before Timer N
        # fires, the subscriber considers the subscription failed".
        self._deadline_n = now + self._timer_n
        return [self._subscribe(self.requested_expires)]

    def request_sent(self, now: float) -> bool:
        """The user agent sends our SUBSCRIBE only now: it waited for room.
        Returns whether that moved a deadline (:meth:`get_timer`).

        RFC 6665 §4.1.2.4: Timer N starts "when it sends the SUBSCRIBE
        request"; time spent in the user agent's queue is not the notifier's.
        """
        if self._deadline_n is not None and self.remote_tag is None:
            self._deadline_n = now + self._timer_n
            return True
        return False

    def refresh(self, now: float) -> list[Action]:
        """Refresh now (RFC 6665 §4.1.2.2), e.g. to learn whether the notifier
        still knows the dialog: a 481 ends the subscription as "dialog-gone".

        Nothing happens while the dialog is not established or a SUBSCRIBE
        is already under way.
        """
        if (
            self.state not in (SubscriptionPhase.PENDING, SubscriptionPhase.ACTIVE)
            or self.remote_tag is None
            or self._outstanding
        ):
            return []
        self._refresh_at = None
        return [self._subscribe(self.requested_expires)]

    def answered_late(self, now: float) -> list[Action]:
        """Our answer to one of its NOTIFYs reached the notifier later than it
        waits for one, maybe: refresh now to learn whether it dropped the
        dialog (a 481 ends the subscription as "dialog-gone")."""
        return self._ask()

    def unsubscribe(self, now: float) -> list[Action]:
        """End the subscription: SUBSCRIBE with Expires: 0 (RFC 6665 §4.1.2.3)."""
        if self.state in (SubscriptionPhase.TERMINATED, SubscriptionPhase.UNSUBSCRIBING):
            return []
        if self.remote_tag is None:
            if self._outstanding:
                # No dialog yet to send it in: wait for the 2xx or a NOTIFY.
                self._unsubscribe_pending = True
                return []
            return self._terminate("unsubscribed")
        self._enter(SubscriptionPhase.UNSUBSCRIBING)
        self._refresh_at = None
        # The final NOTIFY should follow; do not wait for it for ever.
        self._guard_at = now + self._timer_n
        if self._outstanding:
            self._unsubscribe_pending = True
            return []
        return [self._subscribe(0)]

    def withdraw(self) -> list[Action]:
        """End a subscription whose initial SUBSCRIBE was never sent (the user
        agent held it for room): the notifier knows nothing of it, so nothing
        is sent."""
        if self.terminated:
            return []
        self._outstanding = False
        return self._terminate("unsubscribed")

    def get_timer(self) -> float | None:
        # Asked after every input of every subscription: no list, no min() call.
        deadline = self.expires_at
        for t in (self._refresh_at, self._deadline_n, self._guard_at, self._retry_at,
                  self._check_at):
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def handle_timer(self, now: float) -> list[Action]:
        if self.terminated:
            return []
        if self.state is SubscriptionPhase.UNSUBSCRIBING:
            # Whichever deadline comes first (the guard, a Timer N still
            # running from the initial SUBSCRIBE, the expiry), the caller
            # asked for the end and that is the reason it gets.
            due = (self._guard_at, self._deadline_n, self.expires_at)
            if any(t is not None and now >= t for t in due):
                return self._terminate("unsubscribed")
            return []
        if self._guard_at is not None and now >= self._guard_at:
            # The notifier granted Expires: 0 and never sent the final NOTIFY.
            return self._terminate("timeout")
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            if not self._outstanding and self.remote_tag is None:
                return [self._subscribe(self.requested_expires)]
        if self._deadline_n is not None and now >= self._deadline_n:
            return self._terminate("timeout")
        if self.expires_at is not None and now >= self.expires_at:
            # RFC 6665 §4.1.2.2: the subscription lapses unless refreshed.
            return self._terminate("timeout")
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            if not self._outstanding and self.remote_tag is not None:
                return [self._subscribe(self.requested_expires)]
        if self._check_at is not None and now >= self._check_at:
            # A NOTIFY skipped and not come since: its transaction has ended
            # at the notifier unanswered, which may have dropped the dialog.
            self._check_at = None
            self._missing = _NONE_MISSING
            return self._ask()
        return []

    def receive_response(self, response: Response, now: float) -> list[Action]:
        """A final response to our outstanding SUBSCRIBE.

        Raises RemoteProtocolError, changing nothing, when a header it needs
        is malformed.
        """
        if self.terminated:
            self._outstanding = False
            return []
        status = response.status
        initial = not self._accepted
        unsubscribing = self.state is SubscriptionPhase.UNSUBSCRIBING
        if 200 <= status < 300:
            # Every header is read before anything changes.
            expires = None if unsubscribing else response.expires
            if self.remote_tag is None:
                # RFC 3261 §12.1.2: the UAC builds the dialog from the 2xx —
                # route set = Record-Route reversed, remote target = Contact.
                contacts = response.contacts
                remote_target = contacts[0].sip_uri if contacts else None
                route_set = tuple(reversed(response.record_routes))
                self.remote_tag = response.to.tag
                self.remote_target = remote_target
                self.route_set = route_set
            self._outstanding = False
            if unsubscribing:
                return self._after_exchange(now)
            expires = self._granted(expires, now)
            accepted: list[Action] = []
            if initial:
                self._accepted = True
                eventlist = any(
                    tag.lower() == "eventlist" for tag in response.headers.get_all("Require")
                )
                accepted.append(SubscriptionAccepted(self.id, expires, eventlist))
            return accepted + self._after_exchange(now)
        retry_after = response.retry_after.seconds if response.retry_after else None
        min_expires = response.min_expires if status == 423 else None
        self._outstanding = False
        if unsubscribing:
            if self._unsubscribe_pending and status != 481:
                # A refresh failed while the caller's unsubscribe waited for
                # it; the subscription still stands at the notifier
                # (RFC 6665 §4.1.2.2), so the Expires: 0 must still go out.
                self._unsubscribe_pending = False
                return [self._subscribe(0)]
            return self._terminate("unsubscribed")
        if status == 423 and initial:
            if min_expires is not None and min_expires > self.requested_expires:
                self.requested_expires = min_expires
                return [self._subscribe(min_expires)]
        if initial and status in (500, 503) and self.remote_tag is None:
            # RFC 3261 §21.5.1 / §21.5.4: a server error may be passing (a
            # presence server on sqlite answers 500 "database is locked" under
            # concurrent writes); try again shortly, a few times, before failing.
            delay = self._initial_retry_delay(retry_after)
            if delay is not None:
                self._retry_at = now + delay
                self._deadline_n = self._retry_at + self._timer_n
                return []
        if initial:
            return self._terminate("failed", status, retry_after)
        if status == 481:
            return self._terminate("dialog-gone", status, retry_after)
        if status in (405, 489):
            return self._terminate("failed", status, retry_after)
        # Any other refresh failure: the old expiry still stands.
        return []

    def transaction_failed(self, reason: str, now: float) -> list[Action]:
        """Our outstanding SUBSCRIBE timed out or could not be sent."""
        self._outstanding = False
        if self.terminated:
            return []
        if self.state is SubscriptionPhase.UNSUBSCRIBING:
            return self._terminate("unsubscribed")
        # RFC 6665 §4.1.2.2 lets a subscription outlive a failed refresh, but a
        # timeout means the notifier is unreachable: NOTIFYs would not reach
        # us either, so the caller learns now rather than at expiry.
        return self._terminate(reason)

    def receive_notify(self, request: Request, now: float) -> tuple[int, list[Action]]:
        """A NOTIFY the user agent matched to this dialog.

        Returns the status code to answer with and the resulting actions.
        Raises RemoteProtocolError, changing nothing, when a header it needs
        is malformed (the user agent answers 400).
        """
        if self.terminated:
            return 481, []
        state = request.subscription_state
        if state is None:
            # RFC 6665 §8.2.3: NOTIFY requests MUST contain Subscription-State.
            return 400, []
        cseq = request.cseq.seq
        # Every header is read before anything changes: a malformed one
        # raises RemoteProtocolError with the dialog as it was.
        contacts = request.contacts
        remote_target = contacts[0].sip_uri if contacts else None
        record_routes = request.record_routes if self.remote_tag is None else []
        last = self._remote_cseq
        if last is not None and cseq < last:
            if cseq in self._missing:
                # Late, not lost: the notifier had an answer in time.
                self._missing = self._missing - {cseq} or _NONE_MISSING
                if not self._missing:
                    self._check_at = None
            # RFC 3261 §12.2.2: "If the remote sequence number was not empty,
            # but the sequence number of the request is lower than the remote
            # sequence number, the request is out of order and MUST be
            # rejected with a 500 (Server Internal Error) response."
            return 500, []
        if last is not None and cseq > last + 1:
            skipped = set(range(last + 1, min(cseq, last + 1 + MAX_MISSING)))
            if cseq > last + 1 + MAX_MISSING:
                skipped.add(-1)  # not listed: no late NOTIFY can fill the gap
            self._missing = self._missing.union(skipped)
            if self._check_at is None:
                self._check_at = now + self._timer_n
        self._remote_cseq = cseq
        if self.remote_tag is None:
            # RFC 3261 §12.1.1 (as UAS of the NOTIFY): route set = the
            # Record-Route in order, remote target = the Contact.
            self.remote_tag = request.from_.tag
            self.remote_target = remote_target
            self.route_set = tuple(record_routes)
        elif remote_target is not None:
            # RFC 6665 §4.1.3: a NOTIFY may update the remote target.
            self.remote_target = remote_target
        self._deadline_n = None
        actions: list[Action] = [
            NotifyReceived(self.id, state, request.body, request.content_type)
        ]
        value = state.state.lower()
        if value == "terminated":
            if self.state is SubscriptionPhase.UNSUBSCRIBING:
                actions.extend(self._terminate("unsubscribed"))
            else:
                actions.extend(
                    self._terminate(state.reason or "unknown", None, state.retry_after)
                )
            return 200, actions
        if self.state is not SubscriptionPhase.UNSUBSCRIBING:
            self._enter(
                SubscriptionPhase.ACTIVE if value == "active" else SubscriptionPhase.PENDING
            )
            if state.expires is not None:
                # RFC 6665 §4.1.3: the "expires" parameter is authoritative.
                self._arm(state.expires, now)
        if self._unsubscribe_pending and not self._outstanding:
            self._unsubscribe_pending = False
            actions.extend(self.unsubscribe(now))
        return 200, actions

    def receive_refresh_success(self, expires: int | None, now: float) -> list[Action] | None:
        """:meth:`receive_response` for the 2xx that nearly all are: to a
        refresh of an accepted dialog, not ending it; None, nothing changed,
        for any other.  ``expires``: the response's Expires, checked."""
        if (
            not self._accepted
            or self.remote_tag is None
            or self.state is SubscriptionPhase.UNSUBSCRIBING
            or self.terminated
        ):
            return None
        self._outstanding = False
        self._granted(expires, now)
        return self._after_exchange(now)

    def receive_next_notify(
        self,
        cseq: int,
        state: SubscriptionState,
        remote_target: SipURI | None,
        body: bytes,
        content_type: str | None,
        now: float,
    ) -> NotifyReceived | None:
        """:meth:`receive_notify` for the NOTIFY that nearly all are: the next
        in the CSeq order of an active dialog, keeping it active.  Its event,
        or None, nothing changed, for any other (which ``receive_notify``
        takes).  The headers were read and checked by the caller."""
        last = self._remote_cseq
        if (
            last is None
            or cseq != last + 1
            or self.state is not SubscriptionPhase.ACTIVE
            or state.state != "active"
            or self._unsubscribe_pending
            or self.remote_tag is None
        ):
            return None
        self._remote_cseq = cseq
        if remote_target is not None:
            # RFC 6665 §4.1.3: a NOTIFY may update the remote target.
            self.remote_target = remote_target
        self._deadline_n = None
        if state.expires is not None:
            # RFC 6665 §4.1.3: the "expires" parameter is authoritative.
            self._arm(state.expires, now)
        return NotifyReceived(self.id, state, body, content_type)

    def restamp(self, request: Request) -> Request:
        """The same request with the next CSeq (RFC 3261 §22.2 auth retry)."""
        self._local_cseq += 1
        request.headers.set("CSeq", f"{self._local_cseq} SUBSCRIBE")
        return request

    # -- internals ---------------------------------------------------------

    def _initial_retry_delay(self, retry_after: int | None) -> float | None:
        """Seconds before retrying the initial SUBSCRIBE, or None: give up."""
        if self._initial_retries >= INITIAL_RETRIES:
            return None
        self._initial_retries += 1
        if retry_after is not None:
            return float(retry_after) if retry_after <= MAX_RETRY_AFTER else None
        jitter = random.Random(f"{self._spread!r}/{self._initial_retries}").random()
        return INITIAL_RETRY_DELAY * 2.0 ** (self._initial_retries - 1) * (1.0 + jitter)

    def _ask(self) -> list[Action]:
        """A refresh out of turn, the regular one left armed: if this one
        fails but for a 481, the subscription stands as before."""
        if (
            self.state not in (SubscriptionPhase.PENDING, SubscriptionPhase.ACTIVE)
            or self.remote_tag is None
            or self._outstanding
        ):
            return []  # a SUBSCRIBE under way will tell as much
        return [self._subscribe(self.requested_expires)]

    def _granted(self, expires: int | None, now: float) -> int:
        """A 2xx's Expires (the duration asked, if it has none) taken in."""
        if expires is None:
            expires = self.requested_expires
        if expires == 0:
            # The notifier granted nothing; a terminating NOTIFY follows.
            self._guard_at = now + self._timer_n
        else:
            self._arm(expires, now)
        return expires

    def _enter(self, phase: SubscriptionPhase) -> None:
        """Every change of phase goes through here, to keep the tally exact."""
        tally = self.tally
        if tally is not None and phase is not self.state:
            tally[(self.event, self.state)] -= 1
            tally[(self.event, phase)] += 1
        self.state = phase

    def _arm(self, expires: int, now: float) -> None:
        self.expires_at = now + expires
        self._refresh_at = self.policy.refresh_at(now, expires, self._spread)

    def _after_exchange(self, now: float) -> list[Action]:
        if self._unsubscribe_pending and self.remote_tag is not None:
            self._unsubscribe_pending = False
            if self.state is SubscriptionPhase.UNSUBSCRIBING:
                return [self._subscribe(0)]
            return self.unsubscribe(now)
        return []

    def _terminate(
        self, reason: str, status: int | None = None, retry_after: int | None = None
    ) -> list[Action]:
        self._enter(SubscriptionPhase.TERMINATED)
        self._refresh_at = self.expires_at = self._deadline_n = self._guard_at = None
        self._retry_at = self._check_at = None
        self._missing = _NONE_MISSING
        return [SubscriptionTerminated(self.id, reason, status, retry_after)]

    def _subscribe(self, expires: int) -> Request:
        self._local_cseq += 1
        self._outstanding = True
        # The name-addr texts NameAddr.__str__ gives, without making the objects.
        items = [("route", "Route", str(route)) for route in self.route_set]
        items += [
            ("from", "From", f"<{self.subscriber}>;tag={self.local_tag}"),
            ("to", "To", f"<{self.target}>" if self.remote_tag is None
             else f"<{self.target}>;tag={self.remote_tag}"),
            ("call-id", "Call-ID", self.call_id),
            ("cseq", "CSeq", f"{self._local_cseq} SUBSCRIBE"),
            ("event", "Event", self.event),
            ("expires", "Expires", str(expires)),
            ("accept", "Accept", ", ".join(self.accept)),
        ]
        if self.eventlist:
            # RFC 4662 §5: a subscriber willing to receive a resource list
            # says so in every SUBSCRIBE, initial and refresh.
            items.append(("supported", "Supported", "eventlist"))
        if self.remote_tag is None:
            # Checked before the first SUBSCRIBE goes out; in the dialog the
            # same texts come back, with the notifier's tag and target read
            # by the parser.
            h = Headers((name, value) for _, name, value in items)
        else:
            h = Headers._vouched(items)
        # RFC 3261 §12.2.1.1: in-dialog requests go to the remote target.
        uri = self.target
        if self.remote_tag is not None and self.remote_target is not None:
            uri = self.remote_target
        return Request(method="SUBSCRIBE", uri=uri, headers=h, body=b"")

