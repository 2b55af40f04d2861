"""The C heap's free pages given back to the system, once a minute.

Objects of more than 512 bytes — datagrams, SIP messages as bytes, PIDF
bodies, JSON — come from the C library's ``malloc``, not from Python's own
arenas.  A burst of them (a refresh wave: each held subscription's SUBSCRIBE,
200 and NOTIFY within minutes of the others) is freed in the middle of the
heap, among objects that live on, and glibc's ``free`` gives back only what is
free at the heap's top: without more, the process keeps the RSS of its
busiest minute for good.  ``malloc_trim(0)`` gives back every whole free page
of the heap (glibc 2.8 and later).  It walks the heap's free chunks in a
worker thread: it does not hold the GIL, and Python's small objects do not
take the heap's lock it holds meanwhile.  Where the C
library has no ``malloc_trim`` (musl, macOS), nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable

__all__ = ["TRIM_INTERVAL", "HeapTrim", "malloc_trim"]

#: Seconds between two trims.
TRIM_INTERVAL = 60.0


def _find_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


#: glibc's ``malloc_trim``, or None where the C library has none.
malloc_trim = _find_trim()


class HeapTrim:
    """Calls ``malloc_trim(0)`` every ``interval`` seconds while started."""

    def __init__(self, interval: float = TRIM_INTERVAL,
                 trim: Callable[[int], int] | None = malloc_trim) -> None:
        self._interval = interval
        self._trim = trim
        self._task: asyncio.Task[None] | None = None
        #: Trims done (for tests and the curious).
        self.trims = 0

    def start(self) -> None:
        if self._trim is not None and self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        trim = self._trim
        assert trim is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            await loop.run_in_executor(None, trim, 0)
            self.trims += 1
