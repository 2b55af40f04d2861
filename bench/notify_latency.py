"""Notification latency: a presence change's way to the application's Bayeux client.

    .venv/bin/python bench/notify_latency.py                  # about 1.5 minutes
    .venv/bin/python bench/notify_latency.py --duration 30 --rounds 3

One run starts, on free loopback ports and in temporary directories: a
private bundled presence server (tests/presence_server.py, with a larger
shared memory pool, as bench/sip_publish.py does), the adapter as its users
run it (``presence-adapter serve``, tests/adapter_process.py) with ``--apps``
application accounts, one Node process holding one CometD JavaScript client
per application over websocket (notify_latency_clients.mjs), and a raw SIP
peer process (notify_latency_sip.py, independent of the product's SIP stack).

Setup: presentity ``p<i>`` allows the adapter's watcher ``w<i>`` (account
``app<i>``) and the raw watcher ``r<i>`` every attribute (pres-rules written
over XCAP straight to the server); application ``app<i>`` calls Subscribe
Presence and Start Presence Notification (frequency 0, count 100,000) for
``p<i>``; the raw peer subscribes ``r<i>`` to ``p<i>`` and publishes every
presentity once.

Measured, after ``--warmup`` seconds of the same load (35 by default: the
steady state comes once the first server transactions outlive Timer J's
32 s): the raw peer modifies the presentities round-robin with
SIP-If-Match at ``--rate`` changes/s in total, each body's note stamped with
a sequence number and the send time.  For every change three instants are
known: sent (the stamp), the raw watcher's NOTIFY arrival (the same NOTIFY
the server sends the adapter, to another port of the same host, in the same
moment), and the Bayeux client's callback.  Reported per phase, p50/p90/p99/
max in ms:

* ``publish→NOTIFY``   — the server's part (raw watcher arrival − sent);
* ``NOTIFY→Bayeux``    — the adapter's part (Bayeux receipt − raw watcher
  arrival, per change; includes the client's websocket read);
* ``publish→Bayeux``   — end to end.

Then a ``capacity`` phase publishes as fast as the raw peer's window allows
(``--concurrency`` outstanding) for ``--capacity`` seconds: how many changes
per second the server itself turns into NOTIFYs, and whether the adapter
keeps up.  The adapter's CPU (from /proc) is shown per phase.

``--reference DIR`` runs a second adapter beside this one, from the source
tree DIR (an earlier revision: ``git archive REV | tar -x -C DIR``), with
presentities ``p<apps+i>`` of its own, watched through its own accounts and
its own Node process of clients.  The raw peer then changes both sets in one
round-robin at twice ``--rate`` (``--rate`` stays the rate per adapter), so
both adapters meet the same load and the same noise in the same seconds, and
every figure is printed for each, with the ratios current/reference::

    .venv/bin/python bench/notify_latency.py --reference /tmp/before

Needs Kamailio and its sqlite modules, node and tests/interop/node_modules
(scripts/setup installs them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for where in (str(REPO), str(HERE)):
    if where not in sys.path:
        sys.path.insert(0, where)  # tests.* and the sibling bench script are not installed

import httpx  # noqa: E402
from pg_presence_server import pg_presence_server  # noqa: E402
from procfs import udp_drops  # noqa: E402
from rest_publish import BenchAdapter  # noqa: E402
from sip_publish import server_shm  # noqa: E402

from pidf import AttributeType, PresRules  # noqa: E402
from tests.adapter_process import AdapterProcess, AppAccount  # noqa: E402
from tests.presence_server import PresenceServer  # noqa: E402

HOST = "127.0.0.1"
PASSWORD = "bench-secret"
DOMAIN = "bench.example.com"
STAMP = re.compile(r"s=(\d+) t=(\d+)")


def presentity(i: int) -> str:
    return f"sip:p{i}@{DOMAIN}"


def watcher(i: int) -> str:
    return f"sip:w{i}@{DOMAIN}"


def raw_watcher(i: int) -> str:
    return f"sip:r{i}@{DOMAIN}"


# ------------------------------------------------------------------ figures


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


@dataclass
class Phase:
    name: str
    rate: float
    elapsed: float = 0.0
    published: int = 0  # 2xx
    failed: int = 0
    raw_notifies: int = 0
    bayeux: int = 0
    lost: int = 0
    cpu: float = 0.0  # adapter CPU seconds / wall seconds
    cpu_clients: float = 0.0  # the Node process of Bayeux clients
    cpu_peer: float = 0.0  # the raw SIP peer
    cpu_per_change: float = 0.0  # adapter CPU µs per PUBLISH sent (phase and drain)
    result: dict[str, Any] = field(default_factory=dict)
    server: list[float] = field(default_factory=list)  # ms
    adapter: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"



def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ processes


def quit_process(process: subprocess.Popen[str]) -> None:
    """Ask a helper that reads commands on stdin to QUIT; kill it if it does not."""
    if process.poll() is None:
        assert process.stdin is not None
        process.stdin.write("QUIT\n")
        process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class BayeuxClients:
    """The Node process of CometD clients; collects receipt times by sequence number."""

    def __init__(self, url: str, apps: int, prefix: str = "app") -> None:
        """One client per account ``<prefix><i>``."""
        self.process = subprocess.Popen(
            ["node", str(HERE / "notify_latency_clients.mjs"), url, prefix, str(apps), PASSWORD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.received: dict[int, float] = {}  # sequence -> receipt, µs since the epoch
        self.sent_at: dict[int, int] = {}  # sequence -> send stamp in the body, µs
        self.duplicates = 0
        self.kinds: dict[str, int] = {}
        self.errors: list[str] = []

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        assert self.process.stdout is not None
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            line = await loop.run_in_executor(None, self.process.stdout.readline)
            if not line:
                break
            if line.startswith("READY"):
                return
            self.errors.append(line.strip())
        raise RuntimeError(f"Bayeux clients not ready: {self.errors[:5]}")

    def read_forever(self) -> None:
        """In a thread: every message line, until the process ends."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.startswith("M "):
                self.errors.append(line.strip())
                continue
            _m, _app, at, data = line.split(" ", 3)
            kind = next(iter(json.loads(data)), "?")
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            stamp = STAMP.search(data)
            if kind == "statusChanged" and stamp:
                seq = int(stamp.group(1))
                if seq in self.received:
                    self.duplicates += 1
                else:
                    self.received[seq] = float(at) * 1000
                    self.sent_at[seq] = int(stamp.group(2))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RawPeer:
    """The raw SIP publisher and watchers (notify_latency_sip.py)."""

    def __init__(
        self, server: PresenceServer, apps: int, raw_watchers: int, conc: int,
        presentities: str | None = None, share: tuple[int, int] = (0, 1),
    ) -> None:
        """``presentities``: their addresses, ``{}`` where the index goes (else p<i>);
        ``share``: (k, n), this publisher's part of n, presentities k, k + n, ..."""
        pattern = presentities or presentity(-1).replace("-1", "{}")
        self.process = subprocess.Popen(
            [
                sys.executable, str(HERE / "notify_latency_sip.py"), server.host,
                str(server.port), pattern, str(apps),
                raw_watcher(-1).replace("-1", "{}"), str(raw_watchers), str(conc),
                str(share[0]), str(share[1]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("raw SIP peer ended")
        result: dict[str, Any] = json.loads(line)
        return result

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def ready(self) -> list[Any]:
        failed: list[Any] = self._line()["failed"]
        return failed

    def start_run(self, name: str, rate: float, seconds: float, first: int) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"RUN {name} {rate} {seconds} {first}\n")
        self.process.stdin.flush()

    def run(self, name: str, rate: float, seconds: float, first: int) -> dict[str, Any]:
        self.start_run(name, rate, seconds, first)
        return self._line()

    def stop(self) -> None:
        quit_process(self.process)


class RawPeers:
    """Several raw publishers (``--publishers``), each with its share of the
    presentities and of the rate, so that the generator is not the limit."""

    #: Sequence numbers of one publisher in a phase: each starts this far on.
    SPAN = 1_000_000

    def __init__(
        self, server: PresenceServer, apps: int, raw_watchers: int, conc: int, publishers: int
    ) -> None:
        self.peers = [
            RawPeer(server, apps, raw_watchers, conc, share=(k, publishers))
            for k in range(publishers)
        ]

    @property
    def pids(self) -> list[int]:
        return [peer.process.pid for peer in self.peers]

    def ready(self) -> list[Any]:
        return [failure for peer in self.peers for failure in peer.ready()]

    def run(self, name: str, rate: float, seconds: float, first: int) -> dict[str, Any]:
        for k, peer in enumerate(self.peers):
            peer.start_run(name, rate / len(self.peers), seconds, first + k * self.SPAN)
        results = [peer._line() for peer in self.peers]
        return {
            "elapsed": max(r["elapsed"] for r in results),
            "sent": [entry for r in results for entry in r["sent"]],
            "notified": [entry for r in results for entry in r["notified"]],
            "notifies": sum(r["notifies"] for r in results),
        }

    def stop(self) -> None:
        for peer in self.peers:
            peer.stop()


# ------------------------------------------------------------------ set-up


def write_rules(server: PresenceServer, apps: int) -> None:
    everything = {kind: True for kind in AttributeType}
    for i in range(apps):
        rules = PresRules.build({watcher(i): everything, raw_watcher(i): everything})
        # A connection each: Kamailio's xhttp closes after every reply
        # without saying so (adapter/xcap.py).
        reply = httpx.put(
            f"{server.xcap_root}/pres-rules/users/{presentity(i)}/index",
            content=rules.to_xml(),
            headers={"Content-Type": "application/auth-policy+xml"},
            timeout=10,
        )
        reply.raise_for_status()


async def watch_all(
    adapter: AdapterProcess, apps: int, offset: int = 0, prefix: str = "app"
) -> None:
    """Subscribe Presence and Start Presence Notification for every application:
    ``<prefix><i>`` watches ``p<offset+i>``."""

    async def one(i: int) -> None:
        async with adapter.async_client(f"{prefix}{i}") as http:
            reply = await http.post(
                "/rest/presence/subscription",
                json={
                    "application": "notify latency bench",
                    "presentity": presentity(offset + i),
                    "attributes": ["Activity"],
                    "reference": {"correlator": f"s{i}", "endpoint": f"/bayeux/{prefix}{i}/sub"},
                },
            )
            if reply.status_code != 204:
                raise RuntimeError(
                    f"Subscribe Presence {prefix}{i}: {reply.status_code} {reply.text}"
                )
            reply = await http.post(
                "/rest/presence/notification",
                json={
                    "presentity": presentity(offset + i),
                    "attributes": ["Activity"],
                    "frequency": {"metric": "Second", "units": 0},
                    "count": 100_000,
                    "reference": {"correlator": f"n{i}", "endpoint": f"/bayeux/{prefix}{i}/notify"},
                },
            )
            if reply.status_code != 201 or reply.json().get("result"):
                raise RuntimeError(f"Start Presence Notification {prefix}{i}: {reply.text}")

    # One at a time: concurrent SUBSCRIBEs make the sqlite-backed server
    # answer 500 "database is locked" (docs/kamailio.md).
    for i in range(apps):
        await one(i)


# ------------------------------------------------------------------ the run


@dataclass
class Side:
    """One adapter under test, its clients, and its presentities ``p<offset+i>``."""

    label: str
    adapter: AdapterProcess
    clients: BayeuxClients
    offset: int
    apps: int

    @property
    def pid(self) -> int:
        assert self.adapter.process is not None
        return self.adapter.process.pid

    def owns(self, index: int) -> bool:
        return self.offset <= index < self.offset + self.apps


def run_phase(
    name: str, rate: float, peer: RawPeer | RawPeers, sides: list[Side],
    seconds: float, first: int, drain: float,
) -> list[Phase]:
    """One phase of the raw peer at ``rate`` per side; a :class:`Phase` per side."""
    pids = [side.pid for side in sides] + [side.clients.process.pid for side in sides]
    peers = len(peer.pids)
    pids.extend(peer.pids)
    cpu_before, wall_before = [cpu_seconds(p) for p in pids], time.monotonic()
    result = peer.run(name, rate * len(sides), seconds, first)
    time.sleep(drain)  # the last notifications on their way
    wall = time.monotonic() - wall_before
    used = [cpu_seconds(p) - before for p, before in zip(pids, cpu_before, strict=True)]
    phases = []
    for k, side in enumerate(sides):
        sent = [entry for entry in result["sent"] if side.owns(entry[1])]
        mine = result
        if len(sides) > 1:  # the raw watchers' NOTIFYs for this side's presentities
            seqs = {entry[0] for entry in sent}
            notified = [entry for entry in result["notified"] if entry[0] in seqs]
            mine = {**result, "notified": notified, "notifies": len(notified)}
        phases.append(Phase(
            name, rate, elapsed=result["elapsed"], cpu=used[k] / wall,
            cpu_clients=used[len(sides) + k] / wall, cpu_peer=sum(used[-peers:]) / wall,
            cpu_per_change=used[k] / max(len(sent), 1) * 1e6,
            result={**mine, "sent": sent},
        ))
    return phases


def settle(clients: BayeuxClients, quiet: float = 2.0, limit: float = 30.0) -> None:
    """Wait until no notification has arrived for ``quiet`` seconds: late is not lost."""
    deadline = time.monotonic() + limit
    seen = -1
    while len(clients.received) != seen and time.monotonic() < deadline:
        seen = len(clients.received)
        time.sleep(quiet)


def measure(phase: Phase, clients: BayeuxClients) -> None:
    """Match every change's three instants (after :func:`settle`)."""
    result = phase.result
    arrivals = {seq: arrived for seq, _sent, arrived in result["notified"]}
    phase.raw_notifies = result["notifies"]
    for seq, _index, sent, status in result["sent"]:
        if status is None or not 200 <= status < 300:
            phase.failed += 1
            continue
        phase.published += 1
        raw = arrivals.get(seq)
        bayeux = clients.received.get(seq)
        if raw is not None:
            phase.server.append((raw - sent) / 1000)
        if bayeux is None:
            phase.lost += 1
            continue
        phase.bayeux += 1
        phase.end_to_end.append((bayeux - sent) / 1000)
        if raw is not None:
            phase.adapter.append((bayeux - raw) / 1000)


def dump(path: str, phases: list[Phase], clients: BayeuxClients) -> None:
    """Every change's three instants, to line the tail up with traces of the adapter."""
    with open(path, "w") as out:
        for phase in phases:
            arrivals = {seq: arrived for seq, _sent, arrived in phase.result["notified"]}
            for seq, _index, sent, _status in phase.result["sent"]:
                raw, bayeux = arrivals.get(seq), clients.received.get(seq)
                out.write(f"{phase.name} {seq} {sent} {raw or '-'} {bayeux or '-'}\n")


def report(phases: list[Phase], args: argparse.Namespace, label: str = "") -> None:
    print()
    print(
        f"{label}{args.apps} presentities, each watched by one application (CometD JS client, "
        f"websocket) and one raw SIP watcher; raw publisher window {args.concurrency}"
    )
    header = (
        f"{'phase':<10} {'rate':>6} {'pub ok/s':>8} {'fail':>4} {'NOTIFY/s':>8} "
        f"{'bayeux/s':>8} {'lost':>4} {'cpu':>5}  "
        f"{'part':<15} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>7}"
    )
    print(header)
    print("-" * len(header))
    for phase in phases:
        parts = [
            ("publish→NOTIFY", phase.server),
            ("NOTIFY→Bayeux", phase.adapter),
            ("publish→Bayeux", phase.end_to_end),
        ]
        for row, (label, values) in enumerate(parts):
            lead = (
                f"{phase.name:<10} {phase.rate or 'max':>6} "
                f"{phase.published / phase.elapsed:>8.0f} {phase.failed:>4} "
                f"{phase.raw_notifies / phase.elapsed:>8.0f} "
                f"{phase.bayeux / phase.elapsed:>8.0f} {phase.lost:>4} {phase.cpu:>5.0%}  "
                if row == 0 else " " * 66
            )
            print(
                f"{lead}{label:<15} {ms(quantile(values, 0.5)):>6} {ms(quantile(values, 0.9)):>6} "
                f"{ms(quantile(values, 0.99)):>6} {ms(max(values) if values else None):>7}"
            )
    measured = [p for p in phases if p.name.startswith("round")]
    if measured:
        adapter = [v for p in measured for v in p.adapter]
        server = [v for p in measured for v in p.server]
        total = [v for p in measured for v in p.end_to_end]
        print()
        p99 = quantile(adapter, 0.99)
        verdict = "-" if p99 is None else "met" if p99 <= 10 else "NOT met"
        print(
            f"all rounds ({sum(p.published for p in measured)} changes): "
            f"NOTIFY→Bayeux p50 {ms(quantile(adapter, 0.5))} p99 {ms(p99)} ms "
            f"(target p99 ≤ 10 ms: {verdict}; per round "
            f"{', '.join(ms(quantile(p.adapter, 0.99)) for p in measured)}); "
            f"publish→NOTIFY p50 {ms(quantile(server, 0.5))} "
            f"p99 {ms(quantile(server, 0.99))}; publish→Bayeux p50 {ms(quantile(total, 0.5))} "
            f"p99 {ms(quantile(total, 0.99))}; adapter CPU "
            f"{statistics.fmean(p.cpu_per_change for p in measured):.0f} µs per change"
        )
    print("ms; rate = changes/s asked (max = unpaced); NOTIFY/s = NOTIFYs the raw watchers got;")
    print("cpu = the adapter process's CPU time / wall time over the phase and its drain.")


def compare(current: list[Phase], reference: list[Phase]) -> None:
    """The measured rounds of both adapters, side by side, as current/reference."""

    def figures(phases: list[Phase]) -> tuple[float | None, float | None, float]:
        rounds = [p for p in phases if p.name.startswith("round")]
        adapter = [v for p in rounds for v in p.adapter]
        cpu = statistics.fmean(p.cpu_per_change for p in rounds) if rounds else 0.0
        return quantile(adapter, 0.5), quantile(adapter, 0.99), cpu

    ours, theirs = figures(current), figures(reference)

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}"

    print()
    print("side by side, same load and same seconds (current / reference):")
    print(f"  NOTIFY→Bayeux p50 {ms(ours[0])} / {ms(theirs[0])} ms = {ratio(ours[0], theirs[0])}")
    print(f"  NOTIFY→Bayeux p99 {ms(ours[1])} / {ms(theirs[1])} ms = {ratio(ours[1], theirs[1])}")
    print(
        f"  adapter CPU per change {ours[2]:.0f} / {theirs[2]:.0f} µs = "
        f"{ratio(ours[2], theirs[2])}"
    )


async def setup(
    adapter: AdapterProcess, clients: BayeuxClients, apps: int, offset: int = 0
) -> None:
    await clients.wait_ready(60)
    await watch_all(adapter, apps, offset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--apps", type=int, default=100, help="presentities = applications")
    parser.add_argument("--rate", type=float, default=1000, help="changes/s in total")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    # The adapter keeps each NOTIFY's server transaction for Timer J's 32 s
    # (RFC 3261 §17.2.2): only after that do as many die as are born, and the
    # garbage collector's work — the tail of this benchmark — reach its steady
    # state.  Rounds measured earlier see a lighter adapter than a serving one.
    parser.add_argument(
        "--warmup", type=float, default=35,
        help="unmeasured seconds first (default 35: past Timer J's 32 s)",
    )
    parser.add_argument(
        "--capacity", type=float, default=5, help="seconds of unpaced publishing (0 = skip)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=1, help="PUBLISHes the raw peer keeps outstanding"
    )
    parser.add_argument(
        "--raw-watchers", type=int, default=None, help="presentities with a raw watcher too"
    )
    parser.add_argument(
        "--publishers", type=int, default=1,
        help="raw publisher processes, each with its share of presentities and rate",
    )
    parser.add_argument(
        "--pg", action="store_true",
        help="the presence server on PostgreSQL (pg_presence_server.py): concurrent "
        "PUBLISHes, which the sqlite one refuses with 500s",
    )
    parser.add_argument("--server-shm", type=int, default=1024, help="MB; 0 = bundled 64 MB")
    parser.add_argument(
        "--profile", metavar="FILE",
        help="py-spy record the adapter in the rounds (.svg: flame graph, else collapsed stacks)",
    )
    parser.add_argument(
        "--reference", type=Path, metavar="DIR",
        help="also run an adapter from the source tree DIR beside this one (see above)",
    )
    parser.add_argument(
        "--dump", metavar="FILE",
        help="write every measured change as a line: phase seq sent raw-NOTIFY Bayeux (µs epoch)",
    )
    args = parser.parse_args(argv)
    if args.reference is not None and not (args.reference / "adapter" / "cli.py").is_file():
        parser.error(f"--reference: {args.reference} holds no adapter/cli.py")
    adapters = 1 if args.reference is None else 2
    raw_watchers = args.apps * adapters if args.raw_watchers is None else args.raw_watchers
    if shutil.which("node") is None:
        parser.error("node is not installed (scripts/setup installs it)")

    def accounts(offset: int) -> list[AppAccount]:
        return [
            AppAccount(f"app{i}", PASSWORD, (watcher(offset + i),)) for i in range(args.apps)
        ]

    # Other work on the machine moves every figure: say how busy it was.
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with (
        server_shm(args.server_shm),
        (pg_presence_server(HOST) if args.pg else PresenceServer(HOST)) as server,
        tempfile.TemporaryDirectory(prefix="notify-latency-") as directory,
    ):
        write_rules(server, args.apps * adapters)
        for name in ("current", "reference")[:adapters]:
            (Path(directory) / name).mkdir()
        made = [BenchAdapter.for_server(Path(directory) / "current", server, accounts(0))]
        if args.reference is not None:
            made.append(BenchAdapter.for_server(
                Path(directory) / "reference", server, accounts(args.apps)
            ))
            made[1].source = args.reference.resolve()
        sides: list[Side] = []
        peer: RawPeer | RawPeers | None = None
        try:
            for k, adapter in enumerate(made):
                adapter.start(healthy=True)
                label = "current" if k == 0 else f"reference ({args.reference})"
                clients = BayeuxClients(f"{adapter.url}/cometd", args.apps)
                sides.append(Side(label, adapter, clients, k * args.apps, args.apps))
                print(
                    f"{label}: adapter {adapter.url} (pid {sides[-1].pid}), "
                    f"presentities p{k * args.apps}..p{(k + 1) * args.apps - 1}",
                    flush=True,
                )
                asyncio.run(setup(adapter, clients, args.apps, k * args.apps))
            print(f"presence server {server.sip_uri} (pid {server.pid})", flush=True)
            for side in sides:
                threading.Thread(target=side.clients.read_forever, daemon=True).start()
            peer = (
                RawPeers(server, args.apps * adapters, raw_watchers, args.concurrency,
                         args.publishers)
                if args.publishers > 1
                else RawPeer(server, args.apps * adapters, raw_watchers, args.concurrency)
            )
            failed = peer.ready()
            if failed:
                print(f"raw peer set-up: {len(failed)} failures {failed[:5]}", flush=True)
            time.sleep(0.5)
            phases: list[list[Phase]] = [[] for _ in sides]
            first = 0
            plan = [("warmup", args.rate, args.warmup)]
            plan += [(f"round{r + 1}", args.rate, args.duration) for r in range(args.rounds)]
            if args.capacity:
                plan.append(("capacity", 0, args.capacity))
            profiler = None
            for name, rate, seconds in plan:
                if name == "round1" and args.profile:
                    profiler = subprocess.Popen(
                        [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-o", args.profile,
                         "--pid", str(sides[0].pid), "--rate", "250",
                         *(["--format", "raw"] if not args.profile.endswith(".svg") else []),
                         "--duration",
                         str(int(args.duration * args.rounds) + 1)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                results = run_phase(name, rate, peer, sides, seconds, first, drain=1.0)
                first += 10_000_000
                for side, phase in zip(sides, results, strict=True):
                    print(
                        f"  {name}{'' if len(sides) == 1 else ' ' + side.label.split()[0]}: "
                        f"{len(phase.result['sent'])} PUBLISHes in "
                        f"{phase.elapsed:.1f} s; CPU adapter {phase.cpu:.0%} "
                        f"({phase.cpu_per_change:.0f} µs per change), Bayeux clients "
                        f"{phase.cpu_clients:.0%}, raw peer {phase.cpu_peer:.0%}",
                        flush=True,
                    )
                if name != "warmup":
                    for kept, phase in zip(phases, results, strict=True):
                        kept.append(phase)
            for side in sides:
                settle(side.clients)
            for side, kept in zip(sides, phases, strict=True):
                for phase in kept:
                    measure(phase, side.clients)
            if args.dump:
                dump(args.dump, phases[0], sides[0].clients)
            for side, kept in zip(sides, phases, strict=True):
                summarise(side, kept)
            if profiler is not None:
                profiler.wait(30)
            for side, kept in zip(sides, phases, strict=True):
                report(kept, args, "" if len(sides) == 1 else f"{side.label}: ")
            if len(sides) == 2:
                compare(phases[0], phases[1])
            print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        finally:
            if peer is not None:
                peer.stop()
            for side in sides:
                side.clients.stop()
            for adapter in made:
                adapter.stop()
    return 0


def summarise(side: Side, phases: list[Phase]) -> None:
    """What did not arrive, and what the adapter complained of."""
    clients, adapter = side.clients, side.adapter
    print(f"{side.label}:")
    last: dict[int, int] = {}  # presentity -> its last change the server took
    for phase in phases:
        for seq, index, _sent, status in phase.result["sent"]:
            if status is not None and 200 <= status < 300:
                last[index] = max(seq, last.get(index, -1))
    stale = sorted(i for i, seq in last.items() if seq not in clients.received)
    print(
        f"  presentities whose application never got their last change: {len(stale)} "
        f"of {len(last)}" + (f" (p{stale[0]}, ...)" if stale else "")
    )
    print(f"  UDP datagrams the kernel dropped at the adapter's SIP socket (receive "
          f"buffer full): {udp_drops(adapter.sip_port)}")
    complaints = [
        line for line in adapter.log_tail(100_000).splitlines()
        if " WARNING " in line or " ERROR " in line
    ]
    if complaints:
        print(f"  adapter log: {len(complaints)} warnings/errors, the last ones:")
        print("\n".join(complaints[-8:]))
    print(
        f"  Bayeux messages by kind {clients.kinds}; duplicates {clients.duplicates}; "
        f"client errors {clients.errors[:3] or 0}"
    )


if __name__ == "__main__":
    sys.exit(main())
