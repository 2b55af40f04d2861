"""The user agent's byte paths: the next NOTIFY of an active dialog, and the
2xx to a subscription's refresh or to a PUBLISH.

``UserAgent._receive_next_notify`` takes most NOTIFYs without making a
Request, ``UserAgent._receive_refresh_success`` most 2xx without making a
Response.  Their outcome must be the general path's, whatever arrives: every
test here feeds the same bytes to two user agents made alike, one of which
takes every NOTIFY through the general path, and compares all they send,
tell and keep.  Each also says whether the byte path was the one taken, so
that a comparison cannot pass because neither side used it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import RemoteProtocolError
from sip.message import Headers, Request, parse_message, read_lean_notify
from sip.subscription import NotifyReceived
from sip.transaction import MAGIC_COOKIE
from sip.uri import SipURI
from sip.useragent import Destination, UserAgent
from tests.sip.test_useragent import (
    ALICE,
    BOB,
    NOTIFIER_ADDR,
    PIDF,
    SERVER_ADDR,
    Net,
    subscribed,
)

CAROL = SipURI.parse("sip:carol@example.com")


class _Counted(UserAgent):
    """Counts the messages the byte paths took."""

    taken = 0

    def _receive_next_notify(self, data: bytes, source: Destination, now: float) -> bool:
        took = super()._receive_next_notify(data, source, now)
        self.taken += took
        return took

    def _receive_refresh_success(self, data: bytes, source: Destination, now: float) -> bool:
        took = super()._receive_refresh_success(data, source, now)
        self.taken += took
        return took


class _GeneralOnly(UserAgent):
    """Every message through the general path: the reference."""

    def _receive_next_notify(self, data: bytes, source: Destination, now: float) -> bool:
        return False

    def _receive_refresh_success(self, data: bytes, source: Destination, now: float) -> bool:
        return False


@dataclass
class Twins:
    lean: Net
    general: Net
    sub_id: int
    subscribe: Request
    cseq: int = 1
    branch: int = 0

    def build(
        self,
        state: str = "active;expires=3600",
        *,
        body: bytes = PIDF,
        cseq: int | None = None,
        headers: Callable[[Headers], object] | None = None,
    ) -> bytes:
        """The next NOTIFY of the dialog (or with ``cseq``), edited by ``headers``."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        self.branch += 1
        h = Headers()
        h.add("Via", f"SIP/2.0/UDP 127.0.0.1:5071;branch={MAGIC_COOKIE}x{self.branch}")
        h.add("Max-Forwards", "70")
        h.add("From", str(self.subscribe.to.with_tag("srvtag")))
        h.add("To", str(self.subscribe.from_))
        h.add("Call-ID", self.subscribe.call_id)
        h.add("CSeq", f"{cseq} NOTIFY")
        h.add("Event", "presence")
        h.add("Subscription-State", state)
        h.add("Contact", "<sip:presence@127.0.0.1:5070>")
        if body:
            h.add("Content-Type", "application/pidf+xml")
        if headers is not None:
            headers(h)
        return bytes(Request("NOTIFY", self.subscribe.contacts[0].sip_uri, h, body))

    def feed(self, data: bytes, source: Destination = NOTIFIER_ADDR) -> bool:
        """``data`` to both; asserts they did the same; whether the byte path took it."""
        lean = self.lean.ua
        assert isinstance(lean, _Counted)
        before = lean.taken
        for net in (self.lean, self.general):
            net.ua.receive(data, source, net.now)
        assert_same(self)
        return lean.taken > before

    def run_until(self, instant: float) -> None:
        for net in (self.lean, self.general):
            net.run_until(instant)
        assert_same(self)

    def both(self, act: Callable[[Net], object]) -> None:
        for net in (self.lean, self.general):
            act(net)

    def sent(self) -> bytes:
        """The one datagram both sent: the same bytes."""
        lean, general = self.lean.ua.datagrams_to_send(), self.general.ua.datagrams_to_send()
        assert lean == general and len(lean) == 1, (lean, general)
        return lean[0][0]

    def refreshed(self) -> bytes:
        """The subscription refreshed on both: the SUBSCRIBE sent."""
        self.both(lambda net: net.ua.refresh(self.sub_id, net.now))
        return self.sent()


def success(
    request: bytes,
    status: int = 200,
    *,
    expires: str | None = "3600",
    headers: Callable[[Headers], object] | None = None,
) -> bytes:
    """The server's 2xx to ``request``, as Kamailio answers a SUBSCRIBE."""
    parsed = parse_message(request)
    assert isinstance(parsed, Request)
    response = parsed.response(status, to_tag=None if parsed.to.tag else "srvtag")
    if expires is not None:
        response.headers.add("Expires", expires)
    response.headers.add("Contact", "<sip:presence@127.0.0.1:5070>")
    if headers is not None:
        headers(response.headers)
    return bytes(response)


def twins() -> Twins:
    lean, general = Net(), Net()
    lean.ua.__class__ = _Counted
    general.ua.__class__ = _GeneralOnly
    sub_id, subscribe = subscribed(lean)
    assert subscribed(general) == (sub_id, subscribe)
    return Twins(lean, general, sub_id, subscribe, cseq=lean.notify_cseq)


def _kept(net: Net) -> tuple[object, ...]:
    ua = net.ua
    dialogs = [
        (s.id, s.state, s.remote_tag, s.remote_target, s._remote_cseq, s._missing, s.expires_at,
         s._refresh_at, s._deadline_n, s._guard_at, s._outstanding, s.get_timer())
        for s in ua._subscriptions.values()
    ]
    publications = [
        (p.id, p.state, p.etag, p.expires_at, p.requested_expires, p.body, p._dirty,
         p._remove_pending, p._failures, p._cseq, p.get_timer())
        for p in ua._publications.values()
    ]
    counters = ua.counters
    return (dialogs, publications, dict(ua._completed), dict(ua._expiring), dict(ua._resent),
            dict(counters.answered), dict(counters.outcomes), counters.retransmissions,
            sorted(ua._outgoing), ua._bound, ua._kept_in_flight, ua.get_timer())


def assert_same(t: Twins) -> None:
    assert t.lean.ua.datagrams_to_send() == t.general.ua.datagrams_to_send()
    assert t.lean.events() == t.general.events()
    assert _kept(t.lean) == _kept(t.general)


# -- what the byte path takes ---------------------------------------------------------


def test_the_next_notify_is_taken_and_answered_as_the_general_path_would() -> None:
    t = twins()
    t.lean.ua.datagrams_to_send()
    data = t.build()
    t.lean.ua.receive(data, NOTIFIER_ADDR, t.lean.now)
    answer = t.lean.ua.datagrams_to_send()
    t.general.ua.receive(data, NOTIFIER_ADDR, t.general.now)
    assert answer == t.general.ua.datagrams_to_send()
    assert answer == [(parse_message(data).response_bytes(200), NOTIFIER_ADDR)]  # type: ignore[union-attr]
    assert isinstance(t.lean.ua, _Counted) and t.lean.ua.taken == 1
    events = t.lean.events()
    assert events == t.general.events()
    assert events == [NotifyReceived(t.sub_id, events[0].state, PIDF, "application/pidf+xml")]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "edit", ["same", "new body", "no body", "new expires", "new contact", "more headers"]
)
def test_the_next_notify_of_an_active_dialog_takes_the_byte_path(edit: str) -> None:
    t = twins()
    data = {
        "same": lambda: t.build(),
        "new body": lambda: t.build(body=PIDF.replace(b"alice", b"alice2")),
        "no body": lambda: t.build(body=b""),
        "new expires": lambda: t.build("active;expires=120"),
        "new contact": lambda: t.build(
            headers=lambda h: h.set("Contact", "<sip:p2@127.0.0.1:5072>")),
        "more headers": lambda: t.build(headers=_more),
    }[edit]()
    assert t.feed(data)
    # And the dialog goes on from there alike: the refresh, its timers.
    t.run_until(4000.0)


def _edited(data: bytes, old: bytes, new: bytes) -> bytes:
    edited = data.replace(old, new, 1)
    assert edited != data
    return edited


def _more(h: Headers) -> None:
    h.add("User-Agent", "a presence server")
    h.add("Require", "eventlist")
    h.add("Supported", "eventlist")


def _untrusted(t: Twins) -> tuple[bytes, Destination]:
    return t.build(), Destination("udp", "192.0.2.9", 5060)


# Each: what to feed, made from the twins, and why the byte path leaves it.
_REFUSED: dict[str, Callable[[Twins], bytes | tuple[bytes, Destination]]] = {
    "a retransmission": lambda t: _again(t),
    "a CSeq skipped": lambda t: t.build(cseq=t.cseq + 2),
    "an older CSeq": lambda t: t.build(cseq=t.cseq - 1),
    "pending": lambda t: t.build("pending;expires=3600"),
    "terminated": lambda t: t.build("terminated;reason=noresource"),
    "active spelled otherwise": lambda t: t.build("Active;expires=3600"),
    "no Subscription-State": lambda t: t.build(headers=lambda h: h.remove("Subscription-State")),
    "no Event": lambda t: t.build(headers=lambda h: h.remove("Event")),
    "another event": lambda t: t.build(headers=lambda h: h.set("Event", "dialog")),
    "another To tag": lambda t: t.build(
        headers=lambda h: h.set("To", str(t.subscribe.from_.with_tag("other")))),
    "another From tag": lambda t: t.build(
        headers=lambda h: h.set("From", str(t.subscribe.to.with_tag("fork2")))),
    "a To tag with more after it": lambda t: _more_after_to_tag(t),
    "an unknown Call-ID": lambda t: t.build(headers=lambda h: h.set("Call-ID", "nobody")),
    "a compact Call-ID": lambda t: _edited(t.build(), b"\r\nCall-ID: ", b"\r\ni: "),
    "a header folded": lambda t: _edited(t.build(), b"\r\nEvent: ", b"\r\nEvent:\r\n "),
    "two Vias": lambda t: t.build(headers=lambda h: h.add(
        "Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy")),
    "a Via without the magic cookie": lambda t: t.build(
        headers=lambda h: h.set("Via", "SIP/2.0/UDP 127.0.0.1:5071;branch=old1")),
    "a Contact not SIP": lambda t: t.build(headers=lambda h: h.set("Contact", "<tel:+15550100>")),
    "two Contacts": lambda t: t.build(headers=lambda h: h.set(
        "Contact", "<sip:a@127.0.0.1>, <sip:b@127.0.0.1>")),
    "a body cut short": lambda t: t.build()[:-5],
    "not NOTIFY in CSeq": lambda t: t.build(headers=lambda h: h.set("CSeq", f"{t.cseq} INFO")),
    "from a host not the server": _untrusted,
}


def _more_after_to_tag(t: Twins) -> bytes:
    tag = t.subscribe.from_.tag
    assert tag is not None
    data = t.build()
    edited = data.replace(f";tag={tag}\r\n".encode(), f";tag={tag} x\r\n".encode(), 1)
    assert edited != data
    return edited


def _again(t: Twins) -> bytes:
    data = t.build()
    assert t.feed(data)
    return data


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_any_other_notify_takes_the_general_path_with_the_same_outcome(case: str) -> None:
    t = twins()
    made = _REFUSED[case](t)
    data, source = made if isinstance(made, tuple) else (made, NOTIFIER_ADDR)
    assert not t.feed(data, source)
    # The next NOTIFY after it: taken or not, both sides still agree.
    t.feed(t.build())
    t.run_until(4000.0)


def test_a_notify_while_unsubscribing_takes_the_general_path() -> None:
    t = twins()
    for net in (t.lean, t.general):
        net.ua.unsubscribe(t.sub_id, net.now)
    assert_same(t)
    assert not t.feed(t.build())


# Edits that make a NOTIFY one parse_message refuses.
_MALFORMED = {
    "Request-URI": (b"NOTIFY sip:", b"NOTIFY sip:@"),
    "To": (b"\r\nTo: ", b"\r\nTo: <"),
    "From": (b"\r\nFrom: ", b'\r\nFrom: "x'),
    "CSeq": (b" NOTIFY\r\n", b"x NOTIFY\r\n"),
    "Content-Length": (b"\r\nContent-Length: ", b"\r\nContent-Length: x"),
}


@pytest.mark.parametrize("header", sorted(_MALFORMED))
def test_what_parse_message_refuses_the_byte_path_refuses(header: str) -> None:
    t = twins()
    good = t.build()
    assert read_lean_notify(good) is not None
    bad = good.replace(*_MALFORMED[header], 1)
    assert bad != good
    with pytest.raises(RemoteProtocolError):
        parse_message(bad)
    assert read_lean_notify(bad) is None
    assert not t.feed(bad)  # dropped by both, unanswered


_STEPS = ["next", "same again", "changed", "expires", "skip", "older", "pending", "terminated",
          "retransmit", "refresh", "refresh answered", "wait"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.sampled_from(_STEPS), min_size=1, max_size=14))
def test_any_sequence_of_notifies_ends_alike(steps: list[str]) -> None:
    t = twins()
    last = t.build()
    assert t.feed(last)
    for step in steps:
        if step == "next":
            last = t.build()
        elif step == "same again":
            last = t.build(body=PIDF)
        elif step == "changed":
            last = t.build(body=PIDF + b" ")
        elif step == "expires":
            last = t.build("active;expires=90")
        elif step == "skip":
            t.cseq += 1
            last = t.build()
        elif step == "older":
            last = t.build(cseq=max(1, t.cseq - 2))
        elif step == "pending":
            last = t.build("pending;expires=3600")
        elif step == "terminated":
            last = t.build("terminated;reason=timeout")
        elif step == "retransmit":
            pass  # last, again
        elif step == "refresh":
            t.both(lambda net: net.ua.refresh(t.sub_id, net.now))
            assert_same(t)
            continue
        elif step == "refresh answered":
            t.both(lambda net: net.ua.refresh(t.sub_id, net.now))
            out = t.lean.ua.datagrams_to_send()
            assert out == t.general.ua.datagrams_to_send()
            for data, _ in out:  # none once the subscription has ended
                t.feed(success(data), SERVER_ADDR)
            continue
        else:
            t.run_until(t.lean.now + 40.0)
            continue
        t.feed(last)
    t.run_until(t.lean.now + 8000.0)



# -- the 2xx to a refresh ---------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["200", "202", "no Expires", "a shorter Expires", "Expires 0", "more headers",
             "after a retransmission"],
)
def test_the_2xx_to_a_refresh_takes_the_byte_path(case: str) -> None:
    t = twins()
    subscribe = t.refreshed()
    if case == "after a retransmission":
        # Timer E (T1): the SUBSCRIBE again, the window narrowed.
        t.both(lambda net: net.run_until(net.now + 0.6))
        assert t.sent() == subscribe
        assert t.lean.ua.counters.retransmissions == 1
    data = {
        "200": lambda: success(subscribe),
        "202": lambda: success(subscribe, 202),
        "no Expires": lambda: success(subscribe, expires=None),
        "a shorter Expires": lambda: success(subscribe, expires="120"),
        "Expires 0": lambda: success(subscribe, expires="0"),
        "more headers": lambda: success(subscribe, headers=_more),
        "after a retransmission": lambda: success(subscribe),
    }[case]()
    assert t.feed(data, SERVER_ADDR)
    assert t.lean.ua._outgoing == {}
    # And the dialog goes on alike: its NOTIFY, its next refresh, its timers.
    t.feed(t.build())
    t.run_until(t.lean.now + 4000.0)


def _initial(t: Twins) -> bytes:
    t.both(lambda net: net.ua.subscribe(BOB, CAROL, net.now))
    return success(t.sent())


def _unsubscribing(t: Twins) -> bytes:
    t.both(lambda net: net.ua.unsubscribe(t.sub_id, net.now))
    return success(t.sent(), expires="0")


def _repeated(t: Twins) -> bytes:
    data = success(t.refreshed())
    assert t.feed(data, SERVER_ADDR)
    return data


_SUCCESS_REFUSED: dict[str, Callable[[Twins], bytes | tuple[bytes, Destination]]] = {
    "a 2xx received again": _repeated,
    "to the initial SUBSCRIBE": _initial,
    "to the SUBSCRIBE that ends it": _unsubscribing,
    "an Expires not a number": lambda t: success(t.refreshed(), expires="soon"),
    "two Vias": lambda t: success(t.refreshed(), headers=lambda h: h.add(
        "Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKproxy")),
    "a compact Call-ID": lambda t: _edited(success(t.refreshed()), b"\r\nCall-ID: ", b"\r\ni: "),
    "a body cut short": lambda t: _edited(success(t.refreshed()), b"\r\nContent-Length: 0\r\n",
                                          b"\r\nContent-Length: 10\r\n"),
    "a 4xx": lambda t: success(t.refreshed(), 481),
    "from a host not the server": lambda t: (success(t.refreshed()),
                                             Destination("udp", "192.0.2.9", 5060)),
}


@pytest.mark.parametrize("case", sorted(_SUCCESS_REFUSED))
def test_any_other_response_takes_the_general_path_with_the_same_outcome(case: str) -> None:
    t = twins()
    made = _SUCCESS_REFUSED[case](t)
    data, source = made if isinstance(made, tuple) else (made, SERVER_ADDR)
    assert not t.feed(data, source)
    t.run_until(t.lean.now + 4000.0)


# -- the 2xx to a PUBLISH (RFC 3903) ---------------------------------------------


def published(t: Twins, etag: str = "e1") -> tuple[int, bytes]:
    """A publication of ``ALICE`` on both, confirmed; its id and first PUBLISH."""
    ids = []
    t.both(lambda net: ids.append(net.ua.publish(ALICE, PIDF, net.now)))
    assert ids[0] == ids[1]
    publish = t.sent()
    assert t.feed(etagged(publish, etag), SERVER_ADDR)
    return ids[0], publish


def etagged(request: bytes, etag: str | None = "e2", status: int = 200, **options: Any) -> bytes:
    """Kamailio's 2xx to a PUBLISH (tests/data/kamailio/02-publish-200.txt)."""
    def more(h: Headers) -> None:
        if etag is not None:
            h.add("SIP-ETag", etag)
        h.add("Server", "presence-adapter bundled presence server (Kamailio)")
        extra = options.get("headers")
        if extra is not None:
            extra(h)

    return success(request, status, expires=options.get("expires", "3600"), headers=more)


def _refreshed_publication(t: Twins, publication: int) -> bytes:
    """The publication's refresh on both (its timer): the PUBLISH sent."""
    at = t.lean.ua.publication(publication).get_timer()  # type: ignore[union-attr]
    assert at is not None
    t.both(lambda net: net.run_until(at))
    return t.sent()


def _publication_case(t: Twins, case: str) -> bytes:
    publication, _ = published(t)
    if case == "to the first PUBLISH":
        t.both(lambda net: net.ua.publish(CAROL, PIDF, net.now))
        return etagged(t.sent())
    if case == "to a modify":
        t.both(lambda net: net.ua.modify(publication, PIDF + b" ", net.now))
        return etagged(t.sent())
    if case == "to a modify, another one waiting":
        t.both(lambda net: net.ua.modify(publication, PIDF + b" ", net.now))
        modify = t.sent()
        t.both(lambda net: net.ua.modify(publication, PIDF + b"  ", net.now))
        return etagged(modify)
    if case == "to a modify, removed meanwhile":
        t.both(lambda net: net.ua.modify(publication, PIDF + b" ", net.now))
        modify = t.sent()
        t.both(lambda net: net.ua.unpublish(publication, net.now))
        return etagged(modify)
    if case == "to the removal":
        t.both(lambda net: net.ua.unpublish(publication, net.now))
        return etagged(t.sent(), expires="0")
    if case == "to a publication let go":
        refresh = _refreshed_publication(t, publication)
        t.both(lambda net: net.ua.abandon(publication))
        return etagged(refresh)
    refresh = _refreshed_publication(t, publication)
    if case == "after a retransmission":
        t.both(lambda net: net.run_until(net.now + 0.6))
        assert t.sent() == refresh
    return {
        "to a refresh": lambda: etagged(refresh),
        "after a retransmission": lambda: etagged(refresh),
        "202": lambda: etagged(refresh, status=202),
        "no Expires": lambda: etagged(refresh, expires=None),
        "a shorter Expires": lambda: etagged(refresh, expires="120"),
        "no SIP-ETag": lambda: etagged(refresh, etag=None),
        "more headers": lambda: etagged(refresh, headers=_more),
    }[case]()


@pytest.mark.parametrize(
    "case", ["to the first PUBLISH", "to a modify", "to a modify, another one waiting",
             "to a modify, removed meanwhile", "to the removal", "to a publication let go",
             "to a refresh", "after a retransmission", "202", "no Expires",
             "a shorter Expires", "no SIP-ETag", "more headers"],
)
def test_the_2xx_to_a_publish_takes_the_byte_path(case: str) -> None:
    t = twins()
    data = _publication_case(t, case)
    assert t.feed(data, SERVER_ADDR)
    assert t.lean.ua._outgoing.keys() == t.general.ua._outgoing.keys()
    # And the publications go on alike: what they send next, their refreshes,
    # their retransmissions.
    t.run_until(t.lean.now + 4000.0)


def test_a_refresh_confirmed_from_its_bytes_carries_the_new_entity_tag() -> None:
    t = twins()
    publication, _ = published(t, "e1")
    refresh = _refreshed_publication(t, publication)
    assert b"\r\nSIP-If-Match: e1\r\n" in refresh
    assert t.feed(etagged(refresh, "e2", expires="600"), SERVER_ADDR)
    kept = t.lean.ua.publication(publication)
    assert kept is not None and kept.etag == "e2" and kept.expires_at == t.lean.now + 600
    t.both(lambda net: net.ua.modify(publication, PIDF + b" ", net.now))
    assert b"\r\nSIP-If-Match: e2\r\n" in t.sent()


_PUBLISH_REFUSED: dict[str, Callable[[bytes], bytes]] = {
    "a SIP-ETag not a token": lambda refresh: etagged(refresh, "e 2"),
    "an empty SIP-ETag": lambda refresh: etagged(refresh, ""),
    "an Expires not a number": lambda refresh: etagged(refresh, expires="soon"),
    "a 4xx": lambda refresh: etagged(refresh, status=412),
    "a compact Via": lambda refresh: _edited(etagged(refresh), b"\r\nVia: ", b"\r\nv: "),
}


@pytest.mark.parametrize("case", sorted(_PUBLISH_REFUSED))
def test_any_other_answer_to_a_publish_takes_the_general_path_alike(case: str) -> None:
    t = twins()
    publication, _ = published(t)
    refresh = _refreshed_publication(t, publication)
    assert not t.feed(_PUBLISH_REFUSED[case](refresh), SERVER_ADDR)
    t.run_until(t.lean.now + 4000.0)
