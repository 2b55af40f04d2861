"""Resource list subscriptions (RFC 4662) against the bundled Kamailio acting
as an RLS, with the product's SIP stack (sip/aio) and the list parsers
(sip.multipart, pidf.rlmi).

Each test owns its names: a watcher, its rls-services document (RFC 4826)
and the members, so tests share the session's presence server safely.

With ``RLS_CAPTURE=DIR`` set, every NOTIFY of these tests is written to DIR
as ``<test>-<n>.txt`` (Content-Type line, blank line, body): that is how
tests/data/rls/ was captured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from pidf import Activity, AttributeType
from pidf.rlmi import Change, InstanceState, ListState, MemberChange, parse_rlmi
from sip.aio import RequestFailed, SubscriptionHandle
from sip.digest import Credentials
from sip.multipart import parse_multipart
from sip.subscription import NotifyReceived
from sip.uri import SipURI
from tests.integration.test_useragent import (
    PRES_RULES,
    Client,
    client,
    names,
    pidf,
    put_rules,
)
from tests.presence_server import PresenceServer
from tests.rawsip import new_token
from tests.sipphone import SipPhone

pytestmark = pytest.mark.integration

#: Seconds left for the server to apply a rule written to XCAP before a
#: PUBLISH that must be told under it (see the block step below).
RULES_SETTLE = 1.0

RLS_SERVICES = """<?xml version="1.0" encoding="UTF-8"?>
<rls-services xmlns="urn:ietf:params:xml:ns:rls-services"
    xmlns:rl="urn:ietf:params:xml:ns:resource-lists">
  <service uri="{service}">
    <list>{entries}</list>
    <packages><package>presence</package></packages>
  </service>
</rls-services>
"""

#: How long a member's first PUBLISH is retried: the server's SQLite refuses a
#: write that meets one of its own with 500 "database is locked"
#: (docs/kamailio.md), a transient failure the publication retries by itself.
PUBLISH_RETRY = 30.0

#: Member state arrives in partial NOTIFYs about a second after the full
#: state (rls waitn_time); this only bounds a failing test.
WAIT = 20.0
#: How often a barrier's change is sent before its step fails (WAIT in all).
BARRIER_TRIES = 4


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await scenario()

    asyncio.run(bounded())


def xcap_client(auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    """No keep-alive: Kamailio's xhttp closes the connection after every reply
    without saying so, and digest needs a second request (adapter/xcap.py)."""
    return httpx.AsyncClient(
        timeout=WAIT,
        auth=auth,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"Connection": "close"},
    )


async def put_list(
    server: PresenceServer,
    owner: SipURI,
    service: SipURI,
    members: list[SipURI],
    auth: httpx.Auth | None = None,
) -> None:
    entries = "".join(f'<rl:entry uri="{m}"/>' for m in members)
    async with xcap_client(auth) as http:
        for attempt in range(1, 6):
            reply = await http.put(
                f"{server.xcap_root}/rls-services/users/{owner}/index",
                content=RLS_SERVICES.format(service=service, entries=entries),
                headers={"Content-Type": "application/rls-services+xml"},
            )
            # A write that meets the server's own in its SQLite database is
            # refused 500 and did not happen (adapter/xcap.py): written again.
            if reply.status_code != 500:
                break
            await asyncio.sleep(0.2 * attempt)
    assert reply.status_code == 200, reply.text


class Watch:
    """One list subscription: every NOTIFY parsed and applied to a ListState."""

    def __init__(self, c: Client, name: str) -> None:
        self.c = c
        self.state = ListState()
        self.changes: list[MemberChange] = []
        self.notifies: list[NotifyReceived] = []
        self.sid: int | None = None
        self.handle: SubscriptionHandle | None = None
        self._name = name
        self._seen = 0

    async def start(self, watcher: SipURI, service: SipURI) -> None:
        subscription = self.c.subscribe(watcher, service, eventlist=True)
        self.sid, self.handle = subscription.id, subscription
        await subscription.accepted

    def _drain(self) -> None:
        for event in self.c.events.of(NotifyReceived)[self._seen :]:
            self._seen += 1
            if event.subscription_id != self.sid:
                continue
            self.notifies.append(event)
            capture(self._name, len(self.notifies), event)
            if not event.body:
                continue
            assert event.content_type is not None
            body = parse_multipart(event.content_type, event.body)
            update = self.state.apply(parse_rlmi(body.root.body), body.by_content_id())
            assert not update.errors, update.errors
            self.changes.extend(update.changes)

    async def until(
        self, check: Callable[[ListState], bool], what: str, wait: float = WAIT
    ) -> None:
        try:
            async with asyncio.timeout(wait):
                while True:
                    self._drain()
                    if check(self.state):
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"list state never got {what}; members: {self.state.members}"
            ) from None


def capture(name: str, n: int, event: NotifyReceived) -> None:
    directory = os.environ.get("RLS_CAPTURE")
    if not directory:
        return
    path = Path(directory) / f"{name}-{n}.txt"
    path.write_bytes(f"Content-Type: {event.content_type}\r\n\r\n".encode() + event.body)


def active_with(uri: SipURI, text: str) -> Callable[[ListState], bool]:
    def check(state: ListState) -> bool:
        member = state.members.get(str(uri))
        return (
            member is not None
            and member.state is InstanceState.ACTIVE
            and member.document is not None
            and text.encode() in member.document
            and member.presence is not None
        )

    return check


def list_names(count: int) -> tuple[SipURI, SipURI, list[SipURI]]:
    """A watcher, its list URI and ``count`` members nobody else uses."""
    _, watcher = names()
    token = new_token()
    service = SipURI.parse(f"sip:friends-{token}@example.com")
    members = [SipURI.parse(f"sip:m{i}-{token}@example.com") for i in range(count)]
    return watcher, service, members


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_list_shows_active_members_and_a_pending_one_bare(
    presence_server: PresenceServer, transport: str
) -> None:
    async def scenario() -> None:
        watcher, service, (a, b, p) = list_names(3)
        async with client(presence_server, transport) as c:
            ep = c.endpoint
            await ep.publish(a, pidf(a, "a-here")).outcome
            await ep.publish(b, pidf(b, "b-here")).outcome
            await ep.publish(p, pidf(p, "p-secret")).outcome
            await put_rules(presence_server, a, watcher, "allow")
            await put_rules(presence_server, b, watcher, "allow")
            # p has no rule for the watcher: pending at the server.
            await put_list(presence_server, watcher, service, [a, b, p])

            watch = Watch(c, f"active-pending-{transport}")
            await watch.start(watcher, service)
            await watch.until(
                lambda s: active_with(a, "a-here")(s) and active_with(b, "b-here")(s),
                "a and b active",
            )
            first = watch.notifies[0]
            assert first.content_type is not None
            assert first.content_type.startswith("multipart/related")
            assert watch.state.uri == str(service)
            assert watch.state.complete
            assert set(watch.state.members) == {str(a), str(b), str(p)}
            pending = watch.state.members[str(p)]
            assert pending.state is None and pending.presence is None
            presence = watch.state.members[str(a)].presence
            assert presence is not None and presence.entity == str(a) and presence.open
            added = {ch.uri for ch in watch.changes if Change.ADDED in ch.changes}
            assert added == {str(a), str(b), str(p)}

    run(scenario)


def test_member_change_and_unpublish_reach_the_list(presence_server: PresenceServer) -> None:
    async def scenario() -> None:
        watcher, service, (a, b) = list_names(2)
        async with client(presence_server, "udp") as c:
            ep = c.endpoint
            pub = ep.publish(a, pidf(a, "first"))
            await pub.outcome
            await ep.publish(b, pidf(b, "steady")).outcome
            await put_rules(presence_server, a, watcher, "allow")
            await put_rules(presence_server, b, watcher, "allow")
            await put_list(presence_server, watcher, service, [a, b])

            watch = Watch(c, "change-unpublish")
            await watch.start(watcher, service)
            await watch.until(active_with(a, "first"), "a's first state")
            mark = len(watch.changes)

            await pub.modify(pidf(a, "second"))
            await watch.until(active_with(a, "second"), "a's second state")
            changed = [ch for ch in watch.changes[mark:] if ch.uri == str(a)]
            assert changed and Change.DOCUMENT_CHANGED in changed[-1].changes
            mark = len(watch.changes)

            await pub.unpublish()

            def closed(state: ListState) -> bool:
                member = state.members[str(a)]
                return member.presence is not None and not member.presence.open

            await watch.until(closed, "a closed after its un-PUBLISH")
            assert watch.state.members[str(a)].state is InstanceState.ACTIVE
            # b did not change: it is not reported again with a new document.
            assert not [
                ch
                for ch in watch.changes[mark:]
                if ch.uri == str(b) and Change.DOCUMENT_CHANGED in ch.changes
            ]

    run(scenario)


def test_list_edited_on_the_server_while_subscribed(presence_server: PresenceServer) -> None:
    async def scenario() -> None:
        watcher, service, (a, b, d) = list_names(3)
        async with client(presence_server, "udp") as c:
            ep = c.endpoint
            for member in (a, b, d):
                await ep.publish(member, pidf(member, f"{member.user}-here")).outcome
                await put_rules(presence_server, member, watcher, "allow")
            await put_list(presence_server, watcher, service, [a, b])

            watch = Watch(c, "edited")
            await watch.start(watcher, service)
            await watch.until(active_with(b, "here"), "b active")

            # d added, a removed: rls_update_subs after the PUT.
            await put_list(presence_server, watcher, service, [b, d])
            await watch.until(active_with(d, "here"), "the added member d")
            # Kamailio sends no state for the removed member a (no terminated
            # instance, no full state: docs/kamailio.md); a new list
            # subscription's full state shows the edited list.
            fresh = Watch(c, "edited-fresh")
            await fresh.start(watcher, service)
            await fresh.until(lambda s: s.complete, "the full state of a new subscription")
            assert set(fresh.state.members) == {str(b), str(d)}

    run(scenario)


def test_hundred_members_split_by_the_server_nothing_lost(
    presence_server: PresenceServer,
) -> None:
    async def scenario() -> None:
        watcher, service, members = list_names(100)
        async with client(presence_server, "udp") as c:
            ep = c.endpoint
            for member in members:
                note = f"note of {member.user} " + "x" * 200
                retry_until = ep.now() + PUBLISH_RETRY
                await ep.publish(member, pidf(member, note), retry_until=retry_until).outcome
                await put_rules(presence_server, member, watcher, "allow")
            await put_list(presence_server, watcher, service, members)

            watch = Watch(c, "hundred")
            await watch.start(watcher, service)

            def all_active(state: ListState) -> bool:
                return all(active_with(m, f"note of {m.user}")(state) for m in members)

            await watch.until(all_active, "all 100 members active")
            with_parts = [n for n in watch.notifies if b"application/pidf+xml" in n.body]
            # The server split the member states over several NOTIFYs, each
            # below its max_notify_body_length.
            assert len(with_parts) >= 2, [len(n.body) for n in watch.notifies]
            assert all(len(n.body) <= 60000 for n in watch.notifies)
            versions = [
                parse_rlmi(parse_multipart(n.content_type or "", n.body).root.body).version
                for n in watch.notifies
                if n.body
            ]
            assert versions == list(range(1, len(versions) + 1))

    run(scenario, timeout=180)


def test_a_list_on_a_server_that_authenticates() -> None:
    """With --auth the subscriber's requests are challenged, rls's own back-end
    SUBSCRIBEs are not (they carry no credentials), and the list works."""
    user, password = "gateway", "pw-" + new_token()[:10]
    server = PresenceServer(auth=(user, password))
    server.start()

    async def scenario() -> None:
        watcher, service, (a,) = list_names(1)
        auth = httpx.DigestAuth(user, password)
        async with client(server, "udp") as c:
            c.endpoint.set_credentials(Credentials(user, password))
            await c.endpoint.publish(a, pidf(a, "guarded")).outcome
            rules = PRES_RULES.format(watcher=watcher, handling="allow")
            async with xcap_client(auth) as http:
                reply = await http.put(
                    f"{server.xcap_root}/pres-rules/users/{a}/index",
                    content=rules,
                    headers={"Content-Type": "application/auth-policy+xml"},
                )
            assert reply.status_code == 200, reply.text
            await put_list(server, watcher, service, [a], auth=auth)
            watch = Watch(c, "auth")
            await watch.start(watcher, service)
            await watch.until(active_with(a, "guarded"), "the member active")
            assert 407 in c.statuses("SUBSCRIBE")

    try:
        run(scenario)
    finally:
        server.stop()


def test_phones_as_members_busy_then_offline(
    presence_server: PresenceServer, sip_phone: Callable[[str], SipPhone]
) -> None:
    """PJSIP phones (a third-party SIP stack) publish as list members; one
    changes its activity, then quits (un-PUBLISH): the list shows it closed."""
    watcher, service, (first, second) = list_names(2)
    phones = [sip_phone(str(first)), sip_phone(str(second))]
    phones[0].publish("online", "busy", "on a call")
    phones[1].publish("online", "unknown", "at my desk")

    async def scenario() -> None:
        for member in (first, second):
            await put_rules(presence_server, member, watcher, "allow")
        await put_list(presence_server, watcher, service, [first, second])
        async with client(presence_server, "udp") as c:
            watch = Watch(c, "phones")
            await watch.start(watcher, service)
            await watch.until(
                lambda s: (
                    active_with(first, "on a call")(s) and active_with(second, "at my desk")(s)
                ),
                "both phones' states",
            )
            busy = watch.state.members[str(first)].presence
            assert busy is not None and busy.open
            activity = busy.get(AttributeType.ACTIVITY)
            assert activity is not None and activity.value is Activity.BUSY

            await asyncio.to_thread(phones[1].stop)

            def offline(state: ListState) -> bool:
                presence = state.members[str(second)].presence
                return presence is not None and not presence.open

            await watch.until(offline, "the quitting phone closed")
            assert watch.state.members[str(first)].presence == busy

    run(scenario)


def mentions(notifies: list[NotifyReceived], uri: SipURI) -> list[int]:
    """The positions of the NOTIFYs whose RLMI names ``uri``."""
    return [n for n, event in enumerate(notifies) if f'uri="{uri}"'.encode() in event.body]


async def retried(send: Callable[[], Any], attempts: int = 5) -> None:
    """A PUBLISH that meets the server's own writes after an XCAP change is
    refused 500 ("database is locked" on sqlite): sent again."""
    for attempt in range(1, attempts + 1):
        try:
            await send()
            return
        except RequestFailed:
            if attempt == attempts:
                raise
            await asyncio.sleep(0.2 * attempt)


def test_a_removal_a_block_and_an_allow_on_the_server_are_not_told_until_a_refresh(
    presence_server: PresenceServer,
) -> None:
    """What rls tells a list subscriber of edits it does not see coming
    (tests/data/rls/README.md): a member removed from the list, a member's
    block and its allow again, each written to XCAP by someone else.  Each
    step ends on a barrier, a change of a member that stays, which rls sends
    after whatever it had to send about the step."""

    async def scenario() -> None:
        watcher, service, (kept, gone, blocker) = list_names(3)
        async with client(presence_server, "udp") as c:
            ep = c.endpoint
            steady = ep.publish(kept, pidf(kept, "kept-0"))
            await steady.outcome
            await ep.publish(gone, pidf(gone, f"{gone.user}-here")).outcome
            blocking = ep.publish(blocker, pidf(blocker, f"{blocker.user}-here"))
            await blocking.outcome
            for member in (kept, gone, blocker):
                await put_rules(presence_server, member, watcher, "allow")
            await put_list(presence_server, watcher, service, [kept, gone, blocker])
            watch = Watch(c, "server-edits")
            await watch.start(watcher, service)
            for member in (kept, gone, blocker):
                await watch.until(active_with(member, "-"), f"{member.user} active")

            async def barrier(n: int) -> int:
                # Under load rls has let a barrier go untold (seen twice in
                # CI, the server's log clean): it is sent again until it
                # comes. The steps assert what came before it, not that rls
                # tells every change.
                told, what = active_with(kept, f"kept-{n}"), f"barrier {n}"
                for _ in range(BARRIER_TRIES - 1):
                    await retried(lambda: steady.modify(pidf(kept, f"kept-{n}")))
                    with contextlib.suppress(AssertionError):
                        await watch.until(told, what, WAIT / BARRIER_TRIES)
                        return len(watch.notifies)
                await retried(lambda: steady.modify(pidf(kept, f"kept-{n}")))
                await watch.until(told, what, WAIT / BARRIER_TRIES)
                return len(watch.notifies)

            # A pure removal (rls_update_subs ends rls's own subscription to
            # the member): no NOTIFY names it, no full state comes.
            before = len(watch.notifies)
            await put_list(presence_server, watcher, service, [kept, blocker])
            # As for pres-rules below: the PUT is answered before the route
            # runs rls_update_subs, which the barrier's PUBLISH would race.
            await asyncio.sleep(RULES_SETTLE)
            after = await barrier(1)
            assert mentions(watch.notifies[before:after], gone) == []
            assert all(b'fullState="false"' in n.body for n in watch.notifies[before:after])

            # A block written to XCAP: rls gets a body-less terminated NOTIFY
            # and sends nothing; the member's later changes do not come.
            await put_rules(presence_server, blocker, watcher, "block")
            # The XCAP server answers the PUT before its route re-evaluates the
            # watchers (docs/kamailio.md): a PUBLISH sent at once can still be
            # told under the old rule, which is not what this step is about.
            await asyncio.sleep(RULES_SETTLE)
            await retried(lambda: blocking.modify(pidf(blocker, "after-block")))
            before, after = after, await barrier(2)
            told = mentions(watch.notifies[before:after], blocker)
            assert told == [], [watch.notifies[before + i].body for i in told]

            # Allowed again: still nothing until the list is refreshed.
            await put_rules(presence_server, blocker, watcher, "allow")
            before, after = after, await barrier(3)
            assert mentions(watch.notifies[before:after], blocker) == []
            assert watch.handle is not None
            watch.handle.refresh()
            await watch.until(active_with(blocker, "after-block"), "the allowed member back")
            # The removed member stays out; a new subscription's full state
            # shows the list as it is.
            assert mentions(watch.notifies[after:], gone) == []
            fresh = Watch(c, "server-edits-fresh")
            await fresh.start(watcher, service)
            await fresh.until(lambda s: s.complete, "the full state of a new subscription")
            assert set(fresh.state.members) == {str(kept), str(blocker)}

    run(scenario)
