"""The sans-IO UserAgent driven like a network: bytes out, bytes in, a manual clock."""

import gc
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip import digest
from sip.errors import LocalProtocolError
from sip.headers import Via
from sip.message import Headers, Request, Response, parse_message
from sip.publication import (
    PublicationConfirmed,
    PublicationFailed,
    PublicationRemoved,
    PublicationState,
    RefreshPolicy,
)
from sip.subscription import NotifyReceived, SubscriptionAccepted, SubscriptionTerminated
from sip.transaction import MAGIC_COOKIE
from sip.uri import SipURI
from sip.useragent import (
    BUSY,
    LATE_COPIES,
    Destination,
    MessageDropped,
    OptionsAnswered,
    OptionsFailed,
    RequestRefused,
    UserAgent,
    UserAgentEvent,
    Window,
    server_destination,
)

ALICE = SipURI.parse("sip:alice@example.com")
BOB = SipURI.parse("sip:bob@example.com")
PIDF = b"<presence entity='sip:alice@example.com'/>"
SERVER_ADDR = Destination("udp", "127.0.0.1", 5070)
# NOTIFYs come from the server's port; the answer goes back to the source.
NOTIFIER_ADDR = Destination("udp", "127.0.0.1", 5071)


class Net:
    """The far side of the user agent: the presence server and a clock."""

    def __init__(
        self,
        transport: str = "udp",
        seed: int = 1,
        *,
        window: Window | None = None,
        policy: RefreshPolicy = RefreshPolicy(),
    ) -> None:
        self.now = 0.0
        self.transport = transport
        server = "sip:127.0.0.1:5070" + (";transport=tcp" if transport == "tcp" else "")
        self.ua = UserAgent(
            local=Destination("tcp" if transport == "tcp" else "udp", "127.0.0.1", 5080),
            server=SipURI.parse(server),
            rng=random.Random(seed),
            window=window,
            policy=policy,
        )
        self.notify_cseq = 0

    # -- what the user agent sent ------------------------------------------

    def sent(self) -> list[tuple[Request | Response, Destination]]:
        return [(parse_message(data), dest) for data, dest in self.ua.datagrams_to_send()]

    def request(self) -> Request:
        """The one request the user agent sent, to the server."""
        out = self.sent()
        assert len(out) == 1, out
        message, dest = out[0]
        assert isinstance(message, Request)
        assert dest == Destination(self.transport, "127.0.0.1", 5070)  # type: ignore[arg-type]
        return message

    def response_to(self, source: Destination = NOTIFIER_ADDR) -> Response:
        out = self.sent()
        assert len(out) == 1, out
        message, dest = out[0]
        assert isinstance(message, Response)
        if self.transport == "tcp":
            source = Destination("tcp", source.host, source.port)
        assert dest == source
        return message

    def events(self) -> list[UserAgentEvent]:
        out = []
        while (event := self.ua.next_event()) is not None:
            out.append(event)
        return out

    # -- what the server answers -------------------------------------------

    def feed(self, message: Request | Response, source: Destination = SERVER_ADDR) -> None:
        if self.transport == "tcp":
            source = Destination("tcp", source.host, source.port)
        self.ua.receive(bytes(message), source, self.now)

    def reply(self, request: Request, status: int, *headers: tuple[str, str]) -> Response:
        response = request.response(status, to_tag="srvtag")
        for name, value in headers:
            response.headers.add(name, value)
        self.feed(response)
        return response

    def notify(
        self,
        subscribe: Request,
        state: str,
        *,
        body: bytes = b"",
        event: str | None = None,
        to_tag: str | None = None,
    ) -> Request:
        """Send a NOTIFY in the dialog ``subscribe`` created (the server's side)."""
        request = self.build_notify(subscribe, state, body=body, event=event, to_tag=to_tag)
        self.feed(request, NOTIFIER_ADDR)
        return request

    def build_notify(
        self,
        subscribe: Request,
        state: str,
        *,
        body: bytes = b"",
        event: str | None = None,
        to_tag: str | None = None,
    ) -> Request:
        self.notify_cseq += 1
        h = Headers()
        h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5071;branch={MAGIC_COOKIE}n{self.notify_cseq}")
        h.add("Max-Forwards", "70")
        h.add("From", str(subscribe.to.with_tag("srvtag")))
        local = subscribe.from_
        h.add("To", str(local if to_tag is None else local.with_tag(to_tag)))
        h.add("Call-ID", subscribe.call_id)
        h.add("CSeq", f"{self.notify_cseq} NOTIFY")
        h.add("Event", event or (subscribe.event and str(subscribe.event)) or "presence")
        h.add("Subscription-State", state)
        h.add("Contact", "<sip:presence@127.0.0.1:5070>")
        if body:
            h.add("Content-Type", "application/pidf+xml")
        return Request("NOTIFY", subscribe.contacts[0].sip_uri, h, body)

    # -- time ----------------------------------------------------------------

    def run_until(self, instant: float) -> None:
        """Fire every timer due up to ``instant``, then stand at ``instant``."""
        while (deadline := self.ua.get_timer()) is not None and deadline <= instant:
            self.now = max(self.now, deadline)
            self.ua.handle_timer(self.now)
        self.now = instant


def subscribed(net: Net, subscriber: SipURI = BOB, target: SipURI = ALICE) -> tuple[int, Request]:
    """Subscribe, answer 200 and NOTIFY active; returns (id, SUBSCRIBE)."""
    sub_id = net.ua.subscribe(subscriber, target, net.now)
    subscribe = net.request()
    net.reply(subscribe, 200, ("Expires", "3600"), ("Contact", "<sip:presence@127.0.0.1:5070>"))
    net.notify(subscribe, "active;expires=3600", body=PIDF)
    assert net.response_to().status == 200
    events = net.events()
    assert events[0] == SubscriptionAccepted(sub_id, 3600)
    assert isinstance(events[1], NotifyReceived)
    return sub_id, subscribe


# -- what goes out -----------------------------------------------------------------


def test_publish_request_headers() -> None:
    net = Net()
    net.ua.publish(ALICE, PIDF, net.now)
    request = net.request()
    assert request.method == "PUBLISH" and request.body == PIDF
    (via,) = request.vias
    assert str(via).startswith("SIP/2.0/UDP 127.0.0.1:5080;")
    assert via.branch is not None and via.branch.startswith(MAGIC_COOKIE)
    assert len(via.branch) > len(MAGIC_COOKIE) + 8
    assert via.rport_requested
    assert request.max_forwards == 70
    assert request.headers.get("User-Agent") == "presence-adapter"


def test_refresh_timers_go_when_answered() -> None:
    # Timer E of each request is filed under its transaction (RFC 3261
    # §17.1.2.2) and goes with the answer: held subscriptions leave one
    # deadline each, and nothing of the transactions that ended.
    net = Net()
    sub_id, _ = subscribed(net)
    net.ua.refresh(sub_id, net.now)
    refresh = net.request()
    assert refresh.cseq.seq == 2  # RFC 6665 §4.1.2.1: in the dialog, CSeq + 1
    assert net.ua.get_timer() == net.now + 0.5  # Timer E
    net.reply(refresh, 200, ("Expires", "3600"))
    assert len(net.ua._client_timers) == 0 and net.ua.transactions_in_flight == 0
    assert net.ua.get_timer() != net.now + 0.5


def test_every_transaction_gets_a_new_branch() -> None:
    net = Net()
    branches = set()
    for _ in range(5):
        net.ua.publish(ALICE, PIDF, net.now)
        branches.add(net.request().vias[0].branch)
    net.ua.options(net.now)
    branches.add(net.request().vias[0].branch)
    assert len(branches) == 6


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_subscribe_contact(transport: str) -> None:
    net = Net(transport)
    net.ua.subscribe(BOB, ALICE, net.now)
    request = net.request()
    assert request.method == "SUBSCRIBE"
    assert request.vias[0].transport.upper() == transport.upper()
    (contact,) = request.contacts
    uri = contact.sip_uri
    assert (uri.user, uri.host, uri.port) == ("bob", "127.0.0.1", 5080)
    assert uri.transport == ("tcp" if transport == "tcp" else None)
    assert "NOTIFY" in (request.headers.get_all("Allow"))


def test_a_single_subscription_says_nothing_of_eventlist() -> None:
    net = Net("udp")
    net.ua.subscribe(BOB, ALICE, net.now)
    request = net.request()
    assert request.headers.get_all("Accept") == ["application/pidf+xml"]
    assert request.headers.get_all("Supported") == []


def test_a_list_subscription_supports_eventlist_in_every_subscribe() -> None:
    # RFC 4662 §5: Supported: eventlist, and the list's three media types.
    net = Net("udp")
    sub_id = net.ua.subscribe(BOB, ALICE, net.now, eventlist=True)
    subscribe = net.request()
    assert subscribe.headers.get_all("Supported") == ["eventlist"]
    assert subscribe.headers.get_all("Accept") == [
        "application/pidf+xml",
        "application/rlmi+xml",
        "multipart/related",
    ]
    net.reply(subscribe, 200, ("Expires", "3600"), ("Contact", "<sip:rls@127.0.0.1:5070>"))
    net.notify(subscribe, "active;expires=3600")
    assert net.response_to().status == 200
    net.events()
    net.ua.refresh(sub_id, net.now)
    refresh = net.request()
    assert refresh.to.tag == "srvtag"
    assert refresh.headers.get_all("Supported") == ["eventlist"]
    assert len(refresh.headers.get_all("Accept")) == 3


# -- publications end to end ----------------------------------------------------------


def test_publication_confirm_refresh_remove() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    net.reply(publish, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e1", 3600)]
    assert net.sent() == []
    # The transaction lingers for Timer K, then the refresh is the only timer.
    net.run_until(100.0)
    timer = net.ua.get_timer()
    assert timer is not None and 2700.0 <= timer <= 3568.0
    net.run_until(timer)
    refresh = net.request()
    assert refresh.headers.get("SIP-If-Match") == "e1" and refresh.body == b""
    assert refresh.cseq.seq == publish.cseq.seq + 1
    net.reply(refresh, 200, ("SIP-ETag", "e2"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e2", 3600)]
    net.ua.unpublish(pub_id, net.now)
    remove = net.request()
    assert remove.expires == 0 and remove.headers.get("SIP-If-Match") == "e2"
    net.reply(remove, 200, ("SIP-ETag", "e3"), ("Expires", "0"))
    assert net.events() == [PublicationRemoved(pub_id)]
    assert net.ua.publication(pub_id) is None
    # Removing it again (a handle ending what is already over) sends nothing.
    net.ua.unpublish(pub_id, net.now)
    assert net.sent() == [] and net.events() == []


def test_an_abandoned_publication_sends_nothing_more() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    net.reply(publish, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    net.events()
    net.ua.modify(pub_id, b"<second/>", net.now)
    modify = net.request()
    net.ua.abandon(pub_id)
    assert net.ua.publication(pub_id) is None
    # The answer to what was out is dropped, and no refresh ever goes.
    net.reply(modify, 200, ("SIP-ETag", "e2"), ("Expires", "3600"))
    assert net.events() == []
    net.run_until(7200.0)
    assert net.sent() == []
    assert net.ua.get_timer() is None


def test_modify_through_the_user_agent() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    net.ua.modify(pub_id, b"<second/>", net.now)
    assert net.sent() == []  # one PUBLISH outstanding at a time
    net.reply(publish, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    modify = net.request()
    assert modify.body == b"<second/>" and modify.headers.get("SIP-If-Match") == "e1"


def test_udp_retransmits_publish_until_answered() -> None:
    net = Net()
    net.ua.publish(ALICE, PIDF, net.now)
    first = net.ua.datagrams_to_send()
    assert len(first) == 1
    data = first[0][0]
    instants = []
    while net.now < 10.0:
        deadline = net.ua.get_timer()
        assert deadline is not None
        net.run_until(deadline)
        for resent, dest in net.ua.datagrams_to_send():
            assert resent == data and dest == SERVER_ADDR
            instants.append(net.now)
    # RFC 3261 §17.1.2.2: Timer E at T1, doubling up to T2 (4 s).
    assert instants == [0.5, 1.5, 3.5, 7.5, 11.5]
    net.reply(parse_message(data), 200, ("SIP-ETag", "e"), ("Expires", "3600"))  # type: ignore[arg-type]
    assert isinstance(net.events()[0], PublicationConfirmed)
    net.run_until(600.0)
    assert net.sent() == []  # no retransmission after the answer


def test_publish_timeout_and_retry() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.run_until(31.9)
    net.sent()
    assert net.events() == []
    net.run_until(32.0)  # Timer F = 64*T1
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed)
    assert (failed.publication_id, failed.status, failed.reason) == (pub_id, None, "timeout")
    # The first retry after 1 s, stretched by up to 2x (RefreshPolicy.backoff).
    assert failed.retry_at is not None and 33.0 <= failed.retry_at < 34.0
    net.sent()
    net.run_until(failed.retry_at)
    retry = net.request()
    assert retry.method == "PUBLISH" and retry.body == PIDF


def test_responses_to_nothing_are_ignored() -> None:
    net = Net()
    net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    stray = publish.response(200, to_tag="x")
    stray.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKother")
    net.feed(stray)
    assert net.events() == []
    # The right answer still works, and a retransmitted one is absorbed.
    net.reply(publish, 200, ("SIP-ETag", "e"), ("Expires", "60"))
    net.reply(publish, 200, ("SIP-ETag", "e"), ("Expires", "60"))
    assert len(net.events()) == 1


# -- incoming requests -----------------------------------------------------------------


def test_notify_is_answered_at_once_and_retransmissions_from_the_transaction() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    notify = net.notify(subscribe, "active;expires=3000", body=b"<x/>")
    response = net.response_to(NOTIFIER_ADDR)
    assert response.status == 200
    assert response.call_id == notify.call_id and response.cseq == notify.cseq
    assert response.vias[0].branch == notify.vias[0].branch
    (event,) = net.events()
    assert isinstance(event, NotifyReceived) and event.body == b"<x/>"
    assert event.subscription_id == sub_id
    answered = net.ua.counters.answered[("NOTIFY", 200)]
    # The same NOTIFY again (a UDP retransmission): the same answer, no event.
    net.feed(notify, NOTIFIER_ADDR)
    again = net.response_to(NOTIFIER_ADDR)
    assert bytes(again) == bytes(response)
    assert net.events() == []
    # Counted once, as the request it is, not per copy.
    assert net.ua.counters.answered == {("NOTIFY", 200): answered}


def test_a_notify_resent_after_its_answer_refreshes_the_subscription() -> None:
    # The notifier sent it again LATE_COPIES times after our 200: the answer
    # came later than it waits, and it may have dropped the dialog on a 408
    # (tests/data/overload/README.md).  The refresh's 481 says so.
    net = Net()
    sub_id, subscribe = subscribed(net)
    notify = net.notify(subscribe, "active;expires=3600", body=b"<x/>")
    assert net.response_to().status == 200
    net.events()
    for _ in range(LATE_COPIES - 1):
        net.feed(notify, NOTIFIER_ADDR)
        assert net.response_to().status == 200  # absorbed, nothing else sent
    net.feed(notify, NOTIFIER_ADDR)
    out = net.sent()
    assert [type(m) for m, _ in out] == [Response, Request]
    refresh = out[1][0]
    assert isinstance(refresh, Request) and refresh.method == "SUBSCRIBE"
    assert refresh.to.tag == "srvtag" and refresh.call_id == subscribe.call_id
    assert net.ua.counters.late_answers == 1
    # More copies ask nothing more; the 481 ends it for the owner to re-make.
    net.feed(notify, NOTIFIER_ADDR)
    assert [type(m) for m, _ in net.sent()] == [Response]
    net.reply(refresh, 481)
    assert net.events() == [SubscriptionTerminated(sub_id, "dialog-gone", 481)]


def test_a_notify_resent_fewer_times_asks_nothing() -> None:
    net = Net()
    _, subscribe = subscribed(net)
    notify = net.notify(subscribe, "active;expires=3600", body=b"<x/>")
    net.sent()
    for _ in range(LATE_COPIES - 1):
        net.feed(notify, NOTIFIER_ADDR)
    assert [type(m) for m, _ in net.sent()] == [Response] * (LATE_COPIES - 1)
    assert net.ua.counters.late_answers == 0
    # Past Timer J the record and its count go together.
    net.run_until(net.now + 40.0)
    assert net.ua._resent == {}


def test_notify_for_an_unknown_dialog_is_481() -> None:
    net = Net()
    _, subscribe = subscribed(net)
    net.notify(subscribe, "active", to_tag="not-ours")
    assert net.response_to().status == 481
    assert net.events() == []


def test_a_subscription_s_call_id_is_its_from_tag_and_unique_per_dialog() -> None:
    # RFC 3261 §8.1.1.4 (a globally unique Call-ID) and §19.3 (a random tag of
    # at least 32 bits): one random token serves as both.
    net = Net()
    tokens = set()
    for n in range(50):
        net.ua.subscribe(BOB, SipURI.parse(f"sip:p{n}@example.com"), net.now)
        subscribe = net.request()
        assert subscribe.from_.tag == subscribe.call_id
        assert len(subscribe.call_id) >= 8
        tokens.add(subscribe.call_id)
    assert len(tokens) == 50


def test_notify_with_a_dialog_s_call_id_but_another_to_tag_is_481() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    # The Call-ID alone does not make the dialog (RFC 3261 §12.2.2).
    net.notify(subscribe, "terminated;reason=noresource", to_tag=subscribe.call_id + "x")
    assert net.response_to().status == 481
    net.notify(subscribe, "active", to_tag=None)
    assert net.response_to().status == 200
    assert net.ua.subscription(sub_id) is not None


def test_subscriptions_share_their_empty_records() -> None:
    # Held by the hundred thousand: what is the same in all of them is one object.
    net = Net()
    first, _ = subscribed(net, target=ALICE)
    second, _ = subscribed(net, target=SipURI.parse("sip:carol@example.com"))
    a, b = net.ua.subscription(first), net.ua.subscription(second)
    assert a is not None and b is not None
    assert a._missing is b._missing
    assert a._timer_n is b._timer_n


def test_notify_with_the_wrong_event_is_489() -> None:
    net = Net()
    _, subscribe = subscribed(net)
    net.notify(subscribe, "active", event="dialog")
    response = net.response_to()
    assert response.status == 489
    assert "presence" in (response.headers.get("Allow-Events") or "")
    assert net.events() == []


def test_notify_with_a_malformed_header_is_answered_400() -> None:
    net = Net()
    _, subscribe = subscribed(net)
    notify = net.notify(subscribe, "active;expires=soon")
    assert net.response_to().status == 400
    assert not any(isinstance(e, NotifyReceived) for e in net.events())
    # The server transaction absorbs the retransmission with the same answer.
    net.feed(notify, NOTIFIER_ADDR)
    assert net.response_to().status == 400


def test_notify_after_the_end_is_481() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    net.notify(subscribe, "terminated;reason=noresource")
    assert net.response_to().status == 200
    assert net.events()[-1] == SubscriptionTerminated(sub_id, "noresource")
    net.notify(subscribe, "active")
    assert net.response_to().status == 481
    assert net.ua.subscription(sub_id) is None


def _request(method: str, branch: str = "z9hG4bKpeer1") -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5071;branch={branch}")
    h.add("Max-Forwards", "70")
    h.add("From", "<sip:presence@127.0.0.1>;tag=p1")
    h.add("To", "<sip:127.0.0.1:5080>")
    h.add("Call-ID", f"{method.lower()}-call")
    h.add("CSeq", f"1 {method}")
    return Request(method, SipURI.parse("sip:127.0.0.1:5080"), h)


def test_options_is_answered_200() -> None:
    net = Net()
    net.feed(_request("OPTIONS"), NOTIFIER_ADDR)
    response = net.response_to()
    assert response.status == 200
    assert response.to.tag is not None
    assert "NOTIFY" in response.headers.get_all("Allow")
    assert "application/pidf+xml" in response.headers.get_all("Accept")
    assert "presence" in response.headers.get_all("Allow-Events")


@pytest.mark.parametrize("method", ["MESSAGE", "SUBSCRIBE", "PUBLISH", "INVITE"])
def test_other_methods_are_405(method: str) -> None:
    net = Net()
    net.feed(_request(method), NOTIFIER_ADDR)
    response = net.response_to()
    assert response.status == 405
    assert set(response.headers.get_all("Allow")) == {"NOTIFY", "OPTIONS"}
    assert net.events() == []


def test_ack_and_keepalives_are_ignored() -> None:
    net = Net()
    net.feed(_request("ACK"), NOTIFIER_ADDR)
    net.ua.receive(b"\r\n\r\n", NOTIFIER_ADDR, net.now)
    assert net.sent() == [] and net.events() == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\xff garbage",
        b"NOTIFY sip:x SIP/2.0\r\n\r\n",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4\r\n\r\n",
        b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=nocookie\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
    ],
)
def test_garbage_is_dropped_with_an_event(data: bytes) -> None:
    net = Net()
    net.ua.receive(data, NOTIFIER_ADDR, net.now)
    (event,) = net.events()
    assert isinstance(event, MessageDropped) and event.source == NOTIFIER_ADDR
    assert net.sent() == []


_SIPISH = st.text(alphabet=st.sampled_from(list(" ;,:<>=\"@/tag0123456789zZ\r\n\t\x00é")))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_answers_and_notifies_never_raise(data: st.DataObject) -> None:
    """Garbage from the network ends as an answer, a dropped message or a failure."""
    net = Net()
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    subscribe = net.request()
    ok = subscribe.response(200, to_tag="srvtag")
    ok.headers.add("Expires", "3600")
    ok.headers.add("Contact", "<sip:presence@127.0.0.1:5070>")
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    pub_ok = publish.response(200, to_tag="srvtag")
    pub_ok.headers.add("SIP-ETag", "e1")
    pub_ok.headers.add("Expires", "60")
    notify = net.build_notify(subscribe, "active;expires=60", body=PIDF)
    for message, source in ((ok, SERVER_ADDR), (pub_ok, SERVER_ADDR), (notify, NOTIFIER_ADDR)):
        raw = bytes(message)
        start = data.draw(st.integers(0, len(raw)))
        end = data.draw(st.integers(start, min(len(raw), start + 40)))
        junk = data.draw(_SIPISH).encode("utf-8")
        net.ua.receive(raw[:start] + junk + raw[end:], source, net.now)
        # A request we could parse is answered, whatever else was wrong.
        out = net.sent()
        assert len(out) <= 1
        if message is notify and out:
            assert isinstance(out[0][0], Response) and out[0][1] == NOTIFIER_ADDR
    net.run_until(200.0)
    net.sent()
    # Every request we took in was answered and its transaction is over.
    assert net.ua._completed == {} and net.ua._expiring == {}
    # Whatever happened, each owner is done, has a deadline, or waits on a
    # transaction that is still running: none waits for an answer that
    # cannot come.
    waiting = {id(o.owner) for o in net.ua._outgoing.values()}
    subscription = net.ua.subscription(sub_id)
    assert subscription is None or subscription.get_timer() is not None
    publication = net.ua.publication(pub_id)
    assert publication is not None
    if publication.state is PublicationState.SENDING:
        assert id(publication) in waiting
    else:
        assert publication.state in (PublicationState.PUBLISHED, PublicationState.RETRY_WAIT)
    ends = [e for e in net.events() if isinstance(e, SubscriptionTerminated)]
    assert len(ends) <= 1


# -- OPTIONS probes -------------------------------------------------------------------


def test_options_probe_answered_with_rtt() -> None:
    net = Net()
    net.now = 10.0
    probe = net.ua.options(net.now)
    request = net.request()
    assert request.method == "OPTIONS" and str(request.uri) == "sip:127.0.0.1:5070"
    net.now = 10.25
    net.reply(request, 200)
    assert net.events() == [OptionsAnswered(probe, 200, 0.25)]


def test_options_probe_timeout() -> None:
    net = Net()
    probe = net.ua.options(net.now)
    net.run_until(40.0)
    assert net.events() == [OptionsFailed(probe, "timeout")]


# -- digest authentication (RFC 3261 §22) -------------------------------------------------

CREDS = digest.Credentials("alice", "s3cret")
CHALLENGE = 'Digest realm="example.com", nonce="n0nce1", qop="auth", algorithm=MD5'


def check_authorization(request: Request, header: str, challenge: str) -> digest.Authorization:
    value = request.headers.get(header)
    assert value is not None, request
    auth = digest.Authorization.parse(value)
    assert auth.cnonce is not None and auth.nc is not None
    expected = digest.compute_authorization(
        digest.Challenge.parse(challenge),
        CREDS,
        method=request.method,
        uri=str(request.uri),
        cnonce=auth.cnonce,
        nc=auth.nc,
    )
    assert auth == expected
    return auth


def test_401_is_answered_once_with_authorization() -> None:
    net = Net()
    net.ua.set_credentials(ALICE, CREDS)
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    first = net.request()
    assert "Authorization" not in first.headers
    net.reply(first, 401, ("WWW-Authenticate", CHALLENGE))
    retry = net.request()
    auth = check_authorization(retry, "Authorization", CHALLENGE)
    assert auth.nc == 1 and auth.username == "alice"
    assert retry.cseq.seq == first.cseq.seq + 1
    assert retry.vias[0].branch != first.vias[0].branch
    assert len(retry.vias) == 1
    assert retry.body == PIDF and retry.call_id == first.call_id
    assert net.events() == []  # the owner never saw the 401
    net.reply(retry, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e1", 3600)]

    # Later requests of this identity carry credentials up front, nc counting on.
    net.ua.modify(pub_id, b"<two/>", net.now)
    modify = net.request()
    assert check_authorization(modify, "Authorization", CHALLENGE).nc == 2
    net.reply(modify, 200, ("SIP-ETag", "e2"), ("Expires", "3600"))
    net.ua.subscribe(ALICE, BOB, net.now)
    subscribe = net.request()
    assert check_authorization(subscribe, "Authorization", CHALLENGE).nc == 3
    # Another identity has no credentials.
    net.ua.publish(BOB, PIDF, net.now)
    assert "Authorization" not in net.request().headers


def test_a_second_401_goes_to_the_owner() -> None:
    net = Net()
    net.ua.set_credentials(ALICE, CREDS)
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    retry = net.request()
    net.reply(retry, 401, ("WWW-Authenticate", CHALLENGE.replace("n0nce1", "n0nce2")))
    assert net.sent() == []
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed) and failed.status == 401
    assert failed.publication_id == pub_id
    # The refused challenge is not used up front any more.
    net.ua.publish(ALICE, PIDF, net.now)
    assert "Authorization" not in net.request().headers


def test_a_stale_nonce_is_answered_again() -> None:
    net = Net()
    net.ua.set_credentials(ALICE, CREDS)
    net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    retry = net.request()
    stale = CHALLENGE.replace("n0nce1", "n0nce2") + ", stale=true"
    net.reply(retry, 401, ("WWW-Authenticate", stale))
    again = net.request()
    auth = check_authorization(again, "Authorization", stale)
    assert auth.nonce == "n0nce2" and auth.nc == 1


def test_401_without_credentials_goes_to_the_owner() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    assert net.sent() == []
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed) and failed.publication_id == pub_id


def test_407_uses_proxy_authorization() -> None:
    net = Net()
    net.ua.set_credentials(BOB, digest.Credentials("alice", "s3cret"))
    net.ua.subscribe(BOB, ALICE, net.now)
    first = net.request()
    net.reply(first, 407, ("Proxy-Authenticate", CHALLENGE))
    retry = net.request()
    assert "Authorization" not in retry.headers
    check_authorization(retry, "Proxy-Authorization", CHALLENGE)
    assert retry.cseq.seq == first.cseq.seq + 1
    assert retry.contacts == first.contacts


def test_a_malformed_challenge_fails_the_request() -> None:
    net = Net()
    net.ua.set_credentials(ALICE, CREDS)
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", 'Digest realm="x", nonce="a", nonce="b"'))
    events = net.events()
    assert any(isinstance(e, PublicationFailed) and e.publication_id == pub_id for e in events)
    # The publication is not left waiting for an answer that will never come.
    publication = net.ua.publication(pub_id)
    assert publication is not None and publication.get_timer() is not None


def test_a_malformed_final_response_fails_the_request() -> None:
    net = Net()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    first = net.request()
    net.reply(first, 200, ("SIP-ETag", "e1"), ("Expires", "never"))
    events = net.events()
    assert isinstance(events[0], MessageDropped)
    (failed,) = events[1:]
    assert isinstance(failed, PublicationFailed)
    assert (failed.publication_id, failed.status, failed.reason) == (pub_id, None, "bad-response")
    assert failed.retry_at is not None and 1.0 <= failed.retry_at < 2.0
    net.run_until(failed.retry_at)
    retry = net.request()
    assert retry.method == "PUBLISH" and retry.body == PIDF
    net.reply(retry, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e1", 3600)]
    # The transaction that got the malformed answer ended like any other.
    net.run_until(10.0)
    assert net.ua._outgoing == {}


def test_a_malformed_2xx_to_subscribe_ends_the_subscription_once() -> None:
    net = Net()
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    net.reply(net.request(), 200, ("Expires", "3600"), ("Contact", "<sip:broken"))
    events = net.events()
    assert isinstance(events[0], MessageDropped)
    assert events[1:] == [SubscriptionTerminated(sub_id, "bad-response")]
    net.run_until(100.0)
    assert net.events() == [] and net.ua.subscription_count == 0


# -- subscriptions end to end -------------------------------------------------------------


def test_subscription_refresh_and_unsubscribe() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    timer = net.ua.get_timer()
    net.run_until(100.0)
    timer = net.ua.get_timer()
    assert timer is not None and 2700.0 <= timer <= 3568.0
    net.run_until(timer)
    refresh = net.request()
    assert str(refresh.uri) == "sip:presence@127.0.0.1:5070"
    assert refresh.to.tag == "srvtag"
    assert refresh.cseq.seq == subscribe.cseq.seq + 1
    net.reply(refresh, 200, ("Expires", "3600"))
    assert net.events() == []
    net.ua.unsubscribe(sub_id, net.now)
    unsub = net.request()
    assert unsub.expires == 0 and unsub.to.tag == "srvtag"
    net.reply(unsub, 200, ("Expires", "0"))
    net.notify(subscribe, "terminated;reason=timeout")
    assert net.response_to().status == 200
    assert net.events()[-1] == SubscriptionTerminated(sub_id, "unsubscribed")
    assert net.ua.subscription_count == 0


def test_notify_before_the_2xx_is_matched_to_the_new_dialog() -> None:
    net = Net()
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    subscribe = net.request()
    # RFC 6665 §4.1.2.4: the NOTIFY may overtake the 2xx.
    net.notify(subscribe, "pending;expires=3600")
    assert net.response_to().status == 200
    (event,) = net.events()
    assert isinstance(event, NotifyReceived) and event.state.state == "pending"
    net.reply(subscribe, 200, ("Expires", "3600"))
    assert net.events() == [SubscriptionAccepted(sub_id, 3600)]
    net.notify(subscribe, "active;expires=3600", body=PIDF)
    assert net.response_to().status == 200
    (event,) = net.events()
    assert isinstance(event, NotifyReceived) and event.body == PIDF
    # No Timer N left: nothing ends it before the refresh.
    net.run_until(1000.0)
    assert net.events() == [] and net.ua.subscription_count == 1


def test_subscription_without_notify_times_out_by_timer_n() -> None:
    net = Net()
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    net.reply(net.request(), 200, ("Expires", "3600"))
    assert net.events() == [SubscriptionAccepted(sub_id, 3600)]
    net.run_until(32.0)
    assert net.events() == [SubscriptionTerminated(sub_id, "timeout")]
    assert net.ua.subscription_count == 0


def test_exactly_one_termination_per_subscription() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    net.ua.unsubscribe(sub_id, net.now)
    unsub = net.request()
    net.notify(subscribe, "terminated;reason=deactivated")
    net.sent()
    net.reply(unsub, 200, ("Expires", "0"))
    net.ua.unsubscribe(sub_id, net.now)
    net.run_until(5000.0)
    ends = [e for e in net.events() if isinstance(e, SubscriptionTerminated)]
    assert ends == [SubscriptionTerminated(sub_id, "unsubscribed")]


# -- TCP --------------------------------------------------------------------------------


def test_tcp_has_no_retransmissions() -> None:
    net = Net("tcp")
    net.ua.publish(ALICE, PIDF, net.now)
    request = net.request()
    assert request.vias[0].transport.upper() == "TCP"
    assert net.ua.get_timer() == 32.0  # Timer F only
    net.run_until(31.0)
    assert net.sent() == []


def test_tcp_transport_failure_fails_the_outstanding_transaction() -> None:
    net = Net("tcp")
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.request()
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    net.request()
    net.now = 1.0
    # Another destination is not ours to fail.
    net.ua.transport_failed(Destination("tcp", "10.0.0.1", 5060), "refused", net.now)
    assert net.events() == []
    net.ua.transport_failed(Destination("tcp", "127.0.0.1", 5070), "reset", net.now)
    events = net.events()
    failed = [e for e in events if isinstance(e, PublicationFailed)]
    assert [(e.publication_id, e.reason) for e in failed] == [(pub_id, "transport-error")]
    assert failed[0].retry_at is not None and 2.0 <= failed[0].retry_at < 3.0
    assert SubscriptionTerminated(sub_id, "transport-error") in events


def test_tcp_notify_answer_and_no_lingering_server_transaction() -> None:
    net = Net("tcp")
    sub_id, subscribe = subscribed(net)
    assert net.ua._completed == {}  # Timer J is zero on a reliable transport


# -- scale ----------------------------------------------------------------------------------


def test_ten_thousand_subscriptions_one_timer_each() -> None:
    net = Net(seed=7)
    ua = net.ua
    count = 10_000
    ids = [ua.subscribe(BOB, SipURI("sip", f"u{i}", "example.com"), 0.0) for i in range(count)]
    # The answers are written as text (parsing 10,000 SUBSCRIBEs back into
    # objects would only measure the test); the user agent parses them.
    for n, (data, _) in enumerate(ua.datagrams_to_send()):
        fields = dict(_FIELD.findall(data.decode()))
        dialog = (
            f"From: {fields['From']}\r\nCall-ID: {fields['Call-ID']}\r\n"
        )
        ok = (
            f"SIP/2.0 200 OK\r\nVia: {fields['Via']}\r\n{dialog}"
            f"To: {fields['To']};tag=t\r\nCSeq: {fields['CSeq']}\r\n"
            "Expires: 3600\r\nContact: <sip:presence@127.0.0.1:5070>\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        ua.receive(ok.encode(), SERVER_ADDR, 0.1)
        notify = (
            f"NOTIFY sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKn{n}\r\n"
            f"From: {fields['To']};tag=t\r\nTo: {fields['From']}\r\n"
            f"Call-ID: {fields['Call-ID']}\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\n"
            "Subscription-State: active;expires=3600\r\n"
            "Contact: <sip:presence@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n"
        )
        ua.receive(notify.encode(), NOTIFIER_ADDR, 0.2)
    assert ua.subscription_count == count
    answers = ua.datagrams_to_send()
    assert len(answers) == count and all(data.startswith(b"SIP/2.0 200 ") for data, _ in answers)
    assert net.events().count(SubscriptionAccepted(ids[0], 3600)) == 1
    # Client transactions (Timer K) and server transactions (Timer J) end;
    # then one entry per subscription is left in the heap.
    net.run_until(40.0)
    assert net.sent() == []
    assert len(ua._timers) == count
    deadlines = [ua.subscription(i).get_timer() for i in ids]  # type: ignore[union-attr]
    assert None not in deadlines
    assert ua.get_timer() == min(deadlines)  # type: ignore[type-var]
    # Refreshes are spread over the window, not all in one second.
    assert len({int(d) for d in deadlines}) > 400  # type: ignore[arg-type]
    assert all(0.2 + 0.75 * 3600 <= d <= 0.2 + 3600 - 32 for d in deadlines)  # type: ignore[operator]


_FIELD = re.compile(r"^(Via|From|To|Call-ID|CSeq): (.*?)\r$", re.MULTILINE)


def test_timer_j_of_one_seconds_notifies_falls_due_together() -> None:
    """RFC 3261 §17.2.2: each server transaction absorbs retransmissions for
    at least 64*T1; the user agent ends those of one second together."""
    net = Net()
    ua = net.ua
    for n in range(10):
        notify = (
            f"NOTIFY sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKj{n}\r\n"
            f"From: <sip:alice@example.com>;tag=a{n}\r\nTo: <sip:bob@example.com>;tag=b{n}\r\n"
            f"Call-ID: gone{n}\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\n"
            "Subscription-State: active;expires=60\r\nContent-Length: 0\r\n\r\n"
        )
        ua.receive(notify.encode(), NOTIFIER_ADDR, 0.05 + n * 0.09)
    answers = ua.datagrams_to_send()
    assert [data[:12] for data, _ in answers] == [b"SIP/2.0 481 "] * 10
    assert len(ua._completed) == 10
    assert ua.get_timer() == 33.0  # the last answer at 0.86 s + 32 s, on a whole second
    ua.handle_timer(32.9)
    assert len(ua._completed) == 10  # none ends before its 64*T1
    ua.receive(notify.encode(), NOTIFIER_ADDR, 32.95)  # a late retransmission
    assert [data[:12] for data, _ in ua.datagrams_to_send()] == [b"SIP/2.0 481 "]
    ua.handle_timer(33.0)
    assert ua._completed == {} and ua._expiring == {} and ua.get_timer() is None


def _notify_text(n: int, cseq: int = 1) -> bytes:
    return (
        f"NOTIFY sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKr{n}\r\n"
        f"From: <sip:alice@example.com>;tag=a{n}\r\nTo: <sip:bob@example.com>;tag=b{n}\r\n"
        f"Call-ID: rec{n}\r\nCSeq: {cseq} NOTIFY\r\nEvent: presence\r\n"
        "Subscription-State: active;expires=60\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_retransmission_in_completed_gets_the_same_response_bytes_again() -> None:
    """RFC 3261 §17.2.2: in Completed a retransmitted request gets the final
    response again — the same bytes, to where the request came from — and the
    transaction user hears of it no more."""
    ua = Net().ua
    other = Destination("udp", "127.0.0.1", 5099)  # the server, another of its ports
    ua.receive(_notify_text(1), NOTIFIER_ADDR, 1.0)
    ua.receive(_notify_text(2), other, 1.5)
    first = ua.datagrams_to_send()
    assert [dest for _, dest in first] == [NOTIFIER_ADDR, other]
    while ua.next_event() is not None:
        pass
    ua.receive(_notify_text(2), other, 20.0)
    ua.receive(_notify_text(1), NOTIFIER_ADDR, 30.0)
    again = ua.datagrams_to_send()
    assert again == [first[1], first[0]]
    assert ua.next_event() is None
    # The same branch with another method is another transaction (§17.2.3).
    options = _notify_text(1).replace(b"NOTIFY", b"OPTIONS")
    ua.receive(options, NOTIFIER_ADDR, 30.5)
    (answer, dest), = ua.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 200 ") and dest == NOTIFIER_ADDR
    # After Timer J (64*T1 = 32 s, on the whole second) the request is new.
    ua.handle_timer(33.0)
    assert len(ua._completed) == 2  # the second NOTIFY and the OPTIONS
    ua.receive(_notify_text(1), NOTIFIER_ADDR, 33.0)
    (answer, dest), = ua.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 481 ") and dest == NOTIFIER_ADDR
    assert answer != first[0]  # a new transaction: a new To tag
    assert len(ua._completed) == 3
    ua.handle_timer(100.0)
    assert ua._completed == {} and ua._expiring == {} and ua.get_timer() is None


def test_a_retransmission_without_a_to_tag_gets_the_same_to_tag_again() -> None:
    # RFC 3261 §8.2.6.2: the UAS adds a To tag when the request has none; the
    # response re-sent in Completed (§17.2.2) must carry the same one.
    ua = Net().ua
    options = (
        b"OPTIONS sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKopt1\r\n"
        b"From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n"
        b"Call-ID: opt1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    ua.receive(options, NOTIFIER_ADDR, 1.0)
    (first, _), = ua.datagrams_to_send()
    ua.receive(options, NOTIFIER_ADDR, 2.0)
    assert ua.datagrams_to_send() == [(first, NOTIFIER_ADDR)]
    assert b";tag=" in first.split(b"\r\nTo: ")[1].split(b"\r\n")[0]


def test_completed_records_keep_no_response_and_share_their_key_strings() -> None:
    # A refresh wave leaves a record per NOTIFY for 32 s: each keeps the
    # status, not the response's bytes, and one sent-by and method string.
    ua = Net().ua
    for n in range(3):
        ua.receive(_notify_text(n), NOTIFIER_ADDR, 1.0)
    ua.datagrams_to_send()
    assert list(ua._completed.values()) == [481, 481, 481]
    keys = list(ua._completed)
    assert keys[0][1] is keys[1][1] is keys[2][1] and keys[0][2] is keys[2][2]


def test_completed_server_transactions_are_not_tracked_by_the_collector() -> None:
    """What Timer J keeps (key, status) is made of tuples of str and ints,
    which CPython's collector stops tracking: thousands of them cost its
    collections nothing."""
    ua = Net().ua
    for n in range(100):
        ua.receive(_notify_text(n), NOTIFIER_ADDR, 1.0 + n * 0.01)
    ua.datagrams_to_send()
    while ua.next_event() is not None:
        pass
    assert len(ua._completed) == 100
    gc.collect()
    for key, record in ua._completed.items():
        assert not gc.is_tracked(key) and not gc.is_tracked(record)
    assert sum(1 for o in gc.get_objects() if type(o).__name__ == "ServerTransaction") == 0
    assert len(ua._expiring) == 2  # 1.0..1.99 s + 32 s: seconds 33 and 34


@pytest.mark.parametrize(
    ("local", "server"),
    [
        (Destination("udp", "127.0.0.1", 5080), "sip:127.0.0.1:5070"),
        (Destination("tcp", "127.0.0.1", 5080), "sip:127.0.0.1:5070;transport=tcp"),
        (Destination("udp", "::1", 5080), "sip:[::1]:5070"),
        (Destination("udp", "Host.Example.COM", 5080), "sip:example.com"),
        (Destination("tls", "127.0.0.1", 5080), "sips:127.0.0.1"),
    ],
)
def test_the_via_a_request_is_keyed_by_is_the_one_it_carries(
    local: Destination, server: str
) -> None:
    ua = UserAgent(local=local, server=SipURI.parse(server), rng=random.Random(3))
    ua.subscribe(BOB, ALICE, 0.0)
    ua.publish(ALICE, PIDF, 0.0)
    ua.options(0.0)
    requests = [outgoing.transaction.request for outgoing in ua._outgoing.values()]
    assert len(requests) == 3
    for request in requests:
        (text,) = request.headers.get_raw("Via")
        assert request.vias == [Via.parse(text)]
        assert parse_message(bytes(request)).vias == request.vias


def test_tokens_from_a_system_generator_are_read_in_batches_and_stay_distinct() -> None:
    reads: list[int] = []

    class CountingSystemRandom(random.SystemRandom):
        def getrandbits(self, k: int) -> int:
            reads.append(k)
            return super().getrandbits(k)

    ua = UserAgent(local=Destination("udp", "127.0.0.1", 5080),
                   server=SipURI.parse("sip:127.0.0.1:5070"), rng=CountingSystemRandom())
    tokens = [ua._token() for _ in range(200)]
    assert len(set(tokens)) == 200
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in tokens)
    assert len(reads) < 10


def test_tokens_from_a_seeded_generator_keep_its_sequence() -> None:
    ua = UserAgent(local=Destination("udp", "127.0.0.1", 5080),
                   server=SipURI.parse("sip:127.0.0.1:5070"), rng=random.Random(7))
    expected = random.Random(7)
    assert [ua._token() for _ in range(3)] == [
        f"{expected.getrandbits(64):016x}" for _ in range(3)
    ]


# -- the gateway's credentials --------------------------------------------------------


def test_default_credentials_serve_every_identity_and_a_refusal_is_final() -> None:
    net = Net()
    net.ua.set_credentials(None, digest.Credentials("alice", "s3cret"))
    net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    retry = net.request()
    assert check_authorization(retry, "Authorization", CHALLENGE).nc == 1
    net.reply(retry, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    # The gateway's account is one: another identity's first request carries
    # the answer up front, the nonce counted on.
    bob_id = net.ua.publish(BOB, PIDF, net.now)
    upfront = net.request()
    assert check_authorization(upfront, "Authorization", CHALLENGE).nc == 2
    net.reply(upfront, 200, ("SIP-ETag", "e2"), ("Expires", "3600"))
    net.events()
    # The server stops accepting them: one new answer, and its refusal is final.
    other = CHALLENGE.replace("n0nce1", "n0nce2")
    net.ua.modify(bob_id, b"<changed/>", net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", other))
    again = net.request()
    assert check_authorization(again, "Authorization", other).nc == 1
    net.reply(again, 401, ("WWW-Authenticate", other.replace("n0nce2", "n0nce3")))
    assert net.sent() == []
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed) and failed.status == 401
    assert failed.publication_id == bob_id and failed.retry_at is None


def test_credentials_for_one_realm_are_not_given_to_another() -> None:
    net = Net()
    net.ua.set_credentials(None, digest.Credentials("alice", "s3cret", realm="elsewhere"))
    net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    assert net.sent() == []
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed) and failed.status == 401


# -- TLS and who may talk to us -------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "destination"),
    [
        ("sips:127.0.0.1", Destination("tls", "127.0.0.1", 5061)),
        ("sips:127.0.0.1:5071;transport=tcp", Destination("tls", "127.0.0.1", 5071)),
        ("sip:example.com;transport=tls", Destination("tls", "example.com", 5061)),
        ("sip:example.com;transport=tcp", Destination("tcp", "example.com", 5060)),
        ("sip:example.com", Destination("udp", "example.com", 5060)),
    ],
)
def test_a_sips_server_means_tls_on_5061_by_default(server: str, destination: Destination) -> None:
    assert server_destination(SipURI.parse(server)) == destination


def test_over_tls_the_via_asks_for_connection_reuse_and_the_contact_says_tls() -> None:
    ua = UserAgent(local=Destination("tls", "127.0.0.1", 5080),
                   server=SipURI.parse("sips:127.0.0.1:5071"), rng=random.Random(5))
    ua.subscribe(BOB, ALICE, 0.0)
    ua.options(0.0)
    sent = ua.datagrams_to_send()
    assert {dest for _, dest in sent} == {Destination("tls", "127.0.0.1", 5071)}
    subscribe, options = (parse_message(data) for data, _ in sent)
    assert isinstance(subscribe, Request) and isinstance(options, Request)
    (via,) = subscribe.vias
    assert via.transport == "TLS" and via.params[-1] == ("alias", None)  # RFC 5923 §5
    (contact,) = subscribe.contacts
    assert contact.uri.param("transport") == "tls"
    assert options.uri.scheme == "sips"


def test_requests_from_other_hosts_get_403_and_responses_from_them_are_dropped() -> None:
    net = Net()
    stranger = Destination("udp", "192.0.2.7", 5070)
    net.ua.receive(_notify_text(1), stranger, net.now)
    (answer, dest), = net.ua.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 403 ") and dest == stranger
    assert net.events() == [RequestRefused(stranger, "NOTIFY")]
    assert net.ua.refused == 1
    # A forged 200 to our PUBLISH from that host changes nothing.
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    forged = publish.response(200, to_tag="x")
    forged.headers.add("SIP-ETag", "forged")
    forged.headers.add("Expires", "3600")
    net.ua.receive(bytes(forged), stranger, net.now)
    (dropped,) = net.events()
    assert isinstance(dropped, MessageDropped) and dropped.source == stranger
    net.reply(publish, 200, ("SIP-ETag", "real"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "real", 3600)]
    # Once the driver says the server's name stands for that address too, it is heard.
    net.ua.trust(["192.0.2.7"])
    net.ua.receive(_notify_text(2), stranger, net.now)
    (answer, _), = net.ua.datagrams_to_send()
    assert answer.startswith(b"SIP/2.0 481 ")
    assert net.ua.refused == 1


def test_a_401_and_a_407_are_both_remembered_and_both_answered_up_front() -> None:
    """RFC 3261 §22.3: a request may carry Authorization and Proxy-Authorization."""
    net = Net()
    net.ua.set_credentials(None, CREDS)
    net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 401, ("WWW-Authenticate", CHALLENGE))
    net.reply(net.request(), 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    net.ua.subscribe(ALICE, BOB, net.now)
    first = net.request()
    assert "Proxy-Authorization" not in first.headers
    net.reply(first, 407, ("Proxy-Authenticate", CHALLENGE.replace("n0nce1", "n0nce7")))
    retry = net.request()
    check_authorization(retry, "Authorization", CHALLENGE)
    assert check_authorization(
        retry, "Proxy-Authorization", CHALLENGE.replace("n0nce1", "n0nce7")
    ).nc == 1
    net.events()
    net.ua.publish(ALICE, b"<again/>", net.now)
    later = net.request()
    assert "Authorization" in later.headers and "Proxy-Authorization" in later.headers


# -- counters (exported by the adapter's /metrics) -----------------------------------


def test_counters_count_outcomes_retransmissions_and_transactions_in_flight() -> None:
    net = Net()
    net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    assert net.ua.transactions_in_flight == 1
    net.run_until(1.6)  # Timer E at 0.5 and 1.5 s (RFC 3261 §17.1.2.2)
    assert len(net.sent()) == 2
    assert net.ua.counters.retransmissions == 2
    net.reply(publish, 200, ("SIP-ETag", "e"), ("Expires", "3600"))
    assert net.ua.transactions_in_flight == 0
    probe = net.ua.options(net.now)
    net.run_until(net.now + 40.0)  # Timer F: no answer
    assert OptionsFailed(probe, "timeout") in net.events()
    assert net.ua.counters.outcomes == {("PUBLISH", "200"): 1, ("OPTIONS", "timeout"): 1}
    assert net.ua.publication_count == 1


def test_tcp_counts_no_retransmissions() -> None:
    net = Net("tcp")
    net.ua.publish(ALICE, PIDF, net.now)
    net.request()
    net.run_until(20.0)
    assert net.ua.counters.retransmissions == 0


def test_subscriptions_by_state() -> None:
    net = Net()
    net.ua.subscribe(BOB, ALICE, net.now)
    subscribe = net.request()
    assert net.ua.subscriptions_by_state() == {("presence", "subscribing"): 1}
    net.reply(subscribe, 200, ("Expires", "600"))
    net.notify(subscribe, "active;expires=600", body=PIDF)
    net.sent()
    assert net.ua.subscriptions_by_state() == {("presence", "active"): 1}


# -- the window of outstanding client transactions (back-pressure) ------------------


class Wire:
    """The requests the user agent sent, our 200s to NOTIFYs checked and set apart."""

    def __init__(self, net: Net) -> None:
        self.net = net

    def take(self) -> list[Request]:
        out = []
        for message, _ in self.net.sent():
            if isinstance(message, Request):
                out.append(message)
            else:
                assert message.status == 200 and message.cseq.method == "NOTIFY"
        return out


def requests(net: Net) -> list[Request]:
    """Every request the user agent sent since the last look (no NOTIFY answered since)."""
    out = []
    for message, _ in net.sent():
        assert isinstance(message, Request)
        out.append(message)
    return out


def accept(net: Net, subscribe: Request, expires: int = 3600) -> None:
    """The server's 200 to a SUBSCRIBE (initial or refresh) and, for an initial
    one, its NOTIFY (read what the user agent sent with :class:`Wire`)."""
    net.reply(subscribe, 200, ("Expires", str(expires)),
              ("Contact", "<sip:presence@127.0.0.1:5070>"))
    if subscribe.to.tag is None:
        net.notify(subscribe, f"active;expires={expires}", body=PIDF)


def test_the_window_bounds_the_requests_in_flight_and_the_rest_follow_the_answers() -> None:
    net = Net(window=Window(size=2))
    ids = [net.ua.subscribe(BOB, SipURI("sip", f"u{i}", "example.com"), net.now)
           for i in range(5)]
    wire = Wire(net)
    first = wire.take()
    assert len(first) == 2
    assert (net.ua.transactions_in_flight, net.ua.requests_waiting) == (2, 3)
    sent = list(first)
    while first:
        accept(net, first.pop(0))
        more = wire.take()
        assert len(more) <= 1  # one answer, one slot
        assert net.ua.transactions_in_flight <= 2
        first += more
        sent += more
    # In the order they were asked for, each once.
    assert [r.to.uri.user for r in sent] == [f"u{i}" for i in range(5)]
    assert net.ua.requests_waiting == 0 and net.ua.counters.queued == 3
    accepted = [e.subscription_id for e in net.events() if isinstance(e, SubscriptionAccepted)]
    assert accepted == ids


def test_refreshes_due_together_are_paced_by_the_answers_and_retransmit_no_more() -> None:
    # Every refresh at half the interval, with no spread: all due in one instant.
    net = Net(window=Window(size=2), policy=RefreshPolicy(low=0.5, high=0.5))
    for i in range(6):
        net.ua.subscribe(BOB, SipURI("sip", f"u{i}", "example.com"), net.now)
    wire = Wire(net)
    pending = wire.take()
    while pending:
        accept(net, pending.pop(0))
        pending += wire.take()
    net.events()
    net.run_until(1800.0)
    due = requests(net)
    assert len(due) == 2 and all(r.to.tag == "srvtag" for r in due)  # refreshes
    assert net.ua.requests_waiting == 4
    # Unanswered, only what is in flight is sent again (Timer E, RFC 3261
    # §17.1.2.2): two retransmissions, not six.
    before = net.ua.counters.retransmissions
    net.run_until(1800.5)
    assert net.ua.counters.retransmissions - before == 2
    assert len(requests(net)) == 2
    # Each answer lets the next refresh out.
    for refresh in due:
        accept(net, refresh)
    assert len(wire.take()) == 2
    assert net.ua.requests_waiting == 2


def test_a_callers_request_beyond_the_queue_is_refused_busy_and_never_sent() -> None:
    net = Net(window=Window(size=1, queue=1))
    net.ua.subscribe(BOB, ALICE, net.now)
    waiting = net.ua.subscribe(BOB, SipURI.parse("sip:carol@example.com"), net.now)
    refused = net.ua.subscribe(BOB, SipURI.parse("sip:dave@example.com"), net.now)
    wire = Wire(net)
    (sent,) = wire.take()
    assert sent.to.uri == ALICE
    assert net.events() == [SubscriptionTerminated(refused, BUSY)]
    assert net.ua.subscription(refused) is None
    assert net.ua.counters.outcomes == {("SUBSCRIBE", BUSY): 1}
    accept(net, sent)
    (next_one,) = wire.take()
    assert next_one.to.uri == SipURI.parse("sip:carol@example.com")
    assert net.ua.subscription(waiting) is not None


def test_a_callers_request_that_waits_too_long_is_refused_busy() -> None:
    net = Net(window=Window(size=1, queue=10, wait=5.0))
    net.ua.subscribe(BOB, ALICE, net.now)
    net.now = 1.0
    late = net.ua.subscribe(BOB, SipURI.parse("sip:carol@example.com"), net.now)
    (sent,) = requests(net)
    net.run_until(5.9)
    assert net.events() == []
    net.run_until(6.0)  # 5 s after it was asked for
    assert net.events() == [SubscriptionTerminated(late, BUSY)]
    # Meanwhile only the first went out again (Timer E).
    assert {r.to.uri for r in requests(net)} == {ALICE}
    wire = Wire(net)
    accept(net, sent)
    assert wire.take() == []  # nothing was left waiting
    assert net.ua.requests_waiting == 0


def test_requests_that_keep_work_alive_go_before_callers_new_ones_and_are_never_refused() -> None:
    net = Net(window=Window(size=1, queue=0), policy=RefreshPolicy(low=0.5, high=0.5))
    sub_id = net.ua.subscribe(BOB, ALICE, net.now)
    wire = Wire(net)
    accept(net, wire.take()[0])
    assert wire.take() == []
    net.run_until(1799.9)
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    net.events()
    # With the PUBLISH in flight, the refresh falls due: it waits, with no queue
    # for callers (queue=0) and yet not refused.
    net.run_until(1800.0)
    assert requests(net) == [] and net.ua.requests_waiting == 1
    # A caller's new request finds no room: refused at once.
    refused = net.ua.subscribe(BOB, SipURI.parse("sip:carol@example.com"), net.now)
    assert net.events() == [SubscriptionTerminated(refused, BUSY)]
    net.reply(publish, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e1", 3600)]
    refresh = net.request()
    assert refresh.method == "SUBSCRIBE" and refresh.to.tag == "srvtag"
    assert net.ua.subscription(sub_id) is not None


def test_a_modify_refused_busy_is_kept_and_retried_with_back_off() -> None:
    net = Net(window=Window(size=1, queue=0))
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    net.reply(net.request(), 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    net.events()
    net.ua.subscribe(BOB, ALICE, net.now)
    requests(net)
    net.ua.modify(pub_id, b"<new/>", net.now)
    assert requests(net) == []
    (failed,) = net.events()
    assert isinstance(failed, PublicationFailed)
    assert (failed.status, failed.reason) == (None, BUSY)
    assert failed.retry_at is not None and 1.0 <= failed.retry_at < 2.0
    assert net.ua.counters.outcomes == {("PUBLISH", "200"): 1, ("PUBLISH", BUSY): 1}


def test_a_request_whose_owner_ended_while_it_waited_is_not_sent() -> None:
    net = Net(window=Window(size=1), policy=RefreshPolicy(low=0.5, high=0.5))
    sub_id, subscribe = subscribed(net)
    net.run_until(1799.9)
    net.ua.publish(ALICE, PIDF, net.now)
    publish = net.request()
    net.run_until(1800.0)
    assert net.ua.requests_waiting == 1  # the refresh
    # The server ends the subscription while its refresh waits.
    net.notify(subscribe, "terminated;reason=deactivated")
    assert net.response_to().status == 200
    assert SubscriptionTerminated(sub_id, "deactivated") in net.events()
    # The PUBLISH's answer makes room: the refresh of the ended subscription
    # leaves the queue unsent.
    net.reply(publish, 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert requests(net) == []
    assert net.ua.requests_waiting == 0


def test_a_publication_abandoned_while_its_request_waits_sends_nothing() -> None:
    net = Net(window=Window(size=1))
    net.ua.subscribe(BOB, ALICE, net.now)
    subscribe = net.request()
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    assert net.ua.requests_waiting == 1  # the PUBLISH, behind the SUBSCRIBE
    net.ua.abandon(pub_id)
    # The SUBSCRIBE's answer makes room: the abandoned PUBLISH is not sent.
    net.reply(subscribe, 202, ("Expires", "600"))
    assert requests(net) == []
    assert net.ua.requests_waiting == 0


def test_options_probes_pass_the_window() -> None:
    net = Net(window=Window(size=1, queue=0))
    net.ua.subscribe(BOB, ALICE, net.now)
    requests(net)
    net.ua.options(net.now)
    (probe,) = requests(net)
    assert probe.method == "OPTIONS"
    assert net.ua.transactions_in_flight == 2


def test_the_bound_halves_once_per_t1_of_retransmissions_and_widens_with_timely_answers(
) -> None:
    net = Net(window=Window(size=16, least=4))
    for i in range(16):
        net.ua.subscribe(BOB, SipURI("sip", f"u{i}", "example.com"), net.now)
    wire = Wire(net)
    first = wire.take()
    assert len(first) == 16 and net.ua.window_bound == 16
    # Nothing answered within T1: all 16 go again, and the bound is halved once.
    net.run_until(0.5)
    assert len(wire.take()) == 16
    assert net.ua.window_bound == 8
    # Again after 2*T1 (Timer E doubles): halved again, not below least.
    net.run_until(1.5)
    assert net.ua.window_bound == 4
    net.run_until(3.5)
    assert net.ua.window_bound == 4
    wire.take()  # the retransmissions
    # The answers: nothing more is sent until fewer than 4 are in flight.
    for request in first[:12]:
        accept(net, request)
        assert wire.take() == []
    more = ["u16", "u17", "u18", "u19"]
    for user in more:
        net.ua.subscribe(BOB, SipURI("sip", user, "example.com"), net.now)
    assert wire.take() == [] and net.ua.requests_waiting == 4
    accept(net, first[12])
    (sent,) = wire.take()
    assert sent.to.uri.user == "u16"
    # Answers in time widen the bound: one more per bound's worth of them.
    accept(net, sent)
    for _ in range(3):
        for request in wire.take():
            accept(net, request)
    assert net.ua.window_bound == 4  # 4 + 1/4 + ... not yet 5
    assert net.ua.requests_waiting == 0


def test_a_window_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        Window(size=0)
    with pytest.raises(ValueError):
        Window(wait=0.0)
    with pytest.raises(ValueError):
        Window(kept=0)
    with pytest.raises(ValueError):
        Window(republish=0)
    with pytest.raises(ValueError):
        Window(interval=0.0)


def held_together(net: Net, count: int) -> Wire:
    """``count`` subscriptions accepted at 0 whose refreshes all fall due at
    1800 (the policy of ``net`` refreshes at half the interval, no spread)."""
    for i in range(count):
        net.ua.subscribe(BOB, SipURI("sip", f"u{i}", "example.com"), net.now)
    wire = Wire(net)
    pending = wire.take()
    while pending:
        accept(net, pending.pop(0))
        pending += wire.take()
    net.events()
    return wire


def test_refreshes_due_together_hold_at_most_their_share_of_the_window() -> None:
    net = Net(window=Window(size=100, kept=3), policy=RefreshPolicy(low=0.5, high=0.5))
    wire = held_together(net, 8)
    net.run_until(1800.0)
    first = wire.take()
    assert len(first) == 3 and all(r.to.tag == "srvtag" for r in first)
    assert (net.ua.transactions_in_flight, net.ua.requests_waiting) == (3, 5)
    # Unanswered, they wait: no timer lets more out, only answers do.
    net.run_until(1800.4)
    assert wire.take() == [] and net.ua.requests_waiting == 5
    # Each answer lets the next one out, in the order they fell due.
    sent = list(first)
    while first:
        accept(net, first.pop(0))
        more = wire.take()
        assert len(more) <= 1 and net.ua.transactions_in_flight <= 3
        first += more
        sent += more
    assert sorted(r.to.uri.user for r in sent) == [f"u{i}" for i in range(8)]
    assert net.ua.requests_waiting == 0


def test_a_callers_new_request_takes_the_room_refreshes_may_not() -> None:
    net = Net(window=Window(size=100, kept=2), policy=RefreshPolicy(low=0.5, high=0.5))
    wire = held_together(net, 5)
    net.run_until(1800.0)
    refreshes = wire.take()
    assert len(refreshes) == 2 and net.ua.requests_waiting == 3
    # The window has room beyond the refreshes' share: a caller's SUBSCRIBE
    # and PUBLISH go out at once, past the refreshes that wait.
    net.ua.subscribe(BOB, SipURI.parse("sip:carol@example.com"), net.now)
    pub_id = net.ua.publish(ALICE, PIDF, net.now)
    sent = wire.take()
    assert [(r.method, r.to.tag) for r in sent] == [("SUBSCRIBE", None), ("PUBLISH", None)]
    assert net.ua.requests_waiting == 3
    # Their answers let no refresh out; a refresh's answer does.
    net.reply(sent[1], 200, ("SIP-ETag", "e1"), ("Expires", "3600"))
    assert net.events() == [PublicationConfirmed(pub_id, "e1", 3600)]
    assert wire.take() == []
    accept(net, refreshes[0])
    (next_one,) = wire.take()
    assert next_one.to.tag == "srvtag"


def published_together(net: Net, count: int) -> list[int]:
    """``count`` publications confirmed at 0, all refreshed at 1800 (the
    policy of ``net`` refreshes at half the interval, no spread)."""
    ids = [net.ua.publish(SipURI("sip", f"p{i}", "example.com"), PIDF, net.now)
           for i in range(count)]
    for request in requests(net):
        net.reply(request, 200, ("SIP-ETag", f"e-{request.to.uri.user}"), ("Expires", "3600"))
    net.events()
    return ids


def test_publish_refreshes_due_together_go_out_a_few_per_interval() -> None:
    # A PUBLISH is answered before the server NOTIFYs the presentity's
    # watchers: the answers do not pace them, the interval does.
    net = Net(window=Window(size=100, kept=32, republish=2, interval=0.02),
              policy=RefreshPolicy(low=0.5, high=0.5))
    published_together(net, 5)
    net.run_until(1800.0)
    first = requests(net)
    assert [r.method for r in first] == ["PUBLISH", "PUBLISH"]
    assert all(r.headers.get("SIP-If-Match") for r in first)
    assert net.ua.requests_waiting == 3
    for request in first:
        net.reply(request, 200, ("SIP-ETag", "again"), ("Expires", "3600"))
    assert requests(net) == []  # answered, and yet the interval's two are spent
    assert net.ua.get_timer() == pytest.approx(1800.02)
    net.run_until(1800.02)
    assert len(requests(net)) == 2
    net.run_until(1800.04)
    assert len(requests(net)) == 1
    assert net.ua.requests_waiting == 0


def test_the_publish_pace_holds_back_neither_subscriptions_nor_callers() -> None:
    net = Net(window=Window(size=100, kept=32, republish=1, interval=0.02),
              policy=RefreshPolicy(low=0.5, high=0.5))
    published_together(net, 3)
    wire = held_together(net, 3)
    net.run_until(1800.0)
    sent = wire.take()
    # One PUBLISH refresh, and every SUBSCRIBE refresh (only Window.kept bounds them).
    assert sorted(r.method for r in sent) == ["PUBLISH"] + ["SUBSCRIBE"] * 3
    assert net.ua.requests_waiting == 2
    # A caller's modify of a publication goes out at once.
    net.ua.publish(ALICE, PIDF, net.now)
    (caller,) = wire.take()
    assert caller.method == "PUBLISH" and caller.headers.get("SIP-If-Match") is None
    assert net.ua.requests_waiting == 2


def test_refreshes_waiting_for_their_share_still_go_before_callers_requests_that_wait() -> None:
    # A full window (size 2): when a place frees, a waiting refresh takes it
    # before a caller's request that waited, while the refreshes hold fewer
    # than their share.
    net = Net(window=Window(size=2, kept=2), policy=RefreshPolicy(low=0.5, high=0.5))
    wire = held_together(net, 3)
    net.run_until(1800.0)
    first = wire.take()
    assert len(first) == 2 and net.ua.requests_waiting == 1
    net.ua.subscribe(BOB, SipURI.parse("sip:carol@example.com"), net.now)
    assert wire.take() == [] and net.ua.requests_waiting == 2
    accept(net, first[0])
    (refresh,) = wire.take()
    assert refresh.to.tag == "srvtag"
    accept(net, first[1])
    (caller,) = wire.take()
    assert caller.to.uri == SipURI.parse("sip:carol@example.com")


def test_a_subscription_made_again_waits_its_turn_and_is_not_refused() -> None:
    carol = SipURI.parse("sip:carol@example.com")
    net = Net(window=Window(size=1, queue=0))
    net.ua.subscribe(BOB, ALICE, net.now)
    wire = Wire(net)
    (first,) = wire.take()
    again = net.ua.subscribe(BOB, carol, net.now, refusable=False)
    assert net.events() == [] and net.ua.requests_waiting == 1
    net.run_until(20.0)
    assert net.ua.subscription(again) is not None
    wire.take()  # first's retransmissions
    accept(net, first)
    (sent,) = wire.take()
    assert sent.to.uri == carol
    net.reply(sent, 200, ("Expires", "3600"), ("Contact", "<sip:presence@127.0.0.1:5070>"))
    net.events()
    # Timer N (RFC 6665 §4.1.2.4, 32 s) runs from the moment it was sent, not asked for.
    net.run_until(51.9)
    assert net.ua.subscription(again) is not None
    net.run_until(52.0)
    assert net.events() == [SubscriptionTerminated(again, "timeout")]


def test_a_subscription_ended_while_its_subscribe_waits_for_room_sends_nothing() -> None:
    carol = SipURI.parse("sip:carol@example.com")
    dave = SipURI.parse("sip:dave@example.com")
    net = Net(window=Window(size=1, queue=0))
    net.ua.subscribe(BOB, ALICE, net.now)
    wire = Wire(net)
    (first,) = wire.take()
    given_up = net.ua.subscribe(BOB, carol, net.now, refusable=False)
    kept = net.ua.subscribe(BOB, dave, net.now, refusable=False)
    assert net.ua.requests_waiting == 2
    # Its caller gives up before there is room: the notifier never heard of
    # it, so it ends at once, and neither its SUBSCRIBE nor an un-SUBSCRIBE
    # is ever sent.
    net.ua.unsubscribe(given_up, net.now)
    assert net.events() == [SubscriptionTerminated(given_up, "unsubscribed")]
    assert net.ua.subscription(given_up) is None
    accept(net, first)
    net.events()
    (sent,) = wire.take()
    assert sent.to.uri == dave  # the one still wanted, next
    net.reply(sent, 200, ("Expires", "3600"), ("Contact", "<sip:presence@127.0.0.1:5070>"))
    assert net.events() == [SubscriptionAccepted(kept, 3600, False)]
    assert wire.take() == [] and net.ua.requests_waiting == 0
    # One that was sent is ended as before: an un-SUBSCRIBE in its dialog.
    net.ua.unsubscribe(kept, net.now)
    (bye,) = wire.take()
    assert bye.to.uri == dave and bye.headers.get("Expires") == "0"


# -- the refresh exchange, field by field ---------------------------------------------


def test_a_refresh_carries_what_the_initial_subscribe_carried() -> None:
    net = Net()
    sub_id, subscribe = subscribed(net)
    net.ua.refresh(sub_id, net.now)
    refresh = net.request()
    names = [name for name, _ in refresh.headers]
    # One of each, the Via first (RFC 3261 §8.1.1.7) and in the order the
    # initial SUBSCRIBE had them.
    assert names == [name for name, _ in subscribe.headers]
    assert names[0] == "Via" and len(set(names)) == len(names)
    for name in ("From", "Call-ID", "Event", "Expires", "Accept", "Contact", "Allow",
                 "Max-Forwards", "User-Agent"):
        assert refresh.headers.get_raw(name) == subscribe.headers.get_raw(name), name
    assert refresh.to.tag == "srvtag" and refresh.cseq.seq == subscribe.cseq.seq + 1
    assert str(refresh.uri) == "sip:presence@127.0.0.1:5070"  # the remote target


def test_a_challenged_refresh_is_sent_again_with_each_field_once() -> None:
    net = Net()
    net.ua.set_credentials(BOB, CREDS)
    sub_id, _ = subscribed(net)
    net.ua.refresh(sub_id, net.now)
    refresh = net.request()
    net.reply(refresh, 401, ("WWW-Authenticate", CHALLENGE))
    retry = net.request()
    check_authorization(retry, "Authorization", CHALLENGE)
    names = [name for name, _ in retry.headers]
    assert len(set(names)) == len(names), names
    assert retry.contacts == refresh.contacts
    assert retry.headers.get_raw("Allow") == ["NOTIFY, OPTIONS"]
    assert retry.cseq.seq == refresh.cseq.seq + 1 and retry.to.tag == "srvtag"


def test_texts_written_into_every_request_are_checked_up_front() -> None:
    with pytest.raises(LocalProtocolError):
        UserAgent(local=Destination("udp", "127.0.0.1", 5080),
                  server=SipURI.parse("sip:127.0.0.1:5070"), rng=random.Random(1),
                  user_agent="agent\r\nX-Forged: 1")
    net = Net()
    with pytest.raises(LocalProtocolError):
        net.ua.subscribe(BOB, ALICE, net.now, event="presence\r\nX-Forged: 1")


def recount(net: Net, ids: list[int]) -> dict[tuple[str, str], int]:
    """subscriptions_by_state the long way: every subscription held, looked at."""
    counts: dict[tuple[str, str], int] = {}
    for sub_id in ids:
        subscription = net.ua.subscription(sub_id)
        if subscription is not None:
            key = (subscription.event, subscription.state.name.lower())
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("seed", range(6))
def test_the_counts_by_state_follow_every_change_of_every_subscription(seed: int) -> None:
    rng = random.Random(seed)
    net = Net(seed=seed, window=Window(size=8, queue=10, wait=5.0, least=2))
    ids: list[int] = []
    outstanding: list[Request] = []  # SUBSCRIBEs sent and not answered (maybe lost)
    dialogs: dict[str, Request] = {}  # initial SUBSCRIBEs by Call-ID: a NOTIFY's dialog
    seen: set[str] = set()
    visited: set[tuple[str, str]] = set()
    most = 0
    for _ in range(3000):
        step = rng.random()
        if step < 0.15 or not ids:
            event = rng.choice(("presence", "presence", "presence.winfo"))
            target = SipURI("sip", f"u{rng.randrange(50)}", "example.com")
            ids.append(net.ua.subscribe(BOB, target, net.now, event=event,
                                        refusable=rng.random() < 0.8))
        elif step < 0.2:
            net.ua.unsubscribe(rng.choice(ids), net.now)
        elif step < 0.23:
            net.ua.refresh(rng.choice(ids), net.now)
        elif step < 0.58 and outstanding:
            request = outstanding.pop(rng.randrange(len(outstanding)))
            status = rng.choice((200,) * 8 + (202, 423, 481, 489, 500, 503, 408))
            headers = [("Contact", "<sip:presence@127.0.0.1:5070>")]
            if status < 300:
                headers.append(("Expires", str(rng.choice((0, 60, 600, 3600)))))
            elif status == 423:
                headers.append(("Min-Expires", "7200"))
            net.reply(request, status, *headers)
        elif step < 0.83 and dialogs:
            live = [dialogs[s.call_id] for s in map(net.ua.subscription, ids)
                    if s is not None and s.call_id in dialogs]
            # Now and then one the subscriber has ended (answered 481).
            subscribe = rng.choice(live if live and rng.random() < 0.9 else list(dialogs.values()))
            state = rng.choice(("active;expires=600",) * 3 + ("pending;expires=600",) * 2
                               + ("pending;expires=60", "terminated;reason=deactivated"))
            net.notify(subscribe, state)
        elif step < 0.85:
            net.ua.transport_failed(net.ua.server_destination, "refused", net.now)
        else:
            net.run_until(net.now + rng.choice((0.5, 0.5, 5.0, 5.0, 40.0, 400.0, 4000.0)))
        for message, _ in net.sent():
            if isinstance(message, Request) and message.method == "SUBSCRIBE":
                via = message.top_via
                assert via is not None and via.branch is not None
                if via.branch not in seen:  # not a retransmission
                    seen.add(via.branch)
                    outstanding.append(message)
                    if message.to.tag is None:
                        dialogs[message.call_id] = message
        net.events()
        counts = net.ua.subscriptions_by_state()
        assert counts == recount(net, ids)
        visited |= set(counts)
        most = max(most, sum(counts.values()))
    # The sequence went everywhere a held subscription can be, several at once.
    phases = ("subscribing", "pending", "active", "unsubscribing")
    assert {("presence", phase) for phase in phases} <= visited
    assert {("presence.winfo", phase) for phase in phases[:3]} <= visited
    assert most >= 8
