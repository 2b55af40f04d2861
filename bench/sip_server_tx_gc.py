"""What completed NOTIFY server transactions cost the garbage collector.

    .venv/bin/python bench/sip_server_tx_gc.py                  # ~1 min
    .venv/bin/python bench/sip_server_tx_gc.py --baseline REV --notifies 32000

Every NOTIFY the adapter answers over UDP leaves a server transaction in
Completed for Timer J, 64*T1 = 32 s (RFC 3261 §17.2.2), so that a
retransmitted NOTIFY gets the same response again: at 1,000 NOTIFYs/s some
32,000 of them are alive at any time.  This replays that load on a
``sip.useragent.UserAgent`` under a fake clock (no sockets, no asyncio), in
a child process per tree, side by side:

* ``ua``   — the working tree;
* ``base`` — ``--baseline REV`` (default e26aa50, the tree before completed
  server transactions were kept as untracked records), checked out with
  ``git worktree add --detach`` into a temporary directory and removed after.

Each child sets up ``--subscriptions`` (100) subscriptions, freezes what
exists (as adapter/cli.py does at start-up), then:

1. **fill**: with the collector disabled, ``--notifies`` in-dialog NOTIFYs
   with a PIDF body at ``--rate`` per second of fake time, answered and their
   events drained; then ``gc.collect(0)``, ``gc.collect(1)``,
   ``gc.collect(2)`` are timed (the first walks everything the fill left
   alive — the young generation full of transactions), and the tracked
   objects still alive are counted (``len(gc.get_objects())`` after the
   fill minus before it);
2. **steady**: the collector on with the adapter's thresholds
   (adapter.cli.GC_THRESHOLDS, read from the working tree), as many NOTIFYs
   again while Timer J ends as many transactions as are born;
   ``gc.callbacks`` times every collection: count, median and max per
   generation, and the CPU per NOTIFY.

Not a latency figure: bench/notify_latency.py measures what the collections
do to NOTIFY→Bayeux end to end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BASELINE = "e26aa50"

PIDF = (
    '<?xml version="1.0" encoding="UTF-8"?>\r\n'
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:{user}@bench.example.com">'
    '<tuple id="t1"><status><basic>open</basic></status><note>n{n}</note></tuple>'
    "</presence>"
)


def _child(tree: str, notifies: int, rate: float, subscriptions: int) -> dict[str, Any]:
    sys.path.insert(0, tree)
    from sip.message import Response, parse_message
    from sip.uri import SipURI
    from sip.useragent import Destination, UserAgent

    sys.path.remove(tree)
    sys.path.insert(0, str(REPO))
    from adapter.cli import GC_THRESHOLDS

    server = Destination("udp", "127.0.0.1", 5070)
    ua = UserAgent(
        local=Destination("udp", "127.0.0.1", 5080),
        server=SipURI.parse("sip:127.0.0.1:5070"),
        rng=random.Random(1),
    )
    dialogs: list[tuple[str, str, str, str]] = []  # call-id, our tag, user, route
    now = 0.0
    for i in range(subscriptions):
        ua.subscribe(
            SipURI.parse(f"sip:app{i}@bench.example.com"),
            SipURI.parse(f"sip:user{i}@bench.example.com"),
            now,
        )
        (data, _), = ua.datagrams_to_send()
        request = parse_message(data)
        assert not isinstance(request, Response)
        ok = request.response(200, to_tag=f"srv{i}")
        ok.headers.add("Expires", "3600")
        ok.headers.add("Contact", "<sip:presence@127.0.0.1:5070>")
        ua.receive(bytes(ok), server, now)
        assert request.from_.tag is not None
        dialogs.append((request.call_id, request.from_.tag, f"user{i}", f"app{i}"))
    while ua.next_event() is not None:
        pass
    cseqs = [1] * subscriptions
    sent = 0

    def notify(n: int, now: float) -> None:
        nonlocal sent
        d = n % subscriptions
        call_id, tag, user, app = dialogs[d]
        cseqs[d] += 1
        body = PIDF.format(user=user, n=n)
        text = (
            f"NOTIFY sip:{app}@127.0.0.1:5080 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{n:x}x{d}\r\n"
            f"From: <sip:{user}@bench.example.com>;tag=srv{d}\r\n"
            f"To: <sip:{app}@bench.example.com>;tag={tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseqs[d]} NOTIFY\r\n"
            "Max-Forwards: 70\r\nEvent: presence\r\n"
            "Contact: <sip:presence@127.0.0.1:5070>\r\n"
            "Subscription-State: active;expires=3000\r\n"
            f"Content-Type: application/pidf+xml\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        )
        ua.receive(text.encode(), server, now)
        deadline = ua.get_timer()
        if deadline is not None and deadline <= now:
            ua.handle_timer(now)
        sent += len(ua.datagrams_to_send())
        while ua.next_event() is not None:
            pass

    gc.collect()
    gc.freeze()
    gc.disable()
    before = len(gc.get_objects())
    start = 1.0
    for n in range(notifies):
        notify(n, start + n / rate)
    filled = len(gc.get_objects()) - before
    timed: dict[str, float] = {}
    for generation in (0, 1, 2):
        t0 = time.perf_counter()
        gc.collect(generation)
        timed[f"collect({generation}) ms"] = (time.perf_counter() - t0) * 1e3
    alive = len(gc.get_objects()) - before

    # Steady state: Timer J ends as many as are born.
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    t_start = 0.0

    def probe(phase: str, info: dict[str, int]) -> None:
        nonlocal t_start
        if phase == "start":
            t_start = time.perf_counter()
        else:
            pauses[info["generation"]].append((time.perf_counter() - t_start) * 1e3)

    gc.set_threshold(*GC_THRESHOLDS)
    gc.callbacks.append(probe)
    gc.enable()
    cpu0 = time.process_time()
    for n in range(notifies, 2 * notifies):
        notify(n, start + n / rate)
    cpu = time.process_time() - cpu0
    gc.disable()
    gc.callbacks.remove(probe)
    result: dict[str, Any] = {
        "tracked after fill": filled,
        "tracked alive after collect(2)": alive,
        "per NOTIFY": alive / notifies,
        **timed,
        "answers": sent,
        "steady µs CPU/NOTIFY": cpu / notifies * 1e6,
    }
    for generation, times in pauses.items():
        result[f"gen{generation} n"] = len(times)
        result[f"gen{generation} median ms"] = statistics.median(times) if times else 0.0
        result[f"gen{generation} max ms"] = max(times) if times else 0.0
    result["thresholds"] = list(GC_THRESHOLDS)
    return result


def _run_child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(tree), "--notifies", str(args.notifies),
         "--rate", str(args.rate), "--subscriptions", str(args.subscriptions)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare")
    parser.add_argument("--notifies", type=int, default=32_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="NOTIFYs per fake second")
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2, help="runs per side, alternating")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.notifies, args.rate, args.subscriptions)))
        return 0

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="sip-tx-gc-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base),
                        args.baseline], check=True)
        try:
            rev = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"],
                                 check=True, capture_output=True, text=True).stdout.strip()
            results: dict[str, list[dict[str, Any]]] = {"base": [], "ua": []}
            for _ in range(args.repeat):
                results["base"].append(_run_child(base, args))
                results["ua"].append(_run_child(REPO, args))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)],
                           check=False)
    print(f"{args.notifies} NOTIFYs at {args.rate:g}/s of fake time, {args.subscriptions} "
          f"subscriptions; base = {rev}; thresholds {results['ua'][0]['thresholds']}")
    keys = [k for k in results["ua"][0] if k != "thresholds"]
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(
        f"{side}#{i + 1:<7}" for side in ("base", "ua") for i in range(args.repeat)))
    for key in keys:
        cells = [results[side][i][key] for side in ("base", "ua") for i in range(args.repeat)]
        print(f"{key:{width}}  " + "  ".join(
            f"{c:>10.2f}" if isinstance(c, float) else f"{c:>10}" for c in cells))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
