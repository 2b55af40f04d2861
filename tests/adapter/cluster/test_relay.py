"""Bayeux messages between nodes (adapter/cluster/relay.py) against a real Redis.

Each "node" here is what a cluster node runs for Bayeux — a shared Hub, a Bus
and a Relay — in this process; several of them on one private Redis are
several nodes.  Sessions are driven through the hub as the transports drive
it, with the ack extension unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as redis

from adapter.bayeux import BayeuxLimits, Hub, Message
from adapter.cluster import relay as relay_module
from adapter.cluster.bus import Bus
from adapter.cluster.relay import Relay
from tests.redis_server import RedisServer

#: Generous: the machine is shared; nothing here waits this long when it works.
WAIT = 20.0

_node_names = itertools.count(1)


def authenticate(user: str, password: str) -> str | None:
    return user if password == "pw" else None


class Node:
    def __init__(self, url: str, name: str, limits: BayeuxLimits) -> None:
        self.name = name
        self.bus = Bus(url, name, maxlen=limits.backlog_size)
        self.hub = Hub(
            authenticate,
            limits,
            shared=True,
            new_client_id=lambda: f"{name}.{uuid.uuid4().hex}",
        )
        self.relay = Relay(self.bus, self.hub, ttl=limits.backlog_ttl)

    async def close(self) -> None:
        self.hub.close()
        await self.relay.close()


@asynccontextmanager
async def nodes(
    url: str, count: int = 2, limits: BayeuxLimits | None = None
) -> AsyncIterator[list[Node]]:
    made = [
        Node(url, f"n{next(_node_names)}-{uuid.uuid4().hex[:6]}", limits or BayeuxLimits())
        for _ in range(count)
    ]
    for node in made:
        node.relay.start()
    try:
        yield made
    finally:
        for node in made:
            await node.close()


class Client:
    """A Bayeux client of one application on one node, as its transport drives the hub."""

    def __init__(self, node: Node, app_id: str, *, ack: bool = True) -> None:
        self.hub = node.hub
        self.app_id = app_id
        self.ack = ack
        self.batch = 0
        self.client_id = ""

    def open(self, subscription: str | None = None) -> list[Any]:
        """Handshake, subscribe and the first connect; the data that first connect carried."""
        ext = {"ack": True} if self.ack else None
        (reply,) = self.hub.receive(
            [Message("/meta/handshake", ext=ext)],
            transport="long-polling",
            credentials=(self.app_id, "pw"),
        ).replies
        assert reply["successful"], reply
        self.client_id = reply["clientId"]
        (reply,) = self.hub.receive(
            [
                Message(
                    "/meta/subscribe",
                    client_id=self.client_id,
                    subscription=subscription or f"/bayeux/{self.app_id}/**",
                )
            ],
            transport="long-polling",
        ).replies
        assert reply["successful"], reply
        return self._take(self.hub.receive([self._connect(0)], transport="long-polling").replies)

    def _connect(self, timeout: int | None = None) -> Message:
        return Message(
            "/meta/connect",
            client_id=self.client_id,
            connection_type="long-polling",
            ext={"ack": self.batch} if self.ack else None,
            advice=None if timeout is None else {"timeout": timeout},
        )

    def _take(self, replies: list[Any]) -> list[Any]:
        data = [r["data"] for r in replies if r["channel"] != "/meta/connect"]
        (connect,) = [r for r in replies if r["channel"] == "/meta/connect"]
        assert connect["successful"], connect
        if self.ack:
            self.batch = connect["ext"]["ack"]
        return data

    async def poll(self) -> list[Any]:
        """One /meta/connect (acknowledging the last batch): the data it brings."""
        received = self.hub.receive([self._connect()], transport="long-polling")
        replies = list(received.replies)
        if received.held is not None:
            replies += await self.hub.wait(received.held)
        return self._take(replies)

    async def until(self, count: int) -> list[Any]:
        """Poll until `count` messages came; all of them, in order."""
        data: list[Any] = []
        async with asyncio.timeout(WAIT):
            while len(data) < count:
                data += await self.poll()
        return data

    def acknowledge(self) -> None:
        """A /meta/connect that acknowledges the last batch, its answer not awaited
        (nothing more is coming: it would be held until the connect timeout)."""
        received = self.hub.receive([self._connect()], transport="long-polling")
        assert received.held is not None, received

    def leave(self) -> None:
        """The session ends without confirming anything (a client that went away)."""
        assert self.hub.close_application(self.app_id) >= 1


def app() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def session_on(node: Node, *, ack: bool = True) -> Client:
    """A session of a new application on `node`, subscribed to all its channels."""
    client = Client(node, app(), ack=ack)
    assert client.open() == []
    return client


def send(node: Node, app_id: str, data: Any) -> None:
    """`node` makes a message for `app_id`, as its watcher service would."""
    node.relay.deliver(app_id, f"/bayeux/{app_id}/n", data)


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which it may restart."""
    with RedisServer() as server:
        yield server


def test_a_message_made_on_one_node_reaches_the_session_on_the_other(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[Any]:
        async with nodes(redis_server.url) as (a, b):
            client = session_on(b)
            app_id = client.app_id
            send(a, app_id, {"n": 1})
            return await client.until(1)

    assert run(scenario()) == [{"n": 1}]


def test_messages_from_one_node_arrive_in_order_across_batches(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[Any]:
        async with nodes(redis_server.url) as (a, b):
            client = session_on(b)
            app_id = client.app_id
            for n in range(600):  # more than two of the writer's batches
                send(a, app_id, n)
            return await client.until(600)

    assert run(scenario()) == list(range(600))


def test_message_ids_are_unique_and_ordered_across_producing_nodes(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[str]:
        async with nodes(redis_server.url, 3) as (a, b, c):
            client = session_on(c)
            app_id = client.app_id
            ids: list[str] = []
            for n in range(50):
                (a if n % 2 else b).relay.deliver(app_id, f"/bayeux/{app_id}/n", n)
                if n % 10 == 9:
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(WAIT):
                while len(ids) < 50:
                    received = c.hub.receive([client._connect()], transport="long-polling")
                    replies = list(received.replies)
                    if received.held is not None:
                        replies += await c.hub.wait(received.held)
                    ids += [r["id"] for r in replies if r["channel"] != "/meta/connect"]
                    client._take(replies)
            return ids

    ids = run(scenario())
    order = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert len(set(ids)) == 50
    assert order == sorted(order)


def test_the_backlog_of_an_application_without_a_session_is_shared_by_the_nodes(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        async with nodes(redis_server.url) as (a, b):
            app_id = app()
            for n in range(5):
                send(a, app_id, n)
            await until_stream_length(redis_server.url, app_id, 5)
            first = Client(b, app_id)
            got = first.open()
            got += await first.until(5 - len(got))
            first.acknowledge()  # the messages are done
            await until_stream_length(redis_server.url, app_id, 0)
            first.leave()
            send(a, app_id, 5)
            await until_stream_length(redis_server.url, app_id, 1)
            # The application comes back on the node that made the messages.
            second = Client(a, app_id)
            again = second.open()
            again += await second.until(1 - len(again))
            second.acknowledge()
            await until_stream_length(redis_server.url, app_id, 0)
            return got, again, second_queue(second)

    got, again, rest = run(scenario())
    assert got == [0, 1, 2, 3, 4]
    assert again == [5]
    assert rest == []


def second_queue(client: Client) -> list[str]:
    """What the client's session holds: nothing, once it acknowledged everything."""
    return sorted(client.hub.server.queued_ids(client.app_id))


async def until_stream_length(url: str, app_id: str, length: int) -> None:
    client = redis.Redis.from_url(url)
    try:
        async with asyncio.timeout(WAIT):
            while await client.xlen(Bus.stream(app_id)) != length:
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


def test_what_a_session_did_not_acknowledge_goes_to_the_next_session_on_another_node(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        async with nodes(redis_server.url) as (a, b):
            app_id = app()
            gone = Client(b, app_id)
            gone.open()
            for n in range(3):
                send(a, app_id, n)
            sent = await gone.until(3)  # sent, never acknowledged
            gone.leave()
            send(a, app_id, 3)
            back = Client(a, app_id)
            got = back.open()
            got += await back.until(4 - len(got))
            return sent, got

    sent, got = run(scenario())
    assert sent == [0, 1, 2]
    assert got == [0, 1, 2, 3]


def test_without_the_ack_extension_a_message_sent_is_done(redis_server: RedisServer) -> None:
    async def scenario() -> int:
        async with nodes(redis_server.url) as (a, b):
            client = session_on(b, ack=False)
            app_id = client.app_id
            send(a, app_id, 1)
            assert await client.until(1) == [1]
            await until_stream_length(redis_server.url, app_id, 0)
            return 0

    assert run(scenario()) == 0


def test_a_session_gets_from_the_backlog_only_the_channels_it_subscribes_to(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        async with nodes(redis_server.url) as (a, b):
            app_id = app()
            a.relay.deliver(app_id, f"/bayeux/{app_id}/x", "x1")
            a.relay.deliver(app_id, f"/bayeux/{app_id}/y", "y1")
            a.relay.deliver(app_id, f"/bayeux/{app_id}/x", "x2")
            await until_stream_length(redis_server.url, app_id, 3)
            xs = Client(b, app_id)
            got = xs.open(f"/bayeux/{app_id}/x")
            got += await xs.until(2 - len(got))
            xs.acknowledge()
            # Only the x messages are done; y waits for a session that wants it.
            await until_stream_length(redis_server.url, app_id, 1)
            xs.leave()
            ys = Client(a, app_id)
            later = ys.open(f"/bayeux/{app_id}/y")
            later += await ys.until(1 - len(later))
            return got, later

    got, later = run(scenario())
    assert got == ["x1", "x2"]
    assert later == ["y1"]


def test_an_application_stream_is_bounded_by_the_backlog_size(redis_server: RedisServer) -> None:
    async def scenario() -> int:
        limits = BayeuxLimits(backlog_size=20)
        async with nodes(redis_server.url, 1, limits) as (a,):
            app_id = app()
            for n in range(1000):
                send(a, app_id, n)
            client = redis.Redis.from_url(redis_server.url)
            try:
                async with asyncio.timeout(WAIT):
                    while a.relay._outbox:
                        await asyncio.sleep(0.02)
                # The newest is kept: the trim drops from the oldest end.
                (last,) = await client.xrevrange(Bus.stream(app_id), count=1)
                assert last[1][b"d"] == b"999"
                return int(await client.xlen(Bus.stream(app_id)))
            finally:
                await client.aclose()

    # MAXLEN ~: Redis trims whole nodes of the stream (100 entries each by default).
    assert 20 <= run(scenario()) <= 20 + 100


def test_after_a_redis_restart_delivery_resumes_and_nothing_is_lost(
    own_redis: RedisServer,
) -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        async with nodes(own_redis.url) as (a, b):
            live, absent = app(), app()
            client = Client(b, live)
            client.open()
            send(a, live, "before")
            got = await client.until(1)
            # Kept for an application with no session: its backlog, in Redis only.
            send(a, absent, "kept")
            await until_stream_length(own_redis.url, absent, 1)
            # Received by the session, not yet acknowledged.
            send(a, live, "unacked")
            got += await client.until(1)
            await asyncio.to_thread(own_redis.restart)
            # Made while Redis restarts, or right after.
            send(a, live, "after")
            got += await client.until(1)
            later = Client(b, absent)
            kept = later.open()
            kept += await later.until(1 - len(kept))
            return got, kept

    got, kept = run(scenario())
    assert got == ["before", "unacked", "after"]
    assert kept == ["kept"]


def test_messages_made_while_redis_is_down_are_delivered_once_it_is_back(
    own_redis: RedisServer,
) -> None:
    async def scenario() -> list[Any]:
        async with nodes(own_redis.url) as (a, b):
            client = session_on(b)
            app_id = client.app_id
            send(a, app_id, 0)
            got = await client.until(1)
            await asyncio.to_thread(own_redis.stop)
            for n in range(1, 4):
                send(a, app_id, n)
            async with asyncio.timeout(WAIT):  # the producer meets the closed port
                while a.relay.connected:
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(own_redis.start)
            got += await client.until(3)
            return got

    assert run(scenario()) == [0, 1, 2, 3]


async def inbox_messages(url: str, node: Node) -> list[str]:
    """The applications of the messages in `node`'s inbox (wakes left out)."""
    async with redis.Redis.from_url(url, decode_responses=True) as client:
        items = await client.xrange(f"pa:inbox:{node.name}")
    return [fields["a"] for _id, fields in items if "a" in fields]


async def registered(url: str, node: Node, app_id: str) -> None:
    """Until `node` reads for `app_id` (its session's fetch done)."""
    async with redis.Redis.from_url(url) as client, asyncio.timeout(WAIT):
        while not await client.sismember(f"pa:where:{app_id}", node.name):
            await asyncio.sleep(0.01)


def test_a_message_for_a_session_on_its_own_node_is_handed_without_a_read(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Added to the stream (the shared backlog) but not to the inbox: the node's
    writer hands it; a message from the other node comes through the inbox."""
    monkeypatch.setattr(relay_module, "BEAT_INTERVAL", 3600.0)  # no trim of the inbox

    async def scenario() -> tuple[list[Any], list[str], int]:
        async with nodes(redis_server.url) as (a, b):
            client = session_on(a)
            app_id = client.app_id
            await registered(redis_server.url, a, app_id)
            send(a, app_id, {"n": 1})
            send(b, app_id, {"n": 2})
            send(a, app_id, {"n": 3})
            data = await client.until(3)
            async with redis.Redis.from_url(redis_server.url) as plain:
                length = await plain.xlen(f"pa:bayeux:{app_id}")
            return data, await inbox_messages(redis_server.url, a), length

    data, inbox, length = run(scenario())
    assert sorted(data, key=lambda d: d["n"]) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert data.index({"n": 1}) < data.index({"n": 3})  # one producer: its order
    assert len(inbox) == 1  # node b's message only
    assert length == 3  # all three in the stream until confirmed


def test_producers_leave_out_a_node_that_stopped_reading(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that dies stays in pa:where; once its pa:reading mark lapses,
    producers take it out and its inbox no longer grows."""
    monkeypatch.setattr(relay_module, "READING_TTL", 1.0)
    monkeypatch.setattr(relay_module, "BEAT_INTERVAL", 0.05)  # the live ones keep theirs

    async def scenario() -> tuple[bool, bool, list[Any]]:
        async with nodes(redis_server.url, count=3) as (a, b, c):
            client = session_on(a)
            app_id = client.app_id
            other = Client(c, app_id)
            assert other.open() == []
            await registered(redis_server.url, a, app_id)
            await registered(redis_server.url, c, app_id)
            await a.relay.close()  # dead: it reads no more, nothing taken out
            async with redis.Redis.from_url(redis_server.url, decode_responses=True) as plain:
                before = await plain.sismember(f"pa:where:{app_id}", a.name)
                while await plain.exists(f"pa:reading:{a.name}"):
                    await asyncio.sleep(0.05)
                send(b, app_id, {"n": 1})
                data = await other.until(1)  # the live node still gets it
                after = await plain.sismember(f"pa:where:{app_id}", a.name)
            return bool(before), bool(after), data

    before, after, data = run(scenario())
    assert before and not after
    assert data == [{"n": 1}]
