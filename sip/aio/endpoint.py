"""The asyncio driver of the user agent: sockets, one timer, awaitable calls.

Everything SIP happens in :class:`~sip.useragent.UserAgent`; this module only
moves bytes and time in and out of it (aioquic's ``asyncio/protocol.py`` is
the model).  After every input — an API call, a datagram, a TCP segment, the
timer — :meth:`SipEndpoint._flush` sends what the user agent queued,
dispatches its events, and re-arms a single ``loop.call_at`` at
``UserAgent.get_timer()``.  There is no task or timer per transaction or per
subscription.

Transports: one UDP socket and one TCP listener on the local address (the
configuration's ``sip.listen``).  Requests to the server over TCP or TLS use
one connection, opened on demand; requests that arrive over a connection are
answered on the connection they came in on (RFC 3261 §18.2.2).  TLS (RFC 3261
§26.3.1) runs on an :class:`ssl.SSLContext` the caller builds: it holds the
CAs the server's certificate is verified against and, for mutual TLS, our
certificate.  The server's name for the certificate check is the host of the
server URI (an IP literal is matched against the certificate's IP addresses).
We listen for no TLS: the server reuses our connection (RFC 5923 alias).

Callers hold handles (:mod:`sip.aio.handles`): :meth:`SipEndpoint.publish`
and :meth:`SipEndpoint.subscribe` return a :class:`PublicationHandle` or a
:class:`SubscriptionHandle` at once, with its id and its outcome futures made
before anything is sent.  :meth:`SipEndpoint._dispatch` routes each event of
the user agent by id, once, to its handle, which settles its futures and calls
its owner's ``on_event``; a handle whose publication or subscription is over
is forgotten.  :meth:`SipEndpoint.stats` is a read-only snapshot of the user
agent's counters, for monitoring.

Messages from elsewhere than the presence server are counted by the user
agent and logged here at most once per :data:`LOG_INTERVAL`, so that a flood
of them cannot flood the log too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ..digest import Credentials
from ..errors import SipError
from ..message import StreamParser
from ..publication import (
    PublicationConfirmed,
    PublicationEvent,
    PublicationFailed,
    PublicationRemoved,
    PublicationState,
    RefreshPolicy,
)
from ..subscription import NotifyReceived, SubscriptionAccepted, SubscriptionTerminated
from ..transaction import TransactionTimings
from ..uri import SipURI
from ..useragent import (
    BUSY,
    Destination,
    MessageDropped,
    OptionsAnswered,
    OptionsFailed,
    RequestRefused,
    Transport,
    UserAgent,
    UserAgentEvent,
    Window,
    server_destination,
)
from .alarm import Alarm
from .handles import PublicationHandle, SubscriptionEvent, SubscriptionHandle

__all__ = [
    "AuthenticationFailed",
    "Busy",
    "EndpointStats",
    "RequestFailed",
    "RequestTimedOut",
    "SipEndpoint",
]

logger = logging.getLogger(__name__)
#: Every SIP message in and out, whole, at INFO; the adapter leaves it off
#: unless its configuration asks (``[log] sip_trace``).
trace = logging.getLogger("sip.trace")

#: How often start() picks a new port when port 0's UDP port is busy for TCP.
_BIND_ATTEMPTS = 20

#: The grid (seconds) the driver's one timer is woken on; see SipEndpoint._arm.
TIMER_SLACK = 0.02

#: The grid (seconds) refreshes are moved back onto (``RefreshPolicy.grid``):
#: the refreshes due within a second go out in one wake-up of this driver.
REFRESH_GRID = 1.0

#: Receive buffer asked for the UDP socket, bytes.  Linux's default
#: (``net.core.rmem_default``) holds only some hundred NOTIFYs: a burst during a
#: pause of the event loop overflows it, and the kernel drops datagrams the
#: server only retransmits after T1 (RFC 3261 §17.1.2.2).
#: The kernel caps the request at ``net.core.rmem_max``.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024

#: Datagram sources remembered, so that the datagrams of one peer share one
#: :class:`Destination` — a server transaction keeps its request's source for
#: Timer J's 32 s (RFC 3261 §17.2.2), each one more object for the garbage
#: collector to walk.  Bounded:
#: forgotten all at once when full (sources are few: the presence server).
_SOURCES_MAX = 1024

#: Seconds between two log lines about refused or dropped messages.
LOG_INTERVAL = 10.0

# The user agent's events by whom they go to (SipEndpoint._dispatch), as
# tuples: a union written in the isinstance call is made anew on every event.
_SUBSCRIPTION_EVENTS = (NotifyReceived, SubscriptionAccepted, SubscriptionTerminated)
_PUBLICATION_EVENTS = (PublicationConfirmed, PublicationFailed, PublicationRemoved)
_PROBE_EVENTS = (OptionsAnswered, OptionsFailed)
# Events that end something, and carry the status heard if any (_from_server).
_ENDINGS = (SubscriptionTerminated, PublicationFailed)
_HEARD = (NotifyReceived, SubscriptionAccepted, PublicationConfirmed, OptionsAnswered)


class RequestFailed(SipError):
    """The server answered a request with a failure, or never reached us."""

    def __init__(self, what: str, status: int | None, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{what} failed: {self._detail()}")

    def _detail(self) -> str:
        return f"{self.status} {self.reason}" if self.status is not None else self.reason


class RequestTimedOut(RequestFailed):
    """No final response within the transaction timeout (64*T1)."""


class Busy(RequestFailed):
    """Never sent: the window of outstanding requests and its queue had no room
    (``sip.useragent.Window``).  ``retry_after``: seconds worth waiting first."""

    def __init__(self, what: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(what, None, "too many requests outstanding, retry later")


class AuthenticationFailed(RequestFailed):
    """A 401/407 that stands: our credentials were refused, or we had none.

    The user agent answers one challenge per request and takes a second as
    the refusal it is (RFC 3261 §22.2), so nothing retries it in a loop.
    """

    def __init__(self, what: str, status: int, reason: str, *, had_credentials: bool) -> None:
        self.had_credentials = had_credentials
        super().__init__(what, status, reason)

    def _detail(self) -> str:
        if self.had_credentials:
            return (
                "authentication failed: the presence server refused our credentials "
                f"({self.status})"
            )
        return (
            f"authentication required by the presence server ({self.status}); "
            "no credentials are configured"
        )


@dataclass(frozen=True)
class EndpointStats:
    """A snapshot of the user agent's counters and sizes, for monitoring."""

    #: (method, outcome) -> client transactions ended so: the final status
    #: ("200", "401", ...), "timeout" (Timer F) or "transport-error".
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Requests sent again by Timer E (RFC 3261 §17.1.2.2).
    retransmissions: int = 0
    #: (method, status) -> requests from the server answered so, retransmissions apart.
    answered: dict[tuple[str, int], int] = field(default_factory=dict)
    #: NOTIFYs the notifier re-sent after we had answered, often enough that
    #: our answer was late (the subscription was refreshed to learn if it stands).
    late_answers: int = 0
    transactions_in_flight: int = 0
    #: Requests waiting for room in the window; requests that waited, in all.
    requests_waiting: int = 0
    requests_queued: int = 0
    #: Client transactions allowed in flight now (None: no window).
    window_bound: int | None = None
    publications: int = 0
    #: (event package, phase) -> subscriptions.
    subscriptions: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Messages that were not usable SIP; requests refused (403) as not
    #: from the presence server.
    dropped: int = 0
    refused: int = 0


class _Tally:
    """Counts one kind of unwanted message; logs the first, then a sum per interval."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._unlogged = 0
        self._logged_at = float("-inf")

    def add(self, now: float, detail: str) -> None:
        self.count += 1
        self._unlogged += 1
        if now - self._logged_at >= LOG_INTERVAL:
            logger.warning(
                "%s: %d since the last report (%d in all); the last: %s",
                self.what, self._unlogged, self.count, detail,
            )
            self._unlogged = 0
            self._logged_at = now


class SipEndpoint:
    """A :class:`UserAgent` bound to sockets on the running event loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        server: SipURI,
        transport: Transport = "udp",
        rng: random.Random | None = None,
        user_agent: str = "presence-adapter",
        timings: TransactionTimings = TransactionTimings(),
        publication_expires: int = 3600,
        subscription_expires: int = 3600,
        receive_buffer: int = UDP_RECEIVE_BUFFER,
        tls: ssl.SSLContext | None = None,
        window: Window | None = None,
    ) -> None:
        if server_destination(server, transport).transport == "tls" and tls is None:
            raise ValueError(f"SIP over TLS to {server} needs an SSL context")
        self._tls = tls
        self._credentials: Credentials | None = None
        self._host = host
        self._port = port
        self._server = server
        self._transport: Transport = transport
        self._rng = rng or random.SystemRandom()
        self._user_agent = user_agent
        self._timings = timings
        self._publication_expires = publication_expires
        self._subscription_expires = subscription_expires
        self._window = window
        # Whole seconds (RFC 9110 §10.2.3): a refused caller may try again
        # once a queued request would have been refused.
        self._busy_retry_after = math.ceil(window.wait) if window is not None else 1
        self._ua: UserAgent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._connections: dict[Destination, _StreamProtocol] = {}
        self._timer = Alarm(self._on_timer)
        # The user agent's deadline the alarm was last set from (see _arm);
        # NaN, equal to none: the alarm has fired, or was never set.
        self._deadline: float | None = math.nan
        self._publications: dict[int, PublicationHandle] = {}
        self._subscriptions: dict[int, SubscriptionHandle] = {}
        self._probes: dict[int, asyncio.Future[UserAgentEvent]] = {}
        # Events are being dispatched (see _flush).
        self._dispatching = False
        #: When (the loop's clock) the last message from the presence server came.
        self.heard_at = float("-inf")
        self._receive_buffer = receive_buffer
        self._sources: dict[tuple[str, int], Destination] = {}
        self._dropped = _Tally("dropped SIP messages that were not usable")
        self._refused = _Tally("refused SIP requests not from the presence server (403)")
        self._broken = _Tally("connections to the presence server failed or broke")
        #: The UDP socket's receive buffer as the kernel granted it (after start).
        self.receive_buffer: int | None = None

    # -- life cycle --------------------------------------------------------

    @property
    def ua(self) -> UserAgent:
        """The sans-IO core, for tests and benchmarks that inspect its state.

        Callers start and follow work through handles (:meth:`publish`,
        :meth:`subscribe`); calling the core directly bypasses them.
        """
        if self._ua is None:
            raise RuntimeError("SipEndpoint.start() has not run")
        return self._ua

    @property
    def local(self) -> Destination:
        return self.ua.local

    @property
    def server(self) -> SipURI:
        """The presence server every request goes to."""
        return self._server

    def stats(self) -> EndpointStats:
        """The counters and sizes of the moment (a copy: later traffic changes nothing)."""
        ua = self._ua
        if ua is None:
            return EndpointStats(dropped=self.dropped, refused=self.refused)
        return EndpointStats(
            outcomes=dict(ua.counters.outcomes),
            retransmissions=ua.counters.retransmissions,
            answered=dict(ua.counters.answered),
            late_answers=ua.counters.late_answers,
            transactions_in_flight=ua.transactions_in_flight,
            requests_waiting=ua.requests_waiting,
            requests_queued=ua.counters.queued,
            window_bound=ua.window_bound,
            publications=ua.publication_count,
            subscriptions=ua.subscriptions_by_state(),
            dropped=self.dropped,
            refused=self.refused,
        )

    @property
    def dropped(self) -> int:
        """Messages that were not usable SIP (unparseable, unframeable, misdirected)."""
        return self._dropped.count

    @property
    def refused(self) -> int:
        """Requests refused with 403 because they did not come from the presence server."""
        return self._refused.count

    async def start(self) -> None:
        """Bind UDP and TCP on the local address (port 0 = any free port)."""
        loop = self._loop = asyncio.get_running_loop()
        # With port 0 the OS picks a port free for UDP only; the same number
        # may be taken for TCP (often by some connection's ephemeral port),
        # so pick again rather than fail.
        attempts = _BIND_ATTEMPTS if self._port == 0 else 1
        for attempt in range(1, attempts + 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), local_addr=(self._host, self._port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp_server = await loop.create_server(
                    lambda: _StreamProtocol(self, None), self._host, port
                )
            except OSError as exc:
                udp.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts:
                    raise
                logger.debug("TCP port %d is in use; choosing another", port)
                continue
            self._udp = udp
            self.receive_buffer = _enlarge_receive_buffer(
                udp.get_extra_info("socket"), self._receive_buffer
            )
            break
        self._ua = UserAgent(
            local=Destination(self._transport, self._host, port),
            server=self._server,
            rng=self._rng,
            user_agent=self._user_agent,
            timings=self._timings,
            publication_expires=self._publication_expires,
            subscription_expires=self._subscription_expires,
            policy=RefreshPolicy(grid=REFRESH_GRID),
            window=self._window,
        )
        if self._credentials is not None:
            self._ua.set_credentials(None, self._credentials)
        await self._trust_server(loop)
        logger.info(
            "SIP on %s:%d (udp, tcp), server %s over %s; UDP receive buffer %s bytes",
            self._host, port, self._server, self._ua.server_destination.transport,
            self.receive_buffer,
        )

    async def _trust_server(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell the user agent every address the server's host name stands for."""
        host = self.ua.server_destination.host.strip("[]")
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            logger.warning("cannot resolve the presence server %s (%s): only requests from "
                           "that literal host are accepted", host, exc)
            return
        self.ua.trust(str(info[4][0]) for info in infos)

    async def close(self) -> None:
        if self.refused or self.dropped:
            logger.info(
                "SIP messages refused (not from the presence server): %d; dropped (not "
                "usable): %d", self.refused, self.dropped,
            )
        self._timer.cancel()
        self._deadline = math.nan
        if self._udp is not None:
            self._udp.close()
        for connection in list(self._connections.values()):
            connection.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            await self._tcp_server.wait_closed()
        for publication in self._publications.values():
            publication.close()
        self._publications.clear()
        for subscription in self._subscriptions.values():
            subscription.close()
        self._subscriptions.clear()
        for probe in self._probes.values():
            probe.cancel()
        self._probes.clear()

    def set_credentials(self, credentials: Credentials) -> None:
        """The gateway's digest credentials, for every identity (RFC 3261 §22)."""
        self._credentials = credentials
        if self._ua is not None:
            self._ua.set_credentials(None, credentials)

    # -- awaitable API -----------------------------------------------------

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def ping(self) -> float:
        """OPTIONS to the server; the round-trip time in seconds."""
        return (await self.probe()).rtt

    async def probe(self) -> OptionsAnswered:
        """OPTIONS to the server; its answer, or RequestFailed / RequestTimedOut."""
        probe = self.ua.options(self.now())
        future = self._probes[probe] = self._new_future()
        self._flush()
        try:
            event = await future
        finally:
            self._probes.pop(probe, None)
        if isinstance(event, OptionsAnswered):
            if event.status >= 300:
                raise RequestFailed("OPTIONS", event.status, "")
            return event
        assert isinstance(event, OptionsFailed)
        raise RequestTimedOut("OPTIONS", None, event.reason)

    def publish(
        self,
        aor: SipURI,
        body: bytes,
        *,
        expires: int | None = None,
        etag: str | None = None,
        etag_expires_at: float | None = None,
        retry_until: float | None = None,
        on_event: Callable[[PublicationEvent], None] | None = None,
    ) -> PublicationHandle:
        """A new publication of ``body`` for ``aor``, sent at once; its handle.

        ``etag`` (with when it expires, on :meth:`now`'s clock) resumes a
        publication the server already holds (see ``UserAgent.publish``).
        ``retry_until``: see :class:`PublicationHandle`.  ``on_event`` gets
        every event of the publication (refreshes' confirmations too).
        """
        publication_id = self.ua.publish(
            aor, body, self.now(), expires=expires, etag=etag, etag_expires_at=etag_expires_at
        )
        handle = PublicationHandle(self, publication_id, body, on_event, retry_until)
        self._publications[publication_id] = handle
        self._flush()
        return handle

    def subscribe(
        self,
        subscriber: SipURI,
        target: SipURI,
        *,
        event: str = "presence",
        accept: tuple[str, ...] | None = None,
        eventlist: bool = False,
        expires: int | None = None,
        refusable: bool = True,
        on_event: Callable[[SubscriptionEvent], None] | None = None,
    ) -> SubscriptionHandle:
        """A new subscription, its SUBSCRIBE sent at once; its handle.

        ``eventlist`` asks for a resource list, ``refusable=False`` a place in
        the window's queue however long it takes (see ``UserAgent.subscribe``).
        ``on_event`` gets every event of the subscription, NOTIFYs that come
        before the 2xx (RFC 6665 §4.1.2.4) included.
        """
        subscription_id = self.ua.subscribe(
            subscriber,
            target,
            self.now(),
            event=event,
            accept=accept,
            eventlist=eventlist,
            expires=expires,
            refusable=refusable,
        )
        handle = SubscriptionHandle(self, subscription_id, on_event)
        self._subscriptions[subscription_id] = handle
        self._flush()
        return handle

    # -- what the handles call -----------------------------------------------

    def _new_future(self) -> asyncio.Future[Any]:
        assert self._loop is not None
        return self._loop.create_future()

    def _modify(self, publication_id: int, body: bytes) -> None:
        self.ua.modify(publication_id, body, self.now())
        self._flush()

    def _abandon(self, publication_id: int) -> None:
        self.ua.abandon(publication_id)
        handle = self._publications.pop(publication_id, None)
        if handle is not None:
            handle.close()

    def _unpublish(self, publication_id: int) -> None:
        self.ua.unpublish(publication_id, self.now())
        self._flush()

    def _refresh(self, subscription_id: int) -> None:
        self.ua.refresh(subscription_id, self.now())
        self._flush()

    def _unsubscribe(self, subscription_id: int) -> None:
        self.ua.unsubscribe(subscription_id, self.now())
        self._flush()

    def _publish_failure(self, event: PublicationFailed) -> RequestFailed:
        if event.reason == BUSY:
            return Busy("PUBLISH", self._busy_retry_after)
        if event.status is None:
            return RequestTimedOut("PUBLISH", None, event.reason)
        return self._failure("PUBLISH", event.status, event.reason)

    def _publish_removed(self) -> RequestFailed:
        return RequestFailed("PUBLISH", None, "publication removed")

    def _subscribe_failure(self, event: SubscriptionTerminated) -> RequestFailed:
        if event.reason == BUSY:
            return Busy("SUBSCRIBE", self._busy_retry_after)
        if event.reason == "timeout":
            return RequestTimedOut("SUBSCRIBE", event.status, event.reason)
        return self._failure("SUBSCRIBE", event.status, event.reason)

    def _failure(self, what: str, status: int | None, reason: str) -> RequestFailed:
        if status in (401, 407):
            return AuthenticationFailed(
                what, status, reason, had_credentials=self._credentials is not None
            )
        return RequestFailed(what, status, reason)

    # -- the pump ----------------------------------------------------------

    def _flush(self, now: float | None = None) -> None:
        """Send what the user agent queued, dispatch its events, re-arm the timer.

        ``now``: the instant of the input just given the user agent, if the
        caller read it (the events' ``heard_at``); else read when needed.

        A handle's callback may call the user agent again (a subscription ended
        is made anew at once): that call's flush sends its datagrams and leaves
        the events to the dispatch under way, which takes them in order.
        Dispatching them from within the callback instead nested one dispatch
        per event: hundreds of subscriptions ending in one timer turn went past
        the interpreter's recursion limit.
        """
        ua = self._ua  # started: every input comes after start()
        assert ua is not None
        for data, destination in ua.datagrams_to_send():
            self._send(data, destination)
        if not self._dispatching and (event := ua.next_event()) is not None:
            self._dispatching = True
            try:
                while event is not None:
                    self._dispatch(event, now)
                    event = ua.next_event()
            finally:
                self._dispatching = False
            # Dispatching may have called the user agent again.
            for data, destination in ua.datagrams_to_send():
                self._send(data, destination)
        self._arm()

    def _arm(self) -> None:
        ua = self._ua
        assert ua is not None
        deadline = ua.get_timer()
        if deadline == self._deadline:
            return  # the alarm is set for it already
        self._deadline = deadline
        if deadline is not None:
            # Timers are woken on a grid of TIMER_SLACK seconds, so the many
            # due close together (refreshes, Timer J of one second's NOTIFYs,
            # retransmissions) share one wake-up and one re-arm.  SIP's timers
            # are lower bounds (RFC 3261 §17: "fires after"), and 20 ms is
            # small next to T1 = 500 ms.
            deadline = math.ceil(deadline / TIMER_SLACK) * TIMER_SLACK
        self._timer.set(deadline)

    def _on_timer(self) -> None:
        # The loop may run a timer a clock tick early: a deadline not yet
        # due is set again, not taken as set already.
        self._deadline = math.nan
        now = self.now()
        self.ua.handle_timer(now)
        self._flush(now)

    def _dispatch(self, event: UserAgentEvent, now: float | None) -> None:
        """Route one event by its id to its handle (``now`` as for :meth:`_flush`)."""
        if type(event) is NotifyReceived:
            # Nearly every event: past the checks the others need.
            self.heard_at = now if now is not None else self.now()
            handle = self._subscriptions.get(event.subscription_id)
            if handle is not None:
                handle._receive(event)
            return
        if now is None:
            now = self.now()
        if _from_server(event):
            self.heard_at = now
        if isinstance(event, _SUBSCRIPTION_EVENTS):
            ident = event.subscription_id
            subscription = self._subscriptions.get(ident)
            if subscription is not None:
                if type(event) is SubscriptionTerminated:
                    del self._subscriptions[ident]
                subscription._receive(event)
        elif isinstance(event, _PUBLICATION_EVENTS):
            ident = event.publication_id
            publication = self._publications.get(ident)
            if publication is not None:
                sending = False
                if type(event) is PublicationRemoved:
                    del self._publications[ident]
                elif type(event) is PublicationConfirmed:
                    # A 2xx to the PUBLISH before the latest modify: the
                    # publication sends the newer body next (RFC 3903 §4.1).
                    core = self.ua.publication(ident)
                    sending = core is not None and core.state is PublicationState.SENDING
                publication._receive(event, sending)
        elif isinstance(event, _PROBE_EVENTS):
            probe = self._probes.pop(event.probe_id, None)
            if probe is not None and not probe.done():
                probe.set_result(event)
        elif isinstance(event, MessageDropped):
            self._dropped.add(now, f"from {_where(event.source)}: {event.reason}")
        elif isinstance(event, RequestRefused):
            self._refused.add(now, f"{event.method} from {_where(event.source)}")

    def _send(self, data: bytes, destination: Destination) -> None:
        if trace.isEnabledFor(logging.INFO):
            _trace("out to", data, destination)
        if destination.transport == "udp":
            assert self._udp is not None
            self._udp.sendto(data, (destination.host, destination.port))
            return
        connection = self._connections.get(destination)
        if connection is None:
            if destination != self.ua.server_destination:
                # An answer for a connection that has closed: nothing to do.
                logger.info("no TCP connection to %s any more; dropped a reply", destination)
                return
            connection = self._connect(destination)
        connection.write(data)

    def _connect(self, destination: Destination) -> _StreamProtocol:
        assert self._loop is not None
        protocol = _StreamProtocol(self, destination)
        self._connections[destination] = protocol

        async def connect() -> None:
            assert self._loop is not None
            secure = destination.transport == "tls"
            try:
                await self._loop.create_connection(
                    lambda: protocol,
                    destination.host.strip("[]"),
                    destination.port,
                    ssl=self._tls if secure else None,
                    # RFC 5922 §7.2 / RFC 6125: the certificate must name the
                    # host of the server URI, an IP literal included.
                    server_hostname=self.ua.server_destination.host.strip("[]")
                    if secure else None,
                )
            except OSError as exc:  # ssl.SSLError (a refused certificate) is one
                self._broken.add(
                    self.now(), f"{_where(destination)}: {exc}"
                )
                self._connection_lost(protocol, f"connect failed: {exc}")

        protocol.connecting = self._loop.create_task(connect())
        return protocol

    # -- transport callbacks -----------------------------------------------

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        source = self._sources.get(addr)
        if source is None:
            if len(self._sources) >= _SOURCES_MAX:
                self._sources.clear()
            source = self._sources[addr] = Destination("udp", addr[0], addr[1])
        if trace.isEnabledFor(logging.INFO):
            _trace("in from", data, source)
        ua = self._ua  # the socket is opened by start(), which makes it
        assert ua is not None
        now = self._loop.time()  # type: ignore[union-attr]  # started, as ua
        ua.receive(data, source, now)
        self._flush(now)

    def _stream_messages(self, protocol: _StreamProtocol, data: bytes) -> None:
        try:
            messages = protocol.parser.feed(data)
        except SipError as exc:
            # RFC 3261 §18.3: a stream we cannot frame cannot be resynchronised.
            assert protocol.peer is not None
            self._dropped.add(
                self.now(), f"closed the connection from {_where(protocol.peer)}: {exc}"
            )
            protocol.close()
            return
        pings = protocol.parser.take_pings()
        if pings:
            # RFC 5626 §4.4.1: each double-CRLF ping is answered with a CRLF pong.
            protocol.write(b"\r\n" * pings)
        assert protocol.peer is not None
        now = self.now()
        traced = trace.isEnabledFor(logging.INFO)
        for message in messages:
            if traced:  # each message framed from the stream, as serialised again
                _trace("in from", bytes(message), protocol.peer)
            self.ua.receive_message(message, protocol.peer, now)
        self._flush(now)

    def _connection_made(self, protocol: _StreamProtocol) -> None:
        assert protocol.peer is not None
        self._connections.setdefault(protocol.peer, protocol)

    def _connection_lost(self, protocol: _StreamProtocol, reason: str) -> None:
        peer = protocol.peer
        if peer is not None and self._connections.get(peer) is protocol:
            del self._connections[peer]
        if peer is not None and self._ua is not None:
            self._ua.transport_failed(peer, reason, self.now())
            self._flush()


def _trace(direction: str, data: bytes, peer: Destination) -> None:
    trace.info(
        "%s %s:%s:%d\n%s", direction, peer.transport, peer.host, peer.port,
        data.decode("utf-8", "replace"),
    )


def _enlarge_receive_buffer(sock: socket.socket | None, wanted: int) -> int | None:
    """Ask for a ``wanted``-byte receive buffer, best effort; the size granted."""
    if sock is None:
        return None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < wanted:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
    except OSError as exc:
        logger.warning("UDP receive buffer of %d bytes refused: %s", wanted, exc)
    try:
        granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError:
        return None
    return granted


def _where(destination: Destination) -> str:
    """``tls 127.0.0.1:5061`` — a destination as a log line shows it."""
    host = destination.host
    return f"{destination.transport} {f'[{host}]' if ':' in host else host}:{destination.port}"


def _from_server(event: UserAgentEvent) -> bool:
    """Did this event come from a message the server sent us?  (A failure
    without a status is a timeout or a transport error: nothing was heard.)"""
    if isinstance(event, _ENDINGS):
        return event.status is not None
    return isinstance(event, _HEARD)


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.endpoint._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the transaction timers decide.
        logger.debug("UDP error: %s", exc)


class _StreamProtocol(asyncio.Protocol):
    """One TCP connection, framed by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, endpoint: SipEndpoint, peer: Destination | None) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.parser = StreamParser()
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's TLS one does not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = Destination("tcp", host, port)
        self.endpoint._connection_made(self)
        if self.pending:
            self.transport.write(b"".join(self.pending))
            self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.endpoint._stream_messages(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.peer == self.endpoint.ua.server_destination:
            # E.g. a TLS alert after the handshake: the server refused our
            # certificate (TLS 1.3 checks it only then).
            self.endpoint._broken.add(
                self.endpoint.now(), f"{_where(self.peer)}: {exc}"
            )
        self.endpoint._connection_lost(self, str(exc) if exc else "connection closed")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        else:
            self.pending.append(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        elif self.connecting is not None:
            self.connecting.cancel()
