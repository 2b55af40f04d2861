"""One event publication, client side (RFC 3903).

Theory of operation
-------------------
A :class:`Publication` is the event publication agent (EPA) for one
address-of-record and one event package.  It keeps the *desired* state (the
latest body the caller handed us) apart from the *published* state (what the
state agent confirmed with a SIP-ETag), and drives the difference to zero with
at most one PUBLISH outstanding:

    RFC 3903 §4.1: "the EPA MUST NOT send a new PUBLISH request (not a
    re-transmission) for the same Request-URI until it has received a final
    response from the ESC for the previous one or the previous PUBLISH request
    has timed out."

State table (rows: state, columns: what happens; ``·`` = stays)

    state        publish()     remove()        2xx            412 / error           timer
    -----------  ------------  --------------  -------------  --------------------  -----------
    IDLE         SENDING       REMOVED         —              —                     —
    SENDING      dirty         remove pending  PUBLISHED (*)  retry / FAILED        —
    PUBLISHED    SENDING       REMOVING        —              —                     SENDING (refr.)
    RETRY_WAIT   · (dirty)     REMOVED (**)    —              —                     SENDING
    REMOVING     SENDING (***) ·               REMOVED        REMOVED               —
    FAILED       SENDING       REMOVED         —              —                     —
    REMOVED      LocalProtocolError everywhere

    (*)   then at once SENDING again if the caller published while we waited,
          or REMOVING if the caller removed while we waited.
    (**)  when the server still holds an entity tag we send Expires: 0 first.
    (***) publishing again while a removal is outstanding revives the
          publication once the removal completes.

A 412 (Conditional Request Failed) means the state agent forgot our entity tag
(it restarted, or the publication expired): RFC 3903 §6 step 4 — the EPA then
publishes its full state again *without* SIP-If-Match, as a new publication.
Transient failures (timeouts, 5xx, 408, 480...) are retried with exponential
backoff, honouring Retry-After: a publication keeps itself alive until the
caller removes it.  Failures that no retry can mend (400, 403, 404, 415, 489,
...) stop in FAILED; a later publish() starts over.

Nothing here performs I/O: methods take ``now`` and return the actions the
user agent must carry out, in order — :class:`~sip.message.Request` values to
send in a new client transaction, and events for the caller.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from .errors import LocalProtocolError
from .message import Headers, Request, Response
from .uri import NameAddr, SipURI

__all__ = [
    "Publication",
    "PublicationConfirmed",
    "PublicationFailed",
    "PublicationRemoved",
    "PublicationState",
    "RefreshPolicy",
]


class PublicationState(enum.Enum):
    IDLE = "idle"
    SENDING = "sending"
    PUBLISHED = "published"
    RETRY_WAIT = "retry-wait"
    REMOVING = "removing"
    FAILED = "failed"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class PublicationConfirmed:
    """The state agent accepted our state (initial, modify or refresh)."""

    publication_id: int
    etag: str
    expires: int


@dataclass(frozen=True, slots=True)
class PublicationFailed:
    """A PUBLISH failed.  ``retry_at`` is when we try again; None = we gave up."""

    publication_id: int
    status: int | None
    reason: str
    retry_at: float | None


@dataclass(frozen=True, slots=True)
class PublicationRemoved:
    """The publication is gone (Expires: 0 answered, or it never existed)."""

    publication_id: int


PublicationEvent = PublicationConfirmed | PublicationFailed | PublicationRemoved
Action = Request | PublicationEvent

# Final responses after which retrying the same request cannot succeed.  A
# 401/407 reaches a publication only when the user agent could not answer the
# challenge (no credentials) or the server refused the answer (wrong ones).
_PERMANENT = frozenset(
    {400, 401, 403, 404, 405, 407, 410, 413, 414, 415, 416, 420, 484, 489, 603, 604, 606}
)


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh something the server granted for ``expires`` seconds.

    The refresh falls between ``low`` and ``high`` of the granted interval; the
    exact point is fixed per object by ``spread`` (0..1, drawn once by the user
    agent) so that ten thousand publications restored together do not refresh
    in the same second.  It never falls later than ``guard`` seconds before
    expiry, which leaves room for a full transaction timeout (64*T1 = 32 s).

    ``grid`` (seconds, 0: none) moves each refresh back onto a whole multiple
    of it on the user agent's clock, so that the refreshes due within one
    step fall due together: a driver then sends them in one wake-up, with
    the code still hot from the first, and their answers come back as one
    burst, instead of each refresh costing a cold wake-up of its own.  Back,
    never forward: the guard before expiry only grows; and by half the delay
    at most, so that a grant as short as a step is not refreshed at once.
    """

    low: float = 0.75
    high: float = 0.90
    guard: float = 32.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    grid: float = 0.0

    def __post_init__(self) -> None:
        if not self.grid >= 0:
            raise ValueError(f"a refresh grid must be >= 0 seconds: {self}")

    def refresh_at(self, now: float, expires: int, spread: float) -> float:
        """The instant to refresh what was granted at ``now`` for ``expires`` s."""
        delay = self.refresh_delay(expires, spread)
        at = now + delay
        grid = self.grid
        if grid:
            snapped = math.floor(at / grid) * grid
            # Moved back by at most half the delay: a grant as short as the
            # grid is not refreshed at once, and again, and again.
            if snapped >= now + delay / 2:
                at = snapped
        return at

    def refresh_delay(self, expires: int, spread: float) -> float:
        # The window is [low, high] of the interval, moved earlier when its end
        # is closer than ``guard`` to expiry, but kept as wide: for a short
        # interval the guard must not fold every object onto one instant
        # (Expires 120 would put all refreshes at exactly 88 s), which would
        # turn a burst of creations into a burst of refreshes.  Never before
        # half the interval.
        width = expires * (self.high - self.low)
        latest = min(expires * self.high, expires - self.guard)
        if latest <= expires / 2:
            # Too short for the guard at all: spread over [1/2, low] of it.
            earliest, latest = expires / 2, max(expires * self.low, expires / 2)
        else:
            earliest = max(min(expires * self.low, latest - width), expires / 2)
        return earliest + (latest - earliest) * spread

    def backoff(self, failures: int, retry_after: int | None, spread: float = 0.0) -> float:
        """The wait before retry number ``failures``.

        Exponential, stretched by up to 2x by a factor drawn from ``spread``
        and the failure count: publications that failed together (a busy
        server answering 500 to a burst) do not all retry in the same instant
        and collide again.
        """
        jitter = random.Random(f"{spread!r}/{failures}").random() if spread else 0.0
        delay = self.backoff_initial * 2.0 ** max(failures - 1, 0) * (1.0 + jitter)
        delay = min(delay, self.backoff_max)
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return delay


class Publication:
    """The EPA for one (address-of-record, event package)."""

    # Slotted: a gateway holds one per published presentity.
    __slots__ = ("_body", "_call_id", "_cseq", "_dirty", "_failures", "_from_text",
                 "_local_tag", "_remove_pending", "_spread", "_timer", "_to_text", "aor",
                 "content_type", "etag", "event", "expires_at", "id", "policy",
                 "requested_expires", "state")

    def __init__(
        self,
        publication_id: int,
        aor: SipURI,
        *,
        call_id: str,
        local_tag: str,
        event: str = "presence",
        content_type: str = "application/pidf+xml",
        expires: int = 3600,
        spread: float = 0.0,
        policy: RefreshPolicy = RefreshPolicy(),
        etag: str | None = None,
        etag_expires_at: float | None = None,
    ) -> None:
        self.id = publication_id
        self.aor = aor
        self.event = event
        self.content_type = content_type
        self.requested_expires = expires
        self.policy = policy
        self.state = PublicationState.IDLE
        # Resuming a publication the state agent already holds (e.g. after our
        # own restart): the first PUBLISH then modifies it with SIP-If-Match
        # instead of adding a second one (RFC 3903 §4.4); a state agent that
        # forgot it answers 412 and the full state goes out afresh.
        self.etag: str | None = etag if etag_expires_at is not None else None
        self.expires_at: float | None = etag_expires_at if etag is not None else None
        self._call_id = call_id
        self._local_tag = local_tag
        # The same for every PUBLISH of this publication (RFC 3903 §4.1: the
        # To and From carry its AOR; our From tag stays): written once.
        self._from_text = str(NameAddr(None, aor, (("tag", local_tag),)))
        self._to_text = str(NameAddr(None, aor, ()))
        # Every PUBLISH's fields are these texts, the CSeq and Expires we
        # write, and an entity tag a 2xx carried (checked as a token when it
        # was read) or this one: checked here once, and never per request.
        Headers([("From", self._from_text), ("To", self._to_text), ("Call-ID", call_id),
                 ("Event", event), ("Content-Type", content_type),
                 *([("SIP-If-Match", self.etag)] if self.etag is not None else [])])
        self._cseq = 0
        self._spread = spread
        self._body: bytes | None = None  # desired state
        self._dirty = False  # desired state differs from what was last sent
        self._remove_pending = False
        self._failures = 0
        self._timer: float | None = None  # refresh or retry instant

    # -- API ---------------------------------------------------------------

    @property
    def body(self) -> bytes | None:
        return self._body

    def publish(self, body: bytes, now: float) -> list[Action]:
        """Set the desired state; send it now unless a PUBLISH is outstanding."""
        self._check_alive()
        self._body = body
        self._dirty = True
        self._remove_pending = False
        if self.state in (PublicationState.IDLE, PublicationState.PUBLISHED,
                          PublicationState.FAILED):
            return [self._send(now)]
        return []  # SENDING / REMOVING: sent when the answer comes; RETRY_WAIT: at the timer

    def remove(self, now: float) -> list[Action]:
        """Withdraw the publication (PUBLISH with Expires: 0, RFC 3903 §4.5)."""
        self._check_alive()
        self._body = None
        self._dirty = False
        if self.state is PublicationState.SENDING:
            self._remove_pending = True
            return []
        if self.state is PublicationState.REMOVING:
            return []
        if self.etag is not None and self._etag_alive(now):
            return [self._send_remove()]
        return self._finish_removed()

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> list[Action]:
        if self._timer is None or now < self._timer:
            return []
        self._timer = None
        if self.state is PublicationState.PUBLISHED:
            # RFC 3903 §4.2: a refresh carries SIP-If-Match and no body.
            return [self._send(now, refresh=True)]
        if self.state is PublicationState.RETRY_WAIT:
            return [self._send(now)]
        return []

    def receive_response(self, response: Response, now: float) -> list[Action]:
        """A final response to our outstanding PUBLISH."""
        if self.state not in (PublicationState.SENDING, PublicationState.REMOVING):
            return []  # late answer to something we no longer wait for
        status = response.status
        if self.state is PublicationState.REMOVING:
            return self._removal_done(now)
        if 200 <= status < 300:
            return self._confirmed(status, response.sip_etag, response.expires, now)
        if status == 412:
            # RFC 3903 §6 step 4: our entity tag is unknown to the ESC; the
            # whole state goes out again as a new publication.
            self.etag = None
            self.expires_at = None
            if self._remove_pending or self._body is None:
                return self._finish_removed()
            return [self._send(now)]
        if status == 423 and not self._remove_pending:
            # RFC 3903 §4.1 / RFC 3261 §21.4.17: retry with Min-Expires.  Not
            # when the caller removed meanwhile: the retry would carry no body.
            min_expires = response.min_expires
            if min_expires is not None and min_expires > self.requested_expires:
                self.requested_expires = min_expires
                return [self._send(now)]
        retry_after = response.retry_after.seconds if response.retry_after else None
        return self._failed(status, response.reason, now, retry_after, status in _PERMANENT)

    def receive_success(
        self, status: int, etag: str | None, expires: int | None, now: float
    ) -> list[Action]:
        """A 2xx to our outstanding PUBLISH, by the fields a 2xx is taken by
        (its SIP-ETag and Expires, RFC 3903 §11.3.1, §4.1): the same as
        :meth:`receive_response` of it, for a caller that read them from the
        bytes."""
        if self.state is PublicationState.SENDING:
            return self._confirmed(status, etag, expires, now)
        if self.state is PublicationState.REMOVING:
            return self._removal_done(now)
        return []  # late answer to something we no longer wait for

    def transaction_failed(self, reason: str, now: float) -> list[Action]:
        """The outstanding PUBLISH timed out or could not be sent."""
        if self.state is PublicationState.REMOVING:
            return self._removal_done(now)
        if self.state is not PublicationState.SENDING:
            return []
        return self._failed(None, reason, now, None, permanent=False)

    # -- internals ---------------------------------------------------------

    def _check_alive(self) -> None:
        if self.state is PublicationState.REMOVED:
            raise LocalProtocolError(f"publication {self.id} was removed")

    def _etag_alive(self, now: float) -> bool:
        return self.expires_at is not None and now < self.expires_at

    def _confirmed(
        self, status: int, etag: str | None, granted: int | None, now: float
    ) -> list[Action]:
        expires = granted if granted is not None else self.requested_expires
        if etag is None:
            # RFC 3903 §11.3.1: a 2xx to PUBLISH MUST carry SIP-ETag.  Without
            # one we could never refresh; treat it as a server failure.
            return self._failed(status, "2xx without SIP-ETag", now, None, False)
        self.etag = etag
        self._failures = 0
        self.expires_at = now + expires
        self.state = PublicationState.PUBLISHED
        actions: list[Action] = [PublicationConfirmed(self.id, etag, expires)]
        if self._remove_pending:
            self._remove_pending = False
            actions.append(self._send_remove())
        elif self._dirty:
            actions.append(self._send(now))
        else:
            self._timer = self.policy.refresh_at(now, expires, self._spread)
        return actions

    def _failed(
        self, status: int | None, reason: str, now: float, retry_after: int | None, permanent: bool
    ) -> list[Action]:
        self._failures += 1
        if not self._etag_alive(now):
            self.etag = None
        if self._remove_pending:
            if self.etag is not None:
                return [PublicationFailed(self.id, status, reason, None), self._send_remove()]
            return [PublicationFailed(self.id, status, reason, None), *self._finish_removed()]
        if permanent:
            self.state = PublicationState.FAILED
            self._timer = None
            return [PublicationFailed(self.id, status, reason, None)]
        self.state = PublicationState.RETRY_WAIT
        self._dirty = True  # whatever we sent was not confirmed
        self._timer = now + self.policy.backoff(self._failures, retry_after, self._spread)
        return [PublicationFailed(self.id, status, reason, self._timer)]

    def _removal_done(self, now: float) -> list[Action]:
        """The Expires: 0 exchange is over, whatever its outcome."""
        self.etag = None
        self.expires_at = None
        if self._body is not None:
            # Published again while the removal was under way: start afresh.
            return [self._send(now)]
        return self._finish_removed()

    def _finish_removed(self) -> list[Action]:
        self.state = PublicationState.REMOVED
        self._timer = None
        self.etag = None
        self.expires_at = None
        return [PublicationRemoved(self.id)]

    def _send(self, now: float, *, refresh: bool = False) -> Request:
        body = self._body
        if refresh or body is None:
            body_out = b""
        else:
            body_out = body
        if not self._etag_alive(now):
            self.etag = None
            if refresh or body is None:
                # Nothing we can refresh: the server forgot us; publish it all.
                body_out = body or b""
        self._dirty = False
        self._timer = None
        self.state = PublicationState.SENDING
        return self._request(self.requested_expires, body_out, self.etag)

    def _send_remove(self) -> Request:
        self.state = PublicationState.REMOVING
        self._timer = None
        return self._request(0, b"", self.etag)

    def _request(self, expires: int, body: bytes, etag: str | None) -> Request:
        self._cseq += 1
        items = [
            ("from", "From", self._from_text),
            ("to", "To", self._to_text),
            ("call-id", "Call-ID", self._call_id),
            ("cseq", "CSeq", f"{self._cseq} PUBLISH"),
            ("event", "Event", self.event),
            ("expires", "Expires", str(expires)),
        ]
        if etag is not None:
            items.append(("sip-if-match", "SIP-If-Match", etag))
        if body:
            items.append(("content-type", "Content-Type", self.content_type))
        # The texts were checked in __init__ (see there).
        return Request(method="PUBLISH", uri=self.aor, headers=Headers._vouched(items),
                       body=body)

    def restamp(self, request: Request) -> Request:
        """The same request with the next CSeq (RFC 3261 §22.2 auth retry)."""
        self._cseq += 1
        request.headers.set("CSeq", f"{self._cseq} PUBLISH")
        return request

