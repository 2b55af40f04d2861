"""Bayeux fan-out benchmark: the adapter's Bayeux server vs Faye's NodeAdapter.

    .venv/bin/python bench/bayeux_fanout.py            # the whole table (~2 min)
    .venv/bin/python bench/bayeux_fanout.py --quick    # smaller numbers

Both servers run on this machine in the same run, on free loopback ports, and
are driven by the same load clients (Faye's Node client, see
bayeux_fanout_clients.cjs) and the same publish schedule, issued from inside
each server (`Hub.deliver` here, `bayeux.getClient().publish` in Faye).
Scenarios: N clients on one channel, and many channels with one client each;
long-polling and WebSocket; a burst (everything at once) and paced (a fixed
rate). Reported: delivered msg/s, p50/p99 latency (publish to client
callback, ms), lost and duplicated messages, and the adapter/Faye ratio.
Needs node and tests/interop/node_modules (scripts/setup installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


# ------------------------------------------------------------ adapter server


def serve() -> None:
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from adapter.bayeux import BayeuxLimits, Hub, bayeux_routes

    hub = Hub(
        lambda user, password: "bench" if (user, password) == ("bench", "bench") else None,
        BayeuxLimits(max_sessions_per_app=5000, queue_size=10_000),
    )

    async def publish_all(channels: list[str], per_channel: int, rate: float) -> None:
        total = len(channels) * per_channel
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        while sent < total:
            due = total if not rate else min(total, int((loop.time() - started) * rate) + 1)
            while sent < due:
                channel = channels[sent % len(channels)]
                data = {"seq": sent // len(channels), "t": time.time() * 1000}
                hub.deliver("bench", channel, data)
                sent += 1
            if sent < total:
                await asyncio.sleep(0.002)

    tasks: set[asyncio.Task[None]] = set()

    async def publish(request: Request) -> JSONResponse:
        body = await request.json()
        task = asyncio.create_task(
            publish_all(body["channels"], body["per_channel"], body.get("rate") or 0)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return JSONResponse({}, status_code=202)

    app = Starlette(
        routes=[*bayeux_routes(hub), Route("/bench/publish", publish, methods=["POST"])]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, ws="websockets-sansio", lifespan="off", log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


# ------------------------------------------------------------------- driver


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    channels: int
    per_channel: int
    rate: float  # messages/s over all channels; 0 = burst

    @property
    def expected_per_client(self) -> int:
        return self.per_channel


def scenarios(quick: bool) -> list[Scenario]:
    scale = 5 if quick else 1
    return [
        Scenario("100 clients x 1 channel, burst", 100, 1, 200 // scale, 0),
        Scenario("100 clients x 1 channel, paced 50/s", 100, 1, 150 // scale, 50),
        Scenario("1000 channels x 1 client, burst", 1000, 1000, 10 // scale, 0),
        Scenario("1000 channels x 1 client, paced 1000/s", 1000, 1000, 3, 1000 / scale),
    ]


def start(command: list[str]) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"{command[0]} did not start: {line!r}")
    return process, int(line.split()[1])


def run_scenario(port: int, transport: str, scenario: Scenario) -> dict[str, float | None]:
    deadline = 60
    clients = subprocess.Popen(
        [
            "node",
            str(HERE / "bayeux_fanout_clients.cjs"),
            f"http://127.0.0.1:{port}/cometd",
            transport,
            str(scenario.clients),
            str(scenario.channels),
            str(scenario.expected_per_client),
            str(deadline),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdout is not None
    try:
        ready = clients.stdout.readline().strip()
        if ready != "READY":
            raise RuntimeError(f"load clients failed: {ready!r}")
        channels = [f"/bayeux/bench/c{i}" for i in range(scenario.channels)]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/bench/publish",
            data=json.dumps(
                {"channels": channels, "per_channel": scenario.per_channel, "rate": scenario.rate}
            ).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        result: dict[str, float | None] = json.loads(clients.stdout.readline())
        clients.wait(timeout=10)
        return result
    finally:
        if clients.poll() is None:
            clients.kill()
            clients.wait()


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.mode == "serve":
        serve()
        return

    servers = {
        "adapter": start([sys.executable, str(Path(__file__).resolve()), "serve"]),
        "faye": start(["node", str(HERE / "bayeux_fanout_faye.cjs")]),
    }
    header = (
        "| scenario | transport | server | msg/s | p50 ms | p99 ms | lost | dup | "
        "msg/s ratio adapter/faye |"
    )
    print(header)
    print("|" + "---|" * 9)
    try:
        for scenario in scenarios(args.quick):
            for transport in ("long-polling", "websocket"):
                rows = {
                    name: run_scenario(port, transport, scenario)
                    for name, (_, port) in servers.items()
                }
                a, f = rows["adapter"]["rate"], rows["faye"]["rate"]
                ratio = f"{a / f:.2f}" if a and f else "-"
                for name, row in rows.items():
                    print(
                        f"| {scenario.name} | {transport} | {name} | {fmt(row['rate'])} | "
                        f"{fmt(row['p50'])} | {fmt(row['p99'])} | {fmt(row['lost'])} | "
                        f"{fmt(row['duplicates'])} | {ratio if name == 'adapter' else ''} |",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
