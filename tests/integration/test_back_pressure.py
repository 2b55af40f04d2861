"""Back-pressure end to end: a full SIP window answers REST callers 503 with Retry-After.

One adapter process (``presence-adapter serve``) with a window of one SIP
transaction and a queue of one REST call's request (``[sip] window = 1``,
``window_queue = 1``), in front of the session's Kamailio through a UDP relay
of this test's.  The relay forwards everything unchanged except the requests
for one presentity, ``slow``, which it holds until told to let them go: that
keeps the window's one transaction in flight for as long as the test needs,
with nothing else about the server changed.  Kamailio's NOTIFYs go straight
to the adapter (its Contact), not through the relay.
"""

from __future__ import annotations

import asyncio
import base64
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.adapter_process import AdapterProcess, AppAccount
from tests.integration.conftest import AdapterFactory
from tests.presence_server import PresenceServer
from tests.rawsip import new_token

pytestmark = pytest.mark.integration

RUN = new_token()[:8]
PASSWORD = "secret"
APP = "busy-app"
REQUEST_TIMEOUT = 10  # [sip] request_timeout: a REST call's request waits at most half
WAIT = 30.0  # seconds: generous bound on conditions that come within milliseconds


def address(name: str) -> str:
    return f"sip:{name}-{RUN}@example.com"


SLOW, WATCHER, FIRST, SECOND = (address(n) for n in ("slow", "watcher", "first", "second"))


class HoldingRelay:
    """A UDP relay that holds the requests whose request line names ``held``."""

    def __init__(self, server: tuple[str, int], held: str) -> None:
        self.server = server
        self.held = held.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.holding: list[bytes] = []
        self._lock = threading.Lock()
        self._release = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            ready, _, _ = select.select([self.sock], [], [], 0.1)
            if not ready:
                continue
            data, addr = self.sock.recvfrom(65536)
            if addr == self.server:
                if self.client is not None:
                    self.sock.sendto(data, self.client)
                continue
            self.client = addr
            with self._lock:
                if not self._release and self.held in data[: data.find(b"\r\n")]:
                    self.holding.append(data)
                    continue
            self.sock.sendto(data, self.server)

    def release(self) -> None:
        with self._lock:
            self._release = True
            for data in self.holding:
                self.sock.sendto(data, self.server)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def relay(presence_server: PresenceServer) -> Iterator[HoldingRelay]:
    held = HoldingRelay((presence_server.host, presence_server.port), SLOW.removeprefix("sip:"))
    yield held
    held.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.05)


def metric(adapter: AdapterProcess, name: str) -> float:
    text = httpx.get(f"{adapter.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def subscribe(http: httpx.AsyncClient, presentity: str) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(http.post("/rest/presence/subscription", json={
        "application": "back-pressure test",
        "presentity": presentity,
        "attributes": ["Activity"],
        "reference": {"correlator": f"c-{new_token()[:8]}", "endpoint": f"/bayeux/{APP}/s",
                      "interfaceName": "test"},
    }))


def publish(http: httpx.AsyncClient) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(http.post("/rest/presence", json={"presence": [
        {"typeAndValue": {"unionElement": "Activity", "activity": "Busy"}}]}))


def busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(REQUEST_TIMEOUT // 2)
    fault = response.json()["requestError"]["serviceException"]
    assert fault["messageId"] == "SVC0001"
    assert fault["variables"] == ["presence server: too many requests outstanding, retry later"]


def test_a_full_window_answers_503_with_retry_after_and_then_serves_again(
    adapter_factory: AdapterFactory, relay: HoldingRelay
) -> None:
    adapter = adapter_factory(
        [AppAccount(APP, PASSWORD, (WATCHER, FIRST, SECOND))],
        sip_server=f"sip:127.0.0.1:{relay.port}",
        # No probes: the canary subscription would take the window's one place.
        settings={"sip": {"window": 1, "window_queue": 1, "keepalive": 0,
                          "request_timeout": REQUEST_TIMEOUT}},
    )
    waiting = "presence_adapter_sip_requests_waiting"

    async def scenario() -> None:
        async with adapter.async_client(APP, WATCHER, timeout=60) as watcher, \
                adapter.async_client(APP, FIRST, timeout=60) as first, \
                adapter.async_client(APP, SECOND, timeout=60) as second:
            # The SUBSCRIBE to the slow presentity fills the window.
            slow = subscribe(watcher, SLOW)
            await asyncio.to_thread(wait_for, lambda: bool(relay.holding), "SUBSCRIBE held")
            # A Publish's PUBLISH takes the queue's one place...
            queued = publish(first)
            await asyncio.to_thread(
                wait_for, lambda: metric(adapter, waiting) == 1, "PUBLISH queued")
            # ...so another call finds no room: 503 at once, nothing sent for it.
            busy(await publish(second))
            assert not queued.done()
            # The queued one waits half of request_timeout, then is refused too.
            busy(await queued)
            # The server answers again: the held SUBSCRIBE goes on, and so do calls.
            # (The two publications refused kept their state and retry by themselves
            # meanwhile, as after a 502 or 504: their retries wait in the window too.)
            relay.release()
            assert (await slow).status_code == 204
            assert (await publish(second)).status_code == 204
            assert (await publish(first)).status_code == 204
            await asyncio.to_thread(
                wait_for, lambda: metric(adapter, waiting) == 0, "nothing left waiting")

    asyncio.run(scenario())
    refused = metric(adapter, 'presence_adapter_sip_client_transactions_total'
                     '{method="PUBLISH",status="busy"}')
    assert refused == 2


def raw_subscribe(adapter: AdapterProcess) -> bytes:
    """Subscribe Presence (WATCHER to FIRST) as the bytes of one keep-alive HTTP/1.1 request."""
    body = json.dumps({
        "application": "back-pressure test", "presentity": FIRST, "attributes": ["Activity"],
        "reference": {"correlator": "c-raw", "endpoint": f"/bayeux/{APP}/s",
                      "interfaceName": "test"},
    }).encode()
    token = base64.b64encode(f"{APP}:{PASSWORD}".encode()).decode()
    return (
        f"POST /rest/presence/subscription HTTP/1.1\r\n"
        f"Host: {adapter.host}:{adapter.http_port}\r\n"
        f"Authorization: Basic {token}\r\nX-Presence-Identity: {WATCHER}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 answer's status and headers (its body read and dropped)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1")
    lines = head.split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


def test_a_caller_that_waits_its_retry_after_finds_its_connection_still_open(
    adapter_factory: AdapterFactory, relay: HoldingRelay
) -> None:
    # A client told 503 with Retry-After that waits as told and sends again on
    # the same keep-alive connection must get an answer: were the connection
    # closed for idleness just then, the POST would be lost without one.
    adapter = adapter_factory(
        [AppAccount(APP, PASSWORD, (WATCHER, FIRST))],
        sip_server=f"sip:127.0.0.1:{relay.port}",
        settings={"sip": {"window": 1, "window_queue": 0, "keepalive": 0,
                          "request_timeout": REQUEST_TIMEOUT}},
    )

    async def scenario() -> None:
        async with adapter.async_client(APP, WATCHER, timeout=60) as watcher:
            slow = subscribe(watcher, SLOW)  # holds the window's one place
            await asyncio.to_thread(wait_for, lambda: bool(relay.holding), "SUBSCRIBE held")
            reader, writer = await asyncio.open_connection(adapter.host, adapter.http_port)
            try:
                writer.write(raw_subscribe(adapter))
                status, headers = await answer(reader)
                assert status == 503
                await asyncio.sleep(float(headers["retry-after"]) + 0.5)
                writer.write(raw_subscribe(adapter))
                status, _ = await answer(reader)  # on the same connection
                assert status == 503  # the window is still held: refused again, but answered
            finally:
                writer.close()
            relay.release()
            assert (await slow).status_code == 204

    asyncio.run(scenario())
