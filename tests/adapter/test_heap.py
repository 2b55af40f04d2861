"""HeapTrim: glibc's malloc_trim now and then, nothing where there is none."""

from __future__ import annotations

import asyncio
import sys

import pytest

from adapter.heap import HeapTrim, malloc_trim


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_glibc_s_malloc_trim_is_found_and_callable() -> None:
    assert malloc_trim is not None
    assert malloc_trim(0) in (0, 1)


def test_the_heap_is_trimmed_again_and_again_until_closed() -> None:
    asyncio.run(_trimmed_again_and_again())


async def _trimmed_again_and_again() -> None:
    calls: list[int] = []
    twice = asyncio.Event()

    def trim(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 2:
            twice.set()
        return 1

    heap = HeapTrim(interval=0.001, trim=trim)
    heap.start()
    await asyncio.wait_for(twice.wait(), 10)
    await heap.close()
    done = heap.trims
    assert done >= 2 and set(calls) == {0}
    await asyncio.sleep(0.01)
    assert heap.trims == done  # closed: no more


def test_without_malloc_trim_nothing_runs() -> None:
    async def scenario() -> None:
        heap = HeapTrim(trim=None)
        heap.start()
        assert heap._task is None
        await heap.close()

    asyncio.run(scenario())
