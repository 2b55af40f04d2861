"""Property tests: garbage gives RemoteProtocolError only; valid values round-trip."""

import ipaddress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.errors import RemoteProtocolError
from sip.headers import CSeq, Event, RetryAfter, SubscriptionState, Via
from sip.message import Message, StreamParser, _parse_full, _parse_lean, parse_message
from sip.params import quote
from sip.uri import AbsoluteURI, NameAddr, SipURI, parse_uri

DATA = Path(__file__).parent.parent / "data" / "sip"
SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.sip"))]

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=200, deadline=None)

ACCESSORS = [
    "vias", "call_id", "cseq", "from_", "to", "contacts", "record_routes", "routes",
    "expires", "min_expires", "max_forwards", "event", "subscription_state",
    "retry_after", "sip_etag", "sip_if_match", "content_type", "media_type",
]  # fmt: skip


def exercise(msg: Message) -> None:
    """Everything a layer above may do with a parsed message must be safe."""
    for name in ACCESSORS:
        try:
            getattr(msg, name)
        except RemoteProtocolError:
            pass  # a malformed optional header: allowed, and only this way
    try:
        contacts = msg.contacts
    except RemoteProtocolError:
        contacts = []
    for contact in contacts:
        for attr in ("tag", "expires", "q", "sip_uri", "aor"):
            try:
                getattr(contact, attr)
            except RemoteProtocolError:
                pass
    # What parsed must serialise, and parse back to the same message.
    again = parse_message(bytes(msg), max_size=1 << 20)
    assert again == msg


def parse_or_reject(data: bytes) -> None:
    lean = _parse_lean(data)
    try:
        msg = _parse_full(data)
    except RemoteProtocolError:
        # The lean parse never accepts what the full parse refuses.
        assert lean is None
        return
    # Nor does it read another message than the full parse.
    assert lean is None or (lean == msg and type(lean) is type(msg))
    exercise(msg)
    if lean is not None:
        exercise(lean)


def stream_or_reject(chunks: list[bytes]) -> None:
    sp = StreamParser()
    try:
        for chunk in chunks:
            for msg in sp.feed(chunk):
                exercise(msg)
    except RemoteProtocolError:
        return


@st.composite
def mutated_sample(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "delete"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from(
                        [b"\r\n", b"\r\n\r\n", b" ", b";", b",", b"<", b">", b'"', b":", b"%",
                         b"\\", b"[", b"]", b"@", b"\r", b"\n", b"\t", b"\x00", b"\xff"]
                    ),
                )
            )  # fmt: skip
        elif kind == "duplicate" and data:
            start = draw(st.integers(0, len(data) - 1))
            length = draw(st.integers(1, 64))
            data[pos:pos] = data[start : start + length]
        elif kind == "delete" and pos < len(data):
            del data[pos : pos + draw(st.integers(1, 16))]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    parse_or_reject(data)
    stream_or_reject([data])


@FUZZ
@given(st.sampled_from(SAMPLES), st.binary(max_size=200))
def test_valid_head_then_random_bytes(sample: bytes, tail: bytes) -> None:
    cut = sample.index(b"\r\n") + 2
    parse_or_reject(sample[:cut] + tail)


@FUZZ
@given(mutated_sample())
def test_mutated_samples_datagram(data: bytes) -> None:
    parse_or_reject(data)


@FUZZ
@given(st.lists(mutated_sample(), min_size=1, max_size=3), st.data())
def test_mutated_samples_stream(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    stream_or_reject(chunks)


@FUZZ
@given(st.text(max_size=80))
def test_value_parsers_on_random_text(text: str) -> None:
    parsers = (parse_uri, NameAddr.parse, Via.parse, CSeq.parse, Event.parse,
               SubscriptionState.parse, RetryAfter.parse)  # fmt: skip
    for parse in parsers:
        try:
            value = parse(text)
        except RemoteProtocolError:
            continue
        # Whatever parses must round-trip.
        assert type(value).parse(str(value)) == value  # type: ignore[attr-defined]


# -- generated valid values round-trip ---------------------------------------------

tokens = st.from_regex(r"[A-Za-z0-9\-.!%*_+`'~]{1,12}", fullmatch=True)
hostnames = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9\-.]{0,20}[a-zA-Z0-9])?", fullmatch=True)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{ipaddress.IPv6Address(a).compressed}]")
hosts = st.one_of(hostnames, ipv4, ipv6)
ports = st.none() | st.integers(0, 65535)
# Escaping means any text is a valid URI component once written out.
any_text = st.text(min_size=1, max_size=12)
gen_values = st.one_of(
    st.none(),
    tokens,
    hosts,
    st.text(max_size=10).filter(lambda t: "\r" not in t and "\n" not in t).map(quote),
)
header_params = st.lists(st.tuples(tokens, gen_values), max_size=4).map(tuple)

sip_uris = st.builds(
    SipURI,
    scheme=st.sampled_from(["sip", "sips"]),
    user=st.none() | any_text,
    host=hosts,
    port=ports,
    params=st.lists(st.tuples(any_text, st.none() | any_text), max_size=4).map(tuple),
    headers=st.lists(st.tuples(any_text, st.text(max_size=8)), max_size=3).map(tuple),
    password=st.none() | st.text(max_size=8),
).filter(lambda u: u.user is not None or u.password is None)
absolute_uris = st.builds(
    AbsoluteURI,
    scheme=st.from_regex(r"[a-z][a-z0-9+\-.]{0,6}", fullmatch=True).filter(
        lambda s: s not in ("sip", "sips")
    ),
    opaque=st.from_regex(r"[!#-;=?-~]{1,20}", fullmatch=True),
)
name_addrs = st.builds(
    NameAddr,
    display=st.none() | st.text(max_size=12).filter(lambda t: "\r" not in t and "\n" not in t),
    uri=st.one_of(sip_uris, absolute_uris),
    params=header_params,
)
vias = st.builds(
    Via,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]) | tokens,
    host=hosts,
    port=ports,
    params=header_params.filter(lambda ps: all(n.lower() != "rport" for n, _ in ps)),
)


@ROUND_TRIP
@given(sip_uris)
def test_sip_uri_round_trip(uri: SipURI) -> None:
    assert SipURI.parse(str(uri)) == uri
    assert parse_uri(str(uri)) == uri


@ROUND_TRIP
@given(absolute_uris)
def test_absolute_uri_round_trip(uri: AbsoluteURI) -> None:
    assert parse_uri(str(uri)) == uri


@ROUND_TRIP
@given(name_addrs)
def test_name_addr_round_trip(na: NameAddr) -> None:
    assert NameAddr.parse(str(na)) == na


@ROUND_TRIP
@given(vias, st.none() | st.integers(0, 65535))
def test_via_round_trip(via: Via, rport: int | None) -> None:
    via = via.with_params(rport=None if rport is None else str(rport))
    assert Via.parse(str(via)) == via
