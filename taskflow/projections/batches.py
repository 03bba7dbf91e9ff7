"""The log in batches, read ahead: the next batch streams in while the current one is applied."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from taskflow.events.records import Commit
from taskflow.tasks import cancel_and_wait

T = TypeVar("T")


async def batches(commits: AsyncIterator[Commit], size: int) -> AsyncGenerator[list[Commit], None]:
    """`commits` in lists of `size` (the last one shorter)."""
    batch: list[Commit] = []
    async for commit in commits:
        batch.append(commit)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


async def read_ahead(
    source: AsyncGenerator[T, None],
) -> AsyncGenerator[T, None]:
    """The batches of `source`, with the next one read by a task of its own meanwhile.

    Reading the log is mostly waiting for the server (FerretDB sorts and sends), applying a
    batch mostly waiting for the read models' servers: overlapping them is nearly free time.
    The reader's error, if any, is raised here after the batches read before it.
    """
    queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=1)
    failed: list[Exception] = []

    async def fill() -> None:
        # No `finally` that awaits: a reader cancelled while the queue is full (the consumer
        # stopped early) must end at once, not wait on the queue again.
        try:
            async with contextlib.aclosing(source) as batched:
                async for batch in batched:
                    await queue.put(batch)
        except Exception as exc:  # handed to the consumer, after the batches read before it
            failed.append(exc)
        await queue.put(None)

    reader = asyncio.create_task(fill())
    try:
        while (batch := await queue.get()) is not None:
            yield batch
        if failed:
            raise failed[0]
    finally:
        await cancel_and_wait(reader)  # not a lone cancel(): see taskflow/tasks.py
