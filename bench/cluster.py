"""Several adapter nodes: Publish and NOTIFY→Bayeux one node against two, failover after kill -9.

    .venv/bin/python bench/cluster.py                          # every part, about 15 minutes
    .venv/bin/python bench/cluster.py --parts publish --duration 12 --rounds 3
    .venv/bin/python bench/cluster.py --parts latency --apps 100 --rate 500
    .venv/bin/python bench/cluster.py --parts failover --watches 10000 --leases 10,2

Issue #19's benchmarks.  One run starts a PostgreSQL-backed presence server
(bench/pg_presence_server.py: Kamailio on a PostgreSQL cluster of its own)
and, for each part, a cluster (tests/cluster_nodes.py): a second PostgreSQL
cluster as the adapter's store, a Redis, and two adapter nodes ``a`` and
``b`` sharing the accounts.

* ``publish`` — bench/rest_publish.py's lean HTTP/1.1 client
  (``lean_phase``) posts REST Publish, ``--concurrency`` (32) workers, the
  two states of a presentity alternating (every request after the first a
  modify with SIP-If-Match).  Phases alternate: **one** — every worker on
  node a, over presentities ``p<i>``; **two** — half of the workers on node
  a, half on node b, over presentities ``q<i>`` split in two halves, each
  half always through the same node (what a load balancer keyed on the
  presentity does; a call for a presentity another node owns is passed to
  it, an extra hop this keeps out).  Node b idles during **one**.  A third
  side, **raw**, is rest_publish.py's raw SIP PUBLISH sender straight to
  Kamailio at the same concurrency: the presence server's own ceiling.
  Printed: ok/s, the ratio to one, p50/p99, and the CPU per 1,000 requests and as
  cores busy of each process tree (the nodes, Kamailio, Kamailio's
  PostgreSQL, the store's PostgreSQL, Redis, this script): where the
  ceiling is.
* ``latency`` — bench/notify_latency.py's sides, in one cluster, both sets
  of CometD clients (``notify_latency_clients.mjs``) connected to node a:
  **one node** — applications ``app<i>`` whose watches (of ``p<i>``) were
  made through node a, which holds their SIP subscriptions: the
  notification stays on node a; **two nodes** — applications ``xapp<i>``
  whose watches (of ``p<apps+i>``) were made through node b: each NOTIFY
  reaches node b and its notification crosses to node a's Bayeux session
  through Redis; **no cluster** — a third adapter, alone (no ``[cluster]``,
  its SQLite store), with applications ``sapp<i>`` watching ``p<2*apps+i>``:
  today's single node, the baseline.  The raw SIP peer
  (notify_latency_sip.py) changes the three sets in one round-robin,
  ``--rate`` per side, so all sides meet the same load in the same
  seconds.  Printed as notify_latency.py prints it: publish→NOTIFY,
  NOTIFY→Bayeux and publish→Bayeux per side, then the ratios two/one,
  one/alone and two/alone.  The CPU shown per side is the process holding
  its SIP subscriptions (node a, node b, the lone adapter); node a also
  serves the two nodes side's Bayeux sessions, so the cluster's CPU per
  change is printed too: nodes a and b over both sides' changes.
  ``--reference DIR`` adds a second cluster run from the source tree DIR
  (its nodes get ``PYTHONPATH=DIR``), its own one node and two nodes sides
  in the same seconds; ``--profile DIR`` runs py-spy on every node over the
  measured rounds.
* ``failover`` — ``--watches`` (10,000) Subscribe Presence calls of one
  application through node a (one watcher, presentities ``f<i>``; no
  pres-rules, so every watch is pending: the server answers and notifies
  all the same), then, once node a holds every SIP subscription notified,
  ``kill -9`` of node a.  Node b's /metrics are read every ``--poll`` s
  (0.2): its presence subscriptions in state pending or active, i.e. those
  that got their first NOTIFY.  Printed per ``--leases`` value (10 and 2
  s, a cluster each): the time from the kill until 50/90/99 % and all of
  the watches notified again (at the poll's resolution), when node b
  started (the first one back), and the CPU during the takeover.

The load average is printed with every figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for folder in (REPO, BENCH):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # tests.* and the sibling benchmarks

import notify_latency  # noqa: E402
from pg_presence_server import PgPresenceServer, pg_presence_server  # noqa: E402
from rest_publish import (  # noqa: E402
    CpuMeter,
    RestPresentity,
    RestWindow,
    json_bodies,
    lean_phase,
    pidf_bodies,
    raw_phase,
    tree_cpu,
)
from sip_publish import RawPresentity, Totals  # noqa: E402

from tests.adapter_process import AdapterProcess, AppAccount  # noqa: E402
from tests.cluster_nodes import ClusterNodes  # noqa: E402

HOST = "127.0.0.1"
DOMAIN = "bench.example.com"
PASSWORD = "bench-secret"
PROCESSES = ("a", "b", "kamailio", "pg-kamailio", "pg-store", "redis", "bench")
#: Printed beside them: the whole machine's CPU (every process, other sessions'
#: too), and what of it none of ours used.
MACHINE = ("machine", "others")


def machine_busy() -> float:
    """CPU seconds the machine spent not idle, over all its cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class MachineMeter(CpuMeter):
    """A CpuMeter that also meters the whole machine, as ``machine``."""

    _machine: float = 0.0

    def open(self) -> None:
        super().open()
        self._machine = machine_busy()

    def close(self) -> None:
        if self._start is not None:
            self.used["machine"] += machine_busy() - self._machine
        super().close()


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def roots(server: PgPresenceServer, cluster: ClusterNodes) -> dict[str, int]:
    """Every process whose CPU is metered (each with its children), by name."""
    found = {"bench": os.getpid()}
    for name, node in zip(cluster.names, cluster.nodes, strict=True):
        if node.process is not None:
            found[name] = node.process.pid
    pids = {
        "kamailio": server.pid,
        "pg-kamailio": server.cluster.pid if server.cluster else None,
        "pg-store": cluster.postgres.pid if cluster.postgres else None,
        "redis": cluster.redis.pid if cluster.redis else None,
    }
    found.update({name: pid for name, pid in pids.items() if pid is not None})
    return found


def only(names: tuple[str, ...], found: dict[str, int]) -> dict[str, int]:
    return {name: pid for name, pid in found.items() if name in names}


# ---------------------------------------------------------------- publish


@dataclass
class Side:
    name: str
    totals: Totals = field(default_factory=Totals)
    cpu: Counter[str] = field(default_factory=Counter)
    loads: list[float] = field(default_factory=list)


async def publish_phase(
    args: argparse.Namespace,
    server: PgPresenceServer,
    cluster: ClusterNodes,
    shares: list[tuple[AdapterProcess, list[RestPresentity]]],
    first_pass: bool,
) -> tuple[int, float, list[float], Counter[str], Counter[str]]:
    """One phase: ``lean_phase`` on every (node, presentities) share at once.

    The first share's meter holds every process but the other nodes; each
    other share's meter holds its own node only, so nothing counts twice.
    """
    every = roots(server, cluster)
    nodes = dict(zip(cluster.names, cluster.nodes, strict=True))
    workers = args.concurrency // len(shares)
    windows, meters, phases = [], [], []
    for k, (node, presentities) in enumerate(shares):
        name = next(n for n, p in nodes.items() if p is node)
        others = {n for n in nodes if n != name}
        mine = (
            {n: pid for n, pid in every.items() if n not in others}
            if k == 0 else {name: every[name]}
        )
        window = RestWindow(args.warmup, args.duration, None,
                            len(presentities) if first_pass else 0)
        meter = MachineMeter(mine) if k == 0 else CpuMeter(mine)
        windows.append(window)
        meters.append(meter)
        phases.append(lean_phase(node, presentities, workers, window, meter))
    await asyncio.gather(*phases)
    ok = sum(w.ok for w in windows)
    seconds = max(w.elapsed for w in windows)
    latencies = [v for w in windows for v in w.latencies]
    errors: Counter[str] = Counter()
    cpu: Counter[str] = Counter()
    for window, meter in zip(windows, meters, strict=True):
        errors.update(window.errors)
        cpu.update(meter.used)
    return ok, seconds, latencies, errors, cpu


async def raw_side(
    args: argparse.Namespace,
    server: PgPresenceServer,
    cluster: ClusterNodes,
    presentities: list[RawPresentity],
    first_pass: bool,
) -> tuple[int, float, list[float], Counter[str], Counter[str]]:
    """rest_publish.py's raw SIP PUBLISH sender straight to Kamailio: its ceiling."""
    window = RestWindow(args.warmup, args.duration, None, len(presentities) if first_pass else 0)
    meter = MachineMeter({n: pid for n, pid in roots(server, cluster).items()
                          if n not in cluster.names})
    await raw_phase(server.sip_address, presentities, args.concurrency, window, meter)
    return window.ok, window.elapsed, window.latencies, window.errors, meter.used


def publish_part(args: argparse.Namespace, server: PgPresenceServer, directory: Path) -> None:
    n = args.presentities
    one = tuple(f"sip:p{i}@{DOMAIN}" for i in range(n))
    two = tuple(f"sip:q{i}@{DOMAIN}" for i in range(n))
    account = AppAccount("bench-app", PASSWORD, one + two)
    with ClusterNodes(directory / "publish", [account], count=2, lease=args.lease,
                      presence=server) as cluster:
        a, b = cluster.nodes
        print(f"publish: nodes {a.url} {b.url}; {args.concurrency} clients; "
              f"{args.rounds} rounds of {args.duration:g} s per side; {load()}", flush=True)
        rest = {address: RestPresentity(address, json_bodies(i % n))
                for i, address in enumerate(one + two)}
        plans = {
            "one": [(a, [rest[x] for x in one])],
            "two": [(a, [rest[x] for x in two[: n // 2]]), (b, [rest[x] for x in two[n // 2:]])],
        }
        raw = [RawPresentity(aor, pidf_bodies(aor, i))
               for i, aor in enumerate(f"sip:r{i}@{DOMAIN}" for i in range(n))]
        sides = {name: Side(name) for name in ("raw", *plans)}
        for round_no in range(args.rounds):
            for name in sides:
                first = round_no == 0
                ok, seconds, latencies, errors, cpu = asyncio.run(
                    raw_side(args, server, cluster, raw, first) if name == "raw"
                    else publish_phase(args, server, cluster, plans[name], first)
                )
                side = sides[name]
                side.totals.ok += ok
                side.totals.seconds += seconds
                side.totals.latencies.extend(latencies)
                side.totals.errors.update(errors)
                side.cpu.update(cpu)
                side.loads.append(os.getloadavg()[0])
                print(f"  round {round_no + 1} {name}: {ok / seconds:7.0f} ok/s  "
                      f"errors {dict(errors) or 0}  {load()}", flush=True)
        warnings = [line for node in cluster.nodes for line in node.log_tail(100_000).splitlines()
                    if " WARNING " in line or " ERROR " in line]
    print()
    print(f"Publish, lean HTTP clients, {args.concurrency} at once, PostgreSQL-backed Kamailio, "
          "adapter store on PostgreSQL, Redis")
    header = (f"{'nodes':<5} {'ok/s':>6} {'ratio':>5} {'err/s':>5} {'p50':>6} {'p99':>6}  "
              + " ".join(f"{p:>11}" for p in PROCESSES + MACHINE))
    print("latency ms; per process: CPU ms per 1,000 ok / cores busy; machine: every "
          f"process on its {os.cpu_count()} cores, others: the machine's less ours")
    print(header)
    print("-" * len(header))
    base = sides["one"].totals.ok_rate
    print("ratio: to one node; raw: SIP PUBLISH straight to Kamailio, same concurrency")
    for side in sides.values():
        t = side.totals
        cells = []
        ours = sum(side.cpu.get(process, 0.0) for process in PROCESSES)
        machine = side.cpu.get("machine", 0.0)
        for process in PROCESSES + MACHINE:
            used = side.cpu.get(process, 0.0) if process != "others" else machine - ours
            cells.append(f"{used * 1e6 / t.ok if t.ok else 0:>5.0f}/{used / t.seconds:>5.2f}")
        print(f"{side.name:<5} {t.ok_rate:>6.0f} {t.ok_rate / base if base else 0:>5.2f} "
              f"{t.error_rate:>5.0f} {t.percentile(50):>6.2f} {t.percentile(99):>6.2f}  "
              + " ".join(f"{c:>11}" for c in cells))
    for side in sides.values():
        print(f"{side.name}: errors {dict(side.totals.errors) or 0}; 1-min load after each "
              f"round {', '.join(f'{v:.2f}' for v in side.loads)}")
    print(f"nodes' log: {len(warnings)} warnings/errors" + (f", last: {warnings[-1]}"
                                                            if warnings else ""))


# ---------------------------------------------------------------- latency


def latency_part(args: argparse.Namespace, server: PgPresenceServer, directory: Path) -> None:
    """bench/notify_latency.py's sides, both Bayeux sessions on node a: **one** —
    its watches through node a too; **two** — its watches through node b, so
    every notification crosses from node b to node a (Redis); with
    ``--reference``, the same two sides again in a cluster run from that tree."""
    nl = notify_latency
    apps = args.apps
    clusters = [("", "app", "xapp", None)]
    if args.reference is not None:
        clusters.append((" (ref)", "rapp", "rxapp", {"PYTHONPATH": str(args.reference)}))
    alone_prefix = "sapp"
    # Presentities p<k*apps+i>, k by side: one, two, [ref one, ref two,] alone.
    prefixes = [prefix for _tag, one, two, _env in clusters for prefix in (one, two)]
    prefixes.append(alone_prefix)
    nl.write_rules(server, len(prefixes) * apps)
    (directory / "alone").mkdir()
    alone = AdapterProcess.for_server(
        directory / "alone", server,
        [AppAccount(f"{alone_prefix}{i}", nl.PASSWORD,
                    (nl.watcher((len(prefixes) - 1) * apps + i),)) for i in range(apps)],
    )
    with contextlib.ExitStack() as stack:
        sides: list[nl.Side] = []
        nodes: list[tuple[AdapterProcess, AdapterProcess]] = []
        for k, (tag, one, two, env) in enumerate(clusters):
            accounts = [AppAccount(f"{prefix}{i}", nl.PASSWORD,
                                   (nl.watcher((2 * k + j) * apps + i),))
                        for j, prefix in enumerate((one, two)) for i in range(apps)]
            cluster = stack.enter_context(ClusterNodes(
                directory / f"latency{k}", accounts, count=2, lease=args.lease,
                presence=server, env=env))
            a, b = cluster.nodes
            nodes.append((a, b))
            sides.append(nl.Side(f"one node{tag}", a,
                                 nl.BayeuxClients(f"{a.url}/cometd", apps, one),
                                 2 * k * apps, apps))
            sides.append(nl.Side(f"two nodes{tag}", b,
                                 nl.BayeuxClients(f"{a.url}/cometd", apps, two),
                                 (2 * k + 1) * apps, apps))
        alone.start(healthy=True)
        sides.append(nl.Side("no cluster", alone,
                             nl.BayeuxClients(f"{alone.url}/cometd", apps, alone_prefix),
                             (len(prefixes) - 1) * apps, apps))
        peer = None
        profilers: list[subprocess.Popen[bytes]] = []
        try:
            for side, prefix in zip(sides, prefixes, strict=True):
                async def setup(side: nl.Side = side, prefix: str = prefix) -> None:
                    await side.clients.wait_ready(60)
                    await nl.watch_all(side.adapter, apps, side.offset, prefix)
                asyncio.run(setup())
            for side in sides:
                threading.Thread(target=side.clients.read_forever, daemon=True).start()
            peer = nl.RawPeer(server, len(sides) * apps, len(sides) * apps,
                              args.latency_concurrency)
            failed = peer.ready()
            if failed:
                print(f"raw peer set-up: {len(failed)} failures {failed[:5]}", flush=True)
            print(f"latency: {apps} presentities per side, {args.rate:g} changes/s per side, "
                  f"sides {', '.join(side.label for side in sides)}; {load()}", flush=True)
            kept: list[list[nl.Phase]] = [[] for _ in sides]
            plan = [("warmup", args.latency_warmup)]
            plan += [(f"round{r + 1}", args.latency_duration) for r in range(args.rounds)]
            first = 0
            for name, seconds in plan:
                if name == "round1" and args.profile is not None:
                    profilers = profile(args, nodes, (seconds + 1.5) * args.rounds)
                results = nl.run_phase(name, args.rate, peer, sides, seconds, first, drain=1.0)
                first += 10_000_000
                print(f"  {name}: " + "; ".join(
                    f"{side.label} CPU {phase.cpu:.0%} ({phase.cpu_per_change:.0f} µs/change)"
                    for side, phase in zip(sides, results, strict=True)
                ) + f"; {load()}", flush=True)
                if name != "warmup":
                    for mine, phase in zip(kept, results, strict=True):
                        mine.append(phase)
            for side in sides:
                nl.settle(side.clients)
            for side, mine in zip(sides, kept, strict=True):
                for phase in mine:
                    nl.measure(phase, side.clients)
                nl.summarise(side, mine)
            for side, mine in zip(sides, kept, strict=True):
                missed, seen_raw = lost_changes(mine, side.clients)
                print(f"  {side.label}: {missed} changes never reached the Bayeux client, "
                      f"{seen_raw} of them reached the raw SIP watcher (the rest: no NOTIFY "
                      "carried them, the server's)")
            shown = argparse.Namespace(apps=apps, concurrency=args.latency_concurrency)
            for side, mine in zip(sides, kept, strict=True):
                nl.report(mine, shown, f"{side.label}: ")
            alone_k = len(sides) - 1
            pairs = [(1, 0), (0, alone_k), (1, alone_k)]
            if args.reference is not None:
                pairs += [(0, 2), (1, 3)]
            for current, reference in pairs:
                print(f"(below: current = {sides[current].label}, "
                      f"reference = {sides[reference].label})")
                nl.compare(kept[current], kept[reference])
            print()
            lone = statistics.fmean(p.cpu_per_change for p in kept[alone_k])
            for k, (tag, *_rest) in enumerate(clusters):
                # Node a's CPU over the one node side's changes, node b's over the
                # two nodes side's: both sides' changes, equal in number.
                both = [p.cpu_per_change for p in kept[2 * k] + kept[2 * k + 1]]
                per_change = statistics.fmean(both)
                print(f"cluster{tag}: nodes a + b CPU per change {per_change:.0f} µs, "
                      f"{per_change / lone:.2f}× the lone adapter's {lone:.0f} µs")
            for (tag, *_rest), pair in zip(clusters, nodes, strict=True):
                lines = [line for node in pair for line in node.log_tail(100_000).splitlines()
                         if " WARNING " in line or " ERROR " in line]
                print(f"cluster{tag} nodes' log: {len(lines)} warnings/errors"
                      + (f", last: {lines[-1]}" if lines else ""))
        finally:
            for process in profilers:
                process.wait()
            if peer is not None:
                peer.stop()
            for side in sides:
                side.clients.stop()
            alone.stop()


def lost_changes(phases: list[notify_latency.Phase], clients: notify_latency.BayeuxClients
                 ) -> tuple[int, int]:
    """Changes the server took that the Bayeux client never got, and how many of
    those the raw watcher got (a NOTIFY carried them: lost past the server)."""
    missed = seen_raw = 0
    for phase in phases:
        raw = {seq for seq, _sent, _arrived in phase.result["notified"]}
        for seq, _index, _sent, status in phase.result["sent"]:
            if status is not None and 200 <= status < 300 and seq not in clients.received:
                missed += 1
                seen_raw += seq in raw
    return missed, seen_raw


def profile(
    args: argparse.Namespace, nodes: list[tuple[AdapterProcess, AdapterProcess]],
    seconds: float,
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every node over the measured rounds: collapsed stacks, a file each."""
    started = []
    for k, pair in enumerate(nodes):
        for name, node in zip("ab", pair, strict=True):
            assert node.process is not None
            out = Path(args.profile) / f"{'ref-' if k else ''}{name}.txt"
            started.append(subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "py-spy"), "record", "--format", "raw",
                 "--rate", "200", "-o", str(out), "--pid", str(node.process.pid),
                 "--duration", str(int(seconds) + 1)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
    return started


# ---------------------------------------------------------------- failover


def notified(node: AdapterProcess) -> int:
    """Node's presence subscriptions that got a NOTIFY (pending or active), from /metrics."""
    text = httpx.get(f"{node.url}/metrics", timeout=10).text
    total = 0
    for line in text.splitlines():
        if line.startswith('presence_adapter_subscriptions{event="presence",state="') and (
            'state="pending"' in line or 'state="active"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def subscribe_all(node: AdapterProcess, account: str, count: int, concurrency: int) -> None:
    queue = list(range(count))

    async def worker() -> None:
        async with node.async_client(account) as http:
            while queue:
                i = queue.pop()
                for _attempt in range(5):
                    reply = await http.post("/rest/presence/subscription", json={
                        "application": "failover bench",
                        "presentity": f"sip:f{i}@{DOMAIN}",
                        "attributes": ["Activity"],
                        "reference": {"correlator": f"s{i}", "endpoint": f"/bayeux/{account}/s"},
                    }, timeout=60)
                    if reply.status_code != 503:
                        break
                    # Busy or the store briefly unavailable: as asked, later.
                    await asyncio.sleep(float(reply.headers.get("Retry-After", "1")))
                if reply.status_code != 204:
                    raise RuntimeError(f"Subscribe Presence f{i}: {reply.status_code} {reply.text}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def wait_for(what: str, check: object, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def failover_part(
    args: argparse.Namespace, server: PgPresenceServer, directory: Path, lease: float
) -> None:
    account = AppAccount("fail-app", PASSWORD, (f"sip:fw@{DOMAIN}",))
    with ClusterNodes(directory / f"failover-{lease:g}", [account], count=2, lease=lease,
                      presence=server) as cluster:
        a, b = cluster.nodes
        started = time.monotonic()
        asyncio.run(subscribe_all(a, account.id, args.watches, args.setup_concurrency))
        wait_for("node a's watches notified", lambda: notified(a) >= args.watches, 300)
        print(f"failover, lease {lease:g} s: {args.watches} watches on node a in "
              f"{time.monotonic() - started:.1f} s; {load()}", flush=True)
        before_b = notified(b)
        every = roots(server, cluster)
        metered = {n: pid for n, pid in every.items() if n != "a"}
        cpu_before = tree_cpu(metered)
        load_before = load()
        assert a.process is not None
        a.kill()
        killed = time.monotonic()
        series: list[tuple[float, int]] = []
        limit = killed + args.failover_timeout
        count = 0
        while count < args.watches and time.monotonic() < limit:
            count = notified(b) - before_b
            series.append((time.monotonic() - killed, count))
            time.sleep(args.poll)
        cpu_after = tree_cpu(metered)
        wall = time.monotonic() - killed
        load_after = load()
    first = next((t for t, c in series if c > 0), None)

    def reached(fraction: float) -> str:
        need = fraction * args.watches
        at = next((t for t, c in series if c >= need), None)
        return "never" if at is None else f"{at:.1f}"

    busy = ", ".join(
        f"{n} {(cpu_after[n] - cpu_before[n]) / wall:.2f}" for n in metered if n != "bench"
    )
    print(f"  lease {lease:g} s, {args.watches} watches: notified again after kill -9 — "
          f"first {'never' if first is None else f'{first:.1f}'} s, p50 {reached(0.5)} s, "
          f"p90 {reached(0.9)} s, p99 {reached(0.99)} s, all {reached(1.0)} s "
          f"({count} of {args.watches} at the end)")
    print(f"  cores busy over those {wall:.1f} s: {busy}")
    print(f"  before the kill {load_before}; after {load_after}", flush=True)


# ---------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--parts", default="publish,latency,failover",
                        help="comma-separated: publish, latency, failover (default all)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="publish: measured seconds per side per round (10)")
    parser.add_argument("--rounds", type=int, default=3, help="publish: alternations (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="publish: per phase (1 s)")
    parser.add_argument("--concurrency", type=int, default=32, help="publish: clients (32)")
    parser.add_argument("--presentities", type=int, default=1000,
                        help="publish: presentities per side (1,000)")
    parser.add_argument("--lease", type=float, default=10.0,
                        help="publish and latency: [cluster] lease (10 s, the default)")
    parser.add_argument("--apps", type=int, default=50,
                        help="latency: presentities (one application each) per side (50)")
    parser.add_argument("--rate", type=float, default=200,
                        help="latency: changes/s per side (200)")
    parser.add_argument("--latency-duration", type=float, default=10,
                        help="latency: measured seconds per round (10; --rounds rounds)")
    parser.add_argument("--latency-warmup", type=float, default=35,
                        help="latency: unmeasured seconds first (35: past Timer J's 32 s)")
    parser.add_argument("--latency-concurrency", type=int, default=4,
                        help="latency: PUBLISHes the raw peer keeps outstanding (4)")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="latency: also a cluster run from the source tree DIR "
                             "(git archive REV | tar -x -C DIR), its two sides beside ours")
    parser.add_argument("--profile", metavar="DIR",
                        help="latency: py-spy (collapsed stacks) on every node over the "
                             "measured rounds, DIR/a.txt, DIR/b.txt (DIR/ref-a.txt, …)")
    parser.add_argument("--watches", type=int, default=10_000, help="failover: watches (10,000)")
    parser.add_argument("--leases", default="10,2",
                        help="failover: [cluster] lease values, a cluster each (10,2)")
    parser.add_argument("--setup-concurrency", type=int, default=32,
                        help="failover: Subscribe Presence calls at once (32)")
    parser.add_argument("--poll", type=float, default=0.2, help="failover: /metrics every (s)")
    parser.add_argument("--failover-timeout", type=float, default=600.0,
                        help="failover: give up after (s)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or set(args.parts) - {"publish", "latency", "failover"}:
        parser.error("--parts: among publish, latency, failover")
    if args.reference is not None:
        args.reference = args.reference.resolve()
        if not (args.reference / "adapter" / "cli.py").is_file():
            parser.error(f"--reference: {args.reference} holds no adapter/cli.py")
    if args.profile is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    args.leases = [float(v) for v in args.leases.split(",") if v.strip()]
    if args.concurrency < 2 or args.concurrency % 2 or args.presentities < args.concurrency:
        parser.error("--concurrency: even, at least 2, at most --presentities")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"start: {load()}", flush=True)
    directory = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        with pg_presence_server(HOST) as server:
            print(f"presence server {server.sip_uri} (pid {server.pid}, {server.db_url})",
                  flush=True)
            if "publish" in args.parts:
                publish_part(args, server, directory)
            if "latency" in args.parts:
                latency_part(args, server, directory)
            if "failover" in args.parts:
                for lease in args.leases:
                    failover_part(args, server, directory, lease)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
