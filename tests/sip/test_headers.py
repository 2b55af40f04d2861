import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import RemoteProtocolError
from sip.headers import CSeq, Event, RetryAfter, SubscriptionState, Via


class TestVia:
    def test_request_via(self) -> None:
        v = Via.parse("SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK776asdhds;rport")
        assert v.protocol == "SIP/2.0"
        assert v.transport == "UDP"
        assert (v.host, v.port) == ("127.0.0.1", 5080)
        assert v.sent_by == "127.0.0.1:5080"
        assert v.branch == "z9hG4bK776asdhds"
        assert v.rport is None
        assert v.rport_requested
        assert v.received is None
        assert str(v) == "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK776asdhds;rport"

    def test_response_via_with_received_and_rport(self) -> None:
        v = Via.parse(
            "SIP/2.0/TCP client.example.com;branch=z9hG4bK1;received=192.0.2.4;rport=9988"
        )
        assert v.port is None
        assert v.sent_by == "client.example.com"
        assert v.received == "192.0.2.4"
        assert v.rport == 9988

    def test_ipv6_and_maddr(self) -> None:
        v = Via.parse("SIP/2.0/UDP [2001:db8::9]:5060;maddr=[ff02::1];ttl=1;branch=z9hG4bKx")
        assert v.host == "[2001:db8::9]"
        assert v.maddr == "[ff02::1]"
        assert v.param("TTL") == "1"

    def test_blanks_around_slashes_and_params(self) -> None:
        # §20.42 / §25.1: SLASH = SWS "/" SWS, SEMI = SWS ";" SWS.
        v = Via.parse("SIP / 2.0 / UDP   host.example.com : 5060 ; branch = z9hG4bKa ; rport")
        assert v == Via("UDP", "host.example.com", 5060, (("branch", "z9hG4bKa"), ("rport", None)))
        assert str(v) == "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKa;rport"

    def test_valueless_params_are_kept(self) -> None:
        v = Via.parse("SIP/2.0/UDP host;branch")
        assert v.branch is None and v.has_param("branch")
        assert Event.parse("presence;id").id is None
        assert RetryAfter.parse("10;duration").duration is None

    def test_with_params_fills_in_rport(self) -> None:
        v = Via.parse("SIP/2.0/UDP h:5060;rport;branch=z9hG4bKb")
        filled = v.with_params(received="10.0.0.1", rport="40000")
        assert str(filled) == "SIP/2.0/UDP h:5060;rport=40000;branch=z9hG4bKb;received=10.0.0.1"
        assert (
            str(filled.without_params("received"))
            == "SIP/2.0/UDP h:5060;rport=40000;branch=z9hG4bKb"
        )

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDP ;branch=x",
            "SIP/2.0/UDP host:port",
            "SIP/2.0/UDP host;rport=abc",
            "SIP/2.0/U@P host",
            "SIP/2.0/UDP host;;",
            'SIP/2.0/UDP host;x="unterminated',
        ],
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            Via.parse(text)


class TestCSeq:
    def test_parse_and_str(self) -> None:
        c = CSeq.parse(" 4711   SUBSCRIBE ")
        assert c == CSeq(4711, "SUBSCRIBE")
        assert str(c) == "4711 SUBSCRIBE"

    def test_bounds(self) -> None:
        # RFC 3261 §8.1.1.5: less than 2**31.
        assert CSeq.parse(f"{2**31 - 1} NOTIFY").seq == 2**31 - 1
        assert CSeq.parse("0 NOTIFY").seq == 0
        with pytest.raises(RemoteProtocolError):
            CSeq.parse(f"{2**31} NOTIFY")

    @pytest.mark.parametrize(
        "text", ["", "1", "NOTIFY", "-1 NOTIFY", "1 NOTIFY x", "a NOTIFY", "1 NO;TIFY", "١ X"]
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            CSeq.parse(text)


class TestEvent:
    def test_package_and_id(self) -> None:
        e = Event.parse("presence.winfo;id=7;x")
        assert e.package == "presence.winfo"
        assert e.id == "7"
        assert e.param("x") is None
        assert str(e) == "presence.winfo;id=7;x"

    def test_matches(self) -> None:
        # RFC 6665 §8.2.1: event-type and id must both match.
        assert Event.parse("presence").matches(Event("presence"))
        assert Event.parse("presence;id=1").matches(Event.parse("presence ; id=1"))
        assert not Event.parse("presence;id=1").matches(Event("presence"))
        assert not Event.parse("presence").matches(Event("presence.winfo"))

    @pytest.mark.parametrize("text", ["", ";id=1", "pres ence", "presence;=1"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            Event.parse(text)


class TestSubscriptionState:
    def test_active(self) -> None:
        s = SubscriptionState.parse("active;expires=3600")
        assert (s.state, s.expires, s.reason, s.retry_after) == ("active", 3600, None, None)
        assert str(s) == "active;expires=3600"

    def test_terminated(self) -> None:
        s = SubscriptionState.parse("terminated;reason=Rejected;retry-after=120")
        assert s.state == "terminated"
        assert s.reason == "rejected"
        assert s.retry_after == 120
        assert s.expires is None

    def test_extension_state(self) -> None:
        s = SubscriptionState.parse("waiting;foo=bar")
        assert s.state == "waiting"
        assert s.param("foo") == "bar"

    def test_huge_expires_is_clamped(self) -> None:
        assert SubscriptionState.parse("active;expires=99999999999").expires == 2**32 - 1

    def test_expires_read_once_is_the_value_of_its_own_params(self) -> None:
        s = SubscriptionState.parse("active;expires=600")
        assert (s.expires, s.expires) == (600, 600)
        # A copy with other parameters, and an equal value made by hand, read
        # their own; the number kept plays no part in equality or hashing.
        assert s.with_params(expires="5").expires == 5
        assert s.without_params("expires").expires is None
        made = SubscriptionState("active", (("expires", "600"),))
        assert made == s and hash(made) == hash(s) and made.expires == 600
        assert "_expires" not in repr(s)

    def test_bad_expires_made_by_hand_fails_on_every_read(self) -> None:
        s = SubscriptionState("active", (("expires", "soon"),))
        for _ in range(2):
            with pytest.raises(RemoteProtocolError):
                s.expires  # noqa: B018

    @pytest.mark.parametrize(
        "text",
        ["", "active;expires=soon", "terminated;retry-after=-1", "act ive", "active;expires"],
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            SubscriptionState.parse(text)


class TestRetryAfter:
    def test_plain(self) -> None:
        r = RetryAfter.parse("120")
        assert r == RetryAfter(120)
        assert r.duration is None
        assert str(r) == "120"

    def test_comment_and_duration(self) -> None:
        r = RetryAfter.parse("18000 (I'm in a (long) meeting) ;duration=3600")
        assert r.seconds == 18000
        assert r.comment == "I'm in a (long) meeting"
        assert r.duration == 3600
        assert str(r) == "18000 (I'm in a (long) meeting);duration=3600"
        assert RetryAfter.parse(str(r)) == r

    @pytest.mark.parametrize(
        "text", ["", "soon", "-5", "10 (unbalanced", "10;duration=x", "10 junk"]
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            RetryAfter.parse(text)


# -- Via: the common spelling is read by one expression, with the same result --

VIA_SAMPLES = [
    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKabc;rport",
    "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKabc;rport=5080;received=127.0.0.1",
    "SIP/2.0/TCP host.example.com;branch=z9hG4bK7222.791dad16.0",
    "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;received=[2001:db8::1]",
    "SIP/2.0/UDP a.example.com.",
    "SIP/2.0/udp h:65535",
    "SIP/2.0/UDP h:65536",
    "SIP/2.0/UDP h:5060;rport=123456",
    "SIP/2.0/UDP h:5060;rport=abc",
    "SIP/2.0/UDP h;branch=",
    "SIP/2.0/UDP h;",
    "SIP/2.0/UDP h;;a",
    "SIP/2.0/UDP -h",
    "SIP/2.0/UDP h:",
    "SIP/2.0/UDP h: 5060",
    "SIP/2.0/UDP [::1]:5060;branch=z9hG4bKx",
    "SIP / 2.0 / UDP h:5060 ;branch=z9hG4bKx",
    'SIP/2.0/UDP h;x="a b"',
]


def _either(parse: object, text: str) -> object:
    try:
        return parse(text)  # type: ignore[operator]
    except RemoteProtocolError:
        return RemoteProtocolError


@pytest.mark.parametrize("text", VIA_SAMPLES)
def test_via_common_spelling_parses_as_the_general_grammar(text: str) -> None:
    assert _either(Via.parse, text) == _either(Via._parse_general, text)


@given(
    st.text(alphabet="SIP/2.0UDPTCudptc 1:5;=br[]-.z9hG4bK\"'x", max_size=40).map(
        lambda t: "SIP/2.0/" + t
    )
)
def test_via_fast_path_agrees_with_the_grammar(text: str) -> None:
    assert _either(Via.parse, text) == _either(Via._parse_general, text)
