"""Run ``python -m adapter ...`` with a CPU-clock sampling profiler that signals switch on and off.

    python bench/cpu_sampler.py OUT.json -- serve --config FILE    # as `python -m adapter`
    kill -USR1 PID    # start sampling
    kill -USR2 PID    # stop, write OUT.json

bench/scale_adapter.py's ``--cpu-profile`` starts the adapter so and samples
its refresh wave.  Samples are taken on the process's CPU clock
(``setitimer(ITIMER_PROF)``), not on wall-clock time: a process waiting in
``epoll`` or blocked in ``sendto`` takes none, which is what made py-spy's
figures misleading for an idle adapter.  Python runs a signal handler at the
next instruction of the main thread, so:

* a sample of CPU spent in C outside any Python frame (uvloop's loop,
  ``recvfrom``, ``epoll``) lands on the first instruction of the next
  callback the loop calls: such samples (one frame deep, at its first
  instructions) are counted as "loop (C)";
* a sample of CPU spent in a C call made from Python (``sendto``, a sqlite3
  statement, an lxml parse) lands just after it, in its caller;
* a garbage collection is timed apart (``gc.callbacks``, on the thread's CPU
  clock) and its samples, which land after it, are not told apart: the
  report subtracts its time from the samples' total in proportion;
* other threads' CPU (the store's writer) is read per thread from /proc.

The output: ``{"interval", "samples": {stack: count}, "gc": {generation:
[collections, cpu seconds]}, "threads": {name: cpu seconds}, "process_cpu",
"wall"}``, a stack being ``file:function:line`` frames joined by ``;`` from
the outermost.  bench/cpu_layers.py turns it into a table by layer.
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

#: CPU seconds between two samples.
INTERVAL = 0.001

#: Frames of a stack kept, innermost first.
DEPTH = 40


class Sampler:
    def __init__(self, output: Path) -> None:
        self.output = output
        self.samples: Counter[str] = Counter()
        self.gc: dict[int, list[float]] = {}
        self._gc_started = 0.0
        self._started: dict[str, float] = {}
        self._wall = 0.0
        self._cpu = 0.0
        self.running = False

    # -- signals ----------------------------------------------------------

    def start(self, signum: int, frame: FrameType | None) -> None:
        if self.running:
            return
        self.samples.clear()
        self.gc.clear()
        self._started = threads_cpu()
        self._wall = time.monotonic()
        self._cpu = time.process_time()
        gc.callbacks.append(self._on_gc)
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, INTERVAL, INTERVAL)
        self.running = True

    def stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.running:
            return
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        gc.callbacks.remove(self._on_gc)
        self.running = False
        ended = threads_cpu()
        report = {
            "interval": INTERVAL,
            "wall": time.monotonic() - self._wall,
            "process_cpu": time.process_time() - self._cpu,
            "threads": {name: ended[name] - self._started.get(name, 0.0) for name in ended},
            "gc": {str(k): v for k, v in self.gc.items()},
            "samples": dict(self.samples),
        }
        self.output.write_text(json.dumps(report))

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        names = []
        while frame is not None and len(names) < DEPTH:
            code = frame.f_code
            names.append(f"{code.co_filename}:{code.co_name}:{frame.f_lineno}"
                         f"{'@start' if frame.f_lasti <= 2 else ''}")
            frame = frame.f_back
        names.reverse()
        self.samples[";".join(names)] += 1

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        entry = self.gc.setdefault(info["generation"], [0, 0.0])
        entry[0] += 1
        entry[1] += time.thread_time() - self._gc_started


def threads_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by its name (and id)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[f"{name} {task.name}"] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def main() -> None:
    output, separator, *rest = sys.argv[1:]
    if separator != "--":
        raise SystemExit(__doc__)
    sampler = Sampler(Path(output))
    signal.signal(signal.SIGUSR1, sampler.start)
    signal.signal(signal.SIGUSR2, sampler.stop)
    sys.argv = ["adapter", *rest]
    runpy.run_module("adapter", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
