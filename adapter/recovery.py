"""Re-creating the SIP side after a restart, without flooding the presence server.

Ten thousand stored subscriptions must not become ten thousand SUBSCRIBEs in
the same millisecond: :func:`recover` starts them at a bounded rate with a
little jitter, with a bounded number waiting for their answer, and logs its
progress (n of N).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from adapter.metrics import RecoveryProgress

__all__ = ["RecoveryPace", "recover"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RecoveryPace:
    #: Starts per second, on average.
    rate: float = 200.0
    #: Requests waiting for their answer at once.
    concurrency: int = 32
    #: Extra random delay per start, as a fraction of the interval 1/rate.
    jitter: float = 0.5


async def recover(
    what: str,
    items: Sequence[T],
    start: Callable[[T], Awaitable[None]],
    *,
    pace: RecoveryPace = RecoveryPace(),
    rng: random.Random | None = None,
    progress: RecoveryProgress | None = None,
) -> int:
    """Run ``start`` for every item, paced; returns how many succeeded.

    ``start`` reports its own failures (the item stays for its own retry
    logic); an exception it lets escape is logged and counted as a failure.
    """
    total = len(items)
    if progress is not None:
        progress.started(what, total)
    if not total:
        return 0
    rng = rng or random.Random()
    interval = 1.0 / pace.rate
    slots = asyncio.Semaphore(pace.concurrency)
    done = 0
    ok = 0
    step = max(total // 10, 1)
    logger.info("recovering %d %s", total, what)

    async def one(item: T) -> None:
        nonlocal done, ok
        try:
            await start(item)
            ok += 1
        except Exception:
            # Recovery goes on whatever one item does; the log says which.
            logger.exception("recovering one of the %s failed", what)
        finally:
            slots.release()
        done += 1
        if progress is not None:
            progress.advanced(what)
        if done % step == 0 or done == total:
            logger.info("recovered %d of %d %s", done, total, what)

    tasks: list[asyncio.Task[None]] = []
    try:
        for item in items:
            await slots.acquire()
            tasks.append(asyncio.create_task(one(item)))
            await asyncio.sleep(interval * (1 + pace.jitter * rng.random()))
        await asyncio.gather(*tasks)
    finally:
        # Cancelled (the adapter is stopping): what was started stops too,
        # rather than going on against a user agent being closed.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ok
