"""A group watch against single subscriptions: the adapter's CPU per member change.

    .venv/bin/python bench/group_members.py                 # about 4 minutes
    .venv/bin/python bench/group_members.py --members 200 --rate 50 --warmup 10 --duration 10

Issue #15's benchmark.  One run starts, on free loopback ports and in
temporary directories: a PostgreSQL-backed presence server
(pg_presence_server.py; its resource list server, rls, keeps its own tables
in db_text as the bundled one does), two adapter processes (``presence-adapter
serve``, tests/adapter_process.py), one CometD JavaScript client per adapter
(notify_latency_clients.mjs, websocket) and the raw SIP peer of
notify_latency.py (notify_latency_sip.py, none of ``sip/``) as the members'
phones:

* **group** — application ``app0`` acting as ``sip:wg@…`` calls Start
  Presence Notification once, on the group URI ``sip:group@…``: the list of
  ``--members`` (1,000) members in wg's rls-services document (written over
  XCAP).  Kamailio's rls holds one back-end subscription per member and sends
  the adapter RFC 4662 list NOTIFYs, a batch of members each.
* **single** — application ``app0`` of the other adapter, acting as
  ``sip:ws@…``, calls Start Presence Notification once per member: as many
  subscriptions and NOTIFYs as members and changes.

Every member's pres-rules allow both watchers everything.  Both sides: frequency
0, count unlimited, attribute Activity, no checkImmediate.

Measured: the raw peer changes the members round-robin (SIP-If-Match, each
note stamped with a sequence number) at ``--rate`` changes/s for
``--duration`` s per round, after ``--warmup`` s of the same load; each
round's window runs until ``--drain`` s after the last PUBLISH (rls sends its
batches every second).  Per round and side: the adapter's CPU time (/proc,
user + system) over the window divided by the changes the server accepted,
the statusChanged its client received, the ratio single/group.  Before the
load, an idle window of the same kind (``--idle`` s) shows what each adapter
spends on nothing.  At the end, ``--heal`` s after the last round (time for
the group adapter's list check to have Kamailio send every member's state
again: tests/data/rls/README.md): per side, the members whose last change
never reached the application, and duplicates.  The CPU of Kamailio and PostgreSQL
(process trees) is shown too: one server serves both sides, so it is not split.

Why two adapters side by side rather than one adapter in alternating phases:
the same PUBLISH reaches both sides at the same moment, so they see exactly
the same changes from the same server under the same load.  One adapter
holding both kinds of watch would receive every change twice and its CPU
could not be split; alternating phases would mean ending and re-creating
1,000 subscriptions (or the list, with its 1,000 back-end SUBSCRIBEs inside
Kamailio) between phases, set-up work that would spill into the next
measured window.  The price: the two adapters share the machine's cores with
the server, which shows in latency, not in CPU time per process.

Needs PostgreSQL and kamailio-postgres-modules (pg_presence_server.py
installs them as root), node and tests/interop/node_modules (scripts/setup).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for where in (str(REPO), str(HERE)):
    if where not in sys.path:
        sys.path.insert(0, where)  # tests.* and the sibling bench scripts are not installed

from fanout_e2e import tree_cpu_seconds  # noqa: E402
from notify_latency import (  # noqa: E402
    PASSWORD,
    BayeuxClients,
    RawPeer,
    cpu_seconds,
)
from pg_presence_server import PgPresenceServer, pg_presence_server  # noqa: E402
from procfs import udp_drops  # noqa: E402
from sip_publish import kamailio_config  # noqa: E402

from tests.adapter_process import AdapterProcess, AppAccount  # noqa: E402
from tests.groups import put_pres_rules, put_rls_services  # noqa: E402

#: Short addresses.  With notify_latency.py's ``sip:p<i>@bench.example.com``
#: Kamailio cuts the full state of 1,000 members in two NOTIFYs (983 + 17,
#: tests/data/rls/split-full-*), which the group watch does not take yet
#: (tests/integration/test_group_scale.py::test_a_list_whose_full_state_the_server_splits);
#: ``sip:p<i>@b.example`` makes 1,000 fit in one.
DOMAIN = "b.example"
MEMBER = "sip:p{}@" + DOMAIN
GROUP = f"sip:group@{DOMAIN}"
KAMAILIO_CFG = REPO / "conf" / "kamailio" / "kamailio.cfg"
#: Kamailio builds each SQL statement in a buffer of ``sql_buffer_size`` bytes
#: (65,535 by default) and db_postgres writes a document there as escaped
#: bytea, about twice its size: an rls-services document of 800 members
#: (35 KB) is refused with 500 ("destination buffer too short for blob").
SQL_BUFFER = 262144
SIDES = ("group", "single")
WATCHERS = {"group": f"sip:wg@{DOMAIN}", "single": f"sip:ws@{DOMAIN}"}


@dataclass
class Side:
    name: str
    adapter: AdapterProcess
    clients: BayeuxClients

    @property
    def pid(self) -> int:
        assert self.adapter.process is not None
        return self.adapter.process.pid


@dataclass
class Window:
    """One measured window: seconds, changes accepted, CPU seconds by process."""

    name: str
    wall: float = 0.0
    changes: int = 0
    failed: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    sent: list[list[object]] = field(default_factory=list)


# ------------------------------------------------------------------ set-up


def write_documents(server: PgPresenceServer, members: list[str], concurrency: int) -> float:
    """Every member's pres-rules (both watchers), then wg's rls-services; seconds taken."""
    started = time.monotonic()
    watchers = list(WATCHERS.values())
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda m: put_pres_rules(server.xcap_root, m, watchers), members))
    put_rls_services(server.xcap_root, WATCHERS["group"], GROUP, members)
    return time.monotonic() - started


def notification(target: str, correlator: str) -> dict[str, object]:
    return {
        "presentity": target,
        "attributes": ["Activity"],
        "frequency": {"metric": "Second", "units": 0},
        "count": 0,
        "reference": {"correlator": correlator, "endpoint": "/bayeux/app0/notify"},
    }


async def start_watches(
    sides: dict[str, Side], members: list[str], concurrency: int
) -> dict[str, object]:
    """One Start Presence Notification on the group; one per member on the other side."""
    results: dict[str, object] = {}
    async with sides["group"].adapter.async_client("app0", timeout=120) as http:
        reply = await http.post("/rest/presence/notification", json=notification(GROUP, "g"))
        if reply.status_code != 201:
            raise RuntimeError(f"Start on the group: {reply.status_code} {reply.text}")
        results["group"] = reply.json().get("result")

    left_out: list[object] = []
    queue = list(enumerate(members))
    async with sides["single"].adapter.async_client("app0", timeout=60) as http:

        async def worker() -> None:
            while queue:
                i, member = queue.pop()
                reply = await http.post(
                    "/rest/presence/notification", json=notification(member, f"s{i}")
                )
                if reply.status_code != 201:
                    raise RuntimeError(f"Start on {member}: {reply.status_code} {reply.text}")
                left_out.extend(reply.json().get("result") or [])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    results["single"] = left_out
    return results


# ------------------------------------------------------------------ measuring


def measure(
    name: str,
    sides: dict[str, Side],
    server: PgPresenceServer,
    peer: RawPeer | None,
    rate: float,
    seconds: float,
    first: int,
    drain: float,
) -> Window:
    """A window of ``seconds`` of changes (none without ``peer``) and ``drain`` after."""
    pids = {side.name: side.pid for side in sides.values()}
    assert server.pid is not None and server.cluster is not None
    trees = {"kamailio": server.pid, "postgres": server.cluster.pid or 0}
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    cpu_before.update({n: tree_cpu_seconds(p) for n, p in trees.items()})
    received_before = {n: len(s.clients.received) for n, s in sides.items()}
    started = time.monotonic()
    window = Window(name)
    if peer is not None:
        result = peer.run(name, rate, seconds, first)
        window.sent = result["sent"]
        for _seq, _index, _sent, status in window.sent:
            if isinstance(status, int) and 200 <= status < 300:
                window.changes += 1
            else:
                window.failed += 1
        time.sleep(drain)
    else:
        time.sleep(seconds + drain)
    window.wall = time.monotonic() - started
    window.cpu = {n: cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
    window.cpu.update({n: tree_cpu_seconds(p) - cpu_before[n] for n, p in trees.items()})
    window.delivered = {n: len(s.clients.received) - received_before[n] for n, s in sides.items()}
    return window


def per_change(window: Window, who: str) -> float | None:
    return window.cpu[who] / window.changes * 1e6 if window.changes else None


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(idle: Window, rounds: list[Window], args: argparse.Namespace) -> None:
    print()
    print(
        f"{args.members} members; group: 1 watch on the list; single: {args.members} watches; "
        f"{args.rate:g} changes/s asked"
    )
    header = (
        f"{'window':<8} {'s':>5} {'changes':>7} {'fail':>4} "
        f"{'group µs/ch':>11} {'single µs/ch':>12} {'single/group':>12} "
        f"{'group cpu':>9} {'single cpu':>10} {'delivered g/s':>14} "
        f"{'kamailio µs/ch':>14} {'pg µs/ch':>8}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'idle':<8} {idle.wall:>5.1f} {'-':>7} {'-':>4} {'-':>11} {'-':>12} {'-':>12} "
        f"{idle.cpu['group'] / idle.wall:>9.1%} {idle.cpu['single'] / idle.wall:>10.1%} "
        f"{idle.delivered['group']:>6}/{idle.delivered['single']:<7} {'-':>14} {'-':>8}"
    )
    for window in rounds:
        group, single = per_change(window, "group"), per_change(window, "single")
        ratio = single / group if group and single else None
        print(
            f"{window.name:<8} {window.wall:>5.1f} {window.changes:>7} {window.failed:>4} "
            f"{fmt(group):>11} {fmt(single):>12} {fmt(ratio, '.2f'):>12} "
            f"{window.cpu['group'] / window.wall:>9.1%} "
            f"{window.cpu['single'] / window.wall:>10.1%} "
            f"{window.delivered['group']:>6}/{window.delivered['single']:<7} "
            f"{fmt(per_change(window, 'kamailio')):>14} {fmt(per_change(window, 'postgres')):>8}"
        )
    changes = sum(w.changes for w in rounds)
    if changes:
        totals = {who: sum(w.cpu[who] for w in rounds) / changes * 1e6 for who in SIDES}
        ratios = [
            s / g
            for w in rounds
            if (g := per_change(w, "group")) and (s := per_change(w, "single"))
        ]
        delivered = {who: sum(w.delivered[who] for w in rounds) for who in SIDES}
        each = {
            who: sum(w.cpu[who] for w in rounds) / delivered[who] * 1e6 if delivered[who] else 0
            for who in SIDES
        }
        print()
        print(
            f"per statusChanged delivered: group {each['group']:.0f} µs "
            f"({delivered['group']} delivered), single {each['single']:.0f} µs "
            f"({delivered['single']}); single/group "
            f"{each['single'] / each['group'] if each['group'] else 0:.2f}"
        )
        print(
            f"all rounds ({changes} changes): adapter CPU per member change: group "
            f"{totals['group']:.0f} µs, single {totals['single']:.0f} µs; single/group "
            f"{totals['single'] / totals['group']:.2f} (per round "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f})"
        )
    if any(w.delivered[side] < w.changes for w in rounds for side in SIDES):
        print(
            "NOT COMPARABLE: a side received fewer statusChanged than changes in some round "
            "(see the last-state lines above)"
        )
    print(
        "µs/ch = the process's CPU time (user + system) over the window / changes the server "
        "accepted;\ncpu = CPU time / wall time; delivered = statusChanged received by each "
        "side's client in the window; a window runs from the first PUBLISH to --drain s "
        "after the last."
    )


def last_state_check(sides: dict[str, Side], rounds: list[Window]) -> None:
    """Per side: the members whose last accepted change never reached the application."""
    last: dict[int, int] = {}
    for window in rounds:
        for seq, index, _sent, status in window.sent:
            if isinstance(status, int) and 200 <= status < 300 and isinstance(seq, int):
                assert isinstance(index, int)
                last[index] = max(seq, last.get(index, -1))
    for name, side in sides.items():
        stale = sorted(i for i, seq in last.items() if seq not in side.clients.received)
        measured = {
            seq
            for w in rounds
            for seq, _i, _s, status in w.sent
            if isinstance(status, int) and 200 <= status < 300
        }
        lost = len(measured - side.clients.received.keys())
        print(
            f"{name}: members whose last change never reached the application: {len(stale)} of "
            f"{len(last)}"
            + (f" (p{stale[0]}, ...)" if stale else "")
            + f"; measured changes not delivered: {lost} of {len(measured)}; duplicates "
            f"{side.clients.duplicates}; UDP drops at its SIP socket "
            f"{udp_drops(side.adapter.sip_port)}; Bayeux messages {side.clients.kinds}"
        )


def shown(uris: object) -> str:
    """A list of URIs as its length and the first few."""
    if not isinstance(uris, list) or not uris:
        return str(uris)
    return f"{len(uris)} ({', '.join(map(str, uris[:3]))}{', ...' if len(uris) > 3 else ''})"


def complaints(side: Side) -> None:
    lines = [
        line
        for line in side.adapter.log_tail(200_000).splitlines()
        if " WARNING " in line or " ERROR " in line
    ]
    if lines:
        print(f"{side.name} adapter log: {len(lines)} warnings/errors, the last ones:")
        print("\n".join(lines[-5:]))


def settle(sides: dict[str, Side], quiet: float = 3.0, limit: float = 60.0) -> None:
    """Until no statusChanged has arrived at either side for ``quiet`` s: late is not lost."""
    deadline = time.monotonic() + limit
    seen = (-1, -1)
    while time.monotonic() < deadline:
        now = (len(sides["group"].clients.received), len(sides["single"].clients.received))
        if now == seen:
            return
        seen = now
        time.sleep(quiet)


# ------------------------------------------------------------------ the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200, help="member changes/s in total")
    parser.add_argument("--duration", type=float, default=20, help="seconds of changes per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup",
        type=float,
        default=35,
        help="unmeasured seconds of the same load first (default 35: past Timer J's 32 s)",
    )
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle window")
    parser.add_argument(
        "--drain",
        type=float,
        default=3.0,
        help="seconds after a round's last PUBLISH still in its window (rls batches every 1 s)",
    )
    parser.add_argument(
        "--heal",
        type=float,
        default=40.0,
        help="seconds after the last round before the last states are checked: the group "
        "adapter's list check (every 30 s, [sip] list_check) refreshes the list once it has "
        "been quiet for 5 s, and Kamailio then sends every member's state again",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="PUBLISHes the raw peer keeps outstanding"
    )
    parser.add_argument(
        "--setup-concurrency",
        type=int,
        default=16,
        help="XCAP writes and Start Presence Notification requests at once during set-up",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="put the adapters' directories (configuration, store, log) in DIR and keep them",
    )
    parser.add_argument(
        "--sip-trace",
        action="store_true",
        help="the group adapter logs every SIP message (its [log] sip_trace)",
    )
    args = parser.parse_args(argv)
    if shutil.which("node") is None:
        parser.error("node is not installed (scripts/setup installs it)")
    if args.members * 1.0 / args.rate < 2.0:
        # rls sends a member's latest state once per waitn_time (1 s): a member
        # changing faster would be coalesced on the group side only.
        parser.error("--rate too high for --members: each member must change at most every 2 s")

    members = [MEMBER.format(i) for i in range(args.members)]
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    config = KAMAILIO_CFG.read_text()
    # A core parameter: the global section, before the modules.
    at = config.index("\nloadmodule ")
    config = f"{config[:at]}\nsql_buffer_size={SQL_BUFFER}\n{config[at:]}"
    with (
        kamailio_config(config),
        pg_presence_server() as server,
        tempfile.TemporaryDirectory(prefix="group-members-") as scratch,
    ):
        directory = args.keep or scratch
        took = write_documents(server, members, args.setup_concurrency)
        print(
            f"presence server {server.sip_uri} (pid {server.pid}); pres-rules of "
            f"{args.members} members and the list written in {took:.1f} s",
            flush=True,
        )
        peer = RawPeer(server, args.members, 0, args.concurrency, MEMBER)
        sides: dict[str, Side] = {}
        try:
            failed = peer.ready()
            if failed:
                print(f"raw peer set-up: {len(failed)} failures {failed[:5]}", flush=True)
            for name in SIDES:
                folder = Path(directory) / name
                folder.mkdir(parents=True)
                trace = {"log": {"sip_trace": True}} if args.sip_trace and name == "group" else {}
                adapter = AdapterProcess.for_server(
                    folder,
                    server,
                    [AppAccount("app0", PASSWORD, (WATCHERS[name],))],
                    settings=trace,
                )
                adapter.start(healthy=True)
                clients = BayeuxClients(f"{adapter.url}/cometd", 1)
                sides[name] = Side(name, adapter, clients)
            for side in sides.values():
                asyncio.run(side.clients.wait_ready(60))
                threading.Thread(target=side.clients.read_forever, daemon=True).start()
            started = time.monotonic()
            left_out = asyncio.run(start_watches(sides, members, args.setup_concurrency))
            print(
                f"watches started in {time.monotonic() - started:.1f} s (group adapter pid "
                f"{sides['group'].pid}, single adapter pid {sides['single'].pid}); not "
                f"subscribed (Start's result): group {shown(left_out['group'])}, single "
                f"{shown(left_out['single'])}",
                flush=True,
            )
            time.sleep(3)  # the list's first partial NOTIFYs (rls waitn_time)

            idle = measure("idle", sides, server, None, 0, args.idle, 0, 0)
            first = 0
            rounds: list[Window] = []
            plan = [("warmup", args.warmup)]
            plan += [(f"round{r + 1}", args.duration) for r in range(args.rounds)]
            for name, seconds in plan:
                window = measure(name, sides, server, peer, args.rate, seconds, first, args.drain)
                first += 10_000_000
                print(
                    f"  {name}: {window.changes} changes accepted ({window.failed} not) in "
                    f"{window.wall:.1f} s; CPU group {window.cpu['group']:.2f} s, single "
                    f"{window.cpu['single']:.2f} s, kamailio {window.cpu['kamailio']:.2f} s, "
                    f"postgres {window.cpu['postgres']:.2f} s",
                    flush=True,
                )
                if name != "warmup":
                    rounds.append(window)
            time.sleep(args.heal)
            settle(sides)
            print()
            last_state_check(sides, rounds)
            for side in sides.values():
                complaints(side)
            report(idle, rounds, args)
            print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        finally:
            peer.stop()
            for side in sides.values():
                side.clients.stop()
                side.adapter.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
