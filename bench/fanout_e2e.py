"""Fan-out at 10,000 watchers, end to end: SIP PUBLISH → Kamailio → NOTIFY → adapter → Bayeux.

    .venv/bin/python bench/fanout_e2e.py                       # about 5 minutes
    .venv/bin/python bench/fanout_e2e.py --apps 20 --presentities 200 --per-presentity 2

The scenario of bench/fanout_watchers.py through the real chain. One run
starts, on free loopback ports: a PostgreSQL-backed presence server
(bench/pg_presence_server.py; the sqlite one refuses concurrent SUBSCRIBEs and
PUBLISHes), the adapter as its users run it (``presence-adapter serve``,
tests/adapter_process.py) with ``--apps`` accounts ``a<i>``, each acting as
watcher ``sip:w<i>@…``, and the Faye Node clients of fanout_watchers.py (one per
application, even ones on websocket, odd ones on long-polling).

Set-up: pres-rules of every presentity allow its ``--per-presentity`` watchers
every attribute (written over XCAP straight to the server); every presentity is
published once; then each watcher's application calls Subscribe Presence and
Start Presence Notification (Activity, frequency 0) for each of its
presentities: presentities × per-presentity SIP subscriptions from the adapter.

A burst: a raw SIP publisher (bench/sip_publish.py's RawSender, none of sip/)
modifies every presentity with SIP-If-Match, ``--window`` PUBLISHes
outstanding (see Publisher), the Activity note
carrying the burst number and the send time; the server NOTIFYs every
watcher, the adapter turns each NOTIFY into a statusChanged on the watcher's
application channel. Reported per burst and in total: deliveries/s (first
PUBLISH sent → last Bayeux receipt), latency p50/p99/max (PUBLISH sent →
client callback), lost and duplicated deliveries, the CPU of the adapter and
of Kamailio per burst, and the UDP datagrams the kernel dropped at the
adapter's SIP socket. There is no Faye here: Faye has no SIP side, so the
comparison with it is bench/fanout_watchers.py's.

Needs Kamailio with the PostgreSQL modules and postgresql (installed by
pg_presence_server.py when missing, as root), node and
tests/interop/node_modules (scripts/setup).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (str(REPO), str(HERE)):
    if folder not in sys.path:
        sys.path.insert(0, folder)  # tests.* and the sibling benchmarks are not installed

import httpx  # noqa: E402
from fanout_watchers import Lines, cpu_seconds, fmt  # noqa: E402
from pg_presence_server import pg_presence_server  # noqa: E402
from procfs import udp_drops  # noqa: E402
from sip_publish import RawPresentity, RawSender  # noqa: E402

from pidf import AttributeType, PresRules  # noqa: E402
from tests.adapter_process import AdapterProcess, AppAccount  # noqa: E402

HOST = "127.0.0.1"
PASSWORD = "bench"  # what fanout_watchers_clients.cjs sends
DOMAIN = "bench.example.com"


def presentity(p: int) -> str:
    return f"sip:p{p}@{DOMAIN}"


def watcher(app: int) -> str:
    return f"sip:w{app}@{DOMAIN}"


def pidf(aor: str, burst: int, sent_ms: float) -> bytes:
    seconds = int(sent_ms // 1000)
    instant = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    instant += f".{int(sent_ms % 1000):03d}Z"
    note = f"{burst} {sent_ms:.3f}"
    activity = "<rpid:busy/>" if burst % 2 else "<rpid:away/>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<presence xmlns="urn:ietf:params:xml:ns:pidf" '
        'xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" '
        f'xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="{aor}">'
        f'<tuple id="bench-s"><status><basic>open</basic></status>'
        f"<timestamp>{instant}</timestamp></tuple>"
        f'<dm:person id="bench-p"><rpid:activities from="{instant}">'
        f"<rpid:note>{note}</rpid:note>{activity}</rpid:activities></dm:person>"
        "</presence>"
    ).encode()


class Layout:
    """Who watches what: presentity p's j-th watcher is application (p + j·apps/per) % apps."""

    def __init__(self, apps: int, presentities: int, per: int) -> None:
        self.apps, self.presentities, self.per = apps, presentities, per
        self.stride = apps // per

    def app(self, p: int, j: int) -> int:
        return (p + j * self.stride) % self.apps

    def watches(self) -> list[tuple[int, int, int]]:
        return [(p, j, self.app(p, j)) for p in range(self.presentities) for j in range(self.per)]


def write_rules(server_xcap: str, layout: Layout) -> None:
    everything = {kind: True for kind in AttributeType}
    for p in range(layout.presentities):
        rules = PresRules.build({watcher(layout.app(p, j)): everything for j in range(layout.per)})
        # A connection each: Kamailio's xhttp closes after every reply
        # without saying so (adapter/xcap.py).
        reply = httpx.put(
            f"{server_xcap}/pres-rules/users/{presentity(p)}/index",
            content=rules.to_xml(),
            headers={"Content-Type": "application/auth-policy+xml"},
            timeout=10,
        )
        reply.raise_for_status()


async def watch_all(adapter: AdapterProcess, layout: Layout, concurrency: int) -> None:
    """Subscribe Presence + Start Presence Notification for every watcher."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(adapter.async_client(f"a{i}", timeout=60))
            for i in range(layout.apps)
        ]
        gate = asyncio.Semaphore(concurrency)

        async def one(p: int, j: int, app: int) -> None:
            http = clients[app]
            async with gate:
                reply = await http.post(
                    "/rest/presence/subscription",
                    json={
                        "application": "fan-out bench",
                        "presentity": presentity(p),
                        "attributes": ["Activity"],
                        "reference": {"correlator": f"s{p}.{j}", "endpoint": f"/bayeux/a{app}/sub"},
                    },
                )
                if reply.status_code != 204:
                    raise RuntimeError(
                        f"Subscribe Presence p{p}.{j}: {reply.status_code} {reply.text}"
                    )
                reply = await http.post(
                    "/rest/presence/notification",
                    json={
                        "presentity": presentity(p),
                        "attributes": ["Activity"],
                        "frequency": {"metric": "Second", "units": 0},
                        "count": 100_000,
                        "reference": {
                            "correlator": f"p{p}.{j}",
                            "endpoint": f"/bayeux/a{app}/notify",
                        },
                    },
                )
                if reply.status_code != 201 or reply.json().get("result"):
                    raise RuntimeError(f"Start Presence Notification p{p}.{j}: {reply.text}")

        await asyncio.gather(*(one(p, j, app) for p, j, app in layout.watches()))


class Publisher:
    """Changes every presentity once per burst, ``window`` PUBLISHes outstanding at most.

    A burst of 1,000 datagrams at once overflows the server's receive buffer
    (measured: three quarters of them timed out), and the raw sender does not
    retransmit; so the burst is as fast as a window of outstanding requests
    allows, and a PUBLISH that timed out or got a 5xx is sent again (twice).
    """

    def __init__(self, sender: RawSender, layout: Layout, window: int) -> None:
        self.sender = sender
        self.window = window
        self.presentities = [
            RawPresentity(presentity(p), (b"", b"")) for p in range(layout.presentities)
        ]

    async def burst(self, number: int) -> Counter[int | None]:
        gate = asyncio.Semaphore(self.window)

        async def one(target: RawPresentity) -> int | None:
            async with gate:
                status: int | None = None
                for _attempt in range(3):
                    sent = time.time() * 1000
                    body = pidf(target.aor, number, sent)
                    status, etag = await self.sender.publish(target, body)
                    if status == 412:  # RFC 3903 §6: the entity tag is unknown; publish anew
                        target.etag = None
                        status, etag = await self.sender.publish(target, body)
                    if status is not None and 200 <= status < 300:
                        target.etag = etag
                        return status
                    if status is not None and status < 500:
                        return status
                return status

        return Counter(await asyncio.gather(*(one(t) for t in self.presentities)))


def accepted(statuses: Counter[int | None]) -> int:
    return sum(n for status, n in statuses.items() if status is not None and 200 <= status < 300)


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and its live descendants (Kamailio works in forked children)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            total += cpu_seconds(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            pending.extend(int(child) for child in children)
    return total



async def run(args: argparse.Namespace, directory: Path) -> None:
    layout = Layout(args.apps, args.presentities, args.per_presentity)
    total = args.presentities * args.per_presentity
    accounts = [AppAccount(f"a{i}", PASSWORD, (watcher(i),)) for i in range(args.apps)]
    loop = asyncio.get_running_loop()
    with pg_presence_server(HOST) as server:
        started = time.monotonic()
        await loop.run_in_executor(None, write_rules, server.xcap_root, layout)
        transport, sender = await loop.create_datagram_endpoint(
            lambda: RawSender((server.host, server.port)), local_addr=(HOST, 0)
        )
        publisher = Publisher(sender, layout, args.window)
        statuses = await publisher.burst(0)
        print(
            f"rules and first publication of {args.presentities:,} presentities: "
            f"{time.monotonic() - started:.1f} s, answers {dict(statuses)}",
            flush=True,
        )
        adapter = AdapterProcess.for_server(directory, server, accounts)
        adapter.start(healthy=True)
        clients: subprocess.Popen[str] | None = None
        try:
            assert adapter.process is not None
            pid = adapter.process.pid
            clients = subprocess.Popen(
                [
                    "node",
                    str(HERE / "fanout_watchers_clients.cjs"),
                    f"{adapter.url}/cometd",
                    str(args.apps),
                    "mixed",
                    str(args.per_presentity),
                    str(args.deadline),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert clients.stdin is not None
            lines = Lines(clients)
            ready = (await loop.run_in_executor(None, lines.get, 60)).strip()
            if not ready.startswith("READY "):
                raise RuntimeError(f"load clients failed: {ready!r}")
            started = time.monotonic()
            await watch_all(adapter, layout, args.concurrency)
            print(
                f"{total:,} watchers subscribed (Subscribe Presence + Start Presence "
                f"Notification) in {time.monotonic() - started:.1f} s; clients {ready[6:]}",
                flush=True,
            )
            await asyncio.sleep(args.settle)
            drops_before = udp_drops(adapter.sip_port)
            results = []
            profiler: subprocess.Popen[bytes] | None = None
            for number in range(1, 1 + args.warmup + args.bursts):
                measured = number > args.warmup
                if measured and args.profile and profiler is None:
                    profiler = subprocess.Popen(
                        [
                            str(REPO / ".venv" / "bin" / "py-spy"),
                            "record",
                            "-o",
                            args.profile,
                            "--pid",
                            str(pid),
                            "--rate",
                            "100",
                            *(["--format", "raw"] if not args.profile.endswith(".svg") else []),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    await asyncio.sleep(1.0)
                cpu_adapter, cpu_server = cpu_seconds(pid), tree_cpu_seconds(server.pid)
                statuses = await publisher.burst(number)
                # Every change the server took is owed to each of its watchers.
                expected = accepted(statuses) * args.per_presentity
                clients.stdin.write(f"EXPECT {number} {expected}\n")
                clients.stdin.flush()
                result = json.loads(await loop.run_in_executor(None, lines.get, args.deadline + 10))
                result["cpu_adapter"] = cpu_seconds(pid) - cpu_adapter
                result["cpu_server"] = tree_cpu_seconds(server.pid) - cpu_server
                result["refused"] = args.presentities - accepted(statuses)
                result["answers"] = dict(statuses)
                print(
                    f"  burst {number}{'' if measured else ' (warm-up)'}: "
                    f"{fmt(result['rate'])} deliveries/s, p50 {fmt(result['p50'])} ms, "
                    f"p99 {fmt(result['p99'])} ms, lost {result['lost']}, dup "
                    f"{result['duplicates']}, PUBLISH answers {result['answers']}, CPU adapter "
                    f"{result['cpu_adapter']:.2f} s, Kamailio {result['cpu_server']:.2f} s",
                    flush=True,
                )
                if measured:
                    results.append(result)
                await asyncio.sleep(args.pause)
            drops_after = udp_drops(adapter.sip_port)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
            clients.stdin.write("END\n")
            clients.stdin.flush()
            summary = json.loads(await loop.run_in_executor(None, lines.get, 30))
            seconds = sum(r["seconds"] for r in results)
            print()
            print(
                "| deliveries/s | p50 ms | p99 ms | max ms | lost | dup | adapter CPU s per "
                "burst | Kamailio CPU s per burst | PUBLISH refused |"
            )
            print("|" + "---|" * 9)
            print(
                f"| {fmt(sum(r['distinct'] for r in results) / seconds if seconds else None)} | "
                f"{fmt(statistics.median(r['p50'] for r in results))} | "
                f"{fmt(statistics.median(r['p99'] for r in results))} | "
                f"{fmt(max(r['max'] for r in results))} | {sum(r['lost'] for r in results)} | "
                f"{sum(r['duplicates'] for r in results)} | "
                f"{statistics.fmean(r['cpu_adapter'] for r in results):.2f} | "
                f"{statistics.fmean(r['cpu_server'] for r in results):.2f} | "
                f"{sum(r['refused'] for r in results)} |"
            )
            if drops_before is not None and drops_after is not None:
                print(
                    f"UDP datagrams dropped at the adapter's SIP socket during the bursts: "
                    f"{drops_after - drops_before}"
                )
            if summary["misrouted"] or summary["malformed"]:
                print(
                    f"deliveries misrouted {summary['misrouted']}, without a bench note "
                    f"{summary['malformed']} (initial states)"
                )
            complaints = [
                line
                for line in adapter.log_tail(100_000).splitlines()
                if " WARNING " in line or " ERROR " in line
            ]
            if complaints:
                print(f"adapter log: {len(complaints)} warnings/errors, the last ones:")
                print("\n".join(complaints[-5:]))
        finally:
            transport.close()
            if clients is not None and clients.poll() is None:
                clients.kill()
                clients.wait()
            adapter.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--presentities", type=int, default=1000)
    parser.add_argument("--per-presentity", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--pause", type=float, default=2.0, help="s between bursts")
    parser.add_argument("--settle", type=float, default=3.0, help="s after the set-up")
    parser.add_argument("--deadline", type=float, default=60, help="s to wait for a burst")
    parser.add_argument("--concurrency", type=int, default=32, help="REST calls at once in set-up")
    parser.add_argument("--window", type=int, default=50, help="PUBLISHes outstanding in a burst")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy record the adapter in the measured bursts (.svg: flame graph, else raw)",
    )
    args = parser.parse_args()
    if args.apps % args.per_presentity or args.presentities % args.apps:
        parser.error("--apps must be a multiple of --per-presentity, --presentities of --apps")
    with tempfile.TemporaryDirectory(prefix="fanout-e2e-") as directory:
        asyncio.run(run(args, Path(directory)))


if __name__ == "__main__":
    main()
