"""Fixtures on the real local servers started by `make test` (scripts/test.sh).

Each test gets its own MongoDB database and a flushed Redis logical database, so tests never see
each other's data. Nothing here stands in for MongoDB or Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import pytest
from hypothesis import settings as hypothesis_settings
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from taskflow.bootstrap import redis_client
from taskflow.commands.user_handlers import Accounts
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.hot_redis import HotRedis
from taskflow.privacy.data_keys import DataKeys
from taskflow.privacy.keks import KeyEncryptionKeys
from taskflow.settings import Settings
from tests.service_urls import service_url, worker_redis_url

TEST_HMAC_KEY = b"test-event-log-key"
# The suite runs on the built-in development keys; the processes it starts inherit this.
os.environ.setdefault("TASKFLOW_ENV", "development")
# And on argon2id at about a millisecond a hash, where production's default costs about 0.2 s
# of CPU: the suite registers and logs in hundreds of times (allowed in development only;
# tests/test_auth_api.py checks the production default and floor, and times the dummy
# verification at the default cost).
TEST_PASSWORD_HASH_COST = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "1024",
    "PASSWORD_HASH_PARALLELISM": "1",
}
for _name, _value in TEST_PASSWORD_HASH_COST.items():
    os.environ.setdefault(_name, _value)

# No per-example deadline: on a loaded 2-core machine a first example can take seconds, and a
# property test must fail on properties, not on timing (the suite has a per-test timeout).
hypothesis_settings.register_profile("taskflow", deadline=None)
hypothesis_settings.load_profile("taskflow")


# Fixtures that need the servers `make test` starts: tests using any of them are marked
# `servers`, and `make check` runs the others (pyproject.toml, docs/development.md).
SERVER_FIXTURES = frozenset(
    {
        "settings",
        "mongo",
        "db",
        "views_db",
        "redis",
        "store",
        "client",
        "services",
        "aiohttp_client",
        "private_redis",
        "private_ferretdb",
        "taskflow_processes",
        "deployment",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
    items[:] = long_tests_first(items)


# What a `slow` mark without its own figure stands for, in seconds.
DEFAULT_SLOW_SECONDS = 10.0


def expected_seconds(item: pytest.Item) -> float:
    """About how long a test marked `slow(seconds)` takes on a quiet 2-core machine; 0 unmarked."""
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 0.0
    return float(mark.kwargs.get("seconds", mark.args[0] if mark.args else DEFAULT_SLOW_SECONDS))


def long_tests_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The slow tests first, longest first, each followed by a quick one; then the rest.

    pytest-xdist hands tests out in this order (scripts/test.sh: `--maxschedchunk=1`, so each
    process holds the test it runs and one more). The run lasts at least as long as its longest
    test plus whatever that process ran before it: started first, the long tests run side by
    side from the start, and the quick tests fill the processes around them. A quick test after
    each slow one keeps two slow ones from being handed to one process together. Tests with
    module-scoped fixtures (the browser's, the deployment files') must not be marked `slow`:
    moved apart, their module's fixtures would be set up again.
    """
    slow = sorted((i for i in items if expected_seconds(i)), key=expected_seconds, reverse=True)
    quick = [i for i in items if not expected_seconds(i)]
    ordered: list[pytest.Item] = []
    for item in slow:
        ordered.append(item)
        if quick:
            ordered.append(quick.pop(0))
    return ordered + quick


@pytest.fixture
def settings() -> Settings:
    """Settings pointing at the test servers, with a database of the test's own.

    The Redis logical database is flushed first: a deployment owns its Redis database (the
    counter, log hints and read models are not prefixed by the MongoDB database name).
    """
    with SyncRedis.from_url(worker_redis_url()) as sync_redis:
        sync_redis.flushdb()
    return Settings(
        taskflow_env="development",
        mongodb_uri=service_url("MONGODB_URI"),
        redis_url=worker_redis_url(),
        mongodb_db=f"t_{uuid.uuid4().hex[:16]}",
        gap_timeout_seconds=0.3,
        # Races of 50 clients from one address are the point of several tests; the limits
        # themselves are tested with their own low settings (tests/test_operations_api.py).
        rate_limit_auth="10000/minute",
        rate_limit_api="100000/minute",
        # The API bounds each MongoDB operation by this deadline. 50-client races on a shared
        # 2-core machine can make an honest insert wait longer than production's 5 s; the
        # deadline itself is tested with its own short setting (tests/test_faults.py).
        mongodb_timeout_ms=30_000,
        log_json=False,
        cookie_secure=False,
    )


@pytest.fixture
async def mongo(settings: Settings) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
    try:
        yield client
    finally:
        await client.drop_database(settings.mongodb_db)
        await client.drop_database(settings.views_db_name)
        await client.close()


@pytest.fixture
async def db(
    mongo: AsyncMongoClient[dict[str, Any]], settings: Settings
) -> AsyncDatabase[dict[str, Any]]:
    return mongo[settings.mongodb_db]


@pytest.fixture
async def views_db(
    mongo: AsyncMongoClient[dict[str, Any]], settings: Settings
) -> AsyncDatabase[dict[str, Any]]:
    """Where the projector keeps the MongoDB read models (MONGODB_VIEWS_DB)."""
    return mongo[settings.views_db_name]


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = redis_client(settings.redis_url, timeout=10)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
async def hot(settings: Settings, redis: Redis) -> AsyncIterator[HotRedis]:
    """The pipelined connection of quick calls (hot_redis.py), on the test's Redis database."""
    hot = HotRedis(settings.redis_url, timeout=10)
    try:
        yield hot
    finally:
        await hot.aclose()


@pytest.fixture
async def keys(db: AsyncDatabase[dict[str, Any]], redis: Redis, settings: Settings) -> DataKeys:
    """The data keys on the real servers, under the settings' (development) KEK."""
    keys = DataKeys(db, redis, KeyEncryptionKeys.from_settings(settings))
    await keys.ensure_indexes()
    return keys


@pytest.fixture
async def store(
    db: AsyncDatabase[dict[str, Any]], redis: Redis, hot: HotRedis, keys: DataKeys
) -> MongoEventStore:
    """The event store on the real servers, indexes created, with a short gap timeout; personal
    fields sealed under the test's data keys, as in a deployment."""
    store = MongoEventStore(
        db, redis, HashChain(TEST_HMAC_KEY), hot=hot, gap_timeout=0.3, keys=keys
    )
    await store.ensure_indexes()
    return store


@pytest.fixture
async def accounts(
    store: MongoEventStore, db: AsyncDatabase[dict[str, Any]], redis: Redis, settings: Settings
) -> Accounts:
    """What the user handlers work with, on the test's store."""
    return Accounts.create(store, db, redis, settings)


def commands_sent(redis: Redis | HotRedis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the commands `redis` sends one by one from now on (scripts by `EVALSHA`;
    a redis-py pipeline's commands, and a HotRedis's `execute_all`, bypass it), in order: for
    counting round trips."""
    sent: list[str] = []
    name = "execute" if isinstance(redis, HotRedis) else "execute_command"
    execute = cast(Callable[..., Awaitable[Any]], getattr(redis, name))

    async def counted(*args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return await execute(*args, **options)

    monkeypatch.setattr(redis, name, counted)
    return sent


def closed_port() -> int:
    """A loopback port nothing listens on, to stand for a server that is down."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, mongo: Any) -> Any:
    """The real app on the test servers, ready (its indexes exist); its database dropped after."""
    from taskflow.server import create_app
    from tests.api_support import wait_ready

    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    return client
