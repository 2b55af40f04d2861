"""Publication and subscription handles of the asyncio driver, against a scripted
server on a loopback UDP socket: the test answers each request by hand."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sip import (
    BUSY,
    NotifyReceived,
    PublicationConfirmed,
    PublicationRemoved,
    SubscriptionAccepted,
    SubscriptionTerminated,
    parse_message,
)
from sip.aio import AuthenticationFailed, Busy, RequestFailed, SipEndpoint
from sip.aio.handles import PublicationHandle, SubscriptionHandle
from sip.message import Request
from sip.uri import SipURI
from sip.useragent import Window

ALICE = SipURI.parse("sip:alice@example.com")
BOB = SipURI.parse("sip:bob@example.com")


class Server(asyncio.DatagramProtocol):
    """Collects the requests; the test answers them with :meth:`answer`."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[Request, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self._tags = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        if isinstance(message, Request):
            self.requests.put_nowait((message, addr))

    async def next(self, method: str) -> tuple[Request, tuple[str, int]]:
        request, addr = await asyncio.wait_for(self.requests.get(), 5)
        assert request.method == method
        return request, addr

    def answer(self, request: Request, addr: tuple[str, int], status: int,
               to_tag: str | None = None, **headers: str) -> None:
        self._tags += 1
        response = request.response(status, to_tag=to_tag or f"srv{self._tags}")
        for name, value in headers.items():
            response.headers.add(name.replace("_", "-"), value)
        assert self.transport is not None
        self.transport.sendto(bytes(response), addr)

    def notify(self, subscribe: Request, addr: tuple[str, int], to_tag: str, state: str,
               body: bytes = b"") -> None:
        """A NOTIFY in the dialog of ``subscribe``, whose tag at the server is ``to_tag``."""
        self._tags += 1
        contact = subscribe.headers.get("Contact")
        text = (
            f"NOTIFY {contact.strip('<>')} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bKn{self._tags}\r\n"
            f"From: {subscribe.headers.get('To')};tag={to_tag}\r\n"
            f"To: {subscribe.headers.get('From')}\r\n"
            f"Call-ID: {subscribe.call_id}\r\nCSeq: {self._tags} NOTIFY\r\n"
            f"Contact: <sip:127.0.0.1:{self.port}>\r\nEvent: presence\r\n"
            f"Subscription-State: {state}\r\nMax-Forwards: 70\r\n"
            + ("Content-Type: application/pidf+xml\r\n" if body else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        assert self.transport is not None
        self.transport.sendto(text.encode() + body, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


Scenario = Callable[[SipEndpoint, Server], Awaitable[None]]


def run(scenario: Scenario) -> list[dict[str, Any]]:
    """Run ``scenario``; the loop's unhandled-error reports ("never retrieved"...)."""
    reports: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reports.append(context))
        transport, server = await loop.create_datagram_endpoint(
            Server, local_addr=("127.0.0.1", 0)
        )
        server.transport = transport
        endpoint = SipEndpoint(
            host="127.0.0.1", port=0, server=SipURI.parse(f"sip:127.0.0.1:{server.port}")
        )
        await endpoint.start()
        try:
            await scenario(endpoint, server)
        finally:
            await endpoint.close()
            transport.close()
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(main())
    return reports


def confirm(server: Server, request: Request, addr: tuple[str, int], etag: str) -> None:
    server.answer(request, addr, 200, SIP_ETag=etag, Expires="3600")


def test_a_publication_s_outcome_and_events_reach_its_handle() -> None:
    seen: list[object] = []

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"first", on_event=seen.append)
        assert isinstance(handle, PublicationHandle) and not handle.outcome.done()
        request, addr = await server.next("PUBLISH")
        assert request.body == b"first"
        confirm(server, request, addr, "e1")
        confirmed = await handle.outcome
        assert confirmed == PublicationConfirmed(handle.id, "e1", 3600)
        assert handle.confirmed == confirmed and seen == [confirmed]
        second = handle.modify(b"second")
        assert handle.outcome is second and handle.body == b"second"
        request, addr = await server.next("PUBLISH")
        assert request.headers.get("SIP-If-Match") == "e1"
        confirm(server, request, addr, "e2")
        assert (await second).etag == "e2"

    assert run(scenario) == []


def test_a_confirmation_reaches_the_owner_before_the_outcome_s_waiter_resumes() -> None:
    # What the owner queues on the loop when it sees the confirmation (a store
    # write, say) runs before the caller awaiting the outcome goes on.
    order: list[str] = []

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        loop = asyncio.get_running_loop()
        modifies: list[asyncio.Future[PublicationConfirmed]] = []

        def on_event(event: object) -> None:
            order.append("owner")
            loop.call_soon(order.append, "queued by the owner")
            if not modifies:  # a modify from inside: not confirmed by this answer
                modifies.append(handle.modify(b"second"))

        handle = endpoint.publish(ALICE, b"first", on_event=on_event)
        request, addr = await server.next("PUBLISH")
        confirm(server, request, addr, "e1")
        await handle.outcome
        order.append("waiter")
        assert not modifies[0].done()
        request, addr = await server.next("PUBLISH")
        assert request.body == b"second"
        confirm(server, request, addr, "e2")
        assert (await modifies[0]).etag == "e2"

    assert run(scenario) == []
    assert order[:3] == ["owner", "queued by the owner", "waiter"]


def test_a_modify_waits_for_its_own_publish_not_the_one_outstanding_before_it() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"first")
        first_request, addr = await server.next("PUBLISH")
        # RFC 3903 §4.1: one PUBLISH at a time; the modify waits for the first.
        second = handle.modify(b"second")
        assert server.requests.empty()
        confirm(server, first_request, addr, "e1")
        request, addr = await server.next("PUBLISH")
        assert request.body == b"second" and not second.done()
        confirm(server, request, addr, "e2")
        assert (await second).etag == "e2"

    assert run(scenario) == []


def test_a_failure_retried_before_retry_until_is_not_the_outcome() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state", retry_until=endpoint.now() + 30)
        request, addr = await server.next("PUBLISH")
        server.answer(request, addr, 500, Retry_After="1")
        request, addr = await server.next("PUBLISH")  # the publication's own retry
        assert not handle.outcome.done() and handle.failing
        confirm(server, request, addr, "e1")
        assert (await handle.outcome).etag == "e1" and not handle.failing

    assert run(scenario) == []


def test_a_failure_retried_only_after_retry_until_is_the_outcome() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state", retry_until=endpoint.now() + 5)
        request, addr = await server.next("PUBLISH")
        server.answer(request, addr, 500, Retry_After="60")
        with pytest.raises(RequestFailed, match="500"):
            await handle.outcome
        assert handle.failing and not handle.ended.done()  # it retries in 60 s

    assert run(scenario) == []


def test_a_refusal_nobody_awaits_is_no_unretrieved_error() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state")
        request, addr = await server.next("PUBLISH")
        server.answer(request, addr, 403)
        await asyncio.wait_for(asyncio.wait([handle.outcome]), 5)
        del handle

    # The loop reports an exception never retrieved when the future is collected.
    assert run(scenario) == []


def test_a_challenge_that_stands_is_an_authentication_failure() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state")
        request, addr = await server.next("PUBLISH")
        server.answer(request, addr, 401, WWW_Authenticate='Digest realm="x", nonce="n"')
        with pytest.raises(AuthenticationFailed) as failed:
            await handle.outcome
        assert not failed.value.had_credentials

    assert run(scenario) == []


def test_unpublish_ends_the_handle_and_the_driver_forgets_it() -> None:
    seen: list[object] = []

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state", on_event=seen.append)
        request, addr = await server.next("PUBLISH")
        confirm(server, request, addr, "e1")
        await handle.outcome
        pending = handle.modify(b"newer")
        ended = handle.unpublish()
        assert ended is handle.ended and not ended.done()
        request, addr = await server.next("PUBLISH")  # the modify (one at a time)
        confirm(server, request, addr, "e2")
        request, addr = await server.next("PUBLISH")
        assert request.headers.get("Expires") == "0"
        server.answer(request, addr, 200, SIP_ETag="e3", Expires="0")
        await asyncio.wait_for(ended, 5)
        assert seen[-1] == PublicationRemoved(handle.id)
        assert (await pending).etag == "e2"
        assert endpoint._publications == {}
        with pytest.raises(RuntimeError, match="over"):
            handle.modify(b"again")
        assert handle.unpublish() is ended  # nothing more is sent

    assert run(scenario) == []


def test_a_subscription_s_notifies_and_outcome_reach_its_handle() -> None:
    seen: list[object] = []

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.subscribe(BOB, ALICE, on_event=seen.append)
        request, addr = await server.next("SUBSCRIBE")
        # RFC 6665 §4.1.2.4: the first NOTIFY may come before the 200.
        server.notify(request, addr, "dialog1", "active;expires=600", b"<presence/>")
        while not seen:
            await asyncio.sleep(0.01)
        notify = seen[0]
        assert isinstance(notify, NotifyReceived) and notify.body == b"<presence/>"
        server.answer(request, addr, 200, to_tag="dialog1", Expires="600",
                      Contact=f"<sip:127.0.0.1:{server.port}>")
        accepted = await handle.accepted
        assert accepted == SubscriptionAccepted(handle.id, 600) and seen[-1] == accepted
        ended = handle.end()
        request, addr = await server.next("SUBSCRIBE")
        assert request.headers.get("Expires") == "0"
        server.answer(request, addr, 200, Expires="0")
        server.notify(request, addr, "dialog1", "terminated;reason=timeout")
        terminated = await asyncio.wait_for(ended, 5)
        assert isinstance(terminated, SubscriptionTerminated)
        assert seen[-1] == terminated and endpoint._subscriptions == {}

    assert run(scenario) == []


def test_a_held_subscription_keeps_no_future() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.subscribe(BOB, ALICE)
        request, addr = await server.next("SUBSCRIBE")
        # The 200 comes before anyone asks for the outcome: it is kept.
        server.answer(request, addr, 200, to_tag="dialog1", Expires="600",
                      Contact=f"<sip:127.0.0.1:{server.port}>")
        server.notify(request, addr, "dialog1", "active;expires=600", b"<presence/>")
        while handle._accepted is None:
            await asyncio.sleep(0.01)
        assert not any(isinstance(o, asyncio.Future) for o in (handle._accepted, handle._ended))
        accepted = await handle.accepted
        assert accepted == SubscriptionAccepted(handle.id, 600)
        # Asked for, awaited: the handle lets go of the future again.
        assert not any(isinstance(o, asyncio.Future) for o in (handle._accepted, handle._ended))
        assert not handle.over and not handle.ended.done()
        ended = handle.end()
        assert handle.ended is ended
        request, addr = await server.next("SUBSCRIBE")
        server.answer(request, addr, 200, Expires="0")
        server.notify(request, addr, "dialog1", "terminated;reason=timeout")
        terminated = await asyncio.wait_for(ended, 5)
        assert handle.over and (await handle.ended) is terminated
        assert (await handle.accepted) == accepted  # the first outcome stays

    assert run(scenario) == []


def test_a_refused_subscription_fails_its_accepted_and_ends() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.subscribe(BOB, ALICE)
        request, addr = await server.next("SUBSCRIBE")
        server.answer(request, addr, 403)
        with pytest.raises(RequestFailed, match="403"):
            await handle.accepted
        ended = await handle.ended
        assert (ended.reason, ended.status) == ("failed", 403)
        assert endpoint._subscriptions == {}

    assert run(scenario) == []


def test_closing_the_endpoint_cancels_what_still_waits() -> None:
    handles: list[Any] = []

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handles.append(endpoint.publish(ALICE, b"state"))
        handles.append(endpoint.subscribe(BOB, ALICE))
        await server.next("PUBLISH")

    assert run(scenario) == []
    publication, subscription = handles
    assert publication.outcome.cancelled() and publication.ended.cancelled()
    assert subscription.accepted.cancelled() and subscription.ended.cancelled()


def test_an_owner_s_failing_callback_does_not_stop_the_pump(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: object) -> None:
        raise ValueError("a bug")

    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state", on_event=broken)
        request, addr = await server.next("PUBLISH")
        confirm(server, request, addr, "e1")
        assert (await handle.outcome).etag == "e1"

    assert run(scenario) == []
    assert "SIP event callback failed" in caplog.text


def test_stats_are_a_snapshot_of_the_counters() -> None:
    async def scenario(endpoint: SipEndpoint, server: Server) -> None:
        handle = endpoint.publish(ALICE, b"state")
        request, addr = await server.next("PUBLISH")
        during = endpoint.stats()
        confirm(server, request, addr, "e1")
        await handle.outcome
        after = endpoint.stats()
        assert (during.transactions_in_flight, during.outcomes) == (1, {})
        assert (after.transactions_in_flight, after.outcomes) == (0, {("PUBLISH", "200"): 1})
        assert after.publications == 1 and after.subscriptions == {}

    assert run(scenario) == []


def test_many_subscriptions_ending_at_once_made_anew_from_their_callbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One timer turn refuses every caller's SUBSCRIBE waiting for the window;
    # each owner subscribes again from its callback (as the adapter's watches
    # do after a lost subscription).  Every callback runs to its end: the
    # endings are dispatched one after another, not one inside another's call.
    count = 600
    again: list[SubscriptionHandle] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, server = await loop.create_datagram_endpoint(
            Server, local_addr=("127.0.0.1", 0)
        )
        server.transport = transport
        endpoint = SipEndpoint(
            host="127.0.0.1", port=0, server=SipURI.parse(f"sip:127.0.0.1:{server.port}"),
            window=Window(size=1, least=1, queue=count, wait=0.2),
        )
        await endpoint.start()

        def made_anew(event: object) -> None:
            if isinstance(event, SubscriptionTerminated) and event.reason == BUSY:
                again.append(endpoint.subscribe(BOB, ALICE, refusable=False))

        try:
            endpoint.subscribe(BOB, ALICE)  # takes the window's one place, never answered
            refused = [endpoint.subscribe(BOB, ALICE, on_event=made_anew) for _ in range(count)]
            for handle in refused:
                with pytest.raises(Busy):
                    await handle.accepted
        finally:
            await endpoint.close()
            transport.close()

    asyncio.run(main())
    assert len(again) == count
    assert "SIP event callback failed" not in caplog.text
