"""A tiny raw-socket SIP peer for tests and benchmarks.

Deliberately independent of the product's SIP stack (``sip/``): it is the
baseline that stack is compared with, and the witness that the bundled
presence server behaves as described, so it must not share that stack's bugs.
It does only what a test needs: fill a request template, send it over UDP,
read what comes back, parse it just enough (start line, headers, body) and
answer every NOTIFY with 200 at once.

Answering at once matters: the presence server retransmits an unanswered
NOTIFY and, when the transaction times out, deletes the subscription
(RFC 6665 §4.2.2 lets a notifier remove a subscription whose NOTIFY fails;
Kamailio's presence module does so, timeout_rm_subs=1).
"""

from __future__ import annotations

import secrets
import socket
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

# RFC 3261 §7.3.3 compact forms (plus RFC 6665 "o" for Event).
COMPACT_NAMES = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "o": "event",
    "u": "allow-events",
}


class RawSipError(Exception):
    """Something the peer received could not be understood, or never came."""


@dataclass(frozen=True)
class SipMessage:
    """One received request or response, parsed only as far as tests need."""

    start_line: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes

    @classmethod
    def parse(cls, data: bytes) -> SipMessage:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise RawSipError(f"no end of headers in {data[:200]!r}")
        lines = head.decode("utf-8").split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            # RFC 3261 §7.3.1: a line starting with whitespace continues
            # the previous header field.
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, colon, value = line.partition(":")
            if not colon:
                raise RawSipError(f"bad header line {line!r}")
            headers.append((name.strip(), value.strip()))
        message = cls(lines[0], tuple(headers), b"", data)
        length = message.header("Content-Length")
        if length is not None:
            body = body[: int(length)]
        return cls(lines[0], tuple(headers), body, data)

    @property
    def is_response(self) -> bool:
        return self.start_line.startswith("SIP/2.0 ")

    @property
    def status(self) -> int:
        if not self.is_response:
            raise RawSipError(f"not a response: {self.start_line!r}")
        return int(self.start_line.split(" ", 2)[1])

    @property
    def method(self) -> str:
        if self.is_response:
            return self.cseq_method
        return self.start_line.split(" ", 1)[0]

    @property
    def cseq_method(self) -> str:
        return self.require("CSeq").split()[1]

    @property
    def call_id(self) -> str:
        return self.require("Call-ID")

    def header(self, name: str) -> str | None:
        """The first value of a header field, compact forms included."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        wanted = COMPACT_NAMES.get(name.lower(), name.lower())
        return [
            value
            for field, value in self.headers
            if COMPACT_NAMES.get(field.lower(), field.lower()) == wanted
        ]

    def require(self, name: str) -> str:
        value = self.header(name)
        if value is None:
            raise RawSipError(f"{name} missing in {self.start_line!r}")
        return value

    def tag(self, name: str) -> str | None:
        """The tag parameter of From or To."""
        for param in self.require(name).split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "tag":
                return value
        return None

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")



# -- request templates shared by the tests (format_request fills them) -----------

PUBLISH = """
    PUBLISH sip:{presentity} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:{presentity}>;tag={tag}
    To: <sip:{presentity}>
    Call-ID: {call_id}
    CSeq: 1 PUBLISH
    Event: presence
    Expires: {expires}
    Content-Type: application/pidf+xml
"""

SUBSCRIBE = """
    SUBSCRIBE sip:{presentity} SIP/2.0
    Via: SIP/2.0/UDP {local};branch={branch};rport
    Max-Forwards: 70
    From: <sip:{subscriber}>;tag={tag}
    To: <sip:{presentity}>
    Call-ID: {call_id}
    CSeq: 1 SUBSCRIBE
    Contact: <sip:{local}>
    Event: {event}
    Accept: {accept}
    Expires: 600
"""

def new_token() -> str:
    return secrets.token_hex(8)


def new_branch() -> str:
    # RFC 3261 §8.1.1.7: the branch "MUST always begin with the characters
    # z9hG4bK".
    return "z9hG4bK" + secrets.token_hex(8)


def format_request(template: str, body: bytes | str = b"", **values: object) -> bytes:
    """Fill a request written as plain text, one header per line.

    The template is dedented, ``{name}`` fields are filled from ``values``
    (``{branch}`` gets a fresh branch unless given), line ends become CRLF,
    and Content-Length is appended from the body; the template must not
    contain Content-Length itself.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    values.setdefault("branch", new_branch())
    lines = textwrap.dedent(template).strip().format(**values).splitlines()
    if any(line.lower().startswith(("content-length:", "l:")) for line in lines):
        raise ValueError("the template must not set Content-Length")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def response_to(request: SipMessage, status: int = 200, reason: str = "OK") -> bytes:
    """A response echoing what RFC 3261 §8.2.6.2 says must be copied."""
    lines = [f"SIP/2.0 {status} {reason}"]
    lines += [f"Via: {via}" for via in request.header_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        lines.append(f"{name}: {request.require(name)}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class SipPeer:
    """A UDP endpoint on a free loopback port that talks to one server.

    Everything received is kept in ``received`` in arrival order; NOTIFYs are
    answered 200 the moment they arrive (``notify_status`` changes that).
    ``transcript`` records every datagram sent and received, in order.
    """

    def __init__(self, server: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.received: list[SipMessage] = []
        self.transcript: list[tuple[str, bytes]] = []
        self.notify_status = 200
        self._taken: set[int] = set()

    @property
    def local(self) -> str:
        """``host:port`` of this peer, for Via and Contact."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SipPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.transcript.append(("sent", data))
        self.sock.sendto(data, self.server)

    def send_request(self, template: str, body: bytes | str = b"", **values: object) -> bytes:
        values.setdefault("local", self.local)
        data = format_request(template, body, **values)
        self.send(data)
        return data

    def request(
        self,
        template: str,
        body: bytes | str = b"",
        *,
        call_id: str,
        method: str,
        attempts: int = 4,
        **values: object,
    ) -> SipMessage:
        """Send a request and return its final response.

        A 500 is sent again (new branch), a few times: the sqlite-backed
        presence server answers 500 "database is locked" when another of its
        processes writes at the same moment (docs/kamailio.md; RFC 3261 §21.5.1 lets
        a client retry a server error).
        """
        for attempt in range(1, attempts + 1):
            self.send_request(template, body, call_id=call_id, **values)
            response = self.response(call_id, method)
            if response.status != 500 or attempt == attempts:
                return response
            time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    def wait_for(self, predicate: Callable[[SipMessage], bool], timeout: float = 5.0) -> SipMessage:
        """The first not yet taken message matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self.received):
                if index not in self._taken and predicate(message):
                    self._taken.add(index)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = "\n".join(m.start_line for m in self.received)
                raise RawSipError(f"nothing matching within {timeout} s; received:\n{seen}")
            self._receive_one(remaining)

    def response(self, call_id: str, method: str, timeout: float = 5.0) -> SipMessage:
        """The next final response to ``method`` in dialog/call ``call_id``."""
        return self.wait_for(
            lambda m: (
                m.is_response
                and m.status >= 200
                and m.call_id == call_id
                and m.cseq_method == method
            ),
            timeout,
        )

    def notify(self, call_id: str, timeout: float = 5.0) -> SipMessage:
        """The next NOTIFY for ``call_id`` (already answered)."""
        return self.wait_for(
            lambda m: not m.is_response and m.method == "NOTIFY" and m.call_id == call_id,
            timeout,
        )

    def drain(self, duration: float) -> None:
        """Keep receiving (and answering) for ``duration`` seconds."""
        deadline = time.monotonic() + duration
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive_one(remaining)

    def _receive_one(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data, source = self.sock.recvfrom(65535)
        except TimeoutError:
            return
        self.transcript.append(("received", data))
        message = SipMessage.parse(data)
        if not message.is_response and message.method == "NOTIFY":
            answer = response_to(message, self.notify_status)
            self.sock.sendto(answer, source)
            self.transcript.append(("sent", answer))
        self.received.append(message)


def exchange_tcp(server: tuple[str, int], data: bytes, timeout: float = 5.0) -> SipMessage:
    """Send one request over a fresh TCP connection; return the first response.

    Messages on a stream are framed by Content-Length (RFC 3261 §18.3).
    """
    with socket.create_connection(server, timeout=timeout) as conn:
        conn.sendall(data)
        buffer = b""
        while True:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            if sep:
                length = SipMessage.parse(head + sep).header("Content-Length")
                if length is not None and len(rest) >= int(length):
                    return SipMessage.parse(buffer)
            chunk = conn.recv(65535)
            if not chunk:
                raise RawSipError(f"connection closed after {buffer!r}")
            buffer += chunk
