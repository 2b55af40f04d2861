"""Hostile SIP input against a live adapter process (``presence-adapter serve``).

Requests that do not come from the presence server's host are refused with 403;
10,000 mutated datagrams — real captured messages of the bundled Kamailio
(tests/data/kamailio, tests/data/sip) cut, flipped, spliced and padded, plus
plain garbage — leave the adapter healthy and serving: a Publish answered and
a notification delivered to a real Bayeux client afterwards.

The datagrams come from 127.0.0.1, the presence server's host, so they pass
the source check and reach the parser and the dialog logic behind it; a tenth
come from 127.0.0.2 and must be refused.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory, BayeuxListener
from tests.polling import eventually
from tests.presence_server import PresenceServer
from tests.rawsip import RawSipError, SipMessage, new_token

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data"
RUN = new_token()[:8]
PASSWORD = "secret"
DATAGRAMS = 10_000
#: Datagrams between two barriers (an OPTIONS whose 200 says all before it was read).
BATCH = 250
OTHER_HOST = "127.0.0.2"  # Linux answers on all of 127/8


def alice(scenario: str) -> str:
    return f"sip:alice-{scenario}-{RUN}@example.com"


def bob(scenario: str) -> str:
    return f"sip:bob-{scenario}-{RUN}@example.com"


@pytest.fixture(scope="module")
def adapter(adapter_factory: AdapterFactory) -> AdapterProcess:
    scenarios = ("refused", "fuzz")
    return adapter_factory([
        AppAccount("alice-app", PASSWORD, tuple(alice(s) for s in scenarios)),
        AppAccount("bob-app", PASSWORD, tuple(bob(s) for s in scenarios)),
    ])


@pytest.fixture
def udp() -> Iterator[Callable[[str], socket.socket]]:
    """``udp(host)``: a UDP socket bound on ``host`` (closed after the test)."""
    sockets: list[socket.socket] = []

    def bind(host: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sockets.append(sock)
        return sock

    yield bind
    for sock in sockets:
        sock.close()


def options(sock: socket.socket, call_id: str) -> bytes:
    host, port = sock.getsockname()
    return (
        f"OPTIONS sip:adapter@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{new_token()};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:probe@{host}>;tag={new_token()}\r\n"
        f"To: <sip:adapter@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(sock: socket.socket, call_id: str, timeout: float = 10.0) -> SipMessage:
    """The response with ``call_id`` (others read on the way are dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer for {call_id} within {timeout} s")
        sock.settimeout(left)
        try:
            data = sock.recv(65535)
        except TimeoutError:
            continue
        try:
            message = SipMessage.parse(data)
        except (RawSipError, UnicodeDecodeError):
            continue
        if message.is_response and message.call_id == call_id:
            return message


def captured() -> list[bytes]:
    """The real messages the mutations start from."""
    files = sorted((DATA / "kamailio").glob("*.txt")) + sorted((DATA / "sip").glob("*.sip"))
    messages = [f.read_bytes() for f in files if b"SIP/2.0" in f.read_bytes()[:200]]
    assert len(messages) > 20
    return messages


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    """One hostile datagram: a real message damaged in one or more ways, or garbage."""
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 2000))
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randrange(1, 4)):
        lines = bytes(data).split(b"\r\n")
        step = rng.randrange(11)
        if step == 0:  # flip bytes
            for _ in range(rng.randrange(1, 12)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
        elif step == 1:  # cut short
            data = data[: rng.randrange(len(data) + 1)]
        elif step == 2:  # lose a line
            del lines[rng.randrange(len(lines))]
            data = bytearray(b"\r\n".join(lines))
        elif step == 3:  # repeat a line
            i = rng.randrange(len(lines))
            lines[i:i] = [lines[i]] * rng.randrange(1, 50)
            data = bytearray(b"\r\n".join(lines))
        elif step == 4:  # a lying Content-Length
            value = rng.choice([b"-1", b"99999999999999999999", b"abc", b"", b"0", b"65536"])
            data = bytearray(b"\r\n".join(
                b"Content-Length: " + value if line.lower().startswith(b"content-length")
                else line for line in lines
            ))
        elif step == 5:  # garbage inside
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 200))
        elif step == 6:  # a header value blown up
            i = rng.randrange(len(lines))
            lines[i] = lines[i] + b"x" * rng.randrange(1000, 40000)
            data = bytearray(b"\r\n".join(lines)[:65000])
        elif step == 7:  # a broken start line
            lines[0] = rng.choice([
                b"NOTIFY", b"SIP/2.0 99999 X", b"NOTIFY sip: SIP/2.0", b"SIP/3.0 200 OK",
                b"NOTIFY <sip:x> SIP/2.0", b"\xff\xfe SIP/2.0", b"OPTIONS * SIP/2.0",
            ])
            data = bytearray(b"\r\n".join(lines))
        elif step == 8:  # two messages in one
            data += rng.choice(corpus)
        elif step == 9:  # headers folded, odd separators
            data = data.replace(b": ", rng.choice([b":", b" : ", b":\r\n ", b"\t:\t"]), 3)
        else:  # a key header emptied
            name = rng.choice([b"Via", b"From", b"To", b"Call-ID", b"CSeq", b"Event",
                               b"Subscription-State", b"Contact"])
            data = bytearray(b"\r\n".join(
                name + b": " if line.lower().startswith(name.lower() + b":") else line
                for line in lines
            ))
    return bytes(data[:65000])


def test_requests_from_another_host_are_refused_with_403(
    adapter: AdapterProcess, udp: Callable[[str], socket.socket]
) -> None:
    stranger = udp(OTHER_HOST)
    notify = (DATA / "kamailio" / "08-notify-active.txt").read_bytes()
    stranger.sendto(notify, ("127.0.0.1", adapter.sip_port))
    reply = answer(stranger, SipMessage.parse(notify).call_id)
    assert reply.status == 403
    stranger.sendto(options(stranger, "refused-options"), ("127.0.0.1", adapter.sip_port))
    assert answer(stranger, "refused-options").status == 403
    # Over TCP just the same.
    with socket.create_connection(("127.0.0.1", adapter.sip_port), timeout=10,
                                  source_address=(OTHER_HOST, 0)) as tcp:
        host, port = tcp.getsockname()
        tcp.sendall(options(stranger, "refused-tcp").replace(
            f"SIP/2.0/UDP {stranger.getsockname()[0]}:{stranger.getsockname()[1]}".encode(),
            f"SIP/2.0/TCP {host}:{port}".encode(),
        ))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tcp.recv(65535)
            assert chunk, "connection closed without an answer"
            data += chunk
    assert SipMessage.parse(data).status == 403
    # The presence server's host is answered as before.
    friend = udp("127.0.0.1")
    friend.sendto(options(friend, "friend"), ("127.0.0.1", adapter.sip_port))
    assert answer(friend, "friend").status == 200
    # Counted, and told in the log (at most one line per 10 s).
    log = adapter.log_tail(400)
    assert "refused SIP requests not from the presence server (403): 1 since the last " \
        "report (1 in all); the last: NOTIFY from udp 127.0.0.2:" in log
    # And exported (GET /metrics, read with Prometheus' own parser).
    metrics = httpx.get(adapter.url + "/metrics", timeout=10).text
    refused = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "presence_adapter_sip_requests_refused_total"
    ]
    assert refused == [3]


def test_ten_thousand_mutated_datagrams_leave_the_adapter_healthy_and_serving(
    adapter: AdapterProcess,
    presence_server: PresenceServer,
    udp: Callable[[str], socket.socket],
    bayeux_listener: Callable[..., BayeuxListener],
) -> None:
    a, b = alice("fuzz"), bob("fuzz")
    listener = bayeux_listener(adapter.url + "/cometd", "bob-app", PASSWORD)
    channel = "/bayeux/bob-app/fuzz"
    with adapter.client("alice-app", a) as presentity, adapter.client("bob-app", b) as watcher:
        response = presentity.post("/rest/presence", json={"presence": [activity("Busy")]})
        assert response.status_code == 204, response.text
        response = watcher.post("/rest/presence/notification", json={
            "presentity": a, "count": 10, "reference": {"correlator": "fuzz", "endpoint": channel},
        })
        assert response.status_code == 201, response.text
        eventually(lambda: any(
            s["watcher"] == b for s in presentity.get(
                "/rest/presence/subscription", params={"status": "open"}).json()["result"]
        ), what="bob among the open subscriptions")
        response = presentity.put("/rest/presence/subscription", json={
            "watcher": b, "decisions": [{"presenceAttribute": "Activity", "decision": True}],
        })
        assert response.status_code == 204, response.text

        seed = random.randrange(2**32)
        rng = random.Random(seed)
        corpus = captured()
        trusted, stranger = udp("127.0.0.1"), udp(OTHER_HOST)
        target = ("127.0.0.1", adapter.sip_port)
        for sent in range(DATAGRAMS):
            sock = stranger if rng.random() < 0.1 else trusted
            sock.sendto(mutate(rng, corpus), target)
            if (sent + 1) % BATCH == 0:
                # UDP from one socket is read in order: the OPTIONS's 200
                # means the adapter got through the batch (or the kernel
                # dropped what did not fit its buffer).
                call_id = f"barrier-{sent}-{new_token()}"
                trusted.sendto(options(trusted, call_id), target)
                try:
                    assert answer(trusted, call_id).status == 200
                except AssertionError as exc:
                    raise AssertionError(f"seed {seed}, after {sent + 1}: {exc}") from None
        assert adapter.process is not None and adapter.process.poll() is None

        health = presentity.get("/health")
        assert health.status_code == 200, (seed, health.text)
        response = presentity.post("/rest/presence", json={"presence": [activity("Away")]})
        assert response.status_code == 204, (seed, response.text)
        listener.wait_for(lambda m: m["channel"] == channel and any(
            c["typeAndValue"].get("activity") == "Away"
            for c in m["data"].get("statusChanged", {}).get("changedAttributes", [])
        ))
    # Unusable and refused messages are summed up in the log, not told one by one.
    adapter.stop()
    lines = adapter.log_path.read_text(errors="replace").splitlines()
    told = [line for line in lines
            if "SIP messages that were not usable" in line or "refused SIP requests" in line]
    assert 0 < len(told) < 100, len(told)
    # The counts, as the adapter tells them when it stops.
    (summary,) = [line for line in lines if "SIP messages refused" in line]
    match = re.search(r"presence server\): (\d+); dropped \(not usable\): (\d+)", summary)
    assert match is not None, summary
    refused, dropped = int(match.group(1)), int(match.group(2))
    assert refused > 0 and dropped > 0, summary


def activity(value: str) -> dict[str, Any]:
    return {"typeAndValue": {"unionElement": "Activity", "activity": value}}
