"""Memory of the SIP stack holding subscriptions, and across their first refresh wave.

    .venv/bin/python bench/refresh_memory.py                          # 30,000; ~1 min
    .venv/bin/python bench/refresh_memory.py --reference /tmp/main   # and the ratio

A sans-IO replay (bench/sip_refresh_cost.py's presence server templates, not
timed) of what bench/scale_adapter.py sees at the user agent: ``--subscriptions``
are made at ``--rate`` a second of a fake clock, each answered 200 and then
NOTIFYed; the server grants ``--expires`` seconds.  Then the clock runs on from
deadline to deadline (refreshes, Timer J of the answered NOTIFYs) until every
subscription has refreshed once, and on until the records of that wave's
NOTIFYs are gone.  Each run is a fresh process (the working tree's, then the
reference's, ``--repeat`` times interleaved).

Printed per tree: RSS (VmRSS) after the set-up once its Timer Js are over
("held"), its highest during the refresh wave, and after the wave once its
Timer Js are over ("after"); bytes per subscription of the held figure over
the empty user agent; and the live allocated blocks (``sys.getallocatedblocks``)
held and after.  A wave that leaves RSS above "held" keeps or scatters what a
refresh replaces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from trees import interleaved, run_child  # noqa: E402  (the bench folder is the script's)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(subscriptions: int, rate: float, expires: int) -> dict[str, float]:
    """One run, in this process (its sip package is whichever sys.path finds)."""
    import random

    import sip_refresh_cost as templates

    from sip.uri import SipURI
    from sip.useragent import Destination, UserAgent

    templates.EXPIRES = expires
    ua = UserAgent(local=Destination("udp", *templates.LOCAL),
                   server=SipURI.parse("sip:127.0.0.1:5070"), rng=random.Random(1),
                   subscription_expires=expires)
    notifier = templates.Notifier()
    server = templates.SERVER_DEST
    subscribers = [templates.subscriber(i) for i in range(1000)]
    presentities = [templates.presentity(i) for i in range(100)]
    now = 0.0

    def exchange() -> int:
        sent = 0
        for data, _dest in ua.datagrams_to_send():
            if data.startswith(b"SUBSCRIBE "):
                sent += 1
                ok, notify = notifier.answer(data)
                ua.receive(ok, server, now)
                ua.receive(notify, server, now)
        ua.datagrams_to_send()
        while ua.next_event() is not None:
            pass
        return sent

    def run_until(end: float, peak: int) -> tuple[int, int]:
        """Run the timers due before ``end``; (refreshes sent, highest RSS)."""
        nonlocal now
        sent = 0
        while (deadline := ua.get_timer()) is not None and deadline <= end:
            now = deadline
            ua.handle_timer(now)
            sent += exchange()
            if sent % 1000 == 0:
                peak = max(peak, rss_kib())
        now = end
        return sent, peak

    empty = rss_kib()
    for i in range(subscriptions):
        now = i / rate
        ua.subscribe(subscribers[i % 1000], presentities[i % 100], now)
        exchange()
        ua.handle_timer(now)  # the Timer Js of the set-up fall due as it goes on
    setup_end = now
    # Until the last set-up NOTIFY's Timer J is over, before any refresh.
    first_refresh = ua.get_timer() or setup_end
    run_until(min(first_refresh - 1e-6, setup_end + 40.0), 0)
    held = rss_kib()
    held_blocks = sys.getallocatedblocks()
    refreshed, peak = 0, held
    end = now
    while refreshed < subscriptions:
        end += 1.0
        sent, peak = run_until(end, peak)
        refreshed += sent
    peak = max(peak, rss_kib())
    # The wave's Timer Js (and the next refreshes, if they come that soon).
    run_until(now + 40.0, peak)
    assert ua.subscription_count == subscriptions, "a subscription was lost in the replay"
    return {
        "empty": empty / 1024, "held": held / 1024, "peak": peak / 1024,
        "after": rss_kib() / 1024, "per": (held - empty) * 1024 / subscriptions,
        "held_blocks": held_blocks, "after_blocks": sys.getallocatedblocks(),
    }


def run(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    return run_child(Path(__file__).resolve(), tree,  # type: ignore[no-any-return]
                     "--subscriptions", str(args.subscriptions), "--rate", str(args.rate),
                     "--expires", str(args.expires))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscriptions", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=400.0,
                        help="subscriptions made a second (fake clock)")
    parser.add_argument("--expires", type=int, default=300, help="seconds the server grants")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--reference", metavar="DIR", type=Path,
                        help="also run from this source tree, for the ratio")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(HERE))
        sys.path.insert(0, str((args.tree or REPO).resolve()))
        print(json.dumps(child(args.subscriptions, args.rate, args.expires)))
        return 0
    results = interleaved(REPO, args.reference, args.repeat, lambda tree: run(tree, args))
    print(f"{args.subscriptions:,} subscriptions made at {args.rate:,.0f}/s, server grants "
          f"{args.expires} s; RSS MiB (lowest of {args.repeat} runs)")
    print("| tree | held | peak in the wave | after the wave | B per subscription held "
          "| blocks held | blocks after |")
    print("|---|---|---|---|---|---|---|")
    best = {name: {key: min(r[key] for r in runs) for key in runs[0]}
            for name, runs in results.items()}
    for name, b in best.items():
        print(f"| {name} | {b['held']:.1f} | {b['peak']:.1f} | {b['after']:.1f} | "
              f"{b['per']:,.0f} | {b['held_blocks']:,.0f} | {b['after_blocks']:,.0f} |")
    if args.reference:
        t, r = best["tree"], best["reference"]
        print(f"ratio to reference: held {t['held'] / r['held']:.3f}, peak "
              f"{t['peak'] / r['peak']:.3f}, per subscription {t['per'] / r['per']:.3f}")
        print(f"reference: {args.reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
