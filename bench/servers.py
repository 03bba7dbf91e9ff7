"""The servers under test: long-lived clients, a fresh database per measurement, their names."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pymongo import ReadPreference
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from taskflow.bootstrap import open_services
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys
from taskflow.services import Services
from taskflow.settings import Settings, views_database_for

Document = dict[str, Any]


@dataclass(frozen=True)
class Servers:
    """The clients every benchmark shares, opened once so connection set-up is never timed."""

    services: Services

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def redis(self) -> Redis:
        return self.services.redis

    @asynccontextmanager
    async def fresh_db(self) -> AsyncIterator[AsyncDatabase[Document]]:
        """A database of its own (on SQLite, a file of its own), dropped afterwards with the
        read models' database that goes with it."""
        name = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            yield self.services.mongo.get_database(name, read_preference=ReadPreference.PRIMARY)
        finally:
            await self.services.mongo.drop_database(name)
            await self.services.mongo.drop_database(views_database_for(name))

    def views_db_of(self, db: AsyncDatabase[Document]) -> AsyncDatabase[Document]:
        """Where a projector given `db` as MONGODB_DB keeps its MongoDB read models."""
        return self.services.mongo.get_database(
            views_database_for(db.name), read_preference=ReadPreference.PRIMARY
        )

    @asynccontextmanager
    async def flushed_redis(self) -> AsyncIterator[Redis]:
        """REDIS_URL's database, emptied before and after: it must be the benchmark's own."""
        await self.redis.flushdb()
        try:
            yield self.redis
        finally:
            await self.redis.flushdb()

    @asynccontextmanager
    async def fresh_store(self) -> AsyncIterator[MongoEventStore]:
        """The event store on a fresh database and a flushed Redis database."""
        async with self.fresh_db() as db, self.flushed_redis():
            yield await self.store_on(db)

    async def store_on(self, db: AsyncDatabase[Document]) -> MongoEventStore:
        """Wired as `taskflow.bootstrap.open_services` wires it, with the log's indexes created."""
        key = self.settings.event_log_hmac_key.get_secret_value().encode()
        store = MongoEventStore(
            db,
            self.redis,
            HashChain(key),
            hot=self.services.hot,
            gap_timeout=self.settings.gap_timeout_seconds,
            insert_batch=self.settings.log_insert_batch,
            keys=DataKeys(db, self.redis, KeyEncryptionKeys.from_settings(self.settings)),
        )
        await store.ensure_indexes()
        return store


@asynccontextmanager
async def open_servers(mongodb_uri: str, redis_url: str) -> AsyncIterator[Servers]:
    settings = Settings(mongodb_uri=mongodb_uri, redis_url=redis_url, log_json=False)
    async with open_services(settings) as services:
        yield Servers(services)


async def describe_backend(servers: Servers) -> str:
    """Which servers these figures belong to, as they report themselves."""
    info = await servers.services.mongo.admin.command("buildInfo")
    mongo = f"MongoDB {info['version']}"
    if "ferretdbVersion" in info:
        mongo = f"FerretDB {info['ferretdbVersion']} (MongoDB {info['version']} protocol)"
    detail = os.environ.get("BENCH_BACKEND_DETAIL")
    redis_info = await servers.redis.info("server")
    return f"{mongo}{', ' + detail if detail else ''}; Redis {redis_info['redis_version']}"


async def timed(work: Awaitable[object]) -> float:
    """Seconds `work` takes."""
    start = time.perf_counter()
    await work
    return time.perf_counter() - start
