from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.headers import CSeq, Event, RetryAfter, SubscriptionState, Via
from sip.message import (
    _NAME_ADDRS,
    _PLAIN_ADDRESS,
    Headers,
    Message,
    Request,
    Response,
    StreamParser,
    _check_name_addr,
    _lean_tag,
    _parse_full,
    _parse_lean,
    is_keepalive,
    parse_message,
    read_lean_notify,
    read_lean_success,
)
from sip.uri import NameAddr, SipURI

DATA = Path(__file__).parent.parent / "data" / "sip"
SAMPLES = sorted(p.name for p in DATA.glob("*.sip"))
# Written in canonical form: serialising the parsed message gives the same bytes.
CANONICAL = [
    "comma_via.sip",
    "notify_active.sip",
    "notify_terminated.sip",
    "publish_pidf.sip",
    "response_200_publish.sip",
    "response_401.sip",
    "subscribe.sip",
]


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def minimal(method: str = "NOTIFY", extra: str = "", body: bytes = b"") -> bytes:
    head = (
        f"{method} sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        "From: <sip:alice@example.com>;tag=a\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: c1@host\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "\r\n"
    )
    return head.encode() + body


class TestHeaders:
    def test_canonical_names_and_compact_forms(self) -> None:
        h = Headers([("v", "SIP/2.0/UDP a"), ("call-id", "x"), ("cseq", "1 X"), ("X-Custom", "1")])
        assert [name for name, _ in h] == ["Via", "Call-ID", "CSeq", "X-Custom"]
        assert h.get("VIA") == "SIP/2.0/UDP a"
        assert h.get("i") == "x"
        assert h.get("x-custom") == "1"
        assert "Via" in h and "v" in h and "Contact" not in h
        assert 5 not in h
        assert len(h) == 4

    @pytest.mark.parametrize(
        ("compact", "full"),
        [
            ("i", "Call-ID"), ("m", "Contact"), ("e", "Content-Encoding"),
            ("l", "Content-Length"), ("c", "Content-Type"), ("f", "From"), ("s", "Subject"),
            ("k", "Supported"), ("t", "To"), ("v", "Via"), ("o", "Event"),
            ("u", "Allow-Events"), ("r", "Refer-To"), ("b", "Referred-By"),
            ("x", "Session-Expires"),
        ],
    )  # fmt: skip
    def test_every_compact_form(self, compact: str, full: str) -> None:
        h = Headers()
        h.add(compact.upper(), "v1")
        assert list(h) == [(full, "v1")]
        assert h.get(full.lower()) == "v1"

    def test_add_set_remove(self) -> None:
        h = Headers()
        h.add("Route", "<sip:a;lr>")
        h.add("Expires", "10")
        h.add("Route", "<sip:b;lr>")
        h.set("route", "<sip:c;lr>")
        assert list(h) == [("Route", "<sip:c;lr>"), ("Expires", "10")]
        h.set("Max-Forwards", "70")
        assert list(h)[-1] == ("Max-Forwards", "70")
        assert h.remove("Expires") == 1
        assert h.remove("Expires") == 0
        assert h.get("Expires") is None
        h.prepend("Via", "SIP/2.0/UDP top")
        assert list(h)[0] == ("Via", "SIP/2.0/UDP top")

    def test_get_all_splits_list_headers(self) -> None:
        h = Headers()
        h.add("Via", "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2")
        h.add("Via", "SIP/2.0/UDP c;branch=3")
        h.add("Contact", '"Doe, John" <sip:j@d;x=a,b>;q=0.1, <sip:k@d>')
        h.add("Allow", "INVITE, ACK,NOTIFY")
        assert h.get_all("v") == [
            "SIP/2.0/UDP a;branch=1",
            "SIP/2.0/UDP b;branch=2",
            "SIP/2.0/UDP c;branch=3",
        ]
        assert h.get("Via") == "SIP/2.0/UDP a;branch=1"
        assert h.get_raw("Via")[0] == "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2"
        assert h.get_all("m") == ['"Doe, John" <sip:j@d;x=a,b>;q=0.1', "<sip:k@d>"]
        assert h.get_all("Allow") == ["INVITE", "ACK", "NOTIFY"]

    def test_get_all_does_not_split_comma_valued_headers(self) -> None:
        challenge = 'Digest realm="a", nonce="b", qop="auth,auth-int"'
        h = Headers()
        h.add("WWW-Authenticate", challenge)
        h.add("WWW-Authenticate", 'Digest realm="a", algorithm=SHA-256')
        h.add("Date", "Sat, 13 Nov 2010 23:29:00 GMT")
        h.add("X-Unknown", "a, b")
        assert h.get_all("www-authenticate") == [challenge, 'Digest realm="a", algorithm=SHA-256']
        assert h.get("WWW-Authenticate") == challenge
        assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
        assert h.get_all("X-Unknown") == ["a, b"]
        for name in ("Authorization", "Proxy-Authenticate", "Proxy-Authorization"):
            h.add(name, 'Digest a="1", b="2"')
            assert h.get_all(name) == ['Digest a="1", b="2"']

    def test_header_injection_is_refused(self) -> None:
        h = Headers()
        with pytest.raises(LocalProtocolError):
            h.add("Subject", "hi\r\nVia: SIP/2.0/UDP evil")
        with pytest.raises(LocalProtocolError):
            h.set("Bad Name", "x")
        with pytest.raises(LocalProtocolError):
            h.add("", "x")

    def test_equality_and_copy(self) -> None:
        a = Headers([("v", "x"), ("To", "y")])
        b = a.copy()
        assert a == b and a == Headers([("Via", "x"), ("t", "y")])
        b.add("Expires", "1")
        assert a != b and len(a) == 2


def test_lookups_follow_every_change_of_the_fields() -> None:
    h = Headers([("Expires", "1"), ("Event", "presence")])
    assert h.get("Expires") == "1" and "Event" in h and "Contact" not in h
    h.add("Contact", "<sip:a@b>")
    assert h.get("m") == "<sip:a@b>"
    h.prepend("Expires", "0")
    assert h.get("Expires") == "0"  # the first field of a name
    h.set("Expires", "2")
    assert h.get("Expires") == "2" and h.get_raw("Expires") == ["2"]
    h.remove("Event")
    assert h.get("Event") is None and "Event" not in h
    copy = h.copy()
    copy.add("Event", "presence.winfo")
    assert copy.get("Event") == "presence.winfo" and h.get("Event") is None


class TestSamples:
    def test_all_samples_are_present(self) -> None:
        assert len(SAMPLES) >= 9

    @pytest.mark.parametrize("name", SAMPLES)
    def test_round_trip(self, name: str) -> None:
        data = sample(name)
        msg = parse_message(data)
        again = parse_message(bytes(msg))
        assert again == msg
        assert bytes(again) == bytes(msg)
        if name in CANONICAL:
            assert bytes(msg) == data

    def test_publish(self) -> None:
        req = parse_message(sample("publish_pidf.sip"))
        assert isinstance(req, Request)
        assert req.method == "PUBLISH"
        assert req.uri == SipURI("sip", "alice", "example.com")
        assert req.cseq == CSeq(2, "PUBLISH")
        assert req.event == Event("presence")
        assert req.expires == 3600
        assert req.max_forwards == 70
        assert req.sip_if_match == "a.1700000000.12345.1.0"
        assert req.sip_etag is None
        assert req.content_type == "application/pidf+xml"
        assert req.media_type == "application/pidf+xml"
        assert req.body.startswith(b"<?xml") and req.body.endswith(b"</presence>\n")
        assert req.from_.tag == "f8a1c2" and req.to.tag is None
        assert req.vias[0].rport_requested

    def test_subscribe(self) -> None:
        req = parse_message(sample("subscribe.sip"))
        assert isinstance(req, Request)
        assert req.from_ == NameAddr.parse('"Bob" <sip:bob@example.com>;tag=b0b1')
        assert req.contacts == [NameAddr.parse("<sip:bob@127.0.0.1:5080;transport=tcp>")]
        assert req.headers.get_all("Accept") == [
            "application/pidf+xml",
            "application/rlmi+xml",
            "multipart/related",
        ]
        assert req.headers.get_all("u") == ["presence", "presence.winfo"]
        assert req.body == b""
        assert req.vias[0].transport == "TCP"

    def test_notify(self) -> None:
        req = parse_message(sample("notify_active.sip"))
        assert isinstance(req, Request)
        assert req.subscription_state == SubscriptionState("active", (("expires", "3599"),))
        assert req.record_routes == [NameAddr.parse("<sip:127.0.0.1:5070;transport=tcp;lr>")]
        assert req.contacts[0].sip_uri.host == "127.0.0.1"
        assert req.body.count(b"\n") == 14
        assert req.call_id == "sub-1f2e3d@127.0.0.1"

    def test_notify_terminated(self) -> None:
        req = parse_message(sample("notify_terminated.sip"))
        state = req.subscription_state
        assert state is not None
        assert (state.state, state.reason, state.retry_after) == ("terminated", "rejected", 120)

    def test_401(self) -> None:
        resp = parse_message(sample("response_401.sip"))
        assert isinstance(resp, Response)
        assert (resp.status, resp.reason) == (401, "Unauthorized")
        challenges = resp.headers.get_all("WWW-Authenticate")
        assert len(challenges) == 1 and 'qop="auth,auth-int"' in challenges[0]
        via = resp.vias[0]
        assert (via.received, via.rport) == ("127.0.0.1", 5080)
        assert resp.to.tag == "4f5a6e3d2b1c"

    def test_200_publish(self) -> None:
        resp = parse_message(sample("response_200_publish.sip"))
        assert isinstance(resp, Response)
        assert resp.sip_etag == "a.1700000000.12345.2.0"
        assert resp.expires == 3600
        assert resp.retry_after is None
        assert resp.event is None and resp.subscription_state is None

    def test_compact_forms(self) -> None:
        req = parse_message(sample("compact_forms.sip"))
        assert isinstance(req, Request)
        assert req.event == Event("presence", (("id", "42"),))
        assert req.call_id == "compact-1@127.0.0.1"
        assert req.content_type == "application/pidf+xml"
        assert req.headers.get_all("Supported") == ["eventlist"]
        assert req.contacts[0].uri == SipURI("sip", None, "127.0.0.1", 5070)
        assert b"\r\nContent-Length: " in bytes(req) and b"\r\nl: " not in bytes(req)
        assert req.body.startswith(b"<?xml")

    def test_folded_headers(self) -> None:
        req = parse_message(sample("folded_headers.sip"))
        assert isinstance(req, Request)
        assert req.vias == [Via("UDP", "127.0.0.1", 5080, (("branch", "z9hG4bK-fold-1"),))]
        assert req.from_.display == "Bob Smith"
        assert req.to.uri == SipURI("sip", "alice", "example.com")
        assert req.cseq == CSeq(7, "SUBSCRIBE")
        assert req.headers.get_all("Accept") == [
            "application/pidf+xml",
            "application/watcherinfo+xml",
        ]

    def test_comma_joined_vias_and_routes(self) -> None:
        req = parse_message(sample("comma_via.sip"))
        assert [v.branch for v in req.vias] == ["z9hG4bK-top", "z9hG4bK-mid", "z9hG4bK-bottom"]
        assert req.vias[1].host == "[2001:db8::1]"
        assert [r.sip_uri.host for r in req.routes] == ["p1.example.com", "p2.example.com"]


class TestAccessors:
    def test_absent_optional_headers(self) -> None:
        msg = parse_message(minimal())
        assert msg.contacts == [] and msg.record_routes == [] and msg.routes == []
        assert msg.expires is None and msg.min_expires is None and msg.max_forwards is None
        assert msg.event is None and msg.subscription_state is None
        assert msg.sip_etag is None and msg.content_type is None and msg.media_type is None
        assert msg.retry_after is None

    def test_retry_after_and_min_expires(self) -> None:
        resp = Response(423, "Interval Too Brief")
        resp.headers.add("Min-Expires", "1800")
        resp.headers.add("Retry-After", "30 (busy)")
        assert resp.min_expires == 1800
        assert resp.retry_after == RetryAfter(30, "busy")

    def test_accessors_follow_header_changes(self) -> None:
        msg = parse_message(minimal(extra="Expires: 60\r\n"))
        assert msg.expires == 60
        msg.headers.set("Expires", "120")
        assert msg.expires == 120
        msg.headers.remove("Expires")
        assert msg.expires is None
        msg.headers.set("CSeq", "5 NOTIFY")
        assert msg.cseq.seq == 5

    def test_returned_lists_are_copies(self) -> None:
        msg = parse_message(minimal())
        msg.vias.clear()
        assert len(msg.vias) == 1

    @pytest.mark.parametrize(
        ("header", "accessor"),
        [
            ("Expires: soon", "expires"),
            ("Event: pres ence", "event"),
            ("Subscription-State: active;expires=x", "subscription_state"),
            ("SIP-ETag: a b", "sip_etag"),
            ("Contact: <sip:a@b", "contacts"),
            ("Retry-After: later", "retry_after"),
            ("Record-Route: garbage", "record_routes"),
        ],
    )
    def test_malformed_optional_header_fails_on_access(self, header: str, accessor: str) -> None:
        msg = parse_message(minimal(extra=header + "\r\n"))
        with pytest.raises(RemoteProtocolError):
            getattr(msg, accessor)

    def test_missing_mandatory_header_on_a_local_message(self) -> None:
        req = Request("OPTIONS", SipURI("sip", None, "example.com"))
        with pytest.raises(RemoteProtocolError):
            req.call_id  # noqa: B018
        assert req.vias == []


class TestSerialise:
    def test_content_length_from_body(self) -> None:
        h = Headers([("Content-Length", "999"), ("Content-Type", "text/plain")])
        req = Request("MESSAGE", SipURI("sip", "a", "b"), h, b"hello")
        assert bytes(req) == (
            b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
        )
        assert bytes(Response(200, "OK")) == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"

    def test_duplicate_content_length_written_once(self) -> None:
        h = Headers([("l", "1"), ("Content-Length", "2")])
        assert bytes(Response(200, "OK", h)).count(b"Content-Length") == 1

    def test_equality_ignores_content_length(self) -> None:
        # It is derived from the body on output, so it does not make a difference.
        a = Response(200, "OK", Headers([("Content-Length", "0"), ("Expires", "5")]))
        b = Response(200, "OK", Headers([("Expires", "5")]))
        assert a == b
        assert a != Response(200, "OK", Headers([("Expires", "6")]))
        assert a != Response(200, "OK", Headers([("Expires", "5")]), b"x")
        assert a != Response(202, "OK", Headers([("Expires", "5")]))
        req = Request("OPTIONS", SipURI("sip", None, "h"))
        assert req == Request("OPTIONS", SipURI("sip", None, "h"), Headers([("l", "0")]))
        assert req != Request("OPTIONS", SipURI("sip", None, "h2"))
        assert req != a

    def test_start_line_injection_is_refused(self) -> None:
        with pytest.raises(LocalProtocolError):
            bytes(Response(200, "OK\r\nVia: SIP/2.0/UDP evil"))
        with pytest.raises(LocalProtocolError):
            bytes(Request("OPTIONS\r\n", SipURI("sip", None, "h")))

    def test_utf8(self) -> None:
        resp = Response(200, "Très bien")
        resp.headers.add("Subject", "Grüße")
        data = bytes(resp)
        assert "Très bien".encode() in data and "Grüße".encode() in data


class TestResponse:
    def request(self, to_tag: str | None = None) -> Request:
        to = "To: <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
        data = (
            "SUBSCRIBE sip:bob@example.com SIP/2.0\r\n"
            "Via: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\r\n"
            "Via: SIP/2.0/UDP uac;branch=z9hG4bK3;rport\r\n"
            "Record-Route: <sip:p1;lr>\r\n"
            'From: "A" <sip:alice@example.com>;tag=f1\r\n'
            f"{to}\r\n"
            "Call-ID: call-1\r\n"
            "CSeq: 10 SUBSCRIBE\r\n"
            "Timestamp: 54\r\n"
            "Event: presence\r\n"
            "Expires: 60\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        req = parse_message(data)
        assert isinstance(req, Request)
        return req

    def test_copies_per_8_2_6_2(self) -> None:
        req = self.request()
        resp = req.response(200, to_tag="t9")
        assert (resp.status, resp.reason) == (200, "OK")
        assert resp.headers.get_raw("Via") == req.headers.get_raw("Via")
        assert resp.vias == req.vias
        assert resp.from_ == req.from_
        assert resp.call_id == "call-1"
        assert resp.cseq == req.cseq
        assert resp.to == req.to.with_tag("t9")
        # §12.1.1: a dialog-creating 2xx carries the Record-Route.
        assert resp.record_routes == req.record_routes
        # Nothing else is copied.
        assert resp.event is None and resp.expires is None
        assert resp.headers.get("Timestamp") is None

    def test_existing_to_tag_is_kept(self) -> None:
        req = self.request(to_tag="dialog")
        assert req.response(481, to_tag="other").to.tag == "dialog"
        assert req.response(200).to.tag == "dialog"

    def test_to_tag_required_for_final_response(self) -> None:
        with pytest.raises(LocalProtocolError):
            self.request().response(404)

    def test_100_trying(self) -> None:
        resp = self.request().response(100)
        assert resp.reason == "Trying"
        assert resp.to.tag is None
        # §8.2.6.1: Timestamp copied into a 100.
        assert resp.headers.get("Timestamp") == "54"
        assert resp.record_routes == []

    def test_reason_phrases(self) -> None:
        req = self.request(to_tag="x")
        assert req.response(489).reason == "Bad Event"
        assert req.response(412).reason == "Conditional Request Failed"
        assert req.response(481).reason == "Call/Transaction Does Not Exist"
        assert req.response(499).reason == "Client Error"
        assert req.response(150).reason == "Provisional"
        assert req.response(299).reason == "Success"
        assert req.response(200, "Fine").reason == "Fine"
        assert req.response(404).record_routes == []

    def test_response_round_trips(self) -> None:
        resp = self.request().response(202, to_tag="abc")
        again = parse_message(bytes(resp))
        assert isinstance(again, Response)
        assert bytes(again) == bytes(resp)
        assert (again.status, again.reason, again.to, again.vias) == (
            202,
            "Accepted",
            resp.to,
            resp.vias,
        )

    @pytest.mark.parametrize(
        ("status", "reason", "to_tag", "dialog"),
        [
            (200, None, None, "dialog"),  # the answer to an in-dialog NOTIFY
            (200, None, "t9", None),  # a To tag added, Record-Route copied
            (202, "Fine", "t9", None),
            (481, None, "t1", None),
            (500, None, None, "dialog"),
            (100, None, None, None),  # Timestamp copied, no tag
            (699, None, None, "dialog"),
        ],
    )
    def test_response_bytes_are_the_response_serialised(
        self, status: int, reason: str | None, to_tag: str | None, dialog: str | None
    ) -> None:
        req = self.request(to_tag=dialog)
        assert req.response_bytes(status, reason, to_tag=to_tag) == bytes(
            req.response(status, reason, to_tag=to_tag)
        )

    def test_response_bytes_refuse_what_response_refuses(self) -> None:
        with pytest.raises(LocalProtocolError):
            self.request().response_bytes(404)  # no To tag given
        with pytest.raises(LocalProtocolError):
            self.request(to_tag="x").response_bytes(700)
        with pytest.raises(LocalProtocolError):
            self.request(to_tag="x").response_bytes(200, "OK\r\nX-Forged: 1")
        ack = parse_message(minimal("ACK"))
        assert isinstance(ack, Request)
        with pytest.raises(LocalProtocolError):
            ack.response_bytes(200)

    def test_bad_uses(self) -> None:
        req = self.request(to_tag="x")
        with pytest.raises(LocalProtocolError):
            req.response(700)
        with pytest.raises(LocalProtocolError):
            self.request().response(200, to_tag="bad tag")
        ack = parse_message(minimal("ACK"))
        assert isinstance(ack, Request)
        with pytest.raises(LocalProtocolError):
            ack.response(200)


class TestParseMessage:
    def test_content_length_truncates_and_missing_means_rest(self) -> None:
        msg = parse_message(minimal(extra="Content-Length: 3\r\n", body=b"abcdef"))
        assert msg.body == b"abc"
        assert parse_message(minimal(body=b"abcdef")).body == b"abcdef"

    def test_short_body_is_an_error(self) -> None:
        # RFC 3261 §18.3: a datagram ending before the body's end is an error.
        with pytest.raises(RemoteProtocolError):
            parse_message(minimal(extra="Content-Length: 10\r\n", body=b"abc"))

    def test_leading_crlf_ignored(self) -> None:
        assert parse_message(b"\r\n\r\n" + minimal()).method == "NOTIFY"  # type: ignore[union-attr]

    def test_response_without_reason_phrase(self) -> None:
        data = minimal().replace(b"NOTIFY sip:bob@127.0.0.1:5080 SIP/2.0", b"SIP/2.0 200")
        resp = parse_message(data)
        assert isinstance(resp, Response) and resp.reason == ""

    def test_blanks_before_colon(self) -> None:
        # HCOLON = *( SP / HTAB ) ":" SWS
        assert parse_message(minimal().replace(b"From:", b"From \t:")).from_.tag == "a"

    def test_max_forwards_may_be_absent(self) -> None:
        assert parse_message(minimal()).max_forwards is None

    def test_non_sip_request_uri(self) -> None:
        data = minimal().replace(b"sip:bob@127.0.0.1:5080", b"tel:+15551234")
        req = parse_message(data)
        assert isinstance(req, Request) and str(req.uri) == "tel:+15551234"

    def test_size_cap(self) -> None:
        data = minimal(body=b"x" * 2000)
        with pytest.raises(RemoteProtocolError):
            parse_message(data, max_size=1000)
        assert parse_message(data, max_size=len(data)).body == b"x" * 2000

    @pytest.mark.parametrize("missing", [b"Via", b"From", b"To", b"Call-ID", b"CSeq"])
    def test_mandatory_headers(self, missing: bytes) -> None:
        lines = minimal().split(b"\r\n")
        data = b"\r\n".join(line for line in lines if not line.startswith(missing + b":"))
        with pytest.raises(RemoteProtocolError):
            parse_message(data)

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\r\n\r\n",
            b"garbage",
            minimal().replace(b"CSeq: 1 NOTIFY", b"CSeq: 1 SUBSCRIBE"),
            minimal().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1),
            minimal().replace(b"NOTIFY sip", b"NOT IFY sip"),
            minimal().replace(b" SIP/2.0\r\n", b"\r\n", 1),
            minimal().replace(b"\r\n\r\n", b"\r\n"),
            minimal().replace(b"Call-ID: c1@host", b"Call-ID: c1 host"),
            minimal().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com"),
            minimal().replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0"),
            minimal().replace(b"From:", b"Fr om:"),
            # A blank-led From line folds into the Via: no From is left.
            minimal().replace(b"From:", b" From:", 1),
            minimal(extra="Content-Length: -1\r\n"),
            minimal(extra="Content-Length: 1\r\nl: 2\r\n", body=b"ab"),
            minimal(extra="Bad\nLine: x\r\n"),
            minimal(extra="X: a\rb\r\n"),
            minimal(extra="no colon\r\n"),
            minimal(extra=": empty name\r\n"),
            b"SIP/2.0 99 Low\r\n" + minimal().split(b"\r\n", 1)[1],
            b"SIP/2.0 2000 OK\r\n" + minimal().split(b"\r\n", 1)[1],
            b"SIP/2.0 abc OK\r\n" + minimal().split(b"\r\n", 1)[1],
            b" continuation first\r\n" + minimal(),
            minimal().replace(b"c1@host", b"c1@\xff\xfe"),
        ],
    )
    def test_garbage(self, data: bytes) -> None:
        with pytest.raises(RemoteProtocolError):
            parse_message(data)


KAMAILIO = Path(__file__).parent.parent / "data" / "kamailio"
KAMAILIO_SIP = sorted(KAMAILIO.glob("*.txt"))


def _typed(msg: Message) -> tuple[object, ...]:
    return (msg.vias, msg.call_id, msg.from_, msg.to, msg.cseq, msg.contacts, msg.expires,
            msg.event, msg.subscription_state, msg.content_type)


class TestLeanParse:
    """The lean parse gives the full parse's message, or None: never another one."""

    @pytest.mark.parametrize(
        "data",
        [*(DATA / name for name in SAMPLES), *KAMAILIO_SIP],
        ids=lambda p: p.name,
    )
    def test_captures_read_as_the_full_parse_reads_them(self, data: Path) -> None:
        raw = data.read_bytes()
        if not raw.startswith((b"SIP/2.0 ", b"NOTIFY ", b"SUBSCRIBE ", b"PUBLISH ", b"OPTIONS ")):
            pytest.skip("not a SIP message")
        full = _parse_full(raw)
        lean = _parse_lean(raw)
        if data.parent == KAMAILIO:
            # What the presence server sends, and what we send it: all lean.
            assert lean is not None
        if lean is not None:
            assert lean == full
            assert type(lean) is type(full)
            assert _typed(lean) == _typed(full)
            assert bytes(lean) == bytes(full)

    def test_the_common_shape_is_lean(self) -> None:
        data = minimal(extra="Content-Length: 3\r\nEvent: presence\r\n", body=b"abcdef")
        lean = _parse_lean(data)
        assert lean is not None and lean == _parse_full(data) and lean.body == b"abc"
        assert _parse_lean(minimal(body=b"xyz")) == _parse_full(minimal(body=b"xyz"))
        # Blanks around a value go, as the full parse strips them (§7.3.1).
        blanks = minimal(extra="Content-Length:  3 \r\n", body=b"abc").replace(
            b"From: ", b"From:  ")
        lean = _parse_lean(blanks)
        assert lean is not None and lean == _parse_full(blanks) and lean.body == b"abc"
        assert _typed(lean) == _typed(_parse_full(blanks))

    @pytest.mark.parametrize(
        "data",
        [
            # Shapes the full parse reads, differently spelt.
            b"\r\n" + minimal(),
            minimal().replace(b"Via:", b"v:"),
            minimal().replace(b"Call-ID:", b"call-id:"),
            minimal().replace(b"From: ", b"From:"),
            minimal().replace(b"From:", b"From \t:"),
            minimal(extra="X-Unknown: 1\r\n"),
            minimal(extra="Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2\r\n"),
            minimal().replace(b"z9hG4bK1", b"z9hG4bK1, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK2"),
            minimal(extra="Subject: a\r\n b\r\n"),
            # And garbage, which the full parse refuses with its reason.
            minimal().replace(b"CSeq: 1 NOTIFY", b"CSeq: 1 SUBSCRIBE"),
            minimal().replace(b"Call-ID: c1@host", b"Call-ID: c1 host"),
            minimal().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com"),
            minimal().replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0"),
            minimal().replace(b"CSeq: 1", b"CSeq: x"),
            minimal(extra="Content-Length: -1\r\n"),
            minimal(extra="Content-Length: 10\r\n", body=b"abc"),
            minimal(extra="Bad\nLine: x\r\n"),
            minimal(extra="no colon\r\n"),
            minimal().replace(b"c1@host", b"c1@\xff\xfe"),
            minimal().replace(b"\r\n\r\n", b"\r\n"),
            b"SIP/2.0 2000 OK\r\n" + minimal().split(b"\r\n", 1)[1],
            *(b"\r\n".join(line for line in minimal().split(b"\r\n")
                            if not line.startswith(missing + b":"))
              for missing in (b"Via", b"From", b"To", b"Call-ID", b"CSeq")),
        ],
    )
    def test_anything_else_falls_back_to_the_full_parse(self, data: bytes) -> None:
        assert _parse_lean(data) is None
        try:
            expected: Message | str = _parse_full(data)
        except RemoteProtocolError as exc:
            expected = str(exc)
        try:
            got: Message | str = parse_message(data)
        except RemoteProtocolError as exc:
            got = str(exc)
        assert got == expected

    # A NOTIFY and a 2xx that the byte paths' readers take, and edits of their
    # head that every lean reader must refuse (the full parse reads or refuses
    # them on its own terms).
    LEAN_NOTIFY = minimal(
        extra="Event: presence\r\nSubscription-State: active;expires=60\r\n"
              "Content-Length: 3\r\n", body=b"abc",
    ).replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=b")
    LEAN_SUCCESS = (b"SIP/2.0 200 OK\r\n" + LEAN_NOTIFY.split(b"\r\n", 1)[1]).replace(
        b"1 NOTIFY", b"1 SUBSCRIBE")
    HEAD_EDITS = {
        "a bare CR in a value": (b"c1@host", b"c1@h\rost"),
        "a bare LF in a value": (b"c1@host", b"c1@h\nost"),
        "a bare CR before the blank line": (b"Content-Length: 3\r\n\r\n",
                                            b"Content-Length: 3\r\r\n\r\n"),
        "a bare LF before the blank line": (b"Content-Length: 3\r\n\r\n",
                                            b"Content-Length: 3\n\r\n\r\n"),
        "a bare LF for a line end": (b"\r\nCall-ID: ", b"\nCall-ID: "),
        "a name twice": (b"\r\nCall-ID: c1@host", b"\r\nCall-ID: c1@host\r\nCall-ID: c1@host"),
        "no blank after the colon": (b"\r\nCall-ID: ", b"\r\nCall-ID:"),
        "a name lower-cased": (b"\r\nCall-ID: ", b"\r\ncall-id: "),
        "a compact name": (b"\r\nCall-ID: ", b"\r\ni: "),
        "a line folded": (b"\r\nCall-ID: c1@host", b"\r\nCall-ID:\r\n c1@host"),
        "a line of no field": (b"\r\nCall-ID: ", b"\r\nno field\r\nCall-ID: "),
        "not UTF-8": (b"c1@host", b"c1@\xff\xfe"),
    }

    def test_the_readers_take_the_unedited_messages(self) -> None:
        assert read_lean_notify(self.LEAN_NOTIFY) is not None
        assert read_lean_success(self.LEAN_SUCCESS) is not None
        assert _parse_lean(self.LEAN_NOTIFY) is not None
        assert _parse_lean(self.LEAN_SUCCESS) is not None

    @pytest.mark.parametrize("edit", sorted(HEAD_EDITS))
    def test_every_lean_reader_refuses_a_head_not_of_its_shape(self, edit: str) -> None:
        old, new = self.HEAD_EDITS[edit]
        for data, read in ((self.LEAN_NOTIFY, read_lean_notify),
                           (self.LEAN_SUCCESS, read_lean_success)):
            edited = data.replace(old, new, 1)
            assert edited != data
            assert read(edited) is None
            assert _parse_lean(edited) is None

    def test_a_lean_message_is_as_mutable_as_any(self) -> None:
        msg = _parse_lean(minimal(extra="Expires: 60\r\n"))
        assert msg is not None and msg.expires == 60 and msg.call_id == "c1@host"
        msg.headers.set("Call-ID", "other")
        msg.headers.set("Expires", "30")
        assert msg.call_id == "other" and msg.expires == 30


class TestStreamParser:
    def stream(self) -> tuple[bytes, list[bytes]]:
        parts = [sample(n) for n in SAMPLES if n != "folded_headers.sip"]
        parts.append(sample("folded_headers.sip"))
        return b"".join(parts), parts

    def test_several_messages_in_one_chunk(self) -> None:
        data, parts = self.stream()
        msgs = StreamParser().feed(data)
        assert msgs == [parse_message(p) for p in parts]

    def test_split_at_every_byte_boundary(self) -> None:
        data = sample("notify_active.sip") + sample("response_200_publish.sip")
        expected = [parse_message(sample("notify_active.sip")),
                    parse_message(sample("response_200_publish.sip"))]  # fmt: skip
        for cut in range(len(data) + 1):
            sp = StreamParser()
            got = sp.feed(data[:cut]) + sp.feed(data[cut:])
            assert got == expected, cut
            assert sp.buffered == 0

    def test_byte_at_a_time(self) -> None:
        data, parts = self.stream()
        sp = StreamParser()
        got = []
        for i in range(len(data)):
            got.extend(sp.feed(data[i : i + 1]))
        assert got == [parse_message(p) for p in parts]

    def test_keepalive_pings_and_pongs(self) -> None:
        # RFC 5626 §3.5.1: "\r\n\r\n" is a ping, a single "\r\n" a pong.
        msg = sample("subscribe.sip")
        sp = StreamParser()
        assert sp.feed(b"\r\n\r\n") == []  # ping
        assert sp.feed(b"\r") == []
        assert sp.feed(b"\n") == []  # a lone pong, split in two
        assert sp.feed(msg + b"\r\n\r\n\r\n\r\n") == [parse_message(msg)]  # two pings
        assert sp.take_pings() == 3
        assert sp.take_pings() == 0
        assert sp.buffered == 0

    def test_content_length_required(self) -> None:
        with pytest.raises(RemoteProtocolError):
            StreamParser().feed(minimal())

    def test_max_message_size(self) -> None:
        big = minimal(extra="Content-Length: 5000\r\n")
        with pytest.raises(RemoteProtocolError):
            StreamParser(max_message_size=4096).feed(big)
        endless_head = b"NOTIFY sip:a@b SIP/2.0\r\nX: " + b"y" * 5000
        with pytest.raises(RemoteProtocolError):
            StreamParser(max_message_size=4096).feed(endless_head)

    def test_waits_for_body(self) -> None:
        data = minimal(extra="Content-Length: 4\r\n", body=b"abcd")
        sp = StreamParser()
        assert sp.feed(data[:-2]) == []
        (msg,) = sp.feed(data[-2:])
        assert msg.body == b"abcd"

    def test_broken_stream_stays_broken(self) -> None:
        sp = StreamParser()
        with pytest.raises(RemoteProtocolError):
            sp.feed(b"garbage\r\n\r\n")
        with pytest.raises(RemoteProtocolError):
            sp.feed(sample("subscribe.sip"))


def test_is_keepalive() -> None:
    assert is_keepalive(b"\r\n")
    assert is_keepalive(b"\r\n\r\n")
    assert not is_keepalive(b"")
    assert not is_keepalive(b"\r\nX")
    assert not is_keepalive(minimal())


# -- parsed header values shared between messages ------------------------------


def _notify(from_: str, state: str = "active;expires=60") -> bytes:
    return (
        "NOTIFY sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        f"From: {from_}\r\n"
        "To: <sip:bob@example.com>;tag=b1\r\n"
        "Call-ID: c1\r\nCSeq: 2 NOTIFY\r\nEvent: presence\r\n"
        "Contact: <sip:127.0.0.1:5070;transport=udp>\r\n"
        f"Subscription-State: {state}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_repeated_header_texts_give_equal_values() -> None:
    first = parse_message(_notify("<sip:alice@example.com>;tag=a1"))
    second = parse_message(_notify("<sip:alice@example.com>;tag=a1"))
    assert first.from_ == second.from_ == NameAddr.parse("<sip:alice@example.com>;tag=a1")
    assert first.contacts == second.contacts
    assert first.event == second.event == Event("presence")
    assert first.subscription_state == second.subscription_state
    assert second.subscription_state == SubscriptionState("active", (("expires", "60"),))
    other = parse_message(_notify("<sip:carol@example.com>;tag=c1"))
    assert other.from_.uri == SipURI.parse("sip:carol@example.com")


def test_a_bad_header_text_fails_every_time() -> None:
    bad = parse_message(_notify("<sip:alice@example.com>;tag=a1", state="active;expires=x"))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            bad.subscription_state  # noqa: B018


def test_parsed_value_tables_stay_bounded() -> None:
    from sip import message

    for i in range(message._PARSED_MAX + 10):
        parse_message(_notify(f"<sip:u{i}@example.com>;tag=t{i}"))
    assert len(message._NAME_ADDRS) <= message._PARSED_MAX
    assert parse_message(_notify("<sip:u1@example.com>;tag=t1")).from_.tag == "t1"


def test_dialogs_past_the_table_bound_leave_their_shared_addresses_in_it() -> None:
    """A gateway's From and To texts differ per dialog only by the tag: the
    table keeps the untagged part every dialog of an address shares, not one
    text per dialog that would fill it and empty it again and again."""
    from sip import message

    message._NAME_ADDRS.clear()
    for i in range(message._PARSED_MAX + 10):
        notify = parse_message(_notify(f"<sip:alice@example.com>;tag=t{i}"))
        assert notify.from_ == NameAddr.parse(f"<sip:alice@example.com>;tag=t{i}")
    assert "<sip:alice@example.com>" in message._NAME_ADDRS
    assert not any(";tag=" in text for text in message._NAME_ADDRS)


@pytest.mark.parametrize(
    "text",
    [
        "<sip:alice@example.com>;tag=a1",
        '"Alice" <sip:alice@example.com;transport=udp>;x=1;tag=a.1-b~2',
        "sip:alice@example.com;tag=a1",
        "sip:alice@example.com;x;tag=a1",
        "<sip:alice@example.com> ;tag=a1",
        "<sip:alice@example.com>;tag=a1;tag=b2",
        '"x;tag=y" <sip:alice@example.com>;tag=z',
    ],
)
def test_a_tagged_name_addr_parses_as_its_whole_text(text: str) -> None:
    from sip import message

    message._NAME_ADDRS.clear()
    first = message._name_addr(text)
    again = message._name_addr(text.replace("=a1", "=a2"))
    assert first == NameAddr.parse(text)
    assert again == NameAddr.parse(text.replace("=a1", "=a2"))


@pytest.mark.parametrize(
    "text",
    [
        "<sip:alice@example.com;tag=a1",
        '"x;tag=a1',
        "<sip:alice@example.com>;p=\"q;tag=a1",
        "<sip:alice@example.com>;tag=",
        ";tag=a1",
        "<bad uri>;tag=a1",
    ],
)
def test_a_bad_tagged_name_addr_fails_as_its_whole_text(text: str) -> None:
    from sip import message

    with pytest.raises(RemoteProtocolError):
        NameAddr.parse(text)
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            message._name_addr(text)


# Via texts in the spellings peers send, for the parse that reuses the part
# without the branch: the same value as Via.parse, or the same refusal.
VIA_TEXTS = [
    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK1f;rport=5080;received=127.0.0.1",
    "SIP/2.0/UDP 127.0.0.1:5080;rport=5080;branch=z9hG4bK2e;received=127.0.0.1",
    "SIP/2.0/UDP 127.0.0.1:5080;rport;branch=z9hG4bK3d",
    "SIP/2.0/TCP host.example.com;branch=z9hG4bK.4c-x;alias",
    "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK5b",
    "SIP / 2.0 / UDP 127.0.0.1:5080 ;rport ;branch=z9hG4bK6a",
    "SIP/2.0/UDP 127.0.0.1:5080;received=\"x;y\";branch=z9hG4bK79",
    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK88;branch=second",
    "SIP/2.0/UDP 127.0.0.1:5080;branch=",  # an empty value
    "SIP/2.0/UDP 127.0.0.1:5080;branch=a b",  # a blank in the value
    "SIP/2.0/UDP 127.0.0.1:5080;branch=ok;rport=99999",  # rport out of range
    "SIP/2.0/UDP 127.0.0.1:99999;branch=ok",  # port out of range
    "SIP/2.0/UDP ;branch=ok",  # no sent-by
    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK97;;rport",  # an empty parameter
    "SIP/2.0/UDP 127.0.0.1:5080;branch=\"quoted\"",
]


@pytest.mark.parametrize("text", VIA_TEXTS)
def test_via_reused_without_its_branch_is_the_via_parsed(text: str) -> None:
    from sip.message import _via

    try:
        expected = Via.parse(text)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            _via(text)
        # Once more, with the part without the branch known from a valid text.
        _via("SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKfe")
        with pytest.raises(RemoteProtocolError):
            _via(text)
        return
    assert _via(text) == expected
    assert _via(text) == expected  # the second time from the cached part


@pytest.mark.parametrize("data", KAMAILIO_SIP, ids=lambda p: p.name)
def test_the_presence_server_s_notifies_and_2xx_take_the_byte_paths(data: Path) -> None:
    """Each NOTIFY and 2xx the bundled Kamailio sends is read by the byte
    paths' readers, as the full parse reads it: a change of shape on the
    server's side would send every message back to the general path."""
    raw = data.read_bytes()
    full = _parse_full(raw) if raw.startswith((b"SIP/2.0 ", b"NOTIFY ")) else None
    if isinstance(full, Request) and full.method == "NOTIFY":
        notify = read_lean_notify(raw)
        assert notify is not None
        assert (notify.call_id, notify.from_tag, notify.to_tag, notify.cseq, notify.event,
                notify.state, notify.body, notify.content_type) == (
            full.call_id, full.from_.tag, full.to.tag, full.cseq.seq, full.event,
            full.subscription_state, full.body, full.content_type)
        assert notify.answer() == full.response_bytes(200)
    elif isinstance(full, Response) and 200 <= full.status < 300:
        success = read_lean_success(raw)
        assert success is not None
        top = full.top_via
        assert top is not None
        assert (success.status, success.branch, success.method, success.expires,
                success.etag) == (
            full.status, top.branch, full.cseq.method, full.expires, full.sip_etag)
    else:
        assert read_lean_notify(raw) is None and read_lean_success(raw) is None


@settings(max_examples=300, deadline=None)
@given(address=st.from_regex(_PLAIN_ADDRESS, fullmatch=True),
       tag=st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]+", fullmatch=True))
def test_an_address_valid_without_a_parse_parses(address: str, tag: str) -> None:
    """What the lean readers take as a valid address unparsed, the parser reads."""
    parsed = NameAddr.parse(address)
    assert parsed.params == () and str(parsed.uri) == address[1:-1]
    assert NameAddr.parse(f"{address};tag={tag}").tag == tag
    _NAME_ADDRS.clear()
    _check_name_addr(f"{address};tag={tag}")
    assert _lean_tag(f"{address};tag={tag}") == tag


@pytest.mark.parametrize(
    "text",
    [
        "<sip:p17@example.com>;tag=a1",
        "<sips:p17@example.com>;tag=a1",
        "<SIP:p17@example.com>;tag=a1",  # valid, not of the plain shape: parsed
        "<sip:p%31@example.com>;tag=a1",
        "<sip:p17@example.com:5060>;tag=a1",
        "<sip:p17@-example.com>;tag=a1",
        "<sip:p17@example.com;x=y>;tag=a1",
        "<sip:p17@example.com>x;tag=a1",
        "<sip:p17@exa mple.com>;tag=a1",
        "<sip:p17:pw@example.com>;tag=a1",
        "<sip:p<17@example.com>;tag=a1",
        "<sip:@example.com>;tag=a1",
        "<sip:p17@example.com>;tag=a b",
        "<sip:p17@example.com>;tag=",
    ],
)
def test_an_address_checked_unparsed_fails_as_the_parse_does(text: str) -> None:
    _NAME_ADDRS.clear()
    try:
        NameAddr.parse(text)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            _check_name_addr(text)
        return
    _NAME_ADDRS.clear()
    _check_name_addr(text)
    assert _lean_tag(text) == NameAddr.parse(text).tag
