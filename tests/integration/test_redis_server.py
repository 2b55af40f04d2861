"""The private Redis the tests start (tests/redis_server.py), checked with a real client.

Only the fixture so far: nothing in the adapter uses Redis yet.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as redis

from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration


def test_the_session_redis_answers_commands_and_delivers_published_messages(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        client = redis.Redis.from_url(redis_server.url)
        try:
            assert await client.ping() is True
            await client.set("smoke", "value")
            assert await client.get("smoke") == b"value"
            pubsub = client.pubsub()
            await pubsub.subscribe("smoke-channel")
            assert await client.publish("smoke-channel", "hello") == 1
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is not None:
                    break
            assert message["channel"] == b"smoke-channel" and message["data"] == b"hello"
            await pubsub.aclose()
        finally:
            await client.delete("smoke")
            await client.aclose()

    asyncio.run(scenario())


def test_a_restart_keeps_the_port_and_nothing_else() -> None:
    # A server of the test's own: the session's is shared.
    with RedisServer() as server:
        port, directory = server.port, server.directory
        assert directory is not None

        async def write() -> None:
            client = redis.Redis.from_url(server.url)
            await client.set("kept?", "no")
            await client.aclose()

        async def read() -> bytes | None:
            client = redis.Redis.from_url(server.url)
            try:
                return await client.get("kept?")
            finally:
                await client.aclose()

        asyncio.run(write())
        server.restart()
        assert server.port == port
        assert asyncio.run(read()) is None
        # No persistence: neither a snapshot nor an append-only file was written.
        assert sorted(p.name for p in Path(directory).iterdir()) == ["redis.log"]
    assert not Path(directory).exists()
