"""Zero-downtime rebuilds: build the next read-model version beside the active one, verify, switch.

1. `tf:rm:next` names version N+1; every projector process starts drivers for it (under their own
   leases, so one process builds each projection) while version N keeps serving reads. This
   command runs a driver group too, so a rebuild also works with no projector running.
2. Once N+1 has caught up with the log, it is verified against a fold of the log.
3. `tf:rm:active` switches to N+1 in one SET (reads follow within a second); `tf:rm:next` is
   cleared, processes retire version N, and N's keys and collection are dropped after a grace.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from taskflow import names
from taskflow.bootstrap import Services
from taskflow.projections.catalog import projections
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.verify import ViewMismatch, verify_read_models
from taskflow.projections.worker import Supervisor

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
    services: Services, progress: Progress = lambda done, total: None
) -> RebuildResult:
    """Rebuild the task read models into the next version and switch reads over to it."""
    redis = services.redis
    active = int(await redis.get(names.READ_MODEL_ACTIVE) or 1)
    building = int(await redis.get(names.READ_MODEL_NEXT) or 0) or active + 1
    await redis.set(names.READ_MODEL_NEXT, building)
    stopping = asyncio.Event()
    holder = f"{socket.gethostname()}:{os.getpid()}:rebuild:{uuid.uuid4().hex[:8]}"
    supervisor = Supervisor(services, holder, stopping, versions=lambda: _versions(building))
    helping = asyncio.create_task(supervisor.run())
    try:
        position = await _caught_up(services, building, progress)
        mismatches = await verify_read_models(services, building)
        if mismatches:
            raise RebuildVerificationError(mismatches)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(names.READ_MODEL_ACTIVE, building)
            pipe.delete(names.READ_MODEL_NEXT)
            await pipe.execute()
    finally:
        stopping.set()
        await helping
    await asyncio.sleep(DROP_GRACE_SECONDS)
    await drop_version(services, active)
    return RebuildResult(old_version=active, new_version=building, position=position)


async def _versions(version: int) -> set[int]:
    return {version}


async def _caught_up(services: Services, version: int, progress: Progress) -> int:
    """Wait until every projection of `version` has reached the log's head; that position.

    The head is at least the highest position MongoDB holds: Redis's settled head and hints are
    gone after a Redis restart, and a rebuild trusting them would take the log for empty, verify
    nothing and switch reads to an empty version (docs/benchmarks.md, Rebuild).
    """
    targets = projections(services, version)
    stored = await _highest_stored(services)
    while True:
        head = max(await services.store.head_position(), stored)
        positions = [await target.position() for target in targets]
        progress(min(positions), head)
        if min(positions) >= head:
            return head
        await asyncio.sleep(0.2)


async def _highest_stored(services: Services) -> int:
    """The highest position in the log (one sorted read: a scan on FerretDB, fine for a rebuild)."""
    cursor = services.store.commits.find({}, {"position": 1}).sort("position", -1).limit(1)
    last = await cursor.to_list()
    return int(last[0]["position"]) if last else 0


async def drop_version(services: Services, version: int) -> None:
    """Delete a retired version's Redis keys, MongoDB collection, checkpoints and leases."""
    prefix = names.read_model_prefix(version)
    async for batch in _key_batches(services, prefix + "*"):
        await services.redis.unlink(*batch)
    mongo = MongoTaskViews(services.db, version)
    redis_name = RedisTaskViews(services.redis, version).name
    await mongo.views.drop()
    await services.db[names.CHECKPOINTS].delete_many({"_id": mongo.name})
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
