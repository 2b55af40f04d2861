"""The asyncio driver of the Bayeux core: one timer, one future per held connect.

`Hub` owns a `BayeuxServer` and is the only object the rest of the adapter
touches (`hub.deliver(app_id, channel, data)`). It reads the loop's monotonic
clock, re-arms a single `loop.call_at` from `BayeuxServer.get_timer()` (and
`DropLog.get_timer()`, which spaces the warnings about dropped messages) after
every call into the core, and turns `ConnectReleased` events into the results
of the futures that long-polling requests and WebSocket tasks await. Nothing
here sleeps: a held connect is a pending future, not a parked coroutine
counting down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from adapter.bayeux.backlog import BacklogStore
from adapter.bayeux.channels import Channel
from adapter.bayeux.droplog import DropLog, DropReport
from adapter.bayeux.events import (
    ChannelsSubscribed,
    ConnectReleased,
    MessagesConfirmed,
    MessagesDropped,
    SessionExpired,
)
from adapter.bayeux.limits import BayeuxLimits
from adapter.bayeux.message import Message
from adapter.bayeux.server import (
    Authenticator,
    BayeuxServer,
    Counters,
    Credentials,
    Received,
    handshake_credentials,
)
from sip.aio import Alarm

log = logging.getLogger("adapter.bayeux")

#: Seconds between two log lines about the messages dropped for one
#: application's backlog (or one session's queue).  A full backlog drops one
#: message per delivery, so a line each would flood the log under load
#: (adapter/bayeux/droplog.py tells the first at once, then one per interval).
DROP_LOG_INTERVAL = 10.0


class SharedListener(Protocol):
    """What a shared hub (a cluster node) tells the relay that feeds it."""

    def subscribed(self, app_id: str, patterns: tuple[Channel, ...]) -> None: ...

    def confirmed(self, app_id: str, ids: tuple[str, ...]) -> None: ...


class Hub:
    def __init__(
        self,
        authenticate: Authenticator,
        limits: BayeuxLimits | None = None,
        *,
        backlog: BacklogStore | None = None,
        prepare: Callable[[str, str], Awaitable[object]] | None = None,
        drop_log_interval: float = DROP_LOG_INTERVAL,
        shared: bool = False,
        new_client_id: Callable[[], str] | None = None,
    ) -> None:
        # shared: a cluster node's hub, fed by adapter.cluster.relay (see server.py).
        self.server = BayeuxServer(
            authenticate, limits, backlog=backlog, shared=shared, new_client_id=new_client_id
        )
        self.listener: SharedListener | None = None
        # Runs a handshake's password check ahead of `receive`, where it may
        # await (a slow hash verified off the event loop), so that the core's
        # synchronous `authenticate` finds the answer already known.
        self._prepare = prepare
        self._waiters: dict[int, asyncio.Future[list[Mapping[str, Any]]]] = {}
        self._timer = Alarm(self._on_timer)
        self._drops = DropLog(drop_log_interval)
        # The loop the hub last ran on (see _now).
        self._bound: asyncio.AbstractEventLoop | None = None

    @property
    def limits(self) -> BayeuxLimits:
        return self.server.limits

    @property
    def counters(self) -> Counters:
        return self.server.counters

    def deliver(self, app_id: str, channel: str, data: Any) -> int:
        """Publish `data` on `channel` (under /bayeux/<app_id>) to the application.

        Reaches every live session subscribed to the channel; kept in the
        application's bounded backlog when there is none. Returns the number
        of sessions reached. Must be called from the event loop's thread.
        """
        server = self.server
        try:
            return server.deliver(app_id, channel, data, self._now())
        finally:
            if not server.settled():
                self._after()

    def deliver_shared(self, app_id: str, channel: str, data: Any, message_id: str) -> int:
        """:meth:`deliver` for a shared hub: a message read from the application's
        stream, under its id there."""
        try:
            return self.server.deliver(app_id, channel, data, self._now(), message_id)
        finally:
            self._after()

    async def prepare(
        self, messages: Sequence[Message], credentials: Credentials | None = None
    ) -> None:
        """Call before :meth:`receive` with the same batch (see ``prepare`` above)."""
        if self._prepare is None:
            return
        for message in messages:
            if message.channel == "/meta/handshake":
                given = handshake_credentials(message, credentials)
                if given is not None:
                    await self._prepare(*given)

    def receive(
        self,
        messages: Sequence[Message],
        *,
        transport: str,
        credentials: Credentials | None = None,
    ) -> Received:
        try:
            loop = self._loop()
            received = self.server.receive(
                messages, loop.time(), transport=transport, credentials=credentials
            )
            if received.held is not None:
                self._waiters[received.held] = loop.create_future()
            return received
        finally:
            self._after()

    async def wait(self, token: int) -> list[Mapping[str, Any]]:
        """The replies that answer held connect `token`, once it is released."""
        future = self._waiters[token]
        try:
            return await future
        finally:
            self._waiters.pop(token, None)

    def abandon(self, token: int) -> None:
        """The connection holding `token` went away before its answer was sent."""
        future = self._waiters.pop(token, None)
        if future is not None and not future.done():
            future.cancel()
        self.server.abandon(token, self._now())
        self._after()

    def close_application(self, app_id: str) -> int:
        try:
            return self.server.close_application(app_id, self._now())
        finally:
            self._after()

    def drain(self, interval: float) -> int:
        """End every session, held connects answered with advice to handshake
        again after ``interval`` seconds (BayeuxServer.drain); how many ended."""
        try:
            return self.server.drain(self._now(), interval)
        finally:
            self._after()

    def close(self) -> None:
        """Answer every held connect and stop the timer (at shutdown)."""
        self.server.release_all(self._now())
        self._after()
        self._timer.cancel()
        for report in self._drops.flush():
            self._log_drops(report)

    # ------------------------------------------------------------------ loop

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._bound = asyncio.get_running_loop()
        return loop

    def _now(self) -> float:
        # Read once per delivery: on Python 3.11 asyncio.get_running_loop()
        # makes a getpid() system call each time, so the hub keeps the loop it
        # last ran on (it serves one loop at a time; every request refreshes
        # it) until that loop is closed.
        loop = self._bound
        if loop is None or loop.is_closed():
            loop = self._loop()
        return loop.time()

    def _on_timer(self) -> None:
        now = self._now()
        self.server.handle_timer(now)
        for report in self._drops.handle_timer(now):
            self._log_drops(report)
        self._after()

    def _dropped(self, event: MessagesDropped) -> None:
        where = f"session {event.client_id[:8]}…" if event.client_id else "backlog"
        report = self._drops.dropped(event.app_id, where, event.count, self._now())
        if report is not None:
            self._log_drops(report)

    def _log_drops(self, report: DropReport) -> None:
        log.warning(
            "bayeux: dropped %d oldest message(s) for %s (%s full)%s; %d dropped in total",
            report.count,
            report.app_id,
            report.where,
            "" if report.span is None else f" in the last {report.span:g} s",
            self.server.counters.messages_dropped,
        )

    def _after(self) -> None:
        while (event := self.server.next_event()) is not None:
            if isinstance(event, ConnectReleased):
                future = self._waiters.get(event.token)
                if future is not None and not future.done():
                    future.set_result(event.replies)
            elif isinstance(event, MessagesDropped):
                self._dropped(event)
            elif isinstance(event, SessionExpired):
                log.info("bayeux: session of %s expired (no /meta/connect)", event.app_id)
            elif isinstance(event, MessagesConfirmed):
                if self.listener is not None:
                    self.listener.confirmed(event.app_id, event.ids)
            elif isinstance(event, ChannelsSubscribed):
                if self.listener is not None:
                    self.listener.subscribed(event.app_id, event.patterns)
        # After every delivery: the plain comparisons cost a fraction of a list and min().
        deadline = self.server.get_timer()
        drops = self._drops.get_timer()
        if drops is not None and (deadline is None or drops < deadline):
            deadline = drops
        self._timer.set(deadline)
