"""Group 3: catch-up throughput of the Redis and MongoDB task views vs raw bulk writes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pymongo import ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from redis.asyncio import Redis

from bench.harness import Group
from bench.servers import Servers, timed
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate
from taskflow.commands.task import TaskState
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.records import Commit
from taskflow.mongo_indexes import serves_query_indexes
from taskflow.projections.mongo_view_writes import REPLACE_CHUNK as BULK_CHUNK
from taskflow.projections.mongo_views import MongoTaskViews, task_view_indexes
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import DEFAULT_BATCH, Projection, run_until_caught_up
from taskflow.projections.views import apply_commit, view_document
from tests.workload import write_workload

VARIANTS = ["redis_views", "mongo_views", "raw_upsert", "raw_hset"]
UPSERT = f"`bulk_write` of `ReplaceOne(upsert=True)` in chunks of {BULK_CHUNK}, same indexes"
HSET = f"pipelined `HSET` of view JSON, {DEFAULT_BATCH} per pipeline"
RAW_PREFIX = "bench:raw:"


def comparisons(sizes: Sizes) -> list[Comparison]:
    backlog = f"backlog of {sizes.projection_tasks} creates + {sizes.projection_changes:,} changes"
    redis, mongo = f"`RedisTaskViews`, {backlog}", f"`MongoTaskViews`, {backlog}"
    return [
        Comparison(redis, "commits/s", "redis_views", "raw_hset", HSET),
        Comparison(redis, "commits/s", "redis_views", "raw_upsert", UPSERT),
        Comparison(mongo, "commits/s", "mongo_views", "raw_upsert", UPSERT),
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    """Each projection catches up from zero on one backlog; raw writes get its view documents."""
    async with servers.fresh_store() as store:
        tasks, changes = sizes.projection_tasks, sizes.projection_changes
        await write_workload(store, tasks=tasks, changes=changes)
        backlog = [commit async for commit in store.read_all(0)]
        views = views_after_each(backlog)
        figures: Trial = {"view_writes": view_writes(backlog), "commits": len(backlog)}
        for variant in alternate(VARIANTS, repetition):
            figures[variant] = await _run(variant, servers, store, backlog, views)
    return figures


async def _run(
    variant: str,
    servers: Servers,
    store: MongoEventStore,
    backlog: Sequence[Commit],
    views: Sequence[TaskState],
) -> float:
    if variant == "redis_views":
        return await _catch_up_rate(
            store, RedisTaskViews(servers.redis, hot=servers.services.hot), len(backlog)
        )
    if variant == "mongo_views":
        return await _catch_up_rate(store, MongoTaskViews(store.commits.database), len(backlog))
    if variant == "raw_upsert":
        return await _raw_upsert_rate(servers, views)
    return await _raw_hset_rate(servers.redis, views)


def views_after_each(backlog: Sequence[Commit]) -> list[TaskState]:
    """The task view after every commit: what a projection writing each commit would write."""
    current: dict[str, TaskState] = {}
    views: list[TaskState] = []
    for commit in backlog:
        if commit.is_gap:
            continue
        task_id = commit.stream_id.removeprefix("task-")
        view = apply_commit(current.get(task_id), commit)
        assert view is not None  # every task stream starts with its creation
        current[task_id] = view
        views.append(view)
    return views


def view_writes(backlog: Sequence[Commit]) -> float:
    """How many view documents the MongoDB projection writes: one per task changed per batch."""
    batches = [backlog[i : i + DEFAULT_BATCH] for i in range(0, len(backlog), DEFAULT_BATCH)]
    return sum(len({c.stream_id for c in batch if not c.is_gap}) for batch in batches)


async def _catch_up_rate(store: MongoEventStore, projection: Projection, expected: int) -> float:
    """Commits/s of `run_until_caught_up` from an empty read model (set-up not timed)."""
    await projection.setup()
    start = time.perf_counter()
    applied = await run_until_caught_up(store, projection)
    seconds = time.perf_counter() - start
    if applied != expected:
        raise RuntimeError(f"{projection.name} applied {applied} positions, expected {expected}")
    return applied / seconds


async def _raw_upsert_rate(servers: Servers, views: Sequence[TaskState]) -> float:
    """Docs/s of upserting one view document per commit into a fresh, identically indexed
    collection, in the chunks the MongoDB projection uses."""
    async with servers.fresh_db() as db:
        target = db["raw_views"]
        if await serves_query_indexes(target):  # as MongoTaskViews.setup decides
            for keys in task_view_indexes():
                await target.create_index(keys)
        docs = [view_document(view) for view in views]
        return len(docs) / await timed(_bulk_upsert(target, docs))


async def _bulk_upsert(target: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), BULK_CHUNK):
        chunk = docs[start : start + BULK_CHUNK]
        await target.bulk_write(
            [ReplaceOne({"_id": doc["_id"]}, doc, upsert=True) for doc in chunk], ordered=False
        )


async def _raw_hset_rate(redis: Redis, views: Sequence[TaskState]) -> float:
    """Docs/s of `HSET`ting one view JSON per commit into per-owner hashes, pipelined."""
    items = [(f"{RAW_PREFIX}u:{v.owner_id}:tasks", v.task_id, v.model_dump_json()) for v in views]
    return len(items) / await timed(_pipelined_hset(redis, items))


async def _pipelined_hset(redis: Redis, items: list[tuple[str, str, str]]) -> None:
    for start in range(0, len(items), DEFAULT_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for key, field, value in items[start : start + DEFAULT_BATCH]:
                pipe.hset(key, field, value)
            await pipe.execute()


GROUP = Group("3. Projection catch-up", comparisons, trial)
