"""sd_notify: the datagram systemd reads, and nothing without $NOTIFY_SOCKET."""

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from adapter.shutdown import AdapterServer, Drain, sd_notify


def test_nothing_is_sent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False


def test_ready_reaches_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sd_notify("READY=1") is True
        assert systemd.recv(100) == b"READY=1"


def test_an_abstract_socket_name_starts_with_at(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"presence-adapter-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("STOPPING=1") is True
        assert systemd.recv(100) == b"STOPPING=1"


def test_a_socket_that_is_gone_is_a_warning_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert sd_notify("READY=1") is False


# -- AdapterServer's main loop ---------------------------------------------------


async def _empty_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


class _CountingServer(AdapterServer):
    def __init__(self, tick: float) -> None:
        config = uvicorn.Config(_empty_app, host="127.0.0.1", port=0, log_config=None,
                                lifespan="on")
        super().__init__(config, Drain())
        self.TICK = tick
        self.counters: list[int] = []
        self.serving = asyncio.Event()

    async def on_tick(self, counter: int) -> bool:
        self.counters.append(counter)
        self.serving.set()
        return await super().on_tick(counter)


async def _stop_when_serving(server: _CountingServer, after: int = 1) -> None:
    while len(server.counters) < after:
        await server.serving.wait()
        server.serving.clear()
    server.should_exit = True


async def _serve_until(server: _CountingServer, ticks: int) -> None:
    stopper = asyncio.create_task(_stop_when_serving(server, ticks))
    await server.serve()
    await stopper


def test_should_exit_wakes_the_main_loop_at_once() -> None:
    # No tick within the test's life: only the wake-up can end the loop.
    server = _CountingServer(tick=3600.0)
    asyncio.run(_serve_until(server, 1))
    assert server.counters == [0, 10]  # the first tick, then the one that saw the stop


def test_every_tick_renews_the_date_header() -> None:
    server = _CountingServer(tick=0.001)
    asyncio.run(_serve_until(server, 4))
    assert len(server.counters) >= 4
    # on_tick renews Date on multiples of 10: every tick of this loop does.
    assert all(counter % 10 == 0 for counter in server.counters)
    headers = dict(server.server_state.default_headers)
    assert headers[b"date"].endswith(b" GMT")
