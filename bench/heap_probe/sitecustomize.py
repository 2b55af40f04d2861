"""A heap probe for an adapter started by a benchmark (not imported otherwise).

Copy this file into a source tree given to ``bench/scale_adapter.py --source
DIR`` and set ``MEMPROBE_OUT=/path/prefix`` in the benchmark's environment:
Python imports ``sitecustomize`` from the adapter's PYTHONPATH at start-up,
so tracemalloc traces the adapter from its first allocation.  ``kill -USR2``
the adapter (once everything is held) writes ``PREFIX.N.snap`` (a tracemalloc
snapshot, one frame per allocation), ``PREFIX.N.status`` (VmRSS, VmHWM) and,
with tracing stopped, ``PREFIX.N.census`` (live objects by type: count and
``sys.getsizeof`` total).  With ``MEMPROBE_KEEP=1`` tracing goes on after a
snapshot (the census file is left empty), so that one run gives several
snapshots to subtract — after the publications, once everything is held.
``bench/heap_table.py`` sums snapshots by structure.
"""

import os

if os.environ.get("MEMPROBE_OUT"):
    import collections
    import gc
    import signal
    import sys
    import tracemalloc

    tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "1")))
    _dumps = [0]

    def _dump(signum: int, frame: object) -> None:
        _dumps[0] += 1
        out = f"{os.environ['MEMPROBE_OUT']}.{_dumps[0]}"
        gc.collect()
        with open("/proc/self/status") as status, open(out + ".status", "w") as kept:
            kept.writelines(line for line in status if line.startswith(("VmRSS", "VmHWM")))
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(out + ".snap")
            if os.environ.get("MEMPROBE_KEEP"):
                open(out + ".census", "w").close()
                return
            tracemalloc.stop()  # the census below would be traced too
        counts: collections.Counter[str] = collections.Counter()
        sizes: collections.Counter[str] = collections.Counter()
        tracked = gc.get_objects()
        seen = {id(o) for o in tracked}
        todo = list(tracked)
        del tracked
        while todo:
            obj = todo.pop()
            kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
            counts[kind] += 1
            sizes[kind] += sys.getsizeof(obj)
            for ref in gc.get_referents(obj):  # untracked objects (str, bytes, ...)
                if id(ref) not in seen and not gc.is_tracked(ref):
                    seen.add(id(ref))
                    todo.append(ref)
        with open(out + ".census", "w") as census:
            for kind, size in sizes.most_common(200):
                census.write(f"{size:>14,} {counts[kind]:>10,} {kind}\n")

    signal.signal(signal.SIGUSR2, _dump)
