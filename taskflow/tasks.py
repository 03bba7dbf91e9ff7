"""Background tasks done reliably: stopping them, and reading batches ahead of a consumer.

On Python 3.11 one `Task.cancel()` can be lost: `asyncio.wait_for`, which the MongoDB driver
uses around every socket read and write, swallows a cancellation that arrives just as the
awaited operation completes (CPython gh-86296, fixed in 3.12). The task then runs on, and
`task.cancel(); await task` waits for it forever: a rebuild hung that way in the scale
benchmark with its lease renewer asleep, and a projector told to stop did not.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

T = TypeVar("T")

# How long to wait for a cancelled task before cancelling it again.
RECANCEL_SECONDS = 0.5


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` until it has finished; its own outcome (cancelled or not) is dropped."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    if not task.cancelled():
        task.exception()  # retrieved: the task's failure was its own business, already logged


async def batches(items: AsyncIterator[T], size: int) -> AsyncGenerator[list[T], None]:
    """`items` in lists of `size` (the last one shorter)."""
    batch: list[T] = []
    async for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def read_ahead(source: AsyncGenerator[T, None], depth: int = 1) -> AsyncGenerator[T, None]:
    """The items of `source`, with up to `depth` more read by a task of its own meanwhile.

    A MongoDB cursor asks for its next batch only when the last one is used up, so a consumer
    that works on each batch leaves the server idle meanwhile, then waits for it; reading from
    a task overlaps the two (the server and Python run on different cores). The reader's
    error, if any, is raised here after the items read before it.
    """
    queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=depth)
    failed: list[Exception] = []

    async def fill() -> None:
        # No `finally` that awaits: a reader cancelled while the queue is full (the consumer
        # stopped early) must end at once, not wait on the queue again.
        try:
            async with contextlib.aclosing(source) as items:
                async for item in items:
                    await queue.put(item)
        except Exception as exc:  # handed to the consumer, after the items read before it
            failed.append(exc)
        await queue.put(None)

    reader = asyncio.create_task(fill())
    try:
        while (item := await queue.get()) is not None:
            yield item
        if failed:
            raise failed[0]
    finally:
        await cancel_and_wait(reader)
