"""What a caller of :class:`~sip.aio.SipEndpoint` holds: one handle per publication
or subscription.

A handle is made by the call that starts the publication or subscription, before
anything is sent, so that an answer that arrives in the very next turn of the
event loop finds it (a waiter filed only once the caller awaits would miss it):
a publication's futures are in place, a subscription's outcomes are kept
whether or not a future was asked for yet.  The driver routes each event of the user agent to
its handle by id, once; the handle settles its futures and then hands the event
to its owner's ``on_event`` callback, if any — except a publication's
confirmation, which its owner sees first: what the owner starts on it (the store
write of the new entity tag, say) is then queued on the loop ahead of the waiter
the outcome wakes, which finds it done rather than waiting a turn more for it.

Futures that end in an error are marked retrieved, so that an outcome nobody
asked for is no "exception was never retrieved" warning; a caller that awaits
one gets the error all the same.  A handle whose publication or subscription is
over is forgotten by the driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ..publication import (
    PublicationConfirmed,
    PublicationEvent,
    PublicationFailed,
)
from ..subscription import NotifyReceived, SubscriptionAccepted, SubscriptionTerminated
from ..useragent import BUSY

if TYPE_CHECKING:
    from .endpoint import SipEndpoint

__all__ = [
    "PublicationHandle",
    "SubscriptionEvent",
    "SubscriptionHandle",
]

logger = logging.getLogger(__name__)

E = TypeVar("E")

SubscriptionEvent = NotifyReceived | SubscriptionAccepted | SubscriptionTerminated


class PublicationHandle:
    """One publication (RFC 3903) as its owner sees it.

    :attr:`outcome` is the outcome of the latest :meth:`modify` (or of the
    initial publish): the confirmation of that body, or
    :class:`~sip.aio.RequestFailed`.  A 2xx to an earlier PUBLISH that was
    still outstanding (RFC 3903 §4.1: one at a time) is not that body's
    confirmation: the outcome waits for the PUBLISH that carries it.  A
    failure the publication retries by itself before ``retry_until`` (on the
    endpoint's clock) is not an outcome either: the retry's answer is.  After
    a failed outcome the publication stays (and retries a transient failure,
    RFC 3903 state is never dropped silently) until :meth:`unpublish`.
    """

    __slots__ = ("_endpoint", "_on_event", "_waiting", "body", "confirmed", "ended", "failing",
                 "id", "outcome")

    def __init__(
        self,
        endpoint: SipEndpoint,
        publication_id: int,
        body: bytes,
        on_event: Callable[[PublicationEvent], None] | None,
        retry_until: float | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._on_event = on_event
        self.id = publication_id
        #: The state last handed over (the one the publication sends).
        self.body = body
        #: The last confirmation (its entity tag and expiry), None before any.
        self.confirmed: PublicationConfirmed | None = None
        #: The last PUBLISH failed (the publication retries or gave up).
        self.failing = False
        #: Resolved (with None) once the publication is gone.
        self.ended: asyncio.Future[None] = endpoint._new_future()
        # Outcomes not yet settled, each with its retry_until.
        self._waiting: list[tuple[asyncio.Future[PublicationConfirmed], float | None]] = []
        #: The outcome of the latest publish or modify.
        self.outcome: asyncio.Future[PublicationConfirmed] = self._expect(retry_until)

    def modify(
        self, body: bytes, *, retry_until: float | None = None
    ) -> asyncio.Future[PublicationConfirmed]:
        """Replace the published state (RFC 3903 §4.4); its outcome."""
        if self.ended.done():
            raise RuntimeError(f"publication {self.id} is over")
        self.body = body
        outcome = self.outcome = self._expect(retry_until)
        self._endpoint._modify(self.id, body)
        return outcome

    def unpublish(self) -> asyncio.Future[None]:
        """Remove the publication (RFC 3903 §4.5); :attr:`ended` resolves when it is gone."""
        if not self.ended.done():
            self._endpoint._unpublish(self.id)
        return self.ended

    def abandon(self) -> None:
        """Stop refreshing the publication, sending nothing (UserAgent.abandon):
        another gateway holds it now.  What still waits is cancelled."""
        self._endpoint._abandon(self.id)

    def _expect(self, retry_until: float | None) -> asyncio.Future[PublicationConfirmed]:
        future: asyncio.Future[PublicationConfirmed] = self._endpoint._new_future()
        self._waiting.append((future, retry_until))
        return future

    def _receive(self, event: PublicationEvent, sending: bool) -> None:
        """An event of this publication; ``sending``: a newer PUBLISH is on its way."""
        if type(event) is PublicationConfirmed:
            self.confirmed = event
            self.failing = False
            # The outcomes this confirms, taken before the owner sees it: a
            # modify the owner makes meanwhile waits for its own answer.
            confirmed: list[tuple[asyncio.Future[PublicationConfirmed], float | None]] = []
            if not sending:
                confirmed, self._waiting = self._waiting, []
            if self._on_event is not None:
                deliver(self._on_event, event)  # first: see the module docstring
            for future, _ in confirmed:
                if not future.done():
                    future.set_result(event)
            return
        if type(event) is PublicationFailed:
            self.failing = True
            error = self._endpoint._publish_failure(event)
            retry_at = event.retry_at
            kept: list[tuple[asyncio.Future[PublicationConfirmed], float | None]] = []
            # A request refused for want of room in the window is told at
            # once: waiting for the retry would turn the refusal into a timeout.
            if event.reason == BUSY:
                retry_at = None
            for future, retry_until in self._waiting:
                if retry_at is not None and retry_until is not None and retry_at < retry_until:
                    kept.append((future, retry_until))
                else:
                    fail(future, error)
            self._waiting = kept
        else:
            self.close(self._endpoint._publish_removed())
            if not self.ended.done():
                self.ended.set_result(None)
        if self._on_event is not None:
            deliver(self._on_event, event)

    def close(self, error: BaseException | None = None) -> None:
        """Settle what still waits: with ``error``, or cancelled."""
        for future, _ in self._waiting:
            if error is None:
                future.cancel()
            else:
                fail(future, error)
        self._waiting.clear()
        if error is None:
            self.ended.cancel()


class SubscriptionHandle:
    """One subscription (RFC 6665) as its owner sees it.

    :attr:`accepted` settles with the answer to the initial SUBSCRIBE:
    :class:`~sip.SubscriptionAccepted`, or :class:`~sip.aio.RequestFailed`
    when the subscription ended first.  NOTIFYs can come before it (RFC 6665
    §4.1.2.4); ``on_event`` sees every event of the subscription, in order.
    :attr:`ended` resolves with the one :class:`~sip.SubscriptionTerminated`.

    Each outcome is a future only while someone asked for it and it is not
    settled; otherwise the handle keeps what settles it (nothing yet, the
    event, the error), and a future asked for later is made settled.  A held
    subscription keeps no future: a gateway holds many, each quiet for hours.
    """

    __slots__ = ("_accepted", "_endpoint", "_ended", "_on_event", "id")

    def __init__(
        self,
        endpoint: SipEndpoint,
        subscription_id: int,
        on_event: Callable[[SubscriptionEvent], None] | None,
    ) -> None:
        self._endpoint = endpoint
        self._on_event = on_event
        self.id = subscription_id
        self._accepted: _Outcome[SubscriptionAccepted] = None
        self._ended: _Outcome[SubscriptionTerminated] = None

    @property
    def accepted(self) -> asyncio.Future[SubscriptionAccepted]:
        future, self._accepted = _future(self._endpoint, self._accepted)
        return future

    @property
    def ended(self) -> asyncio.Future[SubscriptionTerminated]:
        future, self._ended = _future(self._endpoint, self._ended)
        return future

    @property
    def over(self) -> bool:
        """Whether :attr:`ended` is settled (or cancelled by :meth:`close`)."""
        ended = self._ended
        return ended is not None and (not isinstance(ended, asyncio.Future) or ended.done())

    def refresh(self) -> None:
        """Send an in-dialog refresh now (a 481 to it ends the subscription)."""
        if not self.over:
            self._endpoint._refresh(self.id)

    def end(self) -> asyncio.Future[SubscriptionTerminated]:
        """Start ending the subscription (Expires: 0); :attr:`ended` says when it is over."""
        if not self.over:
            self._endpoint._unsubscribe(self.id)
        return self.ended

    def _receive(self, event: SubscriptionEvent) -> None:
        if type(event) is NotifyReceived:
            pass  # nearly every event: it settles nothing
        elif type(event) is SubscriptionAccepted:
            self._accepted = _settled(self._accepted, event)
        elif type(event) is SubscriptionTerminated:
            if _open(self._accepted):
                self._accepted = _settled(
                    self._accepted, self._endpoint._subscribe_failure(event)
                )
            self._ended = _settled(self._ended, event)
        if self._on_event is not None:
            deliver(self._on_event, event)

    def close(self) -> None:
        self._accepted = _settled(self._accepted, _CANCELLED)
        self._ended = _settled(self._ended, _CANCELLED)


class _Cancelled:
    """What :meth:`SubscriptionHandle.close` settles an outcome with."""


_CANCELLED = _Cancelled()
_T = TypeVar("_T")
#: Not settled (None, or the future someone waits on), or what settled it.
_Outcome: TypeAlias = "asyncio.Future[_T] | _T | BaseException | _Cancelled | None"


def _open(outcome: _Outcome[Any]) -> bool:
    return outcome is None or (isinstance(outcome, asyncio.Future) and not outcome.done())


def _settled(outcome: _Outcome[_T], value: _T | BaseException | _Cancelled) -> _Outcome[_T]:
    """``outcome`` settled with ``value`` unless it was: the first one stays."""
    if outcome is None:
        return value
    if isinstance(outcome, asyncio.Future):
        if outcome.done():
            return outcome  # cancelled by a waiter: it stays so
        _settle(outcome, value)
        return value  # the waiter holds the future; the handle need not
    return outcome


def _future(
    endpoint: SipEndpoint, outcome: _Outcome[_T]
) -> tuple[asyncio.Future[_T], _Outcome[_T]]:
    """A future of ``outcome`` and what the handle keeps of it from now on."""
    if isinstance(outcome, asyncio.Future):
        return outcome, outcome
    future: asyncio.Future[_T] = endpoint._new_future()
    if outcome is None:
        return future, future
    _settle(future, outcome)
    return future, outcome


def _settle(future: asyncio.Future[_T], value: _T | BaseException | _Cancelled) -> None:
    if isinstance(value, _Cancelled):
        future.cancel()
    elif isinstance(value, BaseException):
        fail(future, value)
    else:
        future.set_result(value)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless settled; nobody need ask for the error."""
    if not future.done():
        future.set_exception(error)
        future.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def deliver(callback: Callable[[E], None], event: E) -> None:
    try:
        callback(event)
    # An owner's bug must not stop the SIP pump: that would leave NOTIFYs
    # unanswered and the server would drop our subscriptions.
    except Exception:
        logger.exception("SIP event callback failed on %r", event)
