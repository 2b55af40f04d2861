"""CPU of the user agent's deadline bookkeeping per subscription refresh.

    .venv/bin/python bench/timer_cost.py                      # 100,000 keys, ~30 s
    .venv/bin/python bench/timer_cost.py --keys 1000000 --rounds 1

Replays, on ``sip.timers.TimerHeap`` and ``sip.timers.TimerCalendar`` in the
same run, the calls the user agent makes on its deadlines for each refresh of
a held subscription (traced from ``bench/sip_refresh_cost.py``): the key comes
due on the refresh grid and is popped; it is filed at the expiry the refresh
asks for (off the grid), then at the next refresh on the grid, and filed
there again (the NOTIFY); the earliest deadline is asked for after each of
the three datagrams.  The keys start spread over the grid's instants as a
burst of creations leaves them, and the clock goes a second at a time, so
each second pops the keys due then.  Printed: µs of CPU per refresh
(``time.process_time``, best of ``--repeat``) for each, and their ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip.timers import TimerCalendar, TimerHeap  # noqa: E402

GRANT = 600.0


def refresh_delay(rng: random.Random) -> float:
    # RefreshPolicy's default window for a 600-s grant: 450-540 s.
    return 450.0 + 90.0 * rng.random()


def replay(kind: type[Any], keys: int, rounds: int, seed: int) -> float:
    rng = random.Random(seed)
    timers = kind()
    for key in range(keys):
        timers.schedule(float(int(refresh_delay(rng))), key)
    timers.schedule(1e9, -1)  # an OPTIONS-probe-like deadline that never comes
    refreshed = 0
    target = keys * rounds
    now = 0.0
    cpu = 0.0
    clock = time.process_time
    while refreshed < target:
        now += 1.0
        start = clock()
        for key in timers.pop_expired(now):
            timers.schedule(now + GRANT + rng.random(), key)  # the refresh sent
            timers.next_deadline()
            at = float(int(now + refresh_delay(rng)))
            timers.schedule(at, key)  # its 200
            timers.next_deadline()
            timers.schedule(at, key)  # the NOTIFY
            timers.next_deadline()
            refreshed += 1
        cpu += clock() - start
    return cpu / refreshed * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2, help="refreshes per key")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"TimerHeap": [], "TimerCalendar": []}
    for run in range(args.repeat):
        # Alternating, so that neither side always runs on a warmer machine.
        for kind in (TimerHeap, TimerCalendar) if run % 2 == 0 else (TimerCalendar, TimerHeap):
            results[kind.__name__].append(replay(kind, args.keys, args.rounds, seed=run))
    heap, calendar = min(results["TimerHeap"]), min(results["TimerCalendar"])
    print(f"{args.keys:,} keys x {args.rounds} refreshes, best of {args.repeat}; "
          "µs CPU per refresh")
    print(f"  TimerHeap      {heap:6.2f}")
    print(f"  TimerCalendar  {calendar:6.2f}   {calendar / heap:.2f}x the heap")


if __name__ == "__main__":
    main()
