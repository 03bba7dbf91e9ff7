"""Batches read ahead of the rebuild's pass: errors arrive in order, stopping early never hangs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from taskflow.tasks import read_ahead


async def _numbered(count: int, fail_after: int | None = None) -> AsyncGenerator[list[Any], None]:
    for n in range(count):
        if n == fail_after:
            raise RuntimeError("the log went away")
        yield [n]


async def test_every_batch_arrives_in_order() -> None:
    """The batches come out as the source made them."""
    assert [b async for b in read_ahead(_numbered(5))] == [[0], [1], [2], [3], [4]]


async def test_a_source_error_is_raised_after_the_batches_read_before_it() -> None:
    """The consumer sees what was read, then the reader's error."""
    seen: list[list[Any]] = []

    async def consume() -> None:
        async for batch in read_ahead(_numbered(5, fail_after=3)):
            seen.append(batch)

    with pytest.raises(RuntimeError, match="went away"):
        await consume()
    assert seen == [[0], [1], [2]]


@pytest.mark.timeout(10)
async def test_a_consumer_that_stops_early_with_the_queue_full_does_not_hang() -> None:
    """Leaving the loop while the reader waits on a full queue ends the reader at once."""
    ahead = read_ahead(_numbered(100))
    async with asyncio.timeout(5):
        async for _ in ahead:
            await asyncio.sleep(0.01)  # the reader fills the queue meanwhile
            break
        await ahead.aclose()
