"""Drives aiocometd-ng against the adapter's Bayeux server; prints one JSON line.

Run as a separate process by test_aiocometd.py: aiocometd-ng 0.5.6 leaves
un-awaited coroutines and uses deprecated aiohttp parameters on Python 3.11,
warnings that belong to the client library and would otherwise fail the
test run (filterwarnings=error). Usage:

    python aiocometd_client.py URL CONNECTION_TYPE USER PASSWORD SCENARIO

SCENARIO: receive (subscribe, ask the adapter to publish 3, collect them),
denied (subscribe to /bayeux/app-b/**), badcredentials (just handshake).
"""

import asyncio
import base64
import json
import sys
import urllib.request

from aiocometd_ng import Client, ConnectionType
from aiocometd_ng.exceptions import AiocometdException
from aiocometd_ng.extensions import AuthExtension


class BasicAuth(AuthExtension):
    """HTTP Basic on every request (the server reads it on the handshake)."""

    def __init__(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._header = f"Basic {token}"

    async def outgoing(self, payload, headers) -> None:
        headers["Authorization"] = self._header

    async def incoming(self, payload, headers=None) -> None:
        pass

    async def authenticate(self) -> None:
        pass


def control_deliver(base: str, app: str, channel: str, count: int) -> None:
    request = urllib.request.Request(
        base + "/control/deliver",
        data=json.dumps({"app": app, "channel": channel, "count": count}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


async def run(url: str, connection_type: str, user: str, password: str, scenario: str) -> dict:
    result: dict = {"received": [], "error": None}
    base = url.removesuffix("/cometd")
    channel = f"/bayeux/{user}/aio"
    kind = ConnectionType(connection_type)
    try:
        async with Client(url, kind, ssl=True, auth=BasicAuth(user, password)) as client:
            if scenario == "denied":
                await client.subscribe("/bayeux/app-b/**")
                return result
            await client.subscribe(channel)
            await asyncio.to_thread(control_deliver, base, user, channel, 3)
            for _ in range(3):
                message = await asyncio.wait_for(client.receive(), 10)
                result["received"].append(message)
    except AiocometdException as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(*sys.argv[1:6]))), flush=True)
