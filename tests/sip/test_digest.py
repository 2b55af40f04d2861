import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.digest import (
    AUTH_HEADERS,
    Algorithm,
    Authorization,
    Challenge,
    Credentials,
    DigestSession,
    compute_authorization,
    parse_challenges,
    select_challenge,
)
from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.message import Response, parse_message

# RFC 7616 §3.9.1 — the two WWW-Authenticate headers, unfolded.
RFC7616_SHA256 = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_MD5 = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
MUFASA_7616 = Credentials("Mufasa", "Circle of Life")

# RFC 2617 §3.5
RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
MUFASA_2617 = Credentials("Mufasa", "Circle Of Life")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- RFC examples -------------------------------------------------------------


def test_rfc7616_sha256_example() -> None:
    challenge = Challenge.parse(RFC7616_SHA256)
    auth = compute_authorization(
        challenge, MUFASA_7616, method="GET", uri="/dir/index.html", cnonce=RFC7616_CNONCE
    )
    assert auth.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert str(auth) == (
        'Digest username="Mufasa", realm="http-auth@example.org", '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", uri="/dir/index.html", '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        'algorithm=SHA-256, cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", qop=auth, nc=00000001'
    )


def test_rfc7616_md5_example_matches_the_rfc_header() -> None:
    challenge = Challenge.parse(RFC7616_MD5)
    auth = compute_authorization(
        challenge, MUFASA_7616, method="GET", uri="/dir/index.html", cnonce=RFC7616_CNONCE
    )
    assert auth.response == "8ca523f5e9506fed4657c9700eebdbec"
    # The Authorization header exactly as printed in the RFC (unfolded).
    rfc_header = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="8ca523f5e9506fed4657c9700eebdbec", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert Authorization.parse(rfc_header) == auth


def test_rfc7616_both_headers_select_sha256() -> None:
    chosen = select_challenge([RFC7616_MD5, RFC7616_SHA256])
    assert chosen is not None
    assert chosen.algorithm is Algorithm.SHA_256
    assert chosen.qop == ("auth", "auth-int")


def test_rfc2617_example() -> None:
    challenge = Challenge.parse(RFC2617_CHALLENGE)
    assert challenge.algorithm is Algorithm.MD5  # absent means MD5
    auth = compute_authorization(
        challenge, MUFASA_2617, method="GET", uri="/dir/index.html", cnonce="0a4f113b"
    )
    assert auth.response == "6629fae49393a05397450978507c4ef1"
    rfc_header = (
        'Digest username="Mufasa", realm="testrealm@host.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
        'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert Authorization.parse(rfc_header) == auth


# --- other forms, checked against the RFC formulas written out by hand ----------


def test_rfc2069_form_without_qop() -> None:
    challenge = Challenge.parse('Digest realm="example.com", nonce="abc"')
    auth = compute_authorization(
        challenge,
        Credentials("bob", "zanzibar"),
        method="SUBSCRIBE",
        uri="sip:alice@example.com",
        cnonce="ignored",
    )
    ha1 = md5("bob:example.com:zanzibar")
    ha2 = md5("SUBSCRIBE:sip:alice@example.com")
    assert auth.response == md5(f"{ha1}:abc:{ha2}")
    assert auth.qop is None and auth.cnonce is None and auth.nc is None
    text = str(auth)
    assert "cnonce" not in text and "nc=" not in text and "qop" not in text


def test_sha256_sess_and_auth_int() -> None:
    challenge = Challenge.parse(
        'Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth-int"'
    )
    body = b"<presence/>"
    auth = compute_authorization(
        challenge,
        Credentials("u", "p"),
        method="PUBLISH",
        uri="sip:u@r",
        cnonce="c0ffee",
        nc=3,
        body=body,
    )
    ha1 = sha256(f"{sha256('u:r:p')}:n:c0ffee")
    ha2 = sha256(f"PUBLISH:sip:u@r:{hashlib.sha256(body).hexdigest()}")
    assert auth.response == sha256(f"{ha1}:n:00000003:c0ffee:auth-int:{ha2}")
    assert auth.qop == "auth-int"
    assert "nc=00000003" in str(auth)


def test_md5_sess() -> None:
    challenge = Challenge.parse('Digest realm="r", nonce="n", algorithm=md5-sess, qop="auth"')
    assert challenge.algorithm is Algorithm.MD5_SESS
    auth = compute_authorization(
        challenge, Credentials("u", "p"), method="SUBSCRIBE", uri="sip:x@r", cnonce="cn"
    )
    ha1 = md5(f"{md5('u:r:p')}:n:cn")
    assert auth.response == md5(f"{ha1}:n:00000001:cn:auth:{md5('SUBSCRIBE:sip:x@r')}")


def test_prefers_auth_over_auth_int() -> None:
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth-int,auth"')
    auth = compute_authorization(
        challenge, Credentials("u", "p"), method="M", uri="sip:r", cnonce="c"
    )
    assert auth.qop == "auth"


def test_username_with_quote_is_escaped() -> None:
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth"')
    auth = compute_authorization(
        challenge, Credentials('a"b\\c', "p"), method="M", uri="sip:r", cnonce="c"
    )
    assert 'username="a\\"b\\\\c"' in str(auth)
    assert Authorization.parse(str(auth)) == auth
    ha1 = md5('a"b\\c:r:p')
    assert auth.response == md5(f"{ha1}:n:00000001:c:auth:{md5('M:sip:r')}")


# --- challenge parsing ------------------------------------------------------------


def test_challenge_round_trips() -> None:
    for text in (RFC7616_SHA256, RFC7616_MD5, RFC2617_CHALLENGE):
        challenge = Challenge.parse(text)
        assert Challenge.parse(str(challenge)) == challenge
    odd = Challenge(
        realm='we "quote"',
        nonce="n\\",
        opaque="o",
        algorithm=Algorithm.SHA_256_SESS,
        qop=("auth",),
        stale=True,
        domain="sip:a sip:b",
        userhash=True,
    )
    assert Challenge.parse(str(odd)) == odd


def test_challenge_fields() -> None:
    challenge = Challenge.parse(
        'digest REALM="r", nonce="n", stale=TRUE, Algorithm=sha-256, qop="auth", '
        'domain="sip:example.com", userhash=true, charset=UTF-8'
    )
    assert challenge == Challenge(
        realm="r",
        nonce="n",
        algorithm=Algorithm.SHA_256,
        qop=("auth",),
        stale=True,
        domain="sip:example.com",
        userhash=True,
    )
    assert not Challenge.parse('Digest realm="r", nonce="n", stale=maybe').stale


def test_several_challenges_in_one_header_value() -> None:
    value = (
        'Basic realm="basic", Digest realm="r1", nonce="n1", qop="auth", '
        'Negotiate YWJj==, Digest realm="r2", nonce="n2", algorithm=SHA-256, qop="auth",'
        "Bearer"
    )
    challenges = parse_challenges([value])
    assert [(c.realm, c.algorithm) for c in challenges] == [
        ("r1", Algorithm.MD5),
        ("r2", Algorithm.SHA_256),
    ]
    chosen = select_challenge([value])
    assert chosen is not None and chosen.realm == "r2"


def test_selection_skips_unknown_and_unanswerable() -> None:
    values = [
        'Digest realm="a", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="b", nonce="n", algorithm=SHA-256, qop="auth-conf"',
        'Digest realm="c", nonce="n", algorithm=SHA-256-sess',  # -sess needs a qop
        'Digest realm="d", nonce="n", algorithm=MD5, qop="auth"',
        'Digest realm="e", nonce="n", algorithm=MD5-sess, qop="auth"',
    ]
    chosen = select_challenge(values)
    assert chosen is not None and chosen.realm == "d"  # first of equal strength
    assert [c.realm for c in parse_challenges(values)] == ["b", "c", "d", "e"]
    assert select_challenge(values[:3]) is None
    assert select_challenge(['Basic realm="x"']) is None
    assert select_challenge([]) is None


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r"',  # no nonce
        'Digest nonce="n"',  # no realm
        'Digest realm="r, nonce="n"',  # unterminated quote
        'Digest realm="r" nonce="n"',  # missing comma
        'Digest realm="r", realm="s", nonce="n"',  # duplicate parameter
        'Digest realm=, nonce="n"',
        'Digest"realm"',
        '"Digest" realm="r", nonce="n"',
        "Digest @@@",
        'Digest realm="r", nonce="n", ;',
    ],
)
def test_malformed_challenges_raise_remote_error(value: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_challenges([value])


def test_challenge_parse_wants_exactly_one_digest_challenge() -> None:
    with pytest.raises(RemoteProtocolError):
        Challenge.parse('Basic realm="r"')
    with pytest.raises(RemoteProtocolError):
        Challenge.parse('Digest realm="r", nonce="n", Digest realm="s", nonce="m"')
    with pytest.raises(RemoteProtocolError):
        Challenge.parse('Digest realm="r", nonce="n", algorithm=SHA-512-256')


def test_authorization_parse_rejects_garbage() -> None:
    with pytest.raises(RemoteProtocolError):
        Authorization.parse('Digest username="u", realm="r"')
    with pytest.raises(RemoteProtocolError):
        Authorization.parse(
            'Digest username="u", realm="r", nonce="n", uri="x", response="y", nc=1'
        )


_ALPHABET = st.sampled_from(
    list('Digest realm nonce qop="auth,-int" algorithm=SHA-256 \\ ,=;\t\x00é')
)


@settings(max_examples=300, deadline=None)
@given(st.text(_ALPHABET, max_size=60) | st.text(max_size=60))
def test_garbage_raises_only_remote_errors(value: str) -> None:
    try:
        chosen = select_challenge([value])
    except RemoteProtocolError:
        return
    if chosen is not None:
        # Whatever parsed must be answerable and round-trip.
        assert Challenge.parse(str(chosen)) == chosen
        compute_authorization(chosen, MUFASA_2617, method="M", uri="sip:x", cnonce="c")
    try:
        Authorization.parse(value)
    except RemoteProtocolError:
        pass


# --- local misuse -------------------------------------------------------------------


def test_local_misuse_raises_local_error() -> None:
    challenge = Challenge.parse('Digest realm="r", nonce="n", qop="auth"')
    creds = Credentials("u", "p")
    with pytest.raises(LocalProtocolError):
        compute_authorization(challenge, creds, method="M", uri="u", cnonce="")
    with pytest.raises(LocalProtocolError):
        compute_authorization(challenge, creds, method="M", uri="u", cnonce="c", nc=0)
    unanswerable = Challenge(realm="r", nonce="n", qop=("auth-conf",))
    with pytest.raises(LocalProtocolError):
        compute_authorization(unanswerable, creds, method="M", uri="u", cnonce="c")


def test_credentials_repr_hides_password() -> None:
    assert "secret" not in repr(Credentials("u", "secret"))


# --- session: nonce counting -----------------------------------------------------


def test_session_counts_uses_of_each_nonce() -> None:
    session = DigestSession(Credentials("u", "p"))
    first = Challenge.parse('Digest realm="r", nonce="n1", qop="auth"')
    a1 = session.authorize(first, method="SUBSCRIBE", uri="sip:x@r", cnonce="c1")
    a2 = session.authorize(first, method="SUBSCRIBE", uri="sip:x@r", cnonce="c2")
    assert (a1.nc, a2.nc) == (1, 2)
    assert a2 == compute_authorization(
        first, session.credentials, method="SUBSCRIBE", uri="sip:x@r", cnonce="c2", nc=2
    )
    assert session.challenge_for("r") == first

    fresh = Challenge.parse('Digest realm="r", nonce="n2", qop="auth", stale=true')
    a3 = session.authorize(fresh, method="SUBSCRIBE", uri="sip:x@r", cnonce="c3")
    assert a3.nc == 1 and a3.nonce == "n2"
    assert session.challenge_for("r") == fresh

    other = Challenge.parse('Digest realm="s", nonce="n1", qop="auth"')
    assert session.authorize(other, method="M", uri="u", cnonce="c").nc == 1
    assert sorted(session.realms) == ["r", "s"]
    session.forget("r")
    assert session.challenge_for("r") is None


# --- with the message layer -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "challenge_header", "credentials_header"),
    [
        (401, "WWW-Authenticate", "Authorization"),
        (407, "Proxy-Authenticate", "Proxy-Authorization"),
    ],
)
def test_challenge_from_a_received_response(
    status: int, challenge_header: str, credentials_header: str
) -> None:
    assert AUTH_HEADERS[status] == (challenge_header, credentials_header)
    data = (
        f"SIP/2.0 {status} Unauthorized\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKx\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>;tag=2\r\n"
        "Call-ID: c1\r\nCSeq: 1 PUBLISH\r\n"
        f'{challenge_header}: Digest realm="example.com", nonce="n1",\r\n'
        '  qop="auth,auth-int", algorithm=MD5\r\n'
        f'{challenge_header}: Digest realm="example.com", nonce="n2", qop="auth", '
        "algorithm=SHA-256\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    response = parse_message(data)
    assert isinstance(response, Response)
    chosen = select_challenge(response.headers.get_all(challenge_header))
    assert chosen == Challenge(
        realm="example.com", nonce="n2", algorithm=Algorithm.SHA_256, qop=("auth",)
    )
