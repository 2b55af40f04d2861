"""The SIP user agent for presence: one object, any number of identities.

Theory of operation
-------------------
:class:`UserAgent` is sans-IO in the style of aioquic's ``QuicConnection``.
Three kinds of input drive it:

* API calls — :meth:`publish`, :meth:`modify`, :meth:`unpublish`,
  :meth:`subscribe`, :meth:`unsubscribe`, :meth:`options`;
* :meth:`receive` (a UDP datagram) / :meth:`receive_message` (a message framed
  from a TCP stream), with the source address and ``now``;
* :meth:`handle_timer` at the single deadline :meth:`get_timer` returns.

Two outputs: :meth:`datagrams_to_send` (bytes and where to send them) and
:meth:`next_event` (frozen dataclasses named in the past tense).

Every request goes to the one configured server (the outbound proxy of RFC
3261 §8.1.2): the presence server here is also the registrar and proxy of the
domain, so in-dialog requests reach it too, with the remote target as
Request-URI.  Owners — :class:`~sip.publication.Publication`,
:class:`~sip.subscription.Subscription` and the OPTIONS probes — build their
requests without Via; the user agent adds Via (a fresh branch per
transaction, RFC 3261 §8.1.1.7), Max-Forwards, Contact and credentials, runs
the client transaction, and hands the owner the final response or the
failure.

Digest challenges (RFC 3261 §22.2): a 401/407 to a request from an identity
with credentials — its own, or the gateway's default ones — is answered once:
the same request, next CSeq, new branch, with Authorization.  The challenge
is kept per set of credentials (per identity, or one for all identities using
the gateway's) so later requests carry credentials pre-emptively, with the
nonce count incremented (RFC 7616 §3.4); a stale nonce is answered again.
A challenge answered and refused again reaches the owner as the failure it
is: never a second retry.

Transports: UDP, TCP and TLS towards the server.  A ``sips:`` server, or
``transport=tls``, means TLS (RFC 5630 §3.1.3: sips demands TLS on the hop;
default port 5061, RFC 3263 §4.2).  Over TLS the Via carries ``alias``
(RFC 5923 §5), so that the server sends its NOTIFYs back over the connection
we opened — we run no TLS server of our own.

Who may send us requests: only the presence server.  A request from any other
host is answered 403 and counted (:attr:`UserAgent.refused`,
:class:`RequestRefused`); a response from another host is dropped.  The
driver tells us the server's addresses (:meth:`UserAgent.trust`).

Scale: one :class:`~sip.timers.TimerCalendar` holds every owner's deadline
(refreshes, expiries, Timer J), filed by instant since the refreshes fall due
on their grid, and a :class:`~sip.timers.TimerHeap` the client transactions';
no task or thread per subscription.

Back-pressure: a :class:`Window` bounds the client transactions outstanding
at once, the bound halved when requests go unanswered for T1 and widened
again as answers come in time.  Over UDP every request not answered within T1 is sent again, the
interval doubling (RFC 3261 §17.1.1.2, §17.1.2.2: Timer E); when the server
or we ourselves fall behind, each request in flight adds retransmissions to
the load that delayed it, and thousands in flight become a storm.  With the
window full a request waits in a queue and goes out when a transaction ends,
so what is in flight — and what can be retransmitted — stays bounded, and a
burst of refreshes due together is paced by the answers.  Two queues, served
in order: requests that keep existing work alive (refreshes, retries,
removals, un-SUBSCRIBEs, answers to challenges), at most one per publication
or subscription since each has at most one request under way; then the
callers' new requests (:meth:`publish`, :meth:`modify`, :meth:`subscribe`),
at most ``Window.queue`` of them, each waiting at most ``Window.wait``
seconds.  A caller's request that finds that queue full, or waits longer, is
never sent: its owner sees the transaction fail with the reason
:data:`BUSY` (a subscription ends, a publication retries with back-off).
OPTIONS probes pass the window: they measure the server, not our queue.

Of the window, the requests that keep work alive may hold at most
``Window.kept`` places.  They come in bursts of our making — the refreshes
due within a step of the refresh grid (:class:`~sip.publication.RefreshPolicy`)
fall due at one instant — and everything in flight, with the NOTIFYs it
causes, waits in the server's receive buffer while the server is busy: a
whole window's worth overflows it, and each datagram it drops comes back as a
retransmission after T1 (RFC 3261 §17.1.1.2, §17.1.2.2: Timer E).  TCP
restarts from a small window after an idle period for the same reason (RFC
5681 §4.1).  Each answer lets the next one out, so they go as fast as the
server answers, never more at once.  The callers' requests come at their
callers' pace and may fill the rest.

A PUBLISH that keeps a publication alive is answered at once, and then the
server may NOTIFY every watcher of the presentity (Kamailio does, on each
refresh): its answer says nothing of the NOTIFYs still to come, whose
answers reach the server's socket all the same.  So those go out at most
``Window.republish`` per ``Window.interval`` besides, the rest at the next
interval.
"""

from __future__ import annotations

import enum
import math
import random
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from . import digest
from .errors import RemoteProtocolError
from .message import (
    Headers,
    Request,
    Response,
    parse_message,
    read_lean_notify,
    read_lean_success,
)
from .publication import Publication, PublicationEvent, PublicationState, RefreshPolicy
from .subscription import Action as SubscriptionAction
from .subscription import (
    NotifyReceived,
    PhaseTally,
    Subscription,
    SubscriptionAccepted,
    SubscriptionPhase,
    SubscriptionTerminated,
)
from .timers import TimerCalendar, TimerHeap
from .transaction import (
    MAGIC_COOKIE,
    ClientKey,
    ClientState,
    ClientTransaction,
    ResponseReceived,
    ServerKey,
    TimedOut,
    TransactionAction,
    TransactionTimings,
    Transmit,
    TransportFailed,
    client_key,
    lean_client_key,
    lean_server_key,
    server_key,
)
from .uri import SipURI

__all__ = [
    "BUSY",
    "EVENTLIST_ACCEPT",
    "Destination",
    "MessageDropped",
    "OptionsAnswered",
    "OptionsFailed",
    "RequestRefused",
    "UserAgent",
    "UserAgentCounters",
    "UserAgentEvent",
    "Window",
]

Transport = Literal["udp", "tcp", "tls"]

#: RFC 3263 §4.2: the default port of SIP over TLS, and of the others.
TLS_PORT = 5061
PORT = 5060


#: The reason a request fails with when the window and its queue had no room
#: for it (it was never sent).
BUSY = "busy"


@dataclass(frozen=True, slots=True)
class Window:
    """How many client transactions may be outstanding at once, and how the
    callers' requests beyond them wait (see the module's "Back-pressure").

    The bound in force moves between ``least`` and ``size`` as TCP's
    congestion window does (RFC 5681 §3.1): halved when a request must be
    sent again (at most once per T1), one more per window's worth of
    requests answered without a retransmission.  A retransmission says an
    answer took longer than T1 — the server is slow, or we are, our answers
    queued behind NOTIFYs in our socket — and fewer requests in flight
    shorten that queue, so that they stop being sent twice.
    """

    #: Client transactions sent and not yet ended, at most.
    size: int = 100
    #: Callers' new requests waiting for room, at most; beyond it they fail at once.
    queue: int = 1000
    #: Seconds a caller's request waits for room before it fails.
    wait: float = 5.0
    #: The bound in force never falls below this (nor above ``size``).
    least: int = 8
    #: Requests keeping work alive (refreshes, retries, removals...) in
    #: flight at once, at most: a burst of them is let out as the answers come.
    kept: int = 32
    #: Of those, PUBLISHes started per ``interval``, at most: the server's
    #: NOTIFYs to the watchers follow its answer (see the module's text).
    republish: int = 4
    #: Seconds; a driver that wakes on a grid of its own should use its step.
    interval: float = 0.02

    def __post_init__(self) -> None:
        if (
            self.size < 1
            or self.queue < 0
            or not self.wait > 0
            or self.least < 1
            or self.kept < 1
            or self.republish < 1
            or not self.interval > 0
        ):
            raise ValueError(
                "a window needs size >= 1, least >= 1, kept >= 1, republish >= 1,"
                f" queue >= 0, wait > 0, interval > 0: {self}"
            )


@dataclass(frozen=True, slots=True)
class Destination:
    """Where bytes go or came from.  For TCP the driver maps it to a connection."""

    transport: Transport
    host: str
    port: int


@dataclass(frozen=True)
class OptionsAnswered:
    """An OPTIONS probe got a final response after ``rtt`` seconds."""

    probe_id: int
    status: int
    rtt: float


@dataclass(frozen=True)
class OptionsFailed:
    """An OPTIONS probe timed out or could not be sent."""

    probe_id: int
    reason: str


@dataclass(frozen=True)
class MessageDropped:
    """Bytes from the network that were not a SIP message we could use."""

    source: Destination
    reason: str


@dataclass(frozen=True)
class RequestRefused:
    """A request from a host that is not the presence server, answered 403."""

    source: Destination
    method: str


UserAgentEvent = (
    PublicationEvent
    | NotifyReceived
    | SubscriptionAccepted
    | SubscriptionTerminated
    | OptionsAnswered
    | OptionsFailed
    | MessageDropped
    | RequestRefused
)

#: A NOTIFY re-sent this many times after we answered it (Timer E: 0.5, 1 and
#: 2 s apart at the default T1, RFC 3261 §17.1.2.2) had our answer later than
#: the notifier may wait; it may have dropped the dialog: ask it.
LATE_COPIES = 3
#: What we answer to (RFC 3261 §20.5) and which event packages we subscribe to.
ALLOW = "NOTIFY, OPTIONS"
ALLOW_EVENTS = "presence, presence.winfo"
ACCEPT = "application/pidf+xml, application/watcherinfo+xml"
#: What a list subscription accepts (RFC 4662 §5): the member documents, the
#: RLMI document and the multipart/related body that carries them.
EVENTLIST_ACCEPT = ("application/pidf+xml", "application/rlmi+xml", "multipart/related")
# What a subscriber's SUBSCRIBEs get added, kept for reuse (one per
# subscriber user, see UserAgent._subscribe_fields); a bound, as the users
# are the application's to choose.
_CONTACTS_MAX = 4096
#: Header fields as Headers keeps them: (key, name as written, value).
_Fields = tuple[tuple[str, str, str], ...]
_MAX_FORWARDS = ("max-forwards", "Max-Forwards", "70")
_ALLOW = ("allow", "Allow", ALLOW)
# Tokens drawn from a system random generator per read of it (64 bits each).
_TOKEN_BATCH = 64
_NOTIFY_200 = ("NOTIFY", 200)
_TERMINATED = SubscriptionPhase.TERMINATED
_CRLF = b"\r\n"
# A client transaction's states in which a final response ends it (§17.1.2.2).
_AWAITING = (ClientState.TRYING, ClientState.PROCEEDING)


class _Probe:
    """The owner of one OPTIONS request (RFC 3261 §11), used as a liveness check."""

    def __init__(self, probe_id: int, now: float) -> None:
        self.id = probe_id
        self.sent_at = now

    def receive_response(self, response: Response, now: float) -> list[UserAgentEvent]:
        return [OptionsAnswered(self.id, response.status, now - self.sent_at)]

    def transaction_failed(self, reason: str, now: float) -> list[UserAgentEvent]:
        return [OptionsFailed(self.id, reason)]

    def restamp(self, request: Request) -> Request:
        cseq = request.cseq
        request.headers.set("CSeq", f"{cseq.seq + 1} {cseq.method}")
        return request


Owner = Publication | Subscription | _Probe


@dataclass(slots=True)
class UserAgentCounters:
    """Running totals of the client transactions, for monitoring; never reset."""

    #: (method, outcome) -> transactions ended so: the final status ("200",
    #: "401", ...), or "timeout" (Timer F, RFC 3261 §17.1.2.2), or "transport-error".
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Requests sent again by Timer E (RFC 3261 §17.1.2.2; none over TCP).
    retransmissions: int = 0
    #: Requests that waited for room in the window before they were sent.
    queued: int = 0
    #: NOTIFYs the notifier re-sent LATE_COPIES times after we had answered.
    late_answers: int = 0
    #: (method, status) -> requests from the server answered so (their
    #: retransmissions apart): what a refresh or a PUBLISH costs in NOTIFYs.
    answered: dict[tuple[str, int], int] = field(default_factory=dict)

    def ended(self, method: str, outcome: str) -> None:
        key = (method, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


@dataclass(slots=True)
class _Outgoing:
    transaction: ClientTransaction
    owner: Owner
    authenticated: bool  # we already answered a challenge for this request
    kept: bool  # it keeps work alive (see Window.kept)
    retransmitted: bool = False  # Timer E sent it again


@dataclass(slots=True)
class _Waiting:
    """A request waiting for room in the window."""

    owner: Owner
    request: Request
    authenticated: bool
    #: A caller's request fails as BUSY at this instant; None: it waits on.
    deadline: float | None


@dataclass
class _Credentials:
    session: digest.DigestSession
    # The last challenge of each kind — 401 (WWW-Authenticate) and 407
    # (Proxy-Authenticate) — to authorise later requests up front; a request
    # may carry both (RFC 3261 §22.3: a server and a proxy may each challenge).
    challenges: dict[int, digest.Challenge] = field(default_factory=dict)


class _Timer(enum.IntEnum):
    """What a deadline in the user agent's one heap belongs to.  An IntEnum:
    the heap's keys are hashed on every NOTIFY, and ints hash in C."""

    TIMER_J = 3  # the whole second at which the Timer Js of _expiring[second] fall due
    PUBLICATION = 4  # a publication, by id
    QUEUE = 6  # the oldest caller's request waiting for the window (key 0)
    PACE = 7  # the next interval's PUBLISHes keeping publications alive (key 0)
    # A subscription's deadline is filed under its bare id (an int, which no
    # other key is): the id it holds anyway, where a (kind, id) tuple would
    # be one more object per held subscription.


class UserAgent:
    """A presence user agent (PUBLISH, SUBSCRIBE; answers NOTIFY and OPTIONS)."""

    def __init__(
        self,
        *,
        local: Destination,
        server: SipURI,
        rng: random.Random,
        user_agent: str = "presence-adapter",
        publication_expires: int = 3600,
        subscription_expires: int = 3600,
        timings: TransactionTimings = TransactionTimings(),
        policy: RefreshPolicy = RefreshPolicy(),
        window: Window | None = None,
    ) -> None:
        self.local = local
        self.server = server
        self.server_destination = server_destination(server, local.transport)
        self._reliable = self.server_destination.transport != "udp"
        via_transport = self.server_destination.transport.upper()
        self._via_prefix = f"SIP/2.0/{via_transport} {_host(local.host)}:{local.port};branch="
        # RFC 5923 §5: "alias" asks the server to reuse this connection for
        # requests to our sent-by; over TLS we have no server socket it could
        # reach otherwise.
        via_params: tuple[tuple[str, str | None], ...] = (("rport", None),)
        if self.server_destination.transport == "tls":
            via_params += (("alias", None),)
        self._via_suffix = "".join(
            f";{name}" if value is None else f";{name}={value}" for name, value in via_params
        )
        self._trusted = frozenset({_bare(self.server_destination.host)})
        #: Requests refused because they did not come from the presence server.
        self.refused = 0
        self._rng = rng
        # A given seeded generator keeps its one-draw-per-token sequence.
        self._token_batch = isinstance(rng, random.SystemRandom)
        self._tokens: list[str] = []
        # Written into every request as it is: checked once here.
        Headers([("User-Agent", user_agent), ("Via", self._via_prefix + self._via_suffix)])
        self._publication_expires = publication_expires
        self._subscription_expires = subscription_expires
        self._timings = timings
        # Timer N of every subscription (RFC 6665 §4.1.2.4): one float for all.
        self._timer_n = timings.timeout
        # Timer J of a request answered over UDP (RFC 3261 §17.2.2): 64*T1.
        self._timer_j = timings.timeout
        self._policy = policy
        self._next_id = 0
        self._credentials: dict[str, _Credentials] = {}
        self._outgoing: dict[ClientKey, _Outgoing] = {}
        # None: no bound on the client transactions in flight.
        self._window = window
        # The bound in force (see Window), and when it was last halved.
        self._bound = float(window.size) if window is not None else math.inf
        self._halved_at = -math.inf
        self._kept: deque[_Waiting] = deque()  # keeping existing work alive
        self._republish: deque[_Waiting] = deque()  # of those, PUBLISHes
        self._fresh: deque[_Waiting] = deque()  # callers' new requests
        # Subscriptions whose initial SUBSCRIBE waits in one of them, never sent.
        self._unsent: set[int] = set()
        self._pumping = False
        # Client transactions in flight that keep work alive (see Window.kept).
        self._kept_in_flight = 0
        # The interval in progress ends at _pace_ends, and _paced PUBLISHes
        # keeping publications alive went out in it (see Window.republish).
        self._pace_ends = -math.inf
        self._paced = 0
        # Completed UDP server transactions (see _complete), kept for Timer J
        # as what a retransmitted request needs and nothing more: key -> the
        # status answered (with the To tag added, if one was), and the keys
        # by the whole second their Timer J falls due.  Ints and tuples of
        # str and int are not tracked by the garbage collector, so the many
        # held at once under load cost its collections nothing.
        self._completed: dict[ServerKey, int | tuple[int, str]] = {}
        self._expiring: dict[int, list[ServerKey]] = {}
        # Completed NOTIFY transactions whose request came again: how often.
        self._resent: dict[ServerKey, int] = {}
        self._publications: dict[int, Publication] = {}
        self._subscriptions: dict[int, Subscription] = {}
        # By Call-ID: a subscription's Call-ID is its From tag (see subscribe).
        self._dialogs: dict[str, Subscription] = {}
        # The subscriptions held, counted by (event package, phase) as they
        # come, change phase (Subscription.tally) and go: a scrape of
        # /metrics reads it instead of walking them all.
        self._phases: PhaseTally = PhaseTally()
        # Keys: (kind, what it names), see _Timer; a subscription's id alone.
        # By instant: the refreshes fall due on their grid, many at each.
        self._timers: TimerCalendar[tuple[_Timer, Any] | int] = TimerCalendar()
        # The client transactions' deadlines (Timers E, F and K, RFC 3261
        # §17.1.2.2), by transaction key, in a heap of their own: every
        # request files one and its answer cancels it, and this heap holds
        # only the transactions in flight (a window's worth), where the other
        # holds every subscription.
        self._client_timers: TimerHeap[ClientKey] = TimerHeap()
        self._datagrams: list[tuple[bytes, Destination]] = []
        self._events: deque[UserAgentEvent] = deque()
        # What _send adds to a request: to any, and to a subscriber's SUBSCRIBE.
        self._fields: _Fields = (_MAX_FORWARDS, ("user-agent", "User-Agent", user_agent))
        self._contacts: dict[str | None, _Fields] = {}  # subscriber user -> fields
        self.counters = UserAgentCounters()
        # The gateway's account, shared by every identity without its own:
        # one challenge answered serves them all (same user, same nonce).
        self._default_credentials: _Credentials | None = None

    # -- configuration -----------------------------------------------------

    def set_credentials(self, aor: SipURI | None, credentials: digest.Credentials) -> None:
        """Credentials used when requests from ``aor`` are challenged.

        ``aor`` None sets the default: the gateway's own account, used for
        every identity that has none of its own.  Its last challenges are
        shared: once one request was challenged, the requests of every
        identity carry the answer up front, counting one nonce on.
        """
        if aor is None:
            self._default_credentials = _Credentials(digest.DigestSession(credentials))
        else:
            self._credentials[aor.aor] = _Credentials(digest.DigestSession(credentials))

    def trust(self, hosts: Iterable[str]) -> None:
        """The addresses the presence server sends from (its host name resolved).

        Requests from any other host are refused with 403.
        """
        self._trusted = frozenset(_bare(host) for host in hosts) | {
            _bare(self.server_destination.host)
        }

    def trusts(self, source: Destination) -> bool:
        return _bare(source.host) in self._trusted

    # -- outputs -----------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Destination]]:
        out, self._datagrams = self._datagrams, []
        return out

    def next_event(self) -> UserAgentEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        deadline = self._timers.next_deadline()
        client = self._client_timers.next_deadline()
        if client is not None and (deadline is None or client < deadline):
            return client
        return deadline

    # -- API: publications (RFC 3903) --------------------------------------

    def publish(
        self,
        aor: SipURI,
        body: bytes,
        now: float,
        *,
        event: str = "presence",
        content_type: str = "application/pidf+xml",
        expires: int | None = None,
        etag: str | None = None,
        etag_expires_at: float | None = None,
    ) -> int:
        """Start a publication of ``body`` for ``aor``; returns its id.

        ``etag`` (with the instant it expires, on our clock) resumes a
        publication the server already holds: it is modified, not added to.
        The outcome arrives as :class:`~sip.publication.PublicationConfirmed`
        or :class:`~sip.publication.PublicationFailed`.
        """
        token = self._token()
        publication = Publication(
            self._new_id(),
            aor,
            call_id=token,
            local_tag=token,
            event=event,
            content_type=content_type,
            expires=expires or self._publication_expires,
            spread=self._rng.random(),
            policy=self._policy,
            etag=etag,
            etag_expires_at=etag_expires_at,
        )
        self._publications[publication.id] = publication
        self._run(publication, publication.publish(body, now), now, fresh=True)
        return publication.id

    def modify(self, publication_id: int, body: bytes, now: float) -> None:
        """Replace the published state (RFC 3903 §4.4)."""
        publication = self._publications[publication_id]
        self._run(publication, publication.publish(body, now), now, fresh=True)

    def unpublish(self, publication_id: int, now: float) -> None:
        """Remove the publication (RFC 3903 §4.5); ends in PublicationRemoved.
        Unknown ids (a publication already over) are ignored."""
        publication = self._publications.get(publication_id)
        if publication is not None:
            self._run(publication, publication.remove(now), now)

    def abandon(self, publication_id: int) -> None:
        """Forget the publication without a word to the server: no refresh, no
        removal.  Its state there lives until its expiry, or until whoever holds
        its entity tag modifies it (RFC 3903 §4.4) — another gateway that took
        the work over.  A response still to come for it is dropped."""
        self._publications.pop(publication_id, None)
        self._timers.cancel((_Timer.PUBLICATION, publication_id))

    def publication(self, publication_id: int) -> Publication | None:
        return self._publications.get(publication_id)

    # -- API: subscriptions (RFC 6665) -------------------------------------

    def subscribe(
        self,
        subscriber: SipURI,
        target: SipURI,
        now: float,
        *,
        event: str = "presence",
        accept: tuple[str, ...] | None = None,
        eventlist: bool = False,
        expires: int | None = None,
        refusable: bool = True,
    ) -> int:
        """Subscribe ``subscriber`` to ``target``'s ``event``; returns the id.

        Outcomes: SubscriptionAccepted (2xx), NotifyReceived for each NOTIFY,
        and exactly one SubscriptionTerminated at the end.

        ``eventlist=True`` asks for a resource list (RFC 4662 §5): every
        SUBSCRIBE carries ``Supported: eventlist`` and, unless ``accept`` is
        given, accepts :data:`EVENTLIST_ACCEPT`. A notifier that is not a
        resource list server answers as for a single resource.

        ``refusable=False``: the SUBSCRIBE keeps existing work alive (a
        subscription made again after it was lost), so it waits for room in
        the window like a refresh and is never refused as BUSY.
        """
        if accept is None:
            accept = EVENTLIST_ACCEPT if eventlist else ("application/pidf+xml",)
        # One random token is both the Call-ID and the From tag: each is asked
        # only to be globally unique (RFC 3261 §8.1.1.4) and random (§19.3, at
        # least 32 bits), which the token is; one string a dialog instead of two.
        token = self._token()
        subscription = Subscription(
            self._new_id(),
            subscriber,
            target,
            call_id=token,
            local_tag=token,
            event=event,
            accept=accept,
            eventlist=eventlist,
            expires=expires or self._subscription_expires,
            spread=self._rng.random(),
            timer_n=self._timer_n,
            policy=self._policy,
            tally=self._phases,
        )
        self._subscriptions[subscription.id] = subscription
        self._phases[(event, subscription.state)] += 1
        self._dialogs[subscription.call_id] = subscription
        self._run(subscription, subscription.start(now), now, fresh=refusable)
        return subscription.id

    def refresh(self, subscription_id: int, now: float) -> None:
        """Refresh a subscription now (RFC 6665 §4.1.2.2); unknown ids are ignored."""
        subscription = self._subscriptions.get(subscription_id)
        if subscription is not None:
            self._run(subscription, subscription.refresh(now), now)

    def unsubscribe(self, subscription_id: int, now: float) -> None:
        """End a subscription (RFC 6665 §4.1.2.3); unknown ids are ignored."""
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return
        if subscription_id in self._unsent:
            # Its SUBSCRIBE still waits for room and was never sent: the
            # notifier holds nothing of it, so it ends here, and the queue
            # drops the request instead of sending it and an un-SUBSCRIBE
            # after it (a caller that gave up on a full window would
            # otherwise add two requests to it).
            self._unsent.discard(subscription_id)
            self._run(subscription, subscription.withdraw(), now)
            return
        self._run(subscription, subscription.unsubscribe(now), now)

    def subscription(self, subscription_id: int) -> Subscription | None:
        return self._subscriptions.get(subscription_id)

    @property
    def subscription_count(self) -> int:
        return len(self._subscriptions)

    def subscriptions_by_state(self) -> dict[tuple[str, str], int]:
        """How many subscriptions there are per (event package, phase)."""
        return {
            (event, phase.name.lower()): count
            for (event, phase), count in self._phases.items()
            if count
        }

    @property
    def publication_count(self) -> int:
        return len(self._publications)

    @property
    def transactions_in_flight(self) -> int:
        """Client transactions sent and not yet ended."""
        return len(self._outgoing)

    @property
    def window_bound(self) -> int | None:
        """Client transactions allowed in flight now (None: no window)."""
        return int(self._bound) if self._window is not None else None

    @property
    def requests_waiting(self) -> int:
        """Requests waiting for room in the window."""
        return len(self._kept) + len(self._republish) + len(self._fresh)

    # -- API: OPTIONS ------------------------------------------------------

    def options(self, now: float) -> int:
        """Send OPTIONS to the server; answered by OptionsAnswered / OptionsFailed."""
        probe = _Probe(self._new_id(), now)
        uri = SipURI(self.server.scheme, None, self.server.host, self.server.port)
        local = SipURI("sip", None, _host(self.local.host), self.local.port)
        headers = Headers()
        headers.add("From", f"<{local}>;tag={self._token()}")
        headers.add("To", f"<{uri}>")
        headers.add("Call-ID", self._token())
        headers.add("CSeq", "1 OPTIONS")
        headers.add("Accept", ACCEPT)
        self._start(probe, Request("OPTIONS", uri, headers), now)
        return probe.id

    # -- network input -----------------------------------------------------

    def receive(self, data: bytes, source: Destination, now: float) -> None:
        """One UDP datagram."""
        if not data or (data[0] in _CRLF and not data.strip(b"\r\n")):
            return  # RFC 5626 §4.4.1 keep-alive (a message's copy is not made to see it)
        if data.startswith(b"NOTIFY ") and self._receive_next_notify(data, source, now):
            return
        if data.startswith(b"SIP/2.0 2") and self._receive_refresh_success(data, source, now):
            return
        try:
            message = parse_message(data)
        except RemoteProtocolError as exc:
            self._events.append(MessageDropped(source, str(exc)))
            return
        self.receive_message(message, source, now)

    def receive_message(
        self, message: Request | Response, source: Destination, now: float
    ) -> None:
        """One parsed message (a datagram, or framed from a TCP stream)."""
        try:
            if isinstance(message, Response):
                if source.host not in self._trusted and not self.trusts(source):
                    # Only the server answers our requests (all go to it).
                    self._events.append(
                        MessageDropped(source, "a response not from the presence server")
                    )
                    return
                self._receive_response(message, now)
            else:
                self._receive_request(message, source, now)
        except RemoteProtocolError as exc:
            # A header we needed was malformed: the message is unusable.
            self._events.append(MessageDropped(source, str(exc)))

    def transport_failed(self, destination: Destination, reason: str, now: float) -> None:
        """The driver could not reach ``destination``: fail what waits on it.

        RFC 3261 §17.1.4: the transport layer informs the transaction, which
        informs its user.  All our requests go to the server.
        """
        if destination != self.server_destination:
            return
        for key, outgoing in list(self._outgoing.items()):
            if outgoing.transaction.state in (ClientState.TRYING, ClientState.PROCEEDING):
                actions = outgoing.transaction.transport_failed(reason, now)
                self._client_actions(key, outgoing, actions, now)

    # -- timers ------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        # The transactions' timers first: what they end, their owners learn
        # before their own deadlines of the same instant come up.
        for client in self._client_timers.pop_expired(now):
            outgoing = self._outgoing.get(client)
            if outgoing is not None:
                actions = outgoing.transaction.handle_timer(now)
                self._client_actions(client, outgoing, actions, now)
        for key in self._timers.pop_expired(now):
            if isinstance(key, int):
                subscription = self._subscriptions.get(key)
                if subscription is not None:
                    self._run(subscription, subscription.handle_timer(now), now)
                continue
            kind, ident = key
            if kind is _Timer.TIMER_J:
                # Timer J fired (RFC 3261 §17.2.2): "at which point it MUST
                # transition to the "Terminated" state" — the records go.
                completed = self._completed
                resent = self._resent
                for server in self._expiring.pop(ident, ()):
                    completed.pop(server, None)
                    if resent:
                        resent.pop(server, None)
            elif kind is _Timer.PUBLICATION:
                publication = self._publications.get(ident)
                if publication is not None:
                    self._run(publication, publication.handle_timer(now), now)
            elif kind is _Timer.QUEUE:
                fresh = self._fresh
                while fresh and fresh[0].deadline is not None and fresh[0].deadline <= now:
                    self._refuse(fresh.popleft(), now)
                self._file_queue_timer()
            elif kind is _Timer.PACE:
                self._pump(now)

    # -- owners ------------------------------------------------------------

    def _abandoned(self, owner: Owner) -> bool:
        """A publication let go by :meth:`abandon` (another node took it over)."""
        return isinstance(owner, Publication) and self._publications.get(owner.id) is not owner

    def _run(
        self,
        owner: Owner,
        actions: Sequence[Request | UserAgentEvent],
        now: float,
        *,
        fresh: bool = False,
    ) -> None:
        """Carry out an owner's actions, then file its timer.

        ``fresh``: the actions answer a caller's call that starts new work,
        whose requests may be refused as BUSY (see :class:`Window`).
        """
        if isinstance(owner, Publication) and self._abandoned(owner):
            return  # nothing more of it is sent or told
        for action in actions:
            if isinstance(action, Request):
                self._start(owner, action, now, fresh=fresh)
            else:
                self._events.append(action)
        # Subscriptions first: they are most of the owners, by far.
        if type(owner) is Subscription:
            self._settle(owner)
        elif isinstance(owner, Publication):
            if owner.state is PublicationState.REMOVED:
                self._publications.pop(owner.id, None)
                self._timers.cancel((_Timer.PUBLICATION, owner.id))
            else:
                self._file_timer((_Timer.PUBLICATION, owner.id), owner.get_timer())

    def _settle(self, subscription: Subscription) -> None:
        """After a subscription's actions: forgotten if it ended, else its timer
        filed.  The byte paths, whose actions are only events, call it alone."""
        if subscription.state is _TERMINATED:
            if self._subscriptions.pop(subscription.id, None) is not None:
                self._phases[(subscription.event, subscription.state)] -= 1
                subscription.tally = None
            self._dialogs.pop(subscription.call_id, None)
            self._timers.cancel(subscription.id)
        else:
            self._file_timer(subscription.id, subscription.get_timer())

    def _file_timer(self, key: tuple[_Timer, Any] | int, deadline: float | None) -> None:
        if deadline is None:
            self._timers.cancel(key)
        else:
            self._timers.schedule(deadline, key)

    # -- client transactions -----------------------------------------------

    def _credentials_for(self, identity: str | None) -> _Credentials | None:
        if identity is None:
            return None
        return self._credentials.get(identity) or self._default_credentials

    def _identity(self, owner: Owner) -> str | None:
        if isinstance(owner, Publication):
            return owner.aor.aor
        if isinstance(owner, Subscription):
            return owner.subscriber.aor
        return None

    def _start(
        self,
        owner: Owner,
        request: Request,
        now: float,
        *,
        authenticated: bool = False,
        fresh: bool = False,
    ) -> None:
        """Send ``request`` for ``owner`` in a new client transaction, or queue it
        while the window is full (a caller's ``fresh`` one only if there is room)."""
        window = self._window
        if (
            window is not None
            and type(owner) is not _Probe
            and (
                len(self._outgoing) >= self._bound
                or self._fresh
                # A caller's request passes waiting requests that keep work
                # alive only when these may not go now.
                or (self._ready(now) if fresh else self._held(owner, now))
            )
        ):
            # Anything already waiting goes first, so a request that finds
            # the queues non-empty (while they are being served) joins them.
            self.counters.queued += 1
            if type(owner) is Subscription and owner.remote_tag is None:
                self._unsent.add(owner.id)
            if not fresh:
                waiting = _Waiting(owner, request, authenticated, None)
                if type(owner) is Publication:
                    self._republish.append(waiting)
                    self._file_pace_timer(now)
                else:
                    self._kept.append(waiting)
                return
            waiting = _Waiting(owner, request, authenticated, now + window.wait)
            if len(self._fresh) >= window.queue:
                self._refuse(waiting, now)
                return
            self._fresh.append(waiting)
            if len(self._fresh) == 1:
                self._file_queue_timer()
            return
        kept = not fresh and type(owner) is not _Probe
        if kept and type(owner) is Publication:
            self._paced += 1
        self._send(owner, request, now, authenticated, kept=kept)

    def _ready(self, now: float) -> bool:
        """May a waiting request that keeps work alive go out now?"""
        window = self._window
        assert window is not None
        return self._kept_in_flight < window.kept and (
            bool(self._kept) or (bool(self._republish) and self._pace_open(now))
        )

    def _held(self, owner: Owner, now: float) -> bool:
        """Must a new request keeping ``owner`` alive wait, with room in the window?"""
        window = self._window
        assert window is not None
        if self._kept or self._kept_in_flight >= window.kept:
            return True
        if type(owner) is Publication:
            return bool(self._republish) or not self._pace_open(now)
        return False

    def _pace_open(self, now: float) -> bool:
        """May one more PUBLISH keeping a publication alive go out in this interval?"""
        window = self._window
        assert window is not None
        if now >= self._pace_ends:
            # Intervals on a grid of their own length, as a driver's wake-ups are.
            ends = (math.floor(now / window.interval) + 1) * window.interval
            # Rounding may put that at now itself: the interval would restart
            # at every look, and pace nothing.
            self._pace_ends = ends if ends > now else ends + window.interval
            self._paced = 0
        return self._paced < window.republish

    def _file_pace_timer(self, now: float) -> None:
        """Wake at the next interval while PUBLISHes wait only for the pace."""
        held = bool(self._republish) and not self._pace_open(now)
        self._file_timer((_Timer.PACE, 0), self._pace_ends if held else None)

    def _pump(self, now: float) -> None:
        """Send what waits while there is room, oldest first and kept before
        fresh — kept ones while they hold fewer than ``Window.kept`` places,
        PUBLISHes among them as the interval's ``Window.republish`` allows."""
        window = self._window
        if window is None or self._pumping:
            return
        self._pumping = True
        kept, republish, fresh = self._kept, self._republish, self._fresh
        # Their timers are filed only while they hold requests (see below).
        had_republish, had_fresh = bool(republish), bool(fresh)
        try:
            while len(self._outgoing) < self._bound:
                if kept and self._kept_in_flight < window.kept:
                    waiting = kept.popleft()
                elif republish and self._kept_in_flight < window.kept and self._pace_open(now):
                    waiting = republish.popleft()
                elif fresh:
                    waiting = fresh.popleft()
                else:
                    break
                owner = waiting.owner
                if isinstance(owner, Subscription):
                    self._unsent.discard(owner.id)
                    if owner.terminated:
                        continue  # it ended while it waited
                    if owner.request_sent(now):
                        self._file_timer(owner.id, owner.get_timer())
                elif _gone(owner) or self._abandoned(owner):
                    continue
                # A caller's request has a deadline; one keeping work alive none.
                kept_alive = waiting.deadline is None
                if kept_alive and type(owner) is Publication:
                    self._paced += 1
                self._send(owner, waiting.request, now, waiting.authenticated,
                           kept=kept_alive)
        finally:
            self._pumping = False
        # A queue empty before this pump has no timer filed (whatever adds
        # to one files it, and only a pump or a refusal takes from one), and
        # nothing sent here adds to it but through _start, which files it.
        if had_fresh:
            self._file_queue_timer()
        if had_republish:
            self._file_pace_timer(now)

    def _narrow(self, now: float) -> None:
        """A request went unanswered for T1: halve the bound, once per T1
        (the requests sent together time out together; one cut is enough)."""
        window = self._window
        if window is not None and now >= self._halved_at + self._timings.t1:
            self._halved_at = now
            self._bound = max(float(min(window.least, window.size)), self._bound / 2)

    def _widen(self) -> None:
        """An answer came in time: one more in flight per window's worth of them."""
        window = self._window
        if window is not None and self._bound < window.size:
            self._bound = min(float(window.size), self._bound + 1 / self._bound)

    def _refuse(self, waiting: _Waiting, now: float) -> None:
        """A caller's request found no room: its owner learns it failed, BUSY."""
        owner = waiting.owner
        if type(owner) is Subscription:
            self._unsent.discard(owner.id)
        if not _gone(owner):
            self.counters.ended(waiting.request.method, BUSY)
            self._run(owner, owner.transaction_failed(BUSY, now), now)

    def _file_queue_timer(self) -> None:
        fresh = self._fresh
        self._file_timer((_Timer.QUEUE, 0), fresh[0].deadline if fresh else None)

    def _send(
        self, owner: Owner, request: Request, now: float, authenticated: bool, *, kept: bool
    ) -> None:
        headers = request.headers
        # A token of ours is hex, as new_branch wants it (§8.1.1.7).
        branch = MAGIC_COOKIE + self._token()
        # The texts added are ours, checked once in __init__.
        items = headers._items
        items.insert(0, ("via", "Via", self._via_prefix + branch + self._via_suffix))
        fields = self._fields
        if request.method == "SUBSCRIBE" and isinstance(owner, Subscription):
            # RFC 6665 §4.1.2.1 / RFC 3261 §8.1.1.8: the NOTIFYs come here.
            fields = self._subscribe_fields(owner.subscriber.user)
        if authenticated:
            # Sent again after a challenge: it has them already, as made here.
            present = {key for key, _, _ in items}
            items.extend(item for item in fields if item[0] not in present)
        else:
            items.extend(fields)  # as its owner made it: none of them is there
        headers._version += 1
        if self._credentials or self._default_credentials:
            identity = self._identity(owner)
            if identity is not None:
                self._authorize(identity, request)
        # The transaction is keyed by this Via's branch and the CSeq method
        # (RFC 3261 §17.1.3): the branch just written, and the method, which
        # every owner writes into its CSeq as well; neither is read back.
        transaction = ClientTransaction(request, reliable=self._reliable, timings=self._timings,
                                        key=(branch, request.method))
        outgoing = _Outgoing(transaction, owner, authenticated, kept)
        self._outgoing[transaction.key] = outgoing
        if kept:
            self._kept_in_flight += 1
        self._client_actions(transaction.key, outgoing, transaction.start(now), now)

    def _subscribe_fields(self, user: str | None) -> _Fields:
        """What the user agent adds to a subscriber's SUBSCRIBE, made once per
        user: Max-Forwards, Contact, Allow, User-Agent."""
        fields = self._contacts.get(user)
        if fields is None:
            contact = SipURI("sip", user, _host(self.local.host), self.local.port)
            if self.server_destination.transport != "udp":
                # The NOTIFYs must come back over a stream, and over TLS
                # (RFC 3261 §19.1.4; our dialogs' URIs are sip:, so the
                # transport parameter says it, as RFC 5630 §3.2 describes).
                contact = contact.with_params(transport=self.server_destination.transport)
            fields = (_MAX_FORWARDS, ("contact", "Contact", f"<{contact}>"), _ALLOW,
                      self._fields[-1])
            if len(self._contacts) >= _CONTACTS_MAX:
                self._contacts.clear()
            self._contacts[user] = fields
        return fields

    def _authorize(self, identity: str, request: Request) -> None:
        """Add credentials up front when this identity was challenged before."""
        creds = self._credentials_for(identity)
        if creds is None:
            return
        for status, challenge in creds.challenges.items():
            authorization = creds.session.authorize(
                challenge,
                method=request.method,
                uri=str(request.uri),
                cnonce=self._token(),
                body=request.body,
            )
            request.headers.set(digest.AUTH_HEADERS[status][1], str(authorization))

    def _receive_response(self, response: Response, now: float) -> None:
        key = client_key(response)
        outgoing = self._outgoing.get(key)
        if outgoing is None:
            # RFC 3261 §18.1.2: a response matching no transaction is discarded.
            return
        actions = outgoing.transaction.receive_response(response, now)
        self._client_actions(key, outgoing, actions, now)

    def _client_actions(
        self, key: ClientKey, outgoing: _Outgoing, actions: list[TransactionAction], now: float
    ) -> None:
        owner = outgoing.owner
        for action in actions:
            if isinstance(action, Transmit):
                if action.retransmission:
                    self.counters.retransmissions += 1
                    outgoing.retransmitted = True
                    self._narrow(now)
                self._datagrams.append((action.data, self.server_destination))
            elif isinstance(action, ResponseReceived):
                response = action.response
                if response.status < 200:
                    continue
                if not outgoing.retransmitted:
                    self._widen()
                self.counters.ended(outgoing.transaction.request.method, str(response.status))
                try:
                    if response.status in (401, 407) and self._retry_with_credentials(
                        outgoing, response, now
                    ):
                        continue
                    caused = owner.receive_response(response, now)
                except RemoteProtocolError as exc:
                    # The final response is in, so no other will come: an
                    # owner left waiting for one would wait for ever.  A
                    # malformed header it needed (Expires, SIP-ETag, a
                    # challenge...) makes the request a failure instead.
                    self._events.append(MessageDropped(self.server_destination, str(exc)))
                    caused = owner.transaction_failed("bad-response", now)
                self._run(owner, caused, now)
            elif isinstance(action, TimedOut):
                self._narrow(now)
                self.counters.ended(outgoing.transaction.request.method, "timeout")
                self._run(owner, owner.transaction_failed("timeout", now), now)
            elif isinstance(action, TransportFailed):
                self.counters.ended(outgoing.transaction.request.method, "transport-error")
                self._run(owner, owner.transaction_failed("transport-error", now), now)
        transaction = outgoing.transaction
        if transaction.state in (ClientState.COMPLETED, ClientState.TERMINATED):
            self._forget(key, outgoing, now)
        else:
            deadline = transaction.get_timer()
            if deadline is None:
                self._client_timers.cancel(key)
            else:
                self._client_timers.schedule(deadline, key)

    def _forget(self, key: ClientKey, outgoing: _Outgoing, now: float) -> None:
        """A client transaction whose final response is in, gone.

        RFC 3261 §17.1.2.2: "The "Completed" state exists to buffer any
        additional response retransmissions that may be received" — for T4
        (5 s) over UDP, holding the request and the final response.  Here a
        response matching no transaction is discarded (_receive_response),
        which absorbs those retransmissions just the same, so the transaction
        is forgotten at once rather than kept for the garbage collector to
        walk until Timer K.
        """
        if self._outgoing.pop(key, None) is not None and outgoing.kept:
            self._kept_in_flight -= 1
        self._client_timers.cancel(key)
        if self._kept or self._republish or self._fresh:
            self._pump(now)

    def _receive_refresh_success(self, data: bytes, source: Destination, now: float) -> bool:
        """A datagram that is a 2xx to a subscription's refresh, or to a
        PUBLISH, taken from its bytes; False, nothing done, for any other,
        which :meth:`receive` then parses.

        Every held subscription's refresh brings one, and every refresh of a
        publication.  The outcome is the general path's — the transaction
        ended, the counters, the window, the subscription's new expiry, the
        publication's new entity tag — from the fields it reads (the top
        Via's branch and the CSeq method to match the transaction, RFC 3261
        §17.1.3; the Expires; a PUBLISH's SIP-ETag, RFC 3903 §11.3.1),
        without the Response and its transaction's machine, which a final
        response ends at once here anyway.
        """
        if source.host not in self._trusted:
            return False
        success = read_lean_success(data)
        if success is None:
            return False
        key = lean_client_key(success.branch, success.method)
        if key is None:
            return False
        outgoing = self._outgoing.get(key)
        if outgoing is None:
            return False
        owner = outgoing.owner
        if outgoing.transaction.state not in _AWAITING:
            return False
        caused: Sequence[Request | UserAgentEvent] | None
        if type(owner) is Subscription:
            caused = owner.receive_refresh_success(success.expires, now)
            if caused is None:
                return False
        elif type(owner) is Publication:
            caused = owner.receive_success(success.status, success.etag, success.expires, now)
        else:
            return False
        if not outgoing.retransmitted:
            self._widen()
        self.counters.ended(outgoing.transaction.request.method, str(success.status))
        if not caused and isinstance(owner, Subscription):
            self._settle(owner)  # nothing to carry out: only its timer to file
        else:
            self._run(owner, caused, now)
        self._forget(key, outgoing, now)
        return True

    def _retry_with_credentials(self, outgoing: _Outgoing, response: Response, now: float) -> bool:
        """RFC 3261 §22.2: answer one challenge by resending with credentials."""
        # The AOR whose credentials apply: the owner's, which never changes.
        creds = self._credentials_for(self._identity(outgoing.owner))
        if creds is None:
            return False
        name = digest.AUTH_HEADERS[response.status][0]
        challenge = digest.select_challenge(response.headers.get_raw(name))
        if challenge is None:
            return False
        realm = creds.session.credentials.realm
        if realm is not None and challenge.realm != realm:
            # Credentials for one realm are not given to another (RFC 3261
            # §22.1: the realm tells the client which password to use).
            return False
        if outgoing.authenticated and not challenge.stale:
            # We answered already and the server still refuses: the
            # credentials are wrong.  The owner sees the 401/407.
            creds.challenges.clear()
            return False
        creds.challenges[response.status] = challenge
        request = outgoing.transaction.request
        retry = Request(request.method, request.uri, request.headers.copy(), request.body)
        retry.headers.remove("Via")
        retry.headers.remove("Authorization")
        retry.headers.remove("Proxy-Authorization")
        # §22.2: "...MUST increment the CSeq header field value as it would
        # normally do when sending an updated request."
        retry = outgoing.owner.restamp(retry)
        self._start(outgoing.owner, retry, now, authenticated=True)
        return True

    # -- server transactions -----------------------------------------------

    def _receive_request(self, request: Request, source: Destination, now: float) -> None:
        if source.host not in self._trusted and not self.trusts(source):
            # Every dialog of ours is with the presence server: a NOTIFY (or
            # anything else) from another host is forged or misrouted.
            # RFC 3261 §21.4.4: 403 "understood the request, but is refusing
            # to fulfill it"; stateless (§8.2.7), nothing is kept for it.
            self.refused += 1
            self._events.append(RequestRefused(source, request.method))
            if request.method != "ACK":
                self._datagrams.append(
                    (bytes(request.response(403, to_tag=self._token())), source)
                )
            return
        if request.method == "ACK":
            return  # only INVITE is acknowledged; we never answer INVITE with 2xx
        key = server_key(request)
        record = self._completed.get(key)
        if record is not None:
            # RFC 3261 §17.2.2: "While in the "Completed" state, the server
            # transaction MUST pass the final response to the transport layer
            # for retransmission whenever a retransmission of the request is
            # received."  A retransmission is the request again, so the
            # response made from it with the same status and To tag is the
            # same bytes (see _complete).
            status, to_tag = (record, None) if isinstance(record, int) else record
            self._datagrams.append((self._final(request, status, to_tag), source))
            if request.method == "NOTIFY":
                self._resent_notify(key, request, now)
            return
        if request.method in ("INVITE", "CANCEL"):
            # We run no INVITE server transaction (§17.2.1); a stateless
            # answer (§8.2.1) is enough to say we do not take calls.
            response = request.response(405 if request.method == "INVITE" else 481,
                                        to_tag=self._token())
            response.headers.add("Allow", ALLOW)
            self._datagrams.append((bytes(response), source))
            return
        to_tag = request.to.tag
        try:
            owner, status = self._answer(request, to_tag, now)
        except RemoteProtocolError as exc:
            # A header we need (Subscription-State, Event, Contact...) is
            # malformed.  The request still gets its final answer — RFC 3261
            # §8.2: a UAS answers every request it cannot process, and a NOTIFY
            # left unanswered is retransmitted until the notifier gives up.
            self._events.append(MessageDropped(source, str(exc)))
            owner, status = None, 400
        # §8.2.6.2: a To tag is added only when the request has none (an
        # in-dialog NOTIFY has ours).
        added = self._token() if to_tag is None else None
        # Answer first: a NOTIFY not answered at once is retransmitted and,
        # in the end, the notifier drops the subscription.
        self._datagrams.append((self._final(request, status, added), source))
        self._answered(key, (request.method, status),
                       status if added is None else (status, added), source, now)
        if owner is not None:
            subscription, caused = owner
            self._run(subscription, caused, now)

    def _receive_next_notify(self, data: bytes, source: Destination, now: float) -> bool:
        """A datagram that is the next NOTIFY of an active dialog, keeping it
        active, answered and taken from its bytes; False, nothing done, for
        any other, which :meth:`_receive_request` then takes.

        Every refresh of a subscription brings such a NOTIFY (RFC 6665
        §4.2.1.2), and a presence server may send one to every watcher on
        each refresh of a publication: in a gateway holding many dialogs they
        are nearly all its traffic.  The outcome is the general path's — the
        same answer, server transaction record, dialog state and event — from
        the fields it reads, without the Request and its typed headers.
        """
        if source.host not in self._trusted:
            return False
        notify = read_lean_notify(data)
        if notify is None:
            return False
        subscription = self._dialogs.get(notify.call_id)
        if (
            subscription is None
            or subscription.local_tag != notify.to_tag
            or subscription.remote_tag != notify.from_tag
            or notify.event.package.lower() != subscription.event.lower()
        ):
            return False
        key = lean_server_key(notify.via_base, notify.branch, "NOTIFY")
        if key is None or key in self._completed:
            return False  # a retransmission is answered again there (§17.2.2)
        contact = notify.contact
        remote_target = None if contact is None else contact.uri
        if remote_target is not None and not isinstance(remote_target, SipURI):
            return False  # the general path says what is wrong with it
        event = subscription.receive_next_notify(
            notify.cseq, notify.state, remote_target, notify.body, notify.content_type, now
        )
        if event is None:
            return False
        self._datagrams.append((notify.answer(), source))
        self._answered(key, _NOTIFY_200, 200, source, now)
        # What _run does with an event.
        self._events.append(event)
        self._settle(subscription)
        return True

    def _answered(
        self,
        key: ServerKey,
        counted: tuple[str, int],
        record: int | tuple[int, str],
        source: Destination,
        now: float,
    ) -> None:
        """A request just answered with its final response: counted by method
        and status, and over UDP its server transaction kept in Completed
        (``record``: see :meth:`_complete`)."""
        answered = self.counters.answered
        answered[counted] = answered.get(counted, 0) + 1
        if source.transport == "udp":
            self._complete(key, record, now)

    def _resent_notify(self, key: ServerKey, request: Request, now: float) -> None:
        copies = self._resent.get(key, 0) + 1
        self._resent[key] = copies
        if copies != LATE_COPIES:
            return
        subscription = self._dialog(request.call_id, request.to.tag)
        if subscription is not None:
            self.counters.late_answers += 1
            self._run(subscription, subscription.answered_late(now), now)

    def _answer(
        self, request: Request, to_tag: str | None, now: float
    ) -> tuple[tuple[Subscription, list[SubscriptionAction]] | None, int]:
        """The status for a new request, and the subscription actions it causes."""
        if request.method == "OPTIONS":
            return None, 200
        if request.method != "NOTIFY":
            return None, 405
        subscription = self._dialog(request.call_id, to_tag)
        if subscription is None or subscription.terminated:
            # RFC 6665 §4.1.3: "a subscriber ... MUST return a 481 (Subscription
            # does not exist) response ... if it does not match".
            return None, 481
        event = request.event
        if event is None or event.package.lower() != subscription.event.lower():
            # RFC 6665 §8.2.1: Event is mandatory and must match the dialog.
            return None, 489
        status, actions = subscription.receive_notify(request, now)
        return (subscription, list(actions)), status

    def _dialog(self, call_id: str, to_tag: str | None) -> Subscription | None:
        """The subscription whose dialog a request is in (RFC 3261 §12.2.2:
        by Call-ID and local tag; RFC 6665 §4.1.3: the remote tag may be any)."""
        subscription = self._dialogs.get(call_id)
        if subscription is None or subscription.local_tag != to_tag:
            return None
        return subscription

    @staticmethod
    def _final(request: Request, status: int, to_tag: str | None) -> bytes:
        """The final response to a request that is not ACK, INVITE or CANCEL."""
        if status != 405 and status != 489 and request.method != "OPTIONS":
            return request.response_bytes(status, to_tag=to_tag)
        response = request.response(status, to_tag=to_tag)
        if status == 405 or request.method == "OPTIONS":
            response.headers.add("Allow", ALLOW)
        if request.method == "OPTIONS":
            response.headers.add("Accept", ACCEPT)
            response.headers.add("Allow-Events", ALLOW_EVENTS)
        if status == 489:
            response.headers.add("Allow-Events", ALLOW_EVENTS)
        return bytes(response)

    def _complete(self, key: ServerKey, answered: int | tuple[int, str], now: float) -> None:
        """The server transaction of a request answered over UDP, in Completed.

        Every request is answered with its final response as it arrives, so
        of a non-INVITE server transaction (RFC 3261 §17.2.2) only Completed
        is ever reached over UDP (over a stream Timer J is zero: Terminated at
        once).  In Completed the transaction only re-sends its final response
        to a retransmitted request, until Timer J (64*T1): the record of what
        that takes is kept, no transaction object — the status and the To tag
        added, from which the retransmission's response is made again (no
        bytes kept: a burst of NOTIFYs leaves thousands of records), and the
        key's sent-by and method as the one string each that all records
        share.  A record kept up to a
        second longer sends nothing more; on a whole second, the Timer Js of
        all the requests answered in one second fall due together: one
        wake-up of the driver, not one per NOTIFY.
        """
        second = math.ceil(now + self._timer_j)
        branch, sent_by, method = key
        key = (branch, sys.intern(sent_by), sys.intern(method))
        self._completed[key] = answered
        keys = self._expiring.get(second)
        if keys is None:
            self._expiring[second] = [key]
            self._timers.schedule(float(second), (_Timer.TIMER_J, second))
        else:
            keys.append(key)

    # -- identifiers -------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _token(self) -> str:
        """A random token for tags, Call-IDs and branches (RFC 3261 §19.3: ≥ 32 bits)."""
        if self._token_batch:
            tokens = self._tokens
            if not tokens:
                # One read of the system's random source for _TOKEN_BATCH
                # tokens instead of one per request: still secrets-grade
                # (§19.3 "cryptographically random" tags), a syscall less.
                text = f"{self._rng.getrandbits(64 * _TOKEN_BATCH):0{16 * _TOKEN_BATCH}x}"
                tokens.extend(text[i : i + 16] for i in range(0, 16 * _TOKEN_BATCH, 16))
            return tokens.pop()
        return f"{self._rng.getrandbits(64):016x}"


def _gone(owner: Owner) -> bool:
    """Has the owner ended, so that a request of its that waited asks for nothing?"""
    if isinstance(owner, Subscription):
        return owner.terminated
    return isinstance(owner, Publication) and owner.state is PublicationState.REMOVED


def server_destination(server: SipURI, default: Transport = "udp") -> Destination:
    """Where requests to ``server`` go: transport, host and port.

    RFC 5630 §3.1.3: a sips: URI means TLS ("transport=tcp" on it means TLS
    over TCP, §3.2); so does the deprecated "transport=tls".  RFC 3263 §4.2:
    without a port, 5061 for TLS and 5060 otherwise.
    """
    transport = server.transport or default
    if server.scheme == "sips" or transport == "tls":
        return Destination("tls", server.host, server.port or TLS_PORT)
    return Destination("tcp" if transport == "tcp" else "udp", server.host, server.port or PORT)


def _bare(host: str) -> str:
    """A host as sockets report it: no brackets around IPv6, lower case."""
    return (host[1:-1] if host.startswith("[") else host).lower()


def _host(host: str) -> str:
    """A host for a URI or Via: IPv6 literals in brackets (RFC 3261 §25.1)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
