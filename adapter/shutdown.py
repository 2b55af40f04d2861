"""Stopping on SIGTERM without losing anything, and telling systemd how it goes.

On SIGTERM (or the first Ctrl-C) :class:`AdapterServer` drains before uvicorn
stops:

1. :class:`Drain` turns on: :class:`DrainGate` answers every new request 503
   with ``Retry-After`` (the health endpoints and /metrics excepted), and
   /readyz says "shutting down";
2. every Bayeux session ends: a held ``/meta/connect`` is answered at once with
   advice to handshake again after :data:`RECONNECT_AFTER` seconds, and what a
   session had not confirmed goes to its application's backlog (kept in the
   store);
3. uvicorn then stops: it closes the listening socket, gives requests still
   running up to ``timeout_graceful_shutdown`` seconds, and runs the lifespan's
   end, which writes the notification schedules' progress, closes the SIP
   side *without* un-SUBSCRIBE or un-PUBLISH, and closes the store.

The process then exits 0.  :data:`STOP_BOUND` is how long that takes at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from types import FrameType

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.errors import ServiceError

__all__ = [
    "DRAIN_TIMEOUT",
    "RECONNECT_AFTER",
    "STOP_BOUND",
    "AdapterServer",
    "Drain",
    "DrainGate",
    "sd_notify",
]

logger = logging.getLogger(__name__)

#: Seconds a Bayeux client is advised to wait before its new handshake: long
#: enough for a supervisor to start the adapter again.
RECONNECT_AFTER = 2.0
#: Seconds the drain itself may take before uvicorn is told to stop anyway.
DRAIN_TIMEOUT = 1.0
#: Seconds clients are told to wait (Retry-After) while the adapter stops.
RETRY_AFTER = 5
#: The most the adapter takes from SIGTERM to its exit, in seconds: the drain,
#: uvicorn's grace for running requests (adapter.cli.GRACEFUL_SHUTDOWN, 3 s),
#: and closing (the store's last commit, the SIP sockets) with room to spare.
STOP_BOUND = 5.0

#: Paths still served while draining: a supervisor watches them to the end.
_ALWAYS_SERVED = frozenset({"/livez", "/readyz", "/health", "/metrics"})


class Drain:
    """Whether the adapter is stopping, and what to do first when it starts to."""

    def __init__(self) -> None:
        self.active = False
        self._steps: list[Callable[[], object]] = []

    def on_drain(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    async def run(self) -> None:
        self.active = True
        for step in self._steps:
            result = step()
            if asyncio.iscoroutine(result):
                await result


class DrainGate:
    """Refuses new requests once draining: 503, ``Retry-After``, the REST error body."""

    def __init__(self, app: ASGIApp, drain: Drain, always: Iterable[str] = _ALWAYS_SERVED) -> None:
        self.app = app
        self.drain = drain
        self.always = frozenset(always)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.drain.active or scope["type"] == "lifespan" or scope["path"] in self.always:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            # Closing before accepting: the upgrade is answered 403; the client retries.
            await send({"type": "websocket.close", "code": 1012})  # RFC 6455 §7.4: restart
            return
        error = ServiceError.service_error("the adapter is shutting down; retry", status=503)
        response = JSONResponse(
            error.body(),
            status_code=503,
            headers={**error.headers, "Retry-After": str(RETRY_AFTER), "Connection": "close"},
        )
        await response(scope, receive, send)


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``STOPPING=1``) when it asked (``Type=notify``).

    The protocol of sd_notify(3): one datagram to the socket named by
    ``$NOTIFY_SOCKET`` (a leading "@" is the abstract namespace).  Without it,
    nothing is sent.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify %s to %s failed: %s", state, path, exc)
        return False
    return True


class AdapterServer(uvicorn.Server):
    """uvicorn's server, draining the adapter (:class:`Drain`) before it stops."""

    #: Seconds between two ticks of the main loop (see :meth:`main_loop`).
    TICK = 1.0

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        self._exiting = False
        self._woken: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__(config)
        self.drain = drain
        self._draining: asyncio.Task[None] | None = None

    @property
    def should_exit(self) -> bool:
        return self._exiting

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        # Set from a signal handler, the drain or a test: the main loop is
        # woken at once rather than at its next tick.
        self._exiting = value
        if value and self._woken is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        await super().startup(sockets)
        if self.started:
            sd_notify("READY=1")

    async def main_loop(self) -> None:
        """uvicorn's, ticking once a second instead of ten times.

        uvicorn wakes every 0.1 s only to see whether it should stop; in an
        adapter with nothing to do, those wake-ups were most of its CPU.  A
        tick a second is what ``on_tick`` needs (the Date header it keeps has
        a one-second resolution, RFC 9110 §6.6.1), and a stop is seen at once
        through :attr:`should_exit`.
        """
        assert self._woken is not None
        counter = 0
        while not await self.on_tick(counter):
            # on_tick renews the Date header when the counter is a multiple of 10.
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.TICK):
                    await self._woken.wait()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn raises a caught signal again once it has stopped; for SIGTERM
        # that would end the process by the signal instead of with status 0.
        if self.drain.active or self._loop is None or not self.started:
            # A second signal, or one before serving: stop without (more)
            # draining; a second Ctrl-C forces the exit, as in uvicorn.
            if sig == signal.SIGTERM:
                self.should_exit = True
            else:
                super().handle_exit(sig, frame)
            return
        if sig != signal.SIGTERM:
            self._captured_signals.append(sig)
        self.drain.active = True  # at once: requests arriving from now on are refused
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        sd_notify("STOPPING=1")
        logger.info("stopping: draining (new requests refused, Bayeux clients told to come back)")
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.drain.run()
        except TimeoutError:
            logger.warning("draining took more than %g s; stopping anyway", DRAIN_TIMEOUT)
        finally:
            self.should_exit = True
