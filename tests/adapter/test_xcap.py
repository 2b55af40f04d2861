"""XcapClient against a fake XCAP server, on a local port, that behaves as the
bundled Kamailio does.

The fake honours ``If-Match`` (412 on a stale entity tag) but, like Kamailio
5.6 (measured), ignores ``If-None-Match: *``; it can be told to answer 500 to
some PUTs, as Kamailio does when its SQLite database is busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web

from adapter import xcap
from adapter.xcap import XcapClient, XcapError
from pidf import AttributeType, PresRules, SubHandling

ALICE = "sip:alice@example.com"
ACTIVITY = {AttributeType.ACTIVITY: True}

Handler = Callable[[web.Request], Awaitable[web.Response]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[XcapClient]:
    """``handle`` answers every request on a local port; a client of its root."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    client = XcapClient(f"http://127.0.0.1:{sock.getsockname()[1]}/xcap-root")
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


class FakeXcapServer:
    def __init__(self, busy: Callable[[int], bool] = lambda n: False) -> None:
        self.documents: dict[str, tuple[bytes, str]] = {}
        self.puts = 0
        self.busy = busy  # n-th PUT (from 1) -> answer 500
        self._version = 0

    async def handle(self, request: web.Request) -> web.Response:
        # Let other requests run between any two steps, as a real server would.
        await asyncio.sleep(0)
        path = request.raw_path
        current = self.documents.get(path)
        if request.method == "GET":
            if current is None:
                return web.Response(status=404)
            return web.Response(body=current[0], headers={"ETag": current[1]})
        assert request.method == "PUT"
        self.puts += 1
        if self.busy(self.puts):
            return web.Response(status=500, text="Server error")
        match = request.headers.get("If-Match")
        if match is not None and (current is None or current[1] != match):
            return web.Response(status=412)
        self._version += 1
        self.documents[path] = (await request.read(), f'"v{self._version}"')
        return web.Response(headers={"ETag": f'"v{self._version}"'})

    def client(self) -> contextlib.AbstractAsyncContextManager[XcapClient]:
        return serving(self.handle)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xcap, "BUSY_PAUSE", 0.0)


def test_concurrent_updates_of_one_document_are_all_kept() -> None:
    server = FakeXcapServer()
    watchers = [f"sip:w{i}@example.com" for i in range(5)]

    def allowing(watcher: str) -> Callable[[PresRules], PresRules]:
        return lambda rules: rules.allow(watcher, ACTIVITY)

    async def decide() -> PresRules:
        async with server.client() as client:
            await asyncio.gather(*(client.update(ALICE, allowing(w)) for w in watchers))
            document = await client.get(ALICE)
        return document.rules

    rules = asyncio.run(decide())
    for watcher in watchers:
        rule = rules.rule_for(watcher)
        assert rule is not None and rule.sub_handling is SubHandling.ALLOW, watcher
    # One read-modify-write at a time: no attempt had to be made again.
    assert server.puts == len(watchers)


def test_updates_of_different_documents_still_run_side_by_side() -> None:
    server = FakeXcapServer()
    presentities = [f"sip:p{i}@example.com" for i in range(3)]
    puts_when_changed: list[int] = []

    def change(rules: PresRules) -> PresRules:
        puts_when_changed.append(server.puts)
        return rules.allow("sip:w@example.com", ACTIVITY)

    async def decide() -> None:
        async with server.client() as client:
            await asyncio.gather(*(client.update(p, change) for p in presentities))

    asyncio.run(decide())
    assert len(server.documents) == len(presentities)
    # Every change was made before any document was written: not one after the other.
    assert puts_when_changed == [0, 0, 0]


def run_update(
    server: FakeXcapServer, change: Callable[[PresRules], PresRules],
    handle: Handler | None = None,
) -> PresRules:
    """Update alice's document through a new client (its requests answered by
    ``handle``, else the server's); what the server then holds."""

    async def update() -> PresRules:
        async with serving(handle or server.handle) as client:
            await client.update(ALICE, change)
            return (await client.get(ALICE)).rules

    return asyncio.run(update())


def test_a_busy_answer_starts_the_update_over_from_a_fresh_read() -> None:
    server = FakeXcapServer(busy=lambda n: n == 1)
    reads: list[PresRules] = []

    def change(rules: PresRules) -> PresRules:
        reads.append(rules)
        return rules.set_handling("sip:w@example.com", SubHandling.BLOCK)

    rule = run_update(server, change).rule_for("sip:w@example.com")
    assert rule is not None and rule.sub_handling is SubHandling.BLOCK
    assert (len(reads), server.puts) == (2, 2)


def test_a_server_busy_every_time_is_an_error_after_the_last_attempt() -> None:
    server = FakeXcapServer(busy=lambda n: True)
    with pytest.raises(XcapError) as caught:
        run_update(server, lambda r: r.allow("sip:w@example.com", ACTIVITY))
    assert caught.value.status == 500
    assert server.puts == xcap.MAX_ATTEMPTS


def test_a_refusal_is_not_tried_again() -> None:
    server = FakeXcapServer()

    async def forbidden(request: web.Request) -> web.Response:
        if request.method == "PUT":
            server.puts += 1
            return web.Response(status=403, text="Forbidden")
        return await server.handle(request)

    with pytest.raises(XcapError) as caught:
        run_update(server, lambda r: r.allow("sip:w@example.com", ACTIVITY), forbidden)
    assert (caught.value.status, server.puts) == (403, 1)


def test_at_most_connections_requests_are_under_way_and_the_others_wait_their_turn() -> None:
    under_way = 0
    most = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal under_way, most
        under_way += 1
        most = max(most, under_way)
        await asyncio.sleep(0.01)
        under_way -= 1
        return web.Response(status=404)

    async def burst() -> list[xcap.RulesDocument]:
        async with serving(handle) as client:
            return await asyncio.gather(
                *(client.get(f"sip:p{i}@example.com") for i in range(5 * xcap.CONNECTIONS)))

    documents = asyncio.run(burst())
    assert len(documents) == 5 * xcap.CONNECTIONS and all(d.etag is None for d in documents)
    assert most == xcap.CONNECTIONS


def test_a_request_that_waits_too_long_for_its_turn_is_a_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(xcap, "POOL_WAIT", 0.05)
    release = asyncio.Event()
    started = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal started
        started += 1
        await release.wait()
        return web.Response(status=404)

    async def crowd() -> None:
        async with serving(handle) as client:
            held = [asyncio.ensure_future(client.get(f"sip:p{i}@example.com"))
                    for i in range(xcap.CONNECTIONS)]
            async with asyncio.timeout(10):
                while started < xcap.CONNECTIONS:
                    await asyncio.sleep(0.001)
            with pytest.raises(xcap.XcapTimeout):
                await client.get(ALICE)
            release.set()
            await asyncio.gather(*held)
            await client.get(ALICE)  # its turn comes once the others are done

    asyncio.run(crowd())


def test_the_request_path_is_written_as_httpx_writes_it_over_a_real_socket() -> None:
    # The server stores a document under the path as sent (docs/kamailio.md):
    # documents written before must be found again, whatever the client.
    # Like Kamailio's xhttp, the server closes the connection after each reply.
    uris = ("sip:alice@example.com", "sip:a b@example.com", "sip:al%41ce@example.com",
            "sip:bob@example.com;transport=tcp", "sip:\u00e9@example.com")
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b" ")[1])
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = XcapClient(f"http://127.0.0.1:{port}/xcap-root")
        try:
            for uri in uris:
                document = await client.get(uri)
                assert document.etag is None and document.rules == PresRules()
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert seen == [httpx.URL(f"http://h/xcap-root/pres-rules/users/{uri}/index").raw_path
                    for uri in uris]
