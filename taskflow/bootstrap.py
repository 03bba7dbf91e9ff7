"""The composition root: opens every client once and wires the components that use them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient, ReadPreference
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.read_preferences import SecondaryPreferred
from redis.asyncio import BlockingConnectionPool, Redis

from taskflow.auth.indexes import ensure_auth_indexes
from taskflow.commands.user_handlers import Accounts
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys
from taskflow.settings import Settings

Document = dict[str, Any]


@dataclass(frozen=True)
class Services:
    """Everything a process shares: clients, and the components built on them."""

    settings: Settings
    mongo: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]  # primary: the log, leases, auth
    views_db: AsyncDatabase[Document]  # primary: the MongoDB read models and their checkpoints
    read_db: AsyncDatabase[Document]  # the read models again, from secondaries when there are any
    redis: Redis
    store: MongoEventStore
    keys: DataKeys  # the per-user data keys (docs/privacy.md)
    accounts: Accounts  # what the user handlers need


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
            store=store,
            keys=keys,
            accounts=Accounts.create(store, db, redis, settings),
        )
    finally:
        await redis.aclose()
        await mongo.close()


async def ensure_indexes(services: Services) -> None:
    """Every index the process relies on; idempotent, run at start-up."""
    from taskflow.projections.catalog import projections  # the catalog needs Services

    await services.store.ensure_indexes()
    await ensure_auth_indexes(services.db)
    await services.keys.ensure_indexes()
    await services.accounts.credentials.ensure_indexes()
    for projection in projections(services):
        await projection.setup()
