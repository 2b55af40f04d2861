"""Digest access authentication, client side (RFC 7616, RFC 2617, RFC 3261 §22.4).

A server that wants proof of identity answers 401 with ``WWW-Authenticate``
(a registrar or user agent) or 407 with ``Proxy-Authenticate`` (a proxy),
each carrying one or more challenges.  The client repeats the request with an
``Authorization`` / ``Proxy-Authorization`` header computed from the challenge,
the request method, the Request-URI and its credentials.

Nothing here performs I/O or draws random numbers: the client nonce
(``cnonce``) is an argument, so the caller chooses it (``secrets.token_hex(8)``)
and tests can reproduce the RFC examples exactly.

Supported: algorithms MD5, MD5-sess, SHA-256, SHA-256-sess; qop ``auth`` and
``auth-int``, and the RFC 2069 form without qop.  ``userhash`` is parsed but
not used (we always send the plain username), ``charset`` is ignored (we hash
UTF-8, which RFC 7616 §4 makes the only permitted alternative to ISO-8859-1
anyway).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "AUTH_HEADERS",
    "Algorithm",
    "Authorization",
    "Challenge",
    "Credentials",
    "DigestSession",
    "compute_authorization",
    "parse_challenges",
    "select_challenge",
]


# RFC 3261 §22.2 (401, user agent / registrar) and §22.3 (407, proxy): the
# challenge header of the response and the credentials header of the retry.
AUTH_HEADERS: dict[int, tuple[str, str]] = {
    401: ("WWW-Authenticate", "Authorization"),
    407: ("Proxy-Authenticate", "Proxy-Authorization"),
}


class Algorithm(enum.Enum):
    """The ``algorithm`` parameter (RFC 7616 §3.3, §6.1 registry)."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA_256 = "SHA-256"
    SHA_256_SESS = "SHA-256-sess"

    @property
    def is_session(self) -> bool:
        return self in (Algorithm.MD5_SESS, Algorithm.SHA_256_SESS)

    @property
    def strength(self) -> int:
        """Rank for choosing among challenges: the hash function decides."""
        return 1 if self in (Algorithm.MD5, Algorithm.MD5_SESS) else 2

    def hash(self, data: str) -> str:
        raw = data.encode("utf-8")
        if self.strength == 1:
            # MD5 here is a protocol requirement, not our choice of security.
            return hashlib.md5(raw, usedforsecurity=False).hexdigest()
        return hashlib.sha256(raw).hexdigest()

    def hash_bytes(self, data: bytes) -> str:
        if self.strength == 1:
            return hashlib.md5(data, usedforsecurity=False).hexdigest()
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_token(cls, token: str) -> Algorithm | None:
        # Algorithm names are tokens compared case-insensitively: servers in
        # the wild send "md5" as well as "MD5".
        return _ALGORITHMS.get(token.lower())


_ALGORITHMS = {a.value.lower(): a for a in Algorithm}

# The qop values we can answer, most preferred first: "auth" protects the
# request line only, but "auth-int" needs the exact body the proxy forwards,
# which is fragile across intermediaries.
_QOP_PREFERENCE = ("auth", "auth-int")


# --- auth-param lists (RFC 7235 §2.1, RFC 3261 §25.1) -----------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_TOKEN_RE = re.compile(_TOKEN)
_PARAM_RE = re.compile(rf"({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED})")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS_RE = re.compile(r"[ \t]*")
_SEPARATORS_RE = re.compile(r"[ \t,]*")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


def _skip(pattern: re.Pattern[str], value: str, pos: int) -> int:
    """Position after ``pattern`` (one that can match empty) at ``pos``."""
    m = pattern.match(value, pos)
    return m.end() if m is not None else pos


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return _QUOTED_PAIR_RE.sub(r"\1", value[1:-1])
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """Split one header value into (scheme, params) pairs.

    RFC 7235 §4.1: a header value may hold several challenges, and a comma
    separates both challenges and the parameters inside one, so a new
    challenge is recognised by a token *not* followed by "=".
    """
    result: list[tuple[str, dict[str, str]]] = []
    pos = _skip(_SEPARATORS_RE, value, 0)
    end = len(value)
    while pos < end:
        scheme_m = _TOKEN_RE.match(value, pos)
        if scheme_m is None:
            raise RemoteProtocolError(f"malformed authentication challenge: {value!r}")
        scheme = scheme_m.group()
        pos = scheme_m.end()
        params: dict[str, str] = {}
        ws = _skip(_OWS_RE, value, pos)
        if ws < end and value[ws] != "," and ws > pos:
            pos = ws
            if _PARAM_RE.match(value, pos) is not None:
                while True:
                    m = _PARAM_RE.match(value, pos)
                    if m is None:
                        break
                    name = m.group(1).lower()
                    if name in params:
                        # RFC 7235 §2.1: "Each parameter name MUST only occur
                        # once per challenge."
                        raise RemoteProtocolError(f"duplicate auth-param {name!r}")
                    params[name] = _unquote(m.group(2))
                    pos = _skip(_OWS_RE, value, m.end())
                    if pos < end and value[pos] != ",":
                        raise RemoteProtocolError(f"malformed authentication challenge: {value!r}")
                    pos = _skip(_SEPARATORS_RE, value, pos)
            else:
                # token68 form (Basic credentials style, Negotiate...): kept
                # out of params; no scheme we answer uses it.
                m68 = _TOKEN68_RE.match(value, pos)
                if m68 is None:
                    raise RemoteProtocolError(f"malformed authentication challenge: {value!r}")
                pos = _skip(_OWS_RE, value, m68.end())
                if pos < end and value[pos] != ",":
                    raise RemoteProtocolError(f"malformed authentication challenge: {value!r}")
        elif ws < end and value[ws] != ",":
            raise RemoteProtocolError(f"malformed authentication challenge: {value!r}")
        else:
            pos = ws
        pos = _skip(_SEPARATORS_RE, value, pos)
        result.append((scheme, params))
    return result


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise RemoteProtocolError(f"Digest parameter {name!r} missing")
    return value


# --- values -----------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``Digest`` challenge (RFC 7616 §3.3; RFC 3261 §25.1 ``digest-cln``)."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: Algorithm = Algorithm.MD5
    qop: tuple[str, ...] = ()
    stale: bool = False
    domain: str | None = None
    userhash: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        """Parse a header value holding exactly one Digest challenge."""
        challenges = _split_challenges(value)
        if len(challenges) != 1 or challenges[0][0].lower() != "digest":
            raise RemoteProtocolError(f"not a single Digest challenge: {value!r}")
        challenge = cls._from_params(challenges[0][1])
        if challenge is None:
            raise RemoteProtocolError(f"unsupported Digest algorithm: {value!r}")
        return challenge

    @classmethod
    def _from_params(cls, params: dict[str, str]) -> Challenge | None:
        """Build from parsed params; None when the algorithm is unknown to us."""
        realm = _required(params, "realm")
        nonce = _required(params, "nonce")
        # RFC 7616 §3.3: "If this is not present, it is assumed to be "MD5".
        # If the algorithm is not understood, the challenge SHOULD be ignored
        # (and a different one used, if there is more than one)."
        algorithm = Algorithm.from_token(params.get("algorithm", "MD5"))
        if algorithm is None:
            return None
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        # RFC 2617 §3.2.1: "If stale is TRUE (case-insensitive), the client may
        # wish to simply retry the request with a new encrypted response [...]
        # If stale is FALSE, or anything other than TRUE, or the stale
        # directive is not present, the username and/or password are invalid".
        stale = params.get("stale", "").lower() == "true"
        userhash = params.get("userhash", "").lower() == "true"
        return cls(
            realm=realm,
            nonce=nonce,
            opaque=params.get("opaque"),
            algorithm=algorithm,
            qop=qop,
            stale=stale,
            domain=params.get("domain"),
            userhash=userhash,
        )

    @property
    def answerable(self) -> bool:
        """Whether we can compute a response to this challenge at all."""
        if not self.qop:
            # RFC 2069 form: no cnonce travels, so the -sess variants (whose
            # A1 includes the cnonce) cannot be answered.
            return not self.algorithm.is_session
        return any(q in self.qop for q in _QOP_PREFERENCE)

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.domain is not None:
            parts.append(f"domain={_quote(self.domain)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm.value}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every Digest challenge with a known algorithm in these header values.

    ``values`` are the raw values of all ``WWW-Authenticate`` (or all
    ``Proxy-Authenticate``) headers of one response, in order.  Challenges of
    other schemes and of unknown algorithms are skipped; a malformed header
    or Digest challenge raises :class:`RemoteProtocolError`.
    """
    found: list[Challenge] = []
    for value in values:
        for scheme, params in _split_challenges(value):
            if scheme.lower() != "digest":
                continue
            challenge = Challenge._from_params(params)
            if challenge is not None:
                found.append(challenge)
    return found


def select_challenge(values: Iterable[str]) -> Challenge | None:
    """The strongest challenge we can answer, or None when there is none.

    Strength is the hash function (SHA-256 over MD5); among equals the
    server's order wins, since RFC 7616 §3.7 asks servers to list
    challenges "in the order of [their] most preferred one to least
    preferred one".
    """
    best: Challenge | None = None
    for challenge in parse_challenges(values):
        if not challenge.answerable:
            continue
        if best is None or challenge.algorithm.strength > best.algorithm.strength:
            best = challenge
    return best


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    #: When set, only challenges of this realm are answered (RFC 3261 §22.1).
    realm: str | None = None


@dataclass(frozen=True)
class Authorization:
    """A Digest ``Authorization`` / ``Proxy-Authorization`` value (RFC 7616 §3.4).

    ``qop``, ``cnonce`` and ``nc`` are all None in the RFC 2069 form.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm = Algorithm.MD5
    opaque: str | None = None
    qop: str | None = None
    cnonce: str | None = None
    nc: int | None = None

    def __str__(self) -> str:
        # RFC 3261 §25.1 quoting: username, realm, nonce, uri, response,
        # cnonce and opaque are quoted-strings; algorithm, qop and nc are not.
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm.value}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc:08x}")
        return "Digest " + ", ".join(parts)

    @classmethod
    def parse(cls, value: str) -> Authorization:
        parsed = _split_challenges(value)
        if len(parsed) != 1 or parsed[0][0].lower() != "digest":
            raise RemoteProtocolError(f"not Digest credentials: {value!r}")
        params = parsed[0][1]
        algorithm = Algorithm.from_token(params.get("algorithm", "MD5"))
        if algorithm is None:
            raise RemoteProtocolError(f"unsupported Digest algorithm: {value!r}")
        nc: int | None = None
        if "nc" in params:
            if re.fullmatch(r"[0-9a-fA-F]{8}", params["nc"]) is None:
                raise RemoteProtocolError(f"malformed nonce count: {params['nc']!r}")
            nc = int(params["nc"], 16)
        return cls(
            username=_required(params, "username"),
            realm=_required(params, "realm"),
            nonce=_required(params, "nonce"),
            uri=_required(params, "uri"),
            response=_required(params, "response"),
            algorithm=algorithm,
            opaque=params.get("opaque"),
            qop=params.get("qop"),
            cnonce=params.get("cnonce"),
            nc=nc,
        )


def compute_authorization(
    challenge: Challenge,
    credentials: Credentials,
    *,
    method: str,
    uri: str,
    cnonce: str,
    nc: int = 1,
    body: bytes = b"",
) -> Authorization:
    """Answer ``challenge`` for a request ``method uri`` carrying ``body``.

    ``uri`` is the digest-uri: in SIP the Request-URI, as sent (RFC 3261
    §22.4).  ``cnonce`` and ``nc`` are ignored in the RFC 2069 form (no qop
    in the challenge).
    """
    if not challenge.answerable:
        raise LocalProtocolError("this challenge offers no qop/algorithm we can answer")
    qop = next((q for q in _QOP_PREFERENCE if q in challenge.qop), None)
    if qop is not None:
        if not cnonce or '"' in cnonce or "\\" in cnonce:
            raise LocalProtocolError(f"unusable cnonce {cnonce!r}")
        if not 0 < nc <= 0xFFFFFFFF:
            raise LocalProtocolError(f"nonce count {nc} out of range")

    h = challenge.algorithm.hash
    # RFC 7616 §3.4.2: A1 = unq(username) ":" unq(realm) ":" passwd, and for
    # the -sess variants A1 = H(that) ":" unq(nonce) ":" unq(cnonce).
    ha1 = h(f"{credentials.username}:{challenge.realm}:{credentials.password}")
    if challenge.algorithm.is_session:
        ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
    # RFC 7616 §3.4.3: A2 = Method ":" request-uri, plus ":" H(entity-body)
    # for auth-int (RFC 3261 §22.4 hashes the SIP message body).
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + challenge.algorithm.hash_bytes(body)
    ha2 = h(a2)

    if qop is None:
        # RFC 2069 compatibility (RFC 2617 §3.2.2.1): KD(H(A1), nonce:H(A2)),
        # and no qop, cnonce or nc in the answer.
        response = h(f"{ha1}:{challenge.nonce}:{ha2}")
    else:
        # RFC 7616 §3.4.1: response = KD(H(A1), unq(nonce) ":" nc ":"
        # unq(cnonce) ":" unq(qop) ":" H(A2)).
        response = h(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{qop}:{ha2}")
    return Authorization(
        username=credentials.username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        opaque=challenge.opaque,
        qop=qop,
        cnonce=None if qop is None else cnonce,
        nc=None if qop is None else nc,
    )


class DigestSession:
    """Answers challenges for one set of credentials, counting nonce uses.

    RFC 7616 §3.4: "The nc value is the hexadecimal count of the number of
    requests (including the current request) that the client has sent with
    the nonce value in this request."  The session keeps the latest
    challenge per realm, so later requests (refreshes, un-SUBSCRIBEs) can be
    authorised up front with the next count instead of collecting a fresh
    401 each time.
    """

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        # realm -> (latest challenge, requests sent with its nonce)
        self._realms: dict[str, tuple[Challenge, int]] = {}

    def challenge_for(self, realm: str) -> Challenge | None:
        entry = self._realms.get(realm)
        return entry[0] if entry is not None else None

    @property
    def realms(self) -> list[str]:
        return list(self._realms)

    def authorize(
        self,
        challenge: Challenge,
        *,
        method: str,
        uri: str,
        cnonce: str,
        body: bytes = b"",
    ) -> Authorization:
        """Answer ``challenge`` (new or remembered) with the next nonce count."""
        entry = self._realms.get(challenge.realm)
        count = entry[1] if entry is not None and entry[0].nonce == challenge.nonce else 0
        if count >= 0xFFFFFFFF:
            raise LocalProtocolError("nonce count exhausted; wait for a fresh challenge")
        authorization = compute_authorization(
            challenge,
            self.credentials,
            method=method,
            uri=uri,
            cnonce=cnonce,
            nc=count + 1,
            body=body,
        )
        self._realms[challenge.realm] = (challenge, count + 1)
        return authorization

    def forget(self, realm: str) -> None:
        self._realms.pop(realm, None)
