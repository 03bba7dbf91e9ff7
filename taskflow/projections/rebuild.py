"""Zero-downtime rebuilds: build the next read-model version beside the active one, verify, switch.

1. This command takes the leases of version N+1's projections and builds them from one read of
   the log (shared_pass.py), which also folds the log for step 2, while version N keeps serving
   reads. `tf:rm:next` names N+1, so every projector process starts drivers for it too: they
   stand by while the leases are held, and finish the build if this command dies.
2. Once N+1 has caught up with the log, it is verified against the fold of the same read.
3. `tf:rm:active` switches to N+1 in one SET (reads follow within a second); `tf:rm:next` is
   cleared, processes retire version N, and N's keys and collection are dropped after a grace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from taskflow import names
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.read_model_versions import active_version, record_switch
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import Projection
from taskflow.projections.shared_pass import SharedPass
from taskflow.projections.verify import ViewMismatch, verify_against
from taskflow.services import Services

# Reads cache the active version for a second; the old version is dropped only after this.
DROP_GRACE_SECONDS = 5.0

Progress = Callable[[int, int], None]


class RebuildVerificationError(Exception):
    """The rebuilt version does not equal the log; nothing was switched."""

    def __init__(self, mismatches: list[ViewMismatch]) -> None:
        super().__init__(f"{len(mismatches)} task views differ from the log")
        self.mismatches = mismatches


@dataclass(frozen=True)
class RebuildResult:
    old_version: int
    new_version: int
    position: int


async def rebuild(
    services: Services,
    targets: Callable[[int], list[Projection]],
    progress: Progress = lambda done, total: None,
) -> RebuildResult:
    """Rebuild the task read models into the next version and switch reads over to it.

    `targets(version)`: the projections of one read-model version (the composition root's
    `bootstrap.projections`; `bootstrap.rebuild_read_models` wires the two).
    """
    redis = services.redis
    active = await active_version(redis, services.views_db)
    building = int(await redis.get(names.READ_MODEL_NEXT) or 0) or active + 1
    holder = f"{socket.gethostname()}:{os.getpid()}:rebuild:{uuid.uuid4().hex[:8]}"
    shared = SharedPass(services, targets(building), holder)
    # The leases are taken before the next version is announced, so the projector processes
    # that start drivers for it find them held and stand by: one read of the log builds both.
    await shared.take_leases()
    try:
        await redis.set(names.READ_MODEL_NEXT, building)
        position = await shared.run(await _head(services), progress)
        mismatches = await verify_against(services, building, shared.folded)
        if mismatches:
            raise RebuildVerificationError(mismatches)
        await shared.mark_caught_up()
        await record_switch(services.views_db, building)  # durable first: Redis can lose it
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(names.READ_MODEL_ACTIVE, building)
            pipe.delete(names.READ_MODEL_NEXT)
            await pipe.execute()
    finally:
        await shared.release()
    await asyncio.sleep(DROP_GRACE_SECONDS)
    await drop_version(services, active)
    return RebuildResult(old_version=active, new_version=building, position=position)


async def _head(services: Services) -> Callable[[], Awaitable[int]]:
    """How far the rebuild must read: the log's settled head, and at least what MongoDB holds.

    Redis's settled head and hints are gone after a Redis restart, and a rebuild trusting them
    would take the log for empty, verify nothing and switch reads to an empty version
    (docs/benchmarks.md, Rebuild). Only then is the highest stored position read (a sorted read:
    a scan on FerretDB): while the settled head exists, the reader streams everything up to it
    from MongoDB whether hints are there or not.
    """
    stored = 0
    if await services.redis.get(names.SETTLED_HEAD) is None:
        stored = await _highest_stored(services)

    async def head() -> int:
        return max(await services.store.head_position(), stored)

    return head


async def _highest_stored(services: Services) -> int:
    """The highest position in the log (one sorted read: a scan on FerretDB, fine for a rebuild)."""
    return await services.store.highest_stored_position()


async def drop_version(services: Services, version: int) -> None:
    """Delete a retired version's Redis keys, MongoDB collection, checkpoints and leases."""
    prefix = names.read_model_prefix(version)
    async for batch in _key_batches(services, prefix + "*"):
        await services.redis.unlink(*batch)
    mongo = MongoTaskViews(services.views_db, version)
    redis_name = RedisTaskViews(services.redis, version, hot=services.hot).name
    await mongo.views.drop()
    await services.views_db[names.CHECKPOINTS].delete_many({"_id": mongo.name})
    await services.db[names.LEASES].delete_many({"name": {"$in": [mongo.name, redis_name]}})


async def _key_batches(services: Services, pattern: str) -> AsyncIterator[list[bytes]]:
    """Key names matching `pattern`, in batches (a maintenance scan, never on a request path)."""
    batch: list[bytes] = []
    async for key in services.redis.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            yield batch
            batch = []
    if batch:
        yield batch
