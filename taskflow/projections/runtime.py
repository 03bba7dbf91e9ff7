"""The projector runtime: feed a projection the log after its checkpoint, in batches.

A projection stores its checkpoint with its effects (in the same Redis transaction, or after
its MongoDB writes), and every effect is conditional on the version a read model reflects, so a
batch applied twice (a crash between effect and checkpoint) changes nothing the second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from taskflow.events.records import Commit
from taskflow.events.store import EventStore
from taskflow.metrics import (
    PROJECTION_BATCH,
    PROJECTION_LAG_SECONDS,
    PROJECTION_POSITION,
)
from taskflow.tasks import batches

DEFAULT_BATCH = 500
LOGGED_CORRELATION_IDS = 20  # per batch line: enough to follow requests, bounded in size

log = structlog.get_logger(__name__)


class LeaseLostError(Exception):
    """Another process took this projection's lease over; stop applying at once."""


class Projection(Protocol):
    """A read model built from the log. Implementations: `RedisTaskViews`, `MongoTaskViews`."""

    name: str
    # The least time between two of a driver's passes; wake-ups meanwhile are coalesced into
    # the next pass. 0 for the views reads are served from: they follow every append.
    pace_seconds: float
    # Whether it is fed the commits as stored (`read_all_stored`: personal fields still sealed)
    # rather than opened. Only a projection that never looks inside events may say so (the log
    # seal folds positions and hashes): opening is most of what reading the log costs.
    reads_stored: bool

    async def setup(self) -> None:
        """Create indexes and anything else it needs; idempotent."""
        ...

    async def position(self) -> int:
        """The last position whose effects are stored (its checkpoint)."""
        ...

    async def fence(self, term: int) -> None:
        """Refuse, from now on, writes of any lease holder with an older term."""
        ...

    async def apply(self, commits: Sequence[Commit], term: int) -> None:
        """Store the effects of `commits` (gaps included) and advance the checkpoint past them."""
        ...

    async def caught_up(self, position: int, term: int) -> None:
        """A pass read the whole settled log and left the checkpoint at `position`."""
        ...


@dataclass(frozen=True)
class PassResult:
    """How a pass ended: positions applied, the checkpoint it left, whether it read to the end."""

    applied: int
    position: int
    exhausted: bool


async def run_until_caught_up(
    store: EventStore,
    projection: Projection,
    *,
    term: int = 0,
    batch_size: int = DEFAULT_BATCH,
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Apply everything settled after the checkpoint; the number of positions applied."""
    result = await one_pass(
        store, projection, term=term, batch_size=batch_size, keep_going=keep_going
    )
    return result.applied


async def one_pass(
    store: EventStore,
    projection: Projection,
    *,
    term: int = 0,
    batch_size: int = DEFAULT_BATCH,
    keep_going: Callable[[], bool] = lambda: True,
) -> PassResult:
    """Apply what is settled after the checkpoint, batch by batch, from one streamed read of
    the log (a range query per batch would scan the log each time on FerretDB); stops between
    batches when `keep_going()` turns false (graceful shutdown, a lost lease)."""
    position = await projection.position()
    applied = 0
    read = store.read_all_stored if projection.reads_stored else store.read_all
    async for batch in batches(read(position), batch_size):
        await apply_batch(projection, batch, term)
        applied += len(batch)
        position = batch[-1].position
        if not keep_going():
            return PassResult(applied, position, exhausted=False)
    return PassResult(applied, position, exhausted=True)


def correlation_ids(batch: Sequence[Commit]) -> list[str]:
    """The distinct correlation ids of a batch's commits (gaps have none), the first few."""
    ids = (commit.metadata.correlation_id for commit in batch if commit.metadata is not None)
    return list(dict.fromkeys(ids))[:LOGGED_CORRELATION_IDS]


async def apply_batch(projection: Projection, batch: Sequence[Commit], term: int) -> None:
    """Apply one batch, logging it with its correlation ids and recording its metrics."""
    # The batch's correlation ids go on every line logged while it is applied, so an operator
    # can follow a request from the API's log into the projector's (docs/operations.md).
    context = {
        "projection": projection.name,
        "positions": f"{batch[0].position}-{batch[-1].position}",
        "correlation_ids": correlation_ids(batch),
    }
    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(**context):
        try:
            await projection.apply(batch, term)
        except Exception as exc:
            log.warning("batch_failed", commits=len(batch), error=repr(exc))
            raise
        seconds = time.perf_counter() - started
        log.info("batch_applied", commits=len(batch), seconds=round(seconds, 4))
    PROJECTION_BATCH.labels(projection.name).observe(seconds)
    PROJECTION_POSITION.labels(projection.name).set(batch[-1].position)
    age = (datetime.now(UTC) - batch[-1].recorded_at).total_seconds()
    PROJECTION_LAG_SECONDS.labels(projection.name).set(max(age, 0.0))


async def catch_up(store: EventStore, targets: list[Projection]) -> int:
    """Bring every projection up to the log's settled head now (tests, one-shot runs), without
    a lease (term 0), and mark each caught up. The number of positions applied.

    Indexes are the start-up's job (`bootstrap.ensure_indexes`), not repeated here.
    """
    total = 0
    for projection in targets:
        result = await one_pass(store, projection)
        await projection.caught_up(result.position, 0)
        total += result.applied
    return total
