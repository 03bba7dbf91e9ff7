"""The bulk seeder of the scale benchmark writes exactly what the append path writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from bench.seeder import BulkSeeder, PlannedCommit, Shape, plan, verify_seeded
from taskflow import names
from taskflow.events.chain import HashChain
from taskflow.events.mongo_store import MongoEventStore
from taskflow.events.positions import AHEAD, BLOCK
from taskflow.hot_redis import HotRedis
from taskflow.settings import Settings
from tests.conftest import TEST_HMAC_KEY

SHAPE = Shape(commits=80, per_task=5, tasks_per_user=4)


async def _log(db: AsyncDatabase[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log's documents in order, then the reserved position blocks."""
    commits = await db[names.COMMITS].find({}).sort("position").to_list()
    return commits + await db[names.POSITION_BLOCKS].find({}).sort("_id").to_list()


async def _redis_state(redis: Redis, planned: list[PlannedCommit]) -> dict[str, Any]:
    """Everything appends leave in Redis that outlives the wake-up: counter, hints, heads."""
    streams = sorted({item.stream_id for item in planned})
    positions = range(1, len(planned) + 1)
    state: dict[str, Any] = {
        "counter": await redis.get(names.POSITION_COUNTER),
        "reserved": await redis.get(names.POSITION_RESERVED),
        "hints": [await redis.get(names.commit_hint_key(p)) for p in positions],
        "heads": {s: await redis.hgetall(names.stream_head_key(s)) for s in streams},
    }
    hint_ttls = [await redis.ttl(names.commit_hint_key(p)) for p in positions]
    head_ttls = [await redis.ttl(names.stream_head_key(s)) for s in streams]
    state["hints_expire"] = all(ttl > 0 for ttl in hint_ttls)
    state["heads_kept"] = all(ttl == -1 for ttl in head_ttls)  # heads never expire
    return state


async def _append(store: MongoEventStore, item: PlannedCommit) -> None:
    """What the command runner's append does for this commit (`_decide_and_append`)."""
    result = await store.append(
        item.stream_id, item.expected_version, item.events, item.metadata, snapshot=item.snapshot
    )
    assert result.first_version == item.expected_version + 1


@pytest.mark.parametrize(
    ("commits", "blocks"),
    [(80, 1), (BLOCK - AHEAD + 20, 2)],  # the second one ends near its block's end: one ahead
)
async def test_seeded_log_and_redis_equal_what_appends_write(
    mongo: AsyncMongoClient[dict[str, Any]],
    settings: Settings,
    redis: Redis,
    hot: HotRedis,
    commits: int,
    blocks: int,
) -> None:
    """Seeding and appending the same commits give identical documents and Redis state."""
    shape = Shape(commits=commits, per_task=SHAPE.per_task, tasks_per_user=SHAPE.tasks_per_user)
    planned = list(plan(shape))
    now = [planned[0].recorded_at]
    appended_db = mongo[settings.mongodb_db]
    seeded_db = mongo[f"{settings.mongodb_db}_s"]
    try:
        appender = MongoEventStore(
            appended_db, redis, HashChain(TEST_HMAC_KEY), hot=hot, clock=lambda: now[0]
        )
        await appender.ensure_indexes()
        for item in planned:
            now[0] = item.recorded_at  # the store's clock reads the planned time
            await _append(appender, item)
        appended, appended_redis = await _log(appended_db), await _redis_state(redis, planned)

        await redis.flushdb()
        seeded_store = MongoEventStore(seeded_db, redis, HashChain(TEST_HMAC_KEY), hot=hot)
        await seeded_store.ensure_indexes()
        seeder = BulkSeeder(seeded_store, redis, HashChain(TEST_HMAC_KEY), batch=32)
        assert await seeder.seed(planned) == len(planned)
        seeded, seeded_redis = await _log(seeded_db), await _redis_state(redis, planned)

        assert len(seeded) == len(appended) == commits + blocks  # commits, then position blocks
        assert seeded == appended
        assert seeded_redis == appended_redis
        assert seeded_redis["hints_expire"]
        assert seeded_redis["heads_kept"]
        assert await verify_seeded(seeded_store, len(planned)) == []
    finally:
        await mongo.drop_database(seeded_db.name)


async def test_plan_is_deterministic_and_spread_over_users_and_tasks() -> None:
    """A shape always plans the same commits, each task's first commit creating it."""
    first, again = list(plan(SHAPE)), list(plan(SHAPE))
    assert first == again
    assert len({item.stream_id for item in first}) == SHAPE.tasks
    assert len({item.metadata.actor for item in first}) == SHAPE.users
    seen: set[str] = set()
    for item in first:
        expected_create = item.stream_id not in seen
        assert (item.expected_version == 0) is expected_create
        assert (item.events[0].event_type == "TaskCreated") is expected_create
        seen.add(item.stream_id)
    assert all(isinstance(item.recorded_at, datetime) for item in first)


async def test_seeder_refuses_a_log_that_is_not_empty(store: MongoEventStore, redis: Redis) -> None:
    """Seeded positions start at 1, so seeding on top of an existing log is refused."""
    planned = list(plan(Shape(commits=3)))
    await BulkSeeder(store, redis, HashChain(TEST_HMAC_KEY)).seed(planned[:1])
    with pytest.raises(ValueError, match="must be empty"):
        await BulkSeeder(store, redis, HashChain(TEST_HMAC_KEY)).seed(planned[1:])


async def test_verify_finds_a_tampered_seeded_commit(store: MongoEventStore, redis: Redis) -> None:
    """The seeded chain is real: changing one stored event breaks its stream's link."""
    planned = list(plan(Shape(commits=20, per_task=4)))
    await BulkSeeder(store, redis, HashChain(TEST_HMAC_KEY)).seed(planned)
    victim = planned[5].stream_id
    await store.commits.update_one(
        {"stream_id": victim, "first_version": 1}, {"$set": {"events.0.data.title": "forged"}}
    )
    broken = await verify_seeded(store, len(planned))
    assert [link.stream_id for link in broken] == [victim]
