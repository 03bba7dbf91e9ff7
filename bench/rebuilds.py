"""Group 7: a zero-downtime rebuild of the task read models, events/s vs a raw scan of the log.

The log is `tests/workload.py`'s backlog with its Redis hints deleted, as for a log older than
the hints' TTL: the rebuild reads MongoDB, builds version 2 of both read models, verifies it
against a fold of the log and switches reads over (`taskflow.projections.rebuild.rebuild`,
what `taskflow projections rebuild` runs). Its fixed grace before dropping version 1
(`DROP_GRACE_SECONDS`, a wait for readers, no work) is not counted.
"""

from __future__ import annotations

import dataclasses
import time

from pymongo import ASCENDING

from bench.harness import Group
from bench.reads import _drop_hints
from bench.servers import Servers
from bench.sizes import Sizes
from bench.stats import Comparison, Trial, alternate
from taskflow.bootstrap import rebuild_read_models
from taskflow.events.mongo_store import MongoEventStore
from taskflow.projections.rebuild import DROP_GRACE_SECONDS
from tests.workload import write_workload


def comparisons(sizes: Sizes) -> list[Comparison]:
    backlog = f"backlog of {sizes.projection_tasks} creates + {sizes.projection_changes:,} changes"
    return [
        Comparison(
            f"`rebuild` (both read models, verified, switched), {backlog}, hints expired",
            "events/s",
            "rebuild",
            "raw_scan",
            '`find({}).sort("position")`, streamed, events counted',
        )
    ]


async def trial(servers: Servers, sizes: Sizes, repetition: int) -> Trial:
    async with servers.fresh_store() as store:
        await write_workload(store, tasks=sizes.projection_tasks, changes=sizes.projection_changes)
        await _settle(store)
        await _drop_hints(servers.redis)
        events, _ = await _raw_scan(store)
        figures: Trial = {"events": events}
        for variant in alternate(["rebuild", "raw_scan"], repetition):
            if variant == "raw_scan":
                counted, seconds = await _raw_scan(store)
                assert counted == events
            else:
                seconds = await _rebuild(servers, store)
            figures[variant] = events / seconds
    return figures


async def _settle(store: MongoEventStore) -> None:
    """Read the log to its end once, as the running projectors have: the settled head is then
    known. (Without it `rebuild` takes the log for empty and switches to an empty version,
    docs/benchmarks.md.)"""
    async for _ in store.read_all(0):
        pass


async def _raw_scan(store: MongoEventStore) -> tuple[int, float]:
    """Events in the log and the seconds one streamed, ordered read of it takes."""
    start, events = time.perf_counter(), 0
    cursor = store.commits.find({}).sort("position", ASCENDING).batch_size(1000)
    async for doc in cursor:
        events += len(doc["events"])
    return events, time.perf_counter() - start


async def _rebuild(servers: Servers, store: MongoEventStore) -> float:
    db = store.commits.database
    views = servers.views_db_of(db)
    services = dataclasses.replace(
        servers.services, db=db, views_db=views, read_db=views, store=store
    )
    start = time.perf_counter()
    await rebuild_read_models(services)
    return time.perf_counter() - start - DROP_GRACE_SECONDS


GROUP = Group("7. Rebuild", comparisons, trial)
