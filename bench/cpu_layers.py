"""The adapter's CPU by layer, from bench/cpu_sampler.py's output.

    .venv/bin/python bench/cpu_layers.py OUT.json --exchanges 25000 [--top 30]

Each sample is charged to the layer of its innermost frame that belongs to
one (a frame of the standard library charges its caller: a dataclass's
``__init__`` made by ``dataclasses`` belongs to whoever made the object),
except that logging, sqlite3 and json are layers of their own wherever they
are called from.  The main thread's CPU, less its garbage collections, is
shared out in proportion to the samples; the collections and the other
threads are rows of their own.  ``--exchanges``: SIP exchanges (a request
and its answer) in the sampled time, to print µs per exchange.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

#: (layer, substrings of a frame's file): the first match from the innermost frame wins.
LAYERS = [
    ("logging", ("/logging/", "adapter/logs.py")),
    ("store (sqlite, adapter/store)", ("/sqlite3/", "adapter/store/", "adapter/records.py")),
    ("json", ("/json/",)),
    ("metrics", ("adapter/metrics.py", "adapter/health.py", "adapter/liveness.py")),
    ("driver (sip/aio)", ("sip/aio/",)),
    ("sip parse/serialise", ("sip/message.py", "sip/headers.py", "sip/uri.py",
                             "sip/params.py", "sip/multipart.py")),
    ("sip transactions/timers", ("sip/transaction.py", "sip/timers.py")),
    ("sip user agent, dialogs, publications", ("sip/useragent.py", "sip/subscription.py",
                                               "sip/publication.py", "sip/digest.py")),
    ("pidf", ("/pidf/",)),
    ("adapter watch (watch/watcher/rules)", ("adapter/watch.py", "adapter/watcher.py",
                                             "adapter/rules.py", "adapter/xcap.py")),
    ("adapter publish", ("adapter/publisher.py", "adapter/presentity.py")),
    ("adapter bayeux/notification", ("adapter/bayeux/", "adapter/notification.py",
                                     "adapter/presence_json.py", "adapter/cluster/")),
    ("adapter other", ("/adapter/",)),
    ("http (uvicorn, starlette)", ("/uvicorn/", "/starlette/", "/httptools/", "/h11/")),
    ("asyncio (Python)", ("/asyncio/",)),
]
LOOP = "loop (C: uvloop, recvfrom, epoll)"


def layer(stack: str) -> str:
    frames = stack.split(";")
    # uvloop's loop is C under asyncio.run's frame: a sample in that frame,
    # or at the first instruction of a callback the loop called, is CPU the
    # loop spent before it (bench/cpu_sampler.py).
    if "/asyncio/runners.py:" in frames[-1] or (
        frames[-1].endswith("@start") and len(frames) > 1
        and "/asyncio/runners.py:" in frames[-2]
    ):
        return LOOP
    for frame in reversed(frames):
        path = frame.split(":", 1)[0]
        for name, needles in LAYERS:
            if any(n in path for n in needles):
                return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--exchanges", type=float, default=0.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    data = json.loads(args.profile.read_text())
    samples: dict[str, int] = data["samples"]
    total = sum(samples.values())
    main_thread = max(data["threads"].items(), key=lambda kv: kv[1])
    gc_seconds = sum(s for _, s in data["gc"].values())
    others = {k: v for k, v in data["threads"].items() if k != main_thread[0] and v > 0}
    shared = max(main_thread[1] - gc_seconds, 0.0)
    rows: Counter[str] = Counter()
    for stack, count in samples.items():
        rows[layer(stack)] += shared * count / total
    rows["garbage collection"] = gc_seconds
    # The store's writer and the executor's threads (CPython 3.11 does not
    # name them for the kernel).
    rows["other threads (store writer, executor)"] = sum(others.values())
    per = args.exchanges
    print(f"{data['wall']:.1f} s sampled, process CPU {data['process_cpu']:.2f} s "
          f"({data['process_cpu'] / data['wall'] * 100:.1f} % of a core), {total:,} samples; "
          f"collections {dict(data['gc'])}")
    print("| layer | CPU s | share | µs per exchange |")
    print("|---|---|---|---|")
    whole = sum(rows.values())
    for name, seconds in rows.most_common():
        us = f"{seconds / per * 1e6:.1f}" if per else "—"
        print(f"| {name} | {seconds:.2f} | {seconds / whole * 100:.1f} % | {us} |")
    us = f"{whole / per * 1e6:.1f}" if per else "—"
    print(f"| **all** | {whole:.2f} | 100 % | {us} |")
    # The functions samples land in (innermost frame), and the project functions
    # under which they land (innermost project frame), for finding the spots.
    inner: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    for stack, count in samples.items():
        frames = stack.split(";")
        inner[frames[-1].rsplit(":", 1)[0]] += count
        mine = next((f for f in reversed(frames)
                     if "/sip/" in f or "/adapter/" in f or "/pidf/" in f), frames[-1])
        owner[mine.rsplit(":", 1)[0]] += count
    for title, table in (("innermost function", inner), ("innermost project function", owner)):
        print(f"\n{title}: share of samples")
        for name, count in table.most_common(args.top):
            print(f"  {count / total * 100:5.1f} %  {name}")


if __name__ == "__main__":
    main()
