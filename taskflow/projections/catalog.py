"""Which projections exist, built from a process's services."""

from __future__ import annotations

from collections.abc import Collection

from taskflow import names
from taskflow.bootstrap import Services
from taskflow.events.store import EventStore
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import Projection, run_until_caught_up
from taskflow.settings import READ_MODELS, ReadModel


def projections(
    services: Services, version: int = 1, read_models: Collection[ReadModel] = READ_MODELS
) -> list[Projection]:
    """The projections of `read_models`: the Redis views serve reads, MongoDB views back them."""
    made: list[Projection] = []
    if "redis" in read_models:
        feed_history = services.settings.change_feed_history
        made.append(RedisTaskViews(services.redis, version, feed_history=feed_history))
    if "mongodb" in read_models:
        # The views live in a database of their own; their lease, as every lease, in the log's.
        made.append(MongoTaskViews(services.views_db, version, leases=services.db[names.LEASES]))
    return made


async def catch_up(store: EventStore, targets: list[Projection]) -> int:
    """Bring every projection up to the log's settled head now (tests, one-shot runs).

    Indexes are the start-up's job (`bootstrap.ensure_indexes`), not repeated here.
    """
    total = 0
    for projection in targets:
        total += await run_until_caught_up(store, projection)
    return total
