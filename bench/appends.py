"""Group 1: appends/s through `MongoEventStore.append` vs raw `insert_one`, 1 and N writers."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from bench.harness import Group
from bench.samples import commit_document, metadata, small_event
from bench.servers import Servers, timed
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate
from taskflow.events.store import EventStore


def comparisons(sizes: Sizes) -> list[Comparison]:
    return [
        Comparison(
            f"`append`, {writers} writer{'s, each on its own stream' if writers > 1 else ''}",
            "appends/s",
            f"taskflow:{writers}",
            f"raw:{writers}",
            "`insert_one` loop, same concurrency",
        )
        for writers in (1, sizes.writers)
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    figures: Trial = {}
    for writers, count in ((1, sizes.serial_appends), (sizes.writers, sizes.appends_per_writer)):
        for variant in alternate(["taskflow", "raw"], repetition):
            run = taskflow_appends if variant == "taskflow" else raw_inserts
            figures[f"{variant}:{writers}"] = await run(servers, writers, count)
    return figures


async def taskflow_appends(servers: Servers, writers: int, count: int) -> float:
    """Each writer appends `count` one-event commits to its own stream: versions 1, 2, 3, ..."""
    async with servers.fresh_store() as store:
        streams = [f"bench-{writer}" for writer in range(writers)]
        seconds = await timed(asyncio.gather(*(append_stream(store, s, count) for s in streams)))
    return writers * count / seconds


async def append_stream(store: EventStore, stream_id: str, count: int) -> None:
    """Append `count` commits of one small event each to a new stream, one after another."""
    batch = [([small_event(stream_id)], metadata()) for _ in range(count)]
    for version, (events, meta) in enumerate(batch):
        # Personal data is sealed under its owner's key, as every task command's is.
        await store.append(stream_id, version, events, meta, subject=f"{stream_id}-owner")


async def raw_inserts(servers: Servers, writers: int, count: int) -> float:
    """As many equally sized documents, by `insert_one`, into an identically indexed collection."""
    async with servers.fresh_db() as db:
        commits = (await servers.store_on(db)).commits  # the log's indexes and write concern
        positions = itertools.count(1)
        docs = [
            [commit_document(f"raw-{w}", v, next(positions)) for v in range(1, count + 1)]
            for w in range(writers)
        ]
        seconds = await timed(asyncio.gather(*(_insert_each(commits, batch) for batch in docs)))
    return writers * count / seconds


async def _insert_each(collection: AsyncCollection[dict[str, Any]], docs: list[Any]) -> None:
    for doc in docs:
        await collection.insert_one(doc)


GROUP = Group("1. Appends", comparisons, trial)
