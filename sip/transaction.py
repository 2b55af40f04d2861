"""Non-INVITE transactions (RFC 3261 §17.1.2 client, §17.2.2 server).

Theory of operation
-------------------
A transaction is the request and every response to it, plus the machinery
that makes one request reliable over an unreliable transport: the client
retransmits until it hears something, the server absorbs retransmitted
requests and repeats its last response.  Both are small state machines
written here as *tables*: ``(state, input) -> (next state, effect)``.  Any
pair missing from a table is an input that cannot happen in that state; when
it comes from our own code (the transaction user asked for something
impossible) it raises :class:`LocalProtocolError`.  Inputs from the network
never raise in a table lookup: every state lists what it does with a stray
response or request, usually nothing.

Client (RFC 3261 Figure 6; ``INITIAL`` is ours: built but not yet sent)

    state       start   1xx            200-699       Timer E    Timer F     Timer K     transport
    ----------  ------  -------------  ------------  ---------  ----------  ----------  ----------
    INITIAL     TRYING  —              —             —          —           —           —
    TRYING      —       PROCEEDING/TU  COMPLETED/TU  ·/resend   TERMINATED  —           TERMINATED
    PROCEEDING  —       ·/TU           COMPLETED/TU  ·/resend   TERMINATED  —           TERMINATED
    COMPLETED   —       ·/absorb       ·/absorb      —          —           TERMINATED  ·/ignore
    TERMINATED  —       ·/ignore       ·/ignore      —          —           —           ·/ignore

    ``·`` stays, ``/TU`` passes the response up (:class:`ResponseReceived`),
    Timer F reports :class:`TimedOut` and a transport error
    :class:`TransportFailed`.

Server (RFC 3261 Figure 8; the transaction is created on the request, which
the user agent passes to its TU itself)

    state        request          1xx from TU      200-699 from TU  Timer J      transport err
    ----------   ---------------  ---------------  ---------------  -----------  -------------
    TRYING       ·/absorb         PROCEEDING/send  COMPLETED/send   —            —
    PROCEEDING   ·/resend last    ·/send           COMPLETED/send   —            TERMINATED
    COMPLETED    ·/resend last    —                —                TERMINATED   TERMINATED
    TERMINATED   ·/ignore         —                —                —            ·/ignore

Timers (§17.1.2.2, §17.2.2; defaults from Table 4).  Entering TRYING arms
Timer E at T1 (unreliable transports only) and Timer F at 64*T1.  Timer E
doubles up to T2 while TRYING; once PROCEEDING it is re-armed at T2 each time
it fires.  Entering COMPLETED disarms E and F and arms Timer K (client) at T4
or Timer J (server) at 64*T1 — both zero on a reliable transport, in which
case the transaction passes straight through to TERMINATED in the same call.
A timer is re-armed from the ``now`` at which it fired, so a late
``handle_timer`` call causes one retransmission, not a burst.

Sans-IO: every input takes ``now`` and returns a list of actions for the user
agent to carry out in order — :class:`Transmit` (bytes to hand to the
transport; the user agent picks the destination) and the events for the
transaction user.  ``get_timer()`` is the one deadline at which
``handle_timer(now)`` must be called; once ``state`` is ``TERMINATED`` the
user agent forgets the transaction.

Identity.  RFC 3261 §17.1.3 matches a response to a client transaction by the
top Via branch and the CSeq method; §17.2.3 matches a request to a server
transaction by branch, sent-by and method.  Only RFC 3261 branches (starting
with the magic cookie ``z9hG4bK``) are supported: the RFC 2543 fallback of
§17.2.3, which compares Request-URI, tags, Call-ID and CSeq, is not — every
stack written this century sends the cookie, and a request without it is
refused as a remote protocol error.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .errors import LocalProtocolError, RemoteProtocolError
from .headers import Via
from .message import Request, Response

__all__ = [
    "MAGIC_COOKIE",
    "ClientKey",
    "ClientState",
    "ClientTransaction",
    "ResponseReceived",
    "ServerKey",
    "ServerState",
    "ServerTransaction",
    "TimedOut",
    "TransactionAction",
    "TransactionTimings",
    "Transmit",
    "TransportFailed",
    "client_key",
    "lean_client_key",
    "lean_server_key",
    "new_branch",
    "server_key",
]

# RFC 3261 §8.1.1.7: "The branch parameter value MUST start with the magic
# cookie "z9hG4bK"."
MAGIC_COOKIE = "z9hG4bK"

ClientKey = tuple[str, str]
ServerKey = tuple[str, str, str]


@dataclass(frozen=True)
class TransactionTimings:
    """RFC 3261 Table 4 timer values, in seconds."""

    t1: float = 0.5  # round-trip time estimate
    t2: float = 4.0  # maximum retransmit interval for non-INVITE requests
    t4: float = 5.0  # maximum duration a message remains in the network
    #: Timer F (client) and Timer J (server, unreliable): 64*T1.  Worked out
    #: once: every transaction started reads it.
    timeout: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 < 0:
            raise LocalProtocolError(f"inconsistent timer values {self}")
        object.__setattr__(self, "timeout", 64 * self.t1)


# --- actions -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transmit:
    """Hand ``data`` (the serialised ``message``) to the transport."""

    message: Request | Response
    data: bytes
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the transaction user: every 1xx and the one final."""

    response: Response


@dataclass(frozen=True, slots=True)
class TimedOut:
    """Timer F fired: no final response within 64*T1 (§17.1.2.2)."""

    request: Request


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport could not deliver one of our messages (§17.1.4, §17.2.4)."""

    reason: str


TransactionAction = Transmit | ResponseReceived | TimedOut | TransportFailed


# --- identity (§17.1.3, §17.2.3) --------------------------------------------

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def new_branch(random_token: str) -> str:
    """A branch for a new transaction: the magic cookie, then ``random_token``.

    §8.1.1.7: the branch "MUST be unique across space and time for all
    requests sent by the UA" — the caller supplies the randomness (e.g.
    ``secrets.token_hex(8)``); we supply the cookie.
    """
    if _TOKEN_RE.fullmatch(random_token) is None:
        raise LocalProtocolError(f"branch token must be a non-empty token: {random_token!r}")
    return MAGIC_COOKIE + random_token


def _top_via(message: Request | Response) -> tuple[Via, str]:
    """The top Via and its branch, or RemoteProtocolError."""
    top = message.top_via
    if top is None:
        raise RemoteProtocolError("message has no Via header")
    branch = top.branch
    if branch is None or not _rfc3261_branch(branch):
        # RFC 2543 peers (no cookie) would need the §17.2.3 fallback matching.
        raise RemoteProtocolError(f"top Via has no RFC 3261 branch: {branch!r}")
    return top, branch


def _rfc3261_branch(branch: str) -> bool:
    return branch.startswith(MAGIC_COOKIE) and branch != MAGIC_COOKIE


def _sent_by(top: Via) -> str:
    # Host names compare case-insensitively (§19.1.4); the port as sent.
    host = top.host.lower()
    return host if top.port is None else f"{host}:{top.port}"


def _top_branch(message: Request | Response) -> tuple[str, str]:
    """(branch, sent-by) of the top Via, or RemoteProtocolError."""
    top, branch = _top_via(message)
    return branch, _sent_by(top)


def client_key(message: Request | Response) -> ClientKey:
    """§17.1.3: (top Via branch, CSeq method) — for our request or its responses.

    "the response matches a client transaction under two conditions: 1. If
    the response has the same value of the branch parameter in the top Via
    header field as the branch parameter in the top Via header field of the
    request that created the transaction.  2. If the method parameter in the
    CSeq header field matches the method of the request that created the
    transaction."
    """
    return _top_via(message)[1], message.cseq.method


def server_key(request: Request) -> ServerKey:
    """§17.2.3: (top Via branch, sent-by, method), ACK counting as INVITE.

    "the request matches a transaction if: 1. the branch parameter in the
    request is equal to the one in the top Via header field of the request
    that created the transaction, and 2. the sent-by value in the top Via of
    the request is equal to the one in the request that created the
    transaction, and 3. the method of the request matches the one that
    created the transaction, except for ACK, where the method of the request
    that created the transaction is INVITE."
    """
    branch, sent_by = _top_branch(request)
    method = "INVITE" if request.method == "ACK" else request.method
    return branch, sent_by, method


def lean_server_key(top: Via, branch: str, method: str) -> ServerKey | None:
    """:func:`server_key` of a request read without making it (the top Via
    without its branch, the branch, the method: not ACK); None where
    ``server_key`` would raise."""
    if not _rfc3261_branch(branch):
        return None
    return branch, _sent_by(top), method


def lean_client_key(branch: str, method: str) -> ClientKey | None:
    """:func:`client_key` of a response read without making it (its top Via's
    branch, its CSeq method); None where ``client_key`` would raise."""
    return (branch, method) if _rfc3261_branch(branch) else None


def _check_non_invite(request: Request) -> None:
    # §17: INVITE transactions have their own machines (and ACK none).
    if request.method in ("INVITE", "ACK"):
        raise LocalProtocolError(f"{request.method} is not a non-INVITE transaction")


# --- client --------------------------------------------------------------


class _Identity(enum.Enum):
    """An enum hashed as its members are compared, by identity: the tables are
    looked up by (state, input) on every message and timer, and
    ``Enum.__hash__`` is Python code that hashes the member's name."""

    __hash__ = object.__hash__


class ClientState(_Identity):
    INITIAL = "initial"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class _ClientInput(_Identity):
    START = "start"
    PROVISIONAL = "1xx"
    FINAL = "200-699"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_K = "timer K"
    TRANSPORT_ERROR = "transport error"


class _Effect(enum.Enum):
    NOTHING = "nothing"  # absorb / ignore
    SEND = "send"  # the request (client) or the new response (server)
    RESEND = "resend"  # retransmit the request / the last response
    TO_TU = "to TU"
    TIMEOUT = "timeout"
    TRANSPORT_FAILURE = "transport failure"


_CS = ClientState
_CI = _ClientInput
_E = _Effect

_CLIENT_TABLE: dict[tuple[ClientState, _ClientInput], tuple[ClientState, _Effect]] = {
    (_CS.INITIAL, _CI.START): (_CS.TRYING, _E.SEND),
    # §17.1.2.2: "If Timer E fires while still in this state, the timer is
    # reset, but this time with a value of MIN(2*T1, T2)."
    (_CS.TRYING, _CI.TIMER_E): (_CS.TRYING, _E.RESEND),
    (_CS.TRYING, _CI.PROVISIONAL): (_CS.PROCEEDING, _E.TO_TU),
    (_CS.TRYING, _CI.FINAL): (_CS.COMPLETED, _E.TO_TU),
    (_CS.TRYING, _CI.TIMER_F): (_CS.TERMINATED, _E.TIMEOUT),
    (_CS.TRYING, _CI.TRANSPORT_ERROR): (_CS.TERMINATED, _E.TRANSPORT_FAILURE),
    # "If Timer E fires while in the "Proceeding" state, the request MUST be
    # passed to the transport layer for retransmission, and Timer E MUST be
    # reset with a value of T2 seconds."
    (_CS.PROCEEDING, _CI.TIMER_E): (_CS.PROCEEDING, _E.RESEND),
    (_CS.PROCEEDING, _CI.PROVISIONAL): (_CS.PROCEEDING, _E.TO_TU),
    (_CS.PROCEEDING, _CI.FINAL): (_CS.COMPLETED, _E.TO_TU),
    (_CS.PROCEEDING, _CI.TIMER_F): (_CS.TERMINATED, _E.TIMEOUT),
    (_CS.PROCEEDING, _CI.TRANSPORT_ERROR): (_CS.TERMINATED, _E.TRANSPORT_FAILURE),
    # "The "Completed" state exists to buffer any additional response
    # retransmissions that may be received (which is why the client
    # transaction remains there only for unreliable transports)."
    (_CS.COMPLETED, _CI.PROVISIONAL): (_CS.COMPLETED, _E.NOTHING),
    (_CS.COMPLETED, _CI.FINAL): (_CS.COMPLETED, _E.NOTHING),
    (_CS.COMPLETED, _CI.TIMER_K): (_CS.TERMINATED, _E.NOTHING),
    # A late transport error (an ICMP error for an earlier retransmission)
    # changes nothing: the final response is already with the TU.
    (_CS.COMPLETED, _CI.TRANSPORT_ERROR): (_CS.COMPLETED, _E.NOTHING),
    (_CS.TERMINATED, _CI.PROVISIONAL): (_CS.TERMINATED, _E.NOTHING),
    (_CS.TERMINATED, _CI.FINAL): (_CS.TERMINATED, _E.NOTHING),
    (_CS.TERMINATED, _CI.TRANSPORT_ERROR): (_CS.TERMINATED, _E.NOTHING),
}

# When several timers are due in one handle_timer call, the one that ends the
# state wins: retransmitting a request we are about to give up on is waste.
_CLIENT_TIMER_PRIORITY = (_CI.TIMER_F, _CI.TIMER_K, _CI.TIMER_E)


_State = TypeVar("_State", bound=enum.Enum)
_Input = TypeVar("_Input", bound=enum.Enum)


class _Transaction(Generic[_State, _Input]):
    """What the client and the server machine share: the row of the table for
    each input, the effects alike on both sides (nothing, a transport failure,
    §17.1.4 and §17.2.4), then the entry into the row's state."""

    # Slotted: a user agent makes one per request it sends, a refresh each.
    __slots__ = ("_data", "reliable", "state", "timings")

    _side: str
    _table: dict[tuple[_State, _Input], tuple[_State, _Effect]]
    state: _State

    def __init__(self, request: Request, reliable: bool, timings: TransactionTimings) -> None:
        _check_non_invite(request)
        self.reliable = reliable
        self.timings = timings
        self._data = b""

    def _apply(
        self,
        event: _Input,
        now: float,
        response: Response | None = None,
        reason: str = "",
    ) -> list[TransactionAction]:
        try:
            next_state, effect = self._table[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"{self._side} transaction cannot handle {event.value} in state {self.state.value}"
            ) from None
        actions: list[TransactionAction] = []
        if effect is _E.TRANSPORT_FAILURE:
            actions.append(TransportFailed(reason))
        elif effect is not _E.NOTHING:
            actions.append(self._act(effect, now, response))
        if next_state is not self.state:
            self._enter(next_state, now)
        return actions

    def _act(self, effect: _Effect, now: float, response: Response | None) -> TransactionAction:
        """The action of ``effect``, taken before the next state is entered."""
        raise NotImplementedError

    def _enter(self, state: _State, now: float) -> None:
        raise NotImplementedError


class ClientTransaction(_Transaction[ClientState, _ClientInput]):
    """A non-INVITE client transaction (RFC 3261 §17.1.2)."""

    __slots__ = ("_interval_e", "_timers", "final_response", "key", "request")

    _side = "client"
    _table = _CLIENT_TABLE

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timings: TransactionTimings = TransactionTimings(),
        key: ClientKey | None = None,
    ) -> None:
        super().__init__(request, reliable, timings)
        if key is None:
            try:
                key = client_key(request)
            except RemoteProtocolError as exc:
                # We built this request: a bad Via or CSeq is our own mistake.
                raise LocalProtocolError(f"cannot start a transaction: {exc}") from exc
        # ``key`` given: the caller wrote the top Via's branch and the CSeq
        # itself, and vouches for them; the request's texts are not read back.
        if key[1] != request.method:
            raise LocalProtocolError("CSeq method differs from the request method")
        self.key: ClientKey = key
        self.request = request
        self.state = ClientState.INITIAL
        self.final_response: Response | None = None
        self._interval_e = timings.t1
        self._timers: dict[_ClientInput, float] = {}

    def get_timer(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    def start(self, now: float) -> list[TransactionAction]:
        """Send the request for the first time."""
        return self._apply(_CI.START, now)

    def receive_response(self, response: Response, now: float) -> list[TransactionAction]:
        """A response the user agent matched to :attr:`key`."""
        if self.state is ClientState.INITIAL:
            raise LocalProtocolError("response routed to a transaction that was never started")
        if not 100 <= response.status <= 699:
            raise RemoteProtocolError(f"status code {response.status} out of range")
        kind = _CI.PROVISIONAL if response.status < 200 else _CI.FINAL
        return self._apply(kind, now, response)

    def transport_failed(self, reason: str, now: float) -> list[TransactionAction]:
        """The transport could not send our request (§17.1.4)."""
        if self.state is ClientState.INITIAL:
            raise LocalProtocolError("transport error for a transaction that sent nothing")
        return self._apply(_CI.TRANSPORT_ERROR, now, reason=reason)

    def handle_timer(self, now: float) -> list[TransactionAction]:
        """Fire the timer that is due at ``now``, if any."""
        for timer in _CLIENT_TIMER_PRIORITY:
            deadline = self._timers.get(timer)
            if deadline is not None and deadline <= now:
                del self._timers[timer]
                return self._apply(timer, now)
        return []

    def _act(self, effect: _Effect, now: float, response: Response | None) -> TransactionAction:
        if effect is _E.SEND:
            self._data = bytes(self.request)
            return Transmit(self.request, self._data)
        if effect is _E.RESEND:
            # Timer E fired: §17.1.2.2 resets it as it fires, from now,
            # doubling up to T2 while Trying and at T2 once Proceeding.
            if self.state is ClientState.TRYING:
                self._interval_e = min(2 * self._interval_e, self.timings.t2)
            else:
                self._interval_e = self.timings.t2
            self._timers[_CI.TIMER_E] = now + self._interval_e
            return Transmit(self.request, self._data, retransmission=True)
        if effect is _E.TO_TU:
            assert response is not None
            if response.status >= 200:
                self.final_response = response
            return ResponseReceived(response)
        assert effect is _E.TIMEOUT
        return TimedOut(self.request)

    def _enter(self, state: ClientState, now: float) -> None:
        self.state = state
        if state is ClientState.TRYING:
            # §17.1.2.2: "If an unreliable transport is being used, the client
            # transaction MUST start timer E with a value of T1."  "the client
            # transaction SHOULD set timer F to fire in 64*T1 seconds."
            if not self.reliable:
                self._timers[_CI.TIMER_E] = now + self._interval_e
            self._timers[_CI.TIMER_F] = now + self.timings.timeout
        elif state is ClientState.COMPLETED:
            # "Once the client transaction enters the "Completed" state, it
            # MUST set Timer K to fire in T4 seconds for unreliable transports,
            # and zero seconds for reliable transports."
            self._timers.clear()
            if self.reliable:
                self._enter(ClientState.TERMINATED, now)
            else:
                self._timers[_CI.TIMER_K] = now + self.timings.t4
        elif state is ClientState.TERMINATED:
            self._timers.clear()


# --- server --------------------------------------------------------------


class ServerState(_Identity):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class _ServerInput(_Identity):
    REQUEST = "request retransmission"
    PROVISIONAL = "1xx from TU"
    FINAL = "200-699 from TU"
    TIMER_J = "timer J"
    TRANSPORT_ERROR = "transport error"


_SS = ServerState
_SI = _ServerInput

_SERVER_TABLE: dict[tuple[ServerState, _ServerInput], tuple[ServerState, _Effect]] = {
    # §17.2.2: "While in the "Trying" state, any further request
    # retransmissions are discarded."
    (_SS.TRYING, _SI.REQUEST): (_SS.TRYING, _E.NOTHING),
    (_SS.TRYING, _SI.PROVISIONAL): (_SS.PROCEEDING, _E.SEND),
    (_SS.TRYING, _SI.FINAL): (_SS.COMPLETED, _E.SEND),
    # "If a retransmission of the request is received while in the
    # "Proceeding" state, the most recently sent provisional response MUST
    # be passed to the transport layer for retransmission."
    (_SS.PROCEEDING, _SI.REQUEST): (_SS.PROCEEDING, _E.RESEND),
    (_SS.PROCEEDING, _SI.PROVISIONAL): (_SS.PROCEEDING, _E.SEND),
    (_SS.PROCEEDING, _SI.FINAL): (_SS.COMPLETED, _E.SEND),
    (_SS.PROCEEDING, _SI.TRANSPORT_ERROR): (_SS.TERMINATED, _E.TRANSPORT_FAILURE),
    # "While in the "Completed" state, the server transaction MUST pass the
    # final response to the transport layer for retransmission whenever a
    # retransmission of the request is received.  Any other final responses
    # passed by the TU to the server transaction MUST be discarded while in
    # the "Completed" state."  A TU doing that has a bug: we raise instead
    # of discarding silently (the pair is absent from this table).
    (_SS.COMPLETED, _SI.REQUEST): (_SS.COMPLETED, _E.RESEND),
    (_SS.COMPLETED, _SI.TIMER_J): (_SS.TERMINATED, _E.NOTHING),
    (_SS.COMPLETED, _SI.TRANSPORT_ERROR): (_SS.TERMINATED, _E.TRANSPORT_FAILURE),
    (_SS.TERMINATED, _SI.REQUEST): (_SS.TERMINATED, _E.NOTHING),
    (_SS.TERMINATED, _SI.TRANSPORT_ERROR): (_SS.TERMINATED, _E.NOTHING),
}


class ServerTransaction(_Transaction[ServerState, _ServerInput]):
    """A non-INVITE server transaction (RFC 3261 §17.2.2).

    Created by the user agent on a request that matched no transaction; the
    user agent hands that request to its TU.  Raises
    :class:`RemoteProtocolError` when the request cannot be keyed (no Via,
    no magic-cookie branch, malformed CSeq).

    :attr:`request` is let go once the final response is sent: in Completed
    the transaction only re-sends that response (§17.2.2), and for Timer J's
    32 s over UDP the parsed request would be most of its memory.
    """

    __slots__ = ("_timer_j", "key", "last_response", "request")

    _side = "server"
    _table = _SERVER_TABLE

    def __init__(
        self,
        request: Request,
        *,
        reliable: bool,
        timings: TransactionTimings = TransactionTimings(),
    ) -> None:
        super().__init__(request, reliable, timings)
        self.key: ServerKey = server_key(request)
        self.request: Request | None = request
        self.state = ServerState.TRYING
        self.last_response: Response | None = None
        self._timer_j: float | None = None

    def get_timer(self) -> float | None:
        return self._timer_j

    @property
    def response_data(self) -> bytes:
        """The bytes of the last response sent (``b""`` before the first):
        what a retransmitted request gets again (§17.2.2)."""
        return self._data

    def receive_request(self, request: Request, now: float) -> list[TransactionAction]:
        """A retransmission of our request (the user agent matched :attr:`key`)."""
        return self._apply(_SI.REQUEST, now)

    def send_response(self, response: Response, now: float) -> list[TransactionAction]:
        """The TU answers (any number of 1xx, then one final response)."""
        if not 100 <= response.status <= 699:
            raise LocalProtocolError(f"status code {response.status} out of range")
        kind = _SI.PROVISIONAL if response.status < 200 else _SI.FINAL
        return self._apply(kind, now, response)

    def transport_failed(self, reason: str, now: float) -> list[TransactionAction]:
        """The transport could not send our response (§17.2.4)."""
        return self._apply(_SI.TRANSPORT_ERROR, now, reason=reason)

    def handle_timer(self, now: float) -> list[TransactionAction]:
        if self._timer_j is not None and self._timer_j <= now:
            self._timer_j = None
            return self._apply(_SI.TIMER_J, now)
        return []

    def _act(self, effect: _Effect, now: float, response: Response | None) -> TransactionAction:
        if effect is _E.SEND:
            assert response is not None
            self.last_response = response
            self._data = bytes(response)
            return Transmit(response, self._data)
        assert effect is _E.RESEND and self.last_response is not None
        return Transmit(self.last_response, self._data, retransmission=True)

    def _enter(self, state: ServerState, now: float) -> None:
        self.state = state
        if state in (ServerState.COMPLETED, ServerState.TERMINATED):
            self.request = None
        if state is ServerState.COMPLETED:
            # §17.2.2: "When the server transaction enters the "Completed"
            # state, it MUST set Timer J to fire in 64*T1 seconds for
            # unreliable transports, and zero seconds for reliable transports."
            if self.reliable:
                self._enter(ServerState.TERMINATED, now)
            else:
                self._timer_j = now + self.timings.timeout
        elif state is ServerState.TERMINATED:
            self._timer_j = None
