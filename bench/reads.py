"""Group 2: `read_all` commits/s from Redis hints and from MongoDB vs a raw sorted `find`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING
from redis.asyncio import Redis

from bench.appends import append_stream
from bench.harness import Group
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate
from taskflow import names
from taskflow.events.mongo_store import MongoEventStore

# Every commit hint `names.commit_hint_key` makes: deleting them sends readers to MongoDB.
HINT_PATTERN = names.PREFIX + "log:at:*"
RAW_LABEL = '`find({}).sort("position")`, streamed'


def comparisons(sizes: Sizes) -> list[Comparison]:
    commits = _seeded(sizes)
    return [
        Comparison(
            f"`read_all(0)` of {commits:,} commits, Redis hints present (tail path)",
            "events/s",
            "hinted",
            "raw",
            RAW_LABEL,
        ),
        Comparison(
            f"`read_all(0)` of {commits:,} commits, hints deleted (streams from MongoDB)",
            "events/s",
            "log",
            "raw",
            RAW_LABEL,
        ),
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    """All three reads of one freshly written log; the MongoDB path last (it needs no hints)."""
    async with servers.fresh_store() as store:
        commits = await _seed(store, sizes)
        figures: Trial = {}
        for variant in alternate(["hinted", "raw"], repetition):
            read = _read_all(store) if variant == "hinted" else _raw_read(store)
            figures[variant] = await _rate(read, commits)
        await _drop_hints(servers.redis)
        figures["log"] = await _rate(_read_all(store), commits)
    return figures


def _seeded(sizes: Sizes) -> int:
    return sizes.read_commits // sizes.writers * sizes.writers


async def _seed(store: MongoEventStore, sizes: Sizes) -> int:
    """Write the log through `append`: one small event per commit, `writers` streams at once."""
    per_writer = sizes.read_commits // sizes.writers
    streams = [f"bench-{writer}" for writer in range(sizes.writers)]
    await asyncio.gather(*(append_stream(store, s, per_writer) for s in streams))
    return per_writer * sizes.writers


async def _rate(read: AsyncIterator[object], expected: int) -> float:
    """Items/s of consuming `read` to its end; it must yield exactly `expected` items."""
    count, start = 0, time.perf_counter()
    async for _ in read:
        count += 1
    seconds = time.perf_counter() - start
    if count != expected:
        raise RuntimeError(f"read {count} commits, expected {expected}")
    return count / seconds


async def _read_all(store: MongoEventStore) -> AsyncIterator[object]:
    async for commit in store.read_all(0):
        yield commit


async def _raw_read(store: MongoEventStore) -> AsyncIterator[dict[str, Any]]:
    """The same collection in the same order, as raw documents (the reader's batch size)."""
    cursor = store.commits.find({}).sort("position", ASCENDING).batch_size(1000)
    async for doc in cursor:
        yield doc


async def _drop_hints(redis: Redis) -> None:
    keys = [key async for key in redis.scan_iter(match=HINT_PATTERN, count=1000)]
    for start in range(0, len(keys), 1000):
        await redis.unlink(*keys[start : start + 1000])


GROUP = Group("2. Log reads", comparisons, trial)
