"""The composition root: opens every client once and wires the components that use them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

from pymongo import AsyncMongoClient, ReadPreference
from pymongo.read_preferences import SecondaryPreferred
from redis.asyncio import BlockingConnectionPool, Redis

from taskflow import names
from taskflow.auth.indexes import ensure_auth_indexes
from taskflow.commands.user_handlers import Accounts
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.hot_redis import HotRedis
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys
from taskflow.projections.log_seal import LogSeal
from taskflow.projections.mongo_views import MongoTaskViews
from taskflow.projections.rebuild import RebuildResult, rebuild
from taskflow.projections.redis_views import RedisTaskViews
from taskflow.projections.runtime import Projection
from taskflow.projections.views import log_history
from taskflow.services import Services
from taskflow.settings import READ_MODELS, ReadModel, Settings

Document = dict[str, Any]


def read_preference(settings: Settings) -> SecondaryPreferred:
    """Read models fan out to secondaries, bounded by maxStalenessSeconds (docs/design.md)."""
    return SecondaryPreferred(max_staleness=settings.read_max_staleness_seconds or -1)


def redis_client(url: str, timeout: float, max_connections: int = 64) -> Redis:
    """A Redis client whose pool makes callers wait for a free connection instead of failing."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # closing the client closes its pool


@asynccontextmanager
async def open_services(
    settings: Settings, *, operation_deadline: bool = False
) -> AsyncIterator[Services]:
    """Open the clients (lazily connecting) and close them on exit, whatever happened.

    `operation_deadline` bounds every MongoDB operation as a whole (`timeoutMS`: server
    selection, pool wait, the round trip and its retry) by `MONGODB_TIMEOUT_MS`. The API wants
    that: without it a request caught by a stalled server waits for the driver's next heartbeat
    (10-15 s, docs/reliability.md D1). Workers and the CLI do not: a catch-up or a rebuild's first
    batch of a large log can legitimately take longer on FerretDB, which sorts before it streams,
    and the per-socket timeout still bounds a dead connection.
    """
    mongo: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
        connectTimeoutMS=settings.mongodb_timeout_ms,
        socketTimeoutMS=settings.mongodb_timeout_ms * 2,
        appname="taskflow",
        timeoutMS=settings.mongodb_timeout_ms if operation_deadline else None,
    )
    redis = redis_client(settings.redis_url, settings.redis_timeout_seconds)
    hot = HotRedis(settings.redis_url, timeout=settings.redis_timeout_seconds)
    try:
        db = mongo.get_database(settings.mongodb_db, read_preference=ReadPreference.PRIMARY)
        keys = DataKeys(db, redis, KeyEncryptionKeys.from_settings(settings))
        store = MongoEventStore(
            db,
            redis,
            HashChain(settings.event_log_hmac_key.get_secret_value().encode()),
            gap_timeout=settings.gap_timeout_seconds,
            head_ttl=settings.stream_head_ttl_seconds,
            insert_batch=settings.log_insert_batch,
            keys=keys,
            hot=hot,
        )
        yield Services(
            settings=settings,
            mongo=mongo,
            db=db,
            views_db=mongo.get_database(
                settings.views_db_name, read_preference=ReadPreference.PRIMARY
            ),
            read_db=mongo.get_database(
                settings.views_db_name, read_preference=read_preference(settings)
            ),
            redis=redis,
            hot=hot,
            store=store,
            keys=keys,
            accounts=Accounts.create(store, db, redis, settings),
        )
    finally:
        await hot.aclose()
        await redis.aclose()
        await mongo.close()


async def ensure_indexes(services: Services) -> None:
    """Every index the process relies on; idempotent, run at start-up."""
    await services.store.ensure_indexes()
    await ensure_auth_indexes(services.db)
    await services.keys.ensure_indexes()
    await services.accounts.credentials.ensure_indexes()
    for projection in projections(services):
        await projection.setup()


# -- the projections: which exist, built from a process's services ------------------------------


def projections(
    services: Services, version: int = 1, read_models: Collection[ReadModel] = READ_MODELS
) -> list[Projection]:
    """The projections of `read_models`: the Redis views serve reads, MongoDB views back them."""
    made: list[Projection] = []
    history = log_history(services.store)  # repairs a view found behind the log
    if "redis" in read_models:
        made.append(
            RedisTaskViews(
                services.redis,
                version,
                hot=services.hot,
                history=history,
                allocated=services.store.allocated_position,
                feed_history=services.settings.change_feed_history,
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


async def rebuild_read_models(
    services: Services, progress: Callable[[int, int], None] = lambda done, total: None
) -> RebuildResult:
    """`projections.rebuild.rebuild` with this process's projections of each version."""
    return await rebuild(services, lambda version: projections(services, version), progress)
