"""Fan-out at 10,000 watchers: the adapter's Bayeux server vs Faye's NodeAdapter.

    .venv/bin/python bench/fanout_watchers.py                  # about 1 minute
    .venv/bin/python bench/fanout_watchers.py --phases mixed,websocket,long-polling
    .venv/bin/python bench/fanout_watchers.py --bursts 3 --rounds 1 --profile /tmp/f.svg
    .venv/bin/python bench/fanout_watchers.py --baseline HEAD~1    # before/after, one run

The harness of bench/bayeux_fanout.py (both servers on free loopback ports in
the same run, the same Faye Node clients, publishing from inside each server)
at the size of issue #8's benchmark 3: `--apps` applications (100), one Bayeux
client each, authenticated as that application and subscribed to its
notification channel /bayeux/a<i>/notify; `--presentities` presentities
(1,000), each watched by `--per-presentity` watchers (10) in as many different
applications, so every application holds presentities × per-presentity / apps
watchers (100). A burst is one change of every presentity: each of its
watchers gets a statusChanged message shaped as adapter/notification.py builds
it (correlator, presentity, changedAttributes with lastChange, typeAndValue
and a note), i.e. 10,000 deliveries, all issued at once from inside the server
(`Hub.deliver` here, `bayeux.getClient().publish` in Faye). The note carries
the burst number and the publish time.

Phases (`--phases`): `mixed` (even applications on websocket, odd ones on
long-polling, at the same time), `websocket`, `long-polling`. In each phase the
two servers take turns (`--rounds`, order swapped every round), each turn with
fresh clients: `--warmup` bursts, then `--bursts` measured ones, one after the
other (the next once the last delivery of the previous arrived, after a short
pause). Printed per server and phase: deliveries/s (distinct deliveries over
the sum of first publish → last receipt of each burst), latency p50/p99/max
(publish → client callback, wall clocks of two processes), lost and duplicated
deliveries (and how many clients lost any), the server's CPU per burst, and
the adapter/Faye ratio of deliveries/s and of CPU per burst. Everything here
runs on loopback on one machine, load clients included: the ratio compares
servers under the same client, the absolute rates are those of this machine.
Server CPU is read from /proc (10 ms ticks) around each burst and averaged.

The clients are spread over `--client-processes` Node processes (2), the same
for every server, so that one process's core does not cap the rate: each
counts its own applications' deliveries and the driver merges them per burst
(counts summed, span from the earliest publish to the last receipt anywhere,
latencies pooled). Their CPU per burst is read from /proc too, with the share
of a core the busiest one used over the burst's span.

`--baseline REV` adds a third server, "base": the same hub with adapter/
(and pidf/, sip/) as of git revision REV, extracted to a temporary directory,
so that an optimisation's before and after are measured side by side in one
run (printed last: adapter/base ratios).

Needs node and tests/interop/node_modules (scripts/setup installs them).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REPO = HERE.parent
for folder in (REPO, HERE):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from bayeux_fanout import start  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ adapter server


def serve() -> None:
    """The adapter's Bayeux hub under uvicorn, configured as `presence-adapter serve` runs it."""
    import asyncio
    import gc
    import socket
    from datetime import UTC, datetime

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from adapter.bayeux import Hub, bayeux_routes
    from adapter.cli import GC_THRESHOLDS

    def authenticate(user: str, password: str) -> str | None:
        # Application i's account is "a<i>" (password "bench").
        return user if user[:1] == "a" and user[1:].isdigit() and password == "bench" else None

    hub = Hub(authenticate)  # the default limits, as the adapter's configuration has them

    def burst(number: int, presentities: int, apps: int, per_presentity: int) -> None:
        # What the watcher service does for one NOTIFY, for every presentity:
        # one statusChanged per schedule, on the schedule's endpoint.
        stride = apps // per_presentity
        activity = "Busy" if number % 2 else "Available"
        app_ids = [f"a{i}" for i in range(apps)]
        endpoints = [f"/bayeux/a{i}/notify" for i in range(apps)]
        deliver = hub.deliver
        for p in range(presentities):
            sent = time.time() * 1000
            last_change = (
                datetime.fromtimestamp(sent / 1000, UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z")
            )
            presentity = f"sip:p{p}@bench.example"
            for j in range(per_presentity):
                app = (p + j * stride) % apps
                deliver(
                    app_ids[app],
                    endpoints[app],
                    {
                        "statusChanged": {
                            "correlator": f"p{p}.{j}",
                            "presentity": presentity,
                            "changedAttributes": [
                                {
                                    "lastChange": last_change,
                                    "typeAndValue": {
                                        "unionElement": "Activity",
                                        "activity": activity,
                                    },
                                    "note": f"{number} {sent:.3f}",
                                }
                            ],
                        }
                    },
                )

    async def watchers(request: Request) -> JSONResponse:
        body = await request.json()
        asyncio.get_running_loop().call_soon(
            burst, body["burst"], body["presentities"], body["apps"], body["per_presentity"]
        )
        return JSONResponse({}, status_code=202)

    app = Starlette(
        routes=[
            *bayeux_routes(hub),
            Route("/bench/watchers", watchers, methods=["POST"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, lifespan="off", log_level="warning", ws_per_message_deflate=False)
    uvicorn.Server(config).run(sockets=[sock])


# ------------------------------------------------------------------- driver


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def post(port: int, path: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class Lines:
    """A child's stdout, line by line, with a timeout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(
            target=lambda: [self._lines.put(line) for line in stream], daemon=True
        ).start()

    def get(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"load clients said nothing for {timeout:.0f} s") from None


@dataclass
class Side:
    server: str
    phase: str
    bursts: list[dict[str, Any]] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # server CPU seconds per measured burst
    # CPU seconds per measured burst of all the load client processes, and
    # the largest share of a core one of them used over a burst's span.
    clients_cpu: list[float] = field(default_factory=list)
    client_busiest: list[float] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)
    client_cpu: float = 0.0
    transports: dict[str, int] = field(default_factory=dict)
    expected_per_client: int = 0


def shares(apps: int, processes: int) -> list[tuple[int, int]]:
    """(first application, how many) for each load client process: contiguous,
    as even as they divide."""
    processes = max(1, min(processes, apps))
    base, extra = divmod(apps, processes)
    out, first = [], 0
    for k in range(processes):
        count = base + (1 if k < extra else 0)
        out.append((first, count))
        first += count
    return out


def quantile(sorted_values: list[float], p: float) -> float | None:
    # The clients' own rule (fanout_watchers_clients.cjs), on the merged list.
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def merge_bursts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One burst as a single client process would have reported it: distinct and
    duplicated deliveries summed, the span from the earliest publish any process
    saw to the last receipt in any, the latencies pooled."""
    distinct = sum(part["distinct"] for part in parts)
    firsts = [part["firstSent"] for part in parts if part["firstSent"] is not None]
    lasts = [part["lastReceived"] for part in parts if part["lastReceived"]]
    seconds = (max(lasts) - min(firsts)) / 1000 if firsts and lasts else 0.0
    latencies = sorted(x for part in parts for x in part["latencies"])
    return {
        "distinct": distinct,
        "duplicates": sum(part["duplicates"] for part in parts),
        "seconds": seconds,
        "rate": distinct / seconds if seconds > 0 else 0.0,
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "max": latencies[-1] if latencies else None,
        "timedOut": any(part["timedOut"] for part in parts),
    }


def run_side(
    server: str,
    pid: int,
    port: int,
    phase: str,
    args: argparse.Namespace,
    first: int,
    profile: str | None,
) -> Side:
    per_client = args.presentities * args.per_presentity // args.apps
    side = Side(server, phase)
    groups = shares(args.apps, args.client_processes)
    clients = [
        subprocess.Popen(
            [
                "node",
                str(HERE / "fanout_watchers_clients.cjs"),
                f"http://127.0.0.1:{port}/cometd",
                str(args.apps),
                str(first_app),
                str(count),
                phase,
                str(args.per_presentity),
                str(args.deadline),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for first_app, count in groups
    ]
    lines = [Lines(c) for c in clients]

    def tell(line: str) -> None:
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(line)
            c.stdin.flush()

    profiler: subprocess.Popen[bytes] | None = None
    try:
        for reader in lines:
            ready = reader.get(60).strip()
            if not ready.startswith("READY "):
                raise RuntimeError(f"load clients failed: {ready!r}")
            for kind, n in json.loads(ready[len("READY ") :]).items():
                side.transports[kind] = side.transports.get(kind, 0) + n
        numbers = range(first, first + args.warmup + args.bursts)
        for number in numbers:
            measured = number >= first + args.warmup
            if measured and profile and profiler is None:
                profiler = subprocess.Popen(
                    [
                        str(REPO / ".venv" / "bin" / "py-spy"),
                        "record",
                        "-o",
                        profile,
                        "--pid",
                        str(pid),
                        "--rate",
                        "250",
                        *(["--format", "raw"] if not profile.endswith(".svg") else []),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1.0)
            for c, (_, count) in zip(clients, groups, strict=True):
                assert c.stdin is not None
                c.stdin.write(f"EXPECT {number} {per_client * count}\n")
                c.stdin.flush()
            before = cpu_seconds(pid)
            clients_before = [cpu_seconds(c.pid) for c in clients]
            post(
                port,
                "/bench/watchers",
                {
                    "burst": number,
                    "presentities": args.presentities,
                    "apps": args.apps,
                    "per_presentity": args.per_presentity,
                },
            )
            parts = [json.loads(reader.get(args.deadline + 10)) for reader in lines]
            if measured:
                side.cpu.append(cpu_seconds(pid) - before)
                used = [
                    cpu_seconds(c.pid) - b for c, b in zip(clients, clients_before, strict=True)
                ]
                result = merge_bursts(parts)
                side.clients_cpu.append(sum(used))
                if result["seconds"] > 0:
                    side.client_busiest.append(max(used) / result["seconds"])
                side.bursts.append(result)
            time.sleep(args.pause)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
            profiler = None
        tell("END\n")
        summaries = [json.loads(reader.get(30)) for reader in lines]
        side.summary = {
            "perClientDistinct": [n for s in summaries for n in s["perClientDistinct"]],
            "perClientDuplicates": [n for s in summaries for n in s["perClientDuplicates"]],
            "misrouted": sum(s["misrouted"] for s in summaries),
            "malformed": sum(s["malformed"] for s in summaries),
        }
        side.client_cpu = sum(s["cpu"]["user"] + s["cpu"]["system"] for s in summaries) / 1e6
        side.expected_per_client = per_client * len(numbers)
        for c in clients:
            c.wait(timeout=10)
        return side
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(30)
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait()


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@dataclass
class Totals:
    rate: float
    p50: float
    p99: float
    worst: float
    lost: int
    duplicates: int
    clients_losing: int
    cpu_ms: float
    misrouted: int
    clients_cpu_ms: float
    client_busiest: float | None  # median over bursts, share of one core


def totals(sides: list[Side]) -> Totals:
    bursts = [b for s in sides for b in s.bursts]
    seconds = sum(b["seconds"] for b in bursts)
    lost = clients_losing = duplicates = misrouted = 0
    for s in sides:
        distinct = s.summary["perClientDistinct"]
        dups = s.summary["perClientDuplicates"]
        assert isinstance(distinct, list) and isinstance(dups, list)
        short = [s.expected_per_client - d for d in distinct]
        lost += sum(x for x in short if x > 0)
        clients_losing += sum(1 for x in short if x > 0)
        duplicates += sum(dups)
        misrouted += int(s.summary["misrouted"]) + int(s.summary["malformed"])  # type: ignore[call-overload]
    return Totals(
        rate=sum(b["distinct"] for b in bursts) / seconds if seconds else 0.0,
        p50=statistics.median(b["p50"] for b in bursts),
        p99=statistics.median(b["p99"] for b in bursts),
        worst=max(b["max"] for b in bursts),
        lost=lost,
        duplicates=duplicates,
        clients_losing=clients_losing,
        cpu_ms=1000 * statistics.fmean(c for s in sides for c in s.cpu),
        misrouted=misrouted,
        clients_cpu_ms=1000 * statistics.fmean(c for s in sides for c in s.clients_cpu),
        client_busiest=statistics.median(busiest)
        if (busiest := [b for s in sides for b in s.client_busiest])
        else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--presentities", type=int, default=1000)
    parser.add_argument("--per-presentity", type=int, default=10)
    parser.add_argument(
        "--phases", default="mixed", help="comma-separated: mixed, websocket, long-polling"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.5, help="s between bursts")
    parser.add_argument("--deadline", type=float, default=30, help="s to wait for a burst")
    parser.add_argument("--servers", default="adapter,faye")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="Node processes the applications' clients are spread over (the same for every server)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the adapter's Bayeux server as of git revision REV ('base'), "
        "for before/after figures side by side in one run",
    )
    parser.add_argument("--tree", help=argparse.SUPPRESS)  # serve: import adapter from here
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy record the adapter in its first turn's measured bursts "
        "(.svg: flame graph, else collapsed stacks)",
    )
    args = parser.parse_args()
    if args.mode == "serve":
        if args.tree:
            sys.path.insert(0, args.tree)
        serve()
        return
    if args.apps % args.per_presentity or args.presentities % args.apps:
        parser.error("--apps must be a multiple of --per-presentity, --presentities of --apps")
    phases = args.phases.split(",")
    if any(p not in ("mixed", "websocket", "long-polling") for p in phases):
        parser.error(f"unknown phase in {args.phases!r}")
    names = args.servers.split(",")
    here = str(Path(__file__).resolve())
    commands = {
        "adapter": [sys.executable, here, "serve"],
        "faye": ["node", str(HERE / "bayeux_fanout_faye.cjs")],
    }
    if args.baseline:
        tree = tempfile.mkdtemp(prefix="fanout-base-")
        atexit.register(shutil.rmtree, tree, True)
        archive = subprocess.run(
            ["git", "archive", args.baseline, "adapter", "pidf", "sip"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        commands["base"] = [sys.executable, here, "serve", "--tree", tree]
        names.insert(names.index("adapter") + 1 if "adapter" in names else 0, "base")
    servers = {name: start(commands[name]) for name in names}
    per_client = args.presentities * args.per_presentity // args.apps
    print(
        f"{args.apps} applications x {per_client} watchers = "
        f"{args.presentities * args.per_presentity:,} watchers of {args.presentities:,} "
        f"presentities; {args.warmup} warm-up + {args.bursts} measured bursts of "
        f"{args.presentities * args.per_presentity:,} deliveries per turn, "
        f"{args.rounds} turn(s) per server and phase; clients in "
        f"{len(shares(args.apps, args.client_processes))} Node process(es)"
        + (f"; base = adapter/ as of {args.baseline}" if args.baseline else ""),
        flush=True,
    )
    results: dict[tuple[str, str], list[Side]] = {}
    number = 1
    profile = args.profile
    try:
        for phase in phases:
            for round_ in range(args.rounds):
                order = names if round_ % 2 == 0 else names[::-1]
                for name in order:
                    process, port = servers[name]
                    side = run_side(
                        name,
                        process.pid,
                        port,
                        phase,
                        args,
                        number,
                        profile if name == "adapter" else None,
                    )
                    if name == "adapter":
                        profile = None
                    number += args.warmup + args.bursts
                    results.setdefault((phase, name), []).append(side)
                    rates = ", ".join(fmt(b["rate"]) for b in side.bursts)
                    busiest = (
                        f"{100 * statistics.median(side.client_busiest):.0f} %"
                        if side.client_busiest
                        else "-"
                    )
                    print(
                        f"  {phase} round {round_ + 1} {name}: transports {side.transports}; "
                        f"deliveries/s per burst {rates}; server CPU per burst "
                        f"{fmt(1000 * statistics.fmean(side.cpu))} ms; clients CPU per burst "
                        f"{fmt(1000 * statistics.fmean(side.clients_cpu))} ms (busiest process "
                        f"{busiest} of a core), {side.client_cpu:.1f} s in the turn; "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=10)

    print()
    print(
        "| phase | server | deliveries/s | p50 ms | p99 ms | max ms | lost (clients) | dup | "
        "server CPU ms per burst | clients CPU ms per burst | busiest client process "
        "(share of a core) | ratio to faye: deliveries/s | CPU per burst |"
    )
    print("|" + "---|" * 13)
    for phase in phases:
        figures = {name: totals(results[(phase, name)]) for name in names}
        for name, t in figures.items():
            ratio = cpu_ratio = ""
            if name != "faye" and "faye" in figures:
                f = figures["faye"]
                ratio = f"{t.rate / f.rate:.2f}" if f.rate else "-"
                cpu_ratio = f"{t.cpu_ms / f.cpu_ms:.2f}" if f.cpu_ms else "-"
            print(
                f"| {phase} | {name} | {fmt(t.rate)} | {fmt(t.p50)} | {fmt(t.p99)} | "
                f"{fmt(t.worst)} | {t.lost} ({t.clients_losing}) | {t.duplicates} | "
                f"{fmt(t.cpu_ms)} | {fmt(t.clients_cpu_ms)} | "
                f"{'-' if t.client_busiest is None else f'{100 * t.client_busiest:.0f} %'} | "
                f"{ratio} | {cpu_ratio} |"
            )
            if t.misrouted:
                print(f"  {name}: {t.misrouted} deliveries misrouted or malformed")
    if "base" in names and "adapter" in names:
        for phase in phases:
            a, b = totals(results[(phase, "adapter")]), totals(results[(phase, "base")])
            rate = f"{a.rate / b.rate:.2f}" if b.rate else "-"
            cpu = f"{a.cpu_ms / b.cpu_ms:.2f}" if b.cpu_ms else "-"
            print(
                f"{phase}: adapter/base deliveries/s {rate}, CPU per burst {cpu} "
                f"({fmt(b.cpu_ms)} -> {fmt(a.cpu_ms)} ms)"
            )


if __name__ == "__main__":
    main()
