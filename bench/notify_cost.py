"""CPU of one NOTIFY→Bayeux delivery in the adapter, no Kamailio: this tree against another.

    .venv/bin/python bench/notify_cost.py                         # about 2 minutes
    .venv/bin/python bench/notify_cost.py --reference DIR         # before/after, alternating
    .venv/bin/python bench/notify_cost.py --rate 3000 --senders 3 # the latency at 3,000/s
    .venv/bin/python bench/notify_cost.py --profile /tmp/n.svg    # py-spy on the adapter

bench/notify_latency.py's chain with the presence server replaced by a peer
that costs nothing to the adapter's figures and sets no ceiling of its own
(notify_cost_peer.py: it answers SUBSCRIBE and OPTIONS, serves the pres-rules
over XCAP, and sends the NOTIFYs itself, shaped as Kamailio's), so that what
is measured is the adapter's whole path for one change and nothing else:
datagram in, parse, server transaction, dialog, 200 out, PIDF decode, the
watch and its schedule, the typeAndValue JSON, the Bayeux hub, the websocket
frame out and the client's next ``/meta/connect`` in.

One run, per side: the adapter as its users run it (``presence-adapter
serve``, tests/adapter_process.py, from this tree or from ``--reference
DIR``), ``--apps`` applications each watching one presentity (Subscribe
Presence + Start Presence Notification, frequency 0) and receiving it
through one CometD JavaScript client over websocket with the ack extension
(notify_latency_clients.mjs, one Node process), and the peer.  The peer
sends ``--rate`` NOTIFYs/s round-robin over the presentities — from
``--senders`` processes, each with its share of the dialogs and of the rate
— for ``--warmup`` seconds (35 by default: past Timer J's 32 s, when as many
server transaction records die as are born), then ``--rounds`` rounds of
``--duration`` seconds.  Per round: the adapter's CPU (``/proc``, its threads
and children) over the round and its drain, divided by the notifications the
clients received, and the NOTIFY→Bayeux latency (the client's receipt − the
peer's send instant stamped in the body; the client's websocket read and the
UDP loopback included).

With ``--reference DIR`` (a source tree: ``git archive REV | tar -x -C
DIR``) the two sides' runs alternate ``--pairs`` times, each a fresh
adapter; printed per run and as medians, with the ratio current/reference.
``--reference-python PATH`` runs the reference on another interpreter (a
venv's python with the project installed): with ``--reference .``, the same
code on two interpreters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for where in (str(REPO), str(HERE)):
    if where not in sys.path:
        sys.path.insert(0, where)

import httpx  # noqa: E402
from notify_latency import (  # noqa: E402
    PASSWORD,
    BayeuxClients,
    cpu_seconds,
    ms,
    presentity,
    quantile,
    quit_process,
    watch_all,
    watcher,
)
from procfs import udp_drops  # noqa: E402
from rest_publish import BenchAdapter  # noqa: E402

from pidf import AttributeType, PresRules  # noqa: E402
from tests.adapter_process import AppAccount, config_template  # noqa: E402


class Peer:
    """notify_cost_peer.py: the SIP and XCAP sides of a presence server."""

    def __init__(self, rules: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "notify_cost_peer.py"), str(rules)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ports = json.loads(self._line())
        self.sip, self.xcap = int(ports["sip"]), int(ports["xcap"])

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the peer ended")
        return line

    def command(self, text: str) -> dict[str, float]:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        result: dict[str, float] = json.loads(self._line())
        return result

    def stop(self) -> None:
        quit_process(self.process)


@dataclass
class Round:
    sent: int
    answered: int
    delivered: int
    elapsed: float
    cpu: float  # adapter CPU seconds over the round and its drain
    latency: list[float] = field(default_factory=list)  # ms

    @property
    def per_delivery(self) -> float:
        return self.cpu / max(self.delivered, 1) * 1e6


def wait_delivered(clients: BayeuxClients, first: int, last: int, limit: float = 20.0) -> None:
    """Until every sequence in [first, last) arrived, or nothing more arrives for 2 s."""
    deadline = time.monotonic() + limit
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(1 for seq in range(first, last) if seq in clients.received)
        if now == last - first:
            return
        if now != seen:
            seen, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 2.0:
            return
        time.sleep(0.05)


def one_side(
    args: argparse.Namespace, source: Path | None, directory: Path, floor: bool = False,
    python: str | None = None,
) -> list[Round]:
    """One adapter (from ``source``, else this tree) or the floor (notify_floor.py):
    set up, warm up, the measured rounds."""
    everything = {kind: True for kind in AttributeType}
    rules = {
        presentity(i): PresRules.build({watcher(i): everything}).to_xml().decode()
        for i in range(args.apps)
    }
    (directory / "rules.json").write_text(json.dumps(rules))
    peer = Peer(directory / "rules.json")
    accounts = [AppAccount(f"app{i}", PASSWORD, (watcher(i),)) for i in range(args.apps)]
    template = config_template(
        accounts, sip_server=f"sip:127.0.0.1:{peer.sip}",
        xcap_root=f"http://127.0.0.1:{peer.xcap}/xcap-root",
    )
    adapter = BenchAdapter(directory, template)
    adapter.source = source
    adapter.python = python
    adapter.accounts = {account.id: account for account in accounts}
    clients = None
    profiler = None
    floor_process = None
    try:
        if floor:
            floor_process = subprocess.Popen(
                [sys.executable, str(HERE / "notify_floor.py"), str(adapter.http_port),
                 str(peer.sip), str(args.apps)],
            )
            pid = floor_process.pid
            wait_http(adapter.url, floor_process)
        else:
            adapter.start(healthy=True)
            assert adapter.process is not None
            pid = adapter.process.pid
        clients = BayeuxClients(f"{adapter.url}/cometd", args.apps)

        async def setup() -> None:
            assert clients is not None
            await clients.wait_ready(60)
            if not floor:
                await watch_all(adapter, args.apps)

        asyncio.run(setup())
        threading.Thread(target=clients.read_forever, daemon=True).start()
        first = 0
        if args.warmup:
            peer.command(f"RUN {args.rate} {args.warmup} {first} {args.senders}")
            first += 10_000_000
        rounds = []
        for r in range(args.rounds):
            if r == 0 and args.profile and not floor:
                profiler = subprocess.Popen(
                    [str(REPO / ".venv" / "bin" / "py-spy"), "record", "-o", args.profile,
                     "--pid", str(pid), "--rate", "250",
                     *(["--format", "raw"] if not args.profile.endswith(".svg") else []),
                     "--duration", str(int(args.duration * args.rounds) + 1)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            before = cpu_seconds(pid)
            result = peer.command(f"RUN {args.rate} {args.duration} {first} {args.senders}")
            sent = int(result["sent"])
            wait_delivered(clients, first, first + sent)
            cpu = cpu_seconds(pid) - before
            # Each sender stamps its own NOTIFYs first + k, first + k + senders, ...
            stamps = {}
            for seq in range(first, first + sent):
                got = clients.received.get(seq)
                if got is not None:
                    stamps[seq] = got
            rounds.append(Round(sent, int(result["answered"]), len(stamps), result["elapsed"], cpu))
            first += 10_000_000
        if profiler is not None:
            profiler.wait(60)
        # Latency needs the send stamps: the clients' lines carry them (t=...).
        for round_ in rounds:
            round_.latency = []
        for seq, sent_us in clients.sent_at.items():
            index = seq // 10_000_000 - (1 if args.warmup else 0)
            if 0 <= index < len(rounds):
                rounds[index].latency.append((clients.received[seq] - sent_us) / 1000)
        drops = None if floor else udp_drops(adapter.sip_port)
        if drops:
            print(f"    UDP datagrams dropped at the adapter's SIP socket: {drops}")
        complaints = [line for line in adapter.log_tail(100_000).splitlines()
                      if " WARNING " in line or " ERROR " in line]
        if complaints:
            print(f"    adapter log: {len(complaints)} warnings/errors, the last: {complaints[-1]}")
        return rounds
    finally:
        if clients is not None:
            clients.stop()
        if floor_process is not None:
            # uvicorn's graceful shutdown would wait for ever on held connects.
            floor_process.kill()
            floor_process.wait()
        else:
            adapter.stop()
        peer.stop()


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(url + "/", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("the floor server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--apps", type=int, default=100, help="presentities = applications")
    parser.add_argument("--rate", type=float, default=1000, help="NOTIFYs/s in total")
    parser.add_argument("--senders", type=int, default=1, help="peer processes sending them")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=35,
                        help="unmeasured seconds first (default 35: past Timer J's 32 s)")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="a source tree to run beside this one, alternating")
    parser.add_argument("--reference-python", metavar="PATH",
                        help="run the reference on this interpreter (another venv's python "
                             "with the project installed); with --reference . the same code "
                             "on two interpreters")
    parser.add_argument("--pairs", type=int, default=1, help="runs of each side (default 1)")
    parser.add_argument("--floor", action="store_true",
                        help="also run notify_floor.py: transports only, no SIP stack, no PIDF")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy record this tree's adapter in the rounds (.svg or raw)")
    args = parser.parse_args()
    if args.reference is not None and not (args.reference / "adapter" / "cli.py").is_file():
        parser.error(f"--reference: {args.reference} holds no adapter/cli.py")
    if args.reference_python is not None and args.reference is None:
        parser.error("--reference-python needs --reference")
    sides: dict[str, Path | None] = {"this tree": None}
    if args.reference is not None:
        sides = {"reference": args.reference.resolve(), **sides}
    if args.floor:
        sides["floor"] = None
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    runs: dict[str, list[list[Round]]] = {name: [] for name in sides}
    profile = args.profile
    for _ in range(args.pairs):
        for name, source in sides.items():
            args.profile = profile if name == "this tree" else None
            with tempfile.TemporaryDirectory(prefix="notify-cost-") as directory:
                rounds = one_side(args, source, Path(directory), floor=name == "floor",
                                  python=args.reference_python if name == "reference" else None)
            runs[name].append(rounds)
            for k, r in enumerate(rounds):
                print(
                    f"  {name:10} round {k + 1}: {r.sent} NOTIFYs in {r.elapsed:.1f} s, "
                    f"{r.answered} answered, {r.delivered} delivered; "
                    f"{r.per_delivery:6.1f} µs of adapter CPU per delivery; NOTIFY→Bayeux "
                    f"p50 {ms(quantile(r.latency, 0.5))} p99 {ms(quantile(r.latency, 0.99))} "
                    f"max {ms(max(r.latency) if r.latency else None)} ms",
                    flush=True,
                )
            profile = None if name == "this tree" else profile
    print(f"\n{args.apps} applications, {args.rate:.0f} NOTIFYs/s from {args.senders} "
          f"sender(s), {args.rounds} x {args.duration:.0f} s after {args.warmup:.0f} s warm-up, "
          f"{args.pairs} run(s) a side:")
    medians = {}
    for name, side_runs in runs.items():
        costs = [r.per_delivery for rounds in side_runs for r in rounds]
        latency = [v for rounds in side_runs for r in rounds for v in r.latency]
        lost = sum(r.sent - r.delivered for rounds in side_runs for r in rounds)
        medians[name] = statistics.median(costs)
        print(f"  {name:10} median {medians[name]:6.1f} µs per delivery "
              f"(range {min(costs):.1f}-{max(costs):.1f}); NOTIFY→Bayeux p50 "
              f"{ms(quantile(latency, 0.5))} p99 {ms(quantile(latency, 0.99))} ms; "
              f"not delivered {lost}")
    for other in ("reference", "floor"):
        if other in medians:
            print(f"  ratio this tree / {other}: {medians['this tree'] / medians[other]:.3f}")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
