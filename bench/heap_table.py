"""Sum tracemalloc snapshots of the adapter by structure, per subscription.

    .venv/bin/python bench/heap_table.py --per 10000 before=/tmp/a.1.snap after=/tmp/b.1.snap
    .venv/bin/python bench/heap_table.py --per 5000 --minus /tmp/b.1.snap held=/tmp/b.2.snap

Each snapshot (``bench/heap_probe``'s, one frame per allocation) is grouped by
the file that allocated, into the structures the adapter keeps per held
subscription; the figures are bytes divided by ``--per`` (the subscriptions
held), as a Markdown table, one column per snapshot.  What is fixed (code,
modules) is divided too: compare columns of the same size.
"""

from __future__ import annotations

import argparse
import collections
import re
import tracemalloc

GROUPS = [
    ("watch records and their containers (adapter/watch.py, records.py; "
     "dataclass __init__s)", r"^(<string>|adapter/watch\.py|adapter/records\.py)"),
    ("rules cache: pres-rules documents (pidf/presrules.py)", r"^pidf/presrules\.py"),
    ("decoded PIDF documents (pidf/document.py, model.py)", r"^pidf/(document|model)\.py"),
    ("SIP subscriptions: records, tags, ids, events (sip/useragent.py, subscription.py, "
     "message.py, transaction.py, headers.py, params.py)",
     r"^sip/(useragent|subscription|message|transaction|headers|params)\.py"),
    ("parsed URIs (sip/uri.py)", r"^sip/uri\.py"),
    ("timer heap (sip/timers.py)", r"^sip/timers\.py"),
    ("handles, futures, callbacks (sip/aio/, adapter/watcher.py)",
     r"^(sip/aio/|adapter/watcher\.py)"),
    ("REST requests' decoded values (adapter/models.py, rest.py, presence_json.py, starlette)",
     r"^(adapter/(models|rest|presence_json)\.py|.*starlette/)"),
    ("Bayeux backlog (json, adapter/bayeux/)", r"^(json/|adapter/bayeux/)"),
    ("XCAP reads under way (adapter/xcap.py, httpx, httpcore, anyio, asyncio, contextlib)",
     r"^(adapter/xcap\.py|.*(httpx|httpcore|anyio)/|asyncio/|contextlib\.py)"),
    ("code and modules (importlib, abc, typing, enum, dataclasses)",
     r"^(<frozen|typing\.py|enum\.py|dataclasses\.py)"),
]


def relative(filename: str) -> str:
    """The file as its package names it (a tree's root, site-packages, stdlib cut)."""
    for marker in ("/site-packages/", "/lib/python3."):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    match = re.search(r"/((?:adapter|sip|pidf|bench|tests)/.*)$", filename)
    return match.group(1) if match else filename


def grouped(path: str) -> collections.Counter[str]:
    sums: collections.Counter[str] = collections.Counter()
    for stat in tracemalloc.Snapshot.load(path).statistics("filename"):
        name = relative(stat.traceback[0].filename)
        group = next((g for g, pattern in GROUPS if re.search(pattern, name)), "other")
        sums[group] += stat.size
        sums["total"] += stat.size
    return sums


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per", type=int, required=True, help="subscriptions held")
    parser.add_argument("--minus", metavar="FILE",
                        help="a snapshot of the same run to subtract from each (e.g. the one "
                             "after the publications: what the subscriptions added)")
    parser.add_argument("snapshots", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args(argv)
    columns = [(name, grouped(path))
               for name, path in (item.split("=", 1) for item in args.snapshots)]
    if args.minus:
        base = grouped(args.minus)
        for _, sums in columns:
            sums.subtract(base)
    print("| B per subscription | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for group in [g for g, _ in GROUPS] + ["other", "total"]:
        print(f"| {group} | "
              + " | ".join(f"{sums[group] / args.per:,.0f}" for _, sums in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
