"""The asyncio driver on its own sockets (no presence server needed)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from sip.aio import SipEndpoint
from sip.aio import endpoint as endpoint_module
from sip.aio.endpoint import UDP_RECEIVE_BUFFER
from sip.uri import SipURI
from sip.useragent import Destination


async def _started() -> SipEndpoint:
    # The server address is never contacted by these tests.
    endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse("sip:127.0.0.1:9"))
    await endpoint.start()
    return endpoint


def test_double_crlf_ping_over_tcp_gets_a_crlf_pong() -> None:
    async def scenario() -> bytes:
        endpoint = await _started()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.local.port)
            writer.write(b"\r\n\r\n")  # RFC 5626 §4.4.1 keep-alive ping
            await writer.drain()
            pong = await asyncio.wait_for(reader.read(16), 2)
            writer.close()
            await writer.wait_closed()
            return pong
        finally:
            await endpoint.close()

    assert asyncio.run(scenario()) == b"\r\n"


def test_options_over_tcp_is_answered_on_the_same_connection() -> None:
    async def scenario() -> bytes:
        endpoint = await _started()
        try:
            port = endpoint.local.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            local = writer.get_extra_info("sockname")[1]
            request = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/TCP 127.0.0.1:{local};branch=z9hG4bKtcp1\r\n"
                "From: <sip:probe@example.com>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
                "Call-ID: tcp-options-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            writer.write(request.encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            writer.close()
            await writer.wait_closed()
            return head
        finally:
            await endpoint.close()

    head = asyncio.run(scenario())
    assert head.startswith(b"SIP/2.0 200 ")
    assert b"Call-ID: tcp-options-1" in head


def _rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


def test_the_udp_socket_asks_for_a_larger_receive_buffer() -> None:
    async def scenario() -> tuple[int | None, int]:
        endpoint = await _started()
        try:
            sock = endpoint._udp.get_extra_info("socket")  # type: ignore[union-attr]
            return endpoint.receive_buffer, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            await endpoint.close()

    granted, actual = asyncio.run(scenario())
    assert granted == actual
    ceiling = _rmem_max()
    if ceiling is not None:
        # Linux grants min(asked, rmem_max), doubled for its bookkeeping (socket(7)).
        assert granted == 2 * min(UDP_RECEIVE_BUFFER, ceiling) or granted >= UDP_RECEIVE_BUFFER


def test_a_smaller_receive_buffer_than_the_systems_is_left_alone() -> None:
    async def scenario() -> tuple[int | None, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            default = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        endpoint = SipEndpoint(host="127.0.0.1", port=0, server=SipURI.parse("sip:127.0.0.1:9"),
                               receive_buffer=1024)
        await endpoint.start()
        try:
            return endpoint.receive_buffer, default
        finally:
            await endpoint.close()

    granted, default = asyncio.run(scenario())
    assert granted == default


def _options(port: int, local: int, branch: str) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{branch}\r\n"
        "From: <sip:probe@example.com>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
        f"Call-ID: udp-{branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_datagrams_from_one_peer_share_one_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoint_module, "_SOURCES_MAX", 2)

    async def scenario() -> list[Destination]:
        endpoint = await _started()
        sources: list[Destination] = []
        receive = endpoint.ua.receive

        def spy(data: bytes, source: Destination, now: float) -> None:
            sources.append(source)
            receive(data, source, now)

        monkeypatch.setattr(endpoint.ua, "receive", spy)
        peers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            port = endpoint.local.port
            loop = asyncio.get_running_loop()
            for peer in peers:
                peer.bind(("127.0.0.1", 0))
                peer.setblocking(False)
            for n, peer in enumerate([peers[0], peers[0], peers[1], peers[2], peers[0]]):
                peer.sendto(_options(port, peer.getsockname()[1], f"u{n}"), ("127.0.0.1", port))
                answer = await asyncio.wait_for(loop.sock_recv(peer, 4096), 2)
                assert answer.startswith(b"SIP/2.0 200 ")
            return sources
        finally:
            for peer in peers:
                peer.close()
            await endpoint.close()

    first, again, second, third, back = asyncio.run(scenario())
    assert again is first  # the same peer: the same object
    assert second == Destination("udp", "127.0.0.1", second.port) and second is not first
    # Full at two sources, the table was emptied for the third: equal, a new object.
    assert back == first and back is not first


def _options(host: str, port: int, call_id: str, transport: str = "UDP") -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:probe@{host}>;tag=a\r\nTo: <sip:127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def test_requests_from_another_host_than_the_server_are_refused_and_counted() -> None:
    """Only the server's host may send requests (the server here is 127.0.0.1:9)."""

    async def scenario() -> tuple[list[bytes], int, int]:
        endpoint = await _started()
        answers = []
        try:
            for host in ("127.0.0.2", "127.0.0.1", "127.0.0.2"):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((host, 0))
                    sock.setblocking(False)
                    call_id = f"from-{host}-{len(answers)}"
                    sock.sendto(_options(host, sock.getsockname()[1], call_id),
                                ("127.0.0.1", endpoint.local.port))
                    loop = asyncio.get_running_loop()
                    answers.append(await asyncio.wait_for(loop.sock_recv(sock, 65535), 2))
            return answers, endpoint.refused, endpoint.dropped
        finally:
            await endpoint.close()

    (stranger, friend, again), refused, dropped = asyncio.run(scenario())
    assert stranger.startswith(b"SIP/2.0 403 ") and again.startswith(b"SIP/2.0 403 ")
    assert friend.startswith(b"SIP/2.0 200 ")
    assert (refused, dropped) == (2, 0)


def test_refreshes_fall_on_the_drivers_grid() -> None:
    """What the server grants is refreshed on a whole step of REFRESH_GRID, so
    that the refreshes due within a step go out in one wake-up."""

    async def scenario() -> float | None:
        endpoint = await _started()
        try:
            sent: list[bytes] = []
            endpoint._udp.sendto = lambda data, addr=None: sent.append(data)  # type: ignore[union-attr, method-assign]
            handle = endpoint.subscribe(SipURI.parse("sip:bob@example.com"),
                                        SipURI.parse("sip:alice@example.com"))
            subscribe = sent.pop().decode()
            fields = dict(line.split(": ", 1) for line in subscribe.split("\r\n")[1:] if line)
            ok = (f"SIP/2.0 200 OK\r\nVia: {fields['Via']}\r\nFrom: {fields['From']}\r\n"
                  f"To: {fields['To']};tag=srv\r\nCall-ID: {fields['Call-ID']}\r\n"
                  f"CSeq: {fields['CSeq']}\r\nExpires: 600\r\n"
                  "Contact: <sip:127.0.0.1:9>\r\nContent-Length: 0\r\n\r\n")
            notify = (f"NOTIFY sip:bob@127.0.0.1:{endpoint.local.port} SIP/2.0\r\n"
                      "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKn1\r\n"
                      f"From: {fields['To']};tag=srv\r\nTo: {fields['From']}\r\n"
                      f"Call-ID: {fields['Call-ID']}\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\n"
                      "Subscription-State: active;expires=600\r\nContent-Length: 0\r\n\r\n")
            endpoint._datagram(ok.encode(), ("127.0.0.1", 9))
            endpoint._datagram(notify.encode(), ("127.0.0.1", 9))
            assert sent and sent[-1].startswith(b"SIP/2.0 200 ")
            subscription = endpoint.ua.subscription(handle.id)
            assert subscription is not None and subscription.remote_tag == "srv"
            return subscription.get_timer()
        finally:
            await endpoint.close()

    deadline = asyncio.run(scenario())
    assert deadline is not None
    steps = deadline / endpoint_module.REFRESH_GRID
    assert abs(steps - round(steps)) < 1e-9


def test_a_timer_run_before_its_deadline_is_set_again() -> None:
    """The loop may run a timer a clock tick before it is due: the user
    agent's deadline, still the same, must be armed again, not taken as set."""

    async def scenario() -> tuple[float | None, float | None, float | None]:
        endpoint = await _started()
        try:
            endpoint._udp.sendto = lambda data, addr=None: None  # type: ignore[union-attr, method-assign]
            endpoint.subscribe(SipURI.parse("sip:bob@example.com"),
                               SipURI.parse("sip:alice@example.com"))
            armed = endpoint._timer.deadline
            endpoint._timer._fire()  # as the loop would, early: nothing is due yet
            return armed, endpoint.ua.get_timer(), endpoint._timer.deadline
        finally:
            await endpoint.close()

    armed, due, again = asyncio.run(scenario())
    assert armed is not None and due is not None
    assert again == armed  # set again for the same deadline
