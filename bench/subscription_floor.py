"""What the least a pure-Python gateway must keep per held subscription costs.

    .venv/bin/python bench/subscription_floor.py                 # 100,000, a few seconds
    .venv/bin/python bench/subscription_floor.py --count 20000

Not the product: plain slotted records holding only what a subscriber's dialog
and a watch cannot do without, every value shared that can be (addresses,
channels, decisions, the last document), each record filed in the indexes a
gateway needs to find it (by id, by dialog, by watcher and presentity, in a
timer heap).  Unique per subscription: the Call-ID, both tags, the correlator,
the CSeq, two instants.  Python heap (tracemalloc) and RSS growth per
subscription are printed; a figure below them is not reachable in CPython
with one object per subscription and its own strings.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import os
import secrets
import sys
import tracemalloc


class Dialog:
    """The subscriber's side of a SUBSCRIBE dialog (RFC 6665 §4.1, RFC 3261 §12)."""

    __slots__ = ("call_id", "cseq", "expires_at", "id", "local_tag", "refresh_at",
                 "remote_tag", "remote_target", "state", "subscriber", "target")

    def __init__(self, ident: int, subscriber: str, target: str, call_id: str, local_tag: str,
                 remote_tag: str, remote_target: str, now: float) -> None:
        self.id = ident
        self.subscriber = subscriber
        self.target = target
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.remote_target = remote_target
        self.cseq = 1
        self.state = "active"
        self.expires_at = now + 3600.0
        self.refresh_at = now + 2700.0 + ident % 540


class Watch:
    """A watcher's watch of a presentity: whom to tell, under what decisions."""

    __slots__ = ("app", "correlator", "decisions", "dialog", "endpoint", "presence",
                 "presentity", "state", "watcher")

    def __init__(self, app: str, watcher: str, presentity: str, correlator: str, endpoint: str,
                 decisions: object, presence: object, dialog: Dialog) -> None:
        self.app = app
        self.watcher = watcher
        self.presentity = presentity
        self.correlator = correlator
        self.endpoint = endpoint
        self.decisions = decisions
        self.presence = presence
        self.dialog = dialog
        self.state = "active"


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args(argv)
    watchers = [sys.intern(f"sip:w{i}@bench.example.com") for i in range(args.count // 100 + 1)]
    presentities = [sys.intern(f"sip:p{i}@bench.example.com") for i in range(10_000)]
    endpoints = [sys.intern(f"/bayeux/a{i}/presence") for i in range(10)]
    decisions = {"Activity": True, "Place": True}
    presence = object()  # one decoded document shared by a presentity's watchers
    contact = "sip:127.0.0.1:5060"
    def fill() -> list[object]:
        by_id: dict[int, Dialog] = {}
        by_dialog: dict[tuple[str, str], Dialog] = {}
        timers: list[tuple[float, int, int]] = []
        watches: dict[tuple[str, str], Watch] = {}
        now = 1_000_000.0
        for i in range(args.count):
            # Watcher w watches 100 presentities, each watched by watchers/100.
            w, j = divmod(i, 100)
            watcher = watchers[w]
            presentity = presentities[(j * 100 + w % 100) % len(presentities)]
            dialog = Dialog(i, watcher, presentity, secrets.token_hex(8), secrets.token_hex(8),
                            secrets.token_hex(16), contact, now)
            by_id[i] = dialog
            by_dialog[(dialog.call_id, dialog.local_tag)] = dialog
            heapq.heappush(timers, (dialog.refresh_at, i, i))
            watches[(watcher, presentity)] = Watch(
                f"a{i % 10}", watcher, presentity, f"corr-{i}", endpoints[i % 10], decisions,
                presence, dialog)
        return [by_id, by_dialog, timers, watches]

    # RSS without tracing first; then the same again under tracemalloc.
    gc.collect()
    rss0 = rss_kib()
    held = fill()
    gc.collect()
    rss = rss_kib()
    del held
    gc.collect()
    tracemalloc.start()
    held = fill()
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(held[0]) == args.count  # type: ignore[arg-type]
    print(f"{args.count:,} subscriptions, the least kept per subscription:")
    print(f"  Python heap (tracemalloc): {traced / args.count:,.0f} B per subscription, "
          f"{traced / 2**20:,.1f} MiB in all")
    print(f"  RSS growth (no tracing): {(rss - rss0) * 1024 / args.count:,.0f} B per "
          f"subscription, {(rss - rss0) / 1024:,.1f} MiB in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
