"""PresentityService's withdrawal (DELETE /rest/presence), its re-publication after a
rules change, and a Publish while its publication retries, against a scripted SIP side.

The user agent is faked at its seam (publish / modify / unpublish and the
events they end in), the store is the real in-memory one: what is checked is
what the store holds at each step, and what goes to the presence server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import adapter.presentity
import adapter.publisher
from adapter.presence_json import attribute_to_json
from adapter.presentity import PUBLICATION, PresentityService
from adapter.store import MemoryStore, StoreError
from pidf import Activity, AttributeType, Place, PresenceAttribute, PresRules, decode
from sip import PublicationConfirmed, PublicationFailed, PublicationRemoved
from sip.aio import RequestFailed, RequestTimedOut

ALICE = "sip:alice@example.com"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NOW = 42.0  # the endpoint's clock (loop time), which does not move here
TIMEOUT = 3.0  # [sip] request_timeout


class FakePublication:
    """A publication handle: each PUBLISH is answered on the next loop turn —
    confirmed, or failed while the endpoint has ``failures`` to give."""

    def __init__(self, endpoint: FakeEndpoint, publication_id: int, body: bytes,
                 retry_until: float | None, on_event: Callable[[Any], None]) -> None:
        self.endpoint = endpoint
        self.id = publication_id
        self.body = body
        self.on_event = on_event
        self.retry_until = retry_until
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outcome = self._answer(retry_until)

    def modify(self, body: bytes, *, retry_until: float | None = None) -> asyncio.Future[Any]:
        self.body = body
        self.retry_until = retry_until
        self.endpoint.sent.append(("modify", self.id, body))
        self.outcome = self._answer(retry_until)
        return self.outcome

    def unpublish(self) -> asyncio.Future[None]:
        self.endpoint.sent.append(("unpublish", self.id, None))
        # What the store held when the Expires: 0 went out.
        self.endpoint.stored_at_unpublish = self.endpoint.store.load(PUBLICATION).get(ALICE)

        def removed() -> None:
            self.on_event(PublicationRemoved(self.id))
            self.ended.set_result(None)

        asyncio.get_running_loop().call_soon(removed)
        return self.ended

    def _answer(self, retry_until: float | None) -> asyncio.Future[Any]:
        """As SipEndpoint's handle settles an outcome (tests/sip/aio/test_handles.py)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def answer() -> None:
            while self.endpoint.failures:
                error, retry_at = self.endpoint.failures.pop(0)
                self.on_event(PublicationFailed(self.id, error.status, error.reason, retry_at))
                if retry_until is None or retry_at is None or retry_at >= retry_until:
                    if not future.done():
                        future.set_exception(error)
                    return
            event = PublicationConfirmed(self.id, f"etag-{self.id}", 3600)
            self.on_event(event)
            if not future.done():
                future.set_result(event)

        asyncio.get_running_loop().call_soon(answer)
        return future


class FakeEndpoint:
    """What the service asks of SipEndpoint for publications; every request is recorded."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.sent: list[tuple[str, int, Any]] = []  # (what, publication id, body or etag)
        self.stored_at_unpublish: Any = "never"
        #: Failures the next PUBLISHes get, each with when the publication retries.
        self.failures: list[tuple[RequestFailed, float | None]] = []
        self.publications: list[FakePublication] = []

    def now(self) -> float:
        return NOW

    def publish(self, aor: Any, body: bytes, *, etag: str | None = None,
                etag_expires_at: float | None = None, retry_until: float | None = None,
                on_event: Callable[[Any], None]) -> FakePublication:
        publication_id = len(self.publications) + 1
        self.sent.append(("publish", publication_id, (body, etag)))
        handle = FakePublication(self, publication_id, body, retry_until, on_event)
        self.publications.append(handle)
        return handle


class FakeXcap:
    """Every rules change is stored at once; the changes are counted."""

    def __init__(self) -> None:
        self.updates = 0

    async def update(self, presentity: str, change: Callable[[PresRules], PresRules]) -> PresRules:
        self.updates += 1
        return change(PresRules())


class Liveness:
    """What the service reads of ServerLiveness: is the server known to be down?"""

    reachable = True


class World:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()
        self.sip = FakeEndpoint(self.store)
        self.xcap = FakeXcap()
        self.liveness = Liveness()
        self.service = PresentityService(
            self.sip,  # type: ignore[arg-type]
            self.xcap,  # type: ignore[arg-type]
            store=self.store,
            liveness=self.liveness,  # type: ignore[arg-type]
            request_timeout=TIMEOUT,
            clock=lambda: T0,
        )

    def stored(self) -> Any:
        return self.store.load(PUBLICATION).get(ALICE)

    def sent(self) -> list[tuple[str, Any]]:
        return [(what, extra) for what, _, extra in self.sip.sent]


def run(scenario: Callable[[World], Awaitable[None]]) -> None:
    asyncio.run(scenario(World()))


def busy() -> PresenceAttribute:
    return PresenceAttribute(Activity.BUSY, T0)


def office() -> PresenceAttribute:
    return PresenceAttribute(Place.OFFICE, T0)


def test_withdrawing_everything_stores_nothing_published_first_then_forgets_it() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(), office()))
        assert w.stored()["etag"] == "etag-1"
        await w.service.withdraw(ALICE)
        # Before the Expires: 0 went out the store already said "nothing"
        # (with the entity tag, so that a restart can end the publication).
        assert w.sip.stored_at_unpublish == {
            "attributes": [], "etag": "etag-1", "etag_expires": T0.timestamp() + 3600,
        }
        await asyncio.sleep(0)
        assert w.stored() is None  # the publication is over: nothing to keep
        assert [what for what, _ in w.sent()] == ["publish", "unpublish"]
        # A Publish afterwards starts a new publication with only what it names.
        await w.service.publish(ALICE, (office(),))
        what, (body, etag) = w.sent()[-1]
        assert (what, etag) == ("publish", None)
        assert decode(body).attributes == (office(),)

    run(scenario)


def test_withdrawing_some_attributes_publishes_the_rest() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(), office()))
        await w.service.withdraw(ALICE, frozenset({AttributeType.PLACE}))
        what, body = w.sent()[-1]
        assert what == "modify" and decode(body).attributes == (busy(),)
        assert w.stored()["attributes"] == [attribute_to_json(busy())]
        # Nothing of that kind is published: nothing is sent.
        await w.service.withdraw(ALICE, frozenset({AttributeType.SPHERE}))
        assert len(w.sent()) == 2
        # Withdrawing the last one ends the publication.
        await w.service.withdraw(ALICE, frozenset({AttributeType.ACTIVITY}))
        assert w.sent()[-1][0] == "unpublish"

    run(scenario)


def test_withdrawing_what_was_never_published_sends_nothing() -> None:
    async def scenario(w: World) -> None:
        await w.service.withdraw(ALICE)
        assert w.sent() == [] and w.stored() is None

    run(scenario)


def test_a_restart_ends_a_withdrawal_that_was_cut_short() -> None:
    async def scenario(w: World) -> None:
        # What a crash between the store write and the un-PUBLISH's answer leaves.
        alive = (T0 + timedelta(seconds=600)).timestamp()
        w.store.put(PUBLICATION, ALICE, {"attributes": [], "etag": "e1", "etag_expires": alive})
        await w.service.restore()
        (publish, unpublish) = w.sent()
        assert publish[0] == "publish" and publish[1][1] == "e1"  # the server's publication
        assert decode(publish[1][0]).attributes == ()  # with nothing in it
        assert unpublish[0] == "unpublish"
        await asyncio.sleep(0)
        assert w.stored() is None

    run(scenario)


def test_a_restart_forgets_a_withdrawal_whose_publication_expired_anyway() -> None:
    async def scenario(w: World) -> None:
        gone = (T0 - timedelta(seconds=1)).timestamp()
        w.store.put(PUBLICATION, ALICE, {"attributes": [], "etag": "e1", "etag_expires": gone})
        await w.service.restore()
        assert w.sent() == [] and w.stored() is None

    run(scenario)


# -- re-publication after a rules change ---------------------------------------------

BOB = "sip:bob@example.com"


@pytest.fixture
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter.publisher, "REPUBLISH_DELAY", 0.0)


async def quiet() -> None:
    """Until every task but this one has finished, and a timer due now has fired."""
    current = asyncio.current_task()
    turns = 0
    while turns < 3:  # the timer's callback, then the task it starts
        await asyncio.sleep(0)
        turns += 1
        while others := [t for t in asyncio.all_tasks() if t is not current]:
            await asyncio.gather(*others)
            turns = 0


def test_rules_changes_in_a_row_publish_the_same_body_again_once(no_delay: None) -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(), office()))
        (_, (published, _)), = w.sent()
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await w.service.authorize(ALICE, BOB, {AttributeType.ACTIVITY: True})
        await w.service.block(ALICE, "sip:carol@example.com")
        # Answered before the re-publication went out.
        assert len(w.sent()) == 1
        await quiet()
        assert w.xcap.updates == 3
        assert w.sent()[1:] == [("modify", published)]
        # A later change is news again.
        await w.service.authorize(ALICE, BOB, {AttributeType.SPHERE: True})
        await quiet()
        assert w.sent()[1:] == [("modify", published)] * 2

    run(scenario)


def test_a_rules_change_without_a_publication_publishes_nothing(no_delay: None) -> None:
    async def scenario(w: World) -> None:
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await w.service.block(ALICE, "sip:carol@example.com")
        await quiet()
        assert w.xcap.updates == 2 and w.sent() == []

    run(scenario)


def test_a_publish_before_the_re_publication_is_what_goes_out_again(no_delay: None) -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await w.service.publish(ALICE, (office(),))
        await quiet()
        (_, last), (_, again) = w.sent()[1:]
        assert again == last and decode(again).attributes == (busy(), office())

    run(scenario)


def test_a_withdrawal_before_the_re_publication_is_not_undone(no_delay: None) -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await w.service.withdraw(ALICE)
        await quiet()
        assert [what for what, _ in w.sent()] == ["publish", "unpublish"]
        assert w.stored() is None

    run(scenario)


def test_closing_stops_a_waiting_re_publication() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await w.service.close()
        await quiet()
        assert [what for what, _ in w.sent()] == ["publish"]

    run(scenario)


# -- Publish while the publication retries -----------------------------------------
# (That a 2xx to an earlier PUBLISH is not a later one's answer is the handle's
# business: tests/sip/aio/test_handles.py.)


def test_a_publish_waits_for_a_retry_due_within_the_request_timeout() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        w.sip.failures.append((RequestFailed("PUBLISH", 500, "database is locked"), NOW + 1.0))
        await w.service.publish(ALICE, (office(),))  # the retry's outcome: confirmed
        assert w.stored()["attributes"] and not w.sip.failures
        assert w.sip.publications[0].retry_until == NOW + TIMEOUT

    run(scenario)


def test_a_publish_answers_the_failure_when_the_retry_is_due_after_the_timeout() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        w.sip.failures.append((RequestFailed("PUBLISH", 500, "database is locked"),
                               NOW + TIMEOUT))
        with pytest.raises(RequestFailed, match="500"):
            await w.service.publish(ALICE, (office(),))

    run(scenario)


def test_a_publish_while_the_server_is_down_and_the_publication_retries_fails_at_once() -> None:
    # The server came back, answered the PUBLISH sent during the outage and then
    # 500 to the next one (measured: a Kamailio just started); the adapter's
    # probe has not seen it back yet.  The Publish must get its 504 at once,
    # not retry the refusal of a server known to be down over and over without
    # yielding — that froze the whole adapter.
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        w.sip.failures.append((RequestFailed("PUBLISH", 500, "database is locked"), NOW + 1.0))
        w.liveness.reachable = False
        with pytest.raises(RequestTimedOut, match="presence server unreachable"):
            await w.service.publish(ALICE, (office(),))
        # Kept all the same: the publication sends it when it retries.
        assert w.sent()[-1][0] == "modify"
        assert len(w.stored()["attributes"]) == 2

    run(scenario)


def test_a_rules_change_while_the_publication_fails_sends_nothing_more(no_delay: None) -> None:
    # It retries with its body by itself: a modify now would only queue behind it.
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(),))
        w.sip.failures.append((RequestFailed("PUBLISH", 500, "database is locked"), None))
        with pytest.raises(RequestFailed, match="500"):
            await w.service.publish(ALICE, (office(),))
        await w.service.authorize(ALICE, BOB, {AttributeType.PLACE: True})
        await quiet()
        assert [what for what, _ in w.sent()] == ["publish", "modify"]

    run(scenario)


class EtagRefusingStore(MemoryStore):
    """Refuses the write of a confirmed entity tag: at once, or a turn later."""

    def __init__(self, later: bool) -> None:
        super().__init__()
        self.later = later

    def update(self, kind: str, key: str, fields: dict[str, Any]) -> asyncio.Future[None]:
        if "etag" not in fields:
            return super().update(kind, key, fields)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        error = StoreError("disk full (refused by the test)")
        if self.later:
            asyncio.get_running_loop().call_soon(future.set_exception, error)
        else:
            future.set_exception(error)
        return future


@pytest.mark.parametrize("later", [False, True], ids=["written-at-once", "written-a-turn-later"])
def test_a_publish_whose_entity_tag_cannot_be_written_fails(later: bool) -> None:
    # The answer waits for the write of the confirmed entity tag, whether it
    # is done by the time the confirmation wakes the call or not.
    async def scenario() -> None:
        w = World(EtagRefusingStore(later))
        with pytest.raises(StoreError):
            await w.service.publish(ALICE, (busy(),))
        assert [what for what, _ in w.sent()] == ["publish"]

    asyncio.run(scenario())


def test_a_published_presentity_keeps_no_leftovers_of_its_requests() -> None:
    async def scenario(w: World) -> None:
        await w.service.publish(ALICE, (busy(), office()))
        await asyncio.sleep(0)
        entry = w.service._presentities[ALICE]
        # The written entity tag's write and the watcherinfo state (nobody
        # asked about watchers) are not kept: ten thousand publications would
        # each hold them.
        assert entry.etag_saved is None
        assert entry.winfo is None and entry.winfo_state is None and entry.winfo_ready is None
        assert not hasattr(entry, "__dict__")
        # What is stored is whole all the same.
        assert w.stored() == {
            "attributes": [attribute_to_json(busy()), attribute_to_json(office())],
            "etag": "etag-1", "etag_expires": T0.timestamp() + 3600,
        }

    run(scenario)
