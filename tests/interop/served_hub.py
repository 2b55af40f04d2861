"""A real HTTP/WebSocket server hosting the Bayeux hub, for tests driving real clients.

Runs uvicorn in a thread on a loopback port chosen by the OS, with control
routes the client scripts call to make the adapter publish (`/control/deliver`)
or forget an application's sessions (`/control/forget`).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapter.bayeux import BayeuxLimits, Hub, bayeux_routes

HERE = Path(__file__).parent
ACCOUNTS = {"app-a": "secret-a", "app-b": "secret-b"}


def authenticate(user: str, password: str) -> str | None:
    return user if ACCOUNTS.get(user) == password else None


def control_routes(hub: Hub) -> list[Route]:
    async def deliver(request: Request) -> JSONResponse:
        body = await request.json()
        reached = [
            hub.deliver(body["app"], body["channel"], {"seq": seq, **body.get("data", {})})
            for seq in range(body.get("count", 1))
        ]
        return JSONResponse({"reached": reached})

    async def forget(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"closed": hub.close_application(body["app"])})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(vars(hub.counters) | {"sessions": hub.server.session_count()})

    return [
        Route("/control/deliver", deliver, methods=["POST"]),
        Route("/control/forget", forget, methods=["POST"]),
        Route("/control/stats", stats),
    ]


class ServedHub:
    """uvicorn serving `bayeux_routes(hub)` (plus control routes) on 127.0.0.1:<free port>."""

    def __init__(
        self,
        limits: BayeuxLimits | None = None,
        authenticator: Callable[[str, str], str | None] = authenticate,
    ) -> None:
        self.hub = Hub(authenticator, limits)
        app = Starlette(routes=[*bayeux_routes(self.hub), *control_routes(self.hub)])
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            ws="websockets-sansio",
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cometd"

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self.hub.close()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the server's loop (the hub is not thread-safe)."""
        assert self._loop is not None

        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=5)

    def __enter__(self) -> ServedHub:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Bayeux test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


def node_available() -> bool:
    return shutil.which("node") is not None and (HERE / "node_modules").is_dir()


def run_node(script: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(HERE / script), *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
