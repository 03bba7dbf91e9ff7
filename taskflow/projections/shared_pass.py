"""The rebuild's driver: one read of the log feeds every projection it holds and a fold of the log.

A projector process gives each projection a driver of its own, and each reads the log
(driver.py). Built that way, a rebuild from position zero streamed the whole log once per
projection and once more for the verification, and FerretDB sorts the whole collection before
each such read (docs/benchmarks.md, Rebuild). Here one streamed read (`store.read_all`, gap-safe)
is cut into batches; each batch goes to every projection this process holds the lease of, and
into the task states the verification compares the read models with.

Leases and fencing are the workers' (lease.py): a projection is fed only under a live term,
its writes are fenced by that term, and each is fed only commits after its own checkpoint, so a
batch applied twice changes nothing. A projection whose lease another process holds, or that
this process loses, is left to a standby `ProjectionDriver` (the workers' own), which builds it
from its checkpoint like any projector; the pass then waits for its checkpoint.

The MongoDB views are staged across batches and written once per task (`MongoTaskViews.stage`,
`flush`): a rebuild then writes each task once, however many batches touched it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from taskflow import names
from taskflow.commands.task import TaskState
from taskflow.events.records import Commit
from taskflow.projections.driver import ProjectionDriver
from taskflow.projections.lease import Lease
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import CheckpointMovedError
from taskflow.projections.runtime import LeaseLostError, Projection, apply_batch
from taskflow.projections.verify import fold_commit
from taskflow.services import Services
from taskflow.tasks import batches, cancel_and_wait, read_ahead

# Larger than a worker's batches (runtime.DEFAULT_BATCH): a catch-up from zero writes each
# changed view once per batch, so fewer batches mean fewer writes.
REBUILD_BATCH = 2_000
# Staged MongoDB views are written once this many are waiting (memory: about 2 kB each), and
# at the end of the pass.
STAGED_VIEWS_MAX = 20_000
POLL_SECONDS = 0.2

Progress = Callable[[int, int], None]
log = structlog.get_logger(__name__)


@dataclass
class _Fed:
    """A projection this pass holds the lease of, and how far its checkpoint is."""

    projection: Projection
    lease: Lease
    term: int
    at: int


class SharedPass:
    """Builds one read-model version from a single read of the log; see the module docstring."""

    def __init__(self, services: Services, targets: list[Projection], holder: str) -> None:
        """Build `targets` (one read-model version's projections, from the composition root)."""
        self._services = services
        self._ttl = services.settings.lease_ttl_seconds
        self.targets = targets
        self._leases = {
            p.name: Lease(services.db[names.LEASES], p.name, holder, ttl=self._ttl)
            for p in self.targets
        }
        self._fed: list[_Fed] = []
        self._standby_stopping = asyncio.Event()
        self._standbys: list[asyncio.Task[None]] = []
        self.folded: dict[str, TaskState] = {}
        self.position = 0

    async def take_leases(self) -> None:
        """Hold every lease that is free; the rest are built by their holders or a standby."""
        for projection in self.targets:
            await projection.setup()
            lease = self._leases[projection.name]
            if await lease.acquire():
                assert lease.term is not None
                await projection.fence(lease.term)
                at = await projection.position()
                self._fed.append(_Fed(projection, lease, lease.term, at))
            else:
                self._stand_by(projection)

    async def run(self, head: Callable[[], Awaitable[int]], progress: Progress) -> int:
        """Read and feed until the pass reaches `head()`, then wait until every projection has
        reached the pass too; that position (the fold's, and at least every read model's)."""
        renewer = asyncio.create_task(self._renew_forever())
        try:
            failed = False
            while True:
                try:
                    if failed:
                        await self._restart()
                    await self._read_to(head, progress)
                    break
                except (PyMongoError, RedisError, CheckpointMovedError) as exc:
                    # A blip, or Redis lost its data: start over, from the stored checkpoints.
                    log.warning("rebuild_pass_failed", error=repr(exc))
                    await asyncio.sleep(1.0)
                    failed = True
            await self._until_all_reach(self.position, progress)
            return self.position
        finally:
            await cancel_and_wait(renewer)  # not a lone cancel(): see taskflow/tasks.py

    async def mark_caught_up(self) -> None:
        """Tell each fed projection it reached the log (the Redis views are then served); a
        projection a standby built is marked by that standby."""
        for fed in list(self._fed):
            await fed.projection.caught_up(fed.at, fed.term)

    async def release(self) -> None:
        """Give the leases up (standbys of other processes take over at once)."""
        self._standby_stopping.set()
        await asyncio.gather(*self._standbys, return_exceptions=True)
        for fed in self._fed:
            with contextlib.suppress(PyMongoError):
                await fed.lease.release()

    async def _read_to(self, head: Callable[[], Awaitable[int]], progress: Progress) -> None:
        while True:
            target = await head()
            read = self._services.store.read_all(self.position)
            async for batch in read_ahead(batches(read, REBUILD_BATCH)):
                await self._feed(batch)
                progress(self.position, max(target, self.position))
            if self.position >= target:
                break
            await asyncio.sleep(POLL_SECONDS)  # a hole within its grace period, or an empty log
        await _all_done(self._flush(fed) for fed in list(self._fed))

    async def _feed(self, batch: list[Commit]) -> None:
        for commit in batch:
            fold_commit(self.folded, commit)
        self.position = batch[-1].position
        await _all_done(self._feed_one(fed, batch) for fed in list(self._fed))

    async def _feed_one(self, fed: _Fed, batch: list[Commit]) -> None:
        unseen = [commit for commit in batch if commit.position > fed.at]
        try:
            if fed.lease.term != fed.term:
                raise LeaseLostError(fed.projection.name)  # a renewal found a newer term
            if not unseen:
                return
            if isinstance(fed.projection, MongoTaskViews):
                await fed.projection.stage(unseen)
                if fed.projection.staged >= STAGED_VIEWS_MAX:
                    await fed.projection.flush(fed.term)
            else:
                await apply_batch(fed.projection, unseen, fed.term)
            fed.at = unseen[-1].position
        except LeaseLostError:
            self._lose(fed)

    async def _flush(self, fed: _Fed) -> None:
        if isinstance(fed.projection, MongoTaskViews):
            try:
                await fed.projection.flush(fed.term)
            except LeaseLostError:
                self._lose(fed)

    def _lose(self, fed: _Fed) -> None:
        """Another process holds a newer term: stop feeding it; a standby waits to take over."""
        log.warning("lease_lost", projection=fed.projection.name)
        self._fed.remove(fed)
        fed.lease.term = None
        self._stand_by(fed.projection)

    async def _restart(self) -> None:
        """Forget what was read; each fed projection continues from its stored checkpoint."""
        self.folded, self.position = {}, 0
        for fed in self._fed:
            if isinstance(fed.projection, MongoTaskViews):
                fed.projection.drop_staged()
            fed.at = await fed.projection.position()

    async def _until_all_reach(self, position: int, progress: Progress) -> None:
        """Wait for the projections other processes (or standbys) build to reach `position`."""
        while True:
            reached = min([await p.position() for p in self.targets])
            progress(min(reached, position), position)
            if reached >= position:
                return
            await asyncio.sleep(POLL_SECONDS)

    def _stand_by(self, projection: Projection) -> None:
        lease = self._leases[projection.name]
        driver = ProjectionDriver(
            self._services.store,
            projection,
            lease,
            lease_ttl=self._ttl,
            poll_interval=self._services.settings.projector_poll_seconds,
            stopping=self._standby_stopping,
        )
        self._standbys.append(asyncio.create_task(driver.run()))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            for fed in list(self._fed):
                try:
                    await fed.lease.renew()  # a newer term sets lease.term to None
                except PyMongoError as exc:  # the next renewal, or the lease's expiry, decides
                    log.warning("lease_renewal_failed", error=repr(exc))


async def _all_done(steps: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run `steps` together and let all of them finish before raising the first error.

    (`gather` would raise at once and leave the others running, and the pass would restart
    while one of them still writes.)
    """
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
