"""Which projections exist, built from a process's services."""

from __future__ import annotations

from collections.abc import Collection

from taskflow import names
from taskflow.bootstrap import Services
from taskflow.events.store import EventStore
from taskflow.projections.log_seal import LogSeal
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import Projection, one_pass
from taskflow.projections.views import log_history
from taskflow.settings import READ_MODELS, ReadModel


def projections(
    services: Services, version: int = 1, read_models: Collection[ReadModel] = READ_MODELS
) -> list[Projection]:
    """The projections of `read_models`: the Redis views serve reads, MongoDB views back them."""
    made: list[Projection] = []
    history = log_history(services.store)  # repairs a view found behind the log
    if "redis" in read_models:
        allocated = services.store.allocated_position
        feed_history = services.settings.change_feed_history
        made.append(
            RedisTaskViews(
                services.redis,
                version,
                history=history,
                allocated=allocated,
                feed_history=feed_history,
            )
        )
    if "mongodb" in read_models:
        # The views live in a database of their own; their lease, as every lease, in the log's.
        leases = services.db[names.LEASES]
        made.append(MongoTaskViews(services.views_db, version, leases=leases, history=history))
    return made


def log_projections(services: Services) -> list[Projection]:
    """The projections of the log itself, not of a read-model version: the log seal.

    Every projector process runs them (one holds each lease), whatever its read models.
    """
    return [LogSeal(services.db, services.store.chain)]


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
