"""CPU of one /metrics scrape with many subscriptions and watches held.

    .venv/bin/python bench/metrics_scrape.py                          # 100,000; ~1 min
    .venv/bin/python bench/metrics_scrape.py --reference /tmp/main   # and the ratio
    .venv/bin/python bench/metrics_scrape.py --profile               # cProfile, top functions

What bench/scale_adapter.py's idle window pays each time /metrics is read,
without sockets or a presence server.  One process per run builds:

* a ``sip.UserAgent`` holding ``--subscriptions`` subscriptions, each
  answered 200 and NOTIFYed by bench/sip_refresh_cost.py's presence server
  templates (not timed), inside an unstarted ``sip.aio.SipEndpoint``;
* a ``WatcherService`` whose machine holds as many watches, one per
  subscription, active but for every tenth, pending;
* a Bayeux hub with ``--apps`` applications and a session each;

and times ``Metrics.exposition()`` (the adapter's registry, as GET /metrics
serves it) ``--scrapes`` times.  Figures are ms of CPU
(``time.process_time``) per scrape, best and median, with each tree run
``--repeat`` times in fresh processes, interleaved.  ``--reference DIR`` runs
the same from another source tree (``git archive REV | tar -x -C DIR``) and
prints the ratio to it, and whether the ``presence_adapter_*`` samples of
both trees are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from trees import interleaved, run_child  # noqa: E402  (the bench folder is the script's)


def build(subscriptions: int, apps: int) -> Any:
    """The adapter's metrics over the sources a held adapter has (not timed)."""
    import random

    import sip_refresh_cost as templates

    from adapter.bayeux.backlog import Backlog
    from adapter.bayeux.hub import Hub
    from adapter.bayeux.message import Message
    from adapter.metrics import Histogram, Metrics, Sources
    from adapter.watch import Watch, WatchState
    from adapter.watcher import WatcherService
    from adapter.xcap import XcapClient
    from sip.aio.endpoint import SipEndpoint
    from sip.uri import SipURI
    from sip.useragent import Destination, UserAgent

    server = SipURI.parse("sip:127.0.0.1:5070")
    endpoint = SipEndpoint(host=templates.LOCAL[0], port=templates.LOCAL[1], server=server)
    ua = UserAgent(local=Destination("udp", *templates.LOCAL), server=server,
                   rng=random.Random(1))
    endpoint._ua = ua  # what start() makes, without its sockets
    notifier = templates.Notifier()
    subscribers = [templates.subscriber(i) for i in range(1000)]
    presentities = [templates.presentity(i) for i in range(max(1, subscriptions // 1000))]
    ids = []
    for i in range(subscriptions):
        ids.append(ua.subscribe(subscribers[i % 1000], presentities[i // 1000 % len(presentities)],
                                float(i)))
        for data, _dest in ua.datagrams_to_send():
            ok, notify = notifier.answer(data)
            ua.receive(ok, templates.SERVER_DEST, float(i))
            ua.receive(notify, templates.SERVER_DEST, float(i))
        ua.datagrams_to_send()
        while ua.next_event() is not None:
            pass
    assert ua.subscription_count == subscriptions, "a subscription was lost in the set-up"

    class Nowhere:
        def deliver(self, app_id: str, channel: str, data: Any) -> int:
            return 0

    service = WatcherService(endpoint, XcapClient("http://127.0.0.1:9/xcap-root"), Nowhere())
    app_ids = [f"a{j}" for j in range(apps)]
    for i, subscription_id in enumerate(ids):
        subscription = ua.subscription(subscription_id)
        assert subscription is not None
        service.machine.add(Watch(
            str(subscription.subscriber), str(subscription.target), app_ids[i % apps],
            state=WatchState.PENDING if i % 10 == 0 else WatchState.ACTIVE,
            subscription_id=subscription_id,
        ))
    hub = Hub(lambda user, password: user if user in app_ids else None)
    for app_id in app_ids:
        auth = {"authentication": {"user": app_id, "password": ""}}
        hub.server.receive([Message(channel="/meta/handshake", id="h", ext=auth)], 0.0,
                           transport="long-polling")
    metrics = Metrics()
    metrics.rest_observe("subscribe_presence", 204, 0.004)
    metrics.sources = Sources(
        endpoint=endpoint, hub=hub, backlog=Backlog(10, 60.0), watchers=service,
        store_commits=Histogram((0.001, 0.01, 0.1)), app_ids=app_ids,
    )
    return metrics


def child(subscriptions: int, apps: int, scrapes: int, profile: bool) -> dict[str, Any]:
    """One run, in this process (its packages are whichever sys.path finds)."""
    metrics = build(subscriptions, apps)
    text = metrics.exposition()  # the first scrape: families made once
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(scrapes):
            metrics.exposition()
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    times = []
    for _ in range(scrapes):
        started = time.process_time()
        metrics.exposition()
        times.append((time.process_time() - started) * 1000)
    # The adapter's own families, to check both trees export the same values.
    own = b"\n".join(line for line in text.splitlines() if line.startswith(b"presence_adapter_"))
    return {"best": min(times), "median": statistics.median(times), "bytes": len(text),
            "lines": text.count(b"\n"), "own": hashlib.sha256(own).hexdigest()}


def run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    extra = ["--profile"] if args.profile else []
    return run_child(Path(__file__).resolve(), tree, "--subscriptions", str(args.subscriptions),  # type: ignore[no-any-return]
                     "--apps", str(args.apps), "--scrapes", str(args.scrapes), *extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--apps", type=int, default=100, help="application accounts")
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes timed per run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--reference", metavar="DIR", type=Path,
                        help="also run from this source tree, for the ratio")
    parser.add_argument("--profile", action="store_true",
                        help="print cProfile's top functions of the scrapes (stderr)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str((args.tree or REPO).resolve()))
        print(json.dumps(child(args.subscriptions, args.apps, args.scrapes, args.profile)))
        return 0
    results = interleaved(REPO, args.reference, args.repeat, lambda tree: run(tree, args))
    print(f"{args.subscriptions:,} subscriptions and watches held, {args.apps} applications; "
          f"ms of CPU per /metrics scrape ({args.scrapes} scrapes a run, {args.repeat} runs)")
    print("| tree | best | median | exposition |")
    print("|---|---|---|---|")
    best = {name: min(runs, key=lambda r: r["best"]) for name, runs in results.items()}
    for name, b in best.items():
        print(f"| {name} | {b['best']:.3f} | {b['median']:.3f} | "
              f"{b['lines']} lines, {b['bytes']:,} B |")
    if args.reference:
        t, r = best["tree"], best["reference"]
        print(f"ratio to reference: best {t['best'] / r['best']:.4f} "
              f"(x{r['best'] / t['best']:.0f} faster), median {t['median'] / r['median']:.4f}")
        same = {r["own"] for runs in results.values() for r in runs}
        print("presence_adapter_* samples: " + ("the same in both trees" if len(same) == 1
                                                else "DIFFERENT between the trees"))
        print(f"reference: {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
