"""CPU of a pres-rules read, the whole path, against a real presence server: two trees.

    .venv/bin/python bench/rules_read_cost.py --reference DIR       # about a minute
    .venv/bin/python bench/rules_read_cost.py --reference DIR --pairs 3 --presentities 2000
    .venv/bin/python bench/rules_read_cost.py --profile prof.out    # cProfile, this tree

A PostgreSQL-backed presence server (bench/pg_presence_server.py, as
bench/scale_adapter.py uses) holds ``--presentities`` pres-rules documents,
each naming ``--watchers`` watchers and granting them everything.  A child
process imports ``adapter`` from its tree (``PYTHONPATH``) and, per round,
activates one watch of every presentity in a ``WatchMachine`` (subscribed,
accepted, a NOTIFY ``active`` with a PIDF body; a new watcher each round, the
clock moved past the rules' age limit), so that each activation asks for a
read; the reads are performed as adapter/watcher.py performs them (a queue,
one reader task per XCAP connection, ``XcapClient.get``), and each answer goes
back to the machine (``rules_read``: the watch takes its decisions, tells
them, settles).  Timed from the first read to the last answer taken (the
activations before are not counted); the best of ``--rounds`` rounds is kept.

Printed per run: reads, reads/s, the child's CPU per read (µs: everything
the process did over the round, divided by the reads), and the presence
server's and PostgreSQL's CPU per read over the whole child run (setting up
the machine makes no request).  Reads/s against the three CPUs tells which
limits: a process near one core (``busy`` %) is the limit.  With
``--reference DIR`` (``git archive REV | tar -x -C DIR``) the two trees' runs
alternate ``--pairs`` times; printed: every run, each side's median, the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
#: bench/scale_adapter.py's names, as its write_rules writes them.
DOMAIN = "bench.example.com"


def watcher(i: int) -> str:
    return f"sip:w{i}@{DOMAIN}"


def presentity(q: int) -> str:
    return f"sip:p{q}@{DOMAIN}"


# ---------------------------------------------------------------- the child


async def rounds(args: argparse.Namespace) -> dict[str, float]:
    from datetime import UTC, datetime

    from adapter.watch import ReadRules, Reference, WatchMachine
    from adapter.xcap import CONNECTIONS, XcapClient
    from pidf import Activity, PresenceAttribute, encode
    from sip import NotifyReceived
    from sip.headers import SubscriptionState

    machine = WatchMachine()
    xcap = XcapClient(args.xcap_root)
    now = time.time()
    best = {"cpu": float("inf"), "wall": 0.0, "reads": 0.0}
    sid = 0
    try:
        for number in range(args.rounds + 1):  # the first warms up
            now += 120.0  # past every age limit: each activation asks for a read
            queue: deque[Any] = deque()
            reads_before = xcap.requests.get(("GET", "pres-rules"), 0)
            for q in range(args.presentities):
                watch, _ = machine.subscribe(
                    "app", watcher(number), presentity(q), "app", frozenset(),
                    Reference(f"r{q}.{number}", "/bayeux/app/subscription"),
                )
                machine.ensure_subscribed(watch)
                sid += 1
                machine.subscription_sent(watch, sid)
                machine.subscription_accepted(watch, sid)
                body = encode([PresenceAttribute(Activity.BUSY)], entity=presentity(q),
                              now=datetime.now(UTC))
                event = NotifyReceived(sid, SubscriptionState.parse("active;expires=600"), body,
                                       "application/pidf+xml")
                queue.extend(a.read for a in machine.notify(watch, event, now)
                             if isinstance(a, ReadRules))

            # The activations above are not the reads' cost: timed from here.
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(reader(machine, xcap, queue, now) for _ in range(CONNECTIONS)))
            cpu = time.process_time() - started_cpu
            wall = time.perf_counter() - started_wall
            reads = xcap.requests.get(("GET", "pres-rules"), 0) - reads_before
            if number and reads and cpu / reads < best["cpu"] / max(best["reads"], 1):
                best = {"cpu": cpu, "wall": wall, "reads": float(reads)}
    finally:
        await xcap.close()
    return best


async def reader(machine: Any, xcap: Any, queue: deque[Any], now: float) -> None:
    """Reads as adapter/watcher.py's readers take them: in turn, each begun
    when taken (where the tree has that step), its answer to the machine."""
    from adapter.watch import ReadRules
    from adapter.xcap import XcapError

    begun = getattr(machine, "read_begun", None)
    while queue:
        read = queue.popleft()
        if begun is not None:
            read = begun(read, now)
        try:
            rules = (await xcap.get(read.presentity)).rules
        except XcapError as exc:
            actions = machine.rules_failed(read, exc, now)
        else:
            actions = machine.rules_read(read, rules, now)
        queue.extend(a.read for a in actions if isinstance(a, ReadRules))


def child(args: argparse.Namespace) -> None:
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    best = asyncio.run(rounds(args))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print(json.dumps(best))


# ---------------------------------------------------------------- the parent


def run(tree: Path, args: argparse.Namespace, roots: dict[str, int]) -> dict[str, float]:
    from scale_adapter import cpu_seconds, tree_pids

    command = [
        sys.executable, __file__, "--child", "--xcap-root", args.xcap_root,
        "--presentities", str(args.presentities), "--rounds", str(args.rounds),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = {name: cpu_seconds(tree_pids(pid)) for name, pid in roots.items()}
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode:
        raise SystemExit(f"{tree}: the run failed\n{out.stderr[-3000:]}")
    after = {name: cpu_seconds(tree_pids(pid)) for name, pid in roots.items()}
    best: dict[str, float] = json.loads(out.stdout.split("\n")[-2])
    # Every round makes the same reads: the servers' CPU over the child's run per read.
    total_reads = best["reads"] * (args.rounds + 1)
    for name in roots:
        best[name] = (after[name] - before[name]) / total_reads
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presentities", type=int, default=2000,
                        help="presentities (one read each per round)")
    parser.add_argument("--watchers", type=int, default=10,
                        help="watchers each presentity's rules name (the rounds use them in turn)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--reference", type=Path, metavar="DIR")
    parser.add_argument("--profile", metavar="FILE", help="cProfile this tree's run into FILE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--xcap-root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.rounds + 1 > args.watchers:
        parser.error("--watchers must exceed --rounds (a new watcher each round)")
    if args.reference is not None and not (args.reference / "adapter" / "watch.py").is_file():
        parser.error(f"--reference: {args.reference} holds no adapter/watch.py")
    # Here only, not in the child: scale_adapter puts this tree first on sys.path.
    for folder in (str(REPO), str(HERE)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    from pg_presence_server import pg_presence_server
    from scale_adapter import write_rules

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at "
          f"{time.strftime('%H:%M:%S', time.gmtime())} UTC; {args.presentities:,} reads "
          f"a round, best of {args.rounds}", flush=True)
    with pg_presence_server(HOST) as server:
        args.xcap_root = server.xcap_root
        # scale_adapter's rules: watcher i for every presentity (the rounds take them in turn).
        shape = argparse.Namespace(watchers=args.watchers, per_watcher=args.presentities,
                                   publications=args.presentities)
        asyncio.run(write_rules(server.xcap_root, shape))
        assert server.pid is not None
        roots = {"kamailio": server.pid}
        cluster = getattr(server, "cluster", None)
        if cluster is not None and cluster.pid is not None:
            roots["postgres"] = cluster.pid
        if args.profile:
            args.child = True
            child(args)
            return
        sides = {"this tree": REPO}
        if args.reference is not None:
            sides["reference"] = args.reference.resolve()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for pair in range(args.pairs):
            order = list(sides.items()) if pair % 2 == 0 else list(sides.items())[::-1]
            for name, tree in order:
                best = run(tree, args, roots)
                runs[name].append(best)
                rate = best["reads"] / best["wall"]
                busy = best["cpu"] / best["wall"]
                print(f"  {name}: {best['reads']:,.0f} reads, {rate:,.0f}/s; µs of CPU per "
                      f"read: adapter {1e6 * best['cpu'] / best['reads']:,.0f} "
                      f"(busy {100 * busy:.0f} %), "
                      + ", ".join(f"{n} {1e6 * best[n]:,.0f}" for n in roots), flush=True)
        medians = {}
        for name, results in runs.items():
            per_read = [1e6 * r["cpu"] / r["reads"] for r in results]
            rates = [r["reads"] / r["wall"] for r in results]
            medians[name] = statistics.median(per_read)
            print(f"{name}: median {medians[name]:,.0f} µs of adapter CPU per read "
                  f"({min(per_read):,.0f}–{max(per_read):,.0f}), "
                  f"{statistics.median(rates):,.0f} reads/s")
        if args.reference is not None:
            print(f"this tree / reference: {medians['this tree'] / medians['reference']:.2f}")


if __name__ == "__main__":
    main()
