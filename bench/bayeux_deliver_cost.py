"""CPU of a fan-out burst inside the Bayeux hub, without sockets: this tree against another.

    .venv/bin/python bench/bayeux_deliver_cost.py --reference DIR    # about 20 seconds
    .venv/bin/python bench/bayeux_deliver_cost.py --reference DIR --pairs 4
    .venv/bin/python bench/bayeux_deliver_cost.py --profile prof.out # cProfile, this tree

The burst of bench/fanout_watchers.py (``--apps`` applications, one session
each on websocket with the ack extension, subscribed to /bayeux/a<i>/notify;
``--presentities`` × ``--per-presentity`` statusChanged messages shaped as
adapter/notification.py builds them, through ``Hub.deliver``), then what the
transports do with it: every held /meta/connect is released and its replies
encoded (``encode_batch``), as the websocket endpoint sends them.  What it
leaves out is uvicorn, the sockets and the clients, the same for both trees.

Each run is a child process importing ``adapter`` from its tree
(``PYTHONPATH``); it times ``--bursts`` bursts with ``time.process_time`` and
prints the best, in ms of CPU per burst.  With ``--reference DIR`` (a source
tree, say ``git archive REV | tar -x -C DIR``) the two trees' runs alternate
``--pairs`` times; printed: every run, each side's median, the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


async def burst_cost(args: argparse.Namespace) -> float:
    from adapter.bayeux import Hub
    from adapter.bayeux.message import Message, encode_batch

    hub = Hub(lambda user, password: user)

    def receive(message: dict[str, object]) -> object:
        return hub.receive([Message.parse(message)], transport="websocket")

    sessions: list[str] = []
    for i in range(args.apps):
        handshake = receive(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["websocket"],
                "ext": {"authentication": {"user": f"a{i}", "password": "-"}, "ack": True},
            }
        )
        client_id = handshake.replies[0]["clientId"]  # type: ignore[attr-defined]
        receive(
            {
                "channel": "/meta/subscribe",
                "clientId": client_id,
                "subscription": f"/bayeux/a{i}/notify",
            }
        )
        receive(
            {
                "channel": "/meta/connect",
                "clientId": client_id,
                "connectionType": "websocket",
                "advice": {"timeout": 0},
            }
        )
        sessions.append(client_id)
    stride = args.apps // args.per_presentity
    best = float("inf")
    for number in range(args.bursts + 1):  # the first warms up
        waits = []
        for client_id in sessions:
            held = receive(
                {
                    "channel": "/meta/connect",
                    "clientId": client_id,
                    "connectionType": "websocket",
                    "ext": {"ack": number},
                }
            ).held  # type: ignore[attr-defined]
            if held is not None:
                waits.append(asyncio.ensure_future(hub.wait(held)))
        await asyncio.sleep(0)
        started = time.process_time()
        for p in range(args.presentities):
            presentity = f"sip:p{p}@bench.example"
            for j in range(args.per_presentity):
                app = (p + j * stride) % args.apps
                hub.deliver(
                    f"a{app}",
                    f"/bayeux/a{app}/notify",
                    {
                        "statusChanged": {
                            "correlator": f"p{p}.{j}",
                            "presentity": presentity,
                            "changedAttributes": [
                                {
                                    "lastChange": "2026-12-07T02:11:00.123Z",
                                    "typeAndValue": {
                                        "unionElement": "Activity",
                                        "activity": "Busy",
                                    },
                                    "note": f"{number} {p}",
                                }
                            ],
                        }
                    },
                )
        for wait in waits:
            encode_batch(await wait)
        if number:
            best = min(best, time.process_time() - started)
    return best


def child(args: argparse.Namespace) -> None:
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
    cost = asyncio.run(burst_cost(args))
    if args.profile:
        profiler.disable()
        profiler.dump_stats(args.profile)
    print(f"{1000 * cost:.2f}")


def run(tree: Path, args: argparse.Namespace) -> float:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--apps",
        str(args.apps),
        "--presentities",
        str(args.presentities),
        "--per-presentity",
        str(args.per_presentity),
        "--bursts",
        str(args.bursts),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=tree)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--presentities", type=int, default=1000)
    parser.add_argument("--per-presentity", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--reference", type=Path, metavar="DIR")
    parser.add_argument("--profile", metavar="FILE", help="cProfile this tree's run into FILE")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.apps % args.per_presentity:
        parser.error("--apps must be a multiple of --per-presentity")
    if args.child:
        child(args)
        return
    if args.profile:
        child(args)
        return
    if args.reference is not None and not (args.reference / "adapter" / "bayeux").is_dir():
        parser.error(f"--reference: {args.reference} holds no adapter/bayeux")
    sides = {"this tree": REPO}
    if args.reference is not None:
        sides["reference"] = args.reference.resolve()
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for pair in range(args.pairs):
        order = list(sides.items()) if pair % 2 == 0 else list(sides.items())[::-1]
        for name, tree in order:
            cost = run(tree, args)
            runs[name].append(cost)
            print(f"  {name}: {cost:.2f} ms of CPU per burst", flush=True)
    for name, costs in runs.items():
        print(
            f"{name}: median {statistics.median(costs):.2f} ms "
            f"({min(costs):.2f}–{max(costs):.2f}) per burst of "
            f"{args.presentities * args.per_presentity:,} deliveries"
        )
    if args.reference is not None:
        ratio = statistics.median(runs["this tree"]) / statistics.median(runs["reference"])
        print(f"this tree / reference: {ratio:.2f}")


if __name__ == "__main__":
    main()
