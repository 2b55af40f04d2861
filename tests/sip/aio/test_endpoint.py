"""The asyncio driver on its own sockets (no presence server needed)."""

from __future__ import annotations

import asyncio

from sip.aio import SipEndpoint
from sip.uri import SipURI


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
