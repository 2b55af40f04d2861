import pytest

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.uri import AbsoluteURI, NameAddr, SipURI, parse_hostport, parse_uri


class TestSipURI:
    def test_components(self) -> None:
        u = SipURI.parse("sip:alice@example.com;transport=tcp")
        assert (u.scheme, u.user, u.host, u.port) == ("sip", "alice", "example.com", None)
        assert u.params == (("transport", "tcp"),)
        assert u.param("transport") == "tcp"
        assert u.transport == "tcp"

    def test_full_form(self) -> None:
        text = "sips:bob:secret@[2001:db8::1]:5061;maddr=[::1];lr;ttl=1?subject=hi&priority=urgent"
        u = SipURI.parse(text)
        assert u.scheme == "sips"
        assert u.user == "bob"
        assert u.password == "secret"
        assert u.host == "[2001:db8::1]"
        assert u.port == 5061
        assert u.params == (("maddr", "[::1]"), ("lr", None), ("ttl", "1"))
        assert u.headers == (("subject", "hi"), ("priority", "urgent"))
        assert str(u) == text

    def test_no_user(self) -> None:
        u = SipURI.parse("sip:127.0.0.1:5070;transport=tcp;lr")
        assert u.user is None
        assert (u.host, u.port) == ("127.0.0.1", 5070)
        assert u.has_param("lr") and u.param("lr") is None
        assert not u.has_param("maddr")
        assert str(u) == "sip:127.0.0.1:5070;transport=tcp;lr"

    def test_scheme_case_insensitive(self) -> None:
        assert SipURI.parse("SIP:a@b").scheme == "sip"

    def test_telephone_subscriber_user_with_semicolon(self) -> None:
        # §19.1.1: user may hold ";" (telephone-subscriber parameters).
        u = SipURI.parse("sip:+1-212-555-1212;phone-context=example.com@gw.example.com;user=phone")
        assert u.user == "+1-212-555-1212;phone-context=example.com"
        assert u.host == "gw.example.com"
        assert u.param("user") == "phone"

    def test_escapes_are_decoded_and_reencoded(self) -> None:
        u = SipURI.parse("sip:sip%3Auser%20x@example.com;p=a%3Bb")
        assert u.user == "sip:user x"
        assert u.param("p") == "a;b"
        assert str(u) == "sip:sip%3Auser%20x@example.com;p=a%3Bb"
        # §19.1.4: an unreserved character and its escape are equivalent.
        assert SipURI.parse("sip:%61lice@example.com") == SipURI.parse("sip:alice@example.com")

    def test_non_utf8_escape_round_trips(self) -> None:
        u = SipURI.parse("sip:%FF%FE@example.com")
        assert str(u) == "sip:%FF%FE@example.com"

    def test_aor(self) -> None:
        u = SipURI.parse("sip:Alice@EXAMPLE.com:5070;transport=tcp?x=y")
        assert u.aor == "sip:Alice@example.com"
        assert SipURI.parse("sip:example.com:5060").aor == "sip:example.com"

    def test_with_and_without_params(self) -> None:
        u = SipURI.parse("sip:a@b;transport=udp;lr")
        v = u.with_params(transport="tcp", ob=None)
        assert str(v) == "sip:a@b;transport=tcp;lr;ob"
        assert str(v.without_params("LR", "ob")) == "sip:a@b;transport=tcp"
        assert str(u) == "sip:a@b;transport=udp;lr"  # unchanged: frozen value

    def test_transport_is_lowercased(self) -> None:
        assert SipURI.parse("sip:a@b;Transport=TCP").transport == "tcp"
        assert SipURI.parse("sip:a@b").transport is None

    def test_hostport(self) -> None:
        assert SipURI.parse("sip:a@[::1]:5060").hostport == "[::1]:5060"
        assert SipURI.parse("sip:a@h").hostport == "h"

    @pytest.mark.parametrize(
        "text",
        [
            "sip:",
            "sip:@example.com",
            "sip:alice@",
            "sip:alice@exa mple.com",
            "sip:alice@example.com:",
            "sip:alice@example.com:70000",
            "sip:alice@example.com:5x",
            "sip:alice@[::1",
            "sip:alice@[zz::1]",
            "sip:alice@example.com;=x",
            "sip:alice@example.com;a=",
            "sip:alice@example.com?x",
            "sip:al%zzice@example.com",
            "sip:a@b@c",
            "tel:+123",
            "sipx",
            "http://example.com",
            " sip:a@b",
        ],
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            SipURI.parse(text)


class TestAbsoluteURI:
    def test_tel(self) -> None:
        u = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
        assert u == AbsoluteURI("tel", "+1-201-555-0123;phone-context=example.com")
        assert str(u) == "tel:+1-201-555-0123;phone-context=example.com"
        assert u.aor == str(u)

    def test_parse_uri_dispatches(self) -> None:
        assert isinstance(parse_uri("sip:a@b"), SipURI)
        assert isinstance(parse_uri("SIPS:a@b"), SipURI)
        assert isinstance(parse_uri("pres:alice@example.com"), AbsoluteURI)

    @pytest.mark.parametrize("text", ["tel", "tel:", "1tel:+1", "tel:a b", "x:<y>", "sip:a@b"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            AbsoluteURI.parse(text)


class TestNameAddr:
    def test_quoted_display(self) -> None:
        na = NameAddr.parse('"Alice" <sip:alice@example.com>;tag=abc')
        assert na.display == "Alice"
        assert na.uri == SipURI.parse("sip:alice@example.com")
        assert na.params == (("tag", "abc"),)
        assert na.tag == "abc"
        assert str(na) == '"Alice" <sip:alice@example.com>;tag=abc'

    def test_quoted_display_with_escapes_and_specials(self) -> None:
        na = NameAddr.parse(r'"A \"B\" \\ <C>; D, E" <sip:a@b>')
        assert na.display == 'A "B" \\ <C>; D, E'
        assert NameAddr.parse(str(na)) == na

    def test_token_display(self) -> None:
        na = NameAddr.parse("Alice  Smith <sip:alice@example.com>")
        assert na.display == "Alice Smith"
        assert str(na) == '"Alice Smith" <sip:alice@example.com>'

    def test_angle_brackets_without_display(self) -> None:
        na = NameAddr.parse("<sip:alice@example.com;transport=tcp>;expires=60;q=0.5")
        assert na.display is None
        assert na.uri.params == (("transport", "tcp"),)  # type: ignore[union-attr]
        assert na.expires == 60
        assert na.q == 0.5
        assert str(na) == "<sip:alice@example.com;transport=tcp>;expires=60;q=0.5"

    def test_addr_spec_params_are_header_params(self) -> None:
        # RFC 3261 §20: without angle brackets, parameters belong to the header.
        na = NameAddr.parse("sip:alice@example.com;tag=x;transport=tcp")
        assert na.uri == SipURI("sip", "alice", "example.com")
        assert na.params == (("tag", "x"), ("transport", "tcp"))
        assert NameAddr.parse(str(na)) == na
        assert str(na) == "<sip:alice@example.com>;tag=x;transport=tcp"

    def test_empty_quoted_display(self) -> None:
        na = NameAddr.parse('"" <sip:a@b>')
        assert na.display == ""
        assert str(na) == '"" <sip:a@b>'

    def test_non_sip_uri(self) -> None:
        na = NameAddr.parse('"Phone" <tel:+15551234;ext=1>;tag=t')
        assert na.uri == AbsoluteURI("tel", "+15551234;ext=1")
        assert na.tag == "t"
        with pytest.raises(RemoteProtocolError):
            na.sip_uri  # noqa: B018
        assert NameAddr.parse("<sip:a@b>").sip_uri == SipURI("sip", "a", "b")

    def test_with_tag(self) -> None:
        na = NameAddr.parse("<sip:a@b>;x=1")
        assert str(na.with_tag("t1")) == "<sip:a@b>;x=1;tag=t1"
        assert str(na.with_tag("t1").with_tag("t2")) == "<sip:a@b>;x=1;tag=t2"
        assert na.tag is None

    def test_params_helpers(self) -> None:
        na = NameAddr.parse('<sip:a@b>;+sip.instance="<urn:uuid:1>";reg-id=1;ob')
        assert na.param("+sip.instance") == '"<urn:uuid:1>"'
        assert na.has_param("OB") and na.param("ob") is None
        assert na.without_params("reg-id").params == (
            ("+sip.instance", '"<urn:uuid:1>"'),
            ("ob", None),
        )
        assert na.with_params(q="1").q == 1.0

    def test_aor(self) -> None:
        assert NameAddr.parse("<sip:Bob@Example.COM:5060>;tag=1").aor == "sip:Bob@example.com"

    def test_display_with_crlf_cannot_be_written(self) -> None:
        with pytest.raises(LocalProtocolError):
            str(NameAddr("a\r\nVia: x", SipURI("sip", "a", "b")))

    @pytest.mark.parametrize("value", ["2", "0.1234", "1.5", "x", ".5", ""])
    def test_bad_q(self, value: str) -> None:
        with pytest.raises(RemoteProtocolError):
            NameAddr.parse(f"<sip:a@b>;q={value}" if value else "<sip:a@b>;q=").q  # noqa: B018

    def test_bad_expires(self) -> None:
        with pytest.raises(RemoteProtocolError):
            NameAddr.parse("<sip:a@b>;expires=soon").expires  # noqa: B018

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "   ",
            '"unterminated <sip:a@b>',
            '"Alice" sip:a@b',
            "<sip:a@b",
            "<>",
            "<sip:a@b>;=x",
            "<sip:a@b> junk",
            "<sip:a@b>;tag=a b",
            '<sip:a@b>;p="open',
            "sip:a b@c",
        ],
    )
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            NameAddr.parse(text)


class TestHostPort:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("example.com", ("example.com", None)),
            ("example.com.", ("example.com.", None)),
            ("127.0.0.1:5060", ("127.0.0.1", 5060)),
            ("[::1]", ("[::1]", None)),
            ("[2001:db8::10]:5070", ("[2001:db8::10]", 5070)),
            ("host : 5060", ("host", 5060)),
        ],
    )
    def test_valid(self, text: str, expected: tuple[str, int | None]) -> None:
        assert parse_hostport(text) == expected

    @pytest.mark.parametrize("text", ["", ":5060", "[::1]x", "-a", "h:99999", "h:"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(RemoteProtocolError):
            parse_hostport(text)


def test_sip_uri_text_is_made_once_and_is_no_part_of_its_value() -> None:
    uri = SipURI.parse("sip:alice@example.com:5070;transport=tcp")
    text = str(uri)
    assert str(uri) is text  # kept, not made again
    fresh = SipURI.parse(text)
    assert fresh == uri and hash(fresh) == hash(uri) and repr(fresh) == repr(uri)
    # A copy with other parameters writes its own text.
    assert str(uri.with_params(lr=None)) == "sip:alice@example.com:5070;transport=tcp;lr"
