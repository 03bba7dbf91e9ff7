"""The projector runtime: feed a projection the log after its checkpoint, in batches.

A projection stores its checkpoint with its effects (in the same Redis transaction, or after
its MongoDB writes), and every effect is conditional on the version a read model reflects, so a
batch applied twice (a crash between effect and checkpoint) changes nothing the second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from taskflow.events.records import Commit
from taskflow.events.store import EventStore
from taskflow.metrics import (
    PROJECTION_BATCH,
    PROJECTION_LAG_SECONDS,
    PROJECTION_POSITION,
)

DEFAULT_BATCH = 500


class LeaseLostError(Exception):
    """Another process took this projection's lease over; stop applying at once."""


class Projection(Protocol):
    """A read model built from the log. Implementations: `RedisTaskViews`, `MongoTaskViews`."""

    name: str

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


async def run_until_caught_up(
    store: EventStore,
    projection: Projection,
    *,
    term: int = 0,
    batch_size: int = DEFAULT_BATCH,
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Apply everything settled after the checkpoint; the number of positions applied.

    Reads the log in one streamed pass (DESIGN.md §9) and applies it batch by batch; stops
    between batches when `keep_going()` turns false (graceful shutdown, a lost lease).
    """
    applied = 0
    batch: list[Commit] = []
    async for commit in store.read_all(await projection.position()):
        batch.append(commit)
        if len(batch) >= batch_size:
            await _apply(projection, batch, term)
            applied += len(batch)
            batch = []
            if not keep_going():
                return applied
    if batch:
        await _apply(projection, batch, term)
        applied += len(batch)
    return applied


async def _apply(projection: Projection, batch: list[Commit], term: int) -> None:
    started = time.perf_counter()
    await projection.apply(batch, term)
    PROJECTION_BATCH.labels(projection.name).observe(time.perf_counter() - started)
    PROJECTION_POSITION.labels(projection.name).set(batch[-1].position)
    age = (datetime.now(UTC) - batch[-1].recorded_at).total_seconds()
    PROJECTION_LAG_SECONDS.labels(projection.name).set(max(age, 0.0))
