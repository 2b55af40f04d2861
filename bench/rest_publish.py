"""Publish throughput: REST Publish through the adapter vs raw SIP PUBLISH, same server.

    .venv/bin/python bench/rest_publish.py                  # about 70 s
    .venv/bin/python bench/rest_publish.py --sides raw,lean --duration 10 --rounds 2
    .venv/bin/python bench/rest_publish.py --duration 60 --rounds 6     # longer

One run starts a private PostgreSQL-backed presence server
(bench/pg_presence_server.py: its own cluster and Kamailio on free loopback
ports, 1 GB of shared memory) and one adapter process
(tests/adapter_process.py: ``presence-adapter serve`` with a generated
configuration, one account holding every address, UDP to that server, its
own store file), then drives the same server from three sides in turn, each
with ``--concurrency`` workers (32) over ``--presentities`` (1,000):

* ``raw`` — the baseline: bench/sip_publish.py's RawSender (one asyncio
  DatagramProtocol formatting PUBLISH text, answers matched by Via branch and
  Call-ID) straight to Kamailio, over presentities of its own, sending byte
  for byte the PIDF bodies the adapter builds for the same attributes
  (pidf.encode), so the server does the same work per request;
* ``httpx`` — the product end to end: httpx.AsyncClient per worker (one
  keep-alive connection each) POSTs Publish ``{"presence":[…]}`` to
  ``/rest/presence`` with HTTP Basic and ``X-Presence-Identity`` naming the
  worker's next address (round-robin); the adapter stores the publication,
  sends PUBLISH and answers 204 once the server took it;
* ``lean`` — the same requests through the same adapter from a minimal
  HTTP/1.1 client (prepared request bytes, answers read to the status line
  and Content-Length), the HTTP counterpart of the raw SIP sender.  httpx
  costs ~0.8 ms of CPU per request on this machine, more than the adapter
  itself; on two shared cores that load generator, not the adapter, sets
  the httpx row's pace.

Only 204 (adapter) or 2xx (raw) count.  Both states of a presentity
alternate (Activity Available / Busy, with a note), so every request after
its first is a modify with SIP-If-Match (RFC 3903 §4.4); each side's first
phase publishes every presentity once before its window opens.  Phases
alternate (raw, httpx, lean, raw, ...) to spread the noise of a shared
machine.  Printed: ok/s, the ratio to raw (target ≥ 0.8), p50/p99 latency,
errors by status, and the CPU each process tree used per 1,000 requests in
the measured windows (this script, the adapter, Kamailio, PostgreSQL).

``--adapter-log-level warning`` runs the adapter without its per-request
access log (info, the default, writes one line per request).

``--sides ...,floor`` adds the HTTP server's floor: uvicorn with the
adapter's settings (uvloop, httptools, no access log of its own) in a process
of its own, serving an empty ASGI app that reads the body and answers 204
after a pause — the lean side's p50 so far, or ``--floor-delay`` before it
ran, so that both go at about the same rate — driven by the same lean client
with the same request bytes.  Its CPU per request (in the adapter column) is
what HTTP costs before the adapter does anything.

``--reference DIR`` adds a fourth side, ``ref``: a second adapter process
run from the source tree DIR (an earlier revision, say ``git archive REV |
tar -x -C DIR``), driven by the lean client over presentities of its own, in
the same rounds — a before/after measured side by side::

    .venv/bin/python bench/rest_publish.py --reference /tmp/before --sides raw,ref,lean

``--reference-python PATH`` runs side ref on another interpreter (a venv's
python with the project installed); with ``--reference .`` the same code
on two interpreters.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for folder in (REPO, BENCH):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # tests.* and the sibling benchmarks

from pg_presence_server import PgPresenceServer, pg_presence_server  # noqa: E402
from sip_publish import RawPresentity, RawSender, Totals, Window, raw_visit  # noqa: E402

from adapter.presence_json import attributes_from_json  # noqa: E402
from pidf import encode  # noqa: E402
from tests.adapter_process import IDENTITY_HEADER, AdapterProcess, AppAccount  # noqa: E402

HOST = "127.0.0.1"
#: Longer than the adapter's own bound on a SIP outcome ([sip] request_timeout,
#: 10 s by default), so that its 504 arrives before the client gives up.
HTTP_TIMEOUT = 15.0
#: A window that has not opened by then (first pass unfinished) ends the run.
OPEN_TIMEOUT = 120.0
ACCOUNT = AppAccount("bench-app", "bench-secret", ("sip:placeholder@bench.example.com",))


def states(index: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The two REST Publish bodies' ``presence`` lists a presentity alternates."""
    note = f"bench presentity {index}"
    return (
        [{"typeAndValue": {"unionElement": "Activity", "activity": "Available"}, "note": note}],
        [{"typeAndValue": {"unionElement": "Activity", "activity": "Busy"}, "note": note}],
    )


def pidf_bodies(aor: str, index: int) -> tuple[bytes, bytes]:
    """What the adapter publishes for those states (pidf.encode), for the raw side."""
    now = datetime.now(UTC)
    first, second = states(index)
    return (
        encode(attributes_from_json(first), entity=aor, now=now),
        encode(attributes_from_json(second), entity=aor, now=now),
    )


def json_bodies(index: int) -> tuple[bytes, bytes]:
    """The two REST Publish request bodies of a presentity."""
    first, second = states(index)
    return (
        json.dumps({"presence": first}).encode(),
        json.dumps({"presence": second}).encode(),
    )


class RestWindow(Window):
    """A Window for HTTP answers: Publish succeeds with 204 and nothing else."""

    def http_outcome(self, status: int | None, now: float) -> None:
        self.tick(now)
        if self.opened is None or self.closed_at is not None:
            return
        if status == 204:
            self.ok += 1
        else:
            self.errors["timeout" if status is None else f"http {status}"] += 1


# ---------------------------------------------------------------- CPU accounting


def _ticks() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user+system clock ticks) for every process.

    A process's ticks include those of its children that ended and were
    reaped (cutime, cstime): PostgreSQL's backends of a closed connection
    still count in the postmaster's tree.  Not for this process, counted
    alone: the servers it reaps are counted under their own names.
    """
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if int(entry.name) != os.getpid():
            ticks += int(fields[13]) + int(fields[14])
        out[int(entry.name)] = (int(fields[1]), ticks)
    return out


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its descendants.

    This process is counted alone: the servers it started are its children
    and are counted under their own names.
    """
    table = _ticks()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, root in roots.items():
        total, stack = 0, [root]
        while stack:
            pid = stack.pop()
            total += table.get(pid, (0, 0))[1]
            if pid != os.getpid():
                stack.extend(children.get(pid, ()))
        out[name] = total / hz
    return out


@dataclass
class CpuMeter:
    """CPU used by the named process trees between a window's opening and closing."""

    roots: dict[str, int]
    used: Counter[str] = field(default_factory=Counter)
    _start: dict[str, float] | None = None

    def open(self) -> None:
        self._start = tree_cpu(self.roots)

    def close(self) -> None:
        if self._start is None:
            return
        end = tree_cpu(self.roots)
        for name, value in end.items():
            self.used[name] += value - self._start[name]
        self._start = None


async def run_window(window: Window, workers: list[Awaitable[None]], meter: CpuMeter) -> None:
    """Run the workers until the window closes (CPU metered inside it), then stop them."""
    tasks = [asyncio.ensure_future(worker) for worker in workers]
    try:
        opened = False
        while not window.closed:
            for task in tasks:
                if task.done():
                    task.result()  # a crashed worker ends the benchmark
            await asyncio.sleep(0.01)
            window.tick(time.perf_counter())
            if window.opened is None and time.perf_counter() - window.started > OPEN_TIMEOUT:
                raise RuntimeError(
                    f"the measured window did not open within {OPEN_TIMEOUT:g} s "
                    f"({window.first_pass_left} presentities never published)"
                )
            if window.opened is not None and not opened:
                opened = True
                meter.open()
        meter.close()
        await asyncio.wait(tasks, timeout=HTTP_TIMEOUT + 1)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------- the two sides


@dataclass
class Side:
    name: str
    totals: Totals = field(default_factory=Totals)
    first_pass_done: bool = False
    cpu: Counter[str] = field(default_factory=Counter)


async def raw_phase(
    server: tuple[str, int],
    presentities: list[RawPresentity],
    concurrency: int,
    window: Window,
    meter: CpuMeter,
) -> None:
    loop = asyncio.get_running_loop()
    transport, sender = await loop.create_datagram_endpoint(
        lambda: RawSender(server), local_addr=(HOST, 0)
    )

    async def worker(mine: list[RawPresentity]) -> None:
        for presentity in itertools.cycle(mine):
            if window.closed:
                return
            await raw_visit(sender, presentity, window)

    try:
        await run_window(
            window, [worker(presentities[w::concurrency]) for w in range(concurrency)], meter
        )
    finally:
        transport.close()


@dataclass
class RestPresentity:
    address: str
    bodies: tuple[bytes, bytes]  # the two JSON request bodies
    visits: int = 0


async def adapter_phase(
    adapter: AdapterProcess,
    presentities: list[RestPresentity],
    concurrency: int,
    window: RestWindow,
    meter: CpuMeter,
) -> None:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(
            base_url=adapter.url,
            auth=(ACCOUNT.id, ACCOUNT.password),
            timeout=HTTP_TIMEOUT,
            limits=limits,
            headers={"Content-Type": "application/json"},
        )
        for _ in range(concurrency)
    ]

    async def worker(client: httpx.AsyncClient, mine: list[RestPresentity]) -> None:
        for presentity in itertools.cycle(mine):
            if window.closed:
                return
            body = presentity.bodies[presentity.visits % 2]
            presentity.visits += 1
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/rest/presence",
                    content=body,
                    headers={IDENTITY_HEADER: presentity.address},
                )
                status: int | None = response.status_code
            except httpx.TimeoutException:
                status = None
            finished = time.perf_counter()
            if presentity.visits == 1:
                window.first_pass_left -= 1
            window.http_outcome(status, finished)
            window.latency(finished - started, finished)

    try:
        await run_window(
            window,
            [worker(clients[w], presentities[w::concurrency]) for w in range(concurrency)],
            meter,
        )
    finally:
        for client in clients:
            await client.aclose()


class LeanHttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared requests, one at a time.

    The load generator without a client library's cost: requests are bytes
    built once, answers are read as far as the status line and the
    Content-Length framing (RFC 9112 §6.3), nothing else.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: asyncio.Future[int] | None = None
        self.lost: Exception | None = None
        #: The last answer's Retry-After (seconds), None without one.
        self.retry_after: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("closed by the adapter")
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiting is None or self.waiting.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = 0
        retry_after = None
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "retry-after":
                retry_after = float(value)
            elif name.strip().lower() == "transfer-encoding":
                raise RuntimeError("chunked answers are not expected from Publish")
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self.retry_after = retry_after
        self.waiting.set_result(status)

    async def send(self, request: bytes) -> int:
        if self.lost is not None or self.transport is None:
            raise ConnectionResetError("connection lost")
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiting


def lean_request(adapter: AdapterProcess, presentity: RestPresentity, body: bytes) -> bytes:
    token = base64.b64encode(f"{ACCOUNT.id}:{ACCOUNT.password}".encode()).decode()
    head = (
        f"POST /rest/presence HTTP/1.1\r\n"
        f"Host: {adapter.host}:{adapter.http_port}\r\n"
        f"Authorization: Basic {token}\r\n"
        f"{IDENTITY_HEADER}: {presentity.address}\r\n"
        f"Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def lean_phase(
    adapter: AdapterProcess,
    presentities: list[RestPresentity],
    concurrency: int,
    window: RestWindow,
    meter: CpuMeter,
) -> None:
    loop = asyncio.get_running_loop()
    requests = {
        id(p): tuple(lean_request(adapter, p, body) for body in p.bodies) for p in presentities
    }
    connections: list[LeanHttpConnection] = []

    async def connect() -> LeanHttpConnection:
        _, connection = await loop.create_connection(
            LeanHttpConnection, adapter.host, adapter.http_port
        )
        connections.append(connection)
        return connection

    async def worker(mine: list[RestPresentity]) -> None:
        connection = await connect()
        for presentity in itertools.cycle(mine):
            if window.closed:
                return
            request = requests[id(presentity)][presentity.visits % 2]
            presentity.visits += 1
            started = time.perf_counter()
            try:
                status: int | None = await asyncio.wait_for(connection.send(request), HTTP_TIMEOUT)
            except TimeoutError:
                status = None
            finished = time.perf_counter()
            if presentity.visits == 1:
                window.first_pass_left -= 1
            window.http_outcome(status, finished)
            window.latency(finished - started, finished)
            if status is None:
                # The answer may still come: this connection's framing is lost.
                assert connection.transport is not None
                connection.transport.close()
                connection = await connect()

    try:
        await run_window(
            window, [worker(presentities[w::concurrency]) for w in range(concurrency)], meter
        )
    finally:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()


# ---------------------------------------------------------------- the run


class BenchAdapter(AdapterProcess):
    """The adapter process, at a chosen ``--log-level`` (the tests' helper says info).

    At info uvicorn writes one access-log line per request; warning is how
    an operator turns that off, and the benchmark can show what it costs.
    """

    log_level = "info"
    #: A source tree to run the adapter from instead of this one (--reference).
    source: Path | None = None
    #: The interpreter to run it on instead of this one (--reference-python).
    python: str | None = None

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--log-level") + 1] = self.log_level
        if self.python is not None:
            command[0] = self.python
        if self.source is not None:
            # env execs Python in place: the pid metered is the adapter's.
            command = ["env", f"PYTHONPATH={self.source}", *command]
        return command


def roots(server: PgPresenceServer, adapter: AdapterProcess) -> dict[str, int]:
    """The processes whose CPU is metered (each with its children)."""
    assert server.pid is not None and adapter.process is not None
    found = {"bench": os.getpid(), "adapter": adapter.process.pid, "kamailio": server.pid}
    if server.cluster is not None and server.cluster.pid is not None:
        found["postgres"] = server.cluster.pid
    return found


SIDES = ("raw", "httpx", "lean", "ref", "floor")
DEFAULT_SIDES = ("raw", "httpx", "lean")
LABELS = {
    "raw": "raw SIP PUBLISH (baseline)",
    "httpx": "adapter, httpx clients",
    "lean": "adapter, lean HTTP clients",
    "ref": "--reference adapter, lean",
    "floor": "empty app under uvicorn, lean",
}

#: The floor side's server: uvicorn as ``presence-adapter serve`` configures it
#: (adapter.cli._serve), an app that only reads the body and answers 204.
FLOOR_SERVER = r"""
import asyncio, socket, sys
import uvicorn

delay = [float(sys.argv[1])]
START = {"type": "http.response.start", "status": 204, "headers": []}
BODY = {"type": "http.response.body", "body": b""}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] == "PUT":  # the pause, in seconds, as the body
        delay[0] = float((await receive())["body"])
    else:
        while (await receive()).get("more_body"):
            pass
        if delay[0]:
            await asyncio.sleep(delay[0])
    await send(START)
    await send(BODY)

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                        timeout_keep_alive=75, ws_per_message_deflate=False)
uvicorn.Server(config).run(sockets=[sock])
"""


@dataclass
class FloorServer:
    """The floor side's uvicorn process (FLOOR_SERVER) and where it listens."""

    process: Any
    host: str
    http_port: int

    @classmethod
    def start(cls, delay: float) -> FloorServer:
        process = subprocess.Popen(
            [sys.executable, "-c", FLOOR_SERVER, str(delay)], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        port = int(process.stdout.readline())
        server = cls(process, HOST, port)
        for _ in range(100):  # listening once it answers
            try:
                httpx.put(f"http://{HOST}:{port}/", content=str(delay), timeout=1.0)
                return server
            except httpx.TransportError:
                time.sleep(0.1)
        server.stop()
        raise RuntimeError("the floor server did not start")

    def pause(self, delay: float) -> None:
        httpx.put(f"http://{self.host}:{self.http_port}/", content=str(delay), timeout=5.0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def bench(
    args: argparse.Namespace,
    server: PgPresenceServer,
    adapter: AdapterProcess,
    reference: AdapterProcess | None = None,
    floor: FloorServer | None = None,
) -> dict[str, Side]:
    run_id = secrets.token_hex(3)
    raw_presentities = []
    for i in range(args.presentities):
        aor = f"sip:r{run_id}-{i}@bench.example.com"
        raw_presentities.append(RawPresentity(aor, pidf_bodies(aor, i)))
    # Both adapter sides publish the same presentities through the one adapter.
    rest_presentities = [
        RestPresentity(address, json_bodies(i))
        for i, address in enumerate(adapter.accounts[ACCOUNT.id].addresses)
    ]
    ref_presentities = [
        RestPresentity(address, json_bodies(i))
        for i, address in enumerate(reference.accounts[ACCOUNT.id].addresses)
    ] if reference is not None else []
    sides = {name: Side(name) for name in args.sides}
    first_pass_done = {"raw": False, "adapter": False, "ref": False}
    per_round = args.duration / args.rounds
    process_roots = roots(server, adapter)
    ref_roots = roots(server, reference) if reference is not None else {}
    floor_roots = {"bench": os.getpid(), "adapter": floor.process.pid} if floor else {}
    floor_presentities = [
        RestPresentity(f"sip:f{i}@bench.example.com", json_bodies(i))
        for i in range(args.presentities)
    ]
    phases: dict[str, Callable[[RestWindow, CpuMeter], Awaitable[None]]] = {
        "raw": lambda window, meter: raw_phase(
            server.sip_address, raw_presentities, args.concurrency, window, meter
        ),
        "httpx": lambda window, meter: adapter_phase(
            adapter, rest_presentities, args.concurrency, window, meter
        ),
        "lean": lambda window, meter: lean_phase(
            adapter, rest_presentities, args.concurrency, window, meter
        ),
        "ref": lambda window, meter: lean_phase(
            reference, ref_presentities, args.concurrency, window, meter  # type: ignore[arg-type]
        ),
        "floor": lambda window, meter: lean_phase(
            floor, floor_presentities, args.concurrency, window, meter  # type: ignore[arg-type]
        ),
    }
    for round_no in range(args.rounds):
        for name in args.sides:
            side = sides[name]
            group = name if name in ("raw", "ref", "floor") else "adapter"
            first_pass = 0 if first_pass_done.get(group) else args.presentities
            window = RestWindow(args.warmup, per_round, None, first_pass)
            if name == "floor":
                assert floor is not None
                paced = sides.get("lean")
                if paced is not None and paced.totals.ok:
                    floor.pause(paced.totals.percentile(50) / 1000)
            meter = CpuMeter(
                {"ref": ref_roots, "floor": floor_roots}.get(name, process_roots)
            )
            await phases[name](window, meter)
            first_pass_done[group] = True
            side.totals.add(window, {})
            side.cpu.update(meter.used)
            rate = window.ok / window.elapsed if window.elapsed else 0.0
            print(
                f"  round {round_no + 1} {name:<5} {rate:8.0f} ok/s  "
                f"errors {dict(window.errors) or 0}",
                flush=True,
            )
    return sides


def report(sides: dict[str, Side], args: argparse.Namespace) -> None:
    raw = sides.get("raw")
    print()
    print(
        f"Publish throughput, {args.concurrency} concurrent clients, "
        f"{args.presentities} presentities per side, PostgreSQL-backed Kamailio"
    )
    print(
        "ok/s: 204 (adapter) or 2xx (raw) only; ratio = ok/s / raw ok/s (target >= 0.80); "
        "latency ms; CPU ms per 1,000 ok by process (with its children)"
    )
    header = (
        f"{'side':<27} {'ok/s':>6} {'ratio':>5} {'err/s':>5} {'p50':>6} {'p99':>6}  "
        f"{'bench':>5} {'adapter':>7} {'kamailio':>8} {'postgres':>8}"
    )
    print(header)
    print("-" * len(header))
    for side in sides.values():
        t = side.totals
        per_k = 1000 / t.ok if t.ok else float("nan")
        cpu = {
            name: side.cpu.get(name, 0.0) * 1000 * per_k
            for name in ("bench", "adapter", "kamailio", "postgres")
        }
        ratio = t.ok_rate / raw.totals.ok_rate if raw and raw.totals.ok_rate else float("nan")
        print(
            f"{LABELS[side.name]:<27} {t.ok_rate:>6.0f} {ratio:>5.2f} {t.error_rate:>5.0f} "
            f"{t.percentile(50):>6.2f} {t.percentile(99):>6.2f}  "
            f"{cpu['bench']:>5.0f} {cpu['adapter']:>7.0f} {cpu['kamailio']:>8.0f} "
            f"{cpu['postgres']:>8.0f}"
        )
    print()
    for side in sides.values():
        t = side.totals
        seconds = t.seconds or float("nan")
        cores = {name: value / seconds for name, value in side.cpu.items()}
        print(
            f"{side.name}: measured {t.seconds:.1f} s, {t.ok} ok; errors {dict(t.errors) or 0}; "
            "cores busy: " + ", ".join(f"{n} {c:.2f}" for n, c in sorted(cores.items()))
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--duration", type=float, default=18.0,
        help="measured seconds per side, split over the rounds (default 18)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the sides")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds at the start of every phase"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients per side")
    parser.add_argument("--presentities", type=int, default=1000, help="presentities per side")
    parser.add_argument(
        "--sides",
        type=lambda text: [side.strip() for side in text.split(",") if side.strip()],
        default=list(DEFAULT_SIDES),
        help="comma-separated, in the order each round runs them "
        f"(default {','.join(DEFAULT_SIDES)}; ref needs --reference)",
    )
    parser.add_argument(
        "--adapter-log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the adapter's --log-level (default info: one access-log line per request)",
    )
    parser.add_argument(
        "--reference", type=Path, metavar="DIR",
        help="also run an adapter from the source tree DIR, as side ref (see above)",
    )
    parser.add_argument(
        "--reference-python", metavar="PATH",
        help="run side ref on this interpreter (another venv's python with the project "
             "installed) rather than this one: with --reference . the same code on two "
             "interpreters",
    )
    parser.add_argument(
        "--floor-delay", type=float, default=0.03, metavar="S",
        help="the floor side's pause per request before the lean side has run (default 0.03)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="print the adapter's log directory and keep it"
    )
    args = parser.parse_args(argv)
    if not args.sides or set(args.sides) - set(SIDES) or len(set(args.sides)) < len(args.sides):
        parser.error(f"--sides: distinct names among {', '.join(SIDES)}")
    if ("ref" in args.sides) != (args.reference is not None):
        parser.error("--reference and the side ref go together")
    if args.reference_python is not None and args.reference is None:
        parser.error("--reference-python needs --reference")
    if args.reference is not None and not (args.reference / "adapter" / "cli.py").is_file():
        parser.error(f"--reference: {args.reference} holds no adapter/cli.py")
    if args.rounds < 1 or args.concurrency < 1 or args.presentities < args.concurrency:
        parser.error("need rounds >= 1, concurrency >= 1 and presentities >= concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    addresses = tuple(f"sip:p{i}@bench.example.com" for i in range(args.presentities))
    account = AppAccount(ACCOUNT.id, ACCOUNT.password, addresses)
    directory = Path(tempfile.mkdtemp(prefix="rest-publish-bench-"))
    with pg_presence_server(HOST) as server:
        adapter = BenchAdapter.for_server(directory, server, [account])
        adapter.log_level = args.adapter_log_level
        reference = None
        floor: FloorServer | None = None
        if args.reference is not None:
            (directory / "ref").mkdir()
            ref_addresses = tuple(f"sip:q{i}@bench.example.com" for i in range(args.presentities))
            ref_account = AppAccount(ACCOUNT.id, ACCOUNT.password, ref_addresses)
            reference = BenchAdapter.for_server(directory / "ref", server, [ref_account])
            reference.log_level = args.adapter_log_level
            reference.source = args.reference.resolve()
            reference.python = args.reference_python
        try:
            adapter.start(healthy=True)
            print(
                f"presence server {server.sip_uri} (pid {server.pid}, {server.db_url}); "
                f"adapter {adapter.url} (pid {adapter.process.pid if adapter.process else '?'}); "
                f"{args.concurrency} clients, {args.presentities} presentities per side, "
                f"{args.rounds} rounds of {args.duration / args.rounds:g} s + "
                f"{args.warmup:g} s warm-up; adapter log level {args.adapter_log_level}",
                flush=True,
            )
            if reference is not None:
                reference.start(healthy=True)
                pid = reference.process.pid if reference.process else "?"
                print(f"reference adapter from {reference.source}: {reference.url} (pid {pid})")
            if "floor" in args.sides:
                floor = FloorServer.start(args.floor_delay)
                print(f"floor server: uvicorn, empty app, http://{HOST}:{floor.http_port}")
            sides = asyncio.run(bench(args, server, adapter, reference, floor))
        finally:
            if floor is not None:
                floor.stop()
            if reference is not None:
                reference.stop()
            adapter.stop()
            if args.keep:
                print(f"adapter directory kept: {directory}")
            else:
                shutil.rmtree(directory, ignore_errors=True)
    report(sides, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
