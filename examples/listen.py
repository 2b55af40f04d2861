"""Prints the notifications an application receives, one JSON line each.

aiocometd-ng (the Python Bayeux client) on the application's channels
``/bayeux/<id>/**``::

    .venv/bin/pip install aiocometd-ng==0.5.6     # once
    .venv/bin/python examples/listen.py http://127.0.0.1:8080/cometd bob-app bob-secret

Ctrl-C stops it.
"""

import asyncio
import base64
import json
import sys

from aiocometd_ng import Client
from aiocometd_ng.extensions import AuthExtension


class BasicAuth(AuthExtension):
    """The account's id and password as HTTP Basic, which the adapter reads on the handshake."""

    def __init__(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.header = f"Basic {token}"

    async def outgoing(self, payload, headers) -> None:
        headers["Authorization"] = self.header

    async def incoming(self, payload, headers=None) -> None:
        pass

    async def authenticate(self) -> None:
        pass


async def listen(url: str, user: str, password: str) -> None:
    async with Client(url, auth=BasicAuth(user, password)) as client:
        await client.subscribe(f"/bayeux/{user}/**")
        print(f"listening on /bayeux/{user}/**", file=sys.stderr, flush=True)
        async for message in client:
            print(json.dumps({"channel": message["channel"], "data": message["data"]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python examples/listen.py URL APPLICATION PASSWORD")
    try:
        asyncio.run(listen(*sys.argv[1:]))
    except KeyboardInterrupt:
        pass
