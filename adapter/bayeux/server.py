"""The Bayeux 1.0 server core: sessions, channels, advice, queues, deadlines.

Theory of operation (sans-IO, the aioquic shape). Three drivers go in:

- `receive(messages, now, transport=…, credentials=…)`: a batch from a
  client, already parsed by `message.parse_batch`; returns the replies to
  send at once and, when the batch carried a /meta/connect that must wait,
  the token of that held connect;
- `deliver(app_id, channel, data, now)`: the adapter publishes a message;
- `handle_timer(now)`: the deadline from `get_timer()` has passed.

Events come out of `next_event()`; the one that matters is `ConnectReleased`,
which answers a held connect. Nothing here sleeps or reads a clock: every
deadline (held connects, session expiry, backlog TTL) lives in one
`sip.timers.TimerHeap`, a session's under its clientId, and `get_timer()` is
its earliest entry.

A delivery never answers a held connect synchronously: it moves that
connect's deadline to `now`, so every delivery made before the driver's
timer runs goes out in the same reply (a burst costs one round trip, not one
per message).

A *shared* server (``shared=True``, a cluster node: adapter.cluster.relay) keeps
no backlog of its own: its messages live in a Redis stream per application
until a session is done with them.  It delivers with the stream's ids, tells
`MessagesConfirmed` when a session is done with messages and
`ChannelsSubscribed` when one subscribes (its driver then fetches the
application's backlog from the stream), and what reaches no session, or a
session that ends before confirming it, is simply left in the stream.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapter.bayeux.backlog import Backlog, BacklogStore
from adapter.bayeux.channels import Channel, SubscriptionIndex, application_root
from adapter.bayeux.errors import LocalProtocolError, RemoteProtocolError
from adapter.bayeux.events import (
    ChannelsSubscribed,
    ConnectReleased,
    Event,
    MessagesConfirmed,
    MessagesDropped,
    SessionExpired,
)
from adapter.bayeux.limits import BayeuxLimits
from adapter.bayeux.message import Delivery, Message
from adapter.bayeux.session import Hold, Session
from sip.timers import TimerHeap

Authenticator = Callable[[str, str], str | None]
"""(user, password) -> the application's appInstanceID, or None when refused."""

Credentials = tuple[str, str]

LONG_POLLING = "long-polling"
WEBSOCKET = "websocket"
CONNECTION_TYPES = (LONG_POLLING, WEBSOCKET)
VERSION = "1.0"

_TARGETS_MAX = 10_000  # checked delivery channels remembered (then start again)
_BACKLOG_SWEEP = ""  # heap key for the backlog's TTL sweep (never a clientId)


class _Deadlines(TimerHeap[str]):
    """The server's timer heap, noting whether it changed since `get_timer()`
    last read it (`BayeuxServer.settled`)."""

    moved = True

    def schedule(self, deadline: float, key: str) -> None:
        self.moved = True
        super().schedule(deadline, key)

    def cancel(self, key: str) -> None:
        self.moved = True
        super().cancel(key)

    def pop_expired(self, now: float) -> list[str]:
        self.moved = True
        return super().pop_expired(now)


def _new_client_id() -> str:
    # Bayeux 1.0 §3.6 only asks for uniqueness; the clientId is the session's
    # only credential after the handshake (no cookie is required: Node clients
    # share one jar, aiohttp drops cookies from IP hosts), so it carries 192 random bits.
    return secrets.token_urlsafe(24)


@dataclass(slots=True)
class Counters:
    """Running totals, exported as metrics by the driver."""

    sessions_opened: int = 0
    sessions_expired: int = 0
    handshakes_refused: int = 0
    messages_delivered: int = 0  # deliveries placed in connect replies
    messages_dropped: int = 0  # queue or backlog overflow
    messages_backlogged: int = 0


@dataclass(frozen=True, slots=True)
class Received:
    replies: list[Mapping[str, Any]]
    held: int | None = None


def handshake_credentials(message: Message, credentials: Credentials | None) -> Credentials | None:
    """What a handshake authenticates with: ``ext.authentication {user, password}``
    when present (even if malformed), else the transport's (HTTP Basic)."""
    auth = message.ext.get("authentication") if message.ext else None
    if isinstance(auth, dict):
        user, password = auth.get("user"), auth.get("password")
        if isinstance(user, str) and isinstance(password, str):
            return user, password
        return None
    return credentials


class BayeuxServer:
    def __init__(
        self,
        authenticate: Authenticator,
        limits: BayeuxLimits | None = None,
        *,
        backlog: BacklogStore | None = None,
        new_client_id: Callable[[], str] | None = None,
        shared: bool = False,
    ) -> None:
        self.limits = limits or BayeuxLimits()
        self.shared = shared
        self.counters = Counters()
        self._authenticate = authenticate
        self._new_client_id = new_client_id or _new_client_id
        self._backlog: BacklogStore = backlog or Backlog(
            self.limits.backlog_size, self.limits.backlog_ttl
        )
        self._sessions: dict[str, Session] = {}
        # The sessions by the transport of their latest connect, counted as
        # they come, connect and go: /metrics reads it without a walk.
        self._transports: Counter[str] = Counter()
        self._holds: dict[int, str] = {}  # held connect token -> clientId
        self._by_app: dict[str, set[str]] = {}
        self._index = SubscriptionIndex()
        # Channels the adapter delivered on, already checked (one per endpoint
        # of a notification, reused for every change).
        self._targets: dict[tuple[str, str], Channel] = {}
        # A session's deadline under its clientId, the backlog sweep under _BACKLOG_SWEEP.
        self._timers = _Deadlines()
        self._tokens = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._events: deque[Event] = deque()
        self._backlog_sweep_at: float | None = None
        # Tokens held earlier in the batch being received: if the same batch
        # releases one, its reply joins the immediate replies.
        self._receiving: dict[int, list[Mapping[str, Any]]] | None = None
        # Set by drain(): seconds a client is told to wait before handshaking again.
        self._drained: float | None = None

    # ------------------------------------------------------------------ drivers

    def receive(
        self,
        messages: Sequence[Message],
        now: float,
        *,
        transport: str,
        credentials: Credentials | None = None,
    ) -> Received:
        replies: list[Mapping[str, Any]] = []
        held: int | None = None
        self._receiving = {}
        try:
            for message in messages:
                answers, token = self._dispatch(message, now, transport, credentials)
                replies.extend(answers)
                if token is not None:
                    held = token
                    self._receiving[token] = replies
            if held is not None and self._hold_token(held) is None:
                held = None  # released later in the same batch; answered inline
        finally:
            self._receiving = None
        return Received(replies, held)

    def deliver(
        self, app_id: str, channel: str, data: Any, now: float, message_id: str | None = None
    ) -> int:
        """Publish `data` on `channel` for application `app_id`.

        Returns how many sessions it was queued for; 0 means it went to the
        application's backlog, to be handed to the next session that
        subscribes to a matching channel (a shared server keeps none: the
        message stays in its stream).  ``message_id``: the message's id in
        a shared server's stream; else the server numbers its messages.
        """
        target = self._targets.get((app_id, channel))
        if target is None:
            target = self._target(app_id, channel)
        try:
            # Encoded here, once, however many sessions it reaches.
            delivery = Delivery(
                target, data, message_id or str(next(self._message_ids))
            )
        except (TypeError, ValueError) as exc:
            raise LocalProtocolError(f"data is not JSON: {exc}") from None
        reached = 0
        for client_id in self._index.subscribers(target):
            session = self._sessions[client_id]
            if session.app_id != app_id:  # cannot happen: subscriptions stay in the app's tree
                continue
            self._enqueue(session, delivery, now)
            reached += 1
        if not reached:
            self._keep(app_id, delivery, now)
        return reached

    def _target(self, app_id: str, channel: str) -> Channel:
        """`channel` checked as a channel `app_id` may publish on, and remembered."""
        try:
            target = Channel.parse(channel)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        if target.is_wild or not target.is_within(application_root(app_id)):
            raise LocalProtocolError(f"{channel!r} is not a channel of application {app_id!r}")
        if len(self._targets) >= _TARGETS_MAX:
            self._targets.clear()
        self._targets[(app_id, channel)] = target
        return target

    def handle_timer(self, now: float) -> None:
        # Until nothing is due: handling one key may arm another for now.
        while due := self._timers.pop_expired(now):
            for key in due:
                if key == _BACKLOG_SWEEP:
                    self._sweep_backlog(now)
                    continue
                session = self._sessions.get(key)
                if session is None:
                    continue
                deadline = session.deadline()
                if deadline is None or deadline > now:
                    continue
                if session.hold is not None:
                    self._release(session, now, with_messages=True)
                else:
                    self._expire(session, now)

    def get_timer(self) -> float | None:
        self._timers.moved = False
        return self._timers.next_deadline()

    def settled(self) -> bool:
        """Whether the driver has nothing to do since it last read `get_timer()`:
        no event waiting and no deadline changed.  Most deliveries only queue a
        message for a session whose connect is already due; its driver can skip
        re-reading events and timer after each one."""
        return not self._events and not self._timers.moved

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def abandon(self, token: int, now: float) -> None:
        """The transport under held connect `token` is gone (socket closed).

        The session stays, with its queue, so the client can come back on
        another connection within maxInterval.
        """
        session = self._hold_token(token)
        if session is not None:
            session.hold = None
            del self._holds[token]
            self._set_expiry(session, now)

    def close_application(self, app_id: str, now: float) -> int:
        """End every session of `app_id` (its account was removed or changed).

        Their clients get `402 unknown client` with advice to handshake again,
        which is how the CometD client learns to re-authenticate.
        """
        client_ids = list(self._by_app.get(app_id, ()))
        for client_id in client_ids:
            session = self._sessions[client_id]
            if session.hold is not None:
                self._release(session, now, with_messages=False)
            self._remove(session, now)
        return len(client_ids)

    def drain(self, now: float, interval: float) -> int:
        """Shutdown: end every session; returns how many there were.

        A held connect is answered with advice to handshake again after
        ``interval`` seconds (Bayeux 1.0 §5.1.2: sessions do not outlive the
        process), and with no messages: whatever a session has not confirmed
        goes to its application's backlog, which the store keeps across the
        restart, so it is delivered once the client is back.
        """
        self._drained = interval
        sessions = list(self._sessions.values())
        for session in sessions:
            if session.hold is not None:
                advice = self._advice("handshake", interval=interval)
                self._release(session, now, with_messages=False, advice=advice)
            self._remove(session, now)
        return len(sessions)

    def release_all(self, now: float) -> None:
        """Answer every held connect now (shutdown)."""
        for client_id in list(self._holds.values()):
            self._release(self._sessions[client_id], now, with_messages=True)

    # ------------------------------------------------------------- inspection

    def session_count(self, app_id: str | None = None) -> int:
        if app_id is None:
            return len(self._sessions)
        return len(self._by_app.get(app_id, ()))

    def sessions_by_transport(self) -> dict[str, int]:
        """Sessions per transport of their latest /meta/connect ("" before the first)."""
        return {transport: count for transport, count in self._transports.items() if count}

    def session_app(self, client_id: str) -> str | None:
        session = self._sessions.get(client_id)
        return session.app_id if session else None

    def queued_ids(self, app_id: str) -> set[str]:
        """The ids of the messages the sessions of `app_id` hold (sent or not)."""
        return {
            delivery.id
            for client_id in self._by_app.get(app_id, ())
            for delivery in self._sessions[client_id].queue
        }

    # --------------------------------------------------------------- messages

    def _dispatch(
        self,
        message: Message,
        now: float,
        transport: str,
        credentials: Credentials | None,
    ) -> tuple[list[Mapping[str, Any]], int | None]:
        channel = message.channel
        if channel == "/meta/connect":
            return self._connect(message, now, transport)
        if channel == "/meta/handshake":
            reply = self._handshake(message, now, credentials)
        elif channel == "/meta/subscribe":
            reply = self._subscribe(message, now)
        elif channel == "/meta/unsubscribe":
            reply = self._unsubscribe(message)
        elif channel == "/meta/disconnect":
            reply = self._disconnect(message, now)
        elif channel.startswith("/meta/"):
            reply = _failure(message, "400", channel, "unknown meta channel")
        else:
            reply = self._publish(message)
        return [reply], None

    def _hold_token(self, token: int) -> Session | None:
        client_id = self._holds.get(token)
        return None if client_id is None else self._sessions[client_id]

    def _handshake(
        self, message: Message, now: float, credentials: Credentials | None
    ) -> dict[str, Any]:
        supported = message.supported_connection_types
        if supported is not None and not set(supported) & set(CONNECTION_TYPES):
            reply = _failure(message, "301", ",".join(CONNECTION_TYPES), "no common transport")
            reply["supportedConnectionTypes"] = list(CONNECTION_TYPES)
            reply["advice"] = self._advice("none")
            return reply
        if self._drained is not None:
            # A handshake on a WebSocket opened before the drain: no new
            # session in a server about to stop.
            reply = _failure(message, "503", "", "server shutting down")
            reply["advice"] = self._advice("handshake", interval=self._drained)
            return reply
        app_id = self._authenticated_app(message, credentials)
        if app_id is None:
            self.counters.handshakes_refused += 1
            reply = _failure(message, "403", "", "authentication failed")
            # "none": retrying the same credentials cannot succeed.
            reply["advice"] = self._advice("none")
            return reply
        if len(self._by_app.get(app_id, ())) >= self.limits.max_sessions_per_app:
            reply = _failure(message, "403", "", "too many sessions for this application")
            reply["advice"] = self._advice("handshake", interval=self.limits.max_interval)
            return reply
        client_id = self._new_client_id()
        ack = bool(message.ext and message.ext.get("ack") is True)
        session = Session(client_id, app_id, ack, self.limits.queue_size)
        self._sessions[client_id] = session
        self._transports[session.transport] += 1
        self._by_app.setdefault(app_id, set()).add(client_id)
        self.counters.sessions_opened += 1
        # The first /meta/connect must come within maxInterval too.
        self._set_expiry(session, now)
        reply = _reply(message)
        reply.update(
            version=VERSION,
            supportedConnectionTypes=list(CONNECTION_TYPES),
            clientId=client_id,
            successful=True,
            advice=self._advice("retry"),
        )
        if ack:
            reply["ext"] = {"ack": True}
        return reply

    def _authenticated_app(self, message: Message, credentials: Credentials | None) -> str | None:
        given = handshake_credentials(message, credentials)
        return None if given is None else self._authenticate(*given)

    def _connect(
        self, message: Message, now: float, transport: str
    ) -> tuple[list[Mapping[str, Any]], int | None]:
        session = self._session_for(message)
        if session is None:
            return [self._unknown_client(message)], None
        if message.connection_type is not None and message.connection_type not in (
            CONNECTION_TYPES
        ):
            reply = _failure(message, "400", message.connection_type, "unsupported connectionType")
            reply["advice"] = self._advice("retry")
            return [reply], None
        if session.hold is not None:
            # One outstanding connect per session: the newer one wins, the
            # older is answered (empty, so its batch cannot race the new ack).
            self._release(session, now, with_messages=False)
        if session.ack and message.ext is not None:
            batch = message.ext.get("ack")
            if isinstance(batch, int) and not isinstance(batch, bool):
                self._confirm(session, session.acknowledge(batch))
        session.expires_at = None
        if session.transport != transport:
            self._transports[session.transport] -= 1
            self._transports[transport] += 1
            session.transport = transport
        client_timeout = _client_timeout(message.advice)
        immediate = not session.connected or client_timeout == 0 or bool(session.queue)
        token = next(self._tokens)
        timeout = self.limits.connect_timeout
        if client_timeout is not None and client_timeout > 0:
            timeout = min(timeout, client_timeout)
        session.hold = Hold(token, message.id, now if immediate else now + timeout)
        session.connected = True
        if immediate:
            # Answer now, with the rest of the batch. Deliveries ride before
            # the connect reply: the client reads the ack batch id from the
            # connect reply, after the messages it covers.
            return self._release(session, now, with_messages=True, emit=False), None
        self._holds[token] = session.client_id
        self._schedule(session)
        return [], token

    def _subscribe(self, message: Message, now: float) -> dict[str, Any]:
        session = self._session_for(message)
        if session is None:
            return self._unknown_client(message)
        patterns = _patterns(message, within=application_root(session.app_id))
        if not isinstance(patterns, list):
            return patterns
        if len(session.subscriptions | set(patterns)) > self.limits.max_subscriptions_per_session:
            return _failure(message, "403", "", "too many subscriptions")
        for pattern in patterns:
            session.subscriptions.add(pattern)
            self._index.add(pattern, session.client_id)
        if self.shared:
            self._events.append(ChannelsSubscribed(session.app_id, tuple(patterns)))
        for delivery in self._backlog.take(session.app_id, patterns, now):
            self._enqueue(session, delivery, now)
        reply = _reply(message)
        reply.update(clientId=session.client_id, subscription=_echo(message), successful=True)
        return reply

    def _unsubscribe(self, message: Message) -> dict[str, Any]:
        session = self._session_for(message)
        if session is None:
            return self._unknown_client(message)
        patterns = _patterns(message)
        if not isinstance(patterns, list):
            return patterns
        for pattern in patterns:
            session.subscriptions.discard(pattern)
            self._index.discard(pattern, session.client_id)
        reply = _reply(message)
        reply.update(clientId=session.client_id, subscription=_echo(message), successful=True)
        return reply

    def _disconnect(self, message: Message, now: float) -> dict[str, Any]:
        session = self._session_for(message)
        if session is None:
            return self._unknown_client(message)
        if session.hold is not None:
            self._release(session, now, with_messages=False)
        # A client that disconnects on purpose has processed what it was
        # sent; only what it was never sent is kept for the application.
        self._confirm(session, session.drop_sent())
        self._remove(session, now)
        reply = _reply(message)
        reply.update(clientId=session.client_id, successful=True)
        return reply

    def _publish(self, message: Message) -> dict[str, Any]:
        try:
            Channel.parse(message.channel)
        except RemoteProtocolError:
            return _failure(message, "400", message.channel, "invalid channel")
        # Only the adapter publishes (to /bayeux/**), and the adapter offers
        # no /service/** endpoints: every client publish is refused.
        return _failure(message, "403", message.channel, "publish denied")

    # ----------------------------------------------------------- sessions

    def _session_for(self, message: Message) -> Session | None:
        if message.client_id is None:
            return None
        return self._sessions.get(message.client_id)

    def _unknown_client(self, message: Message) -> dict[str, Any]:
        reply = _failure(message, "402", message.client_id or "", "unknown client")
        reply["advice"] = self._advice("handshake")
        return reply

    def _enqueue(self, session: Session, delivery: Delivery, now: float) -> None:
        dropped = session.enqueue(delivery)
        if dropped:
            self.counters.messages_dropped += dropped
            self._events.append(MessagesDropped(session.app_id, session.client_id, dropped))
        if session.hold is not None and session.hold.deadline > now:
            session.hold.deadline = now
            self._schedule(session)

    def _confirm(self, session: Session, deliveries: list[Delivery]) -> None:
        if self.shared and deliveries:
            self._events.append(
                MessagesConfirmed(session.app_id, tuple(d.id for d in deliveries))
            )

    def _keep(self, app_id: str, delivery: Delivery, now: float) -> None:
        if self.shared:
            return  # left in the application's stream (see the module's docstring)
        dropped = self._backlog.add(app_id, delivery, now)
        self.counters.messages_backlogged += 1
        if dropped:
            self.counters.messages_dropped += dropped
            self._events.append(MessagesDropped(app_id, None, dropped))
        if self._backlog_sweep_at is None:
            self._schedule_backlog_sweep()

    def _sweep_backlog(self, now: float) -> None:
        self._backlog.expire(now)
        self._backlog_sweep_at = None
        self._schedule_backlog_sweep()

    def _schedule_backlog_sweep(self) -> None:
        at = self._backlog.next_expiry()
        self._backlog_sweep_at = at
        if at is not None:
            self._timers.schedule(at, _BACKLOG_SWEEP)
        else:
            self._timers.cancel(_BACKLOG_SWEEP)

    def _release(
        self,
        session: Session,
        now: float,
        *,
        with_messages: bool,
        emit: bool = True,
        advice: dict[str, Any] | None = None,
    ) -> list[Mapping[str, Any]]:
        hold = session.hold
        assert hold is not None
        session.hold = None
        self._holds.pop(hold.token, None)
        replies: list[Mapping[str, Any]] = []
        batch: int | None = None
        if with_messages:
            batch, deliveries = session.take_batch()
            replies.extend(deliveries)  # each its own wire form
            self.counters.messages_delivered += len(deliveries)
            if self.shared and not session.ack:
                self._confirm(session, deliveries)  # sent is done, without the ack extension
        elif session.ack:
            batch = session.last_batch
        connect: dict[str, Any] = {"channel": "/meta/connect"}
        if hold.message_id is not None:
            connect["id"] = hold.message_id
        connect.update(
            clientId=session.client_id, successful=True, advice=advice or self._advice("retry")
        )
        if session.ack and batch is not None:
            connect["ext"] = {"ack": batch}
        replies.append(connect)
        self._set_expiry(session, now)
        if emit:
            receiving = self._receiving
            if receiving is not None and hold.token in receiving:
                # Held earlier in the batch now being received: answer inline.
                receiving[hold.token].extend(replies)
            else:
                self._events.append(ConnectReleased(hold.token, replies))
        return replies

    def _set_expiry(self, session: Session, now: float) -> None:
        session.expires_at = now + self.limits.max_interval
        self._schedule(session)

    def _schedule(self, session: Session) -> None:
        deadline = session.deadline()
        if deadline is not None:
            self._timers.schedule(deadline, session.client_id)
        else:
            self._timers.cancel(session.client_id)

    def _expire(self, session: Session, now: float) -> None:
        self.counters.sessions_expired += 1
        self._events.append(SessionExpired(session.app_id, session.client_id))
        self._remove(session, now)

    def _remove(self, session: Session, now: float) -> None:
        del self._sessions[session.client_id]
        self._transports[session.transport] -= 1
        self._timers.cancel(session.client_id)
        siblings = self._by_app.get(session.app_id)
        if siblings is not None:
            siblings.discard(session.client_id)
            if not siblings:
                del self._by_app[session.app_id]
        self._index.discard_all(session.subscriptions, session.client_id)
        # What the client has not confirmed goes back to the application's
        # backlog (to its other sessions if one is subscribed), so a
        # reconnecting application still gets it.
        for delivery in session.undelivered():
            targets = [
                self._sessions[c]
                for c in self._index.subscribers(delivery.channel)
                if self._sessions[c].app_id == session.app_id
            ]
            for target in targets:
                self._enqueue(target, delivery, now)
            if not targets:
                self._keep(session.app_id, delivery, now)
        session.queue.clear()

    def _advice(self, reconnect: str, *, interval: float | None = None) -> dict[str, Any]:
        # Bayeux 1.0 §5.1.2 advice; always complete, in milliseconds.
        return {
            "reconnect": reconnect,
            "interval": _ms(self.limits.interval if interval is None else interval),
            "timeout": _ms(self.limits.connect_timeout),
        }


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _client_timeout(advice: Mapping[str, Any] | None) -> float | None:
    if not advice:
        return None
    timeout = advice.get("timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0:
        return float(timeout) / 1000
    return None


def _reply(message: Message) -> dict[str, Any]:
    reply: dict[str, Any] = {"channel": message.channel}
    if message.id is not None:
        reply["id"] = message.id
    return reply


def _echo(message: Message) -> str | list[str] | None:
    if isinstance(message.subscription, tuple):
        return list(message.subscription)
    return message.subscription


def _patterns(message: Message, within: Channel | None = None) -> list[Channel] | dict[str, Any]:
    """The channel patterns a /meta/(un)subscribe names, or the failure to reply.

    ``within``: the root every pattern must lie under.  All are checked before
    any is used, so that a refused message changes nothing.
    """
    names = message.subscriptions
    if not names:
        return _failure(message, "400", "", "missing subscription")
    patterns: list[Channel] = []
    for name in names:
        try:
            pattern = Channel.parse(name)
        except RemoteProtocolError:
            return _failure(message, "400", name, "invalid channel")
        if within is not None and not pattern.is_within(within):
            # Only the owning application may subscribe under /bayeux/<id>;
            # /meta/** and /service/** are never broadcast.
            return _failure(message, "403", name, "subscription denied")
        patterns.append(pattern)
    return patterns


def _failure(message: Message, code: str, args: str, text: str) -> dict[str, Any]:
    # Bayeux 1.0 §5.1.5 error: "code:args:message", args comma-separated.
    reply = _reply(message)
    if message.client_id is not None:
        reply["clientId"] = message.client_id
    if message.subscription is not None:
        reply["subscription"] = _echo(message)
    reply["successful"] = False
    reply["error"] = f"{code}:{args.replace(':', '')}:{text}"
    return reply
