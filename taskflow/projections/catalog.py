"""Which projections exist, built from a process's services."""

from __future__ import annotations

from taskflow import names
from taskflow.bootstrap import Services
from taskflow.events.store import EventStore
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import Projection, run_until_caught_up


def projections(services: Services, version: int = 1) -> list[Projection]:
    """The projections a worker runs: the Redis views serve reads, MongoDB views back them."""
    return [
        RedisTaskViews(services.redis, version),
        # The views live in a database of their own; their lease, as every lease, in the log's.
        MongoTaskViews(services.views_db, version, leases=services.db[names.LEASES]),
    ]


async def catch_up(store: EventStore, targets: list[Projection]) -> int:
    """Bring every projection up to the log's settled head now (tests, one-shot runs).

    Indexes are the start-up's job (`bootstrap.ensure_indexes`), not repeated here.
    """
    total = 0
    for projection in targets:
        total += await run_until_caught_up(store, projection)
    return total
