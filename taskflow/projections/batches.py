"""The log in batches (read ahead of their consumer with `taskflow.tasks.read_ahead`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from taskflow.events.records import Commit


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
